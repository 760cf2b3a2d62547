#pragma once
// Process-wide counters (lock-free), read by the admin endpoint.

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "sni/index.h"

namespace gatehouse::proxy {

class Metrics {
 public:
  void handshake_done(bool resumed) { (resumed ? handshakes_resumed : handshakes_full).fetch_add(1, std::memory_order_relaxed); }
  void handshake_failed(const std::string& reason);
  void sni(sni::MatchKind kind) { sni_hits[static_cast<int>(kind)].fetch_add(1, std::memory_order_relaxed); }

  std::atomic<std::uint64_t> connections_total{0};
  std::atomic<std::uint64_t> handshakes_full{0};
  std::atomic<std::uint64_t> handshakes_resumed{0};
  std::atomic<std::uint64_t> sni_hits[4]{};  // by sni::MatchKind

  std::map<std::string, std::uint64_t> failures() const;

 private:
  mutable std::mutex mutex_;  // failures are rare; counted by reason
  std::map<std::string, std::uint64_t> failed_;
};

Metrics& metrics();

}  // namespace gatehouse::proxy
