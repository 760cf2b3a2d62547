#include <gtest/gtest.h>

#include <string>

#include "test_pool.h"

namespace gatehouse::balancer {
namespace {

using testing::TestPool;

std::string sequence(Selector& s, TestPool& pool, int picks) {
  std::string out;
  for (int i = 0; i < picks; ++i) {
    auto picked = s.pick(pool.views, Tried{}, 0);
    out += picked ? static_cast<char>('a' + *picked) : '-';
  }
  return out;
}

TEST(RoundRobin, SmoothSequenceMatchesNginx) {
  TestPool pool({5, 1, 1});
  auto s = make_selector(conf::Balance::round_robin, pool.views);
  EXPECT_EQ(sequence(*s, pool, 14), "aabacaaaabacaa");
}

TEST(RoundRobin, EqualWeightsRotate) {
  TestPool pool({1, 1, 1});
  auto s = make_selector(conf::Balance::round_robin, pool.views);
  EXPECT_EQ(sequence(*s, pool, 6), "abcabc");
}

TEST(RoundRobin, FollowsWeightsWithinOnePercent) {
  const std::vector<int> weights{1, 2, 3, 5};
  TestPool pool(weights);
  auto s = make_selector(conf::Balance::round_robin, pool.views);
  std::vector<int> counts(weights.size());
  constexpr int picks = 100000;
  for (int i = 0; i < picks; ++i) ++counts[*s->pick(pool.views, Tried{}, 0)];
  for (std::size_t i = 0; i < weights.size(); ++i) {
    const double expected = picks * weights[i] / 11.0;
    EXPECT_NEAR(counts[i], expected, expected * 0.01) << "server " << i;
  }
}

TEST(RoundRobin, SkipsUnavailableAndZeroWeightThenResumes) {
  TestPool pool({1, 0, 1, 1});
  auto s = make_selector(conf::Balance::round_robin, pool.views);
  pool.views[2].available = false;
  EXPECT_EQ(sequence(*s, pool, 4), "adad");
  pool.views[2].available = true;
  EXPECT_EQ(sequence(*s, pool, 6).find('b'), std::string::npos);
  EXPECT_NE(sequence(*s, pool, 3).find('c'), std::string::npos);
}

TEST(RoundRobin, RetrySkipsTriedServer) {
  TestPool pool({1, 1});
  auto s = make_selector(conf::Balance::round_robin, pool.views);
  for (int i = 0; i < 10; ++i) {
    Tried tried;
    auto first = s->pick(pool.views, tried, 0);
    ASSERT_TRUE(first);
    tried.add(*first);
    auto second = s->pick(pool.views, tried, 0);
    ASSERT_TRUE(second);
    EXPECT_NE(*first, *second);
    tried.add(*second);
    EXPECT_FALSE(s->pick(pool.views, tried, 0));
  }
}

}  // namespace
}  // namespace gatehouse::balancer
