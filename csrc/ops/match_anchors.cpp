// dsfd::match_anchors — batched IoU anchor assignment (best ground truth per
// anchor, forced best anchor per ground truth) fused with SSD encoding.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dsfd, m) {
  m.def(
      "match_anchors(Tensor anchors, Tensor gt_boxes, Tensor gt_counts, float iou_threshold=0.4, "
      "float? ignore_threshold=None, float variance_xy=0.1, float variance_wh=0.2) "
      "-> (Tensor labels, Tensor matched_gt, Tensor loc_targets)");
}
