// The scheduler behind a thread-safe front: one engine thread steps the scheduler while any
// request is waiting or running; other threads (HTTP handlers) submit requests, read their
// events from a per-request stream, and cancel them. Also keeps what /metrics reports.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "tq/serve/scheduler.h"

namespace tq::serve {

// The events of one request, in order, as the engine thread produces them.
class Stream {
 public:
  explicit Stream(uint64_t id) : id_(id) {}
  uint64_t id() const { return id_; }
  // Waits up to `timeout` for events and moves them to `out` (cleared first); false on timeout.
  bool next(std::vector<Event>& out, std::chrono::milliseconds timeout);

 private:
  friend class Service;
  void push(const Event& e);
  uint64_t id_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Event> pending_;
};

// The service is busy: its waiting queue is full, or it is shutting down (HTTP 429 / 503).
class Busy : public Error {
 public:
  Busy(std::string what, bool shutting_down) : Error(std::move(what)), shutting_down(shutting_down) {}
  bool shutting_down;
};

struct ServiceOptions {
  uint32_t max_waiting = 256;  // requests waiting for admission at most; more are refused (Busy)
};

// Totals for /metrics, beside the scheduler's counters.
struct ServiceStats {
  SchedulerStats scheduler;
  uint64_t requests = 0, refused = 0;                 // accepted, and refused as busy
  double tokens_per_second = 0;                       // generated, over the last 10 s
  std::vector<double> ttft_buckets;                   // upper bounds (s) of the time-to-first-token histogram
  std::vector<uint64_t> ttft_counts;                  // [buckets + 1] cumulative counts, +Inf last
  double ttft_sum = 0;
  double step_seconds = 0;                            // total time inside scheduler steps
};

class Service {
 public:
  // Starts the engine thread. The engine must outlive the service.
  Service(engine::Engine& e, std::function<bool(int)> is_stop, const SchedulerOptions& so, const ServiceOptions& o = {});
  ~Service();  // shutdown(0)

  const Scheduler& scheduler() const { return *sched_; }
  const engine::Engine& engine() const { return e_; }

  // Checks and queues a request; its events come through the returned stream. Throws Refused
  // for a request that can never run (Scheduler::check) and Busy when the queue is full or the
  // service is shutting down.
  std::shared_ptr<Stream> submit(Request r);
  // Ends the request unless it ended already: `why` kCancelled (the client left, a shutdown), or
  // kStop (the server found a stop string in its text: it counts as finished, not cancelled).
  void cancel(uint64_t id, Finish why = Finish::kCancelled);

  ServiceStats stats();

  // Refuses new requests, lets running and waiting ones finish for up to `grace`, cancels the rest
  // and stops the engine thread once every request has ended. Idempotent.
  void shutdown(std::chrono::milliseconds grace);

 private:
  void loop();
  void record(const std::vector<Event>& events, std::chrono::steady_clock::time_point now);

  engine::Engine& e_;
  std::unique_ptr<Scheduler> sched_;
  ServiceOptions opts_;

  std::mutex mu_;  // guards everything below, and the scheduler's add/cancel (never held during a step)
  std::condition_variable cv_;    // the engine thread waits for work
  std::condition_variable done_; // shutdown() waits for requests to end
  std::vector<std::pair<Request, uint64_t>> inbox_;
  std::vector<std::pair<uint64_t, Finish>> cancels_;  // (request, why)
  std::map<uint64_t, std::shared_ptr<Stream>> streams_;  // requests not ended yet
  std::map<uint64_t, std::chrono::steady_clock::time_point> submitted_;  // until the first token
  uint64_t next_id_ = 1;
  bool stopping_ = false, stopped_ = false;
  ServiceStats stats_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, uint32_t>> recent_;  // (step end, tokens), last 10 s
  SchedulerStats sched_stats_;  // copied after every step
  std::thread thread_;
};

}  // namespace tq::serve
