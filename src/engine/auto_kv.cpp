#include "tq/engine/auto_kv.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <numeric>

#include "tq/check.h"
#include "tq/codec/codebook.h"
#include "tq/codec/distortion.h"
#include "tq/engine/eval.h"
#include "tq/format.h"
#include "tq/kv/kv_size.h"
#include "tq/kv/window_ring.h"
#include "tq/text.h"

namespace tq::engine {
namespace {

double double_of(const std::string& s, const std::string& what, const std::string& text) {
  char* end = nullptr;
  const double v = s.empty() ? NAN : std::strtod(s.c_str(), &end);
  TQ_CHECK(std::isfinite(v) && end && *end == '\0', "KV spec '{}': {} must be a number, got '{}'", text, what, s);
  return v;
}

uint64_t uint_of(const std::string& s, const std::string& what, const std::string& text) {
  const auto v = parse_uint(s);
  TQ_CHECK(v.has_value(), "KV spec '{}': {} must be a non-negative integer, got '{}'", text, what, s);
  return *v;
}

// "900M", "1G", "65536": bytes, K/M/G (optionally KiB/MiB/GiB) in powers of 1024.
uint64_t bytes_of(const std::string& s, const std::string& text) {
  std::string num = s, unit;
  while (!num.empty() && std::isalpha(static_cast<unsigned char>(num.back()))) {
    unit.insert(unit.begin(), num.back());
    num.pop_back();
  }
  const double v = double_of(num, "mem", text);
  const double scale = unit.empty() || unit == "B"    ? 1.0
                       : unit == "K" || unit == "KiB" ? 1024.0
                       : unit == "M" || unit == "MiB" ? 1024.0 * 1024
                       : unit == "G" || unit == "GiB" ? 1024.0 * 1024 * 1024
                                                      : 0.0;
  TQ_CHECK(scale > 0, "KV spec '{}': mem's unit must be K, M or G (KiB, MiB, GiB), got '{}'", text, unit);
  TQ_CHECK(v * scale >= 1 && v * scale < 1e15, "KV spec '{}': mem must be a size of 1 byte or more such as 900M, got '{}'", text, s);
  return uint64_t(v * scale);
}

std::string base_of(TensorCode k, TensorCode v) {
  const auto w = [](TensorCode c) { return fmt::format("{}{}", c.bits, c.enc == Encoding::kTqTcq ? "t" : ""); };
  return fmt::format("k{}v{}", w(k), w(v));
}

// The probe a width's cost is scaled from: the widest at or below it (scaling a larger error down),
// else the narrowest. widths: ascending.
size_t probe_for(const std::vector<uint32_t>& widths, uint32_t bits) {
  size_t p = 0;
  for (size_t i = 0; i < widths.size(); ++i)
    if (widths[i] <= bits) p = i;
  return p;
}

}  // namespace

bool is_auto_kv(const std::string& text) { return text == "auto" || text.rfind("auto:", 0) == 0; }

AutoKvRequest parse_auto_kv(const std::string& text) {
  TQ_CHECK(is_auto_kv(text), "KV spec '{}' is not an automatic spec (auto:bits=...)", text);
  AutoKvRequest r;
  r.text = text;
  const auto parts = split(text, ':');
  std::string rest;  // the options for the chosen spec
  bool widths_given = false;
  std::vector<std::string> seen;  // the budget's options: a second one would silently replace the first (the rest: parse_kv_spec)
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& opt = parts[i];
    const size_t eq = opt.find('=');
    const std::string key = opt.substr(0, eq), val = eq == std::string::npos ? "" : opt.substr(eq + 1);
    if (key == "bits" || key == "mem" || key == "context" || key == "calib" || key == "tokens" || key == "widths") {
      TQ_CHECK(std::find(seen.begin(), seen.end(), key) == seen.end(), "KV spec '{}': option '{}' is given twice", text, key);
      seen.push_back(key);
    }
    if (key == "bits" && eq != std::string::npos) {
      r.bits = double_of(val, "bits", text);
      TQ_CHECK(r.bits >= 1 && r.bits <= 16, "KV spec '{}': bits is an average over the pages, 1..16 bits per element, got {}", text, val);
    } else if (key == "mem" && eq != std::string::npos) {
      r.mem_bytes = bytes_of(val, text);
    } else if (key == "context" && eq != std::string::npos) {
      const uint64_t n = uint_of(val, "context", text);
      TQ_CHECK(n >= 1 && n <= (1u << 24), "KV spec '{}': context must be 1..{} tokens, got {}", text, 1u << 24, n);
      r.context = uint32_t(n);
    } else if (key == "calib" && eq != std::string::npos) {
      TQ_CHECK(!val.empty(), "KV spec '{}': calib needs a text file, calib=FILE", text);
      r.calib = val;
    } else if (key == "tokens" && eq != std::string::npos) {
      const uint64_t n = uint_of(val, "tokens", text);
      TQ_CHECK(n >= 16 && n <= 65536, "KV spec '{}': tokens (of the calibration text) must be 16..65536, got {}", text, n);
      r.tokens = uint32_t(n);
    } else if (key == "widths" && eq != std::string::npos) {
      const size_t dash = val.find('-');
      TQ_CHECK(dash != std::string::npos, "KV spec '{}': widths needs <a>-<b>, whole bits such as 2-5, got '{}'", text, val);
      const uint64_t a = uint_of(val.substr(0, dash), "widths", text), b = uint_of(val.substr(dash + 1), "widths", text);
      TQ_CHECK(a >= 1 && a <= b && b <= 8, "KV spec '{}': widths must be a-b with 1 <= a <= b <= 8, got '{}'", text, val);
      r.min_width = uint32_t(a);
      r.max_width = uint32_t(b);
      widths_given = true;
    } else if (key == "tcq" && eq == std::string::npos) {
      r.enc = Encoding::kTqTcq;
    } else {
      TQ_CHECK(key != "edge" && key != "layers" && key != "ksim" && key != "outliers" && key != "prod",
               "KV spec '{}': '{}' is not taken by an automatic spec: it chooses the layers' whole widths itself (keep to sink=, "
               "window=, centre, ip, page=, seed=, rot=, nc)",
               text, opt);
      rest += ":" + opt;
    }
  }
  try {
    r.knobs = parse_kv_spec("k3v2" + rest);
  } catch (const Error& e) {
    throw Error(fmt::format("KV spec '{}': {}", text, e.what()));
  }
  // The GPU's kernels read trellis-coded K and V of 2t and 3t (spec.cpp's gpu_kernels_unsupported).
  if (r.enc == Encoding::kTqTcq && !widths_given) r.max_width = 3, r.plain_too = true;
  TQ_CHECK(r.enc != Encoding::kTqTcq || r.max_width <= 7,
           "KV spec '{}': trellis-coded widths are 1..7 bits (tcq), got widths={}-{}", text, r.min_width, r.max_width);
  TQ_CHECK((r.bits > 0) != (r.mem_bytes > 0),
           "KV spec '{}': give one budget: bits=<average bits per element> (auto:bits=3.0) or mem=<size>:context=<tokens> "
           "(auto:mem=900M:context=32768)",
           text);
  TQ_CHECK(!r.mem_bytes || r.context, "KV spec '{}': mem= is the memory of one sequence of context=<tokens>: give context= too", text);
  TQ_CHECK(!r.context || r.mem_bytes, "KV spec '{}': context= goes with mem= (the budget), not bits=", text);
  TQ_CHECK(!r.calib.empty(),
           "KV spec '{}': needs calib=FILE, a text whose first tokens= tokens measure each layer's sensitivity (e.g. "
           "calib=../shared/data/text/emma.txt)",
           text);
  return r;
}

Allocation allocate_layers(const std::vector<std::vector<double>>& cost, const std::vector<double>& bytes, double budget,
                           const std::vector<double>& weights) {
  const size_t F = bytes.size();
  TQ_CHECK(F >= 1 && cost.size() == F, "allocate_layers: {} cost rows for {} formats", cost.size(), F);
  const size_t L = cost[0].size();
  TQ_CHECK(L >= 1, "allocate_layers: no layers");
  for (const auto& row : cost) TQ_CHECK(row.size() == L, "allocate_layers: cost rows of {} and {} layers", row.size(), L);
  TQ_CHECK(weights.empty() || weights.size() == L, "allocate_layers: {} weights for {} layers", weights.size(), L);
  const auto weight = [&](size_t l) { return weights.empty() ? 1.0 : weights[l]; };
  // Layers of equal weight cost the same to widen, so within such a class the best set is the
  // class's layers of largest gain: enumerating how many of each class is exact.
  std::vector<double> class_w;  // distinct weights
  std::vector<std::vector<uint32_t>> classes;
  for (uint32_t l = 0; l < L; ++l) {
    TQ_CHECK(weight(l) > 0 && std::isfinite(weight(l)), "allocate_layers: layer {} has weight {}", l, weight(l));
    const size_t c = size_t(std::find(class_w.begin(), class_w.end(), weight(l)) - class_w.begin());
    if (c == class_w.size()) class_w.push_back(weight(l)), classes.emplace_back();
    classes[c].push_back(l);
  }
  double combos = 1;
  for (const auto& cl : classes) combos *= double(cl.size() + 1);
  TQ_CHECK(combos <= 1e6, "allocate_layers: {} distinct layer weights are too many to enumerate", classes.size());
  double total_w = 0;
  for (uint32_t l = 0; l < L; ++l) total_w += weight(l);

  Allocation best;
  bool found = false;
  const auto better = [&](double c, double b) { return !found || c < best.cost || (c == best.cost && b < best.bytes); };
  for (size_t lo = 0; lo < F; ++lo) {
    const double base_bytes = bytes[lo] * total_w;
    if (base_bytes > budget) continue;  // even no layer high is too much
    const double base_cost = std::accumulate(cost[lo].begin(), cost[lo].end(), 0.0);
    if (better(base_cost, base_bytes)) {
      best = Allocation{lo, lo, {}, base_cost, base_bytes};
      found = true;
    }
    for (size_t hi = 0; hi < F; ++hi) {
      if (hi == lo || bytes[hi] < bytes[lo]) continue;
      const double extra = bytes[hi] - bytes[lo];
      const auto gain = [&](uint32_t l) { return cost[lo][l] - cost[hi][l]; };
      // Each class's layers of positive gain, largest first (ties to the lower layer).
      std::vector<std::vector<uint32_t>> order(classes.size());
      std::vector<std::vector<double>> prefix(classes.size());  // [class][i]: the gain of its first i
      for (size_t c = 0; c < classes.size(); ++c) {
        for (uint32_t l : classes[c])
          if (gain(l) > 0) order[c].push_back(l);
        std::stable_sort(order[c].begin(), order[c].end(), [&](uint32_t a, uint32_t b) { return gain(a) > gain(b); });
        prefix[c].push_back(0);
        for (uint32_t l : order[c]) prefix[c].push_back(prefix[c].back() + gain(l));
      }
      std::vector<size_t> k(classes.size(), 0), best_k;
      double best_c = base_cost, best_b = base_bytes;
      for (;;) {  // every count vector k[c] <= |order[c]|, mixed-radix
        double c = base_cost, b = base_bytes;
        size_t n = 0;
        for (size_t ci = 0; ci < classes.size(); ++ci) {
          c -= prefix[ci][k[ci]];
          b += extra * class_w[ci] * double(k[ci]);
          n += k[ci];
        }
        if (n > 0 && n < L && b <= budget * (1 + 1e-12) && (c < best_c || (c == best_c && b < best_b)))
          best_c = c, best_b = b, best_k = k;  // n == L: the high format alone, tried as such
        size_t ci = 0;
        while (ci < classes.size() && k[ci] == order[ci].size()) k[ci++] = 0;
        if (ci == classes.size()) break;
        ++k[ci];
      }
      if (best_k.empty() || !better(best_c, best_b)) continue;
      std::vector<uint32_t> set;
      for (size_t ci = 0; ci < classes.size(); ++ci) set.insert(set.end(), order[ci].begin(), order[ci].begin() + long(best_k[ci]));
      std::sort(set.begin(), set.end());
      best = Allocation{lo, hi, std::move(set), best_c, best_b};
    }
  }
  if (!found) {
    const double least = *std::min_element(bytes.begin(), bytes.end()) * total_w;
    throw Error(
        fmt::format("the budget of {:.1f} bytes per token is below the smallest choice, {:.1f} bytes per token (every layer "
                    "at the narrowest width): raise bits= or mem=, or lower widths=",
                    budget, least));
  }
  return best;
}

Sensitivity measure_sensitivity(const model::Model& m, const std::vector<int>& tokens, const KvSpec& knobs, unsigned threads,
                                Sensitivity widths, const std::function<void(size_t, size_t)>& progress) {
  const uint32_t L = uint32_t(m.config.n_layers);
  TQ_CHECK(widths.enc == Encoding::kTqMse || widths.enc == Encoding::kTqTcq, "sensitivity probes are TurboQuant-MSE or trellis-coded");
  for (const uint32_t b : widths.k_widths) TQ_CHECK(b < 8, "sensitivity probe widths are below 8 bits (the other tensor's), got {}", b);
  for (const uint32_t b : widths.v_widths) TQ_CHECK(b < 8, "sensitivity probe widths are below 8 bits (the other tensor's), got {}", b);
  Sensitivity s{widths.k_widths, widths.v_widths, {}, {}, widths.enc};
  // Probes [probe][layer], K probes first: layer l's keys at the probe's width (values at 8, nearly
  // exact), or its values (keys at 8); every other layer fp16, the knobs (sink, window, centre, ...)
  // as given.
  std::vector<KvSpec> probes;
  const auto add = [&](uint32_t kb, uint32_t vb) {
    for (uint32_t l = 0; l < L; ++l) {
      KvSpec p = knobs;
      p.format.k = p.format.v = TensorCode{Encoding::kFp16, 16};
      p.policy.layer_set = {l};
      p.policy.edge_k = TensorCode{kb == 8 ? Encoding::kTqMse : widths.enc, uint8_t(kb)};
      p.policy.edge_v = TensorCode{vb == 8 ? Encoding::kTqMse : widths.enc, uint8_t(vb)};
      p.text = p.canonical();
      probes.push_back(p);
    }
  };
  for (uint32_t b : s.k_widths) add(b, 8);
  for (uint32_t b : s.v_widths) add(8, b);
  PerplexityOptions po;
  po.ctx = uint32_t(tokens.size());  // one window: the whole calibration text
  po.threads = threads;
  po.device = Device::kCpu;
  po.exact_products = true;  // 8-bit activations would add their own KL (~0.0035 nats), more than a layer's
  const PerplexityResult res = evaluate_perplexity(m, tokens, probes, po, progress);
  size_t row = 0;
  for (auto* out : {&s.k, &s.v})
    for (size_t p = 0; p < (out == &s.k ? s.k_widths.size() : s.v_widths.size()); ++p) {
      out->emplace_back();
      for (uint32_t l = 0; l < L; ++l) out->back().push_back(res.rows[row++].kl);
    }
  return s;
}

namespace {
// What a request may spend: the candidate formats (every whole K and V width of widths=), each one's
// bytes per token over all layers, and the budget in the same unit. Known from the model's shape
// alone, before anything is measured.
struct Budget {
  std::vector<std::pair<TensorCode, TensorCode>> fmts;
  std::vector<double> layer_bytes;  // [format] per token, one layer's pages
  std::vector<double> weights;      // [layer] the positions it holds per position of the context (mem=: rings below 1)
  std::vector<double> bytes;        // [format] per token, all layers' pages, weighted
  double budget = 0;                // bytes per token
  double elems_bytes = 0;     // bytes per token at one bit per element
  double fixed = 0;           // mem=: the side buffer and key centre it pays first
  double tokens = 0;          // mem=: the context in whole pages
  std::string budget_is;
};

Budget budget_of(const AutoKvRequest& r, const model::ModelConfig& c) {
  const uint32_t L = uint32_t(c.n_layers), H = uint32_t(c.n_kv_heads), D = uint32_t(c.head_dim);
  const uint32_t page = r.knobs.format.page_size;
  Budget b;
  for (uint32_t kb = r.min_width; kb <= r.max_width; ++kb)
    for (uint32_t vb = r.min_width; vb <= r.max_width; ++vb)
      b.fmts.push_back({TensorCode{r.enc, uint8_t(kb)}, TensorCode{r.enc, uint8_t(vb)}});
  for (uint32_t kb = AutoKvRequest::kKernelMinWidth; kb <= AutoKvRequest::kKernelMaxWidth && r.plain_too; ++kb)
    for (uint32_t vb = AutoKvRequest::kKernelMinWidth; vb <= AutoKvRequest::kKernelMaxWidth; ++vb) b.fmts.push_back({TensorCode{Encoding::kTqMse, uint8_t(kb)}, TensorCode{Encoding::kTqMse, uint8_t(vb)}});
  b.elems_bytes = 2.0 * D * H * L / 8.0;
  b.weights.assign(L, 1.0);
  uint32_t ringed = 0;
  uint64_t ring_positions = 0;
  if (r.bits > 0) {
    b.budget = r.bits * b.elems_bytes;
    b.budget_is = fmt::format("{} bits per element", r.bits);
  } else {
    const KvSize ks = kv_size(r.knobs, L, H, D, r.side_extra);
    // The side rows and rings once for the sequence and once more in each of its prefix-tail slots
    // (a tail keeps the sink and window rows, not the chunk beyond: KvStore::side_tail_bytes).
    const double copies = 1 + std::max(0.0, r.tail_copies);
    const double tail_side = kv_size(r.knobs, L, H, D, 0).side_bytes;
    b.fixed = double(ks.side_bytes) + tail_side * (copies - 1) + double(ks.centre_bytes), b.tokens = std::ceil(double(r.context) / page) * page;
    // A sliding-window layer whose engine keeps it in window rings holds the ring's pages whatever
    // the context: counted at the largest ring an engine makes (sub-steps of kRingStep, a page for
    // prefix tails), whatever context= says, since an engine of a longer context makes that ring
    // for every sequence (and one whose context is shorter makes none: its layers hold less).
    for (uint32_t l = 0; l < L && r.rings; ++l) {
      const WindowRing ring = WindowRing::make(uint32_t(c.layer_window(int(l))), UINT32_MAX, kRingStep, page, true);
      if (ring.on()) b.weights[l] = double(ring.pages) * page * copies / b.tokens, ring_positions = uint64_t(ring.pages) * page, ++ringed;
    }
    b.budget = (double(r.mem_bytes) - b.fixed) / b.tokens;  // below 0 where mem= does not hold the side buffer
    // In bits per element where every layer holds the context; with rings, the rings' positions.
    b.budget_is = ringed ? fmt::format("{:.1f} MiB for {} tokens after {:.2f} MiB of side buffer and key centre, {} sliding-window "
                                       "layers at their window ring of {} positions{}",
                                       r.mem_bytes / 1048576.0, r.context, b.fixed / 1048576.0, ringed,
                                       ring_positions,
                                       copies > 1 ? fmt::format(" ({:g} copies with the prefix tails)", copies) : "")
                         : fmt::format("{:.1f} MiB for {} tokens: {:.3f} bits per element after {:.2f} MiB of side buffer and key centre",
                                       r.mem_bytes / 1048576.0, r.context, b.budget / b.elems_bytes, b.fixed / 1048576.0);
  }
  const double total_w = std::accumulate(b.weights.begin(), b.weights.end(), 0.0);
  for (const auto& [k, v] : b.fmts) {
    b.layer_bytes.push_back(double(bytes_per_token_head(k, v, D, page)) * H);
    b.bytes.push_back(b.layer_bytes.back() * total_w);
  }
  return b;
}

// Throws, naming the least budget, where even the narrowest format exceeds b.
void refuse_unmet(const AutoKvRequest& r, const Budget& b) {
  const size_t f = size_t(std::min_element(b.bytes.begin(), b.bytes.end()) - b.bytes.begin());
  if (b.bytes[f] <= b.budget) return;
  // Rounded up, so that the budget named is met (to the nearest, it could fall just short)
  const std::string least = r.bits > 0 ? fmt::format("bits={:.3f}", std::ceil(b.bytes[f] / b.elems_bytes * 1000 - 1e-9) / 1000)
                                       : fmt::format("mem={}K", uint64_t(std::ceil((b.fixed + b.bytes[f] * b.tokens) / 1024 - 1e-9)));
  throw Error(fmt::format("KV spec '{}' on this model: the budget ({}, {:.1f} bytes per token) is below the smallest choice, every "
                          "layer at {} ({:.1f} bytes per token); the least budget is {} (or lower widths=, now {}-{})",
                          r.text, b.budget_is, b.budget, base_of(b.fmts[f].first, b.fmts[f].second), b.bytes[f], least, r.min_width,
                          r.max_width));
}
}  // namespace

void check_auto_kv_budget(const AutoKvRequest& r, const model::ModelConfig& c) { refuse_unmet(r, budget_of(r, c)); }

AutoKvChoice choose_auto_kv(const AutoKvRequest& r, const model::ModelConfig& c, const Sensitivity& s) {
  const uint32_t L = uint32_t(c.n_layers), D = uint32_t(c.head_dim);
  TQ_CHECK(!s.k_widths.empty() && !s.v_widths.empty() && s.k.size() == s.k_widths.size() && s.v.size() == s.v_widths.size(),
           "sensitivity: {} K and {} V probe rows for {} and {} widths", s.k.size(), s.v.size(), s.k_widths.size(), s.v_widths.size());
  for (const auto* rows : {&s.k, &s.v})
    for (const auto& row : *rows) TQ_CHECK(row.size() == L, "sensitivity of {} layers for a model of {}", row.size(), L);
  const Budget bud = budget_of(r, c);
  refuse_unmet(r, bud);
  const auto& fmts = bud.fmts;
  TQ_CHECK(s.enc == r.enc, "KV spec '{}': the sensitivity was measured with {} probes, the request chooses {} widths", r.text,
           s.enc == Encoding::kTqTcq ? "trellis-coded" : "plain", r.enc == Encoding::kTqTcq ? "trellis-coded" : "plain");
  // The distortion per unit vector of each width and encoding; a layer's KL scales with it.
  const auto dist = [&](Encoding enc, uint32_t bits, bool value) {
    if (enc == Encoding::kTqTcq) return trellis_mse(padded_dim(D), bits);
    return (value_levels_uniform(value, {enc, uint8_t(bits)}) ? uniform_codebook(padded_dim(D), bits) : codebook(padded_dim(D), bits)).expected_mse;
  };
  std::vector<std::vector<double>> cost(fmts.size(), std::vector<double>(L));
  const std::vector<double>& bytes = bud.layer_bytes;  // [format] per token and layer
  for (size_t f = 0; f < fmts.size(); ++f) {
    const size_t pk = probe_for(s.k_widths, fmts[f].first.bits), pv = probe_for(s.v_widths, fmts[f].second.bits);
    const double rk = dist(fmts[f].first.enc, fmts[f].first.bits, false) / dist(s.enc, s.k_widths[pk], false);
    const double rv = dist(fmts[f].second.enc, fmts[f].second.bits, true) / dist(s.enc, s.v_widths[pv], true);
    for (uint32_t l = 0; l < L; ++l) cost[f][l] = s.k[pk][l] * rk + s.v[pv][l] * rv;
  }
  const double elems_bytes = bud.elems_bytes, budget = bud.budget;
  const std::string& budget_is = bud.budget_is;
  Allocation a;
  try {
    a = allocate_layers(cost, bytes, budget, bud.weights);
  } catch (const Error& e) {
    throw Error(fmt::format("KV spec '{}' on this model: {}", r.text, e.what()));
  }
  AutoKvChoice out;
  out.spec = r.knobs;
  out.spec.format.k = fmts[a.low].first;
  out.spec.format.v = fmts[a.low].second;
  if (!a.high_layers.empty()) {
    out.spec.policy.layer_set = a.high_layers;
    out.spec.policy.edge_k = fmts[a.high].first;
    out.spec.policy.edge_v = fmts[a.high].second;
  }
  out.spec = parse_kv_spec(out.spec.canonical());  // its text canonical, and the round trip checked

  // The report: each layer's sensitivity and format, then the alternatives the model rejected.
  std::string t = fmt::format(
      "{}: per-layer KL (nats) vs an fp32 cache when only that layer's keys (K<b>) or values (V<b>) are at b bits, the rest fp16:\n  layer",
      r.text);
  const char* tw = s.enc == Encoding::kTqTcq ? "t" : "";
  for (uint32_t b : s.k_widths) t += fmt::format("  {:>8}", fmt::format("K{}{}", b, tw));
  for (uint32_t b : s.v_widths) t += fmt::format("  {:>8}", fmt::format("V{}{}", b, tw));
  t += "  format  predicted KL\n";
  for (uint32_t l = 0; l < L; ++l) {
    const size_t f = out.spec.is_edge_layer(l, L) ? a.high : a.low;
    t += fmt::format("  {:5}", l);
    for (const auto* rows : {&s.k, &s.v})
      for (const auto& row : *rows) t += fmt::format("  {:.6f}", row[l]);
    t += fmt::format("  {:6}  {:.6f}\n", base_of(fmts[f].first, fmts[f].second), cost[f][l]);
  }
  double page_bytes = 0;  // per token, every layer at the whole context (tq kv-size's count)
  for (uint32_t l = 0; l < L; ++l) page_bytes += bytes[out.spec.is_edge_layer(l, L) ? a.high : a.low];
  const std::string held = bud.tokens > 0 ? fmt::format(", {:.2f} MiB for one sequence", (bud.fixed + a.bytes * bud.tokens) / 1048576.0) : "";
  t += fmt::format("  chose {}: {:.4f} bits per element{} (budget {}), predicted KL {:.5f} (the sum of the layers')\n", out.spec.canonical(),
                   page_bytes / elems_bytes, held, budget_is, a.cost);
  // The best single format within the budget, and the edge= layout of the same formats and count.
  double single = -1;
  size_t single_f = 0;
  for (size_t f = 0; f < fmts.size(); ++f) {
    const double c0 = std::accumulate(cost[f].begin(), cost[f].end(), 0.0);
    if (bud.bytes[f] <= budget && (single < 0 || c0 < single)) single = c0, single_f = f;
  }
  if (single >= 0)
    t += fmt::format("  one format for all layers: best {} ({:.4f} bits), predicted KL {:.5f}\n",
                     base_of(fmts[single_f].first, fmts[single_f].second), bytes[single_f] * L / elems_bytes, single);
  const size_t n = a.high_layers.size();
  if (n && n % 2 == 0 && n < L) {
    double ce = 0, be = 0;  // its cost and bytes (the same as the choice's unless layers weigh differently)
    for (uint32_t l = 0; l < L; ++l) {
      const size_t f = (l < n / 2 || l + n / 2 >= L) ? a.high : a.low;
      ce += cost[f][l], be += bytes[f] * bud.weights[l];
    }
    if (be <= budget * (1 + 1e-12))  // shown only where it is an alternative within the budget
      t += fmt::format("  the same formats as edge={}/{}: predicted KL {:.5f}\n", n / 2, base_of(fmts[a.high].first, fmts[a.high].second),
                       ce);
  }
  out.report = t;
  return out;
}

AutoKvChoice resolve_auto_kv(const AutoKvRequest& r, const model::Model& m, const std::vector<int>& tokens, unsigned threads,
                             const std::function<void(size_t, size_t)>& progress) {
  TQ_CHECK(tokens.size() >= 16, "KV spec '{}': the calibration text '{}' has {} tokens; it needs at least 16", r.text, r.calib,
           tokens.size());
  check_auto_kv_budget(r, m.config);  // before the calibration: whether a budget can be met is a matter of bytes
  Sensitivity widths;
  widths.enc = r.enc;
  const Sensitivity s = measure_sensitivity(m, tokens, r.knobs, threads, widths, progress);
  AutoKvChoice c = choose_auto_kv(r, m.config, s);
  c.report = fmt::format("calibrated on the first {} tokens of {}\n", tokens.size(), r.calib) + c.report;
  return c;
}

}  // namespace tq::engine
