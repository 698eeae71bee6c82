#pragma once
#include "checks.h"

namespace dsfd {

inline void check_ignore_inputs(const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& ignore_boxes,
                                const at::Tensor& ignore_counts, double iou_threshold) {
  const char* op = "dsfd::ignore_anchors";
  check_boxes(anchors, op, "anchors", 2);
  check_boxes(ignore_boxes, op, "ignore_boxes", 3);
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == ignore_boxes.size(0) && labels.size(1) == anchors.size(0), op,
              ": labels must be [B, A] with B = ignore_boxes.size(0) = ", ignore_boxes.size(0),
              " and A = anchors.size(0) = ", anchors.size(0), ", got ", labels.sizes());
  TORCH_CHECK(!at::isFloatingType(labels.scalar_type()) && labels.scalar_type() != at::kBool, op,
              ": labels must be an integer tensor (1 / 0 / -1), got ", labels.scalar_type());
  TORCH_CHECK(ignore_counts.dim() == 1 && ignore_counts.size(0) == ignore_boxes.size(0), op,
              ": ignore_counts must be [B] with B = ignore_boxes.size(0) = ", ignore_boxes.size(0), ", got ",
              ignore_counts.sizes());
  TORCH_CHECK(!at::isFloatingType(ignore_counts.scalar_type()) && ignore_counts.scalar_type() != at::kBool, op,
              ": ignore_counts must be an integer tensor, got ", ignore_counts.scalar_type());
  check_same_device(anchors, labels, op, "anchors", "labels");
  check_same_device(ignore_boxes, labels, op, "ignore_boxes", "labels");
  check_same_device(ignore_counts, labels, op, "ignore_counts", "labels");
  TORCH_CHECK(anchors.size(0) < (int64_t(1) << 31), op, ": too many anchors (", anchors.size(0), ")");
  // 0 would ignore every background anchor of an image with a region, NaN none: both are mistakes.
  TORCH_CHECK(iou_threshold > 0 && iou_threshold <= 1, op, ": iou_threshold must be in (0, 1], got ",
              iou_threshold);
}

}  // namespace dsfd
