#include "tq/kv/spec.h"

#include <fmt/format.h>

#include <algorithm>
#include <bitset>
#include <optional>
#include <tuple>
#include <utility>

#include "tq/check.h"
#include "tq/codec/turboquant.h"
#include "tq/text.h"

namespace tq {
namespace {

uint64_t uint_of(const std::string& s, const std::string& what, const std::string& spec) {
  const std::optional<uint64_t> v = parse_uint(s);
  TQ_CHECK(v.has_value(), "KV spec '{}': {} must be a non-negative integer, got '{}'", spec, what, s);
  return *v;
}

// A TurboQuant width: "N" (1..8 bits, MSE), "N.5" (1.5..7.5: the paper's outlier split, kTqSplit
// with bits = N) or "Nt" (1t..7t: trellis-coded, kTqTcq).
TensorCode parse_width(const std::string& w, const char* which, const std::string& text) {
  const size_t t = w.find('t');
  if (t != std::string::npos) {
    const std::optional<uint64_t> n = t + 1 == w.size() ? parse_uint(w.substr(0, t)) : std::nullopt;
    TQ_CHECK(n.has_value(), "KV spec '{}': a trellis-coded {} width is a whole number and a 't' (3t), got '{}'", text, which, w);
    const uint64_t b = *n;
    TQ_CHECK(b >= 1 && b <= 7, "KV spec '{}': a trellis-coded {} width must be 1t..7t (its levels come from the codebook one bit wider), got '{}'",
             text, which, w);
    return TensorCode{Encoding::kTqTcq, uint8_t(b)};
  }
  const size_t dot = w.find('.');
  if (dot == std::string::npos) {
    const uint64_t b = uint_of(w, fmt::format("the {} width", which), text);
    TQ_CHECK(b >= 1 && b <= 8, "KV spec '{}': {} width must be 1..8 bits, got {}", text, which, b);
    return TensorCode{Encoding::kTqMse, uint8_t(b)};
  }
  TQ_CHECK(w.substr(dot) == ".5", "KV spec '{}': a fractional {} width is a whole number and a half (2.5, 3.5), got '{}'", text, which, w);
  const uint64_t b = uint_of(w.substr(0, dot), fmt::format("the {} width", which), text);
  TQ_CHECK(b >= 1 && b <= 7, "KV spec '{}': a fractional {} width must be 1.5..7.5 bits (outliers at one bit more than the rest, at most 8), got {}",
           text, which, w);
  return TensorCode{Encoding::kTqSplit, uint8_t(b)};
}

// fp32 | fp16 | bf16 | fp8 | k<W>v<W>: the K and V codes of a base (TurboQuant as MSE, or split at N.5).
std::pair<TensorCode, TensorCode> parse_base(const std::string& base, const std::string& text) {
  TQ_CHECK(!base.empty(), "empty KV spec '{}': expected fp32, fp16, bf16, fp8 or k<N>v<M> such as k3v2", text);
  if (base == "fp32" || base == "fp16" || base == "bf16" || base == "fp8") {
    const Encoding e = base == "fp32" ? Encoding::kFp32 : base == "fp16" ? Encoding::kFp16 : base == "bf16" ? Encoding::kBf16 : Encoding::kFp8E4M3;
    const TensorCode c{e, uint8_t(8 * float_bytes(e))};
    return {c, c};
  }
  const size_t vpos = base.find('v');
  TQ_CHECK(base[0] == 'k' && vpos != std::string::npos && vpos > 1 && vpos + 1 < base.size(),
           "unknown KV spec '{}': expected fp32, fp16, bf16, fp8 or k<N>v<M> such as k3v2, k3.5v2.5 or k3tv2t", text);
  return {parse_width(base.substr(1, vpos - 1), "K", text), parse_width(base.substr(vpos + 1), "V", text)};
}

std::string width_name(TensorCode c) {
  return c.enc == Encoding::kTqSplit ? fmt::format("{}.5", c.bits) : c.enc == Encoding::kTqTcq ? fmt::format("{}t", c.bits) : fmt::format("{}", c.bits);
}

std::string base_name(TensorCode k, TensorCode v) {
  if (!is_tq(k.enc))
    return k.enc == Encoding::kFp32 ? "fp32" : k.enc == Encoding::kFp16 ? "fp16" : k.enc == Encoding::kBf16 ? "bf16" : "fp8";
  return fmt::format("k{}v{}", width_name(k), width_name(v));
}

// "0-1+5+29": '+'-separated layer numbers and ranges a-b, sorted and distinct on return. ('+', not
// ',': a comma separates the specs of a list.)
std::vector<uint32_t> parse_layer_set(const std::string& set, const std::string& text) {
  std::bitset<1024> named;  // a duplicate is refused as it comes (a long spec of repeated ranges grew a list of GBs)
  for (const std::string& item : split(set, '+')) {
    const size_t dash = item.find('-');
    TQ_CHECK(dash == std::string::npos || (dash > 0 && dash + 1 < item.size() && item.find('-', dash + 1) == std::string::npos),
             "KV spec '{}': layers= item '{}' is neither a layer number nor a range a-b of them", text, item);
    const std::string a = item.substr(0, dash), b = dash == std::string::npos ? a : item.substr(dash + 1);
    const uint64_t lo = uint_of(a, "a layer of layers=", text), hi = uint_of(b, "a layer of layers=", text);
    TQ_CHECK(lo <= hi, "KV spec '{}': layers= range '{}' runs backwards", text, item);
    TQ_CHECK(hi < 1024, "KV spec '{}': layers= names layer {}, beyond the 1024 a model may have", text, hi);
    for (uint64_t l = lo; l <= hi; ++l) {
      TQ_CHECK(!named[l], "KV spec '{}': layers= names layer {} twice", text, l);
      named[l] = true;
    }
  }
  std::vector<uint32_t> out;
  for (uint32_t l = 0; l < 1024; ++l)
    if (named[l]) out.push_back(l);
  return out;
}

// The canonical form of a layer set: ascending, consecutive runs of 2+ as ranges ("0-1+5+28-29").
std::string layer_set_name(const std::vector<uint32_t>& set) {
  std::string s;
  for (size_t i = 0; i < set.size();) {
    size_t j = i;
    while (j + 1 < set.size() && set[j + 1] == set[j] + 1) ++j;
    if (!s.empty()) s += '+';
    s += j == i ? fmt::format("{}", set[i]) : fmt::format("{}-{}", set[i], set[j]);
    i = j + 1;
  }
  return s;
}

}  // namespace

RotationKind KvFormat::rotation_for(uint32_t head_dim, bool split) const {
  if (!auto_rotation) return rotation;
  return hadamard_fits(head_dim, split) ? RotationKind::kHadamard : RotationKind::kDense;
}

size_t KvSpec::layer_page_bytes(uint32_t layer, uint32_t n_layers, uint32_t kv_heads, uint32_t head_dim) const {
  const KvFormat f = layer_format(layer, n_layers);
  return size_t(block_layout(f.k, f.v, head_dim, f.page_size).bytes) * kv_heads;
}

size_t KvSpec::page_bytes(uint32_t n_layers, uint32_t kv_heads, uint32_t head_dim) const {
  // The bounds kv_size and CacheFormat hold models to (a layer count of 2^32 - 1 looped for minutes).
  TQ_CHECK(n_layers >= 1 && n_layers <= 1024 && kv_heads >= 1 && kv_heads <= 1024 && head_dim >= 1 && head_dim <= kMaxHeadDim,
           "KV spec '{}': a page of {} layers x {} KV heads x head dim {} is outside 1..1024 x 1..1024 x 1..{}", text, n_layers, kv_heads,
           head_dim, kMaxHeadDim);
  size_t b = 0;
  for (uint32_t l = 0; l < n_layers; ++l) b += layer_page_bytes(l, n_layers, kv_heads, head_dim);
  return b;
}

double KvFormat::bits_per_element(uint32_t head_dim) const {
  return 8.0 * bytes_per_token_head(k, v, head_dim, page_size) / (2.0 * head_dim);
}

std::string KvFormat::canonical() const {
  std::string s = base_name(k, v);
  if (is_tq(k.enc)) {
    if (k.enc == Encoding::kTqProd) s += ":prod";
    if (norm_correction) s += ":nc";
    if (norm_unbiased_k || norm_unbiased_v)
      s += norm_unbiased_local ? ":ip=local" : norm_unbiased_k && norm_unbiased_v ? ":ip" : norm_unbiased_k ? ":ip=k" : ":ip=v";
    if (!auto_rotation) s += fmt::format(":rot={}", rotation_name(rotation));
  }
  // a seed names other rotations, so other bytes: kept wherever a spec travels as its canonical text
  if ((is_tq(k.enc) || is_tq(v.enc)) && seed != KvFormat{}.seed) s += fmt::format(":seed={}", seed);
  if (page_size != 16) s += fmt::format(":page={}", page_size);
  return s;
}

std::vector<std::string> KvPolicy::knobs() const {
  std::vector<std::string> out;
  if (edge_layers > 0) out.push_back(fmt::format("edge={}/{}", edge_layers, base_name(edge_k, edge_v)));
  if (!layer_set.empty()) out.push_back(fmt::format("layers={}/{}", layer_set_name(layer_set), base_name(edge_k, edge_v)));
  if (sink > 0) out.push_back(fmt::format("sink={}", sink));
  if (window > 0) out.push_back(fmt::format("window={}", window));
  if (!key_sim.empty()) out.push_back(fmt::format("ksim={}", key_sim));
  if (fixed_outliers) out.push_back("outliers=fixed");
  if (key_centre) out.push_back("centre");
  return out;
}

bool KvSpec::is_edge_layer(uint32_t layer, uint32_t n_layers) const {
  const std::vector<uint32_t>& set = policy.layer_set;
  if (!set.empty()) return std::binary_search(set.begin(), set.end(), layer);
  const uint32_t e = policy.edge_layers;
  return e > 0 && (layer < e || layer + e >= n_layers);
}

uint32_t KvSpec::edge_layer_count(uint32_t n_layers) const {
  const std::vector<uint32_t>& set = policy.layer_set;
  if (!set.empty()) {
    TQ_CHECK(set.back() < n_layers, "KV spec '{}': layers= names layer {}, but the model has {} layers (0..{})", text, set.back(), n_layers,
             n_layers - 1);
    return uint32_t(set.size());
  }
  // The first and last e layers: every layer of a model of fewer than 2e (the default's edge=2 on a
  // toy model of 2 or 3 layers), each once.
  return std::min(2 * policy.edge_layers, n_layers);
}

uint32_t KvSpec::local_layer(uint32_t layer, uint32_t n_layers) const {
  const std::vector<uint32_t>& set = policy.layer_set;
  if (!set.empty()) {
    edge_layer_count(n_layers);  // the same refusal as the edge= form
    // Edge layers below this one: its index in the edge cache, or what the main cache skips.
    const uint32_t below = uint32_t(std::lower_bound(set.begin(), set.end(), layer) - set.begin());
    return is_edge_layer(layer, n_layers) ? below : layer - below;
  }
  const uint32_t e = policy.edge_layers, n_edge = edge_layer_count(n_layers);
  if (!is_edge_layer(layer, n_layers)) return layer - e;  // the middle layers, in order
  return layer < e ? layer : layer - (n_layers - n_edge);  // the first e, then the last e
}

KvFormat KvSpec::edge_format() const {
  KvFormat f = format;
  f.k = policy.edge_k;
  f.v = policy.edge_v;
  return f;
}

std::vector<bool> KvSpec::cache_layers(const std::vector<bool>& per_layer, bool edge) const {
  const uint32_t n = uint32_t(per_layer.size());
  std::vector<bool> out;
  for (uint32_t l = 0; l < n; ++l)
    if (is_edge_layer(l, n) == edge) out.push_back(per_layer[l]);
  return out;
}

KvFormat KvSpec::layer_format(uint32_t layer, uint32_t n_layers) const {
  return is_edge_layer(layer, n_layers) ? edge_format() : format;
}

std::string KvSpec::canonical() const {
  std::string s = format.canonical();
  // A float base with TurboQuant edge layers: the seed is theirs (format.canonical() writes it
  // only for a TurboQuant base)
  const bool edges = policy.edge_layers > 0 || !policy.layer_set.empty();
  if (!is_tq(format.k.enc) && !is_tq(format.v.enc) && edges && (is_tq(policy.edge_k.enc) || is_tq(policy.edge_v.enc)) &&
      format.seed != KvFormat{}.seed)
    s += fmt::format(":seed={}", format.seed);
  for (const std::string& k : policy.knobs()) s += ":" + k;
  return s;
}

void refuse_policy(const KvSpec& spec, const char* who) {
  const auto knobs = spec.policy.knobs();
  if (knobs.empty()) return;
  throw Error(fmt::format("KV spec '{}': {} implements the page format only, not the policy knob '{}' (edge, layers, sink, window, "
                          "ksim and centre are the engine's: run the spec through the engine, or pass '{}')",
                          spec.text, who, knobs[0], spec.format.canonical()));
}

std::string gpu_kernels_unsupported(TensorCode k, TensorCode v, uint32_t head_dim) {
  if (k.enc == Encoding::kTqSplit || v.enc == Encoding::kTqSplit)
    return fmt::format("fractional widths (K {}, V {} bits: the outlier split) have no GPU kernel yet; run them on the CPU (--device cpu)",
                       width_name(k), width_name(v));
  // Trellis-coded rows are read as (b + 1)-bit rows of union indices (src/cuda/widths.h): kernels
  // for K and V both trellis-coded, each 2 or 3 bits (unions of 8 and 16 levels).
  if ((k.enc == Encoding::kTqTcq) != (v.enc == Encoding::kTqTcq))
    return fmt::format("trellis-coded K or V alone (K {}, V {} bits) has no GPU kernel; the GPU's kernels take both trellis-coded "
                       "(e.g. k3tv2t) or neither; run it on the CPU (--device cpu)",
                       width_name(k), width_name(v));
  if (k.enc == Encoding::kTqTcq && (k.bits < 2 || k.bits > 3 || v.bits < 2 || v.bits > 3))
    return fmt::format("trellis-coded widths have GPU kernels for K and V of 2t and 3t bits, got K {}, V {}; run it on the CPU "
                       "(--device cpu)",
                       width_name(k), width_name(v));
  if (k.enc == Encoding::kTqProd) return "prod keys have no GPU kernel yet (use MSE keys, e.g. k3v2)";
  if (k.enc == Encoding::kFp32 || v.enc == Encoding::kFp32) return "fp32 caches have no GPU kernel (use fp16/bf16)";
  if (is_tq(k.enc) != is_tq(v.enc) || (!is_tq(k.enc) && k.enc != v.enc)) return "K and V must both be TurboQuant or the same float encoding";
  if (is_tq(k.enc) && (k.bits < 2 || k.bits > 4 || v.bits < 2 || v.bits > 4))
    return fmt::format("this build has kernels for K and V widths 2..4 bits, got k{}v{}", k.bits, v.bits);
  // The head dim the kernels run at: TurboQuant rows are padded (e.g. 112 -> 128), float rows not.
  const uint32_t d = is_tq(k.enc) ? padded_dim(head_dim) : head_dim;
  if (d != 64 && d != 128 && d != 256) return fmt::format("head dim {} (padded {}) has no kernel; supported: 64, 128, 256", head_dim, d);
  return "";
}

KvSpec parse_kv_spec(const std::string& text) {
  // A message quoting the text would end at the NUL (C strings on the way to Python or a C caller).
  TQ_CHECK(text.find('\0') == std::string::npos, "a KV spec cannot hold a NUL byte (at offset {} of '{}')", text.find('\0'),
           text.substr(0, text.find('\0')));
  if (text == "default") return parse_kv_spec(kDefaultKvSpec);  // tq run --kv default, as in a list
  KvSpec spec;
  spec.text = text;
  const auto parts = split(text, ':');
  TQ_CHECK(parts[0] != "auto",
           "KV spec '{}': an automatic spec is resolved against a model, by a calibration pass, in tq run, tq perplexity and tq serve "
           "(--kv auto:bits=3.0:calib=FILE); here pass a concrete spec such as k3v2:layers=0-1+29/k4v4",
           text);
  std::tie(spec.format.k, spec.format.v) = parse_base(parts[0], text);
  std::vector<std::string> seen;  // option keys so far: a second one would silently override the first
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& opt = parts[i];
    const size_t eq = opt.find('=');
    const std::string key = opt.substr(0, eq), val = eq == std::string::npos ? "" : opt.substr(eq + 1);
    const std::string name = key == "center" ? "centre" : key;
    TQ_CHECK(std::find(seen.begin(), seen.end(), name) == seen.end(), "KV spec '{}': option '{}' is given twice", text, key);
    seen.push_back(name);
    const bool tqspec = is_tq(spec.format.k.enc);
    if (key == "prod" && eq == std::string::npos) {
      TQ_CHECK(tqspec, "KV spec '{}': option 'prod' applies to TurboQuant specs (k<N>v<M>) only", text);
      TQ_CHECK(spec.format.k.enc == Encoding::kTqMse, "KV spec '{}': option 'prod' needs a plain whole K width (k3v2:prod), not k{}", text,
               width_name(spec.format.k));
      spec.format.k.enc = Encoding::kTqProd;
    } else if (key == "nc" && eq == std::string::npos) {
      TQ_CHECK(tqspec, "KV spec '{}': option 'nc' applies to TurboQuant specs (k<N>v<M>) only", text);
      TQ_CHECK(!spec.format.norm_unbiased_k && !spec.format.norm_unbiased_v, "KV spec '{}': options 'nc' and 'ip' store the norm two ways: one at most",
               text);
      spec.format.norm_correction = true;
    } else if (key == "ip") {
      TQ_CHECK(tqspec, "KV spec '{}': option 'ip' applies to TurboQuant specs (k<N>v<M>) only", text);
      TQ_CHECK(!spec.format.norm_correction, "KV spec '{}': options 'nc' and 'ip' store the norm two ways: one at most", text);
      TQ_CHECK(eq == std::string::npos || val == "k" || val == "v" || val == "kv" || val == "local",
               "KV spec '{}': 'ip={}' is not a choice of rows: 'ip' or 'ip=kv' (keys and values), 'ip=k' (keys), 'ip=v' (values), "
               "'ip=local' (keys and values of sliding-window layers)",
               text, val);
      spec.format.norm_unbiased_k = val != "v";
      spec.format.norm_unbiased_v = val != "k";
      spec.format.norm_unbiased_local = val == "local";
    } else if (key == "rot" && eq != std::string::npos) {
      TQ_CHECK(tqspec, "KV spec '{}': option 'rot' applies to TurboQuant specs (k<N>v<M>) only", text);
      if (val == "auto") {
        spec.format.auto_rotation = true;
      } else {
        spec.format.auto_rotation = false;
        try {
          spec.format.rotation = parse_rotation(val);
        } catch (const Error& e) {
          throw Error(fmt::format("KV spec '{}': {} (or 'auto')", text, e.what()));
        }
      }
    } else if (key == "seed" && eq != std::string::npos) {
      spec.format.seed = uint_of(val, "seed", text);
    } else if (key == "page" && eq != std::string::npos) {
      const uint64_t p = uint_of(val, "page", text);
      TQ_CHECK(p >= 1 && p <= kMaxPageSize, "KV spec '{}': page size must be 1..{} tokens, got {}", text, kMaxPageSize, p);
      spec.format.page_size = uint32_t(p);
    } else if (key == "edge" && eq != std::string::npos) {
      const size_t slash = val.find('/');
      TQ_CHECK(slash != std::string::npos, "KV spec '{}': edge needs <layers>/<base>, e.g. edge=2/k4v4, got '{}'", text, opt);
      const uint64_t n = uint_of(val.substr(0, slash), "edge layers", text);
      TQ_CHECK(n >= 1 && n <= 1024, "KV spec '{}': edge layers must be 1..1024, got {}", text, n);
      TQ_CHECK(spec.policy.layer_set.empty(), "KV spec '{}': edge= and layers= both name the second format's layers; give one", text);
      spec.policy.edge_layers = uint32_t(n);
      std::tie(spec.policy.edge_k, spec.policy.edge_v) = parse_base(val.substr(slash + 1), text);
    } else if (key == "layers" && eq != std::string::npos) {
      const size_t slash = val.find('/');
      TQ_CHECK(slash != std::string::npos && slash > 0,
               "KV spec '{}': layers needs <set>/<base>, e.g. layers=0-1+5+29/k4v4 (layer numbers and ranges joined by '+'), got '{}'",
               text, opt);
      TQ_CHECK(spec.policy.edge_layers == 0, "KV spec '{}': edge= and layers= both name the second format's layers; give one", text);
      spec.policy.layer_set = parse_layer_set(val.substr(0, slash), text);
      std::tie(spec.policy.edge_k, spec.policy.edge_v) = parse_base(val.substr(slash + 1), text);
    } else if ((key == "sink" || key == "window") && eq != std::string::npos) {
      const uint64_t n = uint_of(val, key, text);
      TQ_CHECK(n <= 65536, "KV spec '{}': {} must be 0..65536 tokens, got {}", text, key, n);
      (key == "sink" ? spec.policy.sink : spec.policy.window) = uint32_t(n);
    } else if (key == "ksim" && eq != std::string::npos) {
      TQ_CHECK(val == "int4" || val == "int8" || val == "int2" || val == "q4_0",
               "KV spec '{}': ksim must be int4, int8, int2 or q4_0, got '{}'", text, val);
      TQ_CHECK(spec.format.k.enc == Encoding::kFp32 || spec.format.k.enc == Encoding::kFp16,
               "KV spec '{}': ksim (simulated key quantization) needs an fp32 or fp16 base", text);
      spec.policy.key_sim = val;
    } else if (key == "outliers" && eq != std::string::npos) {
      TQ_CHECK(val == "prompt" || val == "fixed", "KV spec '{}': outliers must be prompt or fixed, got '{}'", text, val);
      spec.policy.fixed_outliers = val == "fixed";
    } else if ((key == "centre" || key == "center") && eq == std::string::npos) {
      spec.policy.key_centre = true;
    } else {
      throw Error(fmt::format(
          "KV spec '{}': unknown option '{}' (known: prod, nc, ip[=k|v|kv|local], rot=auto|hadamard|dense, seed=N, page=N, edge=N/base, "
          "layers=0-1+5/base, sink=N, window=N, ksim=int4|int8|int2|q4_0, outliers=prompt|fixed, centre)",
          text, opt));
    }
  }
  // (edge layers' keys are their base's, MSE: ip=k applies to those)
  TQ_CHECK(!(spec.format.k.enc == Encoding::kTqProd && spec.format.norm_unbiased_k && !spec.format.norm_unbiased_v &&
             spec.policy.edge_layers == 0 && spec.policy.layer_set.empty()),
           "KV spec '{}': 'ip=k' does nothing to prod keys (their inner products are unbiased already); with prod, 'ip' and 'nc' "
           "apply to the values and to edge layers' keys",
           text);
  const auto split = [](TensorCode c) { return c.enc == Encoding::kTqSplit; };
  const bool outliers = std::find(seen.begin(), seen.end(), "outliers") != seen.end();
  TQ_CHECK(!outliers || split(spec.format.k) || split(spec.format.v) ||
               ((spec.policy.edge_layers || !spec.policy.layer_set.empty()) && (split(spec.policy.edge_k) || split(spec.policy.edge_v))),
           "KV spec '{}': outliers= applies to fractional widths (k2.5v2, k3.5v2.5, ...) only", text);
  return spec;
}

std::vector<KvSpec> parse_kv_specs(const std::string& list) {
  std::vector<KvSpec> out;
  for (const std::string& s : split(list, ',')) out.push_back(parse_kv_spec(s == "default" ? kDefaultKvSpec : s));
  return out;
}

}  // namespace tq
