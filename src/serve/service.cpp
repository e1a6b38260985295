#include "tq/serve/service.h"

#include <algorithm>

#include "tq/check.h"

namespace tq::serve {

using Clock = std::chrono::steady_clock;

bool Stream::next(std::vector<Event>& out, std::chrono::milliseconds timeout) {
  out.clear();
  std::unique_lock lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return !pending_.empty(); })) return false;
  out.swap(pending_);
  return true;
}

void Stream::push(const Event& e) {
  {
    std::lock_guard lock(mu_);
    pending_.push_back(e);
  }
  cv_.notify_all();
}

Service::Service(engine::Engine& e, std::function<bool(int)> is_stop, const SchedulerOptions& so, const ServiceOptions& o)
    : e_(e), sched_(std::make_unique<Scheduler>(e, std::move(is_stop), so)), opts_(o) {
  TQ_CHECK(opts_.max_waiting >= 1, "the waiting queue must hold at least one request");
  // Prometheus histogram buckets for the time to first token, in seconds.
  stats_.ttft_buckets = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  stats_.ttft_counts.assign(stats_.ttft_buckets.size() + 1, 0);
  sched_stats_ = sched_->stats();
  thread_ = std::thread([this] { loop(); });
}

Service::~Service() { shutdown(std::chrono::milliseconds(0)); }

std::shared_ptr<Stream> Service::submit(Request r) {
  sched_->check(r);
  std::lock_guard lock(mu_);
  if (stopping_) {
    ++stats_.refused;
    throw Busy("the server is shutting down", true);
  }
  const size_t waiting = inbox_.size() + sched_stats_.waiting;
  if (waiting >= opts_.max_waiting) {
    ++stats_.refused;
    throw Busy(fmt::format("{} requests are waiting already (--max-queue {}); try again later", waiting, opts_.max_waiting), false);
  }
  const uint64_t id = next_id_++;
  auto stream = std::make_shared<Stream>(id);
  streams_.emplace(id, stream);
  submitted_.emplace(id, Clock::now());
  inbox_.emplace_back(std::move(r), id);
  ++stats_.requests;
  cv_.notify_all();
  return stream;
}

void Service::cancel(uint64_t id, Finish why) {
  std::lock_guard lock(mu_);
  if (!streams_.count(id)) return;
  cancels_.emplace_back(id, why);
  cv_.notify_all();
}

void Service::record(const std::vector<Event>& events, Clock::time_point now) {
  uint32_t tokens = 0;
  for (const Event& ev : events) {
    const auto it = streams_.find(ev.id);
    if (it == streams_.end()) continue;
    if (ev.token >= 0) {
      ++tokens;
      if (const auto t = submitted_.find(ev.id); t != submitted_.end()) {
        const double s = std::chrono::duration<double>(now - t->second).count();
        const size_t b = size_t(std::lower_bound(stats_.ttft_buckets.begin(), stats_.ttft_buckets.end(), s) - stats_.ttft_buckets.begin());
        for (size_t i = b; i < stats_.ttft_counts.size(); ++i) ++stats_.ttft_counts[i];
        stats_.ttft_sum += s;
        submitted_.erase(t);
      }
    }
    it->second->push(ev);
    if (ev.finish != Finish::kNone) {
      streams_.erase(it);
      submitted_.erase(ev.id);
    }
  }
  recent_.emplace_back(now, tokens);
  while (!recent_.empty() && now - recent_.front().first > std::chrono::seconds(10)) recent_.pop_front();
}

void Service::loop() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopped_ || !inbox_.empty() || !cancels_.empty() || !sched_->idle(); });
      if (stopped_ && inbox_.empty() && sched_->idle()) return;
      for (auto& [r, id] : inbox_) {
        try {
          sched_->add(std::move(r), id);
        } catch (const Error& err) {  // checked at submit, so only a bug gets here: the request ends, the service goes on
          record({Event{id, -1, Finish::kError, err.what(), std::nullopt, {}}}, Clock::now());
        }
      }
      inbox_.clear();
      for (const auto& [id, why] : cancels_) sched_->cancel(id, why);
      cancels_.clear();
    }
    const Clock::time_point t0 = Clock::now();
    std::vector<Event> events;
    bool failed = false;
    std::string why;
    try {
      events = sched_->step();
    } catch (const std::exception& err) {  // past the scheduler's own handling (a runner's tail copy, memory): see below
      failed = true;
      why = err.what();
    }
    const Clock::time_point t1 = Clock::now();
    std::lock_guard lock(mu_);
    if (failed) {
      // Which requests the step touched is unknown: every one the scheduler holds ends with the
      // error, its pages back uncached; those submitted meanwhile (the inbox) and later ones run.
      events = sched_->fail_all("the engine step failed: " + why);
    }
    stats_.step_seconds += std::chrono::duration<double>(t1 - t0).count();
    record(events, t1);
    sched_stats_ = sched_->stats();
    if (streams_.empty()) done_.notify_all();
  }
}

ServiceStats Service::stats() {
  std::lock_guard lock(mu_);
  ServiceStats st = stats_;
  st.scheduler = sched_stats_;
  st.scheduler.waiting += uint32_t(inbox_.size());
  uint64_t tokens = 0;
  for (const auto& [t, n] : recent_) tokens += n;
  if (!recent_.empty()) {
    const double span = std::max(1.0, std::chrono::duration<double>(Clock::now() - recent_.front().first).count());
    st.tokens_per_second = double(tokens) / span;
  }
  return st;
}

void Service::shutdown(std::chrono::milliseconds grace) {
  {
    std::unique_lock lock(mu_);
    if (stopped_) return;
    stopping_ = true;
    done_.wait_for(lock, grace, [&] { return streams_.empty(); });
    for (const auto& [id, s] : streams_) cancels_.emplace_back(id, Finish::kCancelled);
    cv_.notify_all();
    done_.wait(lock, [&] { return streams_.empty(); });
    stopped_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

}  // namespace tq::serve
