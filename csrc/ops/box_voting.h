#pragma once
#include "checks.h"

namespace dsfd {

inline void check_box_voting_inputs(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                    int64_t max_keep) {
  const char* op = "dsfd::box_voting";
  check_boxes(boxes, op, "boxes", 2);
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), op, ": scores must be [N] with N = ",
              boxes.size(0), ", got ", scores.sizes());
  check_float(scores, op, "scores");
  check_same_dtype(boxes, scores, op, "boxes", "scores");
  check_same_device(boxes, scores, op, "boxes", "scores");
  TORCH_CHECK(!std::isnan(iou_threshold), op, ": iou_threshold is NaN");
  TORCH_CHECK(max_keep >= 0, op, ": max_keep must be >= 0, got ", max_keep);
}

}  // namespace dsfd
