// dsfd::normalize_images — the network input of a uint8 NHWC image batch:
// float(pixel) - mean[channel], rounded once to the network's dtype, returned
// as a [B, C, H, W] tensor in channels_last memory (the NHWC storage the
// convolutions read). One pass instead of three (to float, subtract, cast).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dsfd, m) {
  m.def("normalize_images(Tensor images, float[] mean, ScalarType dtype) -> Tensor");
}
