// CPU kernel for dsfd::normalize_images. The pixels are one flat run of
// B*H*W*C bytes; the means repeat every C values, so the run is cut into
// blocks of 16*C values against a 16*C-long row of means: a fixed inner loop
// the compiler vectorises (DSFD_CPU_CLONES, simd.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "../normalize_images.h"
#include "simd.h"

namespace dsfd {
namespace {

constexpr int64_t kPixelsPerBlock = 16;

// pixel - mean is finite (the means are checked): the branch-free rounding vectorises better
// (measured: the whole op 1.2x faster than with the NaN branch)
using simd::finite_float_to_bf16_bits;

DSFD_CPU_CLONES void normalize_float(const uint8_t* in, float* out, const float* row, int64_t n, int64_t block) {
  int64_t i = 0;
  for (; i + block <= n; i += block) {
    for (int64_t j = 0; j < block; ++j) out[i + j] = static_cast<float>(in[i + j]) - row[j];
  }
  for (int64_t j = 0; i + j < n; ++j) out[i + j] = static_cast<float>(in[i + j]) - row[j];
}

DSFD_CPU_CLONES void normalize_bf16(const uint8_t* in, uint16_t* out, const float* row, int64_t n, int64_t block) {
  int64_t i = 0;
  for (; i + block <= n; i += block) {
    for (int64_t j = 0; j < block; ++j) out[i + j] = finite_float_to_bf16_bits(static_cast<float>(in[i + j]) - row[j]);
  }
  for (int64_t j = 0; i + j < n; ++j) out[i + j] = finite_float_to_bf16_bits(static_cast<float>(in[i + j]) - row[j]);
}

at::Tensor normalize_images_cpu(const at::Tensor& images, at::ArrayRef<double> mean, at::ScalarType dtype) {
  check_normalize_inputs(images, mean, dtype);
  auto src = images.contiguous();
  auto out = empty_nchw_channels_last(images, dtype);
  const int64_t C = images.size(3), n = src.numel();
  if (n == 0) return out;
  const int64_t block = kPixelsPerBlock * C;
  std::vector<float> row(block);
  for (int64_t j = 0; j < block; ++j) row[j] = static_cast<float>(mean[j % C]);
  const uint8_t* in = src.data_ptr<uint8_t>();
  // chunks start on a block boundary, so every chunk sees the means in phase
  const int64_t blocks = (n + block - 1) / block;
  at::parallel_for(0, blocks, 1024, [&](int64_t b0, int64_t b1) {
    const int64_t begin = b0 * block, len = std::min(n, b1 * block) - begin;
    if (dtype == at::kFloat) {
      normalize_float(in + begin, out.data_ptr<float>() + begin, row.data(), len, block);
    } else if (dtype == at::kBFloat16) {
      normalize_bf16(in + begin, reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()) + begin, row.data(), len,
                     block);
    } else {
      at::Half* o = out.data_ptr<at::Half>() + begin;
      for (int64_t i = 0; i < len; ++i) o[i] = static_cast<at::Half>(static_cast<float>(in[begin + i]) - row[i % block]);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CPU, m) {
  m.impl("normalize_images", &normalize_images_cpu);
}

}  // namespace dsfd
