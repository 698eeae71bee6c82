#pragma once
#include "checks.h"

namespace dsfd {

// gt [..., A, 4] against anchors [A, 4] (broadcast) or anchors shaped like gt.
inline void check_encode_inputs(const at::Tensor& gt, const at::Tensor& anchors, double v0, double v1) {
  const char* op = "dsfd::encode_boxes";
  check_boxes(gt, op, "gt", -1);
  check_boxes(anchors, op, "anchors", -1);
  bool same = gt.sizes() == anchors.sizes();
  bool bcast = anchors.dim() == 2 && gt.dim() >= 2 && gt.size(-2) == anchors.size(0);
  TORCH_CHECK(same || bcast, op, ": anchors must be [A, 4] with gt [..., A, 4], or shaped like gt; got gt ",
              gt.sizes(), " and anchors ", anchors.sizes());
  check_same_device(gt, anchors, op, "gt", "anchors");
  check_variances(v0, v1, op);
}

// deltas [B, A, 4] or [A, 4] against anchors [A, 4].
inline void check_decode_inputs(const at::Tensor& deltas, const at::Tensor& anchors, double v0, double v1) {
  const char* op = "dsfd::decode_boxes";
  check_boxes(deltas, op, "deltas", -2);
  check_boxes(anchors, op, "anchors", 2);
  TORCH_CHECK((deltas.dim() == 2 || deltas.dim() == 3) && deltas.size(-2) == anchors.size(0), op,
              ": deltas must be [A, 4] or [B, A, 4] with anchors [A, 4]; got deltas ", deltas.sizes(),
              " and anchors ", anchors.sizes());
  check_same_device(deltas, anchors, op, "deltas", "anchors");
  check_variances(v0, v1, op);
}

}  // namespace dsfd
