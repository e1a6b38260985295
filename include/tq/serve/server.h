// The OpenAI-compatible HTTP server over a Service (cpp-httplib): /v1/completions,
// /v1/chat/completions (stream: true as server-sent events), /v1/models, /health and /metrics.
// docs/serving.md describes the routes, the errors and the metrics.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tq/engine/speculative.h"
#include "tq/model/model.h"
#include "tq/model/tokenizer.h"
#include "tq/serve/service.h"

namespace tq::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                  // 0: any free port (bind() says which)
  std::string model_name;           // what /v1/models lists and requests may name
  uint32_t threads = 64;            // HTTP worker threads: each open stream holds one
  std::chrono::milliseconds shutdown_grace{10000};  // stop(): how long requests may finish
  // CORS: the origins whose browser pages may call the API ("*": any, vLLM's default); none: no
  // CORS headers, and a browser keeps the answers from other origins' pages.
  std::vector<std::string> allowed_origins{"*"};
  // Speculative decoding of requests that do not say ("speculative" in the body): --spec.
  std::optional<engine::SpeculativeSpec> speculation;
};

class Server {
 public:
  // The service, model and tokenizer must outlive the server.
  Server(Service& svc, const model::Model& m, const model::Tokenizer& tok, const ServerOptions& o);
  ~Server();

  // Binds the listening socket; returns the port. Throws tq::Error naming host and port when it
  // cannot.
  int bind();
  // Serves until stop(); bind() first.
  void run();
  // Refuses new requests (503), lets running ones finish for up to shutdown_grace, cancels the
  // rest, closes the socket; run() then returns. Safe from any thread but a request handler.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tq::serve
