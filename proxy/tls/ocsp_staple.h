#pragma once
// The OCSP response a certificate staples, swapped whole when a newer one
// arrives (reload, or a fetch) and read lock-free by every handshake. A
// response is stapled only before its nextUpdate: past it, nothing is.

#include <atomic>
#include <memory>
#include <string>

#include "sni/certificate.h"

namespace gatehouse::proxy {

struct Staple {
  std::string der;                      // the OCSPResponse, checked by sni::check_ocsp_response
  sni::Clock::time_point next_update;   // not stapled from then on
  sni::Clock::time_point refresh_at{};  // ocsp = "auto": when to fetch a newer one
};

class StapleSlot {
 public:
  std::shared_ptr<const Staple> get() const { return staple_.load(std::memory_order_acquire); }
  void set(std::shared_ptr<const Staple> staple) { staple_.store(std::move(staple), std::memory_order_release); }
  // The response to staple now, or nullptr (none, or expired).
  std::shared_ptr<const Staple> current(sni::Clock::time_point now) const {
    auto staple = get();
    return staple && now < staple->next_update ? staple : nullptr;
  }

 private:
  std::atomic<std::shared_ptr<const Staple>> staple_;
};

}  // namespace gatehouse::proxy
