#pragma once
#include "checks.h"

namespace dsfd {

inline void check_box_iou_inputs(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  const char* op = "dsfd::box_iou";
  check_boxes(boxes1, op, "boxes1", -2);
  check_boxes(boxes2, op, "boxes2", -2);
  TORCH_CHECK(boxes1.dim() == boxes2.dim() && (boxes1.dim() == 2 || boxes1.dim() == 3), op,
              ": expected boxes1/boxes2 of shapes [N,4]/[M,4] or [B,N,4]/[B,M,4], got ", boxes1.sizes(),
              " and ", boxes2.sizes());
  TORCH_CHECK(boxes1.dim() == 2 || boxes1.size(0) == boxes2.size(0), op,
              ": batch sizes differ: ", boxes1.size(0), " vs ", boxes2.size(0));
  check_same_dtype(boxes1, boxes2, op, "boxes1", "boxes2");
  check_same_device(boxes1, boxes2, op, "boxes1", "boxes2");
}

}  // namespace dsfd
