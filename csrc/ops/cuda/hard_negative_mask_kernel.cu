// CUDA kernel for dsfd::hard_negative_mask: one block per image does a radix
// select (four 8-bit passes) of the k-th hardest negative's key, then marks
// everything harder plus the first ties in index order (block-wide scan).
// Linear in the anchors, no sort, no host synchronisation.
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "../hard_negative_mask.h"
#include "cuda_helpers.h"

namespace dsfd {
namespace {

constexpr int kHnmThreads = 1024;

// Order-preserving map of a float to uint32 (larger loss -> larger key); NaN
// is the largest, as torch.sort orders it; -0.0 folds into +0.0.
__device__ inline uint32_t loss_key(float x) {
  if (isnan(x)) return 0xffffffffu;
  const uint32_t u = __float_as_uint(x + 0.0f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kHnmThreads)
    hnm_kernel(const scalar_t* __restrict__ loss, const int64_t* __restrict__ labels, bool* __restrict__ out,
               int64_t A, int64_t ratio, int64_t min_neg) {
  using Reduce = cub::BlockReduce<int64_t, kHnmThreads>;
  using Scan = cub::BlockScan<int, kHnmThreads>;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  } temp;
  __shared__ int hist[256];
  __shared__ int64_t s_num_pos, s_num_neg;
  __shared__ uint32_t s_digit;
  __shared__ int64_t s_remaining;

  const int64_t b = blockIdx.x;
  const scalar_t* l = loss + b * A;
  const int64_t* lab = labels + b * A;
  bool* o = out + b * A;

  int64_t pos = 0, neg = 0;
  for (int64_t a = threadIdx.x; a < A; a += blockDim.x) {
    pos += lab[a] > 0;
    neg += lab[a] == 0;
    o[a] = lab[a] > 0;
  }
  int64_t total_pos = Reduce(temp.reduce).Sum(pos);
  __syncthreads();
  int64_t total_neg = Reduce(temp.reduce).Sum(neg);
  if (threadIdx.x == 0) {
    s_num_pos = total_pos;
    s_num_neg = total_neg;
  }
  __syncthreads();
  const int64_t wanted = ratio * s_num_pos;
  const int64_t k = cuda::imin(wanted > min_neg ? wanted : min_neg, A - 1);
  if (k <= 0) return;
  if (k >= s_num_neg) {  // every negative is taken
    for (int64_t a = threadIdx.x; a < A; a += blockDim.x)
      if (lab[a] == 0) o[a] = true;
    return;
  }

  // Radix select: the key of the k-th hardest negative.
  uint32_t prefix = 0, prefix_mask = 0;
  int64_t remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += blockDim.x) hist[d] = 0;
    __syncthreads();
    for (int64_t a = threadIdx.x; a < A; a += blockDim.x) {
      if (lab[a] != 0) continue;
      const uint32_t key = loss_key(static_cast<float>(l[a]));
      if ((key & prefix_mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xff], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t cum = 0;
      for (int d = 255; d >= 0; --d) {
        if (cum + hist[d] >= remaining) {
          s_digit = static_cast<uint32_t>(d);
          s_remaining = remaining - cum;
          break;
        }
        cum += hist[d];
      }
    }
    __syncthreads();
    prefix |= s_digit << shift;
    prefix_mask |= 0xffu << shift;
    remaining = s_remaining;
    __syncthreads();
  }

  // Harder than the threshold key: taken. Equal: the first `remaining` in index order.
  int64_t taken_ties = 0;
  for (int64_t start = 0; start < A; start += blockDim.x) {
    const int64_t a = start + threadIdx.x;
    int is_tie = 0;
    if (a < A && lab[a] == 0) {
      const uint32_t key = loss_key(static_cast<float>(l[a]));
      if (key > prefix) o[a] = true;
      is_tie = key == prefix;
    }
    int before = 0, chunk_ties = 0;
    Scan(temp.scan).ExclusiveSum(is_tie, before, chunk_ties);
    if (is_tie && taken_ties + before < remaining) o[a] = true;
    taken_ties += chunk_ties;
    __syncthreads();
  }
}

at::Tensor hard_negative_mask_cuda(const at::Tensor& conf_loss, const at::Tensor& labels, int64_t neg_pos_ratio,
                                   int64_t min_negatives) {
  check_hnm_inputs(conf_loss, labels, neg_pos_ratio, min_negatives);
  c10::cuda::CUDAGuard guard(conf_loss.device());
  const int64_t B = conf_loss.size(0), A = conf_loss.size(1);
  auto out = at::empty({B, A}, conf_loss.options().dtype(at::kBool));
  if (out.numel() == 0) return out;
  auto l = conf_loss.contiguous();
  auto lab = labels.to(at::kLong).contiguous();
  // Keys are float32 (double losses are ranked at float precision).
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "dsfd_hnm_cuda", [&] {
    hnm_kernel<scalar_t><<<B, kHnmThreads, 0, cuda::stream()>>>(l.data_ptr<scalar_t>(), lab.data_ptr<int64_t>(),
                                                                 out.data_ptr<bool>(), A, neg_pos_ratio,
                                                                 min_negatives);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CUDA, m) {
  m.impl("hard_negative_mask", &hard_negative_mask_cuda);
}

}  // namespace dsfd
