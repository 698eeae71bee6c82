// CUDA kernels for dsfd::match_anchors (no host synchronisation: gt_counts is
// read on the device).
//  1. best_kernel: one thread per anchor loops over its image's ground truths
//     (staged in shared memory), keeping its best one; each ground truth's
//     best anchor is found with a warp max-reduction of a packed
//     (IoU bits, ~anchor) key and one atomicMax per warp — IoU >= 0, so its
//     float bits order like the values, and ~anchor makes ties pick the
//     lowest anchor;
//  2. force_kernel: per image, ground truths in order force their best anchor
//     (later ones win, as in the sequential reference);
//  3. assign_kernel: labels, matched index and encoded targets.
#include <torch/library.h>

#include "../match_anchors.h"
#include "cuda_helpers.h"

namespace dsfd {
namespace {

constexpr int kMatchThreads = 256;
constexpr int kGtTile = 256;

template <typename scalar_t, typename acc_t>
__global__ void best_kernel(const acc_t* __restrict__ anchors, const scalar_t* __restrict__ gt,
                            const int64_t* __restrict__ gt_counts, acc_t* __restrict__ best_iou,
                            int32_t* __restrict__ best_gt, unsigned long long* __restrict__ gt_best, int64_t A,
                            int64_t G) {
  __shared__ acc_t s_gt[kGtTile * 5];
  const int64_t b = blockIdx.y;
  const int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const bool active = a < A;
  const int64_t count = cuda::imin(max(gt_counts[b], int64_t(0)), G);
  acc_t ax1 = 0, ay1 = 0, ax2 = 0, ay2 = 0, aarea = 0;
  if (active) {
    const acc_t cx = anchors[4 * a], cy = anchors[4 * a + 1], w = anchors[4 * a + 2], h = anchors[4 * a + 3];
    ax1 = cx - w / 2;
    ay1 = cy - h / 2;
    ax2 = cx + w / 2;
    ay2 = cy + h / 2;
    aarea = (ax2 - ax1) * (ay2 - ay1);
  }
  // Like the CPU kernel: with faces, start at (IoU 0, face 0), so a NaN IoU never leaves "no face"
  acc_t my_best = count > 0 ? acc_t(0) : acc_t(-1);
  int32_t my_gt = count > 0 ? 0 : -1;
  const unsigned lane = threadIdx.x & 31;
  for (int64_t g0 = 0; g0 < count; g0 += kGtTile) {
    const int64_t tile = cuda::imin(kGtTile, count - g0);
    __syncthreads();
    for (int64_t t = threadIdx.x; t < tile; t += blockDim.x) {
      const scalar_t* p = gt + (b * G + g0 + t) * 4;
      const acc_t x1 = p[0], y1 = p[1], x2 = p[2], y2 = p[3];
      s_gt[t * 5 + 0] = x1;
      s_gt[t * 5 + 1] = y1;
      s_gt[t * 5 + 2] = x2;
      s_gt[t * 5 + 3] = y2;
      s_gt[t * 5 + 4] = (x2 - x1) * (y2 - y1);
    }
    __syncthreads();
    for (int64_t t = 0; t < tile; ++t) {
      const acc_t* q = s_gt + t * 5;
      // Same operand order as the CPU kernel: ground truth first.
      acc_t iou = active ? box_pair_iou<acc_t>(q[0], q[1], q[2], q[3], q[4], ax1, ay1, ax2, ay2, aarea) : acc_t(-1);
      if (iou > my_best) {  // strict: lowest ground-truth index on ties
        my_best = iou;
        my_gt = static_cast<int32_t>(g0 + t);
      }
      // Per-ground-truth best anchor; most warps see no overlap and skip.
      const bool overlaps = iou > acc_t(0);
      if (__any_sync(0xffffffffu, overlaps)) {
        const float f = overlaps ? static_cast<float>(iou) : 0.0f;
        unsigned long long key =
            overlaps ? ((static_cast<unsigned long long>(__float_as_uint(f)) << 32) |
                        (0xffffffffull - static_cast<unsigned long long>(a)))
                     : 0ull;
        for (int off = 16; off > 0; off >>= 1) {
          const unsigned long long other = __shfl_xor_sync(0xffffffffu, key, off);
          key = other > key ? other : key;
        }
        if (lane == 0) atomicMax(gt_best + b * G + g0 + t, key);
      }
    }
  }
  if (active) {
    best_iou[b * A + a] = my_best;
    best_gt[b * A + a] = my_gt;
  }
}

template <typename acc_t>
__global__ void force_kernel(const unsigned long long* __restrict__ gt_best, const int64_t* __restrict__ gt_counts,
                             acc_t* __restrict__ best_iou, int32_t* __restrict__ best_gt, int64_t A, int64_t G,
                             int64_t B) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  const int64_t count = cuda::imin(max(gt_counts[b], int64_t(0)), G);
  for (int64_t g = 0; g < count; ++g) {  // in order: a later ground truth wins a shared anchor
    const unsigned long long key = gt_best[b * G + g];
    if ((key >> 32) == 0) continue;  // overlaps no anchor: forces nothing
    const int64_t a = static_cast<int64_t>(0xffffffffull - (key & 0xffffffffull));
    best_gt[b * A + a] = static_cast<int32_t>(g);
    best_iou[b * A + a] = acc_t(2);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void assign_kernel(const acc_t* __restrict__ anchors, const scalar_t* __restrict__ gt,
                              const acc_t* __restrict__ best_iou, const int32_t* __restrict__ best_gt,
                              int64_t* __restrict__ labels, int64_t* __restrict__ matched,
                              scalar_t* __restrict__ targets, int64_t A, int64_t G, int64_t total, acc_t pos_thr,
                              bool has_ignore, acc_t ign_thr, acc_t var_xy, acc_t var_wh) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < total; r += int64_t(blockDim.x) * gridDim.x) {
    const int64_t b = r / A, a = r % A;
    const acc_t iou = best_iou[r];
    const int32_t g = best_gt[r];
    if (iou >= pos_thr && g >= 0) {
      const scalar_t* p = gt + (b * G + g) * 4;
      const acc_t gbox[4] = {p[0], p[1], p[2], p[3]};
      labels[r] = 1;
      matched[r] = g;
      encode_box(gbox, anchors + 4 * a, var_xy, var_wh, targets + 4 * r);
    } else {
      labels[r] = (has_ignore && iou >= ign_thr && g >= 0) ? -1 : 0;
      matched[r] = -1;
      for (int c = 0; c < 4; ++c) targets[4 * r + c] = scalar_t(0);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> match_anchors_cuda(const at::Tensor& anchors,
                                                                  const at::Tensor& gt_boxes,
                                                                  const at::Tensor& gt_counts, double iou_threshold,
                                                                  c10::optional<double> ignore_threshold, double v0,
                                                                  double v1) {
  check_match_inputs(anchors, gt_boxes, gt_counts, iou_threshold, ignore_threshold, v0, v1);
  c10::cuda::CUDAGuard guard(gt_boxes.device());
  const int64_t B = gt_boxes.size(0), G = gt_boxes.size(1), A = anchors.size(0);
  auto labels = at::empty({B, A}, gt_boxes.options().dtype(at::kLong));
  auto matched = at::empty({B, A}, gt_boxes.options().dtype(at::kLong));
  auto targets = at::empty({B, A, 4}, gt_boxes.options());
  if (B == 0 || A == 0) return {labels, matched, targets};
  auto stream = cuda::stream();
  auto counts = gt_counts.to(at::kLong).contiguous();
  auto gt = gt_boxes.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt.scalar_type(), "dsfd_match_anchors_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto anc = anchors.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    auto best_iou = at::empty({B, A}, anc.options());
    auto best_gt = at::empty({B, A}, gt.options().dtype(at::kInt));
    auto gt_best = at::zeros({B, std::max<int64_t>(G, 1)}, gt.options().dtype(at::kLong));
    auto* gt_best_ptr = reinterpret_cast<unsigned long long*>(gt_best.data_ptr<int64_t>());
    dim3 grid(cuda::ceil_div<int64_t>(A, kMatchThreads), B);
    best_kernel<scalar_t, acc_t><<<grid, kMatchThreads, 0, stream>>>(anc.data_ptr<acc_t>(), gt.data_ptr<scalar_t>(),
                                                                      counts.data_ptr<int64_t>(),
                                                                      best_iou.data_ptr<acc_t>(),
                                                                      best_gt.data_ptr<int32_t>(), gt_best_ptr, A, G);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    force_kernel<acc_t><<<cuda::ceil_div<int64_t>(B, 32), 32, 0, stream>>>(
        gt_best_ptr, counts.data_ptr<int64_t>(), best_iou.data_ptr<acc_t>(), best_gt.data_ptr<int32_t>(), A, G, B);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t total = B * A;
    assign_kernel<scalar_t, acc_t><<<cuda::grid_for(total), cuda::kThreads, 0, stream>>>(
        anc.data_ptr<acc_t>(), gt.data_ptr<scalar_t>(), best_iou.data_ptr<acc_t>(), best_gt.data_ptr<int32_t>(),
        labels.data_ptr<int64_t>(), matched.data_ptr<int64_t>(), targets.data_ptr<scalar_t>(), A, G, total,
        static_cast<acc_t>(iou_threshold), ignore_threshold.has_value(),
        static_cast<acc_t>(ignore_threshold.value_or(0.0)), static_cast<acc_t>(v0), static_cast<acc_t>(v1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {labels, matched, targets};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CUDA, m) {
  m.impl("match_anchors", &match_anchors_cuda);
}

}  // namespace dsfd
