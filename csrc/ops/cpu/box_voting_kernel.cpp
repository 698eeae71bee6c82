// CPU kernel for dsfd::box_voting. IoU uses the released code's
// inclusive-pixel convention (w = x2 - x1 + 1); sums accumulate in double.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <vector>

#include "../box_math.h"
#include "../box_voting.h"
#include "nms_cpu.h"

namespace dsfd {
namespace {

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> box_voting_cpu_impl(const at::Tensor& boxes, const at::Tensor& scores,
                                                       double iou_threshold, int64_t max_keep) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = boxes.size(0);
  const scalar_t* b = boxes.data_ptr<scalar_t>();
  const scalar_t* s = scores.data_ptr<scalar_t>();
  std::vector<cpu::ScoredIndex<acc_t>> cand;
  cand.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    const acc_t v = static_cast<acc_t>(s[i]);
    if (!std::isnan(v)) cand.push_back({v, i});  // NaN scores take part in nothing
  }
  cpu::sort_top_k(cand, static_cast<int64_t>(cand.size()));
  const int64_t m = static_cast<int64_t>(cand.size());
  std::vector<acc_t> x1(m), y1(m), x2(m), y2(m), area(m);
  for (int64_t i = 0; i < m; ++i) {
    const scalar_t* p = b + 4 * cand[i].index;
    x1[i] = p[0];
    y1[i] = p[1];
    x2[i] = acc_t(p[2]) + 1;
    y2[i] = acc_t(p[3]) + 1;
    area[i] = (x2[i] - x1[i]) * (y2[i] - y1[i]);
  }
  const acc_t thr = static_cast<acc_t>(iou_threshold);
  std::vector<uint8_t> alive(m, 1);
  std::vector<double> out_b;
  std::vector<double> out_s;
  for (int64_t i = 0; i < m && static_cast<int64_t>(out_s.size()) < max_keep; ++i) {
    if (!alive[i]) continue;
    double sum[4] = {0, 0, 0, 0}, wsum = 0;
    acc_t best = cand[i].score;
    int64_t members = 0;
    for (int64_t j = i; j < m; ++j) {
      if (!alive[j]) continue;
      if (j != i) {
        const acc_t iou = box_pair_iou(x1[i], y1[i], x2[i], y2[i], area[i], x1[j], y1[j], x2[j], y2[j], area[j]);
        if (!(iou >= thr)) continue;
      }
      alive[j] = 0;
      ++members;
      const double wgt = cand[j].score;
      const scalar_t* p = b + 4 * cand[j].index;
      for (int c = 0; c < 4; ++c) sum[c] += wgt * static_cast<double>(p[c]);
      wsum += wgt;
      best = std::max(best, cand[j].score);
    }
    if (members <= 1) continue;  // a box nobody agrees with is dropped
    for (int c = 0; c < 4; ++c) out_b.push_back(sum[c] / wsum);
    out_s.push_back(best);
  }
  const int64_t k = static_cast<int64_t>(out_s.size());
  auto ob = at::empty({k, 4}, boxes.options());
  auto os = at::empty({k}, scores.options());
  for (int64_t i = 0; i < k; ++i) {
    for (int c = 0; c < 4; ++c) ob.data_ptr<scalar_t>()[4 * i + c] = static_cast<scalar_t>(out_b[4 * i + c]);
    os.data_ptr<scalar_t>()[i] = static_cast<scalar_t>(out_s[i]);
  }
  return {ob, os};
}

std::tuple<at::Tensor, at::Tensor> box_voting_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                  double iou_threshold, int64_t max_keep) {
  check_box_voting_inputs(boxes, scores, iou_threshold, max_keep);
  auto b = boxes.contiguous();
  auto s = scores.contiguous();
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "dsfd_box_voting_cpu",
                                  [&] { out = box_voting_cpu_impl<scalar_t>(b, s, iou_threshold, max_keep); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CPU, m) {
  m.impl("box_voting", &box_voting_cpu);
}

}  // namespace dsfd
