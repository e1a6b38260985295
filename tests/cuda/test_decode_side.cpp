// decode_attention and prefill_attention with the KV policy's side buffer (SideView: sink and
// window) against the CPU engine's attention (cpu::KvStore::attend) on the same pages: the worst
// row error at most twice that of a computation in the kernels' precision on the same data (the
// bound of the other kernel tests, cuda_test_util.h), and the step's rows written into the side
// slots exactly as the CPU rounds them to fp16. Slots the step must not read hold NaN.
#include <gtest/gtest.h>

#include <cstdio>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "cuda_test_util.h"
#include "test_util.h"
#include "tq/backend/cpu/kv_store.h"
#include "tq/cuda/device_format.h"
#include "tq/cuda/kernels.h"
#include "tq/numeric.h"
#include "tq/rng.h"

namespace tq {
namespace {

struct SideCase {
  std::string spec;
  uint32_t head_dim, gqa, ntok;
  std::vector<int32_t> lens;
  bool prefill = false;
  uint32_t splits = 0;  // 0: automatic
  const char* rows = nullptr;  // TQ_DECODE_ROWS for the call ("16": blocks of two m-tiles), else the kernels' choice
  uint32_t swa = 0;            // a sliding-window layer's window (DecodeParams::sliding_window), 0: none
};

std::string case_name(const SideCase& c) {
  return test::attention_case_name(c.spec, c.head_dim, c.gqa, c.ntok, c.lens, c.splits, c.prefill) + (c.rows ? std::string("_rows") + c.rows : "") +
         (c.swa ? "_window" + std::to_string(c.swa) : "");
}

constexpr uint16_t kPoison = 0xFFFF;  // an fp16 NaN

// One layer: the CPU store (oracle and page bytes), the rows, block tables and the side layout.
struct SideSetup {
  uint32_t hkv = 2, qh, d, ntok, nseq, ps, max_pages = 0, sink, window, ring, side_rows, swa;
  KvSpec spec;
  std::unique_ptr<cpu::KvStore> store;
  std::vector<std::vector<int32_t>> tables;
  std::vector<int32_t> bt, lens, slots;
  std::vector<std::vector<float>> k, v;  // [seq][len][hkv * d]
  std::vector<float> q;                  // [seq][ntok][qh][d]
  mutable cpu::ThreadPool pool{2};

  SideSetup(const SideCase& c, uint64_t seed)
      : qh(c.gqa * 2), d(c.head_dim), ntok(c.ntok), nseq(uint32_t(c.lens.size())), swa(c.swa), spec(parse_kv_spec(c.spec)), lens(c.lens) {
    ps = spec.format.page_size;
    sink = spec.policy.sink, window = spec.policy.window;
    ring = window ? window + kSideRollback : 0;
    side_rows = sink + ring;
    for (int32_t l : lens) max_pages = std::max<uint32_t>(max_pages, (l + ps - 1) / ps);
    const uint32_t pages = max_pages * nseq + 3;
    store = std::make_unique<cpu::KvStore>(cpu::KvShape{1, hkv, d, pages, ntok}, spec);
    std::vector<int32_t> pool_ids(pages);
    std::iota(pool_ids.begin(), pool_ids.end(), 0);
    Rng r(seed);
    for (uint32_t i = pages - 1; i > 0; --i) std::swap(pool_ids[i], pool_ids[r.next() % (i + 1)]);
    bt.assign(size_t(nseq) * max_pages, 0);
    size_t next = 0;
    for (uint32_t s = 0; s < nseq; ++s) {
      tables.emplace_back();
      for (uint32_t i = 0; i < (uint32_t(lens[s]) + ps - 1) / ps; ++i)
        tables[s].push_back(bt[size_t(s) * max_pages + i] = pool_ids[next++]);
      k.push_back(test::outlier_rows(lens[s], size_t(hkv) * d, seed + 10 * s));
      v.push_back(test::gaussian(lens[s], size_t(hkv) * d, seed + 10 * s + 1));
      store->add_sequence(int(s));
      slots.push_back(int32_t(nseq - s));  // slot 0 unused: the kernels must follow the slots
    }
    q = test::outlier_rows(size_t(nseq) * ntok * qh, d, seed + 99);
    for (float& x : q) x *= 0.05f;  // keys have norms ~100: keep logits in a realistic range
  }
  size_t row_elems() const { return size_t(2) * hkv * d; }
  size_t slot_elems() const { return side_rows * row_elems(); }
  // The side row of position t (t < sink, or in the ring), or -1.
  int side_row(uint32_t t) const { return t < sink ? int(t) : ring ? int(sink + t % ring) : -1; }
  // Writes position t of sequence s into the CPU store's pages and side buffers.
  void cpu_write(uint32_t s, uint32_t t) {
    store->write(0, cpu::SeqPages{int(s), &tables[s]}, t, &k[s][size_t(t) * hkv * d], &v[s][size_t(t) * hkv * d]);
  }
  // fp16 K and V of position t of sequence s into its slot of `side`.
  void put_side(std::vector<uint16_t>& side, uint32_t s, uint32_t t) const {
    uint16_t* dst = &side[size_t(slots[s]) * slot_elems() + size_t(side_row(t)) * row_elems()];
    for (size_t i = 0; i < size_t(hkv) * d; ++i) {
      dst[i] = f32_to_f16(k[s][size_t(t) * hkv * d + i]);
      dst[size_t(hkv) * d + i] = f32_to_f16(v[s][size_t(t) * hkv * d + i]);
    }
  }
  // The step's rows: positions len - ntok .. len - 1 of each sequence, [seq][ntok][hkv * d].
  std::vector<float> new_rows(const std::vector<std::vector<float>>& x) const {
    std::vector<float> out;
    const ptrdiff_t row = ptrdiff_t(hkv) * d;
    for (uint32_t s = 0; s < nseq; ++s) out.insert(out.end(), x[s].begin() + (lens[s] - ntok) * row, x[s].begin() + lens[s] * row);
    return out;
  }
  // The bound on a kernel's worst row error against reference() (cuda_test_util.h): the side rows
  // as the kernels read them, fp16 of the written rows. A same-precision computation off by more
  // than 1e-2 would be a broken reference: it fails.
  double bound(const std::vector<float>& ref) const {
    std::vector<std::vector<float>> k16(k), v16(v);
    for (auto* rows : {&k16, &v16})
      for (auto& seq : *rows)
        for (float& x : seq) x = f16_to_f32(f32_to_f16(x));
    const size_t row = size_t(hkv) * d;
    const test::SideRows side{sink, window, [&](uint32_t s, uint32_t t) { return &k16[s][t * row]; },
                              [&](uint32_t s, uint32_t t) { return &v16[s][t * row]; }};
    AttentionBatch a;
    a.q = q.data(), a.block_tables = bt.data(), a.seq_lens = lens.data();
    a.num_seqs = nseq, a.num_q_tokens = ntok, a.q_heads = qh, a.max_pages = max_pages, a.sliding_window = swa;
    uint32_t local = 0;
    const PagedKvCache& cache = store->cache_of(0, &local);
    double logit = 0;
    const double err = test::worst_row_error(test::same_precision_attention(cache, local, a, &side, &logit), ref, d);
    EXPECT_LT(err, 1e-2) << "the same-precision reference itself";
    return test::attention_bound(err, logit);
  }
  // KvStore::attend of every sequence's last ntok queries: [seq][ntok][qh][d].
  std::vector<float> reference() const {
    std::vector<float> ref(q.size());
    for (uint32_t s = 0; s < nseq; ++s) {
      const size_t at = size_t(s) * ntok * qh * d;
      store->attend(0, cpu::SeqPages{int(s), &tables[s]}, uint32_t(lens[s]) - ntok, ntok, qh, &q[at], &ref[at], pool, 0.0f, swa);
    }
    return ref;
  }
};

// Device copies of everything a call reads (the pages as the CPU store holds them now), and the
// call, over the side slots at `side` (device memory).
struct SideRun {
  const SideSetup& s;
  uint32_t local = 0;
  const PagedKvCache& cache;
  cuda::DeviceFormat codecs;
  test::DeviceBuffer<uint8_t> pages;
  test::DeviceBuffer<float> dq, out, nk, nv;
  test::DeviceBuffer<int32_t> dbt, dlen, dslots;
  uint16_t* side;
  SideRun(const SideSetup& setup, uint16_t* side_dev)
      : s(setup),
        cache(setup.store->cache_of(0, &local)),
        codecs(cache.format()),
        pages(cache.bytes()),
        dq(setup.q),
        out(setup.q.size()),
        nk(setup.new_rows(setup.k)),
        nv(setup.new_rows(setup.v)),
        dbt(setup.bt),
        dlen(setup.lens),
        dslots(setup.slots),
        side(side_dev) {
    cudaMemcpy(pages.ptr, cache.data(), cache.bytes(), cudaMemcpyHostToDevice);
  }
  std::vector<float> run(bool prefill, uint32_t splits) {
    cuda::DecodeParams p;
    p.cache = codecs.view(local, pages.ptr, cache.shape().num_pages);
    p.q = dq.ptr;
    p.q_dtype = cuda::DType::kF32;
    p.out = out.ptr;
    p.out_dtype = cuda::DType::kF32;
    p.block_tables = dbt.ptr;
    p.seq_lens = dlen.ptr;
    p.num_seqs = s.nseq;
    p.num_q_tokens = s.ntok;
    p.q_heads = s.qh;
    p.max_pages = s.max_pages;
    p.max_seq_len = uint32_t(*std::max_element(s.lens.begin(), s.lens.end()));
    p.num_splits = splits;
    p.sliding_window = s.swa;
    p.side.data = side;
    p.side.slots = dslots.ptr;
    p.side.slot_stride = s.slot_elems();
    p.side.sink = s.sink, p.side.window = s.window, p.side.ring = s.ring;
    p.side.new_k = nk.ptr, p.side.new_v = nv.ptr;
    p.side.new_dtype = cuda::DType::kF32;
    test::DeviceBuffer<uint8_t> ws(prefill ? cuda::prefill_workspace_bytes(p) : cuda::decode_workspace_bytes(p));
    p.workspace = ws.ptr;
    out.poison();
    if (prefill)
      cuda::prefill_attention(p, nullptr);
    else
      cuda::decode_attention(p, nullptr);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    return out.download();
  }
};

class DecodeSide : public ::testing::TestWithParam<SideCase> {};

// One call: the side slots hold what the steps before it left (sink rows, the ring's last
// positions, NaN elsewhere), the step's rows come as new rows.
TEST_P(DecodeSide, MatchesTheCpuAttentionAndWritesTheStepsRows) {
  TQ_REQUIRE_GPU();
  const SideCase& c = GetParam();
  SideSetup s(c, 11);
  for (uint32_t q = 0; q < s.nseq; ++q)
    for (uint32_t t = 0; t < uint32_t(s.lens[q]); ++t) s.cpu_write(q, t);
  const std::vector<float> ref = s.reference();

  std::vector<uint16_t> side(size_t(s.nseq + 1) * s.slot_elems(), kPoison);
  for (uint32_t q = 0; q < s.nseq; ++q) {
    const uint32_t first = uint32_t(s.lens[q]) - s.ntok;
    for (uint32_t t = 0; t < first; ++t)
      if (t < s.sink || (s.ring && t >= s.sink && t + s.ring >= first)) s.put_side(side, q, t);
  }
  test::DeviceBuffer<uint16_t> dside(side);
  SideRun r(s, dside.ptr);
  if (c.rows) setenv("TQ_DECODE_ROWS", c.rows, 1);
  const std::vector<float> got = r.run(c.prefill, c.splits);
  unsetenv("TQ_DECODE_ROWS");
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_TRUE(std::isfinite(got[i])) << "row " << i / s.d << " element " << i % s.d << " not written, not finite, or a NaN slot read";
  const double worst = test::worst_row_error(got, ref, s.d), bound = s.bound(ref);
  EXPECT_LE(worst, bound) << "worst relative L2 error of an output row against KvStore::attend; the bound is twice a same-precision "
                             "computation's";
  RecordProperty("worst_rel_err", std::to_string(worst));
  RecordProperty("bound", std::to_string(bound));

  // The step's rows now in the slots: sink positions, and the last `ring` positions.
  for (uint32_t q = 0; q < s.nseq; ++q) {
    const uint32_t len = uint32_t(s.lens[q]);
    for (uint32_t t = len - s.ntok; t < len; ++t)
      if (t < s.sink || (s.ring && t + s.ring >= len)) s.put_side(side, q, t);
  }
  EXPECT_TRUE(dside.download() == side) << "side slots differ from the expected rows";
}

std::vector<SideCase> side_cases() {
  std::vector<SideCase> v;
  // Lengths below, at and past sink + window; one that leaves nothing to the pages.
  const std::vector<int32_t> mixed{1, 3, 17, 20, 21, 97, 4097};
  for (const char* spec : {"k3v2:sink=4:window=16", "k4v4:sink=4:window=16", "k2v3:sink=1:window=3", "fp16:sink=4:window=16",
                           "bf16:sink=4:window=16", "fp8:sink=4:window=16"})
    for (uint32_t d : {64u, 128u, 256u}) v.push_back({spec, d, 4, 1, mixed});
  v.push_back({"k3v2:sink=20", 128, 4, 2, {2, 19, 21, 300}});         // sink only
  v.push_back({"k3v2:window=64", 128, 4, 1, {1, 64, 65, 73, 1000}});  // window only, lengths around the ring
  v.push_back({"k4v4:window=8", 64, 2, 4, {4, 9, 100}});
  v.push_back({"fp16:window=3", 64, 4, 8, {8, 50}});
  for (uint32_t gqa : {1u, 8u}) v.push_back({"k3v2:sink=4:window=16", 128, gqa, 1, {5, 300}});
  v.push_back({"k3v2:sink=4:window=16", 112, 4, 1, {30, 97}});  // pads to 128: side rows keep 112
  v.push_back({"k3v2:rot=dense:sink=4:window=16", 128, 4, 1, {17, 97}});
  v.push_back({"k3v2:sink=4:window=16:page=7", 128, 4, 2, {2, 17, 97}});  // unstaged loads
  v.push_back({"k3v2:sink=4:window=16", 128, 4, 1, {4097}, false, 37});   // many splits
  v.push_back({"k3v2:sink=4:window=16", 128, 4, 1, {4097}, false, 1});    // one split
  // Blocks of two m-tiles: side blocks take their 8-row m-tiles in turn.
  v.push_back({"k3v2:sink=4:window=16", 128, 4, 8, {8, 17, 300}, false, 0, "16"});
  v.push_back({"k2v2:sink=2:window=5", 64, 2, 9, {9, 40}, false, 0, "16"});
  v.push_back({"k3v2:rot=dense:sink=4:window=16", 128, 4, 3, {17, 97}, false, 0, "16"});
  v.push_back({"k3v2:sink=4:window=16", 128, 4, 8, {8, 4097}, false, 4});  // 4 splits of 4K: the kernels' choice is 16-row blocks
  // Up to 4 rows, the kernels' choice is 4-row blocks with the keys as M (above); the 8-row ones too.
  v.push_back({"k3v2:sink=4:window=16", 128, 4, 1, mixed, false, 0, "8"});
  v.push_back({"k2v3:sink=1:window=3", 64, 2, 2, {2, 17, 97}, false, 0, "8"});
  // Chunked prefill: each query of the chunk has its own window, partly in the chunk itself.
  v.push_back({"k3v2:sink=4:window=64", 128, 4, 100, {100, 300, 1000}, true});
  v.push_back({"k3v2:sink=4:window=16", 64, 2, 17, {17, 97}, true});
  v.push_back({"bf16:sink=4:window=16", 128, 4, 40, {40, 97}, true});
  v.push_back({"fp8:sink=2:window=5", 256, 4, 20, {20, 97}, true});
  v.push_back({"k4v4:window=100", 64, 1, 70, {70, 500}, true});
  v.push_back({"k3v2:sink=8", 128, 4, 20, {20, 100}, true});
  v.push_back({"k3v2:rot=dense:sink=4:window=16", 128, 4, 24, {24, 333}, true});
  v.push_back({"k3v2:sink=4:window=16", 128, 4, 50, {1000, 60}, true, 5});
  // Sliding-window layers: the sink falls out of a row's window, and so does the side window's
  // start where the layer's window is the shorter; decode (16-row blocks too) and prefill.
  v.push_back({"k3v2:sink=4:window=16", 128, 4, 1, mixed, false, 0, nullptr, 40});
  v.push_back({"k3v2:sink=4:window=16", 64, 4, 1, mixed, false, 0, "8", 40});
  v.push_back({"k3v2:sink=4:window=64", 256, 2, 1, {1, 20, 70, 100, 600}, false, 0, nullptr, 30});
  v.push_back({"k3v2:sink=4:window=16", 128, 4, 8, {8, 17, 300}, false, 0, "16", 12});
  v.push_back({"bf16:sink=4:window=16", 64, 4, 3, {3, 40, 97}, false, 0, nullptr, 25});
  v.push_back({"k3v2:sink=4:window=64", 128, 4, 100, {100, 300, 1000}, true, 0, nullptr, 90});
  v.push_back({"fp16:sink=2:window=5", 256, 1, 40, {40, 200}, true, 0, nullptr, 33});
  return v;
}
INSTANTIATE_TEST_SUITE_P(All, DecodeSide, ::testing::ValuesIn(side_cases()), [](const auto& i) { return case_name(i.param); });

// Step by step from an empty side buffer: a prefill chunk, then steps of 1..30 tokens (decode and
// prefill), the slots filled by the kernels' own writes only, over many turns of the ring. Each
// step matches the CPU, whose store is written just before it attends.
TEST(DecodeSide, StepsFromAnEmptySideBufferMatchTheCpu) {
  TQ_REQUIRE_GPU();
  double worst_ratio = 0;  // of the error to its bound, over every step
  for (const char* spec : {"k3v2:sink=4:window=16", "bf16:sink=2:window=5", "k4v4:window=3"}) {
    const std::vector<uint32_t> steps{40, 1, 2, 3, 1, 8, 1, 1, 30, 1, 2, 1, 1, 1, 3, 8, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    const uint32_t total = std::accumulate(steps.begin(), steps.end(), 0u);
    SideSetup s(SideCase{spec, 128, 4, 40, {int32_t(total), int32_t(total)}}, 5);
    test::DeviceBuffer<uint16_t> side(std::vector<uint16_t>(size_t(s.nseq + 1) * s.slot_elems(), kPoison));
    uint32_t len = 0;
    for (size_t i = 0; i < steps.size(); ++i) {
      const uint32_t n = steps[i];
      len += n;
      for (uint32_t q = 0; q < s.nseq; ++q)
        for (uint32_t t = len - n; t < len; ++t) s.cpu_write(q, t);
      s.ntok = n;
      s.lens.assign(s.nseq, int32_t(len));
      s.q = test::outlier_rows(size_t(s.nseq) * n * s.qh, s.d, 1000 + i);
      for (float& x : s.q) x *= 0.05f;
      const std::vector<float> ref = s.reference();
      SideRun r(s, side.ptr);
      const std::vector<float> got = r.run(n > cuda::kMaxDecodeQueryTokens, 0);
      // The bound of the other tests (twice a same-precision computation's error, plus the fp32
      // softmax's rounding), step by step; a NaN (a slot read before it was written) fails it too.
      const double worst = test::worst_row_error(got, ref, s.d), bound = s.bound(ref);
      ASSERT_LE(worst, bound) << spec << ": step " << i << " (" << n << " tokens to " << len << "); NaN: a slot read before it was written";
      worst_ratio = std::max(worst_ratio, worst / bound);
    }
  }
  RecordProperty("worst_error_over_bound", std::to_string(worst_ratio));
  std::printf("step-by-step side test: worst error / bound %.3f\n", worst_ratio);
}

TEST(DecodeSide, InconsistentSideViewsAreRefusedNamingTheValue) {
  TQ_REQUIRE_GPU();
  SideSetup s(SideCase{"k3v2:sink=4:window=16", 128, 4, 1, {40}}, 3);
  for (uint32_t t = 0; t < 40; ++t) s.cpu_write(0, t);
  test::DeviceBuffer<uint16_t> side(std::vector<uint16_t>(2 * s.slot_elems(), 0));
  SideRun r(s, side.ptr);
  cuda::DecodeParams p;
  p.cache = r.codecs.view(r.local, r.pages.ptr, r.cache.shape().num_pages);
  p.q = p.out = r.dq.ptr;
  p.block_tables = r.dbt.ptr, p.seq_lens = r.dlen.ptr;
  p.num_seqs = 1, p.q_heads = s.qh, p.max_pages = s.max_pages, p.max_seq_len = 40;
  p.workspace = r.pages.ptr;
  p.side.sink = 4, p.side.window = 16, p.side.ring = 10;
  p.side.data = side.ptr, p.side.slots = r.dslots.ptr, p.side.new_k = r.nk.ptr, p.side.new_v = r.nv.ptr;
  p.side.slot_stride = s.slot_elems();
  try {
    cuda::validate(p);
    FAIL() << "a ring of 10 for a window of 16 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("10"), std::string::npos) << e.what();
  }
  p.side.ring = 24;
  p.side.new_v = nullptr;
  EXPECT_THROW(cuda::validate(p), Error);
  p.side.new_v = r.nv.ptr;
  p.side.slot_stride = 5;
  EXPECT_THROW(cuda::validate(p), Error);
}

}  // namespace
}  // namespace tq
