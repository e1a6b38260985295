// decode_attention against attention_reference (double precision over the dequantized cache) on
// the same packed cache, every element written: the worst row's relative error at most twice that
// of a naive computation in the kernels' operand precision on the same data
// (test::same_precision_attention; flash-attention's tests bound their kernels the same way).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <optional>
#include <string>
#include <utility>

#include "cuda_test_util.h"
#include "launch_common.h"
#include "variants.h"
#include "test_util.h"
#include "tq/kv/attention_ref.h"
#include "tq/cuda/device_format.h"
#include "tq/kv/paged_cache.h"
#include "tq/numeric.h"
#include "tq/cuda/kernels.h"
#include "tq/rng.h"

namespace tq {
namespace {

struct DecodeCase {
  std::string spec;
  uint32_t head_dim, gqa, ntok;
  std::vector<int32_t> lens;
  uint32_t splits = 0;  // 0: automatic
  bool prefill = false;  // through prefill_attention (a chunk of ntok new tokens per sequence)
  bool compact = false;  // with TQ_CUDA_SMEM_KB=99: the kernels of a GPU with 99 KB a block (sm_86, 89, 120)
  uint32_t swa = 0;       // a sliding-window layer's window (DecodeParams::sliding_window), 0: none
  uint32_t split_tokens = 0;  // fixed cuts of this many positions (batch invariance), enough of them
};

// Sets an environment variable for its lifetime, then restores it (the launchers read
// TQ_DECODE_ROWS and TQ_CUDA_SMEM_KB at every call).
struct ScopedEnv {
  const char* name;
  bool had;
  std::string old;
  ScopedEnv(const char* n, const char* v) : name(n), had(std::getenv(n) != nullptr), old(had ? std::getenv(n) : "") { setenv(n, v, 1); }
  ~ScopedEnv() { had ? setenv(name, old.c_str(), 1) : unsetenv(name); }
};

// TQ_CUDA_PORTABLE=1 makes a Hopper GPU take the launches every other GPU takes, so the GPU script
// runs the suites both ways (bench/gpu/run_h200.sh); this says which one ran and that the switch holds.
TEST(CudaLaunch, DependentLaunchesFollowTheDeviceAndTheSwitch) {
  TQ_REQUIRE_GPU();
  const char* v = std::getenv("TQ_CUDA_PORTABLE");
  const bool portable = v && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
  EXPECT_EQ(cuda::dependent_launches(), !portable && cuda::device_cc_major() >= 9);
  std::printf("compute capability %d: %s launches\n", cuda::device_cc_major(), cuda::dependent_launches() ? "programmatic dependent" : "plain (portable)");
}

// The shared memory the attention kernels take (docs/cuda.md's table of what runs where): on a GPU
// with 99 KB a block (sm_86/89/120) every cache fits at every head dim, the float caches' decode and
// the prefill at 256 through their compact variants; the H200's full variants need more. A limit
// below what the compact kernels need is refused by name, as is a malformed TQ_CUDA_SMEM_KB.
TEST(CudaLaunch, SharedMemoryOfTheKernelsAndItsRefusal) {
  constexpr size_t kConsumer = 99 * 1024, kA100 = 163 * 1024, kHopper = 227 * 1024;
  const std::vector<TensorCode> keys{{Encoding::kTqMse, 2}, {Encoding::kTqMse, 3}, {Encoding::kTqMse, 4},
                                     {Encoding::kFp16, 16}, {Encoding::kBf16, 16},  {Encoding::kFp8E4M3, 8}};
  for (const TensorCode& k : keys)
    for (uint32_t d : {64u, 112u, 128u, 256u}) {
      EXPECT_LE(cuda::attention_smem_bytes(k, d, kConsumer), kConsumer) << int(k.enc) << " at head dim " << d;
      EXPECT_LE(cuda::attention_smem_bytes(k, d, kConsumer), cuda::attention_smem_bytes(k, d, kHopper));
    }
  // The full variants the H200 runs, which the compact ones stand in for:
  EXPECT_GT(cuda::attention_smem_bytes({Encoding::kBf16, 16}, 128, kHopper), kConsumer);
  EXPECT_GT(cuda::attention_smem_bytes({Encoding::kFp16, 16}, 256, kHopper), kA100);
  EXPECT_GT(cuda::attention_smem_bytes({Encoding::kFp8E4M3, 8}, 256, kHopper), kConsumer);
  EXPECT_GT(cuda::attention_smem_bytes({Encoding::kTqMse, 3}, 256, kHopper), kConsumer);  // prefill's 32-token tiles
  EXPECT_LE(cuda::attention_smem_bytes({Encoding::kTqMse, 3}, 128, kHopper), kConsumer);  // no compact kernel needed
  // Each architecture's build carries only the variants its GPUs run (variants.h): every cache
  // fits at every head dim on every GPU a build's cubin runs on, with the variant it carries.
  // (A cubin runs on the later GPUs of its major version: sm_80's on sm_86 and 89, sm_86's on
  // sm_87 with 163 KB; sm_90 plans for 99 KB under TQ_CUDA_SMEM_KB in the tests.)
  const std::vector<std::pair<int, size_t>> runs{{80, kA100}, {80, kConsumer}, {86, kConsumer}, {86, kA100},    {89, kConsumer},
                                                 {90, kHopper}, {90, kConsumer}, {100, kHopper}, {120, kConsumer}};
  for (const auto& [arch, limit] : runs) {
    for (const bool too_big : {false, true})
      EXPECT_TRUE(cuda::variant_carried(arch, true, cuda::choose_compact(arch, too_big))) << "sm_" << arch;
    for (const TensorCode& k : keys)
      for (uint32_t d : {64u, 112u, 128u, 256u})
        EXPECT_LE(cuda::attention_smem_bytes(k, d, limit, arch), limit) << "sm_" << arch << " cubin, " << limit / 1024 << " KB, "
                                                                         << int(k.enc) << " at head dim " << d;
  }
  EXPECT_FALSE(cuda::variant_carried(86, true, false));  // a 99 KB build leaves the full variants out
  EXPECT_FALSE(cuda::variant_carried(100, true, true));  // a Blackwell datacenter build the compact ones
  TQ_REQUIRE_GPU();
  // The build's kernels as this GPU runs them: a cubin of its major version or older, or PTX.
  EXPECT_GT(cuda::kernels_arch(), 0);
  EXPECT_LE(cuda::kernels_arch() / 10, cuda::device_cc_major());
  std::printf("attention kernels compiled for compute_%d\n", cuda::kernels_arch());
  for (const char* limit : {"", "99"}) {
    const ScopedEnv env("TQ_CUDA_SMEM_KB", limit);
    for (const TensorCode& k : keys)
      for (uint32_t d : {64u, 128u, 256u}) {
        const TensorCode v = is_tq(k.enc) ? TensorCode{Encoding::kTqMse, 2} : k;
        const std::string why = cuda::attention_unsupported(k, v, d);
        EXPECT_TRUE(why.empty()) << "TQ_CUDA_SMEM_KB='" << limit << "', head dim " << d << ": " << why;
      }
  }
  {
    const ScopedEnv env("TQ_CUDA_SMEM_KB", "40");
    const std::string why = cuda::attention_unsupported({Encoding::kTqMse, 3}, {Encoding::kTqMse, 2}, 128);
    EXPECT_NE(why.find("allows 40 KB"), std::string::npos) << why;
  }
  {
    const ScopedEnv env("TQ_CUDA_SMEM_KB", "99k");
    EXPECT_THROW(
        {
          try {
            cuda::attention_unsupported({Encoding::kTqMse, 3}, {Encoding::kTqMse, 2}, 128);
          } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("'99k'"), std::string::npos) << e.what();
            throw;
          }
        },
        Error);
  }
}

// A workspace is sized from the shapes alone, before any page exists (the torch ops size theirs
// from a view without pages: a data-pointer check there broke every CUDA call they made); the
// call itself refuses a view without pages by name.
TEST(CudaLaunch, WorkspacesAreSizedBeforeThePagesExist) {
  TQ_REQUIRE_GPU();
  const PagedKvCache cpu(CacheShape{1, 2, 128, 4}, parse_kv_spec("k3v2").format);
  cuda::DeviceFormat codecs(cpu.format());
  cuda::DecodeParams p;
  p.cache = codecs.view(0, nullptr, 1);
  p.num_seqs = 2, p.num_q_tokens = 1, p.q_heads = 8, p.max_pages = 64, p.max_seq_len = 1000;
  EXPECT_GT(cuda::decode_workspace_bytes(p), 0u);
  EXPECT_GE(cuda::decode_num_splits(p), 1u);
  p.num_q_tokens = 64;
  EXPECT_GT(cuda::prefill_workspace_bytes(p), 0u);
  {  // the planner divides by the KV heads: every sizing function refuses a view without them by name
    cuda::DecodeParams bad = p;
    bad.cache.kv_heads = 0;
    for (const auto& size : {+[](const cuda::DecodeParams& q) { return size_t(cuda::decode_num_splits(q)); },
                             +[](const cuda::DecodeParams& q) { return cuda::decode_workspace_bytes(q); },
                             +[](const cuda::DecodeParams& q) { return cuda::prefill_workspace_bytes(q); }}) {
      try {
        size(bad);
        ADD_FAILURE() << "a view of 0 KV heads was not refused";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("kv_heads 0"), std::string::npos) << e.what();
      }
    }
  }
  try {
    cuda::decode_attention(p, nullptr);
    ADD_FAILURE() << "a view without pages was not refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("data is null"), std::string::npos) << e.what();
  }
}

// Values that passed validation and then wrapped a 32-bit count, were read misaligned or planned an
// impossible grid: each refused by name on the host (the numbers of a review of the validation).
TEST(CudaLaunch, ValidationRefusesWhatWouldWrapOrMisalign) {
  TQ_REQUIRE_GPU();
  const PagedKvCache cpu(CacheShape{1, 2, 128, 4}, parse_kv_spec("k3v2").format);
  cuda::DeviceFormat codecs(cpu.format());
  test::DeviceBuffer<uint8_t> cache(cpu.bytes() + 16), ws(1 << 20);
  test::DeviceBuffer<float> q(std::vector<float>(2 * 8 * 128)), out(std::vector<float>(2 * 8 * 128));
  test::DeviceBuffer<int32_t> bt(std::vector<int32_t>{0, 1, 2, 3}), lens(std::vector<int32_t>{10});
  cuda::DecodeParams p;
  p.cache = codecs.view(0, cache.ptr, 4);
  p.q = q.ptr, p.q_dtype = cuda::DType::kF32, p.out = out.ptr, p.out_dtype = cuda::DType::kF32, p.block_tables = bt.ptr, p.seq_lens = lens.ptr;
  p.num_seqs = 1, p.num_q_tokens = 1, p.q_heads = 8, p.max_pages = 4, p.max_seq_len = 10, p.workspace = ws.ptr, p.workspace_bytes = 1 << 20;
  const auto refused = [](const char* what, const cuda::DecodeParams& bad, const char* says, auto call) {
    try {
      call(bad);
      ADD_FAILURE() << what << " was not refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << what << ": " << e.what();
    }
  };
  const auto decode = [](const cuda::DecodeParams& x) { cuda::decode_attention(x, nullptr); };
  const auto size = [](const cuda::DecodeParams& x) { cuda::decode_workspace_bytes(x); };
  cuda::DecodeParams b = p;
  b.split_tokens = 1u << 31, b.num_splits = 1;  // int(2^31) was INT_MIN: every split empty, the output zeros
  refused("split_tokens 2^31", b, "at most 2^30", decode);
  b = p;
  b.workspace = static_cast<uint8_t*>(p.workspace) + 4;
  refused("a workspace at 4 bytes", b, "16-byte aligned", decode);
  b = p;
  b.cache.data = cache.ptr + 8;
  refused("pages at 8 bytes", b, "data must be 16-byte aligned", decode);
  b = p;
  b.cache.layout.k_row *= 2;  // only bytes and section offsets were compared
  refused("a doubled K row stride", b, "layout does not match", decode);
  b = p;
  b.cache.fwht_scale *= 1.5f;
  refused("another fwht_scale", b, "fwht_scale must be", decode);
  b = p;
  b.cache.v_scale = NAN;
  refused("a NaN v_scale", b, "v_scale must be positive and finite", decode);
  b = p;
  b.q_heads = 2u << 18;  // 2^18 rows a KV head: 2 x 32768 m-tiles, past a grid's 65535
  refused("a grid of 65536 rows", b, "more than a grid's 65535", size);
  b.q_heads = 2u << 22;  // the plan's int counts of it wrapped (a SIGFPE in auto_splits at 1024 KV heads)
  refused("2^22 rows a KV head", b, "more than a grid holds", size);
  test::DeviceBuffer<uint16_t> side(std::vector<uint16_t>(64 * 2 * 2 * 128));
  test::DeviceBuffer<int32_t> slots(std::vector<int32_t>{0});
  b = p;
  b.side.data = side.ptr, b.side.slots = slots.ptr, b.side.new_k = q.ptr, b.side.new_v = q.ptr, b.side.new_dtype = cuda::DType::kF32;
  b.side.sink = 0xFFFFFFF0u, b.side.window = 16, b.side.ring = 32, b.side.slot_stride = 32768;  // sink + ring was 16 in 32 bits
  refused("sink 2^32 - 16", b, "rows are over 2^31 - 1", decode);
  b.side.sink = 4, b.side.slot_stride = 36 * 2 * 2 * 128 + 1;  // slot 1 at an odd element: a misaligned 16-byte load
  refused("slots an odd element apart", b, "a multiple of 8 elements apart", decode);
}

std::string case_name(const DecodeCase& c) {
  std::string n = test::attention_case_name(c.spec, c.head_dim, c.gqa, c.ntok, c.lens, c.splits, c.prefill) + (c.compact ? "_compact" : "");
  if (c.swa) n.append("_window").append(std::to_string(c.swa));
  if (c.split_tokens) n.append("_cuts").append(std::to_string(c.split_tokens));
  return n;
}

// Everything one decode call needs, on both sides.
struct DecodeSetup {
  uint32_t hkv = 2, qh, d, ntok, ps, max_pages = 0, swa = 0;
  float scale = 0;  // the softmax scale of both sides (0: 1/sqrt(head_dim))
  std::unique_ptr<PagedKvCache> cpu;
  std::vector<int32_t> bt, lens;
  std::vector<float> q;
  std::vector<float> last_k, last_v;  // [seq][hkv * d]: each sequence's last K and V rows
  DecodeSetup(const DecodeCase& c, uint64_t seed) : qh(2 * c.gqa), d(c.head_dim), ntok(c.ntok), swa(c.swa), lens(c.lens) {
    const KvFormat spec = parse_kv_spec(c.spec).format;
    ps = spec.page_size;
    for (int32_t l : lens) max_pages = std::max<uint32_t>(max_pages, (l + ps - 1) / ps);
    const uint32_t pages = max_pages * uint32_t(lens.size()) + 3;
    cpu = std::make_unique<PagedKvCache>(CacheShape{1, hkv, d, pages}, spec);
    // Block tables: a shuffled page pool shared by all sequences.
    std::vector<int32_t> pool(pages);
    std::iota(pool.begin(), pool.end(), 0);
    Rng r(seed);
    for (uint32_t i = pages - 1; i > 0; --i) std::swap(pool[i], pool[r.next() % (i + 1)]);
    // The cache's last page (its last block, the last KV head's) is the last page of the first
    // sequence that has tokens (the empty ones before it take no page), which every case reads: a
    // copy that strays past a block's end then reads past the cache's, which compute-sanitizer's
    // memcheck reports.
    const auto first = std::find_if(lens.begin(), lens.end(), [](int32_t l) { return l > 0; });
    if (first != lens.end()) std::swap(*std::find(pool.begin(), pool.end(), int32_t(pages - 1)), pool[(*first + ps - 1) / ps - 1]);
    bt.assign(lens.size() * max_pages, 0);
    size_t next = 0;
    for (size_t s = 0; s < lens.size(); ++s) {
      const uint32_t np = (lens[s] + ps - 1) / ps;
      for (uint32_t i = 0; i < np; ++i) bt[s * max_pages + i] = pool[next++];
      const auto k = test::outlier_rows(lens[s], size_t(hkv) * d, seed + 10 * s), v = test::gaussian(lens[s], size_t(hkv) * d, seed + 10 * s + 1);
      for (int32_t t = 0; t < lens[s]; ++t)
        cpu->write(0, int64_t(bt[s * max_pages + t / ps]) * ps + t % ps, &k[size_t(t) * hkv * d], &v[size_t(t) * hkv * d]);
      last_k.insert(last_k.end(), k.end() - hkv * d, k.end());
      last_v.insert(last_v.end(), v.end() - hkv * d, v.end());
    }
    q = test::outlier_rows(lens.size() * ntok * qh, d, seed + 99);
    for (float& x : q) x *= 0.05f;  // keys have norms ~100: keep logits in a realistic range
  }
  // DecodeParams over device copies of the queries, block tables and lengths (fp32 in and out).
  cuda::DecodeParams params(const cuda::CacheView& cache, const float* dq, float* out, const int32_t* dbt, const int32_t* dlen) const {
    cuda::DecodeParams p;
    p.cache = cache;
    p.q = dq;
    p.q_dtype = cuda::DType::kF32;
    p.out = out;
    p.out_dtype = cuda::DType::kF32;
    p.block_tables = dbt;
    p.seq_lens = dlen;
    p.num_seqs = uint32_t(lens.size());
    p.num_q_tokens = ntok;
    p.q_heads = qh;
    p.max_pages = max_pages;
    p.max_seq_len = uint32_t(*std::max_element(lens.begin(), lens.end()));
    p.sliding_window = swa;
    p.scale = scale;
    return p;
  }
  // attention_reference over the CPU cache: [seq][ntok][qh][d]
  std::vector<float> reference() const {
    std::vector<float> ref(q.size());
    AttentionBatch a = batch();
    a.out = ref.data();
    attention_reference(*cpu, 0, a);
    return ref;
  }
  // The bound on a kernel's worst row error against reference() (cuda_test_util.h). A same-precision
  // computation off by more than 1e-2 would be a broken reference, not a loose bound: it fails.
  double bound(const std::vector<float>& ref) const {
    double logit = 0;
    const auto same = test::same_precision_attention(*cpu, 0, batch(), nullptr, &logit);
    const double err = test::worst_row_error(same, ref, d);
    EXPECT_LT(err, 1e-2) << "the same-precision reference itself";
    return test::attention_bound(err, logit);
  }
  AttentionBatch batch() const {
    AttentionBatch a;
    a.q = q.data();
    a.block_tables = bt.data();
    a.seq_lens = lens.data();
    a.num_seqs = uint32_t(lens.size());
    a.num_q_tokens = ntok;
    a.q_heads = qh;
    a.max_pages = max_pages;
    a.sliding_window = swa;
    a.scale = scale;
    return a;
  }
};

// Decode (or, with c.prefill, prefill) of s on the GPU: the cache, queries, block tables and
// lengths copied there, c's splits (or fixed cuts) set, a workspace of the size the parameters
// need (sized under the same settings as the launch), the output poisoned first. Returns it.
// A CUDA error fails the test and gives NaN rows.
// ws_out: where the workspace is downloaded to after the call (the decode kernel's per-split partials).
// block_rows: where set, the query rows a decode block of the call holds (decode_block_rows).
std::vector<float> run_on_gpu(const DecodeSetup& s, const DecodeCase& c, std::vector<uint8_t>* ws_out = nullptr, uint32_t* block_rows = nullptr) {
  const auto failed = [&](cudaError_t e) {
    if (e != cudaSuccess) ADD_FAILURE() << case_name(c) << ": " << cudaGetErrorString(e);
    return e != cudaSuccess;
  };
  cuda::DeviceFormat codecs(s.cpu->format());
  test::DeviceBuffer<uint8_t> cache(s.cpu->bytes());
  if (failed(cudaMemcpy(cache.ptr, s.cpu->data(), s.cpu->bytes(), cudaMemcpyHostToDevice))) return std::vector<float>(s.q.size(), NAN);
  test::DeviceBuffer<float> dq(s.q), out(s.q.size());
  test::DeviceBuffer<int32_t> dbt(s.bt), dlen(s.lens);
  cuda::DecodeParams p = s.params(codecs.view(0, cache.ptr, s.cpu->shape().num_pages), dq.ptr, out.ptr, dbt.ptr, dlen.ptr);
  p.num_splits = c.splits;
  if (c.split_tokens) p.split_tokens = c.split_tokens, p.num_splits = (p.max_seq_len + c.split_tokens - 1) / c.split_tokens;
  test::DeviceBuffer<uint8_t> ws(c.prefill ? cuda::prefill_workspace_bytes(p) : cuda::decode_workspace_bytes(p));
  p.workspace = ws.ptr;
  if (block_rows) *block_rows = c.prefill ? 0u : cuda::decode_block_rows(p);
  ws.poison();  // NaN: a partial or a row read before it is written shows as a non-finite output
  out.poison();
  if (c.prefill)
    cuda::prefill_attention(p, nullptr);
  else
    cuda::decode_attention(p, nullptr);
  if (failed(cudaDeviceSynchronize())) return std::vector<float>(s.q.size(), NAN);
  if (ws_out) *ws_out = ws.download();
  return out.download();
}

class Decode : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(Decode, MatchesReferenceWithinTwiceTheSamePrecisionError) {
  TQ_REQUIRE_GPU();
  const DecodeCase& c = GetParam();
  std::optional<ScopedEnv> smem;
  if (c.compact) smem.emplace("TQ_CUDA_SMEM_KB", "99");
  DecodeSetup s(c, 7);
  const std::vector<float> ref = s.reference();
  // Hopper's prefill kernel (prefill_ws.cuh) takes more than 99 KB a block at D = 128 (211 KB; at
  // 64 it fits, at 256 the compact kernel runs), and only builds with -DTQ_CUDA_PORTABLE_ON_HOPPER=ON
  // (the GPU script's) carry the 98 KB one there: others refuse the case by name (when the
  // workspace is sized) rather than trap.
  if (c.prefill && c.compact && cuda::kernels_arch() == 90 && !cuda::kPortableOnHopper && s.d > 64 && s.d < 256) {
    try {
      (void)run_on_gpu(s, c);
      ADD_FAILURE() << "a 99 KB limit at head dim " << s.d << " was not refused";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("TQ_CUDA_PORTABLE_ON_HOPPER"), std::string::npos) << e.what();
    }
    return;
  }
  const auto got = run_on_gpu(s, c);
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_TRUE(std::isfinite(got[i])) << "row " << i / s.d << " element " << i % s.d << " not written or not finite";
  const double worst = test::worst_row_error(got, ref, s.d), bound = s.bound(ref);
  EXPECT_LE(worst, bound) << "worst relative L2 error of an output row; the bound is twice a same-precision computation's";
  RecordProperty("worst_rel_err", std::to_string(worst));
  RecordProperty("bound", std::to_string(bound));
}

std::vector<DecodeCase> cases() {
  std::vector<DecodeCase> v;
  const std::vector<int32_t> mixed{1, 17, 97, 4097, 300};
  // Every key path (int8 for 2 and 3 bits, fp16 table for 4) and value path (4-entry pair table
  // for 2 bits, interleaved selectors for 3, shared-memory table for 4) at every head dim.
  for (const char* spec : {"k3v2", "k4v4", "k2v2", "k3v4", "k2v3", "k3v3", "fp16", "bf16", "fp8"})
    for (uint32_t d : {64u, 128u, 256u}) v.push_back({spec, d, 4, 1, mixed});
  v.push_back({"k2v4", 128, 4, 1, mixed});
  v.push_back({"k3v3:page=7", 128, 4, 1, {2, 17, 97}});  // tokens find their own pages: the unstaged loads
  v.push_back({"k2v2:page=7", 64, 4, 1, {2, 17, 97}});
  // Float caches off the staged path: their interleaved units loaded from global memory.
  v.push_back({"bf16:page=7", 128, 4, 1, {2, 17, 97}});
  v.push_back({"fp16:page=7", 64, 4, 1, {2, 17, 97}});
  v.push_back({"fp8:page=7", 256, 4, 1, {2, 17, 97}});
  for (uint32_t gqa : {1u, 8u}) v.push_back({"k3v2", 128, gqa, 1, mixed});
  for (uint32_t ntok : {2u, 4u, 8u, 9u}) v.push_back({"k3v2", 128, 4, ntok, {9, 97, 1000}});
  v.push_back({"fp16", 128, 4, 4, {9, 97, 1000}});
  v.push_back({"k3v2", 128, 4, 1, {4097}, 1});   // one split: the long loop inside one block
  v.push_back({"k3v2", 128, 4, 1, {4097}, 37});  // many uneven splits
  v.push_back({"k3v2:page=1", 128, 4, 1, {1, 17, 97}});
  v.push_back({"k3v2:page=7", 128, 4, 2, {2, 17, 97}});
  v.push_back({"k3v2:page=64", 128, 4, 1, {1, 17, 97, 4097}});
  v.push_back({"k3v2:rot=dense", 128, 4, 1, {17, 97}});
  v.push_back({"k3v2", 112, 4, 1, {17, 97}});  // pads to 128
  v.push_back({"k4v2:nc", 64, 2, 1, {33, 1}});
  // Head dim 64's staged loop (two-tile steps, kStepTiles): a warp's odd last tile (the lengths,
  // uneven splits), one split (the long loop), pages of several tiles (the cursor's rows: a
  // 48-token page wraps within a step), 32 rows with 4 splits of 4K (16-row blocks for 4-bit
  // keys; 8-row ones for int8 keys at D 64, make_plan).
  v.push_back({"k3v2:page=48", 64, 4, 1, {1, 17, 97, 4097, 300}});
  v.push_back({"k2v3:page=64", 64, 4, 1, {1, 17, 97, 4097}});
  v.push_back({"k3v2", 64, 4, 1, {4097}, 1});
  v.push_back({"k3v2", 64, 4, 1, {4097, 300}, 37});
  v.push_back({"k2v2", 64, 4, 8, {8, 4097}, 4});
  v.push_back({"k4v4", 64, 4, 8, {8, 4097}, 4});
  // More than 8 rows of a packed cache (DecodeRows below forces blocks of two m-tiles on such
  // shapes): a partly empty second m-tile, an empty last one, unstaged loads, dense rotations
  // (their queries come from prepare_queries), padding; with 4 splits of 4K (> 8 tiles a warp) the
  // kernels' own choice is 16-row blocks.
  v.push_back({"k3v2", 128, 4, 8, {8, 4097}, 4});
  v.push_back({"k4v4", 64, 4, 3, {9, 97, 1000}});
  v.push_back({"k2v3", 128, 8, 3, {3, 17, 97, 4097, 300}});
  v.push_back({"k3v3:page=7", 128, 4, 4, {4, 17, 97}});
  v.push_back({"k3v2:rot=dense", 128, 4, 5, {17, 97}});
  v.push_back({"k3v4", 112, 2, 8, {17, 97}});
  v.push_back({"k4v2:nc", 64, 2, 9, {33, 65}});
  // Chunked prefill: a chunk of new tokens attends to the prefix and causally to itself.
  v.push_back({"k3v2", 128, 4, 64, {64, 161, 1000}, 0, true});
  v.push_back({"k3v2", 64, 2, 17, {17, 97}, 0, true});
  v.push_back({"k4v4:page=7", 256, 1, 33, {40}, 0, true});
  v.push_back({"bf16", 128, 4, 64, {64, 300}, 0, true});
  // prefill_kernel: 64-row blocks (partial last block), tiles spanning pages, every cache kind,
  // forced splits (blocks whose whole split is past their rows' causal limit), dense rotation.
  v.push_back({"fp16:page=7", 64, 4, 40, {40, 200}, 0, true});
  v.push_back({"fp8", 256, 4, 20, {20, 97}, 0, true});
  v.push_back({"k2v3", 128, 8, 100, {100, 4097}, 0, true});
  v.push_back({"k3v2", 128, 4, 50, {1000, 60}, 5, true});
  v.push_back({"k3v2:rot=dense", 128, 4, 24, {24, 333}, 0, true});
  v.push_back({"k3v4:page=64", 128, 1, 70, {70, 130}, 0, true});
  v.push_back({"k2v2", 256, 4, 9, {9, 500}, 0, true});
  v.push_back({"k4v2:nc", 64, 2, 33, {33, 65}, 0, true});
  // The compact kernels of a GPU with 99 KB a block (TQ_CUDA_SMEM_KB=99; a kernel over the limit
  // throws, so each of these ran its compact variant): the float caches' decode at 128 and 256 (fp8
  // at 256), unstaged; the prefill at 256 in 16-token tiles, every cache kind, forced splits.
  for (const char* spec : {"fp16", "bf16"})
    for (uint32_t d : {128u, 256u}) v.push_back({spec, d, 4, 1, mixed, 0, false, true});
  v.push_back({"fp8", 256, 4, 1, mixed, 0, false, true});
  v.push_back({"bf16", 128, 4, 4, {9, 97, 1000}, 0, false, true});
  v.push_back({"k3v2", 256, 4, 64, {64, 161, 1000}, 0, true, true});
  v.push_back({"k4v4:page=7", 256, 1, 33, {40}, 0, true, true});
  v.push_back({"k2v3", 256, 2, 100, {100, 4097}, 5, true, true});
  v.push_back({"bf16", 256, 4, 64, {64, 300}, 0, true, true});
  v.push_back({"fp16:page=7", 256, 4, 40, {40, 200}, 0, true, true});
  v.push_back({"fp8", 256, 4, 20, {20, 97}, 0, true, true});
  v.push_back({"k3v2", 128, 4, 64, {64, 161, 1000}, 0, true, true});  // prefill_kernel's full tiles fit (Hopper: see the test)
  // Sliding-window layers (Gemma 3's local ones): windows shorter and longer than the sequences,
  // of one position, not a multiple of 16; several query tokens (16-row blocks), forced and fixed
  // splits, unstaged pages, every cache kind; prefill in both kernels, the compact one too.
  v.push_back({"k3v2", 128, 4, 1, mixed, 0, false, false, 64});
  v.push_back({"k3v2", 128, 4, 1, mixed, 0, false, false, 1});
  v.push_back({"k4v4", 256, 2, 1, {4097, 600, 100, 512, 513}, 0, false, false, 512});
  v.push_back({"k2v2", 64, 4, 1, mixed, 0, false, false, 100});
  v.push_back({"k3v2", 128, 4, 9, {9, 97, 1000, 4097}, 0, false, false, 37});
  v.push_back({"k3v2", 128, 4, 8, {8, 4097}, 4, false, false, 300});
  v.push_back({"k3v2", 128, 4, 1, {4097}, 37, false, false, 200});
  v.push_back({"k3v2", 128, 4, 3, {4097, 700, 9}, 0, false, false, 250, 512});
  v.push_back({"k3v3:page=7", 128, 4, 2, {2, 17, 97, 300}, 0, false, false, 20});
  for (const char* spec : {"fp16", "bf16", "fp8"}) v.push_back({spec, 128, 4, 1, mixed, 0, false, false, 77});
  // Trellis-coded rows, read as their union indices (carries across octets, groups and threads):
  // both key paths (the 8- and 16-level int8 unions) and both value paths at every head dim,
  // unstaged pages, 16-row blocks, a dense rotation, padding, a window, prefill in both kernels.
  for (const char* spec : {"k3tv2t", "k2tv2t", "k3tv3t:ip", "k2tv3t:nc"})
    for (uint32_t d : {64u, 128u, 256u}) v.push_back({spec, d, 4, 1, mixed});
  v.push_back({"k3tv2t:page=7", 128, 4, 1, {2, 17, 97}});
  v.push_back({"k2tv3t:page=7", 64, 4, 2, {2, 17, 97}});
  v.push_back({"k3tv3t:page=7", 256, 2, 1, {2, 17, 97}});
  v.push_back({"k3tv2t", 128, 4, 8, {8, 4097}, 4});
  v.push_back({"k3tv2t:rot=dense", 128, 4, 1, {17, 97}});
  v.push_back({"k3tv2t", 112, 4, 1, {17, 97}});
  v.push_back({"k3tv2t", 128, 4, 1, mixed, 0, false, false, 64});
  v.push_back({"k3tv2t", 128, 4, 64, {64, 161, 1000}, 0, true});
  v.push_back({"k2tv3t", 64, 2, 17, {17, 97}, 0, true});
  v.push_back({"k3tv3t:page=7", 256, 1, 33, {40}, 0, true});
  v.push_back({"k2tv2t", 128, 8, 100, {100, 4097}, 5, true});
  v.push_back({"k3tv2t", 256, 4, 64, {64, 161, 1000}, 0, true, true});
  v.push_back({"bf16", 256, 4, 1, mixed, 0, false, true, 77});
  v.push_back({"k3v2", 128, 4, 64, {64, 161, 1000}, 0, true, false, 40});
  v.push_back({"k3v2", 256, 2, 100, {100, 1000, 4097}, 0, true, false, 512});
  v.push_back({"k2v3", 128, 8, 100, {100, 4097}, 5, true, false, 129});
  v.push_back({"fp16:page=7", 64, 4, 40, {40, 200}, 0, true, false, 16});
  v.push_back({"bf16", 128, 4, 64, {64, 300}, 0, true, false, 1});
  v.push_back({"fp8", 256, 4, 20, {20, 97}, 0, true, true, 50});
  v.push_back({"k3v2", 128, 4, 64, {64, 161, 1000}, 0, true, true, 40});
  return v;
}
INSTANTIATE_TEST_SUITE_P(All, Decode, ::testing::ValuesIn(cases()), [](const auto& i) { return case_name(i.param); });


// run_on_gpu with TQ_DECODE_ROWS set to `rows` ("8" or "16"; nullptr: the plan's own choice).
std::vector<float> run_with_rows(const DecodeSetup& s, const DecodeCase& c, const char* rows, std::vector<uint8_t>* ws = nullptr,
                                 uint32_t* block_rows = nullptr) {
  std::optional<ScopedEnv> forced;
  if (rows) forced.emplace("TQ_DECODE_ROWS", rows);
  return run_on_gpu(s, c, ws, block_rows);
}

// Where two decodes of one case differ: each output row (seq, query token, head) whose bits
// differ, its largest difference, both rows' errors against the reference, and, with forced
// splits, which splits' partials (the decode kernel's output in the workspace: [slot][D] floats,
// then [slot] (max, sum), slot = row * splits + split) differ, which tells the decode kernel from
// the merge. At most `limit` rows. ref: s.reference().
std::string describe_differences(const DecodeSetup& s, const DecodeCase& c, const std::vector<float>& ref, const std::vector<float>& a,
                                 const std::vector<float>& b, const std::vector<uint8_t>& ws_a, const std::vector<uint8_t>& ws_b,
                                 size_t limit = 8) {
  const size_t rows = a.size() / s.d, splits = c.splits;
  const size_t partials = rows * splits * s.d * sizeof(float);
  std::string out;
  size_t shown = 0;
  for (size_t r = 0; r < rows && shown < limit; ++r) {
    if (std::memcmp(&a[r * s.d], &b[r * s.d], s.d * sizeof(float)) == 0) continue;
    ++shown;
    double worst = 0;
    for (size_t e = 0; e < s.d; ++e) worst = std::max(worst, std::fabs(double(a[r * s.d + e]) - b[r * s.d + e]));
    const auto err = [&](const std::vector<float>& x) {
      const std::vector<float> row(x.begin() + r * s.d, x.begin() + (r + 1) * s.d), rr(ref.begin() + r * s.d, ref.begin() + (r + 1) * s.d);
      return test::worst_row_error(row, rr, s.d);
    };
    out += "\n  seq " + std::to_string(r / (s.ntok * s.qh)) + " token " + std::to_string(r / s.qh % s.ntok) + " head " +
           std::to_string(r % s.qh) + ": max |diff| " + std::to_string(worst) + ", errors " + std::to_string(err(a)) + " / " +
           std::to_string(err(b));
    const size_t ml_end = partials + rows * splits * 2 * sizeof(float);  // where the (max, sum) pairs end
    if (splits == 0 || ws_a.size() < ml_end || ws_b.size() < ml_end) continue;
    for (size_t sp = 0; sp < splits; ++sp) {
      const size_t slot = r * splits + sp;
      const bool o = std::memcmp(&ws_a[slot * s.d * sizeof(float)], &ws_b[slot * s.d * sizeof(float)], s.d * sizeof(float)) != 0;
      float ml_a[2], ml_b[2];
      std::memcpy(ml_a, &ws_a[partials + slot * sizeof(ml_a)], sizeof(ml_a));
      std::memcpy(ml_b, &ws_b[partials + slot * sizeof(ml_b)], sizeof(ml_b));
      if (o || std::memcmp(ml_a, ml_b, sizeof(ml_a)) != 0)
        out += "; split " + std::to_string(sp) + (o ? " partial differs" : " partial same") + ", (max, sum) " + std::to_string(ml_a[0]) + ", " +
               std::to_string(ml_a[1]) + " / " + std::to_string(ml_b[0]) + ", " + std::to_string(ml_b[1]);
    }
  }
  return out;
}

// A block of two 8-row m-tiles decodes each packed tile once for both; every row's MMAs, softmax
// and merge are the 8-row block's, so the output is the same bits (at the same splits). This is
// what lets a speculative step's verification (16-row blocks) agree with one-token steps.
// The same for blocks of at most 4 rows that compute with the keys as M (decode_kernel.cuh's KM):
// the same exponents, shuffled to the 8-row block's layout, and from there its sums and MMAs
// (rows: nullptr, the plan's own choice, which must be 4-row blocks: `want`).
void expect_rows_agree(const DecodeCase& c, const char* rows = "16", uint32_t want = 0) {
  DecodeSetup s(c, 11);
  std::vector<uint8_t> ws_a, ws8;
  uint32_t rows_a = 0, rows8 = 0;
  const std::vector<float> a = run_with_rows(s, c, rows, &ws_a, &rows_a), single = run_with_rows(s, c, "8", &ws8, &rows8);
  ASSERT_EQ(a.size(), single.size());
  if (want) {
    EXPECT_EQ(rows_a, want) << case_name(c) << ": the blocks compared are not the ones meant";
    EXPECT_EQ(rows8, 8u) << case_name(c);
  }
  const std::vector<float> ref = s.reference();  // (a double-precision pass over the cache: once)
  size_t differ = 0;
  for (size_t i = 0; i < a.size(); ++i) differ += std::memcmp(&a[i], &single[i], sizeof(float)) != 0;
  EXPECT_EQ(differ, 0u) << case_name(c) << ": elements whose bits differ between " << rows_a << "- and 8-row blocks (errors: " << rows_a
                        << "- / 8-row)" << (differ ? describe_differences(s, c, ref, a, single, ws_a, ws8) : std::string());
  EXPECT_LE(test::worst_row_error(a, ref, s.d), s.bound(ref)) << case_name(c);
}

TEST(DecodeRows, SixteenRowBlocksGiveEachRowTheEightRowBlocksBits) {
  TQ_REQUIRE_GPU();
  const std::vector<DecodeCase> cs{{"k3v2", 128, 4, 8, {9, 97, 4097}, 3},     {"k4v4", 64, 4, 3, {9, 97, 1000}, 2},
                                   {"k2v3:page=7", 128, 8, 3, {3, 17, 97}, 2}, {"k3v2:rot=dense", 128, 4, 5, {17, 97}, 1},
                                   {"k3v4", 112, 2, 9, {17, 300}, 4},          {"k2v2", 128, 4, 2, {64, 65}, 2},
                                   {"k3v2", 64, 4, 3, {1000}, 3},              {"k3v2:page=48", 128, 4, 3, {9, 97, 1000}, 2}};
  for (const DecodeCase& c : cs) expect_rows_agree(c);
}

// The same at head dim 64 with int8 keys (2 and 3 bits), where a warp gets 8 tiles or more of a
// split (512 tokens and more a split; the plan pairs m-tiles there, kPairMinTiles), which failed
// on the H100 on 2026-12-06 with the D 64 kernel of an unmerged branch (d64-four's four-tile
// steps, also rebuilt for two-tile steps): main's kernel gives both blocks the same bits in every
// case below (H100, 2026-12-07, bench/results/2026-12-07-h100-prebuilt-suites.md). Also 16 rows of
// one query token (no causal mask between rows), one split, and splits of 352, 464 and 560 tokens
// (a warp's 5-6, 7-8 and 8-9 tiles).
TEST(DecodeRows, HeadDim64Int8KeysGiveTheEightRowBlocksBits) {
  TQ_REQUIRE_GPU();
  const std::vector<DecodeCase> cs{{"k3v2", 64, 4, 3, {9, 97, 1000}, 2}, {"k3v2:page=48", 64, 4, 3, {1000}, 2},
                                   {"k2v2", 64, 4, 3, {1000}, 2},        {"k3v3", 64, 4, 3, {1000}, 2},
                                   {"k3v2", 64, 8, 2, {1000}, 2},        {"k3v2", 64, 16, 1, {1000}, 2},
                                   {"k3v2", 64, 4, 3, {1000}, 1},        {"k3v2", 64, 4, 3, {700}, 2},
                                   {"k3v2", 64, 4, 3, {900}, 2},         {"k3v2", 64, 4, 3, {1100}, 2}};
  for (const DecodeCase& c : cs) expect_rows_agree(c);
}

// Blocks of at most 4 rows (the GQA group times the query tokens) with plain keys of 2 or 3 bits
// up to D = 128 compute S^T = K Q^T (the plan's choice there; decode_block_rows says 4): every
// value path (2, 3, 4 bits), both head dims (D = 64: the half-group key tiles), padded rows (a
// group of 2, head dim 112), query tokens causal among themselves (2 x 2 rows, 1 x 3), a
// warp's tiles in two-tile steps and the last one alone, masked tiles, pages that hold no whole
// tile (the unstaged loads), dense rotations (prepared queries), sliding windows and fixed cuts.
TEST(DecodeRows, FourRowBlocksWithTheKeysAsMGiveTheEightRowBlocksBits) {
  TQ_REQUIRE_GPU();
  std::vector<DecodeCase> cs{{"k3v2", 128, 4, 1, {1, 17, 97, 4097, 300}},
                             {"k3v2", 64, 4, 1, {9, 97, 1000, 2048}, 2},
                             {"k2v2", 64, 4, 1, {700, 900, 1100}, 3},
                             {"k2v2", 128, 2, 2, {3, 17, 97, 1000}, 2},
                             {"k3v3", 64, 1, 3, {9, 97, 1000}, 2},
                             {"k3v4", 112, 2, 1, {17, 300}, 3},
                             {"k2v3:page=7", 128, 4, 1, {3, 17, 97}, 2},
                             {"k3v2:page=7", 64, 4, 1, {2, 17, 97}, 2},
                             {"k3v2:page=48", 64, 4, 1, {9, 97, 1000}, 2},
                             {"k3v2:rot=dense", 128, 4, 1, {17, 97}, 1},
                             {"k3v2", 128, 4, 1, {4097}, 37}};
  DecodeCase window{"k3v2", 128, 4, 1, {40, 300, 1000}};
  window.swa = 64;
  DecodeCase cuts{"k3v2", 64, 4, 1, {300, 1000}};
  cuts.split_tokens = 256;
  cs.push_back(window);
  cs.push_back(cuts);
  for (const DecodeCase& c : cs) expect_rows_agree(c, nullptr, 4);
}

// The plan's own choice there (16-row blocks where a warp gets 8 tiles or more: 2048 tokens in 2
// splits; 8-row blocks below that) gives the forced 8-row blocks' bits.
TEST(DecodeRows, HeadDim64Int8KeysPlanGivesTheEightRowBlocksBits) {
  TQ_REQUIRE_GPU();
  for (const DecodeCase& c : {DecodeCase{"k3v2", 64, 4, 3, {9, 97, 1000}, 2}, DecodeCase{"k2v2", 64, 8, 2, {2048}, 2}}) {
    DecodeSetup s(c, 11);
    const std::vector<float> chosen = run_with_rows(s, c, nullptr), eight = run_with_rows(s, c, "8");
    ASSERT_EQ(chosen.size(), eight.size());
    EXPECT_EQ(std::memcmp(chosen.data(), eight.data(), chosen.size() * sizeof(float)), 0) << case_name(c);
  }
}

// A softmax scale other than 1/sqrt(head_dim) (Gemma 3 27B's 1/sqrt(dim / heads), ModelConfig::
// attn_scale), in decode and both prefill kernels, with a sliding window and without.
TEST(DecodeScale, AGivenScaleIsTheReferencesScale) {
  TQ_REQUIRE_GPU();
  for (const DecodeCase& c : {DecodeCase{"k3v2", 128, 4, 1, {97, 1000}}, DecodeCase{"bf16", 256, 4, 3, {9, 300}, 0, false, false, 64},
                              DecodeCase{"k3v2", 128, 4, 40, {40, 500}, 0, true}, DecodeCase{"fp8", 64, 2, 33, {33, 200}, 0, true, false, 50}}) {
    DecodeSetup s(c, 13);
    s.scale = 0.6f / std::sqrt(float(s.d));
    const std::vector<float> ref = s.reference();
    EXPECT_LE(test::worst_row_error(run_on_gpu(s, c), ref, s.d), s.bound(ref)) << case_name(c);
  }
}

// Prefill's blocks write a row themselves where it has one split (prefill::writes_output: no side
// block, a Hadamard rotation, whole rows, an aligned output), and then leave the workspace's
// partials untouched; else they write partials and the merge writes the rows. Both write the same
// rows: fp32, fp16 and bf16 outputs of the direct path are the fp32 rows rounded (the same floats,
// stored in each dtype); the merge's of one split (an fp32 output one element off its 8-byte
// alignment) agree with them to float rounding, and with 2 splits both meet the reference's bound.
TEST(PrefillOutput, TheBlocksAndTheMergeWriteTheSameRows) {
  TQ_REQUIRE_GPU();
  for (const char* spec : {"k3v2", "bf16"}) {
    const DecodeCase c{spec, 128, 4, 512, {600}, 0, true};
    DecodeSetup s(c, 21);
    cuda::DeviceFormat codecs(s.cpu->format());
    test::DeviceBuffer<uint8_t> cache(s.cpu->bytes());
    ASSERT_EQ(cudaMemcpy(cache.ptr, s.cpu->data(), s.cpu->bytes(), cudaMemcpyHostToDevice), cudaSuccess);
    test::DeviceBuffer<float> dq(s.q);
    test::DeviceBuffer<int32_t> dbt(s.bt), dlen(s.lens);
    const size_t n = s.q.size();  // output elements: rows x head_dim, as many as one split's partials
    // One prefill into `out` of dtype dt with `splits`; returns whether the partials' part of the
    // workspace (poisoned first) was left as it was.
    const auto run = [&](void* out, cuda::DType dt, uint32_t splits) {
      cuda::DecodeParams p = s.params(codecs.view(0, cache.ptr, s.cpu->shape().num_pages), dq.ptr, nullptr, dbt.ptr, dlen.ptr);
      p.out = out;
      p.out_dtype = dt;
      p.num_splits = splits;
      test::DeviceBuffer<uint8_t> ws(cuda::prefill_workspace_bytes(p));
      ws.poison();
      p.workspace = ws.ptr;
      cuda::prefill_attention(p, nullptr);
      EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess) << spec;
      const std::vector<uint8_t> w = ws.download();
      return std::all_of(w.begin(), w.begin() + std::min(w.size(), n * sizeof(float)), [](uint8_t x) { return x == 0xFF; });
    };
    test::DeviceBuffer<float> f32(n + 1);
    test::DeviceBuffer<uint16_t> f16(n), b16(n);
    f32.poison(), f16.poison(), b16.poison();
    EXPECT_TRUE(run(f32.ptr, cuda::DType::kF32, 1)) << spec << ": one split, yet partials were written";
    EXPECT_TRUE(run(f16.ptr, cuda::DType::kF16, 1)) << spec;
    EXPECT_TRUE(run(b16.ptr, cuda::DType::kBf16, 1)) << spec;
    std::vector<float> direct = f32.download();
    direct.resize(n);
    const std::vector<uint16_t> h = f16.download(), b = b16.download();
    for (size_t i = 0; i < n; ++i) {
      ASSERT_TRUE(std::isfinite(direct[i])) << spec << ": element " << i << " not written";
      ASSERT_EQ(h[i], f32_to_f16(direct[i])) << spec << ": fp16 element " << i;
      ASSERT_EQ(b[i], f32_to_bf16(direct[i])) << spec << ": bf16 element " << i;
    }
    const std::vector<float> ref = s.reference();
    EXPECT_LE(test::worst_row_error(direct, ref, s.d), s.bound(ref)) << spec;
    for (const bool misaligned : {false, true}) {
      f32.poison();
      EXPECT_FALSE(run(f32.ptr + (misaligned ? 1 : 0), cuda::DType::kF32, misaligned ? 1 : 2)) << spec << ": the merge's partials";
      std::vector<float> merged = f32.download();
      if (misaligned) merged.erase(merged.begin());
      merged.resize(n);
      // One split through the merge: the same partial, normalized and un-rotated in another order
      // (float rounding: ~1e-7 a sum of D = 128 terms); two splits round their own P to fp16
      // against their own maxima, so they answer to the reference's bound as any launch.
      if (misaligned)
        EXPECT_LE(test::worst_row_error(merged, direct, s.d), 1e-5) << spec << ": misaligned output";
      else
        EXPECT_LE(test::worst_row_error(merged, ref, s.d), s.bound(ref)) << spec << ": 2 splits";
    }
  }
}

// Fixed cuts (split_tokens: batch invariance, which greedy speculative decoding relies on) give a
// position the same bits whether it is a step's only query or the last of 9, also in a
// sliding-window layer, where the first tile read depends on the step's first query (the window of
// the first query at 1108 - 8 starts a tile before the last one's).
TEST(DecodeInvariance, AWindowedPositionGivesTheSameBitsInAnyStep) {
  TQ_REQUIRE_GPU();
  const std::pair<const char*, uint32_t> kinds[] = {{"k3v2", 128}, {"k4v4", 128}, {"fp8", 128}, {"bf16", 128}, {"k3v2", 64}};  // D = 64: steps of two tiles
  for (const auto& [spec, d] : kinds)
    for (uint32_t cut : {128u, 48u}) {
      const DecodeCase nine{spec, d, 4, 9, {1108, 530}, 0, false, false, 100, cut}, one{spec, d, 4, 1, {1108, 530}, 0, false, false, 100, cut};
      DecodeSetup s9(nine, 21), s1(one, 21);  // the same seed: the same cache rows
      const size_t row = size_t(s9.qh) * s9.d;  // one query token's rows, [qh][d]
      for (size_t q = 0; q < 2; ++q)  // sequence q's last query token of the 9 is its only one
        std::copy_n(&s9.q[(q * 9 + 8) * row], row, &s1.q[q * row]);
      const std::vector<float> got9 = run_on_gpu(s9, nine), got1 = run_on_gpu(s1, one);
      size_t differ = 0;
      for (size_t q = 0; q < 2; ++q)
        differ += std::memcmp(&got9[(q * 9 + 8) * row], &got1[q * row], row * sizeof(float)) != 0;
      EXPECT_EQ(differ, 0u) << spec << " d " << d << " cut " << cut << ": sequences whose last position's output bits differ between the steps";
      EXPECT_LE(test::worst_row_error(got1, s1.reference(), s1.d), s1.bound(s1.reference())) << spec;
    }
}

TEST(DecodeGraph, CapturedLaunchReplaysTheSameResult) {
  TQ_REQUIRE_GPU();
  DecodeCase c{"k3v2", 128, 4, 1, {300, 1000}};
  DecodeSetup s(c, 3);
  cuda::DeviceFormat codecs(s.cpu->format());
  test::DeviceBuffer<uint8_t> cache(s.cpu->bytes());
  CUDA_OK(cudaMemcpy(cache.ptr, s.cpu->data(), s.cpu->bytes(), cudaMemcpyHostToDevice));
  test::DeviceBuffer<float> dq(s.q), out1(s.q.size()), out2(s.q.size());
  test::DeviceBuffer<int32_t> dbt(s.bt), dlen(s.lens);
  cuda::DecodeParams p;
  p.cache = codecs.view(0, cache.ptr, s.cpu->shape().num_pages);
  p.q = dq.ptr;
  p.q_dtype = cuda::DType::kF32;
  p.out_dtype = cuda::DType::kF32;
  p.block_tables = dbt.ptr;
  p.seq_lens = dlen.ptr;
  p.num_seqs = 2;
  p.q_heads = s.qh;
  p.max_pages = s.max_pages;
  p.max_seq_len = 1000;
  test::DeviceBuffer<uint8_t> ws(cuda::decode_workspace_bytes(p));
  p.workspace = ws.ptr;
  p.out = out1.ptr;
  cuda::decode_attention(p, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  cudaStream_t st;
  CUDA_OK(cudaStreamCreate(&st));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  p.out = out2.ptr;
  out2.poison();
  CUDA_OK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
  cuda::decode_attention(p, st);
  CUDA_OK(cudaStreamEndCapture(st, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaGraphLaunch(exec, st));
  CUDA_OK(cudaGraphLaunch(exec, st));
  CUDA_OK(cudaStreamSynchronize(st));
  EXPECT_EQ(out1.download(), out2.download());
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(st);
}

// quantize_store_and_decode: the device cache lacks each sequence's last token (its rows poisoned:
// all-ones codes, NaN norms); the call stores them and attends to them. The decode kernel reads its
// queries before the store ends, the pages only after: the output matches the reference and the
// cache matches the CPU's byte for byte.
TEST(StoreAndDecode, NewRowsAreStoredBeforeThePagesAreRead) {
  TQ_REQUIRE_GPU();
  // (Pages of 16 rows and of 32: the staged loop is compiled apart for pages of one tile.)
  for (const char* spec : {"k3v2", "k3v2:page=32", "k4v4:rot=dense", "bf16"}) {
    DecodeCase c{spec, 128, 4, 1, {1, 300, 1000, 4097}};
    DecodeSetup s(c, 5);
    const uint32_t nseq = uint32_t(s.lens.size());
    const std::vector<float> ref = s.reference();

    const BlockLayout& L = s.cpu->layout();
    std::vector<uint8_t> bytes(s.cpu->data(), s.cpu->data() + s.cpu->bytes());
    std::vector<int64_t> slots;
    for (uint32_t q = 0; q < nseq; ++q) {
      const int32_t t = s.lens[q] - 1, page = s.bt[q * s.max_pages + t / s.ps], row = t % s.ps;
      slots.push_back(int64_t(page) * s.ps + row);
      for (uint32_t h = 0; h < s.hkv; ++h) {
        uint8_t* block = bytes.data() + (size_t(page) * s.hkv + h) * L.bytes;
        std::fill_n(block + L.k_codes + size_t(row) * L.k_row, L.k_row, 0xFF);
        std::fill_n(block + L.v_codes + size_t(row) * L.v_row, L.v_row, 0xFF);
        if (is_tq(parse_kv_spec(spec).format.k.enc)) {  // TurboQuant: fp16 norms, 0xFFFF = NaN
          std::fill_n(block + L.k_norms + 2 * size_t(row), 2, 0xFF);
          std::fill_n(block + L.v_norms + 2 * size_t(row), 2, 0xFF);
        }
      }
    }
    cuda::DeviceFormat codecs(s.cpu->format());
    test::DeviceBuffer<uint8_t> cache(bytes);
    test::DeviceBuffer<float> dq(s.q), out(s.q.size()), dk(s.last_k), dv(s.last_v);
    test::DeviceBuffer<int32_t> dbt(s.bt), dlen(s.lens);
    test::DeviceBuffer<int64_t> dslots(slots);
    cuda::QuantizeStoreParams st;
    st.cache = codecs.view(0, cache.ptr, s.cpu->shape().num_pages);
    st.k = dk.ptr;
    st.v = dv.ptr;
    st.dtype = cuda::DType::kF32;
    st.slot_mapping = dslots.ptr;
    st.num_tokens = nseq;
    cuda::DecodeParams p = s.params(st.cache, dq.ptr, out.ptr, dbt.ptr, dlen.ptr);
    test::DeviceBuffer<uint8_t> ws(cuda::decode_workspace_bytes(p));
    p.workspace = ws.ptr;
    out.poison();
    cuda::quantize_store_and_decode(st, p, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_TRUE(cache.download() == std::vector<uint8_t>(s.cpu->data(), s.cpu->data() + s.cpu->bytes())) << spec << ": cache bytes differ";
    EXPECT_LE(test::worst_row_error(out.download(), ref, s.d), s.bound(ref)) << spec;  // NaN (a poisoned row read) fails too
  }
}

TEST(DecodeErrors, UnsupportedShapesAreRefusedNamingTheValue) {
  TQ_REQUIRE_GPU();
  PagedKvCache cpu(CacheShape{1, 2, 80, 4}, parse_kv_spec("k3v2").format);
  cuda::DeviceFormat codecs(cpu.format());
  test::DeviceBuffer<uint8_t> cache(cpu.bytes());
  cuda::DecodeParams p;
  p.cache = codecs.view(0, cache.ptr, cpu.shape().num_pages);
  try {
    cuda::validate(p);
    FAIL() << "head dim 80 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("80"), std::string::npos) << e.what();
  }
  // Trellis-coded pages: the kernels read 2t and 3t, K and V both trellis-coded.
  PagedKvCache tcq(CacheShape{1, 2, 128, 4}, parse_kv_spec("k4tv4t").format);
  cuda::DeviceFormat tcqc(tcq.format());
  p.cache = tcqc.view(0, cache.ptr, tcq.shape().num_pages);
  try {
    cuda::validate(p);
    FAIL() << "a 4t cache accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2t and 3t bits, got K 4t, V 4t"), std::string::npos) << e.what();
  }
  // Query tokens: decode takes 1..9, prefill chunks up to kMaxPrefillChunk.
  PagedKvCache ok(CacheShape{1, 2, 128, 4}, parse_kv_spec("k3v2").format);
  cuda::DeviceFormat okc(ok.format());
  p.cache = okc.view(0, cache.ptr, ok.shape().num_pages);
  p.q = p.out = cache.ptr;
  p.block_tables = p.seq_lens = reinterpret_cast<const int32_t*>(cache.ptr);
  p.num_seqs = 1;
  p.q_heads = 2;
  p.max_pages = 4;
  p.max_seq_len = 64;
  p.workspace = cache.ptr;
  p.num_q_tokens = 10;
  try {
    cuda::validate(p);
    FAIL() << "10 query tokens accepted by decode";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("10"), std::string::npos) << e.what();
  }
  // Fixed splits must be whole tiles and cover the sequences.
  p.num_q_tokens = 1;
  p.split_tokens = 24, p.num_splits = 4;
  EXPECT_THROW(cuda::validate(p), Error);
  p.split_tokens = 16, p.num_splits = 3;  // 48 < max_seq_len 64
  EXPECT_THROW(cuda::validate(p), Error);
  p.split_tokens = 16, p.num_splits = 4;
  EXPECT_NO_THROW(cuda::validate(p));
  p.split_tokens = 0, p.num_splits = 0;
  // A window the kernels' signed positions cannot hold.
  p.sliding_window = 1u << 31;
  try {
    cuda::validate(p);
    FAIL() << "a sliding window of 2^31 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("2147483648"), std::string::npos) << e.what();
  }
  p.sliding_window = 0;
  // The kernels read any scale <= 0 (NaN too) as the default: only 0 means it, the rest is refused.
  for (const float bad : {std::nanf(""), -1.0f, INFINITY}) {
    p.scale = bad;
    try {
      cuda::validate(p);
      FAIL() << "scale " << bad << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("scale"), std::string::npos) << e.what();
    }
  }
  p.scale = 0;
  // A workspace given with its size, smaller than the call's plan needs: refused before any launch,
  // naming both sizes (the CUDA runner passes its size on every call).
  const size_t need = cuda::decode_workspace_bytes(p);
  p.workspace_bytes = need - 1;
  try {
    cuda::decode_attention(p, nullptr);
    FAIL() << "a workspace of " << need - 1 << " bytes accepted for a plan of " << need;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(need - 1) + " bytes"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("needs " + std::to_string(need)), std::string::npos) << e.what();
  }
  p.workspace_bytes = 0;
  p.num_q_tokens = cuda::kMaxPrefillChunk + 1;
  EXPECT_THROW(cuda::prefill_attention(p, nullptr), Error);
  // A page of all KV heads must stay under 4 GiB (the kernels' page offsets are 32-bit).
  cuda::DecodeParams huge = p;
  huge.num_q_tokens = 1;
  huge.cache.kv_heads = 1u << 30;
  try {
    cuda::validate(huge);
    FAIL() << "a page of 2^30 KV heads accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("1073741824"), std::string::npos) << e.what();
  }
  PagedKvCache prod(CacheShape{1, 2, 128, 4}, parse_kv_spec("k3v2:prod").format);
  cuda::DeviceFormat pc(prod.format());
  p.cache = pc.view(0, cache.ptr, prod.shape().num_pages);
  EXPECT_THROW(cuda::validate(p), Error);
}

}  // namespace
}  // namespace tq
