// The C API honours every format knob of a KV spec and refuses every policy knob by name, before
// anything is allocated (so the refusals are checked on machines without a GPU too).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "tq/format.h"
#include "tq_capi.h"

namespace tq {
namespace {

std::string create_error(const char* spec) {
  char err[512] = "";
  void* h = tq_cache_create(2, 128, 4, spec, err, sizeof err);
  EXPECT_EQ(h, nullptr) << spec;
  tq_cache_destroy(h);
  return err;
}

TEST(CApi, PolicyKnobsAreRefusedByName) {
  for (const char* knob : {"sink=4", "window=64", "edge=2/k4v4", "ksim=int4"}) {
    const std::string spec = std::string(knob == std::string("ksim=int4") ? "fp16:" : "k3v2:") + knob;
    const std::string err = create_error(spec.c_str());
    EXPECT_NE(err.find(knob), std::string::npos) << spec << ": " << err;
    EXPECT_NE(err.find("tq_cache_create"), std::string::npos) << err;
  }
  // The tq run default names its first knob.
  EXPECT_NE(create_error("k3v2:edge=2/k4v4:sink=4:window=64").find("edge=2/k4v4"), std::string::npos);
}

TEST(CApi, BadSpecsAndShapesAreRefusedNamingTheValue) {
  EXPECT_NE(create_error("k9v2").find("K width must be 1..8 bits, got 9"), std::string::npos);
  EXPECT_NE(create_error(nullptr).find("null"), std::string::npos);
  char err[256] = "";
  EXPECT_EQ(tq_cache_create(0, 128, 4, "k3v2", err, sizeof err), nullptr);
  EXPECT_NE(std::string(err).find("KV heads must be 1..1024, got 0"), std::string::npos) << err;
  EXPECT_EQ(tq_cache_create(2, 128, 0, "k3v2", err, sizeof err), nullptr);
  EXPECT_NE(std::string(err).find("at least one page, got 0"), std::string::npos) << err;
}

// A null handle is an error that names it (or 0 from the size functions), never a dereference.
TEST(CApi, NullHandlesAreRefused) {
  char err[512] = "";
  EXPECT_EQ(tq_quantize_store(nullptr, nullptr, nullptr, 0, nullptr, 1, nullptr, err, sizeof err), -1);
  EXPECT_NE(std::string(err).find("the cache handle is null"), std::string::npos) << err;
  err[0] = 0;
  EXPECT_EQ(tq_decode(nullptr, nullptr, 0, nullptr, 0, nullptr, nullptr, 1, 1, 8, 1, 16, 0, nullptr, 64, nullptr, err, sizeof err), -1);
  EXPECT_NE(std::string(err).find("the cache handle is null"), std::string::npos) << err;
  EXPECT_EQ(tq_cache_bytes(nullptr), 0u);
  EXPECT_EQ(tq_cache_block_bytes(nullptr), 0u);
  EXPECT_EQ(tq_decode_workspace(nullptr, 1, 1, 8, 1, 16, 0), 0u);
  EXPECT_EQ(tq_prefill_workspace(nullptr, 1, 1, 8, 1, 16, 0), 0u);
}

// Shapes a plan would divide by zero for get a workspace of 0 (tq_decode then names them), and
// dtypes outside 0..2 are refused by name (they were read as bf16).
TEST(CApi, BadShapesAndDtypesAreRefused) {
  TQ_REQUIRE_GPU();
  char err[512] = "";
  void* h = tq_cache_create(2, 128, 4, "k3v2", err, sizeof err);
  ASSERT_NE(h, nullptr) << err;
  EXPECT_EQ(tq_decode_workspace(h, 0, 1, 8, 4, 64, 0), 0u);  // no sequences
  EXPECT_EQ(tq_decode_workspace(h, 1, 1, 0, 4, 64, 0), 0u);  // no query heads
  EXPECT_EQ(tq_prefill_workspace(h, 1, 4, 0, 4, 64, 0), 0u);
  EXPECT_GT(tq_decode_workspace(h, 1, 1, 8, 4, 64, 0), 0u);
  int dummy = 0;
  const int64_t* slots = reinterpret_cast<const int64_t*>(&dummy);  // never read: refused before any launch
  EXPECT_EQ(tq_quantize_store(h, &dummy, &dummy, 7, slots, 1, nullptr, err, sizeof err), -1);
  EXPECT_NE(std::string(err).find("dtype 7 is not a dtype"), std::string::npos) << err;
  EXPECT_EQ(tq_decode(h, &dummy, 9, &dummy, 0, &dummy, &dummy, 1, 1, 8, 4, 64, 0, &dummy, 64, nullptr, err, sizeof err), -1);
  EXPECT_NE(std::string(err).find("q_dtype 9 is not a dtype"), std::string::npos) << err;
  tq_cache_destroy(h);
}

// The workspace's size is checked against the shape's before any launch: a byte short of what
// tq_decode_workspace / tq_prefill_workspace give is refused naming both sizes, and 0 (a caller
// that forgot it) by name, in tq_store_and_decode before its store; the size asked for runs.
TEST(CApi, AWorkspaceSmallerThanTheShapesIsRefused) {
  TQ_REQUIRE_GPU();
  EXPECT_EQ(tq_capi_version(), uint32_t(TQ_CAPI_VERSION));
  constexpr uint32_t kSeqs = 2, kQHeads = 8, kD = 128, kPages = 32, kLen = 512;  // 2 KV heads, pages of 16
  char err[512] = "";
  void* h = tq_cache_create(2, kD, kSeqs * kPages, "k3v2", err, sizeof err);
  ASSERT_NE(h, nullptr) << err;
  std::vector<int32_t> tables(kSeqs * kPages);
  for (size_t i = 0; i < tables.size(); ++i) tables[i] = int32_t(i);
  test::DeviceBuffer<int32_t> block_tables(tables), seq_lens(std::vector<int32_t>(kSeqs, kLen));
  test::DeviceBuffer<uint16_t> q(kSeqs * 64 * kQHeads * kD), out(q.n), kv(2 * kSeqs * 2 * kD);  // bf16; kv: K's rows, then V's
  test::DeviceBuffer<int64_t> slots(std::vector<int64_t>{kLen - 1, kPages * 16 + kLen - 1});
  CUDA_OK(cudaMemset(q.ptr, 0, q.n * 2));
  CUDA_OK(cudaMemset(kv.ptr, 0, kv.n * 2));
  for (const bool prefill : {false, true}) {
    const uint32_t ntok = prefill ? 64 : 1;
    const uint64_t need = prefill ? tq_prefill_workspace(h, kSeqs, ntok, kQHeads, kPages, kLen, 0)
                                  : tq_decode_workspace(h, kSeqs, ntok, kQHeads, kPages, kLen, 0);
    ASSERT_GT(need, 1u);
    test::DeviceBuffer<uint8_t> ws(need);
    const auto call = [&](uint64_t bytes) {
      err[0] = 0;
      const auto f = prefill ? tq_prefill : tq_decode;
      return f(h, q.ptr, 2, out.ptr, 2, block_tables.ptr, seq_lens.ptr, kSeqs, ntok, kQHeads, kPages, kLen, 0, ws.ptr, bytes, nullptr, err,
               sizeof err);
    };
    EXPECT_EQ(call(need - 1), -1) << prefill;
    EXPECT_NE(std::string(err).find("a workspace of " + std::to_string(need - 1) + " bytes"), std::string::npos) << err;
    EXPECT_NE(std::string(err).find("needs " + std::to_string(need)), std::string::npos) << err;
    EXPECT_EQ(call(0), -1) << prefill;
    EXPECT_NE(std::string(err).find("workspace_bytes is 0"), std::string::npos) << err;
    EXPECT_EQ(call(need), 0) << err;
    CUDA_OK(cudaDeviceSynchronize());
    if (prefill) continue;
    const auto fused = [&](uint64_t bytes) {
      err[0] = 0;
      return tq_store_and_decode(h, kv.ptr, kv.ptr + kv.n / 2, 2, slots.ptr, kSeqs, q.ptr, 2, out.ptr, 2, block_tables.ptr, seq_lens.ptr, kSeqs, 1,
                                 kQHeads, kPages, kLen, 0, ws.ptr, bytes, nullptr, err, sizeof err);
    };
    EXPECT_EQ(fused(need - 1), -1);
    EXPECT_NE(std::string(err).find("a workspace of " + std::to_string(need - 1) + " bytes"), std::string::npos) << err;
    EXPECT_EQ(fused(need), 0) << err;
    CUDA_OK(cudaDeviceSynchronize());
  }
  tq_cache_destroy(h);
}

TEST(CApi, FormatKnobsAreHonoured) {
  TQ_REQUIRE_GPU();
  for (const char* spec : {"k3v2", "k4v4:nc", "k3v2:rot=dense:seed=7", "k2v2:page=32", "fp8", "bf16:page=7"}) {
    char err[512] = "";
    void* h = tq_cache_create(2, 128, 4, spec, err, sizeof err);
    ASSERT_NE(h, nullptr) << spec << ": " << err;
    const bool tq8 = std::string(spec).rfind("fp8", 0) == 0, bf = std::string(spec).rfind("bf16", 0) == 0;
    const uint32_t page = std::string(spec).find("page=32") != std::string::npos ? 32 : bf ? 7 : 16;
    TensorCode k{Encoding::kTqMse, 3}, v{Encoding::kTqMse, 2};
    if (tq8) k = v = {Encoding::kFp8E4M3, 8};
    if (bf) k = v = {Encoding::kBf16, 16};
    if (std::string(spec).rfind("k4v4", 0) == 0) k = v = {Encoding::kTqMse, 4};
    if (std::string(spec).rfind("k2v2", 0) == 0) k = v = {Encoding::kTqMse, 2};
    EXPECT_EQ(tq_cache_block_bytes(h), block_layout(k, v, 128, page).bytes) << spec;
    EXPECT_EQ(tq_cache_bytes(h), uint64_t(block_layout(k, v, 128, page).bytes) * 2 * 4) << spec;
    tq_cache_destroy(h);
  }
}

}  // namespace
// tq_dense_prompt: bad shapes and dtypes refused by name everywhere; where cuDNN runs, a workspace
// a byte short of tq_dense_prompt_workspace's is refused and the size asked for runs.
TEST(CApi, DensePromptRefusesAndRuns) {
  char err[512] = "";
  EXPECT_EQ(tq_dense_prompt_workspace(1, 16, 8, 2, 128, 0, 0, err, sizeof err), -1);
  EXPECT_NE(std::string(err).find("dtype 0"), std::string::npos) << err;
  EXPECT_EQ(tq_dense_prompt_workspace(1, 16, 8, 2, 128, 5, 0, err, sizeof err), -1);
  EXPECT_NE(std::string(err).find("dtype 5 is not a dtype"), std::string::npos) << err;
  EXPECT_EQ(tq_dense_prompt_workspace(1, 16, 8, 3, 128, 2, 0, err, sizeof err), -1);
  EXPECT_NE(std::string(err).find("8 query heads over 3 KV heads"), std::string::npos) << err;
  err[0] = 0;
  if (!tq_dense_prompt_available(err, sizeof err)) {
    EXPECT_NE(err[0], 0);
    GTEST_SKIP() << "dense prompts unavailable: " << err;
  }
  constexpr uint32_t kTok = 100, kQH = 8, kKVH = 2, kD = 128;
  const int64_t need = tq_dense_prompt_workspace(1, kTok, kQH, kKVH, kD, 2, 0, err, sizeof err);
  ASSERT_GE(need, 0) << err;
  test::DeviceBuffer<uint16_t> q(kTok * kQH * kD), kv(2 * kTok * kKVH * kD), out(q.n);
  test::DeviceBuffer<uint8_t> ws(size_t(need) + 1);
  CUDA_OK(cudaMemset(q.ptr, 0, q.n * 2));
  CUDA_OK(cudaMemset(kv.ptr, 0, kv.n * 2));
  const auto call = [&](uint64_t bytes) {
    return tq_dense_prompt(q.ptr, kv.ptr, kv.ptr + kv.n / 2, out.ptr, 2, 1, kTok, kQH, kKVH, kD, 0, ws.ptr, bytes, nullptr, err, sizeof err);
  };
  if (need > 0) {
    EXPECT_EQ(call(uint64_t(need) - 1), -1);
    EXPECT_NE(std::string(err).find("needs " + std::to_string(need)), std::string::npos) << err;
  }
  EXPECT_EQ(call(uint64_t(need)), 0) << err;
  CUDA_OK(cudaDeviceSynchronize());
}

}  // namespace tq
