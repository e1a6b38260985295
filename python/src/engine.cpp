// The C++ engine in Python: a model and its tokenizer, one Engine over them, and generation with
// the rules `tq run` follows (engine::prompt_tokens, engine::generate). Generation runs with the
// GIL released; each token's bytes go to a Python callback (which takes the GIL for that call
// alone), so the Python side can stream, stop on strings, or cancel.
#include "tq/engine/engine.h"

#include <fmt/format.h>
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>

#include "bindings.h"
#include "tq/check.h"
#include "tq/engine/generation.h"
#include "tq/engine/sampler.h"
#include "tq/model/model.h"
#include "tq/model/tokenizer.h"

namespace tq::py {
namespace {

using clock_type = std::chrono::steady_clock;

// Thrown through engine::generate by the token callback: the Python side asked to stop, or raised
// (its exception is kept in the thread's error indicator and raised again once generate returns).
struct Cancelled {};
struct PythonRaised {};

struct PyEngine {
  std::string path;
  model::Model model;
  std::unique_ptr<model::Tokenizer> tok;
  KvSpec spec;
  engine::Device device = engine::Device::kCpu;
  std::string device_note;
  uint32_t context = 0;
  std::unique_ptr<engine::Engine> engine;  // declared after model: destroyed before it
  std::mutex mu;                           // one generation at a time: they share the engine's page pool
  std::atomic<std::thread::id> owner{};     // the thread generating (holding mu), to refuse a re-entrant call
  struct Stats {
    size_t prompt_tokens = 0, generated_tokens = 0, kv_bytes = 0, kv_pages = 0;
    double prompt_seconds = 0, generation_seconds = 0;
    std::string finish_reason;
  } last;  // the last generation's figures (plain C++: the constructor runs without the GIL)

  PyEngine(const std::string& model_path, const std::string& tokenizer_path, const std::string& kv_spec, unsigned threads, uint32_t n_ctx,
           const std::string& device_name, bool exact_products, bool allow_long_context)
      : path(model_path), spec(parse_spec(kv_spec)) {
    // The file system would read a path only up to a NUL (Python's open() refuses one)
    for (const std::string* p : {&model_path, &tokenizer_path})
      TQ_CHECK(p->find('\0') == std::string::npos, "the {} path holds a NUL byte: '{}'", p == &model_path ? "model" : "tokenizer",
               p->substr(0, p->find('\0')));
    TQ_CHECK(std::filesystem::exists(path), "model file '{}' not found", path);
    model = model::load_model(path);
    if (!tokenizer_path.empty()) {
      TQ_CHECK(std::filesystem::exists(tokenizer_path), "tokenizer file '{}' not found", tokenizer_path);
      tok = model::load_llama2c_tokenizer(tokenizer_path, model.config.vocab_size);
    } else {
      TQ_CHECK(model.gguf != nullptr, "'{}' is a llama2.c checkpoint: give its tokenizer with tokenizer='tok512.bin' (its tokenizer.bin)",
               path);
      tok = model::tokenizer_from_gguf(*model.gguf);
    }
    TQ_CHECK(tok->vocab_size() <= size_t(model.config.vocab_size), "the tokenizer has {} tokens but the model only {} logits",
             tok->vocab_size(), model.config.vocab_size);
    const int max_seq = model.config.max_seq;
    TQ_CHECK(allow_long_context || n_ctx <= uint32_t(max_seq),
             "n_ctx={}: beyond the model's training context of {} tokens ('{}'): positions past it were never trained; pass "
             "allow_long_context=True to run anyway",
             n_ctx, max_seq, path);
    context = n_ctx ? n_ctx : uint32_t(max_seq);
    device = engine::choose_device(device_name, model.config, {spec}, &device_note);
    // More threads than the machine has only slow the CPU runner down; the engine caps them.
    threads = std::min(threads, std::max(1u, std::thread::hardware_concurrency()));
    engine = std::make_unique<engine::Engine>(
        model, spec, engine::EngineOptions{.device = device, .threads = threads, .context = context, .exact_products = exact_products});
  }

  std::vector<int> tokenize(const std::string& text, std::optional<bool> add_bos, bool chat) const {
    if (chat || !add_bos) return engine::prompt_tokens(model, *tok, text, chat);  // BOS as the model asks for it
    return tok->encode(text, *add_bos);
  }

  // Generates after `prompt`; on_token(id, bytes) -> False stops. Returns (tokens generated, why it
  // ended: "stop" for a stop token, "length" for max_tokens or a full context, "cancelled").
  std::pair<uint32_t, std::string> generate(const std::vector<int>& prompt, uint32_t max_tokens, float temperature, int top_k, float top_p,
                                            float min_p, uint64_t seed, nb::callable on_token) {
    engine::SamplingParams sp{.temperature = temperature, .top_k = top_k, .top_p = top_p, .min_p = min_p, .seed = seed};
    sp.validate();  // names the bad value (a ValueError)
    TQ_CHECK(!prompt.empty(), "the prompt has no tokens: tokenize() gives at least BOS for an empty text");
    TQ_CHECK(prompt.size() <= context, "the prompt has {} tokens, longer than the context of {} tokens (n_ctx)", prompt.size(), context);
    for (size_t i = 0; i < prompt.size(); ++i)
      TQ_CHECK(prompt[i] >= 0 && prompt[i] < model.config.vocab_size, "prompt token {} at index {} is outside the vocabulary of {}",
               prompt[i], i, model.config.vocab_size);
    uint32_t generated = 0;
    bool cancelled = false, raised = false;
    size_t kv_bytes = 0, pages = 0;
    double prompt_s = 0, gen_s = 0;
    // on_token runs with the engine held: a generate() from inside it would wait for itself.
    if (owner.load() == std::this_thread::get_id())
      throw std::runtime_error("Engine.generate was called from its own on_token callback; the engine runs one generation at a time");
    {
      nb::gil_scoped_release unlocked;
      std::lock_guard<std::mutex> lock(mu);
      owner = std::this_thread::get_id();
      struct Owned {
        std::atomic<std::thread::id>& o;
        ~Owned() { o = std::thread::id(); }
      } owned{owner};
      const int seq = engine->add_sequence();
      // The sequence goes back to the pool however generation ends.
      struct Release {
        engine::Engine& e;
        int seq;
        ~Release() { e.remove_sequence(seq); }
      } release{*engine, seq};
      const auto t0 = clock_type::now();
      std::vector<float> logits = engine->prefill(seq, prompt);
      const auto t1 = clock_type::now();
      engine::Sampler sampler(sp);
      int prev = prompt.back();
      const auto emit = [&](int id) {
        const std::string piece = tok->decode_next(prev, id);
        prev = id;
        ++generated;  // counted here too: a cancelled run's count is what the callback saw
        nb::gil_scoped_acquire locked;
        try {
          nb::object r = on_token(id, nb::bytes(piece.data(), piece.size()));
          // Python's truth: 0, numpy's False_ and "" stop as False does; None goes on.
          const int go = r.is_none() ? 1 : PyObject_IsTrue(r.ptr());
          if (go < 0) throw nb::python_error();
          if (go == 0) throw Cancelled{};
        } catch (nb::python_error& e) {
          e.restore();
          throw PythonRaised{};
        }
      };
      try {
        engine::generate(*engine, seq, std::move(logits), sampler, model, *tok, {.max_tokens = max_tokens, .context = context}, emit);
      } catch (const Cancelled&) {
        cancelled = true;
      } catch (const PythonRaised&) {
        raised = true;
      }
      const auto t2 = clock_type::now();
      kv_bytes = engine->kv_bytes(seq);
      pages = engine->blocks().block_table(seq).size();
      prompt_s = std::chrono::duration<double>(t1 - t0).count();
      gen_s = std::chrono::duration<double>(t2 - t1).count();
    }
    if (raised) throw nb::python_error();  // the callback's exception, as it raised it
    const std::string why = cancelled ? "cancelled" : (generated >= max_tokens || prompt.size() + generated >= context) ? "length" : "stop";
    last = {prompt.size(), generated, kv_bytes, pages, prompt_s, gen_s, why};
    return {generated, why};
  }
};

// The messages for the model's chat template, which the model must have.
std::vector<engine::ChatMessage> chat_messages(const PyEngine& e, const std::vector<std::pair<std::string, std::string>>& messages) {
  TQ_CHECK(e.model.config.chat_template != model::ChatTemplate::None, "chat: '{}' {}", e.path, e.model.config.chat_template_missing());
  std::vector<engine::ChatMessage> ms;
  for (const auto& [role, content] : messages) ms.push_back({role, content});
  return ms;
}

}  // namespace

void bind_engine(nb::module_& m) {
  m.def(
      "validate_sampling",
      [](float temperature, int top_k, float top_p, float min_p) {
        engine::SamplingParams{.temperature = temperature, .top_k = top_k, .top_p = top_p, .min_p = min_p}.validate();
      },
      nb::arg("temperature"), nb::arg("top_k"), nb::arg("top_p"), nb::arg("min_p"), "Raises ValueError naming a bad sampling value.");
  nb::class_<PyEngine>(m, "Engine", "A model on the C++ engine with a compressed KV cache (the Python LLM class wraps this).")
      .def(nb::init<const std::string&, const std::string&, const std::string&, unsigned, uint32_t, const std::string&, bool, bool>(),
           nb::arg("model"), nb::arg("tokenizer") = "", nb::arg("kv_spec") = "default", nb::arg("threads") = 0, nb::arg("n_ctx") = 0,
           nb::arg("device") = "auto", nb::arg("exact_products") = false, nb::arg("allow_long_context") = false,
           nb::call_guard<nb::gil_scoped_release>())
      .def_ro("path", &PyEngine::path)
      .def_ro("context", &PyEngine::context)
      .def_ro("device_note", &PyEngine::device_note)
      .def_prop_ro("device", [](const PyEngine& e) { return engine::device_name(e.device); })
      .def_prop_ro("kv_spec", [](const PyEngine& e) { return e.spec; })
      .def_prop_ro("describe", [](const PyEngine& e) { return e.engine->runner().describe(); })
      .def_prop_ro("bits_per_element", [](const PyEngine& e) { return e.engine->bits_per_element(); })
      .def_prop_ro("last",
                   [](const PyEngine& e) {
                     nb::dict d;
                     d["prompt_tokens"] = e.last.prompt_tokens, d["generated_tokens"] = e.last.generated_tokens;
                     d["prompt_seconds"] = e.last.prompt_seconds, d["generation_seconds"] = e.last.generation_seconds;
                     d["kv_bytes"] = e.last.kv_bytes, d["kv_pages"] = e.last.kv_pages, d["finish_reason"] = e.last.finish_reason;
                     return d;
                   })
      .def_prop_ro("config",
                   [](const PyEngine& e) {
                     const model::ModelConfig& c = e.model.config;
                     nb::dict d;
                     d["arch"] = model::arch_name(c.arch);
                     d["n_layers"] = c.n_layers, d["dim"] = c.dim, d["hidden_dim"] = c.hidden_dim, d["n_heads"] = c.n_heads;
                     d["n_kv_heads"] = c.n_kv_heads, d["head_dim"] = c.head_dim, d["vocab_size"] = c.vocab_size;
                     d["max_seq"] = c.max_seq, d["chat_template"] = model::chat_template_name(c.chat_template);
                     return d;
                   })
      .def("tokenize", &PyEngine::tokenize, nb::arg("text"), nb::arg("add_bos") = nb::none(), nb::arg("chat") = false)
      .def(
          "detokenize",
          [](const PyEngine& e, const std::vector<int>& ids, bool skip_special) {
            for (int id : ids)
              TQ_CHECK(id >= 0 && size_t(id) < e.tok->vocab_size(), "token {} is outside the vocabulary of {}", id, e.tok->vocab_size());
            const std::string s = e.tok->decode(ids, skip_special);
            return nb::bytes(s.data(), s.size());
          },
          nb::arg("ids"), nb::arg("skip_special") = true)
      .def(
          "chat_prompt",
          [](const PyEngine& e, const std::vector<std::pair<std::string, std::string>>& messages) {
            return engine::apply_chat_template(e.model.config.chat_template, chat_messages(e, messages));
          },
          nb::arg("messages"))
      .def(
          "chat_tokens",  // the conversation's tokens, its messages' texts matching no control token (engine::ChatPrompt)
          [](const PyEngine& e, const std::vector<std::pair<std::string, std::string>>& messages) {
            return engine::prompt_tokens(e.model, *e.tok, engine::render_chat(e.model.config.chat_template, chat_messages(e, messages)));
          },
          nb::arg("messages"))
      .def(
          "is_stop_token", [](const PyEngine& e, int id) { return engine::is_stop_token(e.model, *e.tok, id); }, nb::arg("id"))
      .def("generate", &PyEngine::generate, nb::arg("prompt"), nb::arg("max_tokens"), nb::arg("temperature"), nb::arg("top_k"),
           nb::arg("top_p"), nb::arg("min_p"), nb::arg("seed"), nb::arg("on_token"));
}

}  // namespace tq::py
