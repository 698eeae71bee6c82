// Per-box arithmetic shared by the CPU and CUDA kernels (host + device), so
// every op computes IoU and the SSD encoding with the same operations in the
// same order as torchvision and the references.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace dsfd {

template <typename T>
C10_HOST_DEVICE inline T min_of(T a, T b) {
  return b < a ? b : a;  // std::min's semantics
}

template <typename T>
C10_HOST_DEVICE inline T max_of(T a, T b) {
  return a < b ? b : a;  // std::max's semantics
}

// IoU of two corner boxes given their areas: inter / (area_a + area_b - inter).
template <typename T>
C10_HOST_DEVICE inline T box_pair_iou(T ax1, T ay1, T ax2, T ay2, T aarea, T bx1, T by1, T bx2, T by2, T barea) {
  T w = min_of(ax2, bx2) - max_of(ax1, bx1);
  T h = min_of(ay2, by2) - max_of(ay1, by1);
  w = w > T(0) ? w : T(0);
  h = h > T(0) ? h : T(0);
  const T inter = w * h;
  return inter / (aarea + barea - inter);
}

// SSD encoding of the corner box g against the cx, cy, w, h anchor a.
template <typename T, typename Out>
C10_HOST_DEVICE inline void encode_box(const T g[4], const T a[4], T var_xy, T var_wh, Out* out) {
  out[0] = static_cast<Out>(((g[0] + g[2]) / 2 - a[0]) / (var_xy * a[2]));
  out[1] = static_cast<Out>(((g[1] + g[3]) / 2 - a[1]) / (var_xy * a[3]));
  out[2] = static_cast<Out>(log((g[2] - g[0]) / a[2]) / var_wh);
  out[3] = static_cast<Out>(log((g[3] - g[1]) / a[3]) / var_wh);
}

}  // namespace dsfd
