// dsfd::box_voting — the released DSFD test code's merge of multi-scale
// detections: greedy groups of IoU >= threshold (inclusive-pixel IoU),
// score-weighted mean box, max score, singletons dropped.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dsfd, m) {
  m.def("box_voting(Tensor boxes, Tensor scores, float iou_threshold=0.3, int max_keep=750) -> (Tensor, Tensor)");
}
