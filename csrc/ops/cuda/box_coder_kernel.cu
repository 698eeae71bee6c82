// CUDA kernels for dsfd::encode_boxes / dsfd::decode_boxes: one thread per box.
#include <torch/library.h>

#include "../box_coder.h"
#include "../box_math.h"
#include "cuda_helpers.h"

namespace dsfd {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void encode_kernel(const scalar_t* __restrict__ gt, const acc_t* __restrict__ anc,
                              scalar_t* __restrict__ out, int64_t rows, int64_t A, acc_t var_xy, acc_t var_wh) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(blockDim.x) * gridDim.x) {
    const scalar_t* g = gt + 4 * r;
    const acc_t* a = anc + 4 * (r % A);
    const acc_t gbox[4] = {g[0], g[1], g[2], g[3]};
    encode_box(gbox, a, var_xy, var_wh, out + 4 * r);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void decode_kernel(const scalar_t* __restrict__ d, const acc_t* __restrict__ anc,
                              scalar_t* __restrict__ out, int64_t rows, int64_t A, acc_t var_xy, acc_t var_wh) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(blockDim.x) * gridDim.x) {
    const scalar_t* t = d + 4 * r;
    const acc_t* a = anc + 4 * (r % A);
    const acc_t cx = a[0] + acc_t(t[0]) * var_xy * a[2];
    const acc_t cy = a[1] + acc_t(t[1]) * var_xy * a[3];
    const acc_t w = a[2] * exp(acc_t(t[2]) * var_wh);
    const acc_t h = a[3] * exp(acc_t(t[3]) * var_wh);
    const acc_t x1 = cx - w / 2, y1 = cy - h / 2;
    out[4 * r + 0] = static_cast<scalar_t>(x1);
    out[4 * r + 1] = static_cast<scalar_t>(y1);
    out[4 * r + 2] = static_cast<scalar_t>(x1 + w);
    out[4 * r + 3] = static_cast<scalar_t>(y1 + h);
  }
}

at::Tensor encode_boxes_cuda(const at::Tensor& gt, const at::Tensor& anchors, double v0, double v1) {
  check_encode_inputs(gt, anchors, v0, v1);
  c10::cuda::CUDAGuard guard(gt.device());
  auto g = gt.contiguous();
  auto a = anchors.to(at::toOpMathType(gt.scalar_type())).contiguous();
  auto out = at::empty_like(g);
  const int64_t rows = g.numel() / 4, A = a.numel() / 4;
  if (rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "dsfd_encode_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    encode_kernel<scalar_t, acc_t><<<cuda::grid_for(rows), cuda::kThreads, 0, cuda::stream()>>>(
        g.data_ptr<scalar_t>(), a.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), rows, A, acc_t(v0), acc_t(v1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor decode_boxes_cuda(const at::Tensor& deltas, const at::Tensor& anchors, double v0, double v1) {
  check_decode_inputs(deltas, anchors, v0, v1);
  c10::cuda::CUDAGuard guard(deltas.device());
  auto d = deltas.contiguous();
  auto a = anchors.to(at::toOpMathType(deltas.scalar_type())).contiguous();
  auto out = at::empty_like(d);
  const int64_t rows = d.numel() / 4, A = a.size(0);
  if (rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.scalar_type(), "dsfd_decode_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    decode_kernel<scalar_t, acc_t><<<cuda::grid_for(rows), cuda::kThreads, 0, cuda::stream()>>>(
        d.data_ptr<scalar_t>(), a.data_ptr<acc_t>(), out.data_ptr<scalar_t>(), rows, A, acc_t(v0), acc_t(v1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CUDA, m) {
  m.impl("encode_boxes", &encode_boxes_cuda);
  m.impl("decode_boxes", &decode_boxes_cuda);
}

}  // namespace dsfd
