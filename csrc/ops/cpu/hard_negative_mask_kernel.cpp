// CPU kernel for dsfd::hard_negative_mask: per image, a linear-time
// selection (nth_element) of the k hardest negatives instead of SSD's two
// full argsorts over all anchors.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../hard_negative_mask.h"

namespace dsfd {
namespace {

template <typename acc_t>
struct LossIndex {
  acc_t loss;
  int64_t index;
};

// Harder first: NaN above everything (torch.sort's order), then larger loss,
// then lower index.
template <typename acc_t>
inline bool harder(const LossIndex<acc_t>& a, const LossIndex<acc_t>& b) {
  const bool an = std::isnan(a.loss), bn = std::isnan(b.loss);
  if (an != bn) return an;
  if (!an && a.loss != b.loss) return a.loss > b.loss;
  return a.index < b.index;
}

template <typename scalar_t, typename label_t>
void hnm_cpu_impl(const scalar_t* loss, const label_t* labels, bool* out, int64_t B, int64_t A, int64_t ratio,
                  int64_t min_neg) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<LossIndex<acc_t>> neg;
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* l = loss + b * A;
      const label_t* lab = labels + b * A;
      bool* o = out + b * A;
      int64_t num_pos = 0;
      neg.clear();
      for (int64_t a = 0; a < A; ++a) {
        o[a] = lab[a] > 0;
        num_pos += lab[a] > 0;
        if (lab[a] == 0) neg.push_back({static_cast<acc_t>(l[a]), a});
      }
      const int64_t k = std::min<int64_t>(std::max<int64_t>(ratio * num_pos, min_neg), A - 1);
      if (k <= 0) continue;
      if (k < static_cast<int64_t>(neg.size())) {
        std::nth_element(neg.begin(), neg.begin() + (k - 1), neg.end(), harder<acc_t>);
        neg.resize(k);
      }
      for (const auto& n : neg) o[n.index] = true;
    }
  });
}

at::Tensor hard_negative_mask_cpu(const at::Tensor& conf_loss, const at::Tensor& labels, int64_t neg_pos_ratio,
                                  int64_t min_negatives) {
  check_hnm_inputs(conf_loss, labels, neg_pos_ratio, min_negatives);
  const int64_t B = conf_loss.size(0), A = conf_loss.size(1);
  auto out = at::zeros({B, A}, conf_loss.options().dtype(at::kBool));
  if (out.numel() == 0) return out;
  auto l = conf_loss.contiguous();
  auto lab = labels.to(at::kLong).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, l.scalar_type(), "dsfd_hnm_cpu", [&] {
    hnm_cpu_impl<scalar_t, int64_t>(l.data_ptr<scalar_t>(), lab.data_ptr<int64_t>(), out.data_ptr<bool>(), B, A,
                                    neg_pos_ratio, min_negatives);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dsfd, CPU, m) {
  m.impl("hard_negative_mask", &hard_negative_mask_cpu);
}

}  // namespace dsfd
