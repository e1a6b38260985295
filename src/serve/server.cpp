#include "tq/serve/server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <poll.h>
#include <sys/socket.h>
#include <strings.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <string_view>
#include <system_error>
#include <thread>

#include <fmt/format.h>

#include "tq/check.h"
#include "tq/engine/generation.h"
#include "tq/serve/metrics.h"
#include "tq/serve/openai.h"
#include "tq/serve/text_stream.h"

namespace tq::serve {

using json = nlohmann::json;

namespace {

// "the prompt has", "the messages have"
const char* has(std::string_view what) { return what == "messages" ? "have" : "has"; }

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(dump(error_body(e)), "application/json");
}

// A 413 for a body over the limit, or a 400 for a Content-Length that is not a byte count
// (negative, a word), which cpp-httplib reads as too large.
void send_too_large(const httplib::Request& req, httplib::Response& res, size_t limit) {
  const std::string cl = req.get_header_value("Content-Length");
  if (!cl.empty() && cl.find_first_not_of("0123456789") != std::string::npos)
    return send_error(res, ApiError(400, fmt::format("Content-Length '{}' is not a byte count", cl)));
  send_error(res, ApiError(413, fmt::format("the request body is larger than {} MiB", limit >> 20), "", "invalid_request_error"));
}

// An address as cpp-httplib writes it into a Request ("127.0.0.1", "::1") and its port.
std::pair<std::string, int> address_of(const sockaddr_storage& a) {
  char host[INET6_ADDRSTRLEN] = "";
  if (a.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a);
    inet_ntop(AF_INET, &in.sin_addr, host, sizeof host);
    return {host, ntohs(in.sin_port)};
  }
  if (a.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
    inet_ntop(AF_INET6, &in6.sin6_addr, host, sizeof host);
    return {host, ntohs(in6.sin6_port)};
  }
  return {"", -1};
}

// /v1/completions' max_tokens where a request leaves it out (OpenAI's and vLLM's; chat has none).
constexpr uint32_t kCompletionMaxTokens = 16;

// What connection_socket returns where the request's connection was reset before it looked.
constexpr int kConnectionGone = -2;

// The socket of the connection a request came on; kConnectionGone where the client has reset it
// already; -1 where it cannot be told. cpp-httplib 0.11 hands a handler no socket, but the
// connection's address pair names it: it is looked for once among the process's sockets (the
// handler runs on the thread that owns it, so it stays open until the handler returns). A socket a
// client reset (a close with SO_LINGER 0, a crash) has no peer address left: where none matches,
// a socket of the server's own address with no peer is this request's (every live one matched).
int connection_socket(const httplib::Request& req) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  // req's addresses as inet_ntop writes them (getnameinfo adds an IPv6 scope: "fe80::1%eth0")
  const auto bare = [](const std::string& a) { return a.substr(0, a.find('%')); };
  const std::pair<std::string, int> want_local{bare(req.local_addr), req.local_port}, want_peer{bare(req.remote_addr), req.remote_port};
  int found = -1;
  bool reset = false;  // a socket of the server's address whose peer is gone
  while (const dirent* e = readdir(d)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || fd < 0) continue;
    struct stat st {};
    if (fstat(int(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof local, pl = sizeof peer;
    if (getsockname(int(fd), reinterpret_cast<sockaddr*>(&local), &ll) != 0 || address_of(local) != want_local) continue;
    if (getpeername(int(fd), reinterpret_cast<sockaddr*>(&peer), &pl) != 0) {
      const bool no_peer = errno == ENOTCONN;
      int listening = 0;  // the server's own listening socket has the same address and no peer either
      socklen_t n = sizeof listening;
      const bool accepts = getsockopt(int(fd), SOL_SOCKET, SO_ACCEPTCONN, &listening, &n) == 0 && listening;
      reset |= no_peer && !accepts;
      continue;
    }
    if (address_of(peer) == want_peer) {
      found = int(fd);
      break;
    }
  }
  closedir(d);
  return found >= 0 ? found : reset ? kConnectionGone : -1;
}

// Whether the client hung up (closed or reset its end). A client that sent more bytes is still
// there (cpp-httplib 0.11 then drops them: pipelining is not served, docs/serving.md).
bool client_gone(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return true;
  char c;
  return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

// cpp-httplib's thread pool, made in bind() instead of inside run(): a thread that cannot be
// started (the user's thread limit) is an error that names the count before the server says it
// serves, and the threads already started are joined.
class WorkerPool final : public httplib::TaskQueue {
 public:
  explicit WorkerPool(size_t n) {
    try {
      for (size_t i = 0; i < n; ++i) threads_.emplace_back([this] { work(); });
    } catch (const std::system_error& e) {
      const size_t started = threads_.size();
      shutdown();
      throw Error(fmt::format("cannot start {} HTTP worker threads (--max-num-seqs + --max-queue + 8): the system refused after {}: {} "
                              "(lower --max-queue or --max-num-seqs, or raise the thread limit: ulimit -u)",
                              n, started, e.what()));
    }
  }
  ~WorkerPool() override { shutdown(); }
  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard<std::mutex> lock(m_);
      jobs_.push_back(std::move(fn));
    }
    cv_.notify_one();
  }
  // Workers finish the jobs queued, then end.
  void shutdown() override {
    {
      std::lock_guard<std::mutex> lock(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
    threads_.clear();
  }

 private:
  void work() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(m_);
        cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }
  std::vector<std::thread> threads_;
  std::deque<std::function<void()>> jobs_;
  std::mutex m_;
  std::condition_variable cv_;
  bool stop_ = false;
};

constexpr size_t kMaxBody = size_t(64) << 20;  // request bodies, after any decompression

int64_t unix_now() { return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count(); }

// One request's answer as it is produced: its text, token count and how it ended.
struct Answer {
  std::shared_ptr<Stream> stream;
  ResponseHead head;
  const model::Tokenizer& tok;
  TextStream text;
  Usage usage;
  std::string finish;       // "" while running; "stop", "length", or "abort" (cancelled by a shutdown)
  std::string error;        // the engine failed on it
  bool first = true;        // no chunk sent yet
  bool logprobs = false;    // asked for: every token's event carries them
  // echo with logprobs: the prompt's ids, whose entries come first (its first token unscored);
  // empty once they are in `entries`
  std::vector<int> scored_prompt;
  bool prompt_text = false;   // the prompt came as text: its special tokens are in the echo, so in their entries too
  size_t prompt_entries = 0;  // entries that are the prompt's
  int prev;                 // the token before the next one
  std::vector<LogprobEntry> entries;  // the tokens' log-probabilities, [sent] then [pending]
  size_t sent = 0, sent_chars = 0;    // entries a stream has sent, and the characters of their text

  Answer(std::shared_ptr<Stream> s, ResponseHead h, const model::Tokenizer& t, int prev_token, std::vector<std::string> stops,
         uint32_t prompt, bool want_logprobs, std::vector<int> score_prompt, bool score_text)
      : stream(std::move(s)), head(std::move(h)), tok(t), text(t, prev_token, std::move(stops)), logprobs(want_logprobs),
        scored_prompt(std::move(score_prompt)), prompt_text(score_text), prev(prev_token) {
    usage.prompt = prompt;
  }

  // The choice's "logprobs" for entries [from, upto) whose text starts at character `chars`;
  // moves both past them. Null when not asked.
  json take_logprobs(size_t& from, size_t& chars, size_t upto = SIZE_MAX) {
    if (!logprobs) return nullptr;
    const std::span<const LogprobEntry> part = std::span<const LogprobEntry>(entries).subspan(from, std::min(upto, entries.size()) - from);
    json j = logprobs_json(head.chat, part, chars);
    for (const LogprobEntry& e : part) chars += utf8_characters(e.text);
    from += part.size();
    return j;
  }

  // The entry of `token` after `before`, its texts as they add to the text; unscored without `lp`.
  LogprobEntry entry(int before, int token, const engine::TokenLogprobs* lp) const {
    LogprobEntry e{tok.decode_next(before, token), lp ? lp->logprob : 0.0f, {}, lp != nullptr};
    if (lp)
      for (const auto& [alt, x] : lp->top) e.top.emplace_back(tok.decode_next(before, alt), x);
    return e;
  }

  // The echoed prompt's entries, from the event that scored it: its first token unscored, then
  // each token's log-probability given those before it.
  void add_prompt_entries(const std::vector<engine::TokenLogprobs>& scored) {
    int before = -1;
    for (size_t i = 0; i < scored_prompt.size(); ++i) {
      const int id = scored_prompt[i];
      entries.push_back(entry(before, id, i > 0 && i - 1 < scored.size() ? &scored[i - 1] : nullptr));
      // A text prompt's special tokens ("<|im_end|>" as the client wrote it) are text of the echo:
      // their entries spell them, so that the entries add up to it (all but the BOS encode added).
      if (prompt_text && tok.token_type(id) == model::TokenType::Control && !(i == 0 && id == tok.bos_id())) entries.back().text = tok.decode(id);
      before = id;
    }
    prompt_entries = entries.size();
    scored_prompt.clear();
  }

  // Takes the stream's next events (waiting up to `wait`); returns the text they release. Ends
  // the request in the service when a stop string appears.
  std::string advance(Service& svc, std::chrono::milliseconds wait) {
    std::vector<Event> events;
    std::string out;
    if (!stream->next(events, wait)) return out;
    for (const Event& ev : events) {
      if (!scored_prompt.empty() && (ev.token >= 0 || ev.finish == Finish::kStop || ev.finish == Finish::kLength))
        add_prompt_entries(ev.prompt_logprobs);  // the request's first event after its prompt
      if (ev.token >= 0 && finish.empty()) {
        ++usage.completion;
        if (logprobs && ev.logprobs) entries.push_back(entry(prev, ev.token, &*ev.logprobs));
        prev = ev.token;
        out += text.push(ev.token);
        if (text.stopped()) {  // the request ends as stopped, not cancelled (the engine sees it at its next step)
          finish = "stop";
          svc.cancel(stream->id(), Finish::kStop);
        }
      }
      if (ev.finish == Finish::kNone || !finish.empty()) continue;
      if (ev.finish == Finish::kError) error = ev.error.empty() ? "the engine failed" : ev.error;
      finish = ev.finish == Finish::kCancelled || ev.finish == Finish::kError ? "abort" : finish_name(ev.finish);
      if (ev.finish == Finish::kStop || ev.finish == Finish::kLength) out += text.finish();
    }
    return out;
  }
};

}  // namespace

struct Server::Impl {
  Service& svc;
  const model::Model& m;
  const model::Tokenizer& tok;
  ServerOptions o;
  httplib::Server http;
  int listen_fd = -1;  // the listening socket, once httplib made it (see bind)
  model::ChatTemplate chat_template;
  std::atomic<bool> stopping{false};
  std::atomic<bool> run_started{false}, run_done{false};  // run() was called, and returned
  std::unique_ptr<WorkerPool> pool;  // made by bind(), handed to cpp-httplib by run()
  int64_t created = unix_now();
  uint32_t context_;  // the engine's: prompt + max_tokens at most
  size_t token_bytes_ = 1;  // the most text bytes one token stands for (too_long)
  // Drawn at start: response ids are "cmpl-" + it + the request's number, unique across restarts
  // (OpenAI's and vLLM's ids are random; a per-process count would repeat after a restart).
  const uint64_t id_salt_ = (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();

  Impl(Service& s, const model::Model& model, const model::Tokenizer& t, const ServerOptions& opts)
      : svc(s), m(model), tok(t), o(opts), context_(s.engine().options().context) {
    // Models without a template (llama2.c checkpoints) chat in ChatML, as llama-server does.
    chat_template = m.config.chat_template == model::ChatTemplate::None ? model::ChatTemplate::ChatML : m.config.chat_template;
    for (size_t id = 0; id < tok.vocab_size(); ++id) token_bytes_ = std::max(token_bytes_, tok.decode(int(id)).size());
    routes();
  }

  // A text of `bytes` bytes has at least bytes / token_bytes_ tokens: when that alone fills the
  // context, the request is refused before tokenizing (64 MiB of text would take the tokenizer
  // seconds, for a 400 in the end).
  void refuse_if_too_long(size_t bytes, const char* what) const {
    const size_t at_least = bytes / token_bytes_;
    if (at_least >= context_)
      throw ApiError(400,
                     fmt::format("this model's maximum context length is {} tokens, but the {} {} at least {} tokens ({} bytes of text, "
                                 "no token longer than {} bytes)",
                                 context_, what, has(what), at_least, bytes, token_bytes_),
                     what, "invalid_request_error", "context_length_exceeded");
  }


  // A request for a model this server does not serve (a request's "model", the retrieve route's id).
  ApiError unknown_model(const std::string& name) const {
    return ApiError(404, fmt::format("the model '{}' does not exist; this server serves '{}'", name, o.model_name), "model",
                    "invalid_request_error", "model_not_found");
  }

  void routes();
  void post(const char* path, bool chat);
  void complete(const httplib::Request& req, const std::string& body, httplib::Response& res, bool chat);
  std::shared_ptr<Answer> start(const CompletionRequest& cr, std::string* echo);
  void stream(httplib::Response& res, std::shared_ptr<Answer> a, bool include_usage, std::string echo);
};

std::shared_ptr<Answer> Server::Impl::start(const CompletionRequest& cr, std::string* echo) {
  if (!cr.model.empty() && cr.model != o.model_name) throw unknown_model(cr.model);
  std::vector<int> prompt;
  try {
    if (cr.chat) {
      // The messages' text as the template keeps it (Llama 3's and Gemma's trim it): its bytes.
      const engine::ChatPrompt chat = engine::render_chat(chat_template, cr.messages);
      size_t bytes = 0;
      for (const model::TextSpan& sp : chat.content) bytes += sp.end - sp.begin;
      refuse_if_too_long(bytes, "messages");
      prompt = engine::prompt_tokens(m, tok, chat);
    } else if (!cr.prompt_ids.empty()) {
      prompt = cr.prompt_ids;
    } else {
      refuse_if_too_long(cr.prompt.size(), "prompt");
      prompt = engine::prompt_tokens(m, tok, cr.prompt, false);
    }
  } catch (const Error& e) {
    throw ApiError(400, e.what(), cr.chat ? "messages" : "prompt");
  }
  const char* what = cr.chat ? "messages" : "prompt";
  if (prompt.size() >= context_)
    throw ApiError(400,
                   fmt::format("this model's maximum context length is {} tokens, but the {} {} {} tokens", context_, what, has(what), prompt.size()),
                   what, "invalid_request_error", "context_length_exceeded");
  // No max_tokens: 16 on completions (OpenAI's and vLLM's default there); on chat up to the
  // context, or to what the whole page pool holds when that is less (a request needs prompt +
  // max_tokens - 1 positions).
  const engine::Engine& e = svc.engine();
  const size_t pool = size_t(e.blocks().allocator().num_pages()) * e.blocks().page_size();
  const size_t cap = std::min<size_t>(context_, pool + 1);                          // prompt + max_tokens at most
  const uint32_t most = prompt.size() < cap ? uint32_t(cap - prompt.size()) : 1;  // 1: submit() refuses, naming the pool
  const uint32_t default_max = cr.chat ? most : std::min<uint32_t>(most, kCompletionMaxTokens);
  Request r{prompt, cr.sampling, cr.max_tokens.value_or(default_max), cr.speculation.value_or(o.speculation), cr.logprobs};
  const bool score_prompt = cr.echo && cr.logprobs >= 0;  // OpenAI's echo with logprobs: the prompt's too
  if (score_prompt) r.prompt_logprobs = cr.logprobs;
  if (!cr.seeded) r.sampling.seed = (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  std::shared_ptr<Stream> s;
  try {
    s = svc.submit(std::move(r));
  } catch (const Busy& b) {
    throw ApiError(b.shutting_down ? 503 : 429, b.what(), "", b.shutting_down ? "service_unavailable" : "rate_limit_error");
  } catch (const Refused& e) {
    throw ApiError(400, e.what(), e.param == "max_tokens" ? cr.max_key : e.param, "invalid_request_error", e.code);
  }
  // After submit(), which checked the prompt's token ids against the vocabulary.
  if (echo) *echo = cr.echo ? (cr.prompt_ids.empty() ? cr.prompt : tok.decode(cr.prompt_ids)) : "";
  ResponseHead h{fmt::format("{}-{:016x}{:x}", cr.chat ? "chatcmpl" : "cmpl", id_salt_, s->id()), o.model_name, unix_now(), cr.chat};
  return std::make_shared<Answer>(s, h, tok, prompt.back(), cr.stop, uint32_t(prompt.size()), cr.logprobs >= 0,
                                  score_prompt ? prompt : std::vector<int>{}, cr.prompt_ids.empty());
}

// Bodies come through a content reader, which counts them as they arrive, chunked or compressed
// (cpp-httplib's own limit sees neither). cpp-httplib 0.11 hands every POST to it, bodiless too.
void Server::Impl::post(const char* path, bool chat) {
  http.Post(path, [this, chat](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& read) {
    // A multipart form goes to receivers of its own, which read() leaves unset.
    if (req.is_multipart_form_data())
      return send_error(res, ApiError(415, "the body must be JSON (Content-Type: application/json), not a multipart form"));
    // A request with neither a length nor chunked coding has no body (RFC 9112, 6.3); cpp-httplib
    // 0.11 would read one until the client closes or 5 s pass. Refused at once, naming what came.
    const std::string te = req.get_header_value("Transfer-Encoding");
    if (!req.has_header("Content-Length") && strcasecmp(te.c_str(), "chunked") != 0)
      return send_error(res, ApiError(411, te.empty() ? std::string("a POST needs a Content-Length header (or a chunked body)")
                                                      : fmt::format("a POST needs a Content-Length header or chunked coding, not "
                                                                    "Transfer-Encoding '{}'", te)));
    // cpp-httplib decodes these and passes any other coding on as it is.
    const std::string coding = req.get_header_value("Content-Encoding");
    if (!coding.empty() && coding != "identity" && coding != "gzip" && coding != "deflate" && coding != "br") res.status = 415;
    std::string body;
    bool over = false;
    const bool ok = res.status != 415 && read([&](const char* data, size_t n) {
      over = body.size() + n > kMaxBody;
      if (!over) body.append(data, n);
      return !over;
    });
    if (over || res.status == 413) return send_too_large(req, res, kMaxBody);
    if (res.status == 415)
      return send_error(res, ApiError(415, fmt::format("Content-Encoding '{}' is not supported (gzip, deflate, br, or none)",
                                                       req.get_header_value("Content-Encoding"))));
    if (!ok) return send_error(res, ApiError(400, "the request body could not be read (a broken chunked transfer or compressed body)"));
    complete(req, body, res, chat);
  });
}

void Server::Impl::complete(const httplib::Request& req, const std::string& request_body, httplib::Response& res, bool chat) {
  try {
    const json body = json::parse(request_body, nullptr, false);
    if (body.is_discarded()) throw ApiError(400, "the request body is not valid JSON");
    const CompletionRequest cr = parse_completion(body, chat);
    std::string echo;
    std::shared_ptr<Answer> a = start(cr, &echo);
    if (cr.stream) return stream(res, std::move(a), cr.include_usage, echo);
    std::string text = echo;
    // A client that leaves before its answer cancels its request, as a stream's does (its pages
    // go back now, not when the answer nobody reads is complete).
    const int fd = connection_socket(req);
    bool cancelled = fd == kConnectionGone;
    if (cancelled) svc.cancel(a->stream->id());
    while (a->finish.empty()) {
      text += a->advance(svc, std::chrono::milliseconds(250));
      if (fd >= 0 && !cancelled && a->finish.empty() && client_gone(fd)) {
        svc.cancel(a->stream->id());
        cancelled = true;
      }
    }
    if (!a->error.empty()) throw ApiError(500, a->error, "", "server_error");
    if (a->finish == "abort") throw ApiError(503, "the server shut down before the request finished", "", "service_unavailable");
    size_t from = 0, chars = 0;  // from the text's start: the echoed prompt's entries come first when asked
    res.set_content(dump(completion_body(a->head, text, a->finish, a->usage, a->take_logprobs(from, chars))), "application/json");
  } catch (const ApiError& e) {
    send_error(res, e);
  }
}

void Server::Impl::stream(httplib::Response& res, std::shared_ptr<Answer> a, bool include_usage, std::string echo) {
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, a, include_usage, echo](size_t, httplib::DataSink& sink) {
        const auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
        const auto chunk = [&](const std::string& text, const std::string& finish) {
          const bool first = a->first;
          a->first = false;
          const json lp = a->entries.size() > a->sent ? a->take_logprobs(a->sent, a->sent_chars) : json(nullptr);
          return write(sse(chunk_body(a->head, text, finish, first, lp)));
        };
        // An echo scored with logprobs goes out with the prompt's entries, once the prompt is computed.
        bool echo_due = a->first && (a->head.chat || !echo.empty());
        const auto send_echo = [&] {
          const bool first = a->first;
          a->first = false;
          echo_due = false;
          const json lp = a->take_logprobs(a->sent, a->sent_chars, a->prompt_entries);
          return write(sse(chunk_body(a->head, echo, "", first, a->prompt_entries ? lp : json(nullptr))));
        };
        if (echo_due && a->scored_prompt.empty() && !send_echo()) return false;
        auto last_write = std::chrono::steady_clock::now();
        while (a->finish.empty()) {
          const std::string text = a->advance(svc, std::chrono::milliseconds(250));
          if (echo_due && a->scored_prompt.empty() && !send_echo()) return false;
          if (!a->finish.empty()) {
            if (!a->error.empty())
              write(sse(error_body(ApiError(500, a->error, "", "server_error"))));
            else if (!chunk(text, a->finish))
              return false;
            break;
          }
          if (!text.empty()) {
            if (!chunk(text, "")) return false;  // the client is gone: the releaser cancels the request
            last_write = std::chrono::steady_clock::now();
          } else if (std::chrono::steady_clock::now() - last_write > std::chrono::seconds(1)) {
            // An SSE comment while nothing is generated (queued, long prefill): a client that left
            // fails this write, and its request is cancelled instead of waiting for its turn.
            if (!write(": keep-alive\n\n")) return false;
            last_write = std::chrono::steady_clock::now();
          }
        }
        if (include_usage && a->error.empty()) write(sse(usage_chunk(a->head, a->usage)));
        write("data: [DONE]\n\n");
        sink.done();
        return true;
      },
      [this, a](bool) {
        if (a->finish.empty()) svc.cancel(a->stream->id());
      });
}

void Server::Impl::routes() {
  post("/v1/completions", false);
  post("/v1/chat/completions", true);
  const auto model_json = [this] {
    return json{{"id", o.model_name}, {"object", "model"}, {"created", created}, {"owned_by", "turboquant"}, {"max_model_len", context_}};
  };
  http.Get("/v1/models", [model_json](const httplib::Request&, httplib::Response& res) {
    res.set_content(dump(json{{"object", "list"}, {"data", {model_json()}}}), "application/json");
  });
  // OpenAI's retrieve-model route (the id may hold slashes: "org/name")
  http.Get(R"(/v1/models/(.+))", [this, model_json](const httplib::Request& req, httplib::Response& res) {
    const std::string id = req.matches[1];
    if (id != o.model_name) return send_error(res, unknown_model(id));
    res.set_content(dump(model_json()), "application/json");
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.status = stopping ? 503 : 200;
    res.set_content(stopping ? R"({"status":"shutting down"})" : R"({"status":"ok"})", "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(prometheus_text(svc.stats()), "text/plain; version=0.0.4");
  });
  // CORS (vLLM's --allowed-origins): an answer to a page of an allowed origin says so, and a
  // browser's preflight (OPTIONS, before a POST with a JSON body) is answered here, for any path.
  // (the Access-Control-Allow-Origin a request's Origin gets: "*", itself, or none)
  const auto cors = [this](const httplib::Request& req) -> std::string {
    const std::string origin = req.get_header_value("Origin");
    const auto& ok = o.allowed_origins;
    const bool any = std::find(ok.begin(), ok.end(), "*") != ok.end();
    return origin.empty() || (!any && std::find(ok.begin(), ok.end(), origin) == ok.end()) ? "" : any ? "*" : origin;
  };
  http.set_post_routing_handler([cors](const httplib::Request& req, httplib::Response& res) {
    const std::string allow = cors(req);
    if (allow.empty()) return;
    res.set_header("Access-Control-Allow-Origin", allow);
    if (allow != "*") res.set_header("Vary", "Origin");
  });
  http.Options(R"(.*)", [cors](const httplib::Request& req, httplib::Response& res) {
    if (!cors(req).empty()) {
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      const std::string asked = req.get_header_value("Access-Control-Request-Headers");
      res.set_header("Access-Control-Allow-Headers", asked.empty() ? "Authorization, Content-Type" : asked);
      res.set_header("Access-Control-Max-Age", "86400");
    }
    res.status = 204;
  });
  // Every error gets an OpenAI error body, the ones cpp-httplib answers by itself too.
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const bool post = req.path == "/v1/completions" || req.path == "/v1/chat/completions";
    const bool get = req.path == "/v1/models" || req.path == "/health" || req.path == "/metrics";
    if ((res.status == 404 || res.status == 400) && (post || get) && req.method != (post ? "POST" : "GET")) {
      res.set_header("Allow", post ? "POST" : "GET, HEAD");
      return send_error(res, ApiError(405, fmt::format("{} takes {}, not {}", req.path, post ? "POST" : "GET", req.method), "",
                                      "invalid_request_error"));
    }
    if (res.status == 404) return send_error(res, ApiError(404, fmt::format("no route {} {}", req.method, req.path), "", "invalid_request_error"));
    if (res.status == 413) return send_too_large(req, res, kMaxBody);
    if (res.status == 414) return send_error(res, ApiError(414, "the request line (method and path) is too long"));
    if (res.status >= 400 && res.status < 500)
      return send_error(res, ApiError(res.status, fmt::format("malformed HTTP request ({} {})", req.method, req.path)));
  });
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    send_error(res, ApiError(500, what, "", "server_error"));
  });
  http.set_socket_options([this](socket_t sock) {
    httplib::default_socket_options(sock);
    listen_fd = int(sock);
  });
  http.new_task_queue = [this]() -> httplib::TaskQueue* { return pool.release(); };
  http.set_payload_max_length(kMaxBody);
  // An idle kept-alive connection holds its HTTP thread this long after its last answer (5 s by
  // default), and stop() waits for it: clients reconnect at no cost, a shutdown waits less.
  http.set_keep_alive_timeout(1);
}

Server::Server(Service& svc, const model::Model& m, const model::Tokenizer& tok, const ServerOptions& o)
    : impl_(std::make_unique<Impl>(svc, m, tok, o)) {}

Server::~Server() = default;

int Server::bind() {
  Impl& s = *impl_;
  int port = s.o.port;
  if (port == 0) {
    port = s.http.bind_to_any_port(s.o.host);
    TQ_CHECK(port > 0, "cannot listen on {} (any port)", s.o.host);
  } else {
    TQ_CHECK(s.http.bind_to_port(s.o.host, port), "cannot listen on {}:{} (in use, or not an address of this machine)", s.o.host, port);
  }
  // cpp-httplib listens with a backlog of 5 connections (CPPHTTPLIB_LISTEN_BACKLOG, fixed when the
  // library was built): 32 clients connecting at once overflowed it, and some of them saw their
  // connection closed before any answer. listen(2) on a listening socket sets a new backlog.
  if (s.listen_fd >= 0) ::listen(s.listen_fd, SOMAXCONN);
  s.pool = std::make_unique<WorkerPool>(s.o.threads);
  return port;
}

void Server::run() {
  Impl& s = *impl_;
  TQ_CHECK(s.pool, "Server::run() needs bind() first, and runs once");
  s.run_started = true;
  if (!s.stopping) s.http.listen_after_bind();
  s.run_done = true;
}

void Server::stop() {
  Impl& s = *impl_;
  s.stopping = true;
  s.svc.shutdown(s.o.shutdown_grace);
  // cpp-httplib's stop() does nothing before its loop runs: a stop() between run()'s check and the
  // loop's start waits for the loop (seq_cst: run() sees `stopping`, or stop() sees `run_started`).
  if (!s.run_started) return;
  while (!s.http.is_running() && !s.run_done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  s.http.stop();
}

}  // namespace tq::serve
