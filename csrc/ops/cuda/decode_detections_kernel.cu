// CUDA kernel for dsfd::decode_detections: one thread per anchor of each image.
#include <torch/library.h>

#include <tuple>

#include "../decode_detections.h"
#include "cuda_helpers.h"

namespace dsfd {
namespace {

template <typename scalar_t>
__global__ void decode_detections_kernel(const scalar_t* __restrict__ loc, const scalar_t* __restrict__ conf,
                                         const float* __restrict__ anchors, float* __restrict__ boxes,
                                         float* __restrict__ scores, int64_t rows, int64_t A, float vxy, float vwh,
                                         float mexp, float W, float H) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows; r += int64_t(blockDim.x) * gridDim.x) {
    decode_detection<scalar_t>(loc + 4 * r, conf + 2 * r, anchors + 4 * (r % A), vxy, vwh, mexp, W, H, boxes + 4 * r,
                               scores + r);
  }
}

std::tuple<at::Tensor, at::Tensor> decode_detections_cuda(const at::Tensor& loc, const at::Tensor& conf,
                                                          const at::Tensor& anchors, double v0, double v1,
                                                          double max_exponent, double width, double height) {
  check_decode_detections_inputs(loc, conf, anchors, v0, v1, width, height);
  c10::cuda::CUDAGuard guard(loc.device());
  auto l = loc.contiguous();
  auto c = conf.contiguous();
  auto a = anchors.to(at::kFloat).contiguous();
  const int64_t B = l.size(0), A = l.size(1), rows = B * A;
  auto boxes = at::empty({B, A, 4}, l.options().dtype(at::kFloat));
  auto scores = at::empty({B, A}, l.options().dtype(at::kFloat));
  if (rows == 0) return {boxes, scores};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "dsfd_decode_detections_cuda", [&] {
    decode_detections_kernel<scalar_t><<<cuda::grid_for(rows), cuda::kThreads, 0, cuda::stream()>>>(
        l.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(), a.data_ptr<float>(), boxes.data_ptr<float>(),
        scores.data_ptr<float>(), rows, A, static_cast<float>(v0), static_cast<float>(v1),
        static_cast<float>(max_exponent), static_cast<float>(width), static_cast<float>(height));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {boxes, scores};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CUDA, m) {
  m.impl("decode_detections", &decode_detections_cuda);
}

}  // namespace dsfd
