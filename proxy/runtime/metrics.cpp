#include "proxy/runtime/metrics.h"

namespace gatehouse::proxy {

void Metrics::handshake_failed(const std::string& reason) {
  std::lock_guard lock(mutex_);
  ++failed_[reason];
}

std::map<std::string, std::uint64_t> Metrics::failures() const {
  std::lock_guard lock(mutex_);
  return failed_;
}

Metrics& metrics() {
  static Metrics instance;
  return instance;
}

}  // namespace gatehouse::proxy
