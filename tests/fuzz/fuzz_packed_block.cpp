// libFuzzer harness: the packed paged-KV format (format.h) read from arbitrary bytes. The input
// names a format, which is validated as every entry point does (parse_kv_spec, then CacheFormat:
// widths, page size, head dim, rotation), and gives the bytes of one (layer, page, KV head) block
// in it; every row of the block is then decoded (PagedKvCache::read), scored against a query by
// each of the codec's paths (dot, dot_fast, decode_rotated + dot_decoded, accumulate_rotated and
// unrotate) and attended over (attention_reference). The bytes of a block are not checked when read -- any bit
// pattern is some codes, norms and floats -- so decoding them must never read outside the block,
// whatever NaN or infinity the norms hold.
// Input: "<kv spec>\n" (at most 64 bytes), one byte (head dim - 1, so 1..256), then the block's
// bytes (zero-padded or cut to the layout's size).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tq/common.h"
#include "tq/kv/attention_ref.h"
#include "tq/kv/cache_format.h"
#include "tq/kv/paged_cache.h"
#include "tq/kv/spec.h"

namespace {

// Building the codecs (rotations, codebooks) costs far more than decoding a block: keep the
// formats already built, as a long-running process would.
const tq::CacheFormat& format_for(const tq::KvFormat& f, uint32_t head_dim) {
  static std::map<std::pair<std::string, uint64_t>, std::unique_ptr<tq::CacheFormat>> cache;
  const auto key = std::make_pair(f.canonical(), (f.seed << 16) ^ head_dim);
  auto it = cache.find(key);
  if (it == cache.end()) {
    if (cache.size() > 256) cache.clear();
    it = cache.emplace(key, std::make_unique<tq::CacheFormat>(1, 1, head_dim, f)).first;
  }
  return *it->second;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* text = reinterpret_cast<const char*>(data);
  const void* nl = std::memchr(text, '\n', std::min<size_t>(size, 65));
  if (!nl) return 0;
  const size_t spec_len = size_t(static_cast<const char*>(nl) - text);
  if (spec_len + 2 > size) return 0;
  const uint32_t head_dim = 1u + data[spec_len + 1];
  const uint8_t* bytes = data + spec_len + 2;
  const size_t n_bytes = size - spec_len - 2;

  const tq::CacheFormat* fmt;
  try {
    const tq::KvSpec spec = tq::parse_kv_spec(std::string(text, spec_len));
    fmt = &format_for(spec.format, head_dim);
  } catch (const tq::Error&) {
    return 0;
  }
  tq::PagedKvCache cache(*fmt, 1);
  const tq::BlockLayout& L = cache.layout();
  uint8_t* block = cache.block(0, 0, 0);
  std::memcpy(block, bytes, std::min<size_t>(n_bytes, L.bytes));

  const tq::TurboQuant* kc = fmt->k_codec(0, 0);
  const tq::TurboQuant* vc = fmt->v_codec(0, 0);
  // A codec's rotated domain: padded_dim(head_dim), or more for split rows of a small head (two
  // parts padded each).
  uint32_t pd = tq::padded_dim(head_dim);
  for (const tq::TurboQuant* c : {kc, vc})
    if (c) pd = std::max(pd, c->padded_dim());
  const uint32_t ps = cache.page_size();
  std::vector<float> k(head_dim), v(head_dim), q(head_dim), decoded(pd), acc(pd, 0.0f), unrot(pd);
  for (uint32_t i = 0; i < head_dim; ++i) q[i] = float(int(i % 7) - 3) * 0.25f;
  tq::TurboQuant::Query query;
  if (kc) kc->prepare(q.data(), query);
  for (uint32_t t = 0; t < ps; ++t) {
    cache.read(0, t, k.data(), v.data());
    if (kc) {
      const tq::ConstRowRef row{reinterpret_cast<const uint32_t*>(block + L.k_codes + t * L.k_row), block + L.k_qjl + t * L.k_qjl_row,
                                reinterpret_cast<const uint16_t*>(block + L.k_norms + t * L.k_norm_row),
                                reinterpret_cast<const uint16_t*>(block + L.k_rnorms) + t};
      (void)kc->dot(query, row);
      (void)kc->dot_fast(query, row);
      if (kc->can_score_decoded()) {
        kc->decode_rotated(row, decoded.data());
        (void)kc->dot_decoded(query, decoded.data(), row);
      }
    }
    if (vc) {
      const tq::ConstRowRef row{reinterpret_cast<const uint32_t*>(block + L.v_codes + t * L.v_row), nullptr,
                                reinterpret_cast<const uint16_t*>(block + L.v_norms + t * L.v_norm_row), nullptr};
      vc->accumulate_rotated(row, 0.5f, acc.data());
    }
  }
  if (vc) vc->unrotate(acc.data(), unrot.data());
  const int32_t table = 0, len = int32_t(ps);
  std::vector<float> out(head_dim);
  tq::AttentionBatch batch;
  batch.q = q.data();
  batch.out = out.data();
  batch.block_tables = &table;
  batch.seq_lens = &len;
  tq::attention_reference(cache, 0, batch);
  return 0;
}
