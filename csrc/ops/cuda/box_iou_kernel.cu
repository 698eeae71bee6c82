// CUDA kernel for dsfd::box_iou: one thread per (box1, box2) pair.
#include <torch/library.h>

#include "../box_iou.h"
#include "cuda_helpers.h"

namespace dsfd {
namespace {

template <typename scalar_t>
__global__ void box_iou_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                               scalar_t* __restrict__ out, int64_t N, int64_t M, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t j = idx % M;
    const int64_t row = idx / M;  // batch * N + i
    const int64_t batch = row / N;
    const scalar_t* p = a + 4 * row;
    const scalar_t* q = b + 4 * (batch * M + j);
    const acc_t px1 = p[0], py1 = p[1], px2 = p[2], py2 = p[3];
    const acc_t qx1 = q[0], qy1 = q[1], qx2 = q[2], qy2 = q[3];
    out[idx] = static_cast<scalar_t>(box_pair_iou<acc_t>(px1, py1, px2, py2, (px2 - px1) * (py2 - py1), qx1, qy1, qx2,
                                                      qy2, (qx2 - qx1) * (qy2 - qy1)));
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_inputs(boxes1, boxes2);
  c10::cuda::CUDAGuard guard(boxes1.device());
  const bool batched = boxes1.dim() == 3;
  const int64_t B = batched ? boxes1.size(0) : 1;
  const int64_t N = boxes1.size(-2), M = boxes2.size(-2);
  auto out = batched ? at::empty({B, N, M}, boxes1.options()) : at::empty({N, M}, boxes1.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto a = boxes1.contiguous();
  auto b = boxes2.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "dsfd_box_iou_cuda", [&] {
    box_iou_kernel<scalar_t><<<cuda::grid_for(total), cuda::kThreads, 0, cuda::stream()>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N, M, total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CUDA, m) {
  m.impl("box_iou", &box_iou_cuda);
}

}  // namespace dsfd
