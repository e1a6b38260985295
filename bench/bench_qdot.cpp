// The CPU backend's quantized dot products (backend/cpu/qdot.h), one kernel per weight type and SIMD
// level side by side in one process: a weight matrix of kRows rows of kCols elements (in L2: this
// is the kernels' arithmetic, not the memory a whole model streams) against one quantized
// activation row, as a decode step's matrix-vector product runs it. The level is the cap of
// cpu::set_simd_level (as TQ_SIMD sets it); a level above the CPU's runs the CPU's own.
//   build/release/bench/bench_qdot --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "tq/backend/cpu/matmul.h"
#include "tq/backend/cpu/qdot.h"
#include "tq/cpu_features.h"
#include "tq/model/ggml_quants.h"
#include "tq/numeric.h"

namespace {

using tq::model::GgmlType;

constexpr size_t kRows = 64, kCols = 2048;  // q8_0: 139 KB of weights

constexpr GgmlType kTypes[] = {GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::IQ4_NL,
                               GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::IQ4_XS};

void BM_Dot(benchmark::State& state) {
  const GgmlType t = kTypes[state.range(0)];
  const auto level = tq::cpu::SimdLevel(state.range(1));
  if (level > tq::cpu::hardware_simd_level()) {
    state.SkipWithError("the CPU lacks this SIMD level");
    return;
  }
  tq::cpu::set_simd_level(level);
  const auto& ti = tq::model::ggml_type_info(t);
  const size_t row_bytes = kCols / ti.block_elems * ti.block_bytes;
  std::mt19937 rng(1);
  std::vector<uint8_t> w(kRows * row_bytes);  // [kRows][row_bytes]
  for (auto& b : w) b = uint8_t(rng());
  const uint16_t scale = tq::f32_to_f16(0.01f);
  for (size_t b = 0; b < w.size() / ti.block_bytes; ++b)
    for (size_t at : tq::model::ggml_scale_fields(t))  // random bytes there could be inf or NaN
      w[b * ti.block_bytes + at] = uint8_t(scale & 0xFF), w[b * ti.block_bytes + at + 1] = uint8_t(scale >> 8);
  std::normal_distribution<float> nd;
  std::vector<float> x(kCols);
  for (float& v : x) v = nd(rng);
  const tq::cpu::ActFormat f = tq::cpu::act_format(t);
  std::vector<uint8_t> act(tq::cpu::act_row_bytes(f, kCols));
  tq::cpu::quantize_act_row(f, x.data(), kCols, act.data());
  const tq::cpu::DotFn dot = tq::cpu::dot_kernel(t);
  std::vector<float> y(kRows);
  for (auto _ : state) {
    for (size_t r = 0; r < kRows; ++r) y[r] = dot(w.data() + r * row_bytes, act.data(), kCols);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  tq::cpu::set_simd_enabled(true);  // back to TQ_SIMD's cap
  state.SetLabel(std::string(tq::model::ggml_type_name(t)) + (level == tq::cpu::SimdLevel::kAvx512 ? " avx512"
                                                              : level == tq::cpu::SimdLevel::kAvx2 ? " avx2"
                                                                                                   : " portable"));
  state.counters["weight_bytes/s"] = benchmark::Counter(double(w.size()) * double(state.iterations()), benchmark::Counter::kIsRate);
}

void args(benchmark::internal::Benchmark* b) {
  for (int t = 0; t < int(std::size(kTypes)); ++t)
    for (int level : {0, 1, 2}) b->Args({t, level});
}

// A decode step's matrix-vector product through cpu::matmul (activation quantization, the pool's
// split, the kernel) on 1 or 2 threads: a q4_1 matrix of 576 columns (SmolLM2-135M's width) and
// range(0) rows, either in cache (1536 rows, 0.55 MB: the two cores' L2) or streamed from memory
// (272 000 rows, 98 MB: SmolLM2-135M Q4_1's weights, larger than the 32 MB L3). Two threads against
// one on the streamed matrix is what the memory lets a decode step gain.
void BM_Matvec(benchmark::State& state) {
  const size_t R = size_t(state.range(0)), C = 576;
  tq::cpu::ThreadPool pool(unsigned(state.range(1)));
  tq::model::TensorRef w;
  w.name = "bench.weight";
  w.type = GgmlType::Q4_1;
  w.n_rows = R;
  w.n_cols = C;
  std::vector<uint8_t> bytes(R * w.row_bytes());  // [R][row_bytes]
  std::mt19937 rng(2);
  for (auto& b : bytes) b = uint8_t(rng());
  const uint16_t scale = tq::f32_to_f16(0.01f);
  for (size_t b = 0; b < bytes.size() / 20; ++b)
    for (size_t at : {0, 2}) bytes[b * 20 + at] = uint8_t(scale & 0xFF), bytes[b * 20 + at + 1] = uint8_t(scale >> 8);
  w.data = bytes.data();
  std::normal_distribution<float> nd;
  std::vector<float> x(C), y(R);
  for (float& v : x) v = nd(rng);
  for (auto _ : state) {
    tq::cpu::matmul(w, x.data(), 1, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["weight_bytes/s"] = benchmark::Counter(double(bytes.size()) * double(state.iterations()), benchmark::Counter::kIsRate);
}

}  // namespace

BENCHMARK(BM_Dot)->Apply(args);
BENCHMARK(BM_Matvec)->ArgsProduct({{1536, 272000}, {1, 2}})->UseRealTime();

BENCHMARK_MAIN();
