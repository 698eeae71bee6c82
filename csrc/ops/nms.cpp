// dsfd::nms — greedy NMS with torchvision.ops.nms's contract.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dsfd, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
}
