// CPU kernels for dsfd::nms and dsfd::batched_nms.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../nms.h"
#include "nms_cpu.h"

namespace dsfd {
namespace {

template <typename scalar_t>
at::Tensor nms_cpu_impl(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = boxes.size(0);
  const scalar_t* s = scores.data_ptr<scalar_t>();
  std::vector<cpu::ScoredIndex<acc_t>> cand(n);
  for (int64_t i = 0; i < n; ++i) {
    const acc_t v = static_cast<acc_t>(s[i]);
    TORCH_CHECK(!std::isnan(v), "dsfd::nms: scores contain NaN (at index ", i, ")");
    cand[i] = {v, i};
  }
  cpu::sort_top_k(cand, n);
  cpu::NmsScratch<acc_t> scratch;
  std::vector<int64_t> keep_pos(n);
  const int64_t k = cpu::greedy_nms<scalar_t, acc_t>(boxes.data_ptr<scalar_t>(), cand,
                                                      static_cast<acc_t>(iou_threshold), n, scratch, keep_pos.data());
  auto keep = at::empty({k}, boxes.options().dtype(at::kLong));
  int64_t* kp = keep.data_ptr<int64_t>();
  for (int64_t i = 0; i < k; ++i) kp[i] = cand[keep_pos[i]].index;
  return keep;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores, iou_threshold);
  if (boxes.numel() == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  auto b = boxes.contiguous();
  auto s = scores.contiguous();
  at::Tensor keep;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "dsfd_nms_cpu",
                                  [&] { keep = nms_cpu_impl<scalar_t>(b, s, iou_threshold); });
  return keep;
}

template <typename scalar_t>
void batched_nms_cpu_impl(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                          double score_threshold, int64_t top_k, int64_t max_keep, at::Tensor& out_boxes,
                          at::Tensor& out_scores, at::Tensor& out_idx, at::Tensor& counts) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = boxes.size(0), N = boxes.size(1);
  const scalar_t* bx = boxes.data_ptr<scalar_t>();
  const scalar_t* sc = scores.data_ptr<scalar_t>();
  scalar_t* ob = out_boxes.data_ptr<scalar_t>();
  scalar_t* os = out_scores.data_ptr<scalar_t>();
  int64_t* oi = out_idx.data_ptr<int64_t>();
  int64_t* oc = counts.data_ptr<int64_t>();
  const acc_t thr = static_cast<acc_t>(iou_threshold);
  const acc_t sthr = static_cast<acc_t>(score_threshold);
  // One image per task: images are independent and each is a few ms of work.
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<cpu::ScoredIndex<acc_t>> cand;
    cpu::NmsScratch<acc_t> scratch;
    std::vector<int64_t> keep_pos;
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* s = sc + b * N;
      cand.clear();
      for (int64_t i = 0; i < N; ++i) {
        const acc_t v = static_cast<acc_t>(s[i]);
        if (v > sthr) cand.push_back({v, i});  // NaN never passes
      }
      cpu::sort_top_k(cand, top_k);
      keep_pos.resize(std::min<int64_t>(max_keep, cand.size()));
      const scalar_t* img_boxes = bx + b * N * 4;
      const int64_t k = cpu::greedy_nms<scalar_t, acc_t>(img_boxes, cand, thr, max_keep, scratch, keep_pos.data());
      oc[b] = k;
      for (int64_t r = 0; r < k; ++r) {
        const int64_t idx = cand[keep_pos[r]].index;
        for (int c = 0; c < 4; ++c) ob[(b * max_keep + r) * 4 + c] = img_boxes[idx * 4 + c];
        os[b * max_keep + r] = s[idx];
        oi[b * max_keep + r] = idx;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batched_nms_cpu(const at::Tensor& boxes,
                                                                           const at::Tensor& scores,
                                                                           double iou_threshold,
                                                                           double score_threshold,
                                                                           int64_t pre_nms_top_k, int64_t max_keep) {
  check_batched_nms_inputs(boxes, scores, iou_threshold, pre_nms_top_k, max_keep);
  const int64_t B = boxes.size(0);
  auto b = boxes.contiguous();
  auto s = scores.contiguous();
  auto out_boxes = at::zeros({B, max_keep, 4}, b.options());
  auto out_scores = at::zeros({B, max_keep}, scores.options());
  auto out_idx = at::full({B, max_keep}, -1, b.options().dtype(at::kLong));
  auto counts = at::zeros({B}, b.options().dtype(at::kLong));
  if (B == 0 || boxes.size(1) == 0) return {out_boxes, out_scores, out_idx, counts};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b.scalar_type(), "dsfd_batched_nms_cpu", [&] {
    batched_nms_cpu_impl<scalar_t>(b, s, iou_threshold, score_threshold, pre_nms_top_k, max_keep, out_boxes,
                                   out_scores, out_idx, counts);
  });
  return {out_boxes, out_scores, out_idx, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace dsfd
