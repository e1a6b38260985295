#include "cuda_test_util.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>

namespace tq::test {

bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

std::string attention_case_name(const std::string& spec, uint32_t head_dim, uint32_t gqa, uint32_t ntok, const std::vector<int32_t>& lens,
                                uint32_t splits, bool prefill) {
  std::string s = spec;  // appended piece by piece (GCC 12 warns, wrongly, on a chain of + here: -Wrestrict)
  for (const auto& [tag, v] : {std::pair{"_d", head_dim}, {"_g", gqa}, {"_t", ntok}}) s.append(tag).append(std::to_string(v));
  s.append("_L");
  for (int32_t l : lens) s.append(std::to_string(l)).append("_");
  s.append("s").append(std::to_string(splits)).append(prefill ? "_prefill" : "");
  for (char& ch : s)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

int clear_argmax(const float* logits, size_t n, float gap) {
  std::vector<float> top(logits, logits + n);
  std::partial_sort(top.begin(), top.begin() + 2, top.end(), std::greater<>());
  const float lowest = *std::min_element(logits, logits + n);
  if (!(top[0] - top[1] > gap * (top[0] - lowest))) return -1;
  return int(std::max_element(logits, logits + n) - logits);
}

double worst_row_error(const std::vector<float>& got, const std::vector<float>& ref, uint32_t d) {
  double worst = 0;
  for (size_t row = 0; row < got.size() / d; ++row) {
    double e = 0, n = 0;
    for (uint32_t i = 0; i < d; ++i) {
      e += std::pow(double(got[row * d + i]) - ref[row * d + i], 2);
      n += std::pow(double(ref[row * d + i]), 2);
    }
    const double r = std::sqrt(e / n);
    worst = std::isnan(r) || std::isnan(worst) ? NAN : std::max(worst, r);
  }
  return worst;
}

}  // namespace tq::test
