// Promises every algorithm keeps: eligibility, tried sets, local-site preference.
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "test_pool.h"

namespace gatehouse::balancer {
namespace {

using testing::TestPool;

bool eligible(const ServerView& s, const Tried& tried, std::size_t i) {
  return s.available && s.weight > 0 && !tried.contains(i);
}

TEST(Tried, BitsBelowAndAbove64) {
  Tried tried;
  EXPECT_TRUE(tried.empty());
  for (std::size_t i : {0u, 1u, 63u, 64u, 127u, 128u, 1000u}) {
    EXPECT_FALSE(tried.contains(i)) << i;
    tried.add(i);
    EXPECT_TRUE(tried.contains(i)) << i;
  }
  EXPECT_FALSE(tried.contains(2));
  EXPECT_FALSE(tried.contains(65));
  EXPECT_FALSE(tried.contains(999));
  EXPECT_FALSE(tried.contains(5000));
  EXPECT_FALSE(tried.empty());
  tried.clear();
  EXPECT_TRUE(tried.empty());
  EXPECT_FALSE(tried.contains(1000));
}

TEST(HashKey, StableAcrossBuilds) {
  // Pinned (computed independently in Python): changing them moves every
  // client's affinity on upgrade.
  EXPECT_EQ(hash_key(""), 0xefd01f60ba992926ULL);
  EXPECT_EQ(hash_key("192.0.2.1"), 0x8fc433616f773343ULL);
  EXPECT_NE(hash_key("192.0.2.1"), hash_key("192.0.2.2"));
}

class EveryAlgorithm : public ::testing::TestWithParam<conf::Balance> {};

INSTANTIATE_TEST_SUITE_P(Balancer, EveryAlgorithm,
                         ::testing::Values(conf::Balance::round_robin, conf::Balance::least_conn,
                                           conf::Balance::random_two, conf::Balance::maglev),
                         [](const auto& info) {
                           switch (info.param) {
                             case conf::Balance::round_robin: return "round_robin";
                             case conf::Balance::least_conn: return "least_conn";
                             case conf::Balance::random_two: return "random_two";
                             case conf::Balance::maglev: return "maglev";
                           }
                           return "unknown";
                         });

TEST_P(EveryAlgorithm, NeverPicksIneligibleServers) {
  std::mt19937_64 rng(42);
  auto chance = [&](int percent) { return static_cast<int>(rng() % 100) < percent; };
  const int pools = GetParam() == conf::Balance::maglev ? 20 : 300;  // maglev tables cost ms each
  for (int p = 0; p < pools; ++p) {
    const std::size_t n = 1 + rng() % 100;  // often above 64, to reach Tried's overflow words
    std::vector<int> weights(n);
    for (int& w : weights) w = static_cast<int>(rng() % 5);
    TestPool pool(weights);
    auto s = make_selector(GetParam(), pool.views);
    const int availability = static_cast<int>(rng() % 100);
    for (int round = 0; round < 20; ++round) {
      Tried tried;
      const int tried_rate = static_cast<int>(rng() % 100);
      for (std::size_t i = 0; i < n; ++i) {
        pool.views[i].available = chance(availability);
        pool.views[i].active = static_cast<std::uint32_t>(rng() % 10);
        if (chance(tried_rate)) tried.add(i);
      }
      bool any = false;
      for (std::size_t i = 0; i < n; ++i) any = any || eligible(pool.views[i], tried, i);
      for (int k = 0; k < 5; ++k) {
        auto picked = s->pick(pool.views, tried, rng());
        ASSERT_EQ(picked.has_value(), any) << "pool " << p << " round " << round;
        if (picked) {
          ASSERT_LT(*picked, n);
          ASSERT_TRUE(eligible(pool.views[*picked], tried, *picked)) << "picked " << *picked;
        }
      }
    }
  }
}

TEST_P(EveryAlgorithm, RetriesExhaustThePool) {
  TestPool pool({1, 2, 3, 4});
  auto s = make_selector(GetParam(), pool.views);
  for (std::uint64_t key = 0; key < 50; ++key) {
    Tried tried;
    std::set<std::size_t> seen;
    while (auto i = s->pick(pool.views, tried, hash_key(std::to_string(key)))) {
      ASSERT_TRUE(seen.insert(*i).second) << "picked a tried server";
      tried.add(*i);
    }
    EXPECT_EQ(seen.size(), 4u);
  }
}

TEST_P(EveryAlgorithm, MoreThan64Servers) {
  TestPool pool(testing::equal_weights(130));
  auto s = make_selector(GetParam(), pool.views);
  Tried tried;
  for (std::size_t i = 0; i < 130; ++i)
    if (i != 70 && i != 129) tried.add(i);
  std::set<std::size_t> seen;
  for (std::uint64_t key = 0; key < 200; ++key) seen.insert(*s->pick(pool.views, tried, hash_key(std::to_string(key))));
  EXPECT_EQ(seen, (std::set<std::size_t>{70, 129}));
  tried.add(70);
  tried.add(129);
  EXPECT_FALSE(s->pick(pool.views, tried, 1));
}

TEST_P(EveryAlgorithm, EmptyOrAllZeroWeightPool) {
  TestPool empty({});
  EXPECT_FALSE(make_selector(GetParam(), empty.views)->pick(empty.views, Tried{}, 1));
  TestPool zero({0, 0});
  EXPECT_FALSE(make_selector(GetParam(), zero.views)->pick(zero.views, Tried{}, 1));
}

TEST_P(EveryAlgorithm, PrefersLocalSiteThenSpillsOver) {
  TestPool pool({1, 1, 1, 1}, {"dc1", "dc1", "dc2", "dc2"});
  auto s = make_selector(GetParam(), pool.views, "dc2");
  auto picks = [&](const Tried& tried) {
    std::set<std::size_t> seen;
    for (std::uint64_t key = 0; key < 200; ++key) {
      auto i = s->pick(pool.views, tried, hash_key(std::to_string(key)));
      if (i) seen.insert(*i);
    }
    return seen;
  };
  using Set = std::set<std::size_t>;
  EXPECT_EQ(picks({}), (Set{2, 3}));
  pool.views[2].available = false;
  EXPECT_EQ(picks({}), (Set{3}));
  Tried tried;
  tried.add(3);
  EXPECT_EQ(picks(tried), (Set{0, 1})) << "local one tried: spill over";
  pool.views[3].available = false;
  EXPECT_EQ(picks({}), (Set{0, 1})) << "no local one healthy: spill over";
  pool.views[0].available = false;
  pool.views[1].available = false;
  EXPECT_EQ(picks({}), Set{});
  pool.views[3].available = true;
  EXPECT_EQ(picks({}), (Set{3})) << "back home as soon as a local one returns";
}

TEST_P(EveryAlgorithm, UnknownLocalSiteUsesEveryServer) {
  TestPool pool({1, 1}, {"dc1", "dc2"});
  auto s = make_selector(GetParam(), pool.views, "dc9");
  std::set<std::size_t> seen;
  for (std::uint64_t key = 0; key < 200; ++key)
    seen.insert(*s->pick(pool.views, Tried{}, hash_key(std::to_string(key))));
  EXPECT_EQ(seen.size(), 2u);
}

}  // namespace
}  // namespace gatehouse::balancer
