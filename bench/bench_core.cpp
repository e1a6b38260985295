// CPU throughput of TurboQuant: quantize, dequantize and the fused dot product, for head dims
// 64/128/256 and the default widths (K 3 bits, V 2 bits), SIMD and the scalar reference side by
// side in one process, and trellis-coded rows (tcq, kTqTcq: the Viterbi search on write, the
// window decode on read) beside the plain ones. Rows/s and bytes/s are reported as counters.
//   build/release/bench/bench_core --benchmark_min_time=0.2
#include <benchmark/benchmark.h>

#include <vector>

#include "tq/cpu_features.h"
#include "simd.h"
#include "tq/codec/quantizer.h"
#include "tq/rng.h"
#include "tq/codec/turboquant.h"

namespace {

constexpr size_t kRows = 1024;  // one batch: 64 pages of 16 tokens

std::vector<float> rows(size_t n, uint32_t d, uint64_t seed) {
  tq::Rng r(seed);
  std::vector<float> x(n * d);
  for (float& v : x) v = float(r.normal());
  for (size_t i = 0; i < n; ++i) x[i * d] *= 30.0f;  // an outlier channel, as in real keys
  return x;
}

struct Fixture {
  std::unique_ptr<tq::Quantizer> q;
  std::vector<float> x, out;
  std::vector<uint8_t> packed;
  Fixture(uint32_t d, uint32_t bits, bool fast, bool tcq) {
    tq::TqConfig cfg;
    cfg.dim = d;
    cfg.bits = bits;
    cfg.tcq = tcq;
    q = tq::make_turboquant(cfg, fast);
    x = rows(kRows, d, 1);
    out.resize(kRows * d);
    packed.resize(q->bytes(kRows));
    q->quantize(x.data(), kRows, packed.data());
  }
};

void set_counters(benchmark::State& s, const Fixture& f) {
  s.counters["rows/s"] = benchmark::Counter(double(s.iterations()) * kRows, benchmark::Counter::kIsRate);
  s.counters["packed_B/s"] = benchmark::Counter(double(s.iterations()) * f.packed.size(), benchmark::Counter::kIsRate);
}

// Args: head dim, bits, simd (1) or scalar reference (0), trellis-coded (1) or plain (0).
void BM_Quantize(benchmark::State& s) {
  tq::cpu::set_simd_enabled(s.range(2) != 0);
  Fixture f(uint32_t(s.range(0)), uint32_t(s.range(1)), true, s.range(3) != 0);
  for (auto _ : s) {
    f.q->quantize(f.x.data(), kRows, f.packed.data());
    benchmark::DoNotOptimize(f.packed.data());
  }
  set_counters(s, f);
  tq::cpu::set_simd_enabled(true);
}

void BM_Dequantize(benchmark::State& s) {
  tq::cpu::set_simd_enabled(s.range(2) != 0);
  Fixture f(uint32_t(s.range(0)), uint32_t(s.range(1)), true, s.range(3) != 0);
  for (auto _ : s) {
    f.q->dequantize(f.packed.data(), kRows, f.out.data());
    benchmark::DoNotOptimize(f.out.data());
  }
  set_counters(s, f);
  tq::cpu::set_simd_enabled(true);
}

void BM_FusedDot(benchmark::State& s) {
  Fixture f(uint32_t(s.range(0)), uint32_t(s.range(1)), s.range(2) != 0, s.range(3) != 0);
  const auto q = rows(1, uint32_t(s.range(0)), 2);
  for (auto _ : s) {
    f.q->dot(q.data(), f.packed.data(), kRows, f.out.data());
    benchmark::DoNotOptimize(f.out.data());
  }
  set_counters(s, f);
}

void args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"d", "bits", "simd", "tcq"});
  for (int d : {64, 128, 256}) {
    for (int bits : {3, 2}) {
      for (int simd : {0, 1}) b->Args({d, bits, simd, 0});
      b->Args({d, bits, 1, 1});
    }
    for (int tcq : {0, 1}) b->Args({d, 4, 1, tcq});  // the edge layers' width
  }
}

BENCHMARK(BM_Quantize)->Apply(args);
BENCHMARK(BM_Dequantize)->Apply(args);
BENCHMARK(BM_FusedDot)->Apply(args);

}  // namespace

BENCHMARK_MAIN();
