#include "tq/engine/key_centre.h"

#include <algorithm>
#include <memory>
#include <numeric>

#include "tq/model/tokenizer.h"

namespace tq::engine {

const char* key_centre_text() {
  // Ordinary prose of mixed registers (narration, dialogue, explanation, numbers): keys whose mean
  // is that of text in general rather than of one genre. Written for turboquant.
  return "The morning train was late again, so Clara walked the long way to the library, past the bakery and the old stone bridge. "
         "She had promised her brother that she would find the book before noon. \"It cannot be that hard,\" he had said, \"it is only "
         "a map of the river from 1852.\" The librarian, a tall man with careful hands, listened to her question and then laughed. "
         "Maps of that age, he explained, were drawn by surveyors who walked every mile with a chain and a compass, and most of them "
         "were lost when the archive flooded. Still, there was one copy in the basement. While he searched, Clara read a notice on the "
         "wall about the town's water supply: each household used about 150 litres a day, and the reservoir held enough for three dry "
         "months. When the librarian returned, he carried a thin folder tied with string. Inside was the map, yellow and soft, with the "
         "river drawn in blue ink and the mills marked by small black squares.";
}

std::vector<int> key_centre_tokens(const model::Model* m, int vocab, uint32_t n) {
  std::vector<int> ids;
  if (m && m->gguf && m->gguf->has("tokenizer.ggml.model")) {  // GGUF files may come without a tokenizer
    const std::unique_ptr<model::Tokenizer> tok = model::tokenizer_from_gguf(*m->gguf);
    ids = tok->encode(key_centre_text(), tok->add_bos_default());
  }
  // No tokenizer, or one whose ids the model's table lacks: every id once, evenly spread (a
  // stride coprime to the vocabulary), a fixed choice for a model with no text to read.
  if (ids.empty() || std::any_of(ids.begin(), ids.end(), [&](int t) { return t < 0 || t >= vocab; })) {
    ids.clear();
    const uint64_t v = uint64_t(std::max(vocab, 1));
    uint64_t stride = v / 2 + 1;  // about half the vocabulary: neighbours far apart
    while (std::gcd(stride, v) != 1) ++stride;
    for (uint32_t i = 0; i < n; ++i) ids.push_back(int((1 + i * stride) % v));
  }
  if (ids.size() > n) ids.resize(n);
  return ids;
}

}  // namespace tq::engine
