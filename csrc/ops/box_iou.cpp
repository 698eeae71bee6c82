// dsfd::box_iou — pairwise IoU of corner boxes, plain or batched.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dsfd, m) {
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
}
