// Greedy NMS over one image's candidates, shared by the CPU nms and
// batched_nms kernels.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../box_math.h"

namespace dsfd {
namespace cpu {

// A candidate: its score (in the math type) and its index in the input.
template <typename acc_t>
struct ScoredIndex {
  acc_t score;
  int64_t index;
};

// Strict total order: higher score first, then lower index (stable sort).
template <typename acc_t>
inline bool better(const ScoredIndex<acc_t>& a, const ScoredIndex<acc_t>& b) {
  return a.score > b.score || (a.score == b.score && a.index < b.index);
}

// Orders `cand` best-first, keeping only the best `top_k` (linear selection
// first when top_k is smaller than the candidate count).
template <typename acc_t>
inline void sort_top_k(std::vector<ScoredIndex<acc_t>>& cand, int64_t top_k) {
  if (static_cast<int64_t>(cand.size()) > top_k) {
    std::nth_element(cand.begin(), cand.begin() + top_k, cand.end(), better<acc_t>);
    cand.resize(top_k);
  }
  std::sort(cand.begin(), cand.end(), better<acc_t>);
}

// Scratch buffers reused across calls by one thread.
template <typename acc_t>
struct NmsScratch {
  std::vector<acc_t> x1, y1, x2, y2, area;
  std::vector<uint8_t> suppressed;
};

// Greedy NMS over `cand` (already best-first). Box i is suppressed by a kept
// box k when inter / (area_k + area_i - inter) > thr, exactly
// torchvision's arithmetic. Writes kept positions (into cand) to `keep` and
// returns how many, stopping at max_keep.
template <typename scalar_t, typename acc_t>
inline int64_t greedy_nms(const scalar_t* boxes, const std::vector<ScoredIndex<acc_t>>& cand, acc_t thr,
                          int64_t max_keep, NmsScratch<acc_t>& s, int64_t* keep) {
  const int64_t n = static_cast<int64_t>(cand.size());
  s.x1.resize(n);
  s.y1.resize(n);
  s.x2.resize(n);
  s.y2.resize(n);
  s.area.resize(n);
  s.suppressed.assign(n, 0);
  // Sorted structure-of-arrays copy: the inner loop then reads memory in
  // order and vectorises (torchvision's loop goes through an index array).
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* b = boxes + 4 * cand[i].index;
    s.x1[i] = b[0];
    s.y1[i] = b[1];
    s.x2[i] = b[2];
    s.y2[i] = b[3];
    s.area[i] = (s.x2[i] - s.x1[i]) * (s.y2[i] - s.y1[i]);
  }
  const acc_t* __restrict__ x1 = s.x1.data();
  const acc_t* __restrict__ y1 = s.y1.data();
  const acc_t* __restrict__ x2 = s.x2.data();
  const acc_t* __restrict__ y2 = s.y2.data();
  const acc_t* __restrict__ area = s.area.data();
  uint8_t* __restrict__ sup = s.suppressed.data();
  int64_t num_kept = 0;
  for (int64_t i = 0; i < n && num_kept < max_keep; ++i) {
    if (sup[i]) continue;
    keep[num_kept++] = i;
    const acc_t ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], iarea = area[i];
    for (int64_t j = i + 1; j < n; ++j) {
      const acc_t iou = box_pair_iou(ix1, iy1, ix2, iy2, iarea, x1[j], y1[j], x2[j], y2[j], area[j]);
      sup[j] |= static_cast<uint8_t>(iou > thr);
    }
  }
  return num_kept;
}

}  // namespace cpu
}  // namespace dsfd
