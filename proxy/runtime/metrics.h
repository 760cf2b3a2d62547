#pragma once
// Counters for the admin endpoint, kept so that counting costs a worker no
// lock, no string and no shared cache line: each worker owns a WorkerMetrics
// that only its thread writes (as Seastar keeps its counters per core), and
// /metrics and /status sum the workers' when they are asked.
//
// Series are addressed by small integer ids that MetricIds gives out by name
// when a generation is built, never on the request path. A listener or pool
// that is in two generations keeps its id, so its counters carry on across a
// reload: a Prometheus counter never goes backwards.
//
// Rare events (failed handshakes by reason, warnings for /status) take a
// short lock on the process-wide Metrics instead.

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "sni/index.h"

namespace gatehouse::proxy {

// A counter written by one thread and read by any: a relaxed load and store
// instead of a locked read-modify-write, since no other thread adds to it.
template <typename T>
class OwnedCounter {
 public:
  void add(T n, std::memory_order order = std::memory_order_relaxed) {
    value_.store(value_.load(std::memory_order_relaxed) + n, order);
  }
  T get(std::memory_order order = std::memory_order_relaxed) const { return value_.load(order); }

 private:
  std::atomic<T> value_{};
};

// Slots that never move once made, so a scrape on another thread can read
// them while their owner keeps counting: a fixed directory of chunks, each
// allocated by the owner the first time one of its slots is written (once per
// chunk for the life of the worker, not per request).
template <typename T, std::size_t kPerChunk, std::size_t kChunks>
class StableSlots {
 public:
  static constexpr std::size_t kCapacity = kPerChunk * kChunks;

  StableSlots() = default;
  ~StableSlots() {
    for (auto& chunk : chunks_) delete[] chunk.load(std::memory_order_relaxed);
  }
  StableSlots(const StableSlots&) = delete;
  StableSlots& operator=(const StableSlots&) = delete;

  // The owner thread only; i < kCapacity (MetricIds gives out no more).
  T& at(std::size_t i) {
    std::atomic<T*>& slot = chunks_[i / kPerChunk];
    T* chunk = slot.load(std::memory_order_relaxed);  // the owner is the only writer
    if (chunk == nullptr) [[unlikely]] {
      chunk = new T[kPerChunk]();
      slot.store(chunk, std::memory_order_release);
    }
    return chunk[i % kPerChunk];
  }
  // Any thread; nullptr when nothing was ever written there.
  const T* find(std::size_t i) const {
    if (i >= kCapacity) return nullptr;
    const T* chunk = chunks_[i / kPerChunk].load(std::memory_order_acquire);
    return chunk == nullptr ? nullptr : chunk + i % kPerChunk;
  }

 private:
  std::array<std::atomic<T*>, kChunks> chunks_{};
};

// How many distinct names the process can count, from its start (ids are
// never reused, so that a name that comes back finds its counters).
inline constexpr std::size_t kMaxListeners = 64 * 256;
inline constexpr std::size_t kMaxPools = 64 * 256;
inline constexpr std::size_t kMaxSeries = 32 * 2048;  // (listener, pool) pairs

// Names to ids, for the life of the process. Used when a generation is built
// and when a scrape names what it summed; takes a lock, so never on the
// request path.
class MetricIds {
 public:
  using Id = std::uint32_t;
  // Each throws std::runtime_error when the process has already named as
  // many as workers have room for.
  Id listener(std::string_view name);
  Id pool(std::string_view name);
  // The request series of one listener and pool ("": no pool answered).
  Id series(std::string_view listener, std::string_view pool);

  struct Names {
    std::vector<std::string> listeners;                       // by id
    std::vector<std::string> pools;                           // by id
    std::vector<std::pair<std::string, std::string>> series;  // (listener, pool) by id
  };
  Names names() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, Id, std::less<>> listener_ids_;
  std::map<std::string, Id, std::less<>> pool_ids_;
  std::map<std::pair<std::string, std::string>, Id> series_ids_;
  Names names_;
};

// Why a connection was closed at accept; the names are the label values.
enum class Refusal { max_connections, listener_max_connections };
inline constexpr std::array<const char*, 2> kRefusalNames{"max_connections", "listener_max_connections"};

// Upper bounds (seconds) of the request latency histogram.
inline constexpr std::array<double, 13> kLatencyBuckets{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                        1,     2.5,  5,     10,   30,  60};

// One worker's requests on one (listener, pool): counts by status and the
// latency histogram. Written by the worker, read by scrapes.
class RequestSeries {
 public:
  RequestSeries() = default;
  ~RequestSeries();
  RequestSeries(const RequestSeries&) = delete;
  RequestSeries& operator=(const RequestSeries&) = delete;

  // `status` is 0 (nothing was sent) or a three-digit HTTP status; anything
  // else counts as 0.
  void add(int status, double seconds);

  std::uint64_t with_status(int status) const;
  std::uint64_t bucket(std::size_t i) const { return buckets_[i].get(); }  // not cumulative
  std::uint64_t count() const { return count_.get(); }
  double sum() const { return sum_.get(); }

 private:
  // By status / 100, a hundred counters each, made at the first status of
  // that hundred: a series sees a handful of the thousand possible.
  std::array<std::atomic<OwnedCounter<std::uint64_t>*>, 10> by_status_{};
  std::array<OwnedCounter<std::uint64_t>, kLatencyBuckets.size()> buckets_;
  OwnedCounter<std::uint64_t> count_;
  OwnedCounter<double> sum_;
};

// Everything one worker counts. Every writing method is for that worker's
// thread alone; any thread may read.
class WorkerMetrics {
 public:
  using Id = MetricIds::Id;

  void connection_accepted() { connections_.add(1); }
  void handshake_done(bool resumed) { (resumed ? handshakes_resumed_ : handshakes_full_).add(1); }
  void sni(sni::MatchKind kind) { sni_hits_[static_cast<std::size_t>(kind)].add(1); }
  // One HTTP request answered on a series of MetricIds::series (status 0:
  // the client went away first).
  void request(Id series, int status, double seconds) { requests_.at(series).add(status, seconds); }
  // A connection closed at accept, on a listener of MetricIds::listener.
  void refused(Id listener, Refusal reason) { refused_.at(listener)[static_cast<std::size_t>(reason)].add(1); }
  // Backend connections bound to one client (Windows authentication), on a
  // pool of MetricIds::pool; +1 when bound, -1 when closed, by this worker.
  void bound_connections(Id pool, int delta) { bound_.at(pool).add(delta); }

  std::uint64_t connections_total() const { return connections_.get(); }
  std::uint64_t handshakes_full() const { return handshakes_full_.get(); }
  std::uint64_t handshakes_resumed() const { return handshakes_resumed_.get(); }
  std::uint64_t sni_hits(sni::MatchKind kind) const { return sni_hits_[static_cast<std::size_t>(kind)].get(); }
  const RequestSeries* series(Id series) const { return requests_.find(series); }
  std::uint64_t refusals(Id listener, Refusal reason) const;
  std::int64_t bound(Id pool) const;

 private:
  OwnedCounter<std::uint64_t> connections_;
  OwnedCounter<std::uint64_t> handshakes_full_;
  OwnedCounter<std::uint64_t> handshakes_resumed_;
  std::array<OwnedCounter<std::uint64_t>, 4> sni_hits_;  // by sni::MatchKind
  StableSlots<RequestSeries, 32, kMaxSeries / 32> requests_;
  StableSlots<std::array<OwnedCounter<std::uint64_t>, kRefusalNames.size()>, 64, kMaxListeners / 64> refused_;
  StableSlots<OwnedCounter<std::int64_t>, 64, kMaxPools / 64> bound_;
};

// The latency histogram of one (listener, pool), summed over workers.
struct Latency {
  std::array<std::uint64_t, kLatencyBuckets.size()> buckets{};  // not cumulative
  std::uint64_t count = 0;
  double sum = 0;
};

// Every worker's counters summed and named: what /metrics and /status show.
// Only series that counted something are in the maps, except `bound`, which
// has every pool ever named.
struct MetricTotals {
  using RequestKey = std::tuple<std::string, std::string, int>;  // listener, pool, status
  using LatencyKey = std::pair<std::string, std::string>;        // listener, pool

  std::uint64_t connections_total = 0;
  std::uint64_t handshakes_full = 0;
  std::uint64_t handshakes_resumed = 0;
  std::array<std::uint64_t, 4> sni_hits{};                                // by sni::MatchKind
  std::map<std::pair<std::string, std::string>, std::uint64_t> refusals;  // (listener, reason)
  std::map<std::string, std::int64_t> bound;                              // by pool
  std::map<RequestKey, std::uint64_t> requests;
  std::map<LatencyKey, Latency> latencies;
};
MetricTotals sum_metrics(std::span<const WorkerMetrics* const> workers, const MetricIds& ids);

// What stays process-wide: the id registry, and the rare events.
class Metrics {
 public:
  MetricIds& ids() { return ids_; }
  const MetricIds& ids() const { return ids_; }

  // A failed client handshake: the failure path, where the log line costs
  // more than this lock.
  void handshake_failed(const std::string& reason);
  std::map<std::string, std::uint64_t> failures() const;
  // A warning or error event, kept for /status (the last 50).
  void note_problem(std::string line);
  std::vector<std::string> recent_problems() const;

 private:
  MetricIds ids_;
  mutable std::mutex mutex_;
  std::map<std::string, std::uint64_t> failed_;
  std::deque<std::string> problems_;
};

Metrics& metrics();

}  // namespace gatehouse::proxy
