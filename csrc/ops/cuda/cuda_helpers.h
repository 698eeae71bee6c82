// Small helpers shared by the CUDA kernels. Only the light c10 CUDA headers
// are used: the toolkit on the build machines lacks cuSPARSE/cuBLAS headers
// that ATen/cuda/CUDAContext.h pulls in.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "../box_math.h"

namespace dsfd {
namespace cuda {

constexpr int kThreads = 256;

template <typename T>
__host__ __device__ inline T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

__host__ __device__ inline int64_t imin(int64_t a, int64_t b) {
  return a < b ? a : b;
}

// Blocks for a grid-stride loop over n items (capped: the loop covers the rest).
inline unsigned int grid_for(int64_t n, int threads = kThreads) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div<int64_t>(n, threads), 1 << 20)));
}

inline cudaStream_t stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}

}  // namespace cuda
}  // namespace dsfd
