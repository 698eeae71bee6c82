#pragma once
#include "checks.h"

namespace dsfd {

inline void check_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  const char* op = "dsfd::nms";
  check_boxes(boxes, op, "boxes", 2);
  TORCH_CHECK(scores.dim() == 1, op, ": scores must be [N], got ", scores.sizes());
  TORCH_CHECK(boxes.size(0) == scores.size(0), op, ": boxes has ", boxes.size(0), " rows but scores has ",
              scores.size(0));
  check_float(scores, op, "scores");
  check_same_device(boxes, scores, op, "boxes", "scores");
  check_same_dtype(boxes, scores, op, "boxes", "scores");
  TORCH_CHECK(!std::isnan(iou_threshold), op, ": iou_threshold is NaN");
}

inline void check_batched_nms_inputs(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                     int64_t pre_nms_top_k, int64_t max_keep) {
  const char* op = "dsfd::batched_nms";
  check_boxes(boxes, op, "boxes", 3);
  TORCH_CHECK(scores.dim() == 2, op, ": scores must be [B, N], got ", scores.sizes());
  TORCH_CHECK(boxes.size(0) == scores.size(0) && boxes.size(1) == scores.size(1), op,
              ": boxes ", boxes.sizes(), " and scores ", scores.sizes(), " disagree on [B, N]");
  check_float(scores, op, "scores");
  check_same_device(boxes, scores, op, "boxes", "scores");
  check_same_dtype(boxes, scores, op, "boxes", "scores");
  TORCH_CHECK(pre_nms_top_k >= 1 && max_keep >= 1, op, ": pre_nms_top_k and max_keep must be >= 1, got ",
              pre_nms_top_k, " and ", max_keep);
  TORCH_CHECK(!std::isnan(iou_threshold), op, ": iou_threshold is NaN");
}

}  // namespace dsfd
