// CUDA kernel for dsfd::normalize_images: one thread per value of the NHWC run.
#include <torch/library.h>

#include "../normalize_images.h"
#include "cuda_helpers.h"

namespace dsfd {
namespace {

struct Means {
  float v[kMaxImageChannels];
};

template <typename out_t>
__global__ void normalize_kernel(const uint8_t* __restrict__ in, out_t* __restrict__ out, int64_t n, int64_t C,
                                 Means mean) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x) {
    out[i] = static_cast<out_t>(static_cast<float>(in[i]) - mean.v[i % C]);
  }
}

at::Tensor normalize_images_cuda(const at::Tensor& images, at::ArrayRef<double> mean, at::ScalarType dtype) {
  check_normalize_inputs(images, mean, dtype);
  c10::cuda::CUDAGuard guard(images.device());
  auto src = images.contiguous();
  auto out = empty_nchw_channels_last(images, dtype);
  const int64_t C = images.size(3), n = src.numel();
  if (n == 0) return out;
  Means m{};
  for (int64_t c = 0; c < C; ++c) m.v[c] = static_cast<float>(mean[c]);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "dsfd_normalize_images_cuda", [&] {
    normalize_kernel<scalar_t><<<cuda::grid_for(n), cuda::kThreads, 0, cuda::stream()>>>(
        src.data_ptr<uint8_t>(), out.data_ptr<scalar_t>(), n, C, m);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CUDA, m) {
  m.impl("normalize_images", &normalize_images_cuda);
}

}  // namespace dsfd
