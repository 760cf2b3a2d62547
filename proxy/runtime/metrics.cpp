#include "proxy/runtime/metrics.h"

#include <stdexcept>

namespace gatehouse::proxy {

namespace {

void check_room(std::size_t used, std::size_t capacity, const char* what) {
  if (used < capacity) return;
  throw std::runtime_error("this process has counted " + std::to_string(capacity) + " different " + what +
                           " since it started, as many as it can keep apart; restart gatehouse to count new ones");
}

}  // namespace

MetricIds::Id MetricIds::listener(std::string_view name) {
  std::lock_guard lock(mutex_);
  if (auto it = listener_ids_.find(name); it != listener_ids_.end()) return it->second;
  check_room(names_.listeners.size(), kMaxListeners, "listener names");
  const auto id = static_cast<Id>(names_.listeners.size());
  listener_ids_.emplace(std::string(name), id);
  names_.listeners.emplace_back(name);
  return id;
}

MetricIds::Id MetricIds::pool(std::string_view name) {
  std::lock_guard lock(mutex_);
  if (auto it = pool_ids_.find(name); it != pool_ids_.end()) return it->second;
  check_room(names_.pools.size(), kMaxPools, "pool names");
  const auto id = static_cast<Id>(names_.pools.size());
  pool_ids_.emplace(std::string(name), id);
  names_.pools.emplace_back(name);
  return id;
}

MetricIds::Id MetricIds::series(std::string_view listener, std::string_view pool) {
  std::pair<std::string, std::string> key{listener, pool};
  std::lock_guard lock(mutex_);
  if (auto it = series_ids_.find(key); it != series_ids_.end()) return it->second;
  check_room(names_.series.size(), kMaxSeries, "(listener, pool) pairs");
  const auto id = static_cast<Id>(names_.series.size());
  series_ids_.emplace(key, id);
  names_.series.push_back(std::move(key));
  return id;
}

MetricIds::Names MetricIds::names() const {
  std::lock_guard lock(mutex_);
  return names_;
}

RequestSeries::~RequestSeries() {
  for (auto& block : by_status_) delete[] block.load(std::memory_order_relaxed);
}

void RequestSeries::add(int status, double seconds) {
  if (status < 0 || status > 999) status = 0;
  for (std::size_t i = 0; i < kLatencyBuckets.size(); ++i)
    if (seconds <= kLatencyBuckets[i]) {
      buckets_[i].add(1);
      break;
    }
  count_.add(1);
  sum_.add(seconds);
  std::atomic<OwnedCounter<std::uint64_t>*>& slot = by_status_[static_cast<std::size_t>(status / 100)];
  OwnedCounter<std::uint64_t>* block = slot.load(std::memory_order_relaxed);  // this thread is the only writer
  if (block == nullptr) [[unlikely]] {
    block = new OwnedCounter<std::uint64_t>[100]();
    slot.store(block, std::memory_order_release);
  }
  // Last and with release: a scrape that sees the status counted (it reads
  // them first, with acquire) sees the histogram count it too.
  block[status % 100].add(1, std::memory_order_release);
}

std::uint64_t RequestSeries::with_status(int status) const {
  if (status < 0 || status > 999) return 0;
  const auto* block = by_status_[static_cast<std::size_t>(status / 100)].load(std::memory_order_acquire);
  return block == nullptr ? 0 : block[status % 100].get(std::memory_order_acquire);
}

std::uint64_t WorkerMetrics::refusals(Id listener, Refusal reason) const {
  const auto* counters = refused_.find(listener);
  return counters == nullptr ? 0 : (*counters)[static_cast<std::size_t>(reason)].get();
}

std::int64_t WorkerMetrics::bound(Id pool) const {
  const auto* gauge = bound_.find(pool);
  return gauge == nullptr ? 0 : gauge->get();
}

namespace {

void sum_connections(std::span<const WorkerMetrics* const> workers, MetricTotals& out) {
  for (const WorkerMetrics* w : workers) {
    out.connections_total += w->connections_total();
    out.handshakes_full += w->handshakes_full();
    out.handshakes_resumed += w->handshakes_resumed();
    for (std::size_t k = 0; k < out.sni_hits.size(); ++k)
      out.sni_hits[k] += w->sni_hits(static_cast<sni::MatchKind>(k));
  }
}

void sum_refusals(std::span<const WorkerMetrics* const> workers, const MetricIds::Names& names, MetricTotals& out) {
  for (std::size_t l = 0; l < names.listeners.size(); ++l)
    for (std::size_t r = 0; r < kRefusalNames.size(); ++r) {
      std::uint64_t n = 0;
      for (const WorkerMetrics* w : workers) n += w->refusals(static_cast<MetricIds::Id>(l), static_cast<Refusal>(r));
      if (n != 0) out.refusals[{names.listeners[l], kRefusalNames[r]}] = n;
    }
}

void sum_bound(std::span<const WorkerMetrics* const> workers, const MetricIds::Names& names, MetricTotals& out) {
  for (std::size_t p = 0; p < names.pools.size(); ++p) {
    std::int64_t n = 0;
    for (const WorkerMetrics* w : workers) n += w->bound(static_cast<MetricIds::Id>(p));
    out.bound[names.pools[p]] = n;
  }
}

void sum_requests(std::span<const WorkerMetrics* const> workers, const MetricIds::Names& names, MetricTotals& out) {
  for (std::size_t s = 0; s < names.series.size(); ++s) {
    const auto& [listener, pool] = names.series[s];
    // Statuses first: what they count, the histogram has counted already.
    std::map<int, std::uint64_t> by_status;
    for (const WorkerMetrics* w : workers)
      if (const RequestSeries* series = w->series(static_cast<MetricIds::Id>(s)))
        for (int status = 0; status < 1000; ++status)
          if (const std::uint64_t n = series->with_status(status)) by_status[status] += n;
    if (by_status.empty()) continue;
    for (const auto& [status, n] : by_status) out.requests[{listener, pool, status}] = n;
    Latency& latency = out.latencies[{listener, pool}];
    for (const WorkerMetrics* w : workers)
      if (const RequestSeries* series = w->series(static_cast<MetricIds::Id>(s))) {
        for (std::size_t i = 0; i < kLatencyBuckets.size(); ++i) latency.buckets[i] += series->bucket(i);
        latency.count += series->count();
        latency.sum += series->sum();
      }
  }
}

}  // namespace

MetricTotals sum_metrics(std::span<const WorkerMetrics* const> workers, const MetricIds& ids) {
  const MetricIds::Names names = ids.names();
  MetricTotals out;
  sum_connections(workers, out);
  sum_refusals(workers, names, out);
  sum_bound(workers, names, out);
  sum_requests(workers, names, out);
  return out;
}

void Metrics::handshake_failed(const std::string& reason) {
  std::lock_guard lock(mutex_);
  ++failed_[reason];
}

std::map<std::string, std::uint64_t> Metrics::failures() const {
  std::lock_guard lock(mutex_);
  return failed_;
}

void Metrics::note_problem(std::string line) {
  std::lock_guard lock(mutex_);
  problems_.push_back(std::move(line));
  if (problems_.size() > 50) problems_.pop_front();
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
