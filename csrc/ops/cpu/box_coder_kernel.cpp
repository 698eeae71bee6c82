// CPU kernels for dsfd::encode_boxes / dsfd::decode_boxes (float32 math for
// half inputs). decode follows the released DSFD code: x1 = c - w/2, then
// x2 = x1 + w.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../box_coder.h"
#include "../box_math.h"

namespace dsfd {
namespace {

template <typename scalar_t>
void encode_cpu_impl(const scalar_t* gt, const at::opmath_type<scalar_t>* anc, scalar_t* out, int64_t rows, int64_t A, double v0,
                     double v1) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t var_xy = static_cast<acc_t>(v0), var_wh = static_cast<acc_t>(v1);
  at::parallel_for(0, rows, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* g = gt + 4 * r;
      const acc_t* a = anc + 4 * (r % A);
      const acc_t gbox[4] = {g[0], g[1], g[2], g[3]};
      encode_box(gbox, a, var_xy, var_wh, out + 4 * r);
    }
  });
}

template <typename scalar_t>
void decode_cpu_impl(const scalar_t* d, const at::opmath_type<scalar_t>* anc, scalar_t* out, int64_t rows, int64_t A, double v0,
                     double v1) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t var_xy = static_cast<acc_t>(v0), var_wh = static_cast<acc_t>(v1);
  at::parallel_for(0, rows, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* t = d + 4 * r;
      const acc_t* a = anc + 4 * (r % A);
      const acc_t aw = a[2], ah = a[3];
      const acc_t cx = a[0] + acc_t(t[0]) * var_xy * aw;
      const acc_t cy = a[1] + acc_t(t[1]) * var_xy * ah;
      const acc_t w = aw * std::exp(acc_t(t[2]) * var_wh);
      const acc_t h = ah * std::exp(acc_t(t[3]) * var_wh);
      const acc_t x1 = cx - w / 2, y1 = cy - h / 2;
      out[4 * r + 0] = static_cast<scalar_t>(x1);
      out[4 * r + 1] = static_cast<scalar_t>(y1);
      out[4 * r + 2] = static_cast<scalar_t>(x1 + w);
      out[4 * r + 3] = static_cast<scalar_t>(y1 + h);
    }
  });
}

at::Tensor encode_boxes_cpu(const at::Tensor& gt, const at::Tensor& anchors, double v0, double v1) {
  check_encode_inputs(gt, anchors, v0, v1);
  auto g = gt.contiguous();
  // Anchors stay in the math type: half anchors would lose precision.
  auto a = anchors.to(at::toOpMathType(gt.scalar_type())).contiguous();
  auto out = at::empty_like(g);
  const int64_t rows = g.numel() / 4, A = a.numel() / 4;
  if (rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "dsfd_encode_cpu", [&] {
    encode_cpu_impl<scalar_t>(g.data_ptr<scalar_t>(), a.data_ptr<at::opmath_type<scalar_t>>(), out.data_ptr<scalar_t>(), rows, A, v0,
                              v1);
  });
  return out;
}

at::Tensor decode_boxes_cpu(const at::Tensor& deltas, const at::Tensor& anchors, double v0, double v1) {
  check_decode_inputs(deltas, anchors, v0, v1);
  auto d = deltas.contiguous();
  auto a = anchors.to(at::toOpMathType(deltas.scalar_type())).contiguous();
  auto out = at::empty_like(d);
  const int64_t rows = d.numel() / 4, A = a.size(0);
  if (rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "dsfd_decode_cpu", [&] {
    decode_cpu_impl<scalar_t>(d.data_ptr<scalar_t>(), a.data_ptr<at::opmath_type<scalar_t>>(), out.data_ptr<scalar_t>(), rows, A, v0,
                              v1);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CPU, m) {
  m.impl("encode_boxes", &encode_boxes_cpu);
  m.impl("decode_boxes", &decode_boxes_cpu);
}

}  // namespace dsfd
