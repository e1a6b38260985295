#include "tq/kv_spec.h"

#include <fmt/format.h>

#include <charconv>

#include "tq/common.h"

namespace tq {
namespace {

uint64_t parse_uint(const std::string& s, const std::string& what, const std::string& spec) {
  uint64_t v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  TQ_CHECK(ec == std::errc() && p == s.data() + s.size() && !s.empty(), "KV spec '{}': {} must be a non-negative integer, got '{}'", spec,
           what, s);
  return v;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || s[i] == sep) {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  return out;
}

}  // namespace

RotationKind KvSpec::rotation_for(uint32_t head_dim) const {
  if (!auto_rotation) return rotation;
  return is_pow2(padded_dim(head_dim)) ? RotationKind::kHadamard : RotationKind::kDense;
}

double KvSpec::bits_per_element(uint32_t head_dim) const {
  return 8.0 * bytes_per_token_head(k, v, head_dim, page_size) / (2.0 * head_dim);
}

std::string KvSpec::canonical() const {
  std::string s;
  if (!is_tq(k.enc)) {
    s = k.enc == Encoding::kFp32 ? "fp32" : k.enc == Encoding::kFp16 ? "fp16" : k.enc == Encoding::kBf16 ? "bf16" : "fp8";
  } else {
    s = fmt::format("k{}v{}", k.bits, v.bits);
    if (k.enc == Encoding::kTqProd) s += ":prod";
    if (norm_correction) s += ":nc";
    if (!auto_rotation) s += fmt::format(":rot={}", rotation_name(rotation));
  }
  if (page_size != 16) s += fmt::format(":page={}", page_size);
  return s;
}

KvSpec parse_kv_spec(const std::string& text) {
  KvSpec spec;
  spec.text = text;
  const auto parts = split(text, ':');
  const std::string& base = parts[0];
  TQ_CHECK(!base.empty(), "empty KV spec '{}': expected fp32, fp16, bf16, fp8 or k<N>v<M> such as k3v2", text);
  if (base == "fp32" || base == "fp16" || base == "bf16" || base == "fp8") {
    const Encoding e = base == "fp32" ? Encoding::kFp32 : base == "fp16" ? Encoding::kFp16 : base == "bf16" ? Encoding::kBf16 : Encoding::kFp8E4M3;
    spec.k = spec.v = TensorCode{e, uint8_t(8 * float_bytes(e))};
  } else {
    const size_t vpos = base.find('v');
    TQ_CHECK(base[0] == 'k' && vpos != std::string::npos && vpos > 1 && vpos + 1 < base.size(),
             "unknown KV spec '{}': expected fp32, fp16, bf16, fp8 or k<N>v<M> such as k3v2", text);
    const uint64_t kb = parse_uint(base.substr(1, vpos - 1), "the K width", text);
    const uint64_t vb = parse_uint(base.substr(vpos + 1), "the V width", text);
    TQ_CHECK(kb >= 1 && kb <= 8, "KV spec '{}': K width must be 1..8 bits, got {}", text, kb);
    TQ_CHECK(vb >= 1 && vb <= 8, "KV spec '{}': V width must be 1..8 bits, got {}", text, vb);
    spec.k = {Encoding::kTqMse, uint8_t(kb)};
    spec.v = {Encoding::kTqMse, uint8_t(vb)};
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& opt = parts[i];
    const size_t eq = opt.find('=');
    const std::string key = opt.substr(0, eq), val = eq == std::string::npos ? "" : opt.substr(eq + 1);
    const bool tqspec = is_tq(spec.k.enc);
    if (key == "prod" && eq == std::string::npos) {
      TQ_CHECK(tqspec, "KV spec '{}': option 'prod' applies to TurboQuant specs (k<N>v<M>) only", text);
      spec.k.enc = Encoding::kTqProd;
    } else if (key == "nc" && eq == std::string::npos) {
      TQ_CHECK(tqspec, "KV spec '{}': option 'nc' applies to TurboQuant specs (k<N>v<M>) only", text);
      spec.norm_correction = true;
    } else if (key == "rot" && eq != std::string::npos) {
      TQ_CHECK(tqspec, "KV spec '{}': option 'rot' applies to TurboQuant specs (k<N>v<M>) only", text);
      if (val == "auto") {
        spec.auto_rotation = true;
      } else {
        spec.auto_rotation = false;
        spec.rotation = parse_rotation(val);
      }
    } else if (key == "seed" && eq != std::string::npos) {
      spec.seed = parse_uint(val, "seed", text);
    } else if (key == "page" && eq != std::string::npos) {
      const uint64_t p = parse_uint(val, "page", text);
      TQ_CHECK(p >= 1 && p <= kMaxPageSize, "KV spec '{}': page size must be 1..{} tokens, got {}", text, kMaxPageSize, p);
      spec.page_size = uint32_t(p);
    } else {
      throw Error(fmt::format("KV spec '{}': unknown option '{}' (known: prod, nc, rot=auto|hadamard|dense, seed=N, page=N)", text, opt));
    }
  }
  return spec;
}

std::vector<KvSpec> parse_kv_specs(const std::string& list) {
  std::vector<KvSpec> out;
  for (const std::string& s : split(list, ',')) out.push_back(parse_kv_spec(s));
  return out;
}

}  // namespace tq
