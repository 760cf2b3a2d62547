#include "proxy/runtime/metrics.h"

namespace gatehouse::proxy {

void Metrics::handshake_failed(const std::string& reason) {
  std::lock_guard lock(mutex_);
  ++failed_[reason];
}

void Metrics::request(const std::string& listener, const std::string& pool, int status, double seconds) {
  std::lock_guard lock(mutex_);
  ++requests_[RequestKey{listener, pool, status}];
  Latency& l = latency_[LatencyKey{listener, pool}];
  for (std::size_t i = 0; i < kBuckets.size(); ++i)
    if (seconds <= kBuckets[i]) {
      ++l.buckets[i];
      break;
    }
  ++l.count;
  l.sum += seconds;
}

void Metrics::refused(const std::string& listener, const std::string& reason) {
  std::lock_guard lock(mutex_);
  ++refused_[{listener, reason}];
}

std::map<std::pair<std::string, std::string>, std::uint64_t> Metrics::refusals() const {
  std::lock_guard lock(mutex_);
  return refused_;
}

void Metrics::bound_connections(const std::string& pool, int delta) {
  std::lock_guard lock(mutex_);
  bound_[pool] += delta;
}

std::map<std::string, std::int64_t> Metrics::bound() const {
  std::lock_guard lock(mutex_);
  return bound_;
}

void Metrics::note_problem(std::string line) {
  std::lock_guard lock(mutex_);
  problems_.push_back(std::move(line));
  if (problems_.size() > 50) problems_.pop_front();
}

std::map<std::string, std::uint64_t> Metrics::failures() const {
  std::lock_guard lock(mutex_);
  return failed_;
}

std::map<Metrics::RequestKey, std::uint64_t> Metrics::requests() const {
  std::lock_guard lock(mutex_);
  return requests_;
}

std::map<Metrics::LatencyKey, Metrics::Latency> Metrics::latencies() const {
  std::lock_guard lock(mutex_);
  return latency_;
}

std::vector<std::string> Metrics::recent_problems() const {
  std::lock_guard lock(mutex_);
  return {problems_.begin(), problems_.end()};
}

Metrics& metrics() {
  static Metrics instance;
  return instance;
}

}  // namespace gatehouse::proxy
