// least_conn and random_two: the algorithms that read `active`.
#include <gtest/gtest.h>

#include <algorithm>

#include "test_pool.h"

namespace gatehouse::balancer {
namespace {

using testing::TestPool;

TEST(LeastConn, PicksLeastLoaded) {
  TestPool pool({1, 1, 1});
  pool.views[0].active = 5;
  pool.views[1].active = 2;
  pool.views[2].active = 7;
  auto s = make_selector(conf::Balance::least_conn, pool.views);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(s->pick(pool.views, Tried{}, 0), 1u);
}

TEST(LeastConn, LoadIsRelativeToWeight) {
  TestPool pool({1, 3});
  auto s = make_selector(conf::Balance::least_conn, pool.views);
  pool.views[0].active = 1;
  pool.views[1].active = 2;  // 2/3 < 1/1
  EXPECT_EQ(s->pick(pool.views, Tried{}, 0), 1u);
  pool.views[1].active = 4;  // 4/3 > 1/1
  EXPECT_EQ(s->pick(pool.views, Tried{}, 0), 0u);
}

TEST(LeastConn, TiesSpreadByWeight) {
  TestPool pool({3, 1, 1});
  auto s = make_selector(conf::Balance::least_conn, pool.views);
  std::vector<int> counts(3);
  for (int i = 0; i < 500; ++i) ++counts[*s->pick(pool.views, Tried{}, 0)];
  EXPECT_EQ(counts, (std::vector<int>{300, 100, 100}));
}

TEST(LeastConn, OpenConnectionsFollowWeights) {
  TestPool pool({1, 2, 3});
  auto s = make_selector(conf::Balance::least_conn, pool.views);
  for (int i = 0; i < 600; ++i) ++pool.views[*s->pick(pool.views, Tried{}, 0)].active;
  EXPECT_EQ(pool.views[0].active, 100u);
  EXPECT_EQ(pool.views[1].active, 200u);
  EXPECT_EQ(pool.views[2].active, 300u);
}

TEST(RandomTwo, IdlePoolFollowsWeights) {
  TestPool pool({1, 2, 3});
  auto s = make_selector(conf::Balance::random_two, pool.views);
  std::vector<int> counts(3);
  constexpr int picks = 60000;
  for (int i = 0; i < picks; ++i) ++counts[*s->pick(pool.views, Tried{}, 0)];
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(counts[i], picks * (i + 1) / 6.0, picks * 0.02) << i;
}

TEST(RandomTwo, MostLoadedServerLosesEveryDraw) {
  TestPool pool({1, 1, 1, 1});
  pool.views[0].active = 100;
  auto s = make_selector(conf::Balance::random_two, pool.views);
  for (int i = 0; i < 2000; ++i) EXPECT_NE(s->pick(pool.views, Tried{}, 0), 0u);
}

TEST(RandomTwo, KeepsLoadEven) {
  TestPool pool(testing::equal_weights(8));
  auto s = make_selector(conf::Balance::random_two, pool.views);
  for (int i = 0; i < 8000; ++i) ++pool.views[*s->pick(pool.views, Tried{}, 0)].active;
  auto [lo, hi] =
      std::minmax_element(pool.views.begin(), pool.views.end(), [](auto& a, auto& b) { return a.active < b.active; });
  EXPECT_LE(hi->active - lo->active, 10u);
}

TEST(RandomTwo, SingleCandidate) {
  TestPool pool({1, 1, 1});
  pool.views[0].available = false;
  Tried tried;
  tried.add(2);
  auto s = make_selector(conf::Balance::random_two, pool.views);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(s->pick(pool.views, tried, 0), 1u);
}

}  // namespace
}  // namespace gatehouse::balancer
