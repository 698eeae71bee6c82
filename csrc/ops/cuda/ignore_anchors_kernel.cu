// CUDA kernel for dsfd::ignore_anchors: one thread per (anchor, image); the
// image's regions are staged in shared memory in tiles; ignore_counts is read
// on the device (no host synchronisation).
#include <torch/library.h>

#include "../ignore_anchors.h"
#include "cuda_helpers.h"

namespace dsfd {
namespace {

constexpr int kIgnoreThreads = 256;
constexpr int kRegionTile = 256;

template <typename scalar_t, typename acc_t>
__global__ void ignore_kernel(const acc_t* __restrict__ anchors, const scalar_t* __restrict__ regions,
                              const int64_t* __restrict__ counts, int64_t* __restrict__ labels, int64_t A, int64_t M,
                              acc_t thr) {
  __shared__ acc_t s_reg[kRegionTile * 5];
  const int64_t b = blockIdx.y;
  const int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t count = cuda::imin(max(counts[b], int64_t(0)), M);
  bool background = false;
  acc_t ax1 = 0, ay1 = 0, ax2 = 0, ay2 = 0, aarea = 0;
  if (a < A) {
    background = labels[b * A + a] == 0;
    const acc_t cx = anchors[4 * a], cy = anchors[4 * a + 1], w = anchors[4 * a + 2], h = anchors[4 * a + 3];
    ax1 = cx - w / 2;
    ay1 = cy - h / 2;
    ax2 = cx + w / 2;
    ay2 = cy + h / 2;
    aarea = (ax2 - ax1) * (ay2 - ay1);
  }
  bool ignored = false;
  for (int64_t m0 = 0; m0 < count; m0 += kRegionTile) {
    const int64_t tile = cuda::imin(kRegionTile, count - m0);
    __syncthreads();
    for (int64_t t = threadIdx.x; t < tile; t += blockDim.x) {
      const scalar_t* p = regions + (b * M + m0 + t) * 4;
      const acc_t x1 = p[0], y1 = p[1], x2 = p[2], y2 = p[3];
      s_reg[t * 5 + 0] = x1;
      s_reg[t * 5 + 1] = y1;
      s_reg[t * 5 + 2] = x2;
      s_reg[t * 5 + 3] = y2;
      s_reg[t * 5 + 4] = (x2 - x1) * (y2 - y1);
    }
    __syncthreads();
    if (background && !ignored) {
      for (int64_t t = 0; t < tile; ++t) {
        const acc_t* q = s_reg + t * 5;
        if (box_pair_iou(q[0], q[1], q[2], q[3], q[4], ax1, ay1, ax2, ay2, aarea) >= thr) {
          ignored = true;
          break;
        }
      }
    }
  }
  if (ignored) labels[b * A + a] = -1;
}

at::Tensor ignore_anchors_cuda(const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& ignore_boxes,
                               const at::Tensor& ignore_counts, double iou_threshold) {
  check_ignore_inputs(anchors, labels, ignore_boxes, ignore_counts, iou_threshold);
  c10::cuda::CUDAGuard guard(labels.device());
  auto out = labels.to(at::kLong, /*non_blocking=*/false, /*copy=*/true).contiguous();
  const int64_t B = ignore_boxes.size(0), M = ignore_boxes.size(1), A = anchors.size(0);
  if (out.numel() == 0 || M == 0) return out;
  TORCH_CHECK(B <= 65535, "dsfd::ignore_anchors: at most 65535 images per call on CUDA, got ", B);
  auto counts = ignore_counts.to(at::kLong).contiguous();
  auto boxes = ignore_boxes.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "dsfd_ignore_anchors_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto anc = anchors.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const dim3 grid(static_cast<unsigned int>(cuda::ceil_div<int64_t>(A, kIgnoreThreads)),
                    static_cast<unsigned int>(B));
    ignore_kernel<scalar_t, acc_t><<<grid, kIgnoreThreads, 0, cuda::stream()>>>(
        anc.data_ptr<acc_t>(), boxes.data_ptr<scalar_t>(), counts.data_ptr<int64_t>(), out.data_ptr<int64_t>(), A, M,
        static_cast<acc_t>(iou_threshold));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CUDA, m) {
  m.impl("ignore_anchors", &ignore_anchors_cuda);
}

}  // namespace dsfd
