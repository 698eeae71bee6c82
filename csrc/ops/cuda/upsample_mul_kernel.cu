// CUDA kernels for dsfd::upsample_mul (+ backward). One thread per output
// element reads its four bilinear taps of the upper map and the lateral value:
// the upsampled map is never written to memory. NCHW and channels_last
// layouts are handled natively (the output follows the lateral map).
#include <torch/library.h>

#include "../upsample_mul.h"
#include "cuda_helpers.h"

namespace dsfd {
namespace {

template <typename acc_t>
__device__ inline void taps_1d(int64_t o, int64_t in_size, acc_t scale, bool align_corners, int64_t& i0, int64_t& i1,
                               acc_t& w0, acc_t& w1) {
  acc_t src = align_corners ? scale * o : scale * (o + acc_t(0.5)) - acc_t(0.5);
  if (src < 0) src = 0;
  i0 = cuda::imin(static_cast<int64_t>(src), in_size - 1);
  acc_t l1 = src - i0;
  l1 = l1 < 0 ? acc_t(0) : (l1 > 1 ? acc_t(1) : l1);
  i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
  w0 = acc_t(1) - l1;
  w1 = l1;
}

// Element index -> (n, c, y, x) for either memory format.
template <bool kChannelsLast>
__device__ inline void unravel(int64_t idx, int64_t C, int64_t H, int64_t W, int64_t& n, int64_t& c, int64_t& y,
                               int64_t& x) {
  if (kChannelsLast) {
    c = idx % C;
    idx /= C;
    x = idx % W;
    idx /= W;
    y = idx % H;
    n = idx / H;
  } else {
    x = idx % W;
    idx /= W;
    y = idx % H;
    idx /= H;
    c = idx % C;
    n = idx / C;
  }
}

template <bool kChannelsLast>
__device__ inline int64_t offset(int64_t n, int64_t c, int64_t y, int64_t x, int64_t C, int64_t H, int64_t W) {
  return kChannelsLast ? ((n * H + y) * W + x) * C + c : ((n * C + c) * H + y) * W + x;
}

// The four source taps of output element idx: offsets into the upper map
// (same memory format) and their bilinear weights, PyTorch's convention.
template <typename acc_t>
struct Taps {
  int64_t o00, o01, o10, o11;
  acc_t wy0, wy1, wx0, wx1;

  template <typename scalar_t>
  __device__ acc_t value(const scalar_t* __restrict__ up) const {
    return wy0 * (wx0 * acc_t(up[o00]) + wx1 * acc_t(up[o01])) + wy1 * (wx0 * acc_t(up[o10]) + wx1 * acc_t(up[o11]));
  }
};

template <typename acc_t, bool kChannelsLast>
__device__ inline Taps<acc_t> taps_of(int64_t idx, int64_t C, int64_t h, int64_t w, int64_t H, int64_t W, acc_t sy,
                                      acc_t sx, bool align_corners) {
  int64_t n, c, y, x, y0, y1, x0, x1;
  Taps<acc_t> t;
  unravel<kChannelsLast>(idx, C, H, W, n, c, y, x);
  taps_1d<acc_t>(y, h, sy, align_corners, y0, y1, t.wy0, t.wy1);
  taps_1d<acc_t>(x, w, sx, align_corners, x0, x1, t.wx0, t.wx1);
  t.o00 = offset<kChannelsLast>(n, c, y0, x0, C, h, w);
  t.o01 = offset<kChannelsLast>(n, c, y0, x1, C, h, w);
  t.o10 = offset<kChannelsLast>(n, c, y1, x0, C, h, w);
  t.o11 = offset<kChannelsLast>(n, c, y1, x1, C, h, w);
  return t;
}

template <typename scalar_t, typename acc_t, bool kChannelsLast>
__global__ void forward_kernel(const scalar_t* __restrict__ up, const scalar_t* __restrict__ lat,
                               scalar_t* __restrict__ out, int64_t total, int64_t C, int64_t h, int64_t w, int64_t H,
                               int64_t W, acc_t sy, acc_t sx, bool align_corners, bool relu) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const auto t = taps_of<acc_t, kChannelsLast>(idx, C, h, w, H, W, sy, sx, align_corners);
    acc_t prod = t.value(up) * acc_t(lat[idx]);
    if (relu) prod = prod > 0 ? prod : acc_t(0);
    out[idx] = static_cast<scalar_t>(prod);
  }
}

// grad_lateral directly; grad_upper scattered with atomics into an
// accumulation buffer of the math type (same layout as the upper map).
template <typename scalar_t, typename acc_t, bool kChannelsLast>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ up,
                                const scalar_t* __restrict__ lat, const scalar_t* __restrict__ out,
                                acc_t* __restrict__ grad_up, scalar_t* __restrict__ grad_lat, int64_t total, int64_t C,
                                int64_t h, int64_t w, int64_t H, int64_t W, acc_t sy, acc_t sx, bool align_corners,
                                bool relu) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const auto t = taps_of<acc_t, kChannelsLast>(idx, C, h, w, H, W, sy, sx, align_corners);
    acc_t g = grad[idx];
    if (relu && !(acc_t(out[idx]) > 0)) g = 0;
    grad_lat[idx] = static_cast<scalar_t>(g * t.value(up));
    const acc_t gu = g * acc_t(lat[idx]);
    if (gu != acc_t(0)) {
      atomicAdd(grad_up + t.o00, t.wy0 * t.wx0 * gu);
      atomicAdd(grad_up + t.o01, t.wy0 * t.wx1 * gu);
      atomicAdd(grad_up + t.o10, t.wy1 * t.wx0 * gu);
      atomicAdd(grad_up + t.o11, t.wy1 * t.wx1 * gu);
    }
  }
}

bool use_channels_last(const at::Tensor& lateral) {
  return lateral.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

at::Tensor upsample_mul_cuda(const at::Tensor& upper, const at::Tensor& lateral, bool align_corners, bool relu) {
  check_upsample_mul_inputs(upper, lateral);
  c10::cuda::CUDAGuard guard(lateral.device());
  const bool cl = use_channels_last(lateral);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  auto u = upper.contiguous(fmt);
  auto l = lateral.contiguous(fmt);
  auto out = at::empty_like(l, l.options(), fmt);
  const int64_t total = out.numel();
  if (total == 0) return out;
  const int64_t C = l.size(1), h = u.size(2), w = u.size(3), H = l.size(2), W = l.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "dsfd_upsample_mul_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t sy = bilinear_scale<acc_t>(h, H, align_corners), sx = bilinear_scale<acc_t>(w, W, align_corners);
    if (cl) {
      forward_kernel<scalar_t, acc_t, true><<<cuda::grid_for(total), cuda::kThreads, 0, cuda::stream()>>>(
          u.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total, C, h, w, H, W, sy, sx,
          align_corners, relu);
    } else {
      forward_kernel<scalar_t, acc_t, false><<<cuda::grid_for(total), cuda::kThreads, 0, cuda::stream()>>>(
          u.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total, C, h, w, H, W, sy, sx,
          align_corners, relu);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> upsample_mul_backward_cuda(const at::Tensor& grad_out, const at::Tensor& upper,
                                                              const at::Tensor& lateral, const at::Tensor& out,
                                                              bool align_corners, bool relu) {
  check_upsample_mul_inputs(upper, lateral);
  TORCH_CHECK(grad_out.sizes() == lateral.sizes() && out.sizes() == lateral.sizes(),
              "dsfd::upsample_mul_backward: grad_out ", grad_out.sizes(), " and out ", out.sizes(),
              " must match lateral ", lateral.sizes());
  c10::cuda::CUDAGuard guard(lateral.device());
  const bool cl = use_channels_last(lateral);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  auto u = upper.contiguous(fmt);
  auto l = lateral.contiguous(fmt);
  auto g = grad_out.to(l.scalar_type()).contiguous(fmt);
  auto o = out.to(l.scalar_type()).contiguous(fmt);
  auto grad_lat = at::empty_like(l, l.options(), fmt);
  const int64_t total = l.numel();
  const int64_t C = l.size(1), h = u.size(2), w = u.size(3), H = l.size(2), W = l.size(3);
  at::Tensor grad_up;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "dsfd_upsample_mul_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto acc = at::zeros_like(u, u.options().dtype(c10::CppTypeToScalarType<acc_t>::value), fmt);
    if (total > 0) {
      const acc_t sy = bilinear_scale<acc_t>(h, H, align_corners), sx = bilinear_scale<acc_t>(w, W, align_corners);
      if (cl) {
        backward_kernel<scalar_t, acc_t, true><<<cuda::grid_for(total), cuda::kThreads, 0, cuda::stream()>>>(
            g.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), o.data_ptr<scalar_t>(),
            acc.data_ptr<acc_t>(), grad_lat.data_ptr<scalar_t>(), total, C, h, w, H, W, sy, sx, align_corners, relu);
      } else {
        backward_kernel<scalar_t, acc_t, false><<<cuda::grid_for(total), cuda::kThreads, 0, cuda::stream()>>>(
            g.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), o.data_ptr<scalar_t>(),
            acc.data_ptr<acc_t>(), grad_lat.data_ptr<scalar_t>(), total, C, h, w, H, W, sy, sx, align_corners, relu);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    grad_up = acc.to(l.scalar_type());
  });
  // each gradient in its input's layout, like the CPU kernel and the fake kernel
  return {grad_up.contiguous(upper.suggest_memory_format()), grad_lat.contiguous(lateral.suggest_memory_format())};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CUDA, m) {
  m.impl("upsample_mul", &upsample_mul_cuda);
  m.impl("upsample_mul_backward", &upsample_mul_backward_cuda);
}

}  // namespace dsfd
