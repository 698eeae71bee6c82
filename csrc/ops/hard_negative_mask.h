#pragma once
#include "checks.h"

namespace dsfd {

inline void check_hnm_inputs(const at::Tensor& conf_loss, const at::Tensor& labels, int64_t neg_pos_ratio,
                             int64_t min_negatives) {
  const char* op = "dsfd::hard_negative_mask";
  check_float(conf_loss, op, "conf_loss");
  TORCH_CHECK(conf_loss.dim() == 2, op, ": conf_loss must be [B, A], got ", conf_loss.sizes());
  TORCH_CHECK(labels.sizes() == conf_loss.sizes(), op, ": labels ", labels.sizes(), " and conf_loss ",
              conf_loss.sizes(), " differ in shape");
  TORCH_CHECK(!at::isFloatingType(labels.scalar_type()) && labels.scalar_type() != at::kBool, op,
              ": labels must be an integer tensor (1 / 0 / -1), got ", labels.scalar_type());
  check_same_device(conf_loss, labels, op, "conf_loss", "labels");
  TORCH_CHECK(neg_pos_ratio >= 0, op, ": neg_pos_ratio must be >= 0, got ", neg_pos_ratio);
  TORCH_CHECK(min_negatives >= 0, op, ": min_negatives must be >= 0, got ", min_negatives);
}

}  // namespace dsfd
