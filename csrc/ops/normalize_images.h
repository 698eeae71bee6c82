#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <vector>

namespace dsfd {

// Most channels normalize_images handles (the CUDA kernel keeps the means in registers).
constexpr int64_t kMaxImageChannels = 4;

inline void check_normalize_inputs(const at::Tensor& images, at::ArrayRef<double> mean, at::ScalarType dtype) {
  const char* op = "dsfd::normalize_images";
  TORCH_CHECK(images.scalar_type() == at::kByte, op, ": images must be uint8, got ", images.scalar_type());
  TORCH_CHECK(images.dim() == 4, op, ": images must be [B, H, W, C], got ", images.sizes());
  TORCH_CHECK(images.size(3) == static_cast<int64_t>(mean.size()), op, ": images have ", images.size(3),
              " channels but mean has ", mean.size(), " values");
  TORCH_CHECK(!mean.empty() && static_cast<int64_t>(mean.size()) <= kMaxImageChannels, op, ": 1 to ",
              kMaxImageChannels, " channels are supported, got ", mean.size());
  for (double m : mean) TORCH_CHECK(std::isfinite(m), op, ": mean values must be finite, got ", m);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": dtype must be float32, bfloat16 or float16, got ", dtype);
}

// [B, H, W, C] storage seen as [B, C, H, W] (channels_last strides).
inline at::Tensor empty_nchw_channels_last(const at::Tensor& images, at::ScalarType dtype) {
  return at::empty({images.size(0), images.size(3), images.size(1), images.size(2)},
                   images.options().dtype(dtype).memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace dsfd
