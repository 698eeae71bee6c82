// CPU kernels for dsfd::upsample_mul (+ backward), on NCHW planes or, when the
// lateral map is channels_last (the layout of bf16 inference and training on
// the CPU), directly on NHWC rows: converting a channels_last map to NCHW and
// back cost more than the op itself. The result has the lateral map's memory
// format.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../upsample_mul.h"
#include "simd.h"

namespace dsfd {
namespace {

// Source taps and weights of one output coordinate, PyTorch's convention.
template <typename acc_t>
struct Tap {
  int64_t i0, i1;
  acc_t w0, w1;
};

template <typename acc_t>
std::vector<Tap<acc_t>> make_taps(int64_t in_size, int64_t out_size, bool align_corners) {
  std::vector<Tap<acc_t>> taps(out_size);
  const acc_t scale = bilinear_scale<acc_t>(in_size, out_size, align_corners);
  for (int64_t o = 0; o < out_size; ++o) {
    acc_t src = align_corners ? scale * o : scale * (o + acc_t(0.5)) - acc_t(0.5);
    if (src < 0) src = 0;
    const int64_t i0 = std::min<int64_t>(static_cast<int64_t>(src), in_size - 1);
    const acc_t l1 = std::min(std::max(src - i0, acc_t(0)), acc_t(1));
    taps[o] = {i0, i0 + (i0 < in_size - 1 ? 1 : 0), acc_t(1) - l1, l1};
  }
  return taps;
}

// Separable: each upper row is first interpolated horizontally to W columns
// (h x W buffer), then every output row blends two of those rows and
// multiplies by the lateral row in one contiguous, vectorisable loop. The
// results equal F.interpolate's to float rounding (about 1e-7 relative).
template <typename scalar_t>
void forward_impl(const scalar_t* up, const scalar_t* lat, scalar_t* out, int64_t planes, int64_t h, int64_t w,
                  int64_t H, int64_t W, bool align_corners, bool relu) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto ty = make_taps<acc_t>(h, H, align_corners);
  const auto tx = make_taps<acc_t>(w, W, align_corners);
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> rows(h * W);
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t* u = up + p * h * w;
      for (int64_t k = 0; k < h; ++k) {
        const scalar_t* src = u + k * w;
        acc_t* dst = rows.data() + k * W;
        for (int64_t x = 0; x < W; ++x) {
          const auto& s = tx[x];
          dst[x] = acc_t(src[s.i0]) * s.w0 + acc_t(src[s.i1]) * s.w1;
        }
      }
      const scalar_t* l = lat + p * H * W;
      scalar_t* o = out + p * H * W;
      for (int64_t y = 0; y < H; ++y) {
        const auto& t = ty[y];
        const acc_t* __restrict__ r0 = rows.data() + t.i0 * W;
        const acc_t* __restrict__ r1 = rows.data() + t.i1 * W;
        const scalar_t* __restrict__ lr = l + y * W;
        scalar_t* __restrict__ orow = o + y * W;
        const acc_t w0 = t.w0, w1 = t.w1;
        if (relu) {
          for (int64_t x = 0; x < W; ++x) {
            const acc_t prod = (r0[x] * w0 + r1[x] * w1) * acc_t(lr[x]);
            orow[x] = static_cast<scalar_t>(prod > 0 ? prod : acc_t(0));
          }
        } else {
          for (int64_t x = 0; x < W; ++x) orow[x] = static_cast<scalar_t>((r0[x] * w0 + r1[x] * w1) * acc_t(lr[x]));
        }
      }
    }
  });
}

// NHWC: a row of the map is W * C contiguous values. Every output value is
// ((a0 * sx0 + a1 * sx1) * sy0 + (b0 * sx0 + b1 * sx1) * sy1) * lateral, in
// float, with a0..b1 the four upper-map taps: the rounding of PyTorch's
// separable bilinear. The horizontal blend is recomputed per output row (the
// upper map is 4x smaller and stays in cache) instead of going through a
// float buffer of h x W x C: no allocation, one pass over the output.
template <typename scalar_t>
inline float to_float(scalar_t v) {
  return static_cast<float>(v);
}
template <>
inline float to_float<uint16_t>(uint16_t v) {  // bfloat16 bits
  return simd::bf16_bits_to_float(v);
}
template <typename scalar_t>
inline scalar_t from_float(float f) {
  return static_cast<scalar_t>(f);
}
template <>
inline uint16_t from_float<uint16_t>(float f) {
  return simd::float_to_bf16_bits(f);
}

template <typename scalar_t, bool relu>
inline __attribute__((always_inline)) void blend_row(const scalar_t* up0, const scalar_t* up1, const Tap<float>* tx,
                                                     int64_t W, int64_t C, float wy0, float wy1, const scalar_t* lat,
                                                     scalar_t* out) {
  for (int64_t x = 0; x < W; ++x) {
    const Tap<float> s = tx[x];
    const scalar_t* __restrict__ a0 = up0 + s.i0 * C;
    const scalar_t* __restrict__ a1 = up0 + s.i1 * C;
    const scalar_t* __restrict__ b0 = up1 + s.i0 * C;
    const scalar_t* __restrict__ b1 = up1 + s.i1 * C;
    const scalar_t* __restrict__ l = lat + x * C;
    scalar_t* __restrict__ o = out + x * C;
    for (int64_t c = 0; c < C; ++c) {
      const float r0 = to_float(a0[c]) * s.w0 + to_float(a1[c]) * s.w1;
      const float r1 = to_float(b0[c]) * s.w0 + to_float(b1[c]) * s.w1;
      float v = (r0 * wy0 + r1 * wy1) * to_float(l[c]);
      if (relu) v = v > 0 ? v : 0.0f;
      o[c] = from_float<scalar_t>(v);
    }
  }
}

// Output rows [begin, end) of the B*H rows; scalar_t is float or bfloat16 bits (uint16_t).
template <typename scalar_t>
inline __attribute__((always_inline)) void blend_rows(const scalar_t* up, const scalar_t* lat, scalar_t* out,
                                                      const Tap<float>* ty, const Tap<float>* tx, int64_t begin,
                                                      int64_t end, int64_t H, int64_t h, int64_t w, int64_t W,
                                                      int64_t C, bool relu) {
  for (int64_t by = begin; by < end; ++by) {
    const Tap<float> t = ty[by % H];
    const scalar_t* u = up + (by / H) * h * w * C;
    const int64_t off = by * W * C;
    if (relu) {
      blend_row<scalar_t, true>(u + t.i0 * w * C, u + t.i1 * w * C, tx, W, C, t.w0, t.w1, lat + off, out + off);
    } else {
      blend_row<scalar_t, false>(u + t.i0 * w * C, u + t.i1 * w * C, tx, W, C, t.w0, t.w1, lat + off, out + off);
    }
  }
}

// The two cloned entry points (DSFD_CPU_CLONES, simd.h: at 32 channels the baseline build of these loops
// took 0.7 ns per output value); target_clones needs plain functions, not a template.
DSFD_CPU_CLONES void blend_rows_float(const float* up, const float* lat, float* out, const Tap<float>* ty,
                                      const Tap<float>* tx, int64_t begin, int64_t end, int64_t H, int64_t h,
                                      int64_t w, int64_t W, int64_t C, bool relu) {
  blend_rows<float>(up, lat, out, ty, tx, begin, end, H, h, w, W, C, relu);
}

DSFD_CPU_CLONES void blend_rows_bf16(const uint16_t* up, const uint16_t* lat, uint16_t* out, const Tap<float>* ty,
                                     const Tap<float>* tx, int64_t begin, int64_t end, int64_t H, int64_t h,
                                     int64_t w, int64_t W, int64_t C, bool relu) {
  blend_rows<uint16_t>(up, lat, out, ty, tx, begin, end, H, h, w, W, C, relu);
}

// float and bfloat16 (inference and training in bf16): the cloned row loops;
// other types (half, double): the same arithmetic in acc_t, compiled once.
template <typename scalar_t>
void forward_impl_nhwc(const scalar_t* up, const scalar_t* lat, scalar_t* out, int64_t B, int64_t C, int64_t h,
                       int64_t w, int64_t H, int64_t W, bool align_corners, bool relu) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, at::BFloat16>) {
    const auto ty = make_taps<float>(h, H, align_corners);
    const auto tx = make_taps<float>(w, W, align_corners);
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        blend_rows_float(up, lat, out, ty.data(), tx.data(), begin, end, H, h, w, W, C, relu);
      } else {
        blend_rows_bf16(reinterpret_cast<const uint16_t*>(up), reinterpret_cast<const uint16_t*>(lat),
                        reinterpret_cast<uint16_t*>(out), ty.data(), tx.data(), begin, end, H, h, w, W, C, relu);
      }
    });
    return;
  }
  const auto ty = make_taps<acc_t>(h, H, align_corners);
  const auto tx = make_taps<acc_t>(w, W, align_corners);
  const int64_t row = W * C;
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t by = begin; by < end; ++by) {
      const int64_t b = by / H;
      const auto& t = ty[by % H];
      const scalar_t* u0 = up + (b * h + t.i0) * w * C;
      const scalar_t* u1 = up + (b * h + t.i1) * w * C;
      const scalar_t* __restrict__ l = lat + by * row;
      scalar_t* __restrict__ o = out + by * row;
      for (int64_t x = 0; x < W; ++x) {
        const auto& s = tx[x];
        for (int64_t c = 0; c < C; ++c) {
          const acc_t r0 = acc_t(u0[s.i0 * C + c]) * s.w0 + acc_t(u0[s.i1 * C + c]) * s.w1;
          const acc_t r1 = acc_t(u1[s.i0 * C + c]) * s.w0 + acc_t(u1[s.i1 * C + c]) * s.w1;
          const acc_t prod = (r0 * t.w0 + r1 * t.w1) * acc_t(l[x * C + c]);
          o[x * C + c] = static_cast<scalar_t>(relu && !(prod > 0) ? acc_t(0) : prod);
        }
      }
    }
  });
}

// NHWC backward: grad_lat row by row (parallel over rows); grad_upper
// accumulated per image in an h x w x C buffer (parallel over images, so no
// two threads add into the same buffer).
template <typename scalar_t>
void backward_impl_nhwc(const scalar_t* grad, const scalar_t* up, const scalar_t* lat, const scalar_t* out,
                        scalar_t* grad_up, scalar_t* grad_lat, int64_t B, int64_t C, int64_t h, int64_t w, int64_t H,
                        int64_t W, bool align_corners, bool relu) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto ty = make_taps<acc_t>(h, H, align_corners);
  const auto tx = make_taps<acc_t>(w, W, align_corners);
  const int64_t row = W * C;
  // the upsampled upper map, row by row, as in the forward
  std::vector<acc_t> rows(B * h * row);
  at::parallel_for(0, B * h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bk = begin; bk < end; ++bk) {
      const scalar_t* src = up + bk * w * C;
      acc_t* dst = rows.data() + bk * row;
      for (int64_t x = 0; x < W; ++x) {
        const auto& s = tx[x];
        for (int64_t c = 0; c < C; ++c) dst[x * C + c] = acc_t(src[s.i0 * C + c]) * s.w0 + acc_t(src[s.i1 * C + c]) * s.w1;
      }
    }
  });
  // gl = g * up(upper); gu_rows[y] = g * lat (the gradient reaching the upsampled map), masked by the ReLU
  std::vector<acc_t> gmul(B * H * row);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t by = begin; by < end; ++by) {
      const int64_t b = by / H, y = by % H;
      const auto& t = ty[y];
      const acc_t* r0 = rows.data() + (b * h + t.i0) * row;
      const acc_t* r1 = rows.data() + (b * h + t.i1) * row;
      const scalar_t* g = grad + by * row;
      const scalar_t* l = lat + by * row;
      const scalar_t* o = out + by * row;
      scalar_t* gl = grad_lat + by * row;
      acc_t* gm = gmul.data() + by * row;
      for (int64_t i = 0; i < row; ++i) {
        acc_t gk = g[i];
        if (relu && !(acc_t(o[i]) > 0)) gk = 0;
        gl[i] = static_cast<scalar_t>(gk * (r0[i] * t.w0 + r1[i] * t.w1));
        gm[i] = gk * acc_t(l[i]);
      }
    }
  });
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(h * w * C);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t y = 0; y < H; ++y) {
        const auto& t = ty[y];
        const acc_t* gm = gmul.data() + (b * H + y) * row;
        acc_t* a0 = acc.data() + t.i0 * w * C;
        acc_t* a1 = acc.data() + t.i1 * w * C;
        for (int64_t x = 0; x < W; ++x) {
          const auto& s = tx[x];
          const acc_t* gx = gm + x * C;
          const acc_t w00 = t.w0 * s.w0, w01 = t.w0 * s.w1, w10 = t.w1 * s.w0, w11 = t.w1 * s.w1;
          acc_t* a00 = a0 + s.i0 * C;
          acc_t* a01 = a0 + s.i1 * C;
          acc_t* a10 = a1 + s.i0 * C;
          acc_t* a11 = a1 + s.i1 * C;
          for (int64_t c = 0; c < C; ++c) {
            const acc_t v = gx[c];
            a00[c] += w00 * v;
            a01[c] += w01 * v;
            a10[c] += w10 * v;
            a11[c] += w11 * v;
          }
        }
      }
      scalar_t* gu = grad_up + b * h * w * C;
      for (int64_t i = 0; i < h * w * C; ++i) gu[i] = static_cast<scalar_t>(acc[i]);
    }
  });
}

template <typename scalar_t>
void backward_impl(const scalar_t* grad, const scalar_t* up, const scalar_t* lat, const scalar_t* out,
                   scalar_t* grad_up, scalar_t* grad_lat, int64_t planes, int64_t h, int64_t w, int64_t H, int64_t W,
                   bool align_corners, bool relu) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto ty = make_taps<acc_t>(h, H, align_corners);
  const auto tx = make_taps<acc_t>(w, W, align_corners);
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(h * w);
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t* u = up + p * h * w;
      const scalar_t* l = lat + p * H * W;
      const scalar_t* g = grad + p * H * W;
      const scalar_t* o = out + p * H * W;
      scalar_t* gl = grad_lat + p * H * W;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t y = 0; y < H; ++y) {
        const auto& t = ty[y];
        const scalar_t* r0 = u + t.i0 * w;
        const scalar_t* r1 = u + t.i1 * w;
        acc_t* a0 = acc.data() + t.i0 * w;
        acc_t* a1 = acc.data() + t.i1 * w;
        for (int64_t x = 0; x < W; ++x) {
          const int64_t k = y * W + x;
          acc_t gk = g[k];
          if (relu && !(acc_t(o[k]) > 0)) gk = 0;  // ReLU passes gradient where its output is positive
          const auto& s = tx[x];
          const acc_t v = t.w0 * (s.w0 * acc_t(r0[s.i0]) + s.w1 * acc_t(r0[s.i1])) +
                          t.w1 * (s.w0 * acc_t(r1[s.i0]) + s.w1 * acc_t(r1[s.i1]));
          gl[k] = static_cast<scalar_t>(gk * v);
          const acc_t gu = gk * acc_t(l[k]);
          a0[s.i0] += t.w0 * s.w0 * gu;
          a0[s.i1] += t.w0 * s.w1 * gu;
          a1[s.i0] += t.w1 * s.w0 * gu;
          a1[s.i1] += t.w1 * s.w1 * gu;
        }
      }
      scalar_t* gu = grad_up + p * h * w;
      for (int64_t i = 0; i < h * w; ++i) gu[i] = static_cast<scalar_t>(acc[i]);
    }
  });
}

bool use_nhwc(const at::Tensor& lateral) {
  return lateral.dim() == 4 && lateral.size(1) > 1 &&
         lateral.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

at::Tensor upsample_mul_cpu(const at::Tensor& upper, const at::Tensor& lateral, bool align_corners, bool relu) {
  check_upsample_mul_inputs(upper, lateral);
  const auto fmt = lateral.suggest_memory_format();
  if (use_nhwc(lateral)) {
    const auto cl = at::MemoryFormat::ChannelsLast;
    auto u = upper.contiguous(cl);
    auto l = lateral.contiguous(cl);
    auto out = at::empty_like(l, l.options(), cl);
    if (out.numel() == 0) return out;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "dsfd_upsample_mul_cpu_nhwc", [&] {
      forward_impl_nhwc<scalar_t>(u.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                  l.size(0), l.size(1), u.size(2), u.size(3), l.size(2), l.size(3), align_corners,
                                  relu);
    });
    return out;
  }
  auto u = upper.contiguous();
  auto l = lateral.contiguous();
  auto out = at::empty_like(l);
  if (out.numel() == 0) return out.contiguous(fmt);
  const int64_t planes = l.size(0) * l.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "dsfd_upsample_mul_cpu", [&] {
    forward_impl<scalar_t>(u.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), planes,
                           u.size(2), u.size(3), l.size(2), l.size(3), align_corners, relu);
  });
  return out.contiguous(fmt);
}

std::tuple<at::Tensor, at::Tensor> upsample_mul_backward_cpu(const at::Tensor& grad_out, const at::Tensor& upper,
                                                             const at::Tensor& lateral, const at::Tensor& out,
                                                             bool align_corners, bool relu) {
  check_upsample_mul_inputs(upper, lateral);
  TORCH_CHECK(grad_out.sizes() == lateral.sizes() && out.sizes() == lateral.sizes(),
              "dsfd::upsample_mul_backward: grad_out ", grad_out.sizes(), " and out ", out.sizes(),
              " must match lateral ", lateral.sizes());
  if (use_nhwc(lateral)) {
    const auto cl = at::MemoryFormat::ChannelsLast;
    auto u = upper.contiguous(cl);
    auto l = lateral.contiguous(cl);
    auto g = grad_out.to(l.scalar_type()).contiguous(cl);
    auto o = out.to(l.scalar_type()).contiguous(cl);
    auto grad_up = at::empty_like(u, u.options(), cl);
    auto grad_lat = at::empty_like(l, l.options(), cl);
    if (l.numel() == 0) return {grad_up.zero_().contiguous(upper.suggest_memory_format()), grad_lat};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "dsfd_upsample_mul_backward_nhwc", [&] {
      backward_impl_nhwc<scalar_t>(g.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(),
                                   o.data_ptr<scalar_t>(), grad_up.data_ptr<scalar_t>(), grad_lat.data_ptr<scalar_t>(),
                                   l.size(0), l.size(1), u.size(2), u.size(3), l.size(2), l.size(3), align_corners,
                                   relu);
    });
    return {grad_up.contiguous(upper.suggest_memory_format()), grad_lat};
  }
  auto u = upper.contiguous();
  auto l = lateral.contiguous();
  auto g = grad_out.to(l.scalar_type()).contiguous();
  auto o = out.to(l.scalar_type()).contiguous();
  auto grad_up = at::empty_like(u);
  auto grad_lat = at::empty_like(l);
  if (l.numel() == 0) return {grad_up.zero_(), grad_lat};
  const int64_t planes = l.size(0) * l.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "dsfd_upsample_mul_backward_cpu", [&] {
    backward_impl<scalar_t>(g.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(),
                            o.data_ptr<scalar_t>(), grad_up.data_ptr<scalar_t>(), grad_lat.data_ptr<scalar_t>(), planes,
                            u.size(2), u.size(3), l.size(2), l.size(3), align_corners, relu);
  });
  return {grad_up.contiguous(upper.suggest_memory_format()), grad_lat.contiguous(lateral.suggest_memory_format())};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CPU, m) {
  m.impl("upsample_mul", &upsample_mul_cpu);
  m.impl("upsample_mul_backward", &upsample_mul_backward_cpu);
}

}  // namespace dsfd
