// dense_prompt_attention (cuDNN's fused SDPA on whole prompts) against a double-precision causal
// attention over the same bf16/fp16 rows: the worst row's relative error at most twice that of a
// computation in the kernel's precision on the same data (flash attention's: fp32 logits and
// softmax, P rounded to the rows' dtype before P·V, the output rounded to it), as the decode tests
// bound theirs. The refusals run everywhere; the rest where a GPU and cuDNN are.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "tq/cuda/dense_prompt.h"
#include "tq/numeric.h"
#include "tq/rng.h"

namespace tq {
namespace {

using cuda::DensePromptParams;
using cuda::DType;

DensePromptParams shape(uint32_t seqs, uint32_t ntok, uint32_t qh, uint32_t kvh, uint32_t d, DType t = DType::kBf16) {
  DensePromptParams p;
  p.num_seqs = seqs, p.ntok = ntok, p.q_heads = qh, p.kv_heads = kvh, p.head_dim = d, p.dtype = t;
  return p;
}

std::string refusal(const DensePromptParams& p) {
  try {
    (void)cuda::dense_prompt_workspace_bytes(p);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Every bad shape is refused by name before cuDNN is asked (so on machines without it too).
TEST(DensePrompt, RefusesBadShapesByName) {
  EXPECT_NE(refusal(shape(1, 16, 8, 2, 128, DType::kF32)).find("dtype 0"), std::string::npos);
  EXPECT_NE(refusal(shape(0, 16, 8, 2, 128)).find("0 sequences"), std::string::npos);
  EXPECT_NE(refusal(shape(1, 0, 8, 2, 128)).find("of 0 tokens"), std::string::npos);
  EXPECT_NE(refusal(shape(1, 16, 6, 4, 128)).find("6 query heads over 4 KV heads"), std::string::npos);
  EXPECT_NE(refusal(shape(1, 16, 8, 2, 260)).find("head dim 260"), std::string::npos);
  EXPECT_NE(refusal(shape(1, 16, 8, 2, 100)).find("head dim 100"), std::string::npos);
  EXPECT_NE(refusal(shape(4096, 32768, 64, 8, 256)).find("past 2^31"), std::string::npos);
  DensePromptParams nan = shape(1, 16, 8, 2, 128);
  nan.scale = NAN;
  EXPECT_NE(refusal(nan).find("logit scale nan"), std::string::npos);
}

// Where the dense path cannot run, it says why, and the calls refuse with that reason.
TEST(DensePrompt, SaysWhyItIsUnavailable) {
  std::string why;
  if (cuda::dense_prompt_available(&why)) GTEST_SKIP() << "dense prompt attention is available here";
  EXPECT_FALSE(why.empty());
  EXPECT_NE(refusal(shape(1, 16, 8, 2, 128)).find(why), std::string::npos) << refusal(shape(1, 16, 8, 2, 128));
}

float narrow(float x, DType t) { return t == DType::kBf16 ? test::to_bf16(x) : test::to_f16(x); }

struct Rows {
  std::vector<float> q, k, v;  // the rows' values (already in the dtype), [seq][tok][heads][d]
};

// `rows` random token rows of q, k and v in dtype t; key channel 3 times key_spike (large logits,
// hostile for the softmax's max).
Rows random_rows(Rng& rng, size_t rows, uint32_t qh, uint32_t kvh, uint32_t d, DType t, float key_spike) {
  Rows r;
  const auto fill = [&](std::vector<float>& x, uint32_t heads, float spike) {
    x.resize(rows * heads * d);
    for (size_t i = 0; i < x.size(); ++i) x[i] = narrow(float(rng.normal()) * (i % d == 3 ? spike : 1.0f), t);
  };
  fill(r.q, qh, 1.0f), fill(r.k, kvh, key_spike), fill(r.v, kvh, 1.0f);
  return r;
}

// Values in dtype t as its bits (exact: they are in t already), and back.
std::vector<uint16_t> bits_of(const std::vector<float>& x, DType t) {
  std::vector<uint16_t> b(x.size());
  for (size_t i = 0; i < x.size(); ++i) b[i] = t == DType::kBf16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
  return b;
}
std::vector<float> floats_of(const std::vector<uint16_t>& b, DType t) {
  std::vector<float> x(b.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = t == DType::kBf16 ? bf16_to_f32(b[i]) : f16_to_f32(b[i]);
  return x;
}

// Causal attention of each sequence over its own rows: in double (exact = true), or as a flash
// kernel of the rows' precision computes it (fp32 logits and softmax, P and the output rounded).
std::vector<float> attention(const Rows& r, const DensePromptParams& p, bool exact, double* max_log2_logit = nullptr) {
  const uint32_t S = p.num_seqs, T = p.ntok, H = p.q_heads, G = p.q_heads / p.kv_heads, D = p.head_dim;
  const double scale = p.scale > 0 ? p.scale : 1.0 / std::sqrt(double(D));
  std::vector<float> out(size_t(S) * T * H * D);
  std::vector<double> logit(T), acc(D);
  for (uint32_t s = 0; s < S; ++s)
    for (uint32_t t = 0; t < T; ++t)
      for (uint32_t h = 0; h < H; ++h) {
        const float* q = &r.q[((size_t(s) * T + t) * H + h) * D];
        double m = -INFINITY;
        for (uint32_t j = 0; j <= t; ++j) {
          const float* k = &r.k[((size_t(s) * T + j) * p.kv_heads + h / G) * D];
          double dot = 0;
          float dotf = 0;
          for (uint32_t i = 0; i < D; ++i) dot += double(q[i]) * k[i], dotf += q[i] * k[i];
          logit[j] = exact ? dot * scale : double(dotf * float(scale));
          m = std::max(m, logit[j]);
          if (max_log2_logit) *max_log2_logit = std::max(*max_log2_logit, std::fabs(logit[j]) * 1.4426950408889634);
        }
        std::fill(acc.begin(), acc.end(), 0.0);
        double sum = 0;
        for (uint32_t j = 0; j <= t; ++j) {
          const double w = exact ? std::exp(logit[j] - m) : double(narrow(std::exp(float(logit[j] - m)), p.dtype));
          sum += exact ? w : double(std::exp(float(logit[j] - m)));
          const float* v = &r.v[((size_t(s) * T + j) * p.kv_heads + h / G) * D];
          for (uint32_t i = 0; i < D; ++i) acc[i] += w * v[i];
        }
        float* o = &out[((size_t(s) * T + t) * H + h) * D];
        for (uint32_t i = 0; i < D; ++i) o[i] = exact ? float(acc[i] / sum) : narrow(float(acc[i] / sum), p.dtype);
      }
  return out;
}

struct Case {
  uint32_t seqs, ntok, qh, kvh, d;
  DType t;
  float scale;
  float key_spike;  // one key channel times this: large logits (hostile for the softmax's max)
};

class DensePromptGpu : public ::testing::TestWithParam<Case> {};

TEST_P(DensePromptGpu, MatchesTheReferenceWithinTwiceTheSamePrecisionError) {
  TQ_REQUIRE_GPU();
  std::string why;
  if (!cuda::dense_prompt_available(&why)) GTEST_SKIP() << why;
  const Case c = GetParam();
  DensePromptParams p = shape(c.seqs, c.ntok, c.qh, c.kvh, c.d, c.t);
  p.scale = c.scale;
  Rng rng(c.ntok * 7919u + c.d * 31u + c.qh + uint32_t(c.t));
  const Rows r = random_rows(rng, size_t(c.seqs) * c.ntok, c.qh, c.kvh, c.d, c.t, c.key_spike);
  test::DeviceBuffer<uint16_t> q(bits_of(r.q, c.t)), k(bits_of(r.k, c.t)), v(bits_of(r.v, c.t)), o(r.q.size());
  CUDA_OK(cudaMemset(o.ptr, 0xff, o.n * 2));  // NaN: a row the kernel leaves unwritten fails
  p.q = q.ptr, p.k = k.ptr, p.v = v.ptr, p.out = o.ptr;
  const uint64_t ws = cuda::dense_prompt_workspace_bytes(p);
  test::DeviceBuffer<uint8_t> w(ws);
  p.workspace = w.ptr, p.workspace_bytes = ws;
  cuda::dense_prompt_attention(p, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> got = floats_of(o.download(), c.t);
  double max_log2_logit = 0;
  const std::vector<float> ref = attention(r, p, true), same = attention(r, p, false, &max_log2_logit);
  const double err = test::worst_row_error(got, ref, c.d), same_err = test::worst_row_error(same, ref, c.d);
  const double bound = test::attention_bound(same_err, max_log2_logit);
  std::printf("%u x %u tokens, %u/%u heads of %u, %s: worst row %.3e, same precision %.3e, bound %.3e, workspace %llu\n", c.seqs, c.ntok,
              c.qh, c.kvh, c.d, c.t == DType::kBf16 ? "bf16" : "fp16", err, same_err, bound, (unsigned long long)ws);
  EXPECT_LE(err, bound);
}

INSTANTIATE_TEST_SUITE_P(All, DensePromptGpu,
                         ::testing::Values(Case{1, 1, 8, 2, 128, DType::kBf16, 0, 1}, Case{1, 200, 8, 2, 128, DType::kBf16, 0, 1},
                                           Case{3, 77, 32, 8, 128, DType::kBf16, 0, 8}, Case{2, 130, 4, 4, 64, DType::kF16, 0, 1},
                                           Case{1, 257, 16, 2, 256, DType::kBf16, 0.0625f, 1},
                                           Case{2, 96, 8, 1, 128, DType::kF16, 0, 8}));

// The ragged description: lengths, then q and k element offsets; refusals by name.
TEST(DensePrompt, RaggedDescriptionAndRows) {
  EXPECT_EQ(cuda::dense_prompt_ragged({3, 5}, 8, 2, 4), (std::vector<int32_t>{3, 5, 0, 96, 256, 0, 24, 64}));
  EXPECT_EQ(cuda::dense_prompt_ragged_rows(1), 64u);
  EXPECT_EQ(cuda::dense_prompt_ragged_rows(64), 64u);
  EXPECT_EQ(cuda::dense_prompt_ragged_rows(65), 128u);
  EXPECT_EQ(cuda::dense_prompt_ragged_rows(2049), 4096u);
  try {
    (void)cuda::dense_prompt_ragged({4, 0}, 8, 2, 4);
    ADD_FAILURE() << "a sequence of 0 tokens was taken";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("sequence 1 of 0 tokens"), std::string::npos) << e.what();
  }
  try {
    (void)cuda::dense_prompt_ragged({1u << 20, 1u << 20}, 64, 8, 128);
    ADD_FAILURE() << "offsets past 2^31 were taken";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2^31"), std::string::npos) << e.what();
  }
}

struct RaggedCase {
  std::vector<uint32_t> lens;
  uint32_t qh, kvh, d;
  DType t;
  float key_spike;
};

class DensePromptRagged : public ::testing::TestWithParam<RaggedCase> {};

// Prompts of different lengths in one ragged call (the plan built for the longest rounded up to a
// power of two, cuDNN's padding mask for the rest): each sequence's rows against its own causal
// reference, within twice the same-precision error.
TEST_P(DensePromptRagged, EachPromptMatchesItsReference) {
  TQ_REQUIRE_GPU();
  std::string why;
  if (!cuda::dense_prompt_available(&why)) GTEST_SKIP() << why;
  const RaggedCase c = GetParam();
  const uint32_t n = uint32_t(c.lens.size()), longest = *std::max_element(c.lens.begin(), c.lens.end());
  size_t rows = 0;
  for (uint32_t l : c.lens) rows += l;
  Rng rng(uint32_t(rows) * 7919u + c.d * 31u + c.qh + uint32_t(c.t));
  const Rows r = random_rows(rng, rows, c.qh, c.kvh, c.d, c.t, c.key_spike);
  test::DeviceBuffer<uint16_t> q(bits_of(r.q, c.t)), k(bits_of(r.k, c.t)), v(bits_of(r.v, c.t)), o(r.q.size());
  CUDA_OK(cudaMemset(o.ptr, 0xff, o.n * 2));  // NaN: a row the kernel leaves unwritten fails
  test::DeviceBuffer<int32_t> meta(cuda::dense_prompt_ragged(c.lens, c.qh, c.kvh, c.d));
  DensePromptParams p = shape(n, longest, c.qh, c.kvh, c.d, c.t);
  p.q = q.ptr, p.k = k.ptr, p.v = v.ptr, p.out = o.ptr, p.ragged = meta.ptr;
  const uint64_t ws = cuda::dense_prompt_workspace_bytes(p);
  test::DeviceBuffer<uint8_t> w(ws);
  p.workspace = w.ptr, p.workspace_bytes = ws;
  cuda::dense_prompt_attention(p, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> all = floats_of(o.download(), c.t);
  size_t at = 0;  // the sequence's first row
  for (uint32_t s = 0; s < n; ++s) {
    const uint32_t len = c.lens[s];
    SCOPED_TRACE(testing::Message() << "sequence " << s << " of " << len << " tokens");
    const auto slice = [&](const std::vector<float>& x, uint32_t heads) {
      return std::vector<float>(x.begin() + long(at * heads * c.d), x.begin() + long((at + len) * heads * c.d));
    };
    Rows one{slice(r.q, c.qh), slice(r.k, c.kvh), slice(r.v, c.kvh)};
    const DensePromptParams alone = shape(1, len, c.qh, c.kvh, c.d, c.t);
    const std::vector<float> got = slice(all, c.qh);
    double max_log2_logit = 0;
    const std::vector<float> ref = attention(one, alone, true), same = attention(one, alone, false, &max_log2_logit);
    const double err = test::worst_row_error(got, ref, c.d), same_err = test::worst_row_error(same, ref, c.d);
    const double bound = test::attention_bound(same_err, max_log2_logit);
    std::printf("ragged %u/%u heads of %u, %s, sequence %u of %u: worst row %.3e, same precision %.3e, bound %.3e\n", c.qh, c.kvh, c.d,
                c.t == DType::kBf16 ? "bf16" : "fp16", s, len, err, same_err, bound);
    EXPECT_LE(err, bound);
    at += len;
  }
}

INSTANTIATE_TEST_SUITE_P(All, DensePromptRagged,
                         ::testing::Values(RaggedCase{{200, 13, 77}, 32, 8, 128, DType::kBf16, 8},
                                           RaggedCase{{1, 64, 65, 10}, 4, 4, 64, DType::kF16, 1},
                                           RaggedCase{{130, 257}, 16, 2, 256, DType::kBf16, 1},
                                           RaggedCase{{100}, 8, 1, 128, DType::kF16, 8}));

// A second call of a shape reuses its plan, and two shapes keep their own.
TEST(DensePrompt, PlansAreKeptPerShape) {
  TQ_REQUIRE_GPU();
  std::string why;
  if (!cuda::dense_prompt_available(&why)) GTEST_SKIP() << why;
  const uint64_t a = cuda::dense_prompt_workspace_bytes(shape(1, 64, 8, 2, 128));
  const uint64_t b = cuda::dense_prompt_workspace_bytes(shape(2, 300, 8, 2, 64, DType::kF16));
  EXPECT_EQ(cuda::dense_prompt_workspace_bytes(shape(1, 64, 8, 2, 128)), a);
  EXPECT_EQ(cuda::dense_prompt_workspace_bytes(shape(2, 300, 8, 2, 64, DType::kF16)), b);
}

}  // namespace
}  // namespace tq
