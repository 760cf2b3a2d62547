#pragma once
// Process-wide counters, read by the admin endpoint. Connection and
// handshake counters are lock-free; request series (by listener, pool and
// status, with a latency histogram) and the recent-problems list take a
// short lock.

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "sni/index.h"

namespace gatehouse::proxy {

class Metrics {
 public:
  void handshake_done(bool resumed) {
    (resumed ? handshakes_resumed : handshakes_full).fetch_add(1, std::memory_order_relaxed);
  }
  void handshake_failed(const std::string& reason);
  void sni(sni::MatchKind kind) { sni_hits[static_cast<int>(kind)].fetch_add(1, std::memory_order_relaxed); }
  // One HTTP request answered (status 0: the client went away first).
  void request(const std::string& listener, const std::string& pool, int status, double seconds);
  // A connection refused at accept (listener, reason: "max_connections",
  // "listener_max_connections").
  void refused(const std::string& listener, const std::string& reason);
  std::map<std::pair<std::string, std::string>, std::uint64_t> refusals() const;
  // Backend connections bound to one client (Windows authentication), by pool.
  void bound_connections(const std::string& pool, int delta);
  std::map<std::string, std::int64_t> bound() const;
  // A warning or error event, kept for /status (the last 50).
  void note_problem(std::string line);

  std::atomic<std::uint64_t> connections_total{0};
  std::atomic<std::uint64_t> handshakes_full{0};
  std::atomic<std::uint64_t> handshakes_resumed{0};
  std::atomic<std::uint64_t> sni_hits[4]{};  // by sni::MatchKind

  static constexpr std::array<double, 13> kBuckets{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  struct Latency {
    std::array<std::uint64_t, kBuckets.size()> buckets{};  // cumulative counts come from summing
    std::uint64_t count = 0;
    double sum = 0;
  };
  using RequestKey = std::tuple<std::string, std::string, int>;  // listener, pool, status
  using LatencyKey = std::pair<std::string, std::string>;        // listener, pool

  std::map<std::string, std::uint64_t> failures() const;
  std::map<RequestKey, std::uint64_t> requests() const;
  std::map<LatencyKey, Latency> latencies() const;
  std::vector<std::string> recent_problems() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, std::uint64_t> failed_;
  std::map<RequestKey, std::uint64_t> requests_;
  std::map<LatencyKey, Latency> latency_;
  std::deque<std::string> problems_;
  std::map<std::string, std::int64_t> bound_;
  std::map<std::pair<std::string, std::string>, std::uint64_t> refused_;
};

Metrics& metrics();

}  // namespace gatehouse::proxy
