// dsfd::upsample_mul — the FEM top-down step: bilinear upsample of the upper
// map to the lateral map's size, times the lateral map (optional ReLU), in one
// pass without materialising the upsampled map. Backward is its own op so
// autograd (registered in Python) works on every backend.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dsfd, m) {
  m.def("upsample_mul(Tensor upper, Tensor lateral, bool align_corners=False, bool relu=False) -> Tensor");
  m.def(
      "upsample_mul_backward(Tensor grad_out, Tensor upper, Tensor lateral, Tensor out, bool align_corners, "
      "bool relu) -> (Tensor grad_upper, Tensor grad_lateral)");
}
