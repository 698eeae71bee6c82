// CUDA kernels for dsfd::batched_nms and dsfd::nms.
//
// batched_nms never synchronises with the host (it can be captured in a CUDA
// graph): every size it allocates is known from the shapes, and the per-image
// candidate counts stay on the device.
//   1. keys: score (or -inf when it fails the threshold), per-image valid
//      counts via one atomic per block;
//   2. a stable segmented radix sort per image (CUB), descending, so ties keep
//      the lower index first;
//   3. the best K = min(pre_nms_top_k, N) are gathered in math precision;
//   4. a 64 x 64 tile kernel writes the upper-triangular IoU bitmask;
//   5. one block per image walks the mask greedily and stops at max_keep.
// nms is the same pipeline for one image without a score threshold, plus
// one sync to size its output (its contract is a variable-length result).
#include <torch/library.h>

#include <cub/cub.cuh>

#include <limits>
#include <type_traits>

#include "../nms.h"
#include "cuda_helpers.h"

namespace dsfd {
namespace {

constexpr int kTile = 64;  // boxes per mask word
constexpr int kReduceThreads = 256;

// Sort keys in the scores' math type (float, or double for float64 scores), so
// the threshold test and the order match the CPU kernel exactly.
template <typename scalar_t>
using key_type = typename std::conditional<std::is_same<scalar_t, double>::value, double, float>::type;

template <typename scalar_t>
__global__ void prepare_keys_kernel(const scalar_t* __restrict__ scores, key_type<scalar_t>* __restrict__ keys,
                                    int32_t* __restrict__ vals, int32_t* __restrict__ valid, int64_t N,
                                    double score_threshold, bool use_threshold) {
  using key_t = key_type<scalar_t>;
  const int64_t b = blockIdx.y;
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  bool pass = false;
  if (i < N) {
    // +0 folds -0.0 into +0.0: the radix sort orders by bits.
    const key_t s = static_cast<key_t>(scores[b * N + i]) + key_t(0);
    pass = use_threshold ? (s > static_cast<key_t>(score_threshold)) : !isnan(s);
    keys[b * N + i] = pass ? s : -std::numeric_limits<key_t>::infinity();
    vals[b * N + i] = static_cast<int32_t>(i);
  }
  const int block_count = __syncthreads_count(pass);
  if (threadIdx.x == 0 && block_count > 0) atomicAdd(valid + b, block_count);
}

// Copies the best K candidates of each image (structure of arrays, math type).
template <typename scalar_t, typename acc_t>
__global__ void gather_top_kernel(const scalar_t* __restrict__ boxes, const int32_t* __restrict__ sorted_vals,
                                  acc_t* __restrict__ top_boxes, acc_t* __restrict__ top_area,
                                  int32_t* __restrict__ top_idx, int64_t N, int64_t K) {
  const int64_t b = blockIdx.y;
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= K) return;
  const int32_t src = sorted_vals[b * N + r];
  const scalar_t* p = boxes + (b * N + src) * 4;
  const acc_t x1 = p[0], y1 = p[1], x2 = p[2], y2 = p[3];
  acc_t* q = top_boxes + (b * K + r) * 4;
  q[0] = x1;
  q[1] = y1;
  q[2] = x2;
  q[3] = y2;
  top_area[b * K + r] = (x2 - x1) * (y2 - y1);
  top_idx[b * K + r] = src;
}

// mask[b, i, c] bit t: candidate i suppresses candidate c * 64 + t (> i).
template <typename acc_t>
__global__ void nms_mask_kernel(const acc_t* __restrict__ top_boxes, const acc_t* __restrict__ top_area,
                                const int32_t* __restrict__ valid, uint64_t* __restrict__ mask, int64_t K,
                                int64_t col_blocks, acc_t thr) {
  const int64_t b = blockIdx.z;
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;
  const int64_t n = cuda::imin(valid[b], K);
  const int64_t row_size = cuda::imin(n - row_block * kTile, kTile);
  const int64_t col_size = cuda::imin(n - col_block * kTile, kTile);
  if (row_size <= 0 || col_size <= 0) return;

  __shared__ acc_t cols[kTile * 5];
  if (threadIdx.x < col_size) {
    const int64_t j = b * K + col_block * kTile + threadIdx.x;
    for (int c = 0; c < 4; ++c) cols[threadIdx.x * 5 + c] = top_boxes[j * 4 + c];
    cols[threadIdx.x * 5 + 4] = top_area[j];
  }
  __syncthreads();
  if (threadIdx.x >= row_size) return;
  const int64_t i = row_block * kTile + threadIdx.x;
  const acc_t* r = top_boxes + (b * K + i) * 4;
  const acc_t x1 = r[0], y1 = r[1], x2 = r[2], y2 = r[3], area = top_area[b * K + i];
  uint64_t bits = 0;
  const int start = row_block == col_block ? threadIdx.x + 1 : 0;
  for (int t = start; t < col_size; ++t) {
    const acc_t* c = cols + t * 5;
    if (box_pair_iou<acc_t>(x1, y1, x2, y2, area, c[0], c[1], c[2], c[3], c[4]) > thr) bits |= 1ULL << t;
  }
  mask[(b * K + i) * col_blocks + col_block] = bits;
}

// One block per image: greedy walk over the sorted candidates.
template <typename scalar_t>
__global__ void nms_reduce_kernel(const uint64_t* __restrict__ mask, const int32_t* __restrict__ valid,
                                  const int32_t* __restrict__ top_idx, const scalar_t* __restrict__ boxes,
                                  const scalar_t* __restrict__ scores, scalar_t* __restrict__ out_boxes,
                                  scalar_t* __restrict__ out_scores, int64_t* __restrict__ out_idx,
                                  int64_t* __restrict__ counts, int64_t N, int64_t K, int64_t col_blocks,
                                  int64_t max_keep) {
  extern __shared__ uint64_t removed[];
  const int64_t b = blockIdx.x;
  const int64_t n = cuda::imin(valid[b], K);
  const int64_t n_blocks = cuda::ceil_div<int64_t>(n, kTile);
  for (int64_t w = threadIdx.x; w < n_blocks; w += blockDim.x) removed[w] = 0;
  __syncthreads();
  int64_t kept = 0;
  for (int64_t i = 0; i < n && kept < max_keep; ++i) {
    // Bit i is never changed by the ORs below (mask rows only hold bits > i),
    // so this read needs no barrier of its own.
    if ((removed[i / kTile] >> (i % kTile)) & 1ULL) continue;
    if (threadIdx.x == 0) {
      const int64_t src = top_idx[b * K + i];
      const int64_t o = b * max_keep + kept;
      for (int c = 0; c < 4; ++c) out_boxes[o * 4 + c] = boxes[(b * N + src) * 4 + c];
      out_scores[o] = scores[b * N + src];
      out_idx[o] = src;
    }
    ++kept;
    const uint64_t* row = mask + (b * K + i) * col_blocks;
    for (int64_t w = i / kTile + threadIdx.x; w < n_blocks; w += blockDim.x) removed[w] |= row[w];
    __syncthreads();
  }
  if (threadIdx.x == 0) counts[b] = kept;
}

// Fills the four outputs (already allocated, zero / -1 padded).
void batched_nms_cuda_into(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                           double score_threshold, bool use_threshold, int64_t pre_nms_top_k, int64_t max_keep,
                           at::Tensor& out_boxes, at::Tensor& out_scores, at::Tensor& out_idx, at::Tensor& counts) {
  const int64_t B = boxes.size(0), N = boxes.size(1);
  TORCH_CHECK(B * N < (int64_t(1) << 31), "dsfd::batched_nms: B * N = ", B * N,
              " boxes exceed the CUDA kernel's 2^31 limit; split the batch");
  const int64_t K = std::min(pre_nms_top_k, N);
  const int64_t col_blocks = cuda::ceil_div<int64_t>(K, kTile);
  TORCH_CHECK(col_blocks * int64_t(sizeof(uint64_t)) <= 48 * 1024, "dsfd::batched_nms: pre_nms_top_k = ", K,
              " is above the CUDA kernel's limit of ", 48 * 1024 / 8 * kTile, " candidates per image");
  auto stream = cuda::stream();
  auto dev = boxes.options();
  auto vals = at::empty({B, N}, dev.dtype(at::kInt));
  auto vals_sorted = at::empty_like(vals);
  auto valid = at::zeros({B}, dev.dtype(at::kInt));
  auto offsets = at::arange(0, (B + 1) * N, N, dev.dtype(at::kInt));
  const int num_items = static_cast<int>(B * N), num_segments = static_cast<int>(B);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "dsfd_nms_keys", [&] {
    using key_t = key_type<scalar_t>;
    auto keys = at::empty({B, N}, dev.dtype(c10::CppTypeToScalarType<key_t>::value));
    auto keys_sorted = at::empty_like(keys);
    dim3 grid(cuda::ceil_div<int64_t>(N, cuda::kThreads), B);
    prepare_keys_kernel<scalar_t><<<grid, cuda::kThreads, 0, stream>>>(
        scores.data_ptr<scalar_t>(), keys.data_ptr<key_t>(), vals.data_ptr<int32_t>(), valid.data_ptr<int32_t>(), N,
        score_threshold, use_threshold);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // stable segmented radix sort per image, descending: ties keep the lower index first
    const int end_bit = static_cast<int>(sizeof(key_t) * 8);
    size_t temp_bytes = 0;
    C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        nullptr, temp_bytes, keys.data_ptr<key_t>(), keys_sorted.data_ptr<key_t>(), vals.data_ptr<int32_t>(),
        vals_sorted.data_ptr<int32_t>(), num_items, num_segments, offsets.data_ptr<int32_t>(),
        offsets.data_ptr<int32_t>() + 1, 0, end_bit, stream));
    auto temp = at::empty({static_cast<int64_t>(temp_bytes)}, dev.dtype(at::kByte));
    C10_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        temp.data_ptr(), temp_bytes, keys.data_ptr<key_t>(), keys_sorted.data_ptr<key_t>(), vals.data_ptr<int32_t>(),
        vals_sorted.data_ptr<int32_t>(), num_items, num_segments, offsets.data_ptr<int32_t>(),
        offsets.data_ptr<int32_t>() + 1, 0, end_bit, stream));
  });

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "dsfd_batched_nms_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto top_boxes = at::empty({B, K, 4}, dev.dtype(c10::CppTypeToScalarType<acc_t>::value));
    auto top_area = at::empty({B, K}, top_boxes.options());
    auto top_idx = at::empty({B, K}, dev.dtype(at::kInt));
    dim3 ggrid(cuda::ceil_div<int64_t>(K, cuda::kThreads), B);
    gather_top_kernel<scalar_t, acc_t><<<ggrid, cuda::kThreads, 0, stream>>>(
        boxes.data_ptr<scalar_t>(), vals_sorted.data_ptr<int32_t>(), top_boxes.data_ptr<acc_t>(),
        top_area.data_ptr<acc_t>(), top_idx.data_ptr<int32_t>(), N, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    auto mask = at::empty({B, K, col_blocks}, dev.dtype(at::kLong));
    dim3 mgrid(col_blocks, col_blocks, B);
    nms_mask_kernel<acc_t><<<mgrid, kTile, 0, stream>>>(
        top_boxes.data_ptr<acc_t>(), top_area.data_ptr<acc_t>(), valid.data_ptr<int32_t>(),
        reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>()), K, col_blocks, static_cast<acc_t>(iou_threshold));
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    nms_reduce_kernel<scalar_t><<<B, kReduceThreads, col_blocks * sizeof(uint64_t), stream>>>(
        reinterpret_cast<const uint64_t*>(mask.data_ptr<int64_t>()), valid.data_ptr<int32_t>(),
        top_idx.data_ptr<int32_t>(), boxes.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(),
        out_boxes.data_ptr<scalar_t>(), out_scores.data_ptr<scalar_t>(), out_idx.data_ptr<int64_t>(),
        counts.data_ptr<int64_t>(), N, K, col_blocks, max_keep);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batched_nms_cuda(const at::Tensor& boxes,
                                                                            const at::Tensor& scores,
                                                                            double iou_threshold,
                                                                            double score_threshold,
                                                                            int64_t pre_nms_top_k, int64_t max_keep) {
  check_batched_nms_inputs(boxes, scores, iou_threshold, pre_nms_top_k, max_keep);
  c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t B = boxes.size(0);
  auto out_boxes = at::zeros({B, max_keep, 4}, boxes.options());
  auto out_scores = at::zeros({B, max_keep}, scores.options());
  auto out_idx = at::full({B, max_keep}, -1, boxes.options().dtype(at::kLong));
  auto counts = at::zeros({B}, boxes.options().dtype(at::kLong));
  if (B == 0 || boxes.size(1) == 0) return {out_boxes, out_scores, out_idx, counts};
  auto b = boxes.contiguous();
  auto s = scores.contiguous();
  batched_nms_cuda_into(b, s, iou_threshold, score_threshold, true, pre_nms_top_k, max_keep, out_boxes, out_scores,
                        out_idx, counts);
  return {out_boxes, out_scores, out_idx, counts};
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_inputs(boxes, scores, iou_threshold);
  c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t N = boxes.size(0);
  if (N == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  auto b = boxes.contiguous().unsqueeze(0);
  auto s = scores.contiguous().unsqueeze(0);
  auto out_boxes = at::empty({1, N, 4}, boxes.options());
  auto out_scores = at::empty({1, N}, scores.options());
  auto out_idx = at::empty({1, N}, boxes.options().dtype(at::kLong));
  auto counts = at::zeros({1}, boxes.options().dtype(at::kLong));
  batched_nms_cuda_into(b, s, iou_threshold, 0.0, false, N, N, out_boxes, out_scores, out_idx, counts);
  const int64_t kept = counts.item<int64_t>();  // the one sync: the result's length
  return out_idx[0].slice(0, 0, kept).clone();
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
}

}  // namespace dsfd
