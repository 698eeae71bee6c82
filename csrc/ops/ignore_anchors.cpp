// dsfd::ignore_anchors — background anchors that overlap an ignore region
// (a face the augmentation dropped, an invalid-flagged face, a crowd) become
// "ignored" (-1): neither positives nor mined negatives.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dsfd, m) {
  m.def(
      "ignore_anchors(Tensor anchors, Tensor labels, Tensor ignore_boxes, Tensor ignore_counts, "
      "float iou_threshold=0.1) -> Tensor");
}
