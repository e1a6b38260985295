// libFuzzer harness: the SentencePiece-style tokenizer of llama2.c (tokenizer.bin): loading the
// vocabulary from arbitrary bytes, then encoding and decoding arbitrary text with it.
// Input: [u16 n][n bytes of text][tokenizer.bin bytes] (fuzz_input.h). Bad input may only throw
// tq::Error; a vocabulary that loads must encode any text to ids it can decode.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "tq/common.h"
#include "tq/model/tokenizer.h"

using namespace tq::model;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto [text, file] = tq::fuzz::split_text(data, size);
  std::unique_ptr<Tokenizer> tok;
  try {
    tok = load_llama2c_tokenizer(ByteSource::from_vector(std::vector<uint8_t>(file.begin(), file.end()), "fuzz-tok.bin"));
  } catch (const tq::Error&) {
    return 0;
  }
  tq::fuzz::exercise_tokenizer(*tok, text);
  return 0;
}
