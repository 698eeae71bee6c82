// CUDA kernel for dsfd::box_voting: the candidates are sorted once on the
// device, then a single block walks them greedily; for each surviving box its
// threads test all later boxes in parallel and reduce the group's weighted
// sums. Box voting is a sequential merge over one image's (few thousand)
// multi-scale detections, so one block is enough; one host sync sizes the
// variable-length result.
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <math_constants.h>

#include "../box_voting.h"
#include "cuda_helpers.h"

namespace dsfd {
namespace {

constexpr int kVoteThreads = 512;

struct VoteSums {
  double x1, y1, x2, y2, w, best;
  int count;
};

struct VoteSumOp {
  __device__ VoteSums operator()(const VoteSums& a, const VoteSums& b) const {
    return {a.x1 + b.x1, a.y1 + b.y1, a.x2 + b.x2, a.y2 + b.y2, a.w + b.w, a.best > b.best ? a.best : b.best,
            a.count + b.count};
  }
};

// boxes: sorted [m, 4] (math type), scores sorted [m].
template <typename acc_t>
__global__ void __launch_bounds__(kVoteThreads)
    box_voting_kernel(const acc_t* __restrict__ boxes, const acc_t* __restrict__ scores, int64_t m, acc_t thr,
                      int64_t max_keep, uint8_t* __restrict__ alive, double* __restrict__ out_boxes,
                      double* __restrict__ out_scores, int64_t* __restrict__ out_count) {
  using Reduce = cub::BlockReduce<VoteSums, kVoteThreads>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ int64_t s_kept;
  if (threadIdx.x == 0) s_kept = 0;
  __syncthreads();
  for (int64_t i = 0; i < m; ++i) {
    if (s_kept >= max_keep) break;
    if (!alive[i]) continue;  // written by this block before the last barrier
    const acc_t ix1 = boxes[4 * i], iy1 = boxes[4 * i + 1], ix2 = boxes[4 * i + 2] + 1, iy2 = boxes[4 * i + 3] + 1;
    const acc_t iarea = (ix2 - ix1) * (iy2 - iy1);
    VoteSums local{0, 0, 0, 0, 0, -CUDART_INF, 0};  // scores may be negative
    for (int64_t j = i + threadIdx.x; j < m; j += blockDim.x) {
      if (!alive[j]) continue;
      if (j != i) {
        const acc_t jx1 = boxes[4 * j], jy1 = boxes[4 * j + 1], jx2 = boxes[4 * j + 2] + 1, jy2 = boxes[4 * j + 3] + 1;
        const acc_t v = box_pair_iou<acc_t>(ix1, iy1, ix2, iy2, iarea, jx1, jy1, jx2, jy2, (jx2 - jx1) * (jy2 - jy1));
        if (!(v >= thr)) continue;
        // alive[i] itself is never cleared: other warps may still be reading it at the top of
        // this iteration (and later iterations never look back at it)
        alive[j] = 0;
      }
      const double w = scores[j];
      local.x1 += w * boxes[4 * j];
      local.y1 += w * boxes[4 * j + 1];
      local.x2 += w * boxes[4 * j + 2];
      local.y2 += w * boxes[4 * j + 3];
      local.w += w;
      local.best = w > local.best ? w : local.best;
      local.count += 1;
    }
    const VoteSums total = Reduce(temp).Reduce(local, VoteSumOp());
    if (threadIdx.x == 0 && total.count > 1) {  // a box nobody agrees with is dropped
      const int64_t k = s_kept;
      out_boxes[4 * k] = total.x1 / total.w;
      out_boxes[4 * k + 1] = total.y1 / total.w;
      out_boxes[4 * k + 2] = total.x2 / total.w;
      out_boxes[4 * k + 3] = total.y2 / total.w;
      out_scores[k] = total.best;
      s_kept = k + 1;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) *out_count = s_kept;
}

std::tuple<at::Tensor, at::Tensor> box_voting_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                   double iou_threshold, int64_t max_keep) {
  check_box_voting_inputs(boxes, scores, iou_threshold, max_keep);
  c10::cuda::CUDAGuard guard(boxes.device());
  const auto acc_type = at::toOpMathType(boxes.scalar_type());
  // NaN scores take part in nothing; a stable descending sort keeps ties in index order.
  auto valid = at::logical_not(at::isnan(scores));
  auto b = boxes.index({valid}).to(acc_type).contiguous();
  auto s = scores.index({valid}).to(acc_type).contiguous();
  const int64_t m = s.size(0);
  if (m == 0 || max_keep == 0) return {at::empty({0, 4}, boxes.options()), at::empty({0}, scores.options())};
  auto order = std::get<1>(at::sort(s, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  b = b.index_select(0, order).contiguous();
  s = s.index_select(0, order).contiguous();
  auto alive = at::ones({m}, boxes.options().dtype(at::kByte));
  const int64_t cap = std::min(max_keep, m);
  auto out_b = at::empty({cap, 4}, boxes.options().dtype(at::kDouble));
  auto out_s = at::empty({cap}, boxes.options().dtype(at::kDouble));
  auto count = at::zeros({1}, boxes.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(acc_type, "dsfd_box_voting_cuda", [&] {
    box_voting_kernel<scalar_t><<<1, kVoteThreads, 0, cuda::stream()>>>(
        b.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), m, static_cast<scalar_t>(iou_threshold), cap,
        alive.data_ptr<uint8_t>(), out_b.data_ptr<double>(), out_s.data_ptr<double>(), count.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const int64_t k = count.item<int64_t>();
  return {out_b.slice(0, 0, k).to(boxes.scalar_type()), out_s.slice(0, 0, k).to(scores.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CUDA, m) {
  m.impl("box_voting", &box_voting_cuda);
}

}  // namespace dsfd
