#include "balancer/health.h"

#include <algorithm>

namespace gatehouse::balancer {

HealthState::HealthState(int rise, int fall, bool initially_up)
    : rise_(std::max(rise, 1)), fall_(std::max(fall, 1)), up_(initially_up) {}

bool HealthState::record(bool success) {
  if (success) {
    ++successes_;
    failures_ = 0;
  } else {
    ++failures_;
    successes_ = 0;
  }
  if (up_ && failures_ >= fall_) return set_up(false), true;
  if (!up_ && successes_ >= rise_) return set_up(true), true;
  return false;
}

bool HealthState::record_connect_failure() {
  ++connect_failures_;
  if (up_ && connect_failures_ >= fall_) return set_up(false), true;
  return false;
}

void HealthState::set_up(bool up) {
  up_ = up;
  // A passive take-down must still be earned back with `rise` probes, and a
  // server that came back starts with a clean connect record.
  if (up) connect_failures_ = 0;
  else successes_ = 0;
}

}  // namespace gatehouse::balancer
