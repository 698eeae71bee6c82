#pragma once
#include "checks.h"

namespace dsfd {

inline void check_match_inputs(const at::Tensor& anchors, const at::Tensor& gt_boxes, const at::Tensor& gt_counts,
                               double iou_threshold, c10::optional<double> ignore_threshold, double v0,
                               double v1) {
  const char* op = "dsfd::match_anchors";
  check_boxes(anchors, op, "anchors", 2);
  check_boxes(gt_boxes, op, "gt_boxes", 3);
  TORCH_CHECK(gt_counts.dim() == 1 && gt_counts.size(0) == gt_boxes.size(0), op,
              ": gt_counts must be [B] with B = gt_boxes.size(0) = ", gt_boxes.size(0), ", got ",
              gt_counts.sizes());
  TORCH_CHECK(!at::isFloatingType(gt_counts.scalar_type()) && gt_counts.scalar_type() != at::kBool, op,
              ": gt_counts must be an integer tensor, got ", gt_counts.scalar_type());
  check_same_device(anchors, gt_boxes, op, "anchors", "gt_boxes");
  check_same_device(gt_counts, gt_boxes, op, "gt_counts", "gt_boxes");
  TORCH_CHECK(anchors.size(0) < (int64_t(1) << 31), op, ": too many anchors (", anchors.size(0), ")");
  TORCH_CHECK(!std::isnan(iou_threshold), op, ": iou_threshold is NaN");
  TORCH_CHECK(!ignore_threshold.has_value() || *ignore_threshold <= iou_threshold, op, ": ignore_threshold (",
              ignore_threshold.value_or(0.0), ") must be <= iou_threshold (", iou_threshold, ")");
  check_variances(v0, v1, op);
}

}  // namespace dsfd
