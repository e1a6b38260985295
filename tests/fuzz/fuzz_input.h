// Helpers shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <utility>
#include <vector>

#include "tq/common.h"
#include "tq/model/tokenizer.h"

namespace tq::fuzz {

// Two inputs from one: [u16 little-endian n][n bytes of text][the rest]. The text comes first and
// is short so that mutations of a seed hit both parts; n beyond the input takes all of it.
inline std::pair<std::string_view, std::string_view> split_text(const uint8_t* data, size_t size) {
  if (size < 2) return {{}, {}};
  const size_t n = std::min<size_t>(size_t(data[0]) | size_t(data[1]) << 8, size - 2);
  const char* p = reinterpret_cast<const char*>(data) + 2;
  return {std::string_view(p, n), std::string_view(p + n, size - 2 - n)};
}

// Encodes `text` with and without BOS, then decodes the ids every way the engine does. A tq::Error
// from encode is a refusal (e.g. a vocabulary without a token for one of the text's bytes); ids
// outside the vocabulary abort, for libFuzzer to report.
inline void exercise_tokenizer(const model::Tokenizer& tok, std::string_view text) {
  for (bool bos : {false, true}) {
    std::vector<int> ids;
    try {
      ids = tok.encode(text, bos);
    } catch (const tq::Error&) {
      continue;
    }
    for (int id : ids)
      if (id < 0 || size_t(id) >= tok.vocab_size()) std::abort();
    (void)tok.decode(ids);
    (void)tok.decode(ids, false);
    int prev = tok.bos_id();
    for (int id : ids) {
      (void)tok.decode_next(prev, id);
      prev = id;
    }
  }
}

}  // namespace tq::fuzz
