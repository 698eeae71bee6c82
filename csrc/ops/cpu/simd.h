// Helpers of the CPU kernels' inner loops. The package is built for baseline
// x86-64 (a wheel must run on any x86-64 CPU), where loops over bfloat16
// stay scalar; DSFD_CPU_CLONES has GCC compile a function for AVX2 and
// AVX-512 machines too and pick one when the library loads (ifunc). setup.py
// passes -ffp-contract=off, so every clone rounds as the baseline does.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define DSFD_CPU_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define DSFD_CPU_CLONES
#endif

namespace dsfd {
namespace simd {

// bfloat16 as its 16 bits (uint16_t), so the compiler sees plain integer work.
inline float bf16_bits_to_float(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// c10::BFloat16's rounding: to nearest even, NaN -> quiet NaN.
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if (f != f) return 0x7FC0;
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// The same rounding for values known to be finite: branch-free, so it vectorises better.
inline uint16_t finite_float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace simd
}  // namespace dsfd
