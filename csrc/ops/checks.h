// Shared input validation for the dsfd ops: one message style for every
// backend, naming the op, the argument and the bad value.
#pragma once

#include <ATen/ATen.h>

namespace dsfd {

inline void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(
      at::isFloatingType(t.scalar_type()),
      op, ": ", name, " must be a floating point tensor (float32/float64/float16/bfloat16), got ",
      t.scalar_type());
}

// [..., 4] boxes with a given rank (or any rank >= min_rank when rank < 0).
inline void check_boxes(const at::Tensor& t, const char* op, const char* name, int64_t rank) {
  check_float(t, op, name);
  TORCH_CHECK(
      (rank < 0 ? t.dim() >= -rank : t.dim() == rank) && t.size(-1) == 4,
      op, ": ", name, " must have shape ", rank == 2 ? "[N, 4]" : rank == 3 ? "[B, N, 4]" : "[..., 4]",
      ", got ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* na,
                              const char* nb) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", na, " is on ", a.device(), " but ", nb, " is on ",
              b.device());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* op, const char* na,
                             const char* nb) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", na, " is ", a.scalar_type(), " but ", nb,
              " is ", b.scalar_type());
}

inline void check_variances(double v_xy, double v_wh, const char* op) {
  TORCH_CHECK(v_xy > 0 && v_wh > 0, op, ": variances must be positive, got (", v_xy, ", ", v_wh, ")");
}


}  // namespace dsfd
