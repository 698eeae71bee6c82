// dsfd::encode_boxes / dsfd::decode_boxes — the SSD box parameterisation
// (an inverse pair, so they share one file).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dsfd, m) {
  m.def("encode_boxes(Tensor gt, Tensor anchors, float variance_xy=0.1, float variance_wh=0.2) -> Tensor");
  m.def("decode_boxes(Tensor deltas, Tensor anchors, float variance_xy=0.1, float variance_wh=0.2) -> Tensor");
}
