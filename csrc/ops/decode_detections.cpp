// dsfd::decode_detections — one shot's raw outputs to boxes in input pixels
// and face scores, in one pass: the size offsets clamped at max_exponent, SSD
// decoding against the anchors (dsfd::decode_boxes' arithmetic), scaled to
// width x height, and score = softmax(conf)[1] = sigmoid(conf1 - conf0).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dsfd, m) {
  m.def(
      "decode_detections(Tensor loc, Tensor conf, Tensor anchors, float variance_xy, float variance_wh, "
      "float max_exponent, float width, float height) -> (Tensor boxes, Tensor scores)");
}
