// dsfd::batched_nms — per-image score filter + top-k + NMS + keep-k for a
// whole batch, with fixed-size padded outputs (no host sync on CUDA).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dsfd, m) {
  m.def(
      "batched_nms(Tensor boxes, Tensor scores, float iou_threshold=0.3, float score_threshold=0.01, "
      "int pre_nms_top_k=5000, int max_keep=750) -> (Tensor boxes, Tensor scores, Tensor indices, Tensor counts)");
}
