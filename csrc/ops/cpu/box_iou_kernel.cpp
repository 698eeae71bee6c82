// CPU kernel for dsfd::box_iou. Same arithmetic order as torchvision's
// box_iou (area1 + area2 - inter, then inter / union) so values match bit for
// bit in float32; half inputs compute in float32.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../box_iou.h"
#include "../box_math.h"

namespace dsfd {
namespace {

template <typename scalar_t>
void box_iou_cpu_impl(const scalar_t* a, const scalar_t* b, scalar_t* out, int64_t B, int64_t N, int64_t M) {
  using acc_t = at::opmath_type<scalar_t>;
  // Structure-of-arrays copies of boxes2 so the inner loop vectorises.
  std::vector<acc_t> bx1(B * M), by1(B * M), bx2(B * M), by2(B * M), barea(B * M);
  for (int64_t i = 0; i < B * M; ++i) {
    bx1[i] = b[4 * i];
    by1[i] = b[4 * i + 1];
    bx2[i] = b[4 * i + 2];
    by2[i] = b[4 * i + 3];
    barea[i] = (bx2[i] - bx1[i]) * (by2[i] - by1[i]);
  }
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(M, 1));
  at::parallel_for(0, B * N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t batch = r / N;
      const acc_t ax1 = a[4 * r], ay1 = a[4 * r + 1], ax2 = a[4 * r + 2], ay2 = a[4 * r + 3];
      const acc_t aarea = (ax2 - ax1) * (ay2 - ay1);
      const acc_t* __restrict__ x1 = bx1.data() + batch * M;
      const acc_t* __restrict__ y1 = by1.data() + batch * M;
      const acc_t* __restrict__ x2 = bx2.data() + batch * M;
      const acc_t* __restrict__ y2 = by2.data() + batch * M;
      const acc_t* __restrict__ ar = barea.data() + batch * M;
      scalar_t* __restrict__ o = out + r * M;
      for (int64_t j = 0; j < M; ++j) {
        o[j] = static_cast<scalar_t>(box_pair_iou(ax1, ay1, ax2, ay2, aarea, x1[j], y1[j], x2[j], y2[j], ar[j]));
      }
    }
  });
}

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_inputs(boxes1, boxes2);
  const bool batched = boxes1.dim() == 3;
  const int64_t B = batched ? boxes1.size(0) : 1;
  const int64_t N = boxes1.size(-2), M = boxes2.size(-2);
  auto out = batched ? at::empty({B, N, M}, boxes1.options()) : at::empty({N, M}, boxes1.options());
  if (out.numel() == 0) return out;
  auto a = boxes1.contiguous();
  auto b = boxes2.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "dsfd_box_iou_cpu", [&] {
    box_iou_cpu_impl<scalar_t>(a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), B, N, M);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
}

}  // namespace dsfd
