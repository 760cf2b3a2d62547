#pragma once
// Rise/fall health state of one server in one pool, HAProxy style: a server
// goes down after `fall` consecutive failed probes and comes back after `rise`
// consecutive successful ones. Probes are run by the runtime; this only counts.
//
// Passive checks: consecutive failed connects by real traffic, with the same
// `fall` threshold, take a server down without waiting for the next probe.
// Only probes bring it back, so a pool without probes should not use them.

namespace gatehouse::balancer {

class HealthState {
 public:
  // rise and fall below 1 are taken as 1.
  explicit HealthState(int rise, int fall, bool initially_up = true);

  // A probe result. Returns true when up() changed.
  bool record(bool success);
  // A connection attempt by real traffic failed. Returns true when up() changed.
  bool record_connect_failure();
  // A connection attempt by real traffic succeeded.
  void record_connect_success() { connect_failures_ = 0; }

  bool up() const { return up_; }
  int consecutive_successes() const { return successes_; }
  int consecutive_failures() const { return failures_; }
  int consecutive_connect_failures() const { return connect_failures_; }

 private:
  void set_up(bool up);

  int rise_;
  int fall_;
  bool up_;
  int successes_ = 0;
  int failures_ = 0;
  int connect_failures_ = 0;
};

}  // namespace gatehouse::balancer
