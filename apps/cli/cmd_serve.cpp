// tq serve: an OpenAI-compatible HTTP server over the engine, with continuous batching and prefix
// caching (docs/serving.md).
#include <fmt/format.h>
#include <netdb.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <optional>
#include <thread>

#include "commands.h"
#include "model_files.h"
#include "tq/engine/auto_kv.h"
#include "tq/check.h"
#include "tq/engine/generation.h"
#include "tq/serve/server.h"
#include "tq/text.h"

namespace tq::cli {
namespace serve_cmd {  // named: the command files are compiled together (apps/cli/CMakeLists.txt)

struct Options {
  std::string model, tokenizer, kv = kDefaultKvSpec, device = "auto", host = "127.0.0.1", name, allowed_origins = "*";
  int port = 8000;
  uint32_t max_num_seqs = 32, max_model_len = 0, max_batched_tokens = 512, num_pages = 0, max_queue = 256;
  int64_t prefix_tails = -1;  // -1: --max-num-seqs
  double gpu_memory = 0, shutdown_timeout = 10;
  unsigned threads = 0;
  bool no_prefix_caching = false;
  bool swa_full = false;
  bool dense_prompts = false;  // --dense-prompts
  std::string speculative;  // --spec: requests' default
  std::string draft, draft_kv;  // --draft: a draft model for requests that ask for "draft"
};

// --host and --port as the server will bind them, tried before the model and the pool are loaded
// (minutes for a large model, which a typo in --host or a port in use then wasted): the name must
// resolve, and the port be free (bound and let go at once; 0 takes any free one, nothing to try).
void check_listen(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC, hints.ai_socktype = SOCK_STREAM, hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  const int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found);
  TQ_CHECK(rc == 0 && found, "--host '{}': not an address or a name of this machine ({})", host, rc ? gai_strerror(rc) : "no address");
  std::string why;
  for (const addrinfo* a = found; a && port > 0; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;
    const int yes = 1;  // as cpp-httplib binds: a port in TIME_WAIT is free
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    const bool ok = bind(fd, a->ai_addr, a->ai_addrlen) == 0;
    if (!ok) why = std::strerror(errno);
    close(fd);
    if (ok) {
      why.clear();
      break;
    }
  }
  freeaddrinfo(found);
  TQ_CHECK(why.empty(), "cannot listen on {}:{}: {} (--host, --port)", host, port, why);
}

void serve(const Options& o) {
  TQ_CHECK(o.port >= 0 && o.port <= 65535, "--port must be in 0..65535, got {}", o.port);
  check_listen(o.host, o.port);
  std::vector<std::string> origins;  // --allowed-origins: "" none, "*" any, else a list
  for (const std::string& s : split(o.allowed_origins, ',')) {
    TQ_CHECK(s.empty() || s == "*" || s.rfind("http://", 0) == 0 || s.rfind("https://", 0) == 0,
             "--allowed-origins: '{}' is not an origin (scheme://host[:port], e.g. http://localhost:3000) or *", s);
    if (!s.empty()) origins.push_back(s);
  }
  // Each running or waiting request may hold an HTTP thread (the server starts them all at once): bounded.
  TQ_CHECK(o.max_num_seqs >= 1 && o.max_num_seqs <= kMaxNumSeqs, "--max-num-seqs must be 1..{}, got {}", kMaxNumSeqs, o.max_num_seqs);
  TQ_CHECK(o.max_batched_tokens >= o.max_num_seqs, "--max-num-batched-tokens ({}) must be at least --max-num-seqs ({})", o.max_batched_tokens,
           o.max_num_seqs);
  TQ_CHECK(o.max_queue >= 1 && o.max_queue <= 4096, "--max-queue must be 1..4096, got {}", o.max_queue);
  TQ_CHECK(o.prefix_tails >= -1 && o.prefix_tails <= 65536, "--prefix-tails must be 0..65536, got {}", o.prefix_tails);
  TQ_CHECK(o.shutdown_timeout >= 0 && o.shutdown_timeout <= 86400, "--shutdown-timeout must be 0..86400 seconds, got {}",
           o.shutdown_timeout);  // NaN and inf fail too
  const unsigned threads = threads_option(o.threads);
  check_kv_list(o.kv, "tq serve");
  TQ_CHECK(!engine::is_auto_kv(o.kv) || o.draft.empty() || !o.draft_kv.empty(),
           "--kv {}: an automatic spec is calibrated on the target model; give the draft model its own --draft-kv", o.kv);
  // --draft alone means --spec draft for every request; with --spec ngram, requests may still ask for "draft".
  const std::string spec_text = o.speculative.empty() && !o.draft.empty() ? "draft" : o.speculative;
  std::optional<engine::SpeculativeSpec> speculation;
  if (!spec_text.empty()) speculation = engine::parse_speculative_spec(spec_text);
  TQ_CHECK(!speculation || speculation->source == engine::SpeculativeSpec::Source::kNgram || !o.draft.empty(),
           "--spec '{}' drafts with a model: give it with --draft FILE", spec_text);
  TQ_CHECK(o.draft_kv.empty() || !o.draft.empty(), "--draft-kv is the draft model's KV spec: give --draft FILE too");
  const KvSpec draft_spec = parse_kv_spec(o.draft_kv.empty() && !engine::is_auto_kv(o.kv) ? o.kv : o.draft_kv.empty() ? "fp16" : o.draft_kv);
  // SIGINT and SIGTERM are taken by one thread (sigwait), so every thread started below (the engine's CPU workers too) inherits
  // the mask and no handler runs inside a request.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client gone mid-write is an error return, not the end of the server

  LoadedModel lm = load_model_and_tokenizer(o.model, o.tokenizer);
  // Prefix-tail slots where the spec and model need them (below); an auto: mem= budget counts them,
  // and the side rows of the engine's chunk (the CPU's: --max-batched-tokens within the context).
  const uint32_t tail_slots = o.no_prefix_caching ? 0 : o.prefix_tails < 0 ? o.max_num_seqs : uint32_t(o.prefix_tails);
  const uint32_t side_chunk =
      engine_side_chunk(o.device, o.max_batched_tokens, o.max_model_len ? o.max_model_len : uint32_t(lm.model.config.max_seq));
  const KvSpec spec = parse_kv_spec(
      resolve_auto_kv_list(o.kv, lm, threads, o.swa_full, double(tail_slots) / std::max<uint32_t>(1, o.max_num_seqs), side_chunk));
  const auto& cfg = lm.model.config;
  const uint32_t ctx = o.max_model_len ? o.max_model_len : uint32_t(cfg.max_seq);
  TQ_CHECK(ctx >= 2 && ctx <= uint32_t(cfg.max_seq), "--max-model-len must be in 2..{} (the model's context), got {}", cfg.max_seq, ctx);
  const engine::Device device = pick_device(o.device, cfg, {spec});
  check_gpu_memory(o.gpu_memory, device);
  // The draft model's engine first: on a GPU, --gpu-memory then gives the model's pool what it leaves.
  std::optional<LoadedModel> draft;
  std::optional<engine::Engine> draft_engine;
  if (!o.draft.empty()) {
    draft.emplace(load_checked_draft(o.draft, o.tokenizer, *lm.tokenizer, ctx, false, "--max-model-len"));
    const engine::Device draft_device = pick_device(o.device, draft->model.config, {draft_spec});
    draft_engine.emplace(draft->model, draft_spec,
                         engine::EngineOptions{.device = draft_device, .threads = threads, .context = ctx, .max_seqs = o.max_num_seqs});
  }
  // Specs with sink/window, models with window rings: the tails prefix hits need (runner.h), in slots fixed now.
  const bool rings = lm.model.config.sliding_window > 0 && !o.swa_full;
  const uint32_t tails = !spec.policy.sink && !spec.policy.window && !rings ? 0 : tail_slots;
  engine::Engine e(lm.model, spec,
                   {.device = device, .threads = threads, .context = ctx, .max_seqs = o.max_num_seqs, .num_pages = o.num_pages,
                    .max_chunk = o.max_batched_tokens, .dense_prompts = o.dense_prompts, .gpu_memory = o.gpu_memory,
                    .prefix_tails = tails, .swa_full = o.swa_full});
  const std::string name = o.name.empty() ? std::filesystem::path(lm.path).stem().string() : o.name;

  const model::Model& m = lm.model;
  const model::Tokenizer& tok = *lm.tokenizer;
  serve::Service svc(e, [&](int id) { return engine::is_stop_token(m, tok, id); },
                     {.max_num_seqs = o.max_num_seqs,
                      .max_batched_tokens = o.max_batched_tokens,
                      .prefix_caching = !o.no_prefix_caching,
                      .draft = draft_engine ? &*draft_engine : nullptr},
                     {.max_waiting = o.max_queue});
  serve::Server server(svc, m, tok,
                       {.host = o.host, .port = o.port, .model_name = name, .threads = o.max_num_seqs + o.max_queue + 8,
                        .shutdown_grace = std::chrono::milliseconds(int64_t(o.shutdown_timeout * 1000)), .allowed_origins = origins,
                        .speculation = speculation});
  // A pool smaller than one request of the context serves only shorter ones (a request needs prompt +
  // max_tokens - 1 positions): said, naming the flag that sized it, before the server starts.
  const size_t pool_tokens = size_t(e.blocks().allocator().num_pages()) * e.blocks().page_size();
  if (pool_tokens + 1 < ctx)
    fmt::print(stderr,
               "tq serve: warning: {} gives a KV pool of {} tokens, less than one request of {} ({}): a request's prompt and "
               "max_tokens are at most {} tokens together, longer requests are refused\n",
               o.gpu_memory > 0 ? fmt::format("--gpu-memory {}", o.gpu_memory) : fmt::format("--num-pages {}", o.num_pages), pool_tokens,
               ctx, o.max_model_len ? "--max-model-len" : "the model's context", pool_tokens + 1);
  const int port = server.bind();

  const auto& sch = svc.scheduler();
  const double pool_mib = double(e.blocks().allocator().num_pages()) * double(e.runner().page_bytes()) / (1 << 20);
  fmt::print(stderr, "tq serve: {} ({} layers, {} KV heads x {}), KV cache {}, {}\n", lm.path, cfg.n_layers, cfg.n_kv_heads, cfg.head_dim,
             spec.canonical(), e.runner().describe());
  fmt::print(stderr, "tq serve: KV pool {} pages of {} tokens ({:.1f} MiB, {} tokens), up to {} requests of {} tokens, {} tokens a step{}\n",
             e.blocks().allocator().num_pages(), e.blocks().page_size(), pool_mib,
             size_t(e.blocks().allocator().num_pages()) * e.blocks().page_size(), o.max_num_seqs, ctx, o.max_batched_tokens,
             e.runner().ring_bytes() ? fmt::format("; window rings {:.1f} MiB beside it (the sliding-window layers)",
                                                   double(e.runner().ring_bytes()) * o.max_num_seqs / (1 << 20))
                                     : "");
  const std::string tail_note =
      e.blocks().tail_slots()
          ? fmt::format(", {} tails of the {} ({:.1f} MiB; hits end at a tail: docs/serving.md)", e.blocks().tail_slots(),
                        e.runner().side_bytes() && e.runner().ring_bytes() ? "side buffers and window rings"
                        : e.runner().ring_bytes()                          ? "window rings"
                                                                           : "side buffers",
                        double(e.blocks().tail_slots()) * e.runner().tail_bytes() / (1 << 20))
          : "";
  fmt::print(stderr, "tq serve: prefix caching {}\n",
             sch.prefix_caching() ? "on" + tail_note
             : o.no_prefix_caching ? "off (--no-enable-prefix-caching)"
                                   : "off: " + sch.prefix_caching_note());
  if (draft_engine)
    fmt::print(stderr, "tq serve: draft model {} ({} layers), KV cache {}, {}, {} pages\n", draft->path, draft->model.config.n_layers,
               draft_spec.canonical(), draft_engine->runner().describe(), draft_engine->blocks().allocator().num_pages());
  fmt::print(stderr, "tq serve: speculative decoding {}\n",
             speculation ? fmt::format("{} for every request (a request's \"speculative\" overrides it)", spec_text)
                         : fmt::format("off (a request may ask: \"speculative\": \"ngram\"{})", draft_engine ? " or \"draft\"" : ""));
  if (cfg.chat_template == model::ChatTemplate::None) {
    fmt::print(stderr, "tq serve: the model {}; chat requests use ChatML\n", cfg.chat_template_missing());
    if (tok.find_token("<|im_start|>") < 0)
      fmt::print(stderr, "tq serve: warning: the vocabulary has no <|im_start|> token, so ChatML's markup is plain text to this model\n");
  }
  fmt::print(stderr, "tq serve: serving '{}' on http://{}:{} (Ctrl-C stops)\n", name, o.host, port);
  std::fflush(stderr);

  // The first signal stops the server; a second one, or connections still open 15 s past the grace
  // period (a client that never finishes sending its headers holds its HTTP thread; an honest one
  // is done within cpp-httplib's 5 s read timeout and the 1 s keep-alive), ends the process at once.
  std::atomic<bool> done{false};
  std::thread signals([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    if (done) return;
    fmt::print(stderr, "tq serve: {} received, finishing requests (up to {} s; again to exit at once)\n", sig == SIGINT ? "SIGINT" : "SIGTERM",
               o.shutdown_timeout);
    std::thread stopper([&] { server.stop(); });
    const double wait = o.shutdown_timeout + 15;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(wait);
    int again = -1;
    do {  // until a signal of the set or the deadline (EINTR: another signal's handler ran here)
      const double left = std::max(0.0, std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count());
      const timespec limit{time_t(left), long((left - double(time_t(left))) * 1e9)};
      again = sigtimedwait(&sigs, nullptr, &limit);
    } while (again < 0 && errno == EINTR);
    if (!done) {
      if (again > 0)
        fmt::print(stderr, "tq serve: {} received again: exiting now\n", again == SIGINT ? "SIGINT" : "SIGTERM");
      else
        fmt::print(stderr, "tq serve: connections still open {:.0f} s after the signal: exiting now\n", wait);
      std::fflush(stderr);
      std::_Exit(again > 0 ? 128 + again : 1);
    }
    stopper.join();
  });
  const auto wake = [&] {
    done = true;
    pthread_kill(signals.native_handle(), SIGTERM);  // wakes the signal thread, which then returns
    signals.join();
  };
  try {
    server.run();  // returns after stop()
  } catch (...) {
    wake();
    throw;
  }
  wake();
  const serve::ServiceStats st = svc.stats();
  fmt::print(stderr, "tq serve: stopped after {} requests ({} refused), {} tokens generated\n", st.requests, st.refused,
             st.scheduler.generated_tokens);
}

}  // namespace serve_cmd

void add_serve(CLI::App& app) {
  using namespace serve_cmd;
  auto o = std::make_shared<Options>();
  CLI::App* c = app.add_subcommand("serve",
                                   "Serve a model over HTTP with the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models),\n"
                                   "/health and Prometheus /metrics; many requests at once over one KV page pool (docs/serving.md).\n"
                                   "Example: tq serve -m model.gguf --port 8000 --max-num-seqs 64; then\n"
                                   "  curl localhost:8000/v1/completions -d '{\"prompt\": \"Once upon a time\", \"max_tokens\": 32}'");
  c->add_option("-m,--model", o->model, "model file: GGUF (llama, qwen2, qwen3, gemma3) or llama2.c checkpoint (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)");
  c->add_option("--tokenizer", o->tokenizer, kTokenizerHelp);
  c->add_option("--host", o->host, "address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)");
  c->add_option("--port", o->port, "port to listen on (default 8000; 0 = any free port, printed on stderr)");
  c->add_option("--served-model-name", o->name, "the model's name in the API (default: the file name without extension)");
  c->add_option("--kv", o->kv, std::string("KV spec (default ") + kDefaultKvSpec + "; docs/kv-specs.md)" + kAutoKvHelp);
  c->add_option("--device", o->device, kDeviceHelp);
  c->add_option("--max-num-seqs", o->max_num_seqs, "requests running at once (default 32); more wait in the queue");
  c->add_option("--max-model-len", o->max_model_len, "most tokens per request, prompt and output (default: the model's context)");
  c->add_option("--max-num-batched-tokens", o->max_batched_tokens,
                "tokens one engine step takes, decodes and prompt chunks together (default 512): long prompts are\n"
                "processed in chunks between the running requests' decode steps");
  c->add_option("--num-pages", o->num_pages,
                "pages of the KV pool (default: --max-num-seqs full-length requests; --gpu-memory sizes it on the GPU); a pool\n"
                "smaller than one full-length request is warned about: it refuses the longer requests");
  c->add_option("--gpu-memory", o->gpu_memory,
                "fraction of the GPU's memory to use, in (0, 1]: the KV page pool gets what the weights and scratch\n"
                "leave (vLLM's --gpu-memory-utilization); default: the pool --num-pages says");
  c->add_option("--max-queue", o->max_queue, "requests that may wait for admission (default 256); more get HTTP 429");
  c->add_flag("--no-enable-prefix-caching", o->no_prefix_caching,
              "do not share the KV pages of common prompt prefixes between requests (on by default)");
  c->add_option("--prefix-tails", o->prefix_tails,
                "specs with sink/window, models with sliding-window layers: slots for the fp16 side rows and window\n"
                "rings a prefix hit needs (default: --max-num-seqs; 0 turns prefix caching off for them). Each takes\n"
                "sink + window rows of every layer and a sequence's rings; one is kept where a prompt is computed and\n"
                "where a request ends, least recently used reused (docs/serving.md)");
  c->add_flag("--dense-prompts", o->dense_prompts,
              "CUDA: a prompt's first step (every token from position 0, up to --max-num-batched-tokens) attends its own K/V rows\n"
              "in bf16 through cuDNN's fused attention instead of their quantized rows: faster prefill; decode and later\n"
              "chunks read the cache as always. Needs cuDNN 9 (libcudnn.so.9, or TQ_CUDNN_LIBRARY); specs without sink/window");
  c->add_flag("--swa-full", o->swa_full,
              "keep every position of the model's sliding-window layers (Gemma 3's local layers) in the page pool, as\n"
              "llama.cpp's --swa-full; by default they keep only the positions their queries still see, in a ring per sequence");
  c->add_option("--allowed-origins", o->allowed_origins,
                "CORS: comma-separated origins whose browser pages may call the API (e.g. http://localhost:3000), * for\n"
                "any, '' for none (default *, as vLLM's); preflight OPTIONS requests are answered");
  c->add_option("--shutdown-timeout", o->shutdown_timeout,
                "on SIGINT or SIGTERM, seconds that running requests get to finish before they are cancelled (default 10)");
  c->add_option("--spec", o->speculative,
                "speculative decoding for every request: ngram[:k=N:n=N:min=N:fixed=1] (prompt lookup) or draft[:k=N]\n"
                "(the --draft model; tq run --help says what the options mean); a request's \"speculative\" field (a\n"
                "spec, or \"off\") overrides it. Default: off, or draft with --draft");
  c->add_option("--draft", o->draft,
                "draft model for speculative decoding (GGUF with -m's tokenizer, smaller and faster): each running\n"
                "request that speculates with \"draft\" drafts on its own sequence of it; implies --spec draft\n"
                "(default: none)");
  c->add_option("--draft-kv", o->draft_kv, "KV spec of the draft model's cache (default: --kv's)");
  c->add_option("-t,--threads", o->threads, kThreadsHelp);
  c->callback([o] { serve(*o); });
}

}  // namespace tq::cli
