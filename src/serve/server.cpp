#include "tq/serve/server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <atomic>
#include <random>

#include <fmt/format.h>

#include "tq/check.h"
#include "tq/engine/generation.h"
#include "tq/serve/metrics.h"
#include "tq/serve/openai.h"
#include "tq/serve/text_stream.h"

namespace tq::serve {

using json = nlohmann::json;

namespace {

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(dump(error_body(e)), "application/json");
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

// The socket of the connection a request came on, or -1. cpp-httplib 0.11 hands a handler no
// socket, but the connection's address pair names it: it is looked for once among the process's
// sockets (the handler runs on the thread that owns it, so it stays open until the handler returns).
int connection_socket(const httplib::Request& req) {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  while (const dirent* e = readdir(d)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || fd < 0) continue;
    struct stat st {};
    if (fstat(int(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof local, pl = sizeof peer;
    if (getsockname(int(fd), reinterpret_cast<sockaddr*>(&local), &ll) != 0 || getpeername(int(fd), reinterpret_cast<sockaddr*>(&peer), &pl) != 0)
      continue;
    if (address_of(local) == std::pair{req.local_addr, req.local_port} && address_of(peer) == std::pair{req.remote_addr, req.remote_port}) {
      found = int(fd);
      break;
    }
  }
  closedir(d);
  return found;
}

// Whether the client hung up (closed or reset its end). A client that sends more (a pipelined
// request) is still there.
bool client_gone(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return true;
  char c;
  return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

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
  int prev;                 // the token before the next one
  std::vector<LogprobEntry> entries;  // the tokens' log-probabilities, [sent] then [pending]
  size_t sent = 0, sent_chars = 0;    // entries a stream has sent, and the characters of their text

  Answer(std::shared_ptr<Stream> s, ResponseHead h, const model::Tokenizer& t, int prev_token, std::vector<std::string> stops,
         uint32_t prompt, bool want_logprobs)
      : stream(std::move(s)), head(std::move(h)), tok(t), text(t, prev_token, std::move(stops)), logprobs(want_logprobs), prev(prev_token) {
    usage.prompt = prompt;
  }

  // The choice's "logprobs" for entries [from, end) whose text starts at character `chars`;
  // moves both past them. Null when not asked.
  json take_logprobs(size_t& from, size_t& chars) {
    if (!logprobs) return nullptr;
    const std::span<const LogprobEntry> part = std::span<const LogprobEntry>(entries).subspan(from);
    json j = logprobs_json(head.chat, part, chars);
    for (const LogprobEntry& e : part) chars += utf8_characters(e.text);
    from = entries.size();
    return j;
  }

  // Takes the stream's next events (waiting up to `wait`); returns the text they release. Ends
  // the request in the service when a stop string appears.
  std::string advance(Service& svc, std::chrono::milliseconds wait) {
    std::vector<Event> events;
    std::string out;
    if (!stream->next(events, wait)) return out;
    for (const Event& ev : events) {
      if (ev.token >= 0 && finish.empty()) {
        ++usage.completion;
        if (logprobs && ev.logprobs) {
          LogprobEntry e{tok.decode_next(prev, ev.token), ev.logprobs->logprob, {}};
          for (const auto& [id, lp] : ev.logprobs->top) e.top.emplace_back(tok.decode_next(prev, id), lp);
          entries.push_back(std::move(e));
        }
        prev = ev.token;
        out += text.push(ev.token);
        if (text.stopped()) {
          finish = "stop";
          svc.cancel(stream->id());
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
  int64_t created = unix_now();
  uint32_t context_;  // the engine's: prompt + max_tokens at most

  Impl(Service& s, const model::Model& model, const model::Tokenizer& t, const ServerOptions& opts)
      : svc(s), m(model), tok(t), o(opts), context_(s.engine().options().context) {
    // Models without a template (llama2.c checkpoints) chat in ChatML, as llama-server does.
    chat_template = m.config.chat_template == model::ChatTemplate::None ? model::ChatTemplate::ChatML : m.config.chat_template;
    routes();
  }


  void routes();
  void complete(const httplib::Request& req, httplib::Response& res, bool chat);
  std::shared_ptr<Answer> start(const CompletionRequest& cr, std::string* echo);
  void stream(httplib::Response& res, std::shared_ptr<Answer> a, bool include_usage, std::string echo);
};

std::shared_ptr<Answer> Server::Impl::start(const CompletionRequest& cr, std::string* echo) {
  if (!cr.model.empty() && cr.model != o.model_name)
    throw ApiError(404, fmt::format("the model '{}' does not exist; this server serves '{}'", cr.model, o.model_name), "model",
                   "not_found_error");
  std::vector<int> prompt;
  try {
    if (cr.chat)
      prompt = engine::prompt_tokens(m, tok, engine::apply_chat_template(chat_template, cr.messages), false);
    else if (!cr.prompt_ids.empty())
      prompt = cr.prompt_ids;
    else
      prompt = engine::prompt_tokens(m, tok, cr.prompt, false);
  } catch (const Error& e) {
    throw ApiError(400, e.what(), cr.chat ? "messages" : "prompt");
  }
  const char* what = cr.chat ? "messages" : "prompt";
  if (prompt.size() >= context_)
    throw ApiError(400, fmt::format("this model's maximum context length is {} tokens, but the {} has {} tokens", context_, what, prompt.size()),
                   what);
  // A request for logprobs runs without the server's default speculation (they do not combine).
  Request r{prompt, cr.sampling, cr.max_tokens.value_or(uint32_t(context_ - prompt.size())),
            cr.speculation.value_or(cr.logprobs >= 0 ? std::nullopt : o.speculation), cr.logprobs};
  if (!cr.seeded) r.sampling.seed = (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
  if (echo) *echo = cr.echo ? (cr.prompt_ids.empty() ? cr.prompt : tok.decode(cr.prompt_ids)) : "";
  std::shared_ptr<Stream> s;
  try {
    s = svc.submit(std::move(r));
  } catch (const Busy& b) {
    throw ApiError(b.shutting_down ? 503 : 429, b.what(), "", b.shutting_down ? "service_unavailable" : "rate_limit_error");
  } catch (const Refused& e) {
    throw ApiError(400, e.what(), e.param);
  }
  ResponseHead h{fmt::format("{}-{}", cr.chat ? "chatcmpl" : "cmpl", s->id()), o.model_name, unix_now(), cr.chat};
  return std::make_shared<Answer>(s, h, tok, prompt.back(), cr.stop, uint32_t(prompt.size()), cr.logprobs >= 0);
}

void Server::Impl::complete(const httplib::Request& req, httplib::Response& res, bool chat) {
  try {
    const json body = json::parse(req.body, nullptr, false);
    if (body.is_discarded()) throw ApiError(400, "the request body is not valid JSON");
    const CompletionRequest cr = parse_completion(body, chat);
    std::string echo;
    std::shared_ptr<Answer> a = start(cr, &echo);
    if (cr.stream) return stream(res, std::move(a), cr.include_usage, echo);
    std::string text = echo;
    // A client that leaves before its answer cancels its request, as a stream's does (its pages
    // go back now, not when the answer nobody reads is complete).
    const int fd = connection_socket(req);
    bool cancelled = false;
    while (a->finish.empty()) {
      text += a->advance(svc, std::chrono::milliseconds(250));
      if (fd >= 0 && !cancelled && a->finish.empty() && client_gone(fd)) {
        svc.cancel(a->stream->id());
        cancelled = true;
      }
    }
    if (!a->error.empty()) throw ApiError(500, a->error, "", "server_error");
    if (a->finish == "abort") throw ApiError(503, "the server shut down before the request finished", "", "service_unavailable");
    size_t from = 0, chars = 0;  // (no echo with logprobs: the offsets start at the completion)
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
        if (a->first && (a->head.chat || !echo.empty()) && !chunk(echo, "")) return false;
        auto last_write = std::chrono::steady_clock::now();
        while (a->finish.empty()) {
          const std::string text = a->advance(svc, std::chrono::milliseconds(250));
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
  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { complete(req, res, false); });
  http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { complete(req, res, true); });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    const json model = {{"id", o.model_name}, {"object", "model"}, {"created", created}, {"owned_by", "turboquant"}, {"max_model_len", context_}};
    res.set_content(dump(json{{"object", "list"}, {"data", {model}}}), "application/json");
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.status = stopping ? 503 : 200;
    res.set_content(stopping ? R"({"status":"shutting down"})" : R"({"status":"ok"})", "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(prometheus_text(svc.stats()), "text/plain; version=0.0.4");
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404) send_error(res, ApiError(404, fmt::format("no route {} {}", req.method, req.path), "", "not_found_error"));
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
  const uint32_t threads = o.threads;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(size_t(64) << 20);
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
  return port;
}

void Server::run() { impl_->http.listen_after_bind(); }

void Server::stop() {
  impl_->stopping = true;
  impl_->svc.shutdown(impl_->o.shutdown_grace);
  impl_->http.stop();
}

}  // namespace tq::serve
