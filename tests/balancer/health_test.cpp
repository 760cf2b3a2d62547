#include <gtest/gtest.h>

#include <string>

#include "balancer/health.h"

namespace gatehouse::balancer {
namespace {

// Events: 's' probe ok, 'f' probe failed, 'c' connect failed, 'k' connect ok.
// `up` has the state after each event ('U'/'D'), `changed` a '1' where it changed.
struct Row {
  int rise;
  int fall;
  bool initially_up;
  std::string events;
  std::string up;
  std::string changed;
};

class Transitions : public ::testing::TestWithParam<Row> {};

TEST_P(Transitions, Follow) {
  const Row& row = GetParam();
  HealthState h(row.rise, row.fall, row.initially_up);
  std::string up, changed;
  for (char e : row.events) {
    bool c = false;
    switch (e) {
      case 's': c = h.record(true); break;
      case 'f': c = h.record(false); break;
      case 'c': c = h.record_connect_failure(); break;
      case 'k': h.record_connect_success(); break;
    }
    up += h.up() ? 'U' : 'D';
    changed += c ? '1' : '0';
  }
  EXPECT_EQ(up, row.up) << row.events;
  EXPECT_EQ(changed, row.changed) << row.events;
}

INSTANTIATE_TEST_SUITE_P(
    HealthState, Transitions,
    ::testing::Values(
        //  rise fall  up     events     up         changed
        Row{2, 3, true, "fff", "UUD", "001"},              // down on the fall-th failure
        Row{2, 3, true, "ffsfff", "UUUUUD", "000001"},     // a success resets the count
        Row{2, 3, true, "fffss", "UUDDU", "00101"},        // back on the rise-th success
        Row{2, 3, true, "fffsfss", "UUDDDDU", "0010001"},  // a failure resets the rise count
        Row{2, 3, false, "ss", "DU", "01"},                // starting down
        Row{2, 3, false, "fffs", "DDDD", "0000"},          // failing while down changes nothing
        Row{1, 1, true, "fsfs", "DUDU", "1111"}, Row{0, 0, true, "fs", "DU", "11"},  // thresholds below 1 act as 1
        Row{2, 3, true, "ccc", "UUD", "001"},           // passive: connect failures take it down
        Row{2, 3, true, "cckcc", "UUUUU", "00000"},     // a good connect resets them
        Row{2, 3, true, "ffc", "UUU", "000"},           // probe and connect failures count apart
        Row{2, 3, true, "cccsss", "UUDDUU", "001010"},  // probes bring it back after rise
        Row{2, 3, true, "sscccs", "UUUUDD", "000010"},  // successes before the take-down don't count
        Row{2, 3, true, "cccssc", "UUDDUU", "001010"},  // back up with a clean connect record
        Row{2, 3, false, "ccc", "DDD", "000"}));

TEST(HealthState, Counters) {
  HealthState h(2, 3);
  h.record(false);
  h.record(false);
  EXPECT_EQ(h.consecutive_failures(), 2);
  EXPECT_EQ(h.consecutive_successes(), 0);
  h.record(true);
  EXPECT_EQ(h.consecutive_failures(), 0);
  EXPECT_EQ(h.consecutive_successes(), 1);
  h.record_connect_failure();
  EXPECT_EQ(h.consecutive_connect_failures(), 1);
  h.record_connect_success();
  EXPECT_EQ(h.consecutive_connect_failures(), 0);
}

}  // namespace
}  // namespace gatehouse::balancer
