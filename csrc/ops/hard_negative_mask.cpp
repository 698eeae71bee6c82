// dsfd::hard_negative_mask — positives plus the hardest negatives per image,
// by linear-time selection instead of SSD's double argsort.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(dsfd, m) {
  m.def("hard_negative_mask(Tensor conf_loss, Tensor labels, int neg_pos_ratio=3, int min_negatives=0) -> Tensor");
}
