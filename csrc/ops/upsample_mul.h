#pragma once
#include "checks.h"

namespace dsfd {

inline void check_upsample_mul_inputs(const at::Tensor& upper, const at::Tensor& lateral) {
  const char* op = "dsfd::upsample_mul";
  check_float(upper, op, "upper");
  check_float(lateral, op, "lateral");
  TORCH_CHECK(upper.dim() == 4 && lateral.dim() == 4, op, ": upper and lateral must be [B, C, H, W], got ",
              upper.sizes(), " and ", lateral.sizes());
  TORCH_CHECK(upper.size(0) == lateral.size(0) && upper.size(1) == lateral.size(1), op,
              ": upper ", upper.sizes(), " and lateral ", lateral.sizes(), " differ in batch or channels");
  TORCH_CHECK((upper.size(2) > 0 && upper.size(3) > 0) || lateral.numel() == 0, op,
              ": upper has an empty spatial size ", upper.sizes());
  check_same_dtype(upper, lateral, op, "upper", "lateral");
  check_same_device(upper, lateral, op, "upper", "lateral");
}

// PyTorch's bilinear source-index convention (ATen UpSample.h), so the fused
// op matches F.interpolate(mode="bilinear") exactly.
template <typename accscalar_t>
inline accscalar_t bilinear_scale(int64_t in_size, int64_t out_size, bool align_corners) {
  if (align_corners) {
    return out_size > 1 ? static_cast<accscalar_t>(in_size - 1) / (out_size - 1) : accscalar_t(0);
  }
  return static_cast<accscalar_t>(in_size) / out_size;
}

}  // namespace dsfd
