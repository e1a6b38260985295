// Writes the binary seed corpora of the fuzz harnesses (tests/fuzz/corpus/<target>/seed-*) with the
// project's own writers: GGUF files from the tests' GgufWriter and tiny models, a llama2.c
// checkpoint and tokenizer.bin laid out as run.c reads them, packed KV blocks written by
// PagedKvCache. Each is small (a few KB) so that mutations stay fast. Usage: fuzz_make_seeds DIR
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gguf_writer.h"
#include "tiny_models.h"
#include "tq/kv/paged_cache.h"
#include "tq/kv/spec.h"

namespace fs = std::filesystem;
using namespace tq::model;
using Bytes = std::vector<uint8_t>;

namespace {

fs::path g_root;

void write(const std::string& target, const std::string& name, const Bytes& b) {
  const fs::path dir = g_root / target;
  fs::create_directories(dir);
  std::ofstream(dir / ("seed-" + name), std::ios::binary).write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
  std::printf("%-18s seed-%-24s %6zu bytes\n", target.c_str(), name.c_str(), b.size());
}

// [u16 n][text][rest]: the input layout of the tokenizer harnesses (fuzz_input.h).
Bytes with_text(const std::string& text, const Bytes& rest) {
  Bytes b{uint8_t(text.size() & 0xff), uint8_t(text.size() >> 8)};
  b.insert(b.end(), text.begin(), text.end());
  b.insert(b.end(), rest.begin(), rest.end());
  return b;
}

template <class T>
void put(Bytes& b, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  b.insert(b.end(), p, p + sizeof v);
}

// One tensor of every ggml type the reader knows, one block row each: the dequantizers' seeds.
Bytes gguf_tensors() {
  testing::GgufWriter w;
  w.add_string("general.architecture", "none");
  w.add_u8("u8", 1);
  w.add_i16("i16", -2);
  w.add_u64("u64", 3);
  w.add_f64("f64", 0.5);
  w.add_bool("b", true);
  w.add_i32_array("ints", {1, -2, 3});
  w.add_f32_array("floats", {0.5f, -1.0f});
  w.add_string_array("strings", {"a", "", "c"});
  std::mt19937 rng(7);
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4_K,
                     GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::Q5_1, GgmlType::IQ4_NL, GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::IQ4_XS}) {
    const uint64_t n = ggml_type_info(t).block_elems == 1 ? 8 : ggml_type_info(t).block_elems;
    w.add_tensor(std::string("t.") + ggml_type_info(t).name, {n, 1}, t, testing::random_matrix(t, 1, n, rng));
  }
  return w.bytes();
}

testing::TinyModelSpec tiny(const testing::BpeVocab* vocab) {
  testing::TinyModelSpec s;
  s.dim = 8;
  s.n_heads = 2;
  s.n_kv_heads = 1;
  s.hidden = 8;
  s.n_layers = 1;
  s.context = 16;
  s.tokenizer = vocab;
  s.vocab = vocab ? int(vocab->tokens.size()) : 8;
  return s;
}

// A SentencePiece vocabulary in GGUF (tokenizer.ggml.model "llama"): specials, byte tokens, words.
Bytes gguf_spm() {
  std::vector<std::pair<std::string, float>> words;
  float score = -1;
  for (const char* t : {"\xe2\x96\x81", "h", "e", "l", "o", "\xe2\x96\x81h", "he", "ll", "\xe2\x96\x81he", "llo", "\xe2\x96\x81hello"})
    words.emplace_back(t, score--);
  testing::GgufWriter w;
  testing::add_spm_tokenizer(w, words, {"<|im_start|>"}, true);
  return w.bytes();
}

Bytes gguf_bpe(const std::string& pre) {
  testing::GgufWriter w;
  testing::add_bpe_tokenizer(w, testing::small_bpe_vocab(false), pre);
  return w.bytes();
}

// llama2.c checkpoint: header, then every float array run.c reads (values k / 64 for float k).
Bytes llama2c(int32_t vocab) {
  const int32_t dim = 8, hidden = 8, layers = 1, heads = 2, kv = 1, seq = 4, hs = dim / heads;
  const int64_t V = vocab < 0 ? -vocab : vocab, kvd = kv * hs;
  int64_t n = V * dim + layers * (dim + dim * dim + 2 * kvd * dim + dim * dim + dim + 3 * hidden * dim) + dim + seq * hs;
  if (vocab < 0) n += V * dim;
  Bytes b;
  for (int32_t h : {dim, hidden, layers, heads, kv, vocab, seq}) put(b, h);
  for (int64_t k = 0; k < n; ++k) put(b, float(k % 64) / 64.0f);
  return b;
}

// llama2.c tokenizer.bin: max_token_length, then per token: score, length, bytes.
Bytes llama2c_tokenizer() {
  std::vector<std::pair<std::string, float>> toks = {{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    toks.push_back({buf, 0});
  }
  float score = -1;
  for (const char* t :
       {" ", "h", "e", "l", "o", "w", "r", "d", " h", "he", "ll", " he", "llo", " hello", " w", "or", " wor", "ld", " world"})
    toks.push_back({t, score--});
  Bytes b;
  put(b, int32_t(8));
  for (const auto& [t, s] : toks) {
    put(b, s);
    put(b, int32_t(t.size()));
    b.insert(b.end(), t.begin(), t.end());
  }
  return b;
}

// "<spec>\n", head dim - 1, one block of rows written by the cache (fuzz_packed_block.cpp).
Bytes packed(const std::string& spec, uint32_t head_dim) {
  const tq::KvSpec s = tq::parse_kv_spec(spec);
  tq::PagedKvCache cache(tq::CacheShape{1, 1, head_dim, 1}, s.format);
  std::mt19937 rng(head_dim);
  std::normal_distribution<float> g;
  std::vector<float> k(head_dim), v(head_dim);
  for (uint32_t t = 0; t < cache.page_size(); ++t) {
    for (auto& x : k) x = g(rng);
    for (auto& x : v) x = g(rng);
    cache.write(0, t, k.data(), v.data());
  }
  Bytes b(spec.begin(), spec.end());
  b.push_back('\n');
  b.push_back(uint8_t(head_dim - 1));
  b.insert(b.end(), cache.block(0, 0, 0), cache.block(0, 0, 0) + cache.layout().bytes);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR (tests/fuzz/corpus)\n", argv[0]);
    return 2;
  }
  g_root = argv[1];
  const testing::BpeVocab vocab = testing::small_bpe_vocab(false);
  write("gguf", "tensors.gguf", gguf_tensors());
  write("gguf", "llama-bpe.gguf", testing::tiny_model(tiny(&vocab)).bytes());
  testing::TinyModelSpec q = tiny(nullptr);
  q.arch = "qwen2";
  q.bias = true;
  q.tied = true;
  q.wtype = GgmlType::F16;
  write("gguf", "qwen2-tied-bias.gguf", testing::tiny_model(q).bytes());
  write("gguf", "spm-vocab.gguf", gguf_spm());

  const std::string text = "Hello the world<|im_start|>12 lll\n caf\xc3\xa9 \xf0\x9f\x98\x80 42.5  x";
  write("tokenizer_gguf", "bpe-smollm", with_text(text, gguf_bpe("smollm")));
  write("tokenizer_gguf", "bpe-gpt2", with_text("hello  world's 2024\t\n", gguf_bpe("gpt2")));
  write("tokenizer_gguf", "spm", with_text("hello<|im_start|>hello h\xc3\xa9", gguf_spm()));
  write("tokenizer_llama2c", "small", with_text(" hello world h\xc3\xa9llo\n", llama2c_tokenizer()));

  write("llama2c", "shared.bin", llama2c(4));
  write("llama2c", "unshared.bin", llama2c(-4));

  write("packed_block", "k3v2-d128", packed("k3v2", 128));
  write("packed_block", "k4v4prod-d64-p8", packed("k4v4:prod:page=8", 64));
  write("packed_block", "k2v3nc-dense-d80-p4", packed("k2v3:nc:rot=dense:page=4", 80));
  write("packed_block", "k8v1-d32-p2", packed("k8v1:page=2", 32));
  write("packed_block", "k1v8prod-d33-p2", packed("k1v8:prod:seed=5:page=2", 33));
  write("packed_block", "fp16-d80-p4", packed("fp16:page=4", 80));
  write("packed_block", "fp8-d32-p4", packed("fp8:page=4", 32));
  write("packed_block", "bf16-d16-p4", packed("bf16:page=4", 16));
  write("packed_block", "fp32-d8-p2", packed("fp32:page=2", 8));
  write("packed_block", "k3.5v2.5-d64-p4", packed("k3.5v2.5:page=4", 64));
  write("packed_block", "k2v1.5nc-dense-d80-p2", packed("k2v1.5:nc:rot=dense:page=2", 80));
  return 0;
}
