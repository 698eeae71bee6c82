// CPU kernel for dsfd::decode_detections: rows of anchors in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "../decode_detections.h"

namespace dsfd {
namespace {

std::tuple<at::Tensor, at::Tensor> decode_detections_cpu(const at::Tensor& loc, const at::Tensor& conf,
                                                         const at::Tensor& anchors, double v0, double v1,
                                                         double max_exponent, double width, double height) {
  check_decode_detections_inputs(loc, conf, anchors, v0, v1, width, height);
  auto l = loc.contiguous();
  auto c = conf.contiguous();
  auto a = anchors.to(at::kFloat).contiguous();
  const int64_t B = l.size(0), A = l.size(1);
  auto boxes = at::empty({B, A, 4}, l.options().dtype(at::kFloat));
  auto scores = at::empty({B, A}, l.options().dtype(at::kFloat));
  if (B * A == 0) return {boxes, scores};
  const float vxy = static_cast<float>(v0), vwh = static_cast<float>(v1), mexp = static_cast<float>(max_exponent);
  const float W = static_cast<float>(width), H = static_cast<float>(height);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "dsfd_decode_detections_cpu", [&] {
    const scalar_t* lp = l.data_ptr<scalar_t>();
    const scalar_t* cp = c.data_ptr<scalar_t>();
    const float* ap = a.data_ptr<float>();
    float* bp = boxes.data_ptr<float>();
    float* sp = scores.data_ptr<float>();
    at::parallel_for(0, B * A, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        decode_detection<scalar_t>(lp + 4 * r, cp + 2 * r, ap + 4 * (r % A), vxy, vwh, mexp, W, H, bp + 4 * r, sp + r);
      }
    });
  });
  return {boxes, scores};
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CPU, m) {
  m.impl("decode_detections", &decode_detections_cpu);
}

}  // namespace dsfd
