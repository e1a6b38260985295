// libFuzzer harness: the tokenizers built from GGUF metadata (byte-level BPE, "gpt2", and
// SentencePiece, "llama"): loading the vocabulary, merges and special tokens from an arbitrary
// GGUF file, then encoding and decoding arbitrary text; and the BPE pre-tokenizer's regex split
// of the text, which needs no vocabulary. Input: [u16 n][n bytes of text][GGUF bytes] (fuzz_input.h).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "tq/common.h"
#include "tq/model/gguf.h"
#include "tq/model/tokenizer.h"

using namespace tq::model;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto [text, file] = tq::fuzz::split_text(data, size);
  for (const char* pre : {"gpt2", "smollm"}) {
    size_t covered = 0;
    for (std::string_view piece : bpe_pre_split(text, pre)) {
      // The pieces are spans of the text, in order, that cover it.
      if (piece.data() != text.data() + covered) std::abort();
      covered += piece.size();
    }
    if (covered != text.size()) std::abort();
  }
  std::unique_ptr<Tokenizer> tok;
  try {
    const GgufFile f = GgufFile::from_bytes(std::vector<uint8_t>(file.begin(), file.end()), "fuzz-tok.gguf");
    tok = tokenizer_from_gguf(f);
  } catch (const tq::Error&) {
    return 0;
  }
  tq::fuzz::exercise_tokenizer(*tok, text);
  return 0;
}
