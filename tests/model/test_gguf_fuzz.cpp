// Robustness of the GGUF parser (and of the model / tokenizer loaders behind it): a valid small
// file, truncated at every offset and mutated at random, must either load or throw tq::Error --
// never crash, read out of bounds (run under the sanitizer preset to check), or throw anything else.
#include <gtest/gtest.h>

#include <chrono>
#include <random>

#include "tiny_models.h"
#include "tq/common.h"
#include "tq/model/gguf.h"
#include "tq/model/model.h"
#include "tq/model/tokenizer.h"

namespace tq::model {
namespace {

std::vector<uint8_t> base_file() {
  static const testing::BpeVocab vocab = testing::small_bpe_vocab(false);
  testing::TinyModelSpec s;
  s.dim = 32;
  s.n_heads = 2;
  s.n_kv_heads = 2;
  s.hidden = 32;
  s.n_layers = 1;
  s.vocab = int(vocab.tokens.size());
  s.wtype = GgmlType::Q8_0;
  s.chat_template = "<|im_start|>";
  s.tokenizer = &vocab;
  return testing::tiny_model(s).bytes();
}

struct Counts {
  int model = 0, tokenizer = 0;
};

// Parses and exercises everything; returns true when the file parsed. Only tq::Error may escape
// the loaders: any other exception propagates and fails the test.
bool exercise(std::vector<uint8_t> bytes, Counts* counts = nullptr) {
  std::shared_ptr<const GgufFile> f;
  try {
    f = std::make_shared<const GgufFile>(GgufFile::from_bytes(std::move(bytes)));
  } catch (const Error&) {
    return false;
  }
  for (const auto& t : f->tensors()) {
    try {
      const auto v = f->dequantize(t);
      (void)v;
    } catch (const Error&) {
    }
  }
  try {
    const Model m = load_gguf(f);
    std::vector<float> x(size_t(m.config.dim), 1.0f), y(size_t(m.config.q_dim()));
    m.weights.layers.at(0).wq.matvec(x.data(), y.data());
    if (counts) ++counts->model;
  } catch (const Error&) {
  }
  try {
    const auto tok = tokenizer_from_gguf(*f);
    const auto ids = tok->encode("Hello the world<|im_start|>12 lll\n", true);
    (void)tok->decode(ids);
    if (counts) ++counts->tokenizer;
  } catch (const Error&) {
  }
  return true;
}

TEST(GgufFuzz, BaseFileLoads) {
  const auto b = base_file();
  const auto f = std::make_shared<const GgufFile>(GgufFile::from_bytes(b));
  EXPECT_NO_THROW(load_gguf(f));
  EXPECT_NO_THROW(tokenizer_from_gguf(*f));
}

TEST(GgufFuzz, TruncatedAtEveryOffset) {
  const auto b = base_file();
  // every offset through the metadata and tensor infos, then a stride through the tensor data
  const size_t data_start = size_t(GgufFile::from_bytes(b).data_offset());
  size_t loaded = 0;
  for (size_t n = 0; n < b.size(); n += (n < data_start ? 1 : 7)) {
    if (exercise(std::vector<uint8_t>(b.begin(), b.begin() + std::ptrdiff_t(n)))) ++loaded;
  }
  EXPECT_EQ(loaded, 0u) << "a truncated file parsed";
}

TEST(GgufFuzz, RandomByteMutations) {
  const auto b = base_file();
  const size_t meta_end = size_t(GgufFile::from_bytes(b).data_offset());
  std::mt19937 rng(20240601);
  const auto t0 = std::chrono::steady_clock::now();
  int parsed = 0;
  Counts counts;
  const int n_mutations = 10000;
  for (int i = 0; i < n_mutations; ++i) {
    auto m = b;
    const int flips = std::uniform_int_distribution<int>(1, 4)(rng);
    for (int k = 0; k < flips; ++k) {
      // mostly in the header/metadata/tensor infos, where the structure is
      const size_t limit = (rng() % 8 == 0) ? m.size() : meta_end;
      const size_t at = rng() % limit;
      switch (rng() % 3) {
        case 0: m[at] = uint8_t(rng()); break;
        case 1: m[at] ^= uint8_t(1u << (rng() % 8)); break;
        default: m[at] = (rng() % 2) ? 0xff : 0x00; break;
      }
    }
    if (exercise(std::move(m), &counts)) ++parsed;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  RecordProperty("parsed", parsed);
  RecordProperty("model_loaded", counts.model);
  RecordProperty("tokenizer_loaded", counts.tokenizer);
  // many mutations (in values, names, data) leave a loadable file: the loaders do get exercised
  EXPECT_GT(parsed, n_mutations / 10);
  EXPECT_GT(counts.model, 0);
  EXPECT_GT(counts.tokenizer, 0);
  EXPECT_LT(secs, 30.0);
}

}  // namespace
}  // namespace tq::model
