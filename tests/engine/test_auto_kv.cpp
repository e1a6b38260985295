// Automatic bit allocation (auto:bits=..., docs/kv-specs.md "Automatic specs"): the spec's parser,
// the pure allocation against a brute force on synthetic costs, the choice on synthetic
// sensitivities (the budget is met), and a calibration on stories260K whose spec then runs.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <random>

#include "stories.h"
#include "tq/backend/cpu/kv_store.h"
#include "tq/check.h"
#include "tq/engine/auto_kv.h"
#include "tq/engine/eval.h"
#include "tq/kv/kv_size.h"
#include "tq/kv/window_ring.h"

namespace tq::engine {
namespace {

std::string error_of(const std::string& text) {
  try {
    parse_auto_kv(text);
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(AutoKv, Parses) {
  EXPECT_TRUE(is_auto_kv("auto"));
  EXPECT_TRUE(is_auto_kv("auto:bits=3"));
  EXPECT_FALSE(is_auto_kv("k3v2"));
  EXPECT_FALSE(is_auto_kv("automatic"));
  const AutoKvRequest r = parse_auto_kv("auto:bits=2.75:calib=a.txt:tokens=128:sink=4:window=64:centre:widths=2-4");
  EXPECT_DOUBLE_EQ(r.bits, 2.75);
  EXPECT_EQ(r.calib, "a.txt");
  EXPECT_EQ(r.tokens, 128u);
  EXPECT_EQ(r.min_width, 2u);
  EXPECT_EQ(r.max_width, 4u);
  EXPECT_EQ(r.knobs.canonical(), "k3v2:sink=4:window=64:centre");
  // tq run's default knobs, the unbiased norm among them, are kept as given.
  const AutoKvRequest d = parse_auto_kv("auto:bits=2.95:calib=a.txt:ip:sink=4:window=64:centre");
  EXPECT_TRUE(d.knobs.format.norm_unbiased_k && d.knobs.format.norm_unbiased_v);
  EXPECT_EQ(d.knobs.canonical(), parse_kv_spec("k3v2:ip:sink=4:window=64:centre").canonical());
  const AutoKvRequest m = parse_auto_kv("auto:mem=1.5G:context=32768:calib=a.txt");
  EXPECT_EQ(m.mem_bytes, uint64_t(1.5 * 1024 * 1024 * 1024));
  EXPECT_EQ(m.context, 32768u);
  EXPECT_EQ(parse_auto_kv("auto:mem=900MiB:context=8:calib=x").mem_bytes, 900ull << 20);
}

TEST(AutoKv, RefusesWithTheBadPart) {
  EXPECT_NE(error_of("auto:calib=a").find("give one budget"), std::string::npos);
  EXPECT_NE(error_of("auto:bits=3:mem=1G:context=8:calib=a").find("give one budget"), std::string::npos);
  EXPECT_NE(error_of("auto:bits=3").find("needs calib=FILE"), std::string::npos);
  EXPECT_NE(error_of("auto:bits=x:calib=a").find("bits must be a number, got 'x'"), std::string::npos);
  EXPECT_NE(error_of("auto:bits=0.5:calib=a").find("1..16 bits per element, got 0.5"), std::string::npos);
  EXPECT_NE(error_of("auto:mem=1G:calib=a").find("give context= too"), std::string::npos);
  EXPECT_NE(error_of("auto:mem=1T:context=8:calib=a").find("unit must be K, M or G"), std::string::npos);
  EXPECT_NE(error_of("auto:bits=3:context=8:calib=a").find("context= goes with mem="), std::string::npos);
  EXPECT_NE(error_of("auto:bits=3:calib=a:edge=2/k4v4").find("'edge=2/k4v4' is not taken"), std::string::npos);
  EXPECT_NE(error_of("auto:bits=3:calib=a:widths=5-2").find("widths must be a-b"), std::string::npos);
  EXPECT_NE(error_of("auto:bits=3:calib=a:tokens=4").find("16..65536, got 4"), std::string::npos);
  EXPECT_NE(error_of("auto:bits=3:calib=a:widths=2-8:tcq").find("trellis-coded widths are 1..7 bits (tcq), got widths=2-8"), std::string::npos);
  EXPECT_EQ(parse_auto_kv("auto:bits=3:calib=a:tcq").enc, Encoding::kTqTcq);
  // Trellis-coded candidates default to the GPU kernels' 2t..3t; widths= still sets them.
  EXPECT_EQ(parse_auto_kv("auto:bits=3:calib=a:tcq").max_width, 3u);
  EXPECT_EQ(parse_auto_kv("auto:bits=3:calib=a:tcq:widths=2-5").max_width, 5u);
  EXPECT_EQ(parse_auto_kv("auto:bits=3:calib=a").max_width, 4u);
  EXPECT_EQ(parse_auto_kv("auto:bits=3:calib=a").enc, Encoding::kTqMse);
  // a second budget option silently replaced the first; a sub-byte mem= was read as no budget
  EXPECT_NE(error_of("auto:bits=12:calib=a:bits=2").find("option 'bits' is given twice"), std::string::npos);
  EXPECT_NE(error_of("auto:mem=1G:context=8:calib=a:context=9").find("option 'context' is given twice"), std::string::npos);
  EXPECT_NE(error_of("auto:mem=0.5:context=1:calib=a").find("mem must be a size of 1 byte or more"), std::string::npos);
  const std::string e = error_of("auto:bits=3:calib=a:sink=x");
  EXPECT_NE(e.find("KV spec 'auto:bits=3:calib=a:sink=x'"), std::string::npos) << e;
}

// Every assignment of two formats (low everywhere, high on a subset) by brute force.
Allocation brute_force(const std::vector<std::vector<double>>& cost, const std::vector<double>& bytes, double budget,
                       const std::vector<double>& weights = {}) {
  const size_t F = bytes.size(), L = cost[0].size();
  Allocation best;
  bool found = false;
  for (size_t lo = 0; lo < F; ++lo)
    for (size_t hi = 0; hi < F; ++hi)
      for (uint32_t mask = 0; mask < (1u << L); ++mask) {
        if ((hi == lo) != (mask == 0)) continue;
        double c = 0, b = 0;
        std::vector<uint32_t> set;
        for (uint32_t l = 0; l < L; ++l) {
          const size_t f = mask >> l & 1 ? hi : lo;
          if (mask >> l & 1) set.push_back(l);
          c += cost[f][l];
          b += bytes[f] * (weights.empty() ? 1.0 : weights[l]);
        }
        if (b > budget + 1e-9) continue;
        if (!found || c < best.cost - 1e-12) best = Allocation{lo, hi, set, c, b}, found = true;
      }
  EXPECT_TRUE(found);
  return best;
}

TEST(AutoKv, AllocationIsOptimalOnSyntheticCosts) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(0, 1);
  for (int trial = 0; trial < 200; ++trial) {
    const size_t F = 2 + trial % 3, L = 1 + trial % 8;
    std::vector<double> bytes(F);
    std::vector<std::vector<double>> cost(F, std::vector<double>(L));
    for (size_t f = 0; f < F; ++f) {
      bytes[f] = std::floor(1 + 8 * u(rng));  // whole bytes: equal sizes happen
      for (size_t l = 0; l < L; ++l) cost[f][l] = u(rng) / bytes[f];
    }
    // Every other trial weighs the layers as window rings do (mem= on Gemma 3): two or three classes.
    std::vector<double> w;
    if (trial % 2) {
      const double small = 0.05 + 0.5 * u(rng), mid = 0.6 + 0.3 * u(rng);
      for (size_t l = 0; l < L; ++l) w.push_back(l % 3 == 0 ? 1.0 : trial % 4 == 1 ? small : l % 3 == 1 ? small : mid);
    }
    double total_w = 0;
    for (size_t l = 0; l < L; ++l) total_w += w.empty() ? 1.0 : w[l];
    const double least = *std::min_element(bytes.begin(), bytes.end()) * total_w;
    const double budget = least + u(rng) * 6.0 * double(L);
    const Allocation a = allocate_layers(cost, bytes, budget, w), b = brute_force(cost, bytes, budget, w);
    EXPECT_LE(a.bytes, budget + 1e-9) << trial;
    EXPECT_NEAR(a.cost, b.cost, 1e-12) << trial;  // optimal over every two-format assignment
    // Its cost and bytes are those of the layers it names.
    double c = 0, by = 0;
    for (uint32_t l = 0; l < L; ++l) {
      const bool high = std::find(a.high_layers.begin(), a.high_layers.end(), l) != a.high_layers.end();
      c += cost[high ? a.high : a.low][l];
      by += bytes[high ? a.high : a.low] * (w.empty() ? 1.0 : w[l]);
    }
    EXPECT_NEAR(c, a.cost, 1e-12) << trial;
    EXPECT_NEAR(by, a.bytes, 1e-9) << trial;
  }
}

TEST(AutoKv, AllocationPicksTheMostSensitiveLayers) {
  // Two formats: 1 byte (cost 10 * s) and 2 bytes (cost s); budget for 2 upgrades of 5 layers.
  const std::vector<double> s{0.1, 0.5, 0.2, 0.9, 0.3};
  std::vector<std::vector<double>> cost(2);
  for (double x : s) cost[0].push_back(10 * x), cost[1].push_back(x);
  const Allocation a = allocate_layers(cost, {1, 2}, 7.0);
  EXPECT_EQ(a.low, 0u);
  EXPECT_EQ(a.high, 1u);
  EXPECT_EQ(a.high_layers, (std::vector<uint32_t>{1, 3}));
  EXPECT_DOUBLE_EQ(a.bytes, 7.0);
  // Too small a budget names itself.
  try {
    allocate_layers(cost, {1, 2}, 4.0);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("budget of 4.0 bytes per token is below the smallest choice, 5.0"), std::string::npos) << e.what();
  }
}

// SmolLM2's shape with synthetic sensitivities: the chosen spec meets the budget as tq kv-size
// counts it, and the most sensitive layers are the ones widened.
TEST(AutoKv, ChoiceMeetsTheBudget) {
  model::ModelConfig c;
  c.n_layers = 30;
  c.n_kv_heads = 3;
  c.head_dim = 64;
  Sensitivity s{{3}, {2}, {{}}, {{}}};  // one K probe at 3 bits, one V probe at 2
  for (int l = 0; l < 30; ++l) {
    s.k[0].push_back(l == 0 || l == 29 ? 0.02 : 0.001 * (1 + l % 3));
    s.v[0].push_back(l == 7 ? 0.03 : 0.002);
  }
  for (double bits : {2.5, 2.75, 3.0, 3.5, 4.0}) {
    const AutoKvRequest r = parse_auto_kv(fmt::format("auto:bits={}:calib=x:sink=4:window=64", bits));
    const AutoKvChoice ch = choose_auto_kv(r, c, s);
    const KvSize z = kv_size(ch.spec, 30, 3, 64);
    EXPECT_LE(z.bits_per_element, bits + 1e-9) << ch.spec.canonical();
    EXPECT_GT(z.bits_per_element, bits - 0.25) << ch.spec.canonical();  // the budget is used
    EXPECT_EQ(ch.spec.policy.sink, 4u);
    EXPECT_EQ(ch.spec.policy.window, 64u);
    EXPECT_NE(ch.report.find("chose " + ch.spec.canonical()), std::string::npos) << ch.report;
    if (bits == 3.0) {
      // The three outstanding layers get the wider format.
      for (uint32_t l : {0u, 7u, 29u}) EXPECT_TRUE(ch.spec.is_edge_layer(l, 30)) << ch.spec.canonical() << "\n" << ch.report;
    }
  }
  // A memory budget: 30 layers x 3 heads x 64 x 2 (K, V) x 2.75 / 8 bytes per token at k3v2, plus
  // the side buffer (4 + 64 + 64 tokens of fp16 K and V).
  const double side = (4 + 64 + 64) * 2.0 * 2 * 64 * 3 * 30, per_tok = 2.0 * 64 * 3 * 30 * 2.75 / 8;
  const AutoKvRequest r = parse_auto_kv(fmt::format("auto:mem={}:context=4096:calib=x:sink=4:window=64", uint64_t(side + 4096 * per_tok)));
  const AutoKvChoice ch = choose_auto_kv(r, c, s);
  EXPECT_LE(kv_size(ch.spec, 30, 3, 64).seq_bytes(4096), side + 4096 * per_tok + 1e-6) << ch.spec.canonical();
  // Below the narrowest choice (2 bits everywhere, 2.25 bits per element): refused by name.
  try {
    choose_auto_kv(parse_auto_kv("auto:bits=2:calib=x"), c, s);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("KV spec 'auto:bits=2:calib=x' on this model: the budget"), std::string::npos) << e.what();
  }
  // Trellis-coded candidates (tcq): the choice is in tcq widths, within the budget, from tcq probes.
  Sensitivity st = s;
  st.enc = Encoding::kTqTcq;
  const AutoKvChoice t = choose_auto_kv(parse_auto_kv("auto:bits=3.0:calib=x:tcq:widths=2-4:sink=4:window=64"), c, st);
  EXPECT_EQ(t.spec.format.k.enc, Encoding::kTqTcq) << t.spec.canonical();
  EXPECT_EQ(t.spec.format.v.enc, Encoding::kTqTcq) << t.spec.canonical();
  EXPECT_LE(kv_size(t.spec, 30, 3, 64).bits_per_element, 3.0 + 1e-9) << t.spec.canonical();
  for (uint32_t l : {0u, 7u, 29u}) EXPECT_TRUE(t.spec.is_edge_layer(l, 30)) << t.spec.canonical() << "\n" << t.report;
  EXPECT_EQ(t.spec.policy.edge_k.enc, Encoding::kTqTcq);
  EXPECT_NE(t.report.find("K3t"), std::string::npos) << t.report;
  // By default the candidates are 2t and 3t and plain 2..4 bits, formats the GPU's kernels read: the
  // layers whose keys matter take plain 4-bit keys (no 4t there), the rest trellis-coded.
  const AutoKvChoice g = choose_auto_kv(parse_auto_kv("auto:bits=3.0:calib=x:tcq:sink=4:window=64"), c, st);
  EXPECT_EQ(g.spec.format.k.enc, Encoding::kTqTcq) << g.spec.canonical();
  EXPECT_EQ(g.spec.policy.edge_k.enc, Encoding::kTqMse) << g.spec.canonical() << "\n" << g.report;
  EXPECT_EQ(g.spec.policy.edge_k.bits, 4) << g.spec.canonical();
  for (uint32_t l : {0u, 7u, 29u}) EXPECT_TRUE(g.spec.is_edge_layer(l, 30)) << g.spec.canonical();
  EXPECT_LE(kv_size(g.spec, 30, 3, 64).bits_per_element, 3.0 + 1e-9) << g.spec.canonical();
  EXPECT_EQ(gpu_kernels_unsupported(g.spec.format.k, g.spec.format.v, 64), "") << g.spec.canonical();
  EXPECT_EQ(gpu_kernels_unsupported(g.spec.policy.edge_k, g.spec.policy.edge_v, 64), "") << g.spec.canonical();
  EXPECT_NE(t.spec.canonical(), g.spec.canonical()) << "4t keys were not chosen where they were candidates";
  // Probes of one encoding do not price the other's widths.
  EXPECT_THROW(choose_auto_kv(parse_auto_kv("auto:bits=3.0:calib=x:tcq"), c, s), Error);
  EXPECT_THROW(choose_auto_kv(parse_auto_kv("auto:bits=3.0:calib=x"), c, st), Error);
  // ... and before any calibration, from the shape alone, naming the least budget that works
  // (rounded up: the budget named is met; mem=1K holds not even the side buffer)
  for (const auto& [spec, least] : {std::pair{"auto:bits=2:calib=x", "bits=2.250"}, std::pair{"auto:bits=2.2:calib=x:widths=2-4", "bits=2.250"},
                                    std::pair{"auto:bits=2:page=6:calib=x", "bits=2.334"},
                                    std::pair{"auto:mem=1M:context=4096:calib=x", "mem=12960K"},
                                    std::pair{"auto:mem=1K:context=16:sink=4:window=64:calib=x", "mem="}}) {
    try {
      check_auto_kv_budget(parse_auto_kv(spec), c);
      ADD_FAILURE() << spec << " passed";
    } catch (const Error& e) {
      const std::string w = e.what();
      const size_t at = w.find(std::string("the least budget is ") + least);
      ASSERT_NE(at, std::string::npos) << w;
      EXPECT_NE(w.find("every layer at k2v2"), std::string::npos) << w;
      // the budget named passes
      const std::string named = w.substr(at + 20, w.find(' ', at + 20) - at - 20);
      std::string again = spec;
      const size_t key = again.find(named.substr(0, named.find('=') + 1));
      again.replace(key, again.find(':', key) - key, named);
      EXPECT_NO_THROW(check_auto_kv_budget(parse_auto_kv(again), c)) << again;
    }
  }
  EXPECT_NO_THROW(check_auto_kv_budget(parse_auto_kv("auto:bits=2.25:calib=x"), c));
}

// mem= on a model with sliding-window layers: those the engine keeps in window rings hold the
// ring's positions whatever the context, so a budget that would not hold every layer at the whole
// context is met, and the cheap ring layers are widened first; with --swa-full (rings off) every
// layer counts at the whole context, as tq kv-size counts it.
TEST(AutoKv, MemCountsSlidingWindowLayersAtTheirRing) {
  model::ModelConfig c;  // Gemma-3-270M's shape: 18 layers, every 6th global, window 512
  c.n_layers = 18;
  c.n_kv_heads = 1;
  c.head_dim = 256;
  c.sliding_window = 512;
  c.swa_pattern = 6;
  Sensitivity s{{3}, {2}, {{}}, {{}}};
  for (int l = 0; l < 18; ++l) s.k[0].push_back(0.01), s.v[0].push_back(0.01);
  const uint32_t ctx = 32768;
  // k2v2 everywhere at the whole context: 18 layers x 256 x 2 x 2.125 bits (norms) / 8 per token.
  const double k2v2_all = 18 * 256 * 2 * (2 + 16.0 / 256) / 8 * ctx;
  const double budget = 0.25 * k2v2_all;  // a quarter of the narrowest whole-context count
  const std::string spec = fmt::format("auto:mem={}:context={}:calib=x", uint64_t(budget), ctx);
  AutoKvRequest full = parse_auto_kv(spec);
  full.rings = false;
  EXPECT_THROW(check_auto_kv_budget(full, c), Error);
  const AutoKvRequest r = parse_auto_kv(spec);  // rings: 15 layers hold 800 positions, not 32768
  const AutoKvChoice ch = choose_auto_kv(r, c, s);
  // Equal sensitivities: the ring layers, cheap to widen, are at least as wide as the global ones,
  // and wider than k2v2.
  uint32_t local_min = 99, global_max = 0;
  for (uint32_t l = 0; l < 18; ++l) {
    const KvFormat f = ch.spec.layer_format(l, 18);
    const uint32_t bits = f.k.bits + f.v.bits;
    if (c.layer_is_local(int(l)))
      local_min = std::min(local_min, bits);
    else
      global_max = std::max(global_max, bits);
  }
  EXPECT_GE(local_min, global_max) << ch.spec.canonical() << "\n" << ch.report;
  EXPECT_GT(local_min, 4u) << ch.spec.canonical() << "\n" << ch.report;
  EXPECT_NE(ch.report.find("15 sliding-window layers at their window ring"), std::string::npos) << ch.report;
  // What it chose fits: the global layers at the context, the others at their ring.
  const WindowRing ring = WindowRing::make(512, ctx, kRingStep, 16, true);
  ASSERT_TRUE(ring.on());
  // A spec's bytes of one sequence: the global layers at `global` positions, the others at
  // `copies` of their ring.
  const auto held_of = [&](const KvSpec& spec, double copies, double global) {
    double b = 0;
    for (uint32_t l = 0; l < 18; ++l) {
      const KvFormat f = spec.layer_format(l, 18);
      b += double(bytes_per_token_head(f.k, f.v, 256, 16)) * (c.layer_is_local(int(l)) ? copies * ring.pages * 16.0 : global);
    }
    return b;
  };
  const double held = held_of(ch.spec, 1, ctx);
  EXPECT_LE(held, budget) << ch.spec.canonical();
  EXPECT_GT(held, 0.8 * budget) << ch.spec.canonical();  // and the budget is used
  // tq serve's prefix tails: a slot a sequence, each a copy of its rings, counted too.
  AutoKvRequest tails = r;
  tails.tail_copies = 1;
  const AutoKvChoice cht = choose_auto_kv(tails, c, s);
  EXPECT_LE(held_of(cht.spec, 2, ctx), budget) << cht.spec.canonical();
  EXPECT_NE(cht.report.find("(2 copies with the prefix tails)"), std::string::npos) << cht.report;
  // ... which is what the CPU engine's store keeps for a sequence: its rings and a tail slot's copy.
  cpu::KvShape shape{.layers = 18, .kv_heads = 1, .head_dim = 256, .num_pages = 1, .max_chunk = 256, .tails = 1,
                     .sliding = c.local_layers(), .sliding_window = 512, .ring = ring, .max_seqs = 1};
  const cpu::KvStore store(shape, cht.spec);
  // the budget's ring bytes of one sequence, tails included (no global layer counted)
  EXPECT_EQ(double(store.ring_bytes() + store.tail_bytes()), held_of(cht.spec, 2, 0)) << cht.spec.canonical();
  // The side rows an engine keeps beyond sink + window (a CPU chunk of 256, as the store below
  // keeps, and a page for the tails, where kv-size counts 64): the budget pays the store's side
  // bytes exactly.
  AutoKvRequest chunked = parse_auto_kv(fmt::format("auto:mem={}:context={}:calib=x:sink=4:window=64", uint64_t(budget) + (8u << 20), ctx));
  chunked.side_extra = 256 + 16;
  chunked.tail_copies = 1;
  const AutoKvChoice chc = choose_auto_kv(chunked, c, s);
  const cpu::KvStore side_store(shape, chc.spec);
  const double side_held = double(side_store.side_bytes() + side_store.tail_bytes() - side_store.ring_bytes());  // + a tail's side rows
  EXPECT_NE(chc.report.find(fmt::format("after {:.2f} MiB of side buffer", side_held / 1048576.0)),
            std::string::npos)
      << chc.report;
  // A context= shorter than the ring still counts the ring an engine of a longer context makes.
  const AutoKvRequest short_ctx = parse_auto_kv(fmt::format("auto:mem={}:context=256:calib=x", uint64_t(budget)));
  EXPECT_NE(choose_auto_kv(short_ctx, c, s).report.find(fmt::format("window ring of {} positions", ring.pages * 16)), std::string::npos);
}

// Keys are probed at 2 and 3 bits: a width takes the widest probe at or below it, so 2-bit keys are
// costed from their own probe, not from the 3-bit one scaled up (which underestimates them).
TEST(AutoKv, NarrowKeysCostTheirOwnProbe) {
  model::ModelConfig c;
  c.n_layers = 30;
  c.n_kv_heads = 3;
  c.head_dim = 64;
  Sensitivity s{{2, 3}, {2}, {{}, {}}, {{}}};
  for (int l = 0; l < 30; ++l) {
    s.k[0].push_back(0.05);                    // K at 2 bits: far worse than 3.4x the 3-bit KL
    s.k[1].push_back(0.001);                   // K at 3 bits
    s.v[0].push_back(l < 10 ? 0.02 : 0.0005);  // V at 2 bits: layers 0..9 sensitive
  }
  const AutoKvChoice ch = choose_auto_kv(parse_auto_kv("auto:bits=2.75:calib=x"), c, s);
  for (uint32_t l = 0; l < 30; ++l) EXPECT_GE(ch.spec.layer_format(l, 30).k.bits, 3) << ch.spec.canonical() << "\n" << ch.report;
  // With only the 3-bit probe, 2-bit keys look cheap (0.001 x D(2)/D(3)), and the V-sensitive layers
  // trade a key bit for a value bit (k2v3, the size of k3v2).
  Sensitivity one{{3}, {2}, {s.k[1]}, {s.v[0]}};
  const AutoKvChoice ch1 = choose_auto_kv(parse_auto_kv("auto:bits=2.75:calib=x"), c, one);
  bool k2 = false;
  for (uint32_t l = 0; l < 30; ++l) k2 |= ch1.spec.layer_format(l, 30).k.bits == 2;
  EXPECT_TRUE(k2) << ch1.spec.canonical();
}

// End to end on a real (tiny) model: calibrate, choose, and run the chosen spec.
TEST(AutoKv, CalibratesAndRunsOnStories) {
  REQUIRE_STORIES();
  const auto& st = *tq::testing::stories();
  const std::vector<int> tokens = st.tok->encode(
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, "
      "she saw a big red ball under a tree. She ran to get it, but a dog took it first.",
      true);
  ASSERT_GE(tokens.size(), 32u);
  // Head dim 8 pads to 32 coordinates and carries two fp16 norms per 16 elements: k2v2 is 10 bits per
  // element there, k3v2 12.
  const AutoKvRequest r = parse_auto_kv("auto:bits=12:calib=text:widths=2-4");
  const AutoKvChoice ch = resolve_auto_kv(r, st.m, tokens, 1);
  const uint32_t L = uint32_t(st.m.config.n_layers);
  const KvSize z = kv_size(ch.spec, L, uint32_t(st.m.config.n_kv_heads), uint32_t(st.m.config.head_dim));
  EXPECT_LE(z.bits_per_element, 12 + 1e-9) << ch.report;
  EXPECT_GE(z.bits_per_element, 11) << ch.report;
  EXPECT_NE(ch.report.find("calibrated on the first"), std::string::npos);
  // Every layer was measured: one line per layer in the report.
  for (uint32_t l = 0; l < L; ++l) EXPECT_NE(ch.report.find(fmt::format("\n  {:5}  0.", l)), std::string::npos) << ch.report;
  // The chosen spec runs, and its cache holds what kv_size says.
  PerplexityOptions po;
  po.ctx = 64;
  const PerplexityResult res = evaluate_perplexity(st.m, tokens, {ch.spec}, po);
  ASSERT_EQ(res.rows.size(), 1u);
  EXPECT_TRUE(std::isfinite(res.rows[0].ppl));
  EXPECT_NEAR(res.rows[0].bits_per_element, z.bits_per_element, 1e-9);
}

// A layer set and the edge= form of the same layers are one cache: bit-identical logits.
TEST(AutoKv, LayerSetRunsAsEdge) {
  REQUIRE_STORIES();
  const auto& st = *tq::testing::stories();
  const uint32_t L = uint32_t(st.m.config.n_layers);
  const std::vector<int> tokens = st.tok->encode("Once upon a time, there was a little dog. He liked to run and jump in the sun.", true);
  const KvSpec a = parse_kv_spec("k2v2:edge=1/k4v3:sink=1:window=4"),
               b = parse_kv_spec(fmt::format("k2v2:layers=0+{}/k4v3:sink=1:window=4", L - 1));
  const auto logits = [&](const KvSpec& s) {
    Engine e(st.m, s, {.threads = 1, .context = 64});
    const int seq = e.add_sequence();
    return e.forward({BatchItem{seq, tokens, true}});
  };
  EXPECT_EQ(logits(a), logits(b));
  // A set that is not an edge pattern runs, and differs from plain k2v2.
  const KvSpec c = parse_kv_spec("k2v2:layers=1+3/k4v3:sink=1:window=4");
  EXPECT_NE(logits(c), logits(parse_kv_spec("k2v2:sink=1:window=4")));
}

}  // namespace
}  // namespace tq::engine
