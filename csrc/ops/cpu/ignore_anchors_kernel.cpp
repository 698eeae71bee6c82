// CPU kernel for dsfd::ignore_anchors: parallel over (image, block of
// anchors); a region outside a block's bounding box cannot reach its anchors
// and is skipped (anchors are ordered level, row, column, so blocks are narrow
// strips and most regions miss them).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "../box_math.h"
#include "../ignore_anchors.h"

namespace dsfd {
namespace {

constexpr int64_t kBlock = 2048;

template <typename scalar_t>
void ignore_cpu_impl(const at::Tensor& anchors, const at::Tensor& boxes, const std::vector<int64_t>& counts,
                     double iou_threshold, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = boxes.size(0), M = boxes.size(1), A = anchors.size(0);
  const int64_t num_blocks = (A + kBlock - 1) / kBlock;
  const acc_t* anc = anchors.data_ptr<acc_t>();
  const scalar_t* reg = boxes.data_ptr<scalar_t>();
  int64_t* lab = out.data_ptr<int64_t>();
  const acc_t thr = static_cast<acc_t>(iou_threshold);
  at::parallel_for(0, B * num_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> x1(kBlock), y1(kBlock), x2(kBlock), y2(kBlock), ar(kBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / num_blocks, a0 = (task % num_blocks) * kBlock;
      const int64_t n = std::min(kBlock, A - a0);
      if (counts[b] == 0) continue;
      int64_t* l = lab + b * A + a0;
      bool any_background = false;
      for (int64_t i = 0; i < n; ++i) any_background |= l[i] == 0;
      if (!any_background) continue;
      acc_t bx1 = std::numeric_limits<acc_t>::infinity(), by1 = bx1, bx2 = -bx1, by2 = -bx1;
      for (int64_t i = 0; i < n; ++i) {
        const acc_t* a = anc + 4 * (a0 + i);
        x1[i] = a[0] - a[2] / 2;
        y1[i] = a[1] - a[3] / 2;
        x2[i] = a[0] + a[2] / 2;
        y2[i] = a[1] + a[3] / 2;
        ar[i] = (x2[i] - x1[i]) * (y2[i] - y1[i]);
        bx1 = std::min(bx1, x1[i]);
        by1 = std::min(by1, y1[i]);
        bx2 = std::max(bx2, x2[i]);
        by2 = std::max(by2, y2[i]);
      }
      for (int64_t m = 0; m < counts[b]; ++m) {
        const scalar_t* r = reg + (b * M + m) * 4;
        const acc_t rx1 = r[0], ry1 = r[1], rx2 = r[2], ry2 = r[3];
        // Disjoint from the block's bounding box: IoU 0 with all its anchors
        // (a NaN anchor makes the box NaN, the test false, and the loop decides).
        if (rx2 <= bx1 || rx1 >= bx2 || ry2 <= by1 || ry1 >= by2) continue;
        const acc_t rarea = (rx2 - rx1) * (ry2 - ry1);
        for (int64_t i = 0; i < n; ++i) {
          const acc_t iou = box_pair_iou(rx1, ry1, rx2, ry2, rarea, x1[i], y1[i], x2[i], y2[i], ar[i]);
          l[i] = (l[i] == 0 && iou >= thr) ? int64_t(-1) : l[i];
        }
      }
    }
  });
}

at::Tensor ignore_anchors_cpu(const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& ignore_boxes,
                              const at::Tensor& ignore_counts, double iou_threshold) {
  check_ignore_inputs(anchors, labels, ignore_boxes, ignore_counts, iou_threshold);
  auto out = labels.to(at::kLong, /*non_blocking=*/false, /*copy=*/true).contiguous();
  const int64_t B = ignore_boxes.size(0), M = ignore_boxes.size(1);
  if (out.numel() == 0 || M == 0) return out;
  auto counts_t = ignore_counts.to(at::kLong).contiguous();
  std::vector<int64_t> counts(B);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t c = counts_t.data_ptr<int64_t>()[b];
    TORCH_CHECK(c >= 0 && c <= M, "dsfd::ignore_anchors: ignore_counts[", b, "] = ", c, " is outside [0, M = ", M,
                "]");
    counts[b] = c;
  }
  auto boxes = ignore_boxes.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "dsfd_ignore_anchors_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto anc = anchors.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    ignore_cpu_impl<scalar_t>(anc, boxes, counts, iou_threshold, out);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CPU, m) {
  m.impl("ignore_anchors", &ignore_anchors_cpu);
}

}  // namespace dsfd
