#pragma once
#include <cmath>

#include "checks.h"

namespace dsfd {

inline void check_decode_detections_inputs(const at::Tensor& loc, const at::Tensor& conf, const at::Tensor& anchors,
                                           double v0, double v1, double width, double height) {
  const char* op = "dsfd::decode_detections";
  check_boxes(loc, op, "loc", 3);
  check_boxes(anchors, op, "anchors", 2);
  check_float(conf, op, "conf");
  TORCH_CHECK(conf.dim() == 3 && conf.size(2) == 2, op, ": conf must be [B, A, 2] (background, face logits), got ",
              conf.sizes());
  TORCH_CHECK(loc.size(0) == conf.size(0) && loc.size(1) == conf.size(1) && loc.size(1) == anchors.size(0), op,
              ": loc ", loc.sizes(), ", conf ", conf.sizes(), " and anchors ", anchors.sizes(),
              " must agree on B and A");
  check_same_dtype(loc, conf, op, "loc", "conf");
  check_same_device(loc, conf, op, "loc", "conf");
  check_same_device(loc, anchors, op, "loc", "anchors");
  check_variances(v0, v1, op);
  TORCH_CHECK(width > 0 && height > 0 && std::isfinite(width) && std::isfinite(height), op,
              ": width and height must be positive, got ", width, " x ", height);
}

// One anchor: boxes (x1, y1, x2, y2) in pixels and the face score, in float.
template <typename in_t>
#ifdef __CUDACC__
__host__ __device__
#endif
inline void decode_detection(const in_t* t, const in_t* z, const float* a, float var_xy, float var_wh,
                             float max_exp, float width, float height, float* box, float* score) {
  float tw = static_cast<float>(t[2]), th = static_cast<float>(t[3]);
  tw = max_exp < tw ? max_exp : tw;  // clamp(max=): a NaN stays NaN
  th = max_exp < th ? max_exp : th;
  const float cx = a[0] + static_cast<float>(t[0]) * var_xy * a[2];
  const float cy = a[1] + static_cast<float>(t[1]) * var_xy * a[3];
  const float w = a[2] * expf(tw * var_wh);
  const float h = a[3] * expf(th * var_wh);
  const float x1 = cx - w / 2, y1 = cy - h / 2;
  box[0] = x1 * width;
  box[1] = y1 * height;
  box[2] = (x1 + w) * width;
  box[3] = (y1 + h) * height;
  *score = 1.0f / (1.0f + expf(-(static_cast<float>(z[1]) - static_cast<float>(z[0]))));
}

}  // namespace dsfd
