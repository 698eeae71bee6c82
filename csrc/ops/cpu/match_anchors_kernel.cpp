// CPU kernel for dsfd::match_anchors.
//
// Three phases, parallel over (image, block of anchors):
//  1. for each ground truth, IoU with every anchor of the block (a
//     vectorisable loop into a small buffer); fold it into the per-anchor best
//     ground truth and record the block's best anchor for that ground truth;
//  2. per image, reduce the blocks' per-ground-truth bests and apply the
//     forced matches in ground-truth order (later ones win);
//  3. labels and encoded targets.
// The full [B, G, A] IoU tensor is never built.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../box_math.h"
#include "../match_anchors.h"

namespace dsfd {
namespace {

constexpr int64_t kBlock = 2048;

template <typename scalar_t>
void match_cpu_impl(const at::Tensor& anchors, const at::Tensor& gt_boxes, const std::vector<int64_t>& counts,
                    double iou_threshold, c10::optional<double> ignore_threshold, double v0, double v1,
                    at::Tensor& labels, at::Tensor& matched, at::Tensor& targets) {
  // Math in float (double for double inputs); anchors are float already.
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = gt_boxes.size(0), G = gt_boxes.size(1), A = anchors.size(0);
  const int64_t num_blocks = (A + kBlock - 1) / kBlock;
  const acc_t* anc = anchors.data_ptr<acc_t>();
  const scalar_t* gt = gt_boxes.data_ptr<scalar_t>();

  // Anchor corners and areas, structure of arrays, computed like
  // reference.anchors_to_corners (cx - w / 2, ...).
  std::vector<acc_t> ax1(A), ay1(A), ax2(A), ay2(A), aarea(A);
  // Per block: the anchors' bounding box and smallest area. Anchors are
  // ordered level, row, column, so a block covers a narrow strip and most
  // ground truths miss it entirely.
  std::vector<acc_t> blk_x1(num_blocks), blk_y1(num_blocks), blk_x2(num_blocks), blk_y2(num_blocks),
      blk_min_area(num_blocks);
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      acc_t bx1 = std::numeric_limits<acc_t>::infinity(), by1 = bx1, min_area = bx1;
      acc_t bx2 = -bx1, by2 = -bx1;
      for (int64_t a = blk * kBlock; a < std::min(A, (blk + 1) * kBlock); ++a) {
        const acc_t cx = anc[4 * a], cy = anc[4 * a + 1], w = anc[4 * a + 2], h = anc[4 * a + 3];
        ax1[a] = cx - w / 2;
        ay1[a] = cy - h / 2;
        ax2[a] = cx + w / 2;
        ay2[a] = cy + h / 2;
        aarea[a] = (ax2[a] - ax1[a]) * (ay2[a] - ay1[a]);
        bx1 = std::min(bx1, ax1[a]);
        by1 = std::min(by1, ay1[a]);
        bx2 = std::max(bx2, ax2[a]);
        by2 = std::max(by2, ay2[a]);
        // NaN areas must disable the shortcut below.
        min_area = aarea[a] > 0 ? std::min(min_area, aarea[a]) : acc_t(0);
      }
      blk_x1[blk] = bx1;
      blk_y1[blk] = by1;
      blk_x2[blk] = bx2;
      blk_y2[blk] = by2;
      blk_min_area[blk] = min_area;
    }
  });

  std::vector<acc_t> best_iou(B * A);
  std::vector<int32_t> best_gt(B * A);
  // Per (image, block, gt): the block's best IoU for that gt and its anchor.
  std::vector<acc_t> blk_iou(B * num_blocks * std::max<int64_t>(G, 1));
  std::vector<int64_t> blk_anchor(B * num_blocks * std::max<int64_t>(G, 1));

  // Phase 1.
  at::parallel_for(0, B * num_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(kBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / num_blocks, blk = task % num_blocks;
      const int64_t a0 = blk * kBlock, n = std::min(kBlock, A - a0);
      acc_t* __restrict__ bi = best_iou.data() + b * A + a0;
      int32_t* __restrict__ bg = best_gt.data() + b * A + a0;
      // With any ground truth, every anchor starts matched to the first one
      // at IoU 0: exactly what the first ground truth leaves wherever it
      // does not overlap (IoU is never negative), so misses need no work.
      const bool any_gt = counts[b] > 0;
      for (int64_t i = 0; i < n; ++i) {
        bi[i] = any_gt ? acc_t(0) : acc_t(-1);
        bg[i] = any_gt ? 0 : -1;
      }
      const acc_t* __restrict__ x1 = ax1.data() + a0;
      const acc_t* __restrict__ y1 = ay1.data() + a0;
      const acc_t* __restrict__ x2 = ax2.data() + a0;
      const acc_t* __restrict__ y2 = ay2.data() + a0;
      const acc_t* __restrict__ ar = aarea.data() + a0;
      acc_t* __restrict__ r = row.data();
      for (int64_t g = 0; g < counts[b]; ++g) {
        const scalar_t* gb = gt + (b * G + g) * 4;
        const acc_t gx1 = gb[0], gy1 = gb[1], gx2 = gb[2], gy2 = gb[3];
        const acc_t garea = (gx2 - gx1) * (gy2 - gy1);
        const int32_t g32 = static_cast<int32_t>(g);
        const int64_t slot = (b * num_blocks + blk) * G + g;
        // A valid ground truth outside the block's bounding box has IoU exactly
        // 0 with every anchor there, which changes nothing: skip the block.
        if (garea > 0 && blk_min_area[blk] > 0 &&
            (gx2 <= blk_x1[blk] || gx1 >= blk_x2[blk] || gy2 <= blk_y1[blk] || gy1 >= blk_y2[blk])) {
          blk_iou[slot] = acc_t(0);
          blk_anchor[slot] = a0;
          continue;
        }
        for (int64_t i = 0; i < n; ++i) {
          r[i] = box_pair_iou(gx1, gy1, gx2, gy2, garea, x1[i], y1[i], x2[i], y2[i], ar[i]);
        }
        // Strict '>' keeps the lowest ground-truth index on ties.
        for (int64_t i = 0; i < n; ++i) {
          const bool take = r[i] > bi[i];
          bi[i] = take ? r[i] : bi[i];
          bg[i] = take ? g32 : bg[i];
        }
        acc_t m = acc_t(-1);
        for (int64_t i = 0; i < n; ++i) m = r[i] > m ? r[i] : m;
        int64_t arg = -1;
        for (int64_t i = 0; i < n; ++i) {
          if (r[i] == m) {
            arg = i;
            break;
          }
        }
        blk_iou[slot] = m;
        blk_anchor[slot] = arg < 0 ? -1 : a0 + arg;
      }
    }
  });

  // Phase 2: forced matches, per image (G x blocks, tiny).
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t g = 0; g < counts[b]; ++g) {
        acc_t m = acc_t(0);  // only strictly positive overlaps force a match
        int64_t arg = -1;
        for (int64_t blk = 0; blk < num_blocks; ++blk) {
          const int64_t slot = (b * num_blocks + blk) * G + g;
          if (blk_iou[slot] > m) {  // strict: lowest anchor index on ties
            m = blk_iou[slot];
            arg = blk_anchor[slot];
          }
        }
        if (arg >= 0) {
          best_gt[b * A + arg] = static_cast<int32_t>(g);
          best_iou[b * A + arg] = acc_t(2);
        }
      }
    }
  });

  // Phase 3: labels and targets.
  const acc_t pos_thr = static_cast<acc_t>(iou_threshold);
  const bool has_ignore = ignore_threshold.has_value();
  const acc_t ign_thr = static_cast<acc_t>(ignore_threshold.value_or(0.0));
  const acc_t var_xy = static_cast<acc_t>(v0), var_wh = static_cast<acc_t>(v1);
  int64_t* lab = labels.data_ptr<int64_t>();
  int64_t* mg = matched.data_ptr<int64_t>();
  scalar_t* tg = targets.data_ptr<scalar_t>();
  // Same (image, block) tasks as phase 1: no per-anchor index division.
  at::parallel_for(0, B * num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / num_blocks, a0 = (task % num_blocks) * kBlock;
      const int64_t a1 = std::min(A, a0 + kBlock);
      for (int64_t a = a0; a < a1; ++a) {
        const int64_t r = b * A + a;
        const acc_t iou = best_iou[r];
        if (iou >= pos_thr && best_gt[r] >= 0) {
          const int64_t g = best_gt[r];
          const scalar_t* gb = gt + (b * G + g) * 4;
          const acc_t gbox[4] = {gb[0], gb[1], gb[2], gb[3]};
          lab[r] = 1;
          mg[r] = g;
          encode_box(gbox, anc + 4 * a, var_xy, var_wh, tg + 4 * r);
        } else {
          lab[r] = (has_ignore && iou >= ign_thr && best_gt[r] >= 0) ? -1 : 0;
          mg[r] = -1;
          for (int c = 0; c < 4; ++c) tg[4 * r + c] = scalar_t(0);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> match_anchors_cpu(const at::Tensor& anchors,
                                                                 const at::Tensor& gt_boxes,
                                                                 const at::Tensor& gt_counts, double iou_threshold,
                                                                 c10::optional<double> ignore_threshold, double v0,
                                                                 double v1) {
  check_match_inputs(anchors, gt_boxes, gt_counts, iou_threshold, ignore_threshold, v0, v1);
  const int64_t B = gt_boxes.size(0), G = gt_boxes.size(1), A = anchors.size(0);
  // Phase 3 writes every element.
  auto labels = at::empty({B, A}, gt_boxes.options().dtype(at::kLong));
  auto matched = at::empty({B, A}, gt_boxes.options().dtype(at::kLong));
  auto targets = at::empty({B, A, 4}, gt_boxes.options());
  if (B == 0 || A == 0) return {labels, matched, targets};
  auto counts_t = gt_counts.to(at::kLong).contiguous();
  std::vector<int64_t> counts(B);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t c = counts_t.data_ptr<int64_t>()[b];
    TORCH_CHECK(c >= 0 && c <= G, "dsfd::match_anchors: gt_counts[", b, "] = ", c, " is outside [0, G = ", G, "]");
    counts[b] = c;
  }
  auto gt = gt_boxes.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt.scalar_type(), "dsfd_match_anchors_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto anc = anchors.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    match_cpu_impl<scalar_t>(anc, gt, counts, iou_threshold, ignore_threshold, v0, v1, labels, matched, targets);
  });
  return {labels, matched, targets};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CPU, m) {
  m.impl("match_anchors", &match_anchors_cpu);
}

}  // namespace dsfd
