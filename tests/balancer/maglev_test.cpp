#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "balancer/maglev.h"
#include "test_pool.h"

namespace gatehouse::balancer {
namespace {

using testing::TestPool;

constexpr int key_count = 100000;

std::uint64_t key(int i) { return hash_key("10.1." + std::to_string(i / 256) + "." + std::to_string(i % 256)); }

// Name of the server each key lands on.
std::vector<std::string_view> assignment(Selector& s, const std::vector<ServerView>& views, const Tried& tried = {}) {
  std::vector<std::string_view> out;
  out.reserve(key_count);
  for (int i = 0; i < key_count; ++i) {
    auto picked = s.pick(views, tried, key(i));
    out.push_back(picked ? views[*picked].name : std::string_view{});
  }
  return out;
}

TEST(Maglev, IndependentSelectorsAgree) {
  TestPool pool(testing::equal_weights(10));
  auto a = make_selector(conf::Balance::maglev, pool.views);
  auto b = make_selector(conf::Balance::maglev, pool.views);
  EXPECT_EQ(assignment(*a, pool.views), assignment(*b, pool.views));
}

TEST(Maglev, ConfigOrderDoesNotMatter) {
  TestPool pool({1, 2, 3, 1, 1});
  auto reversed_views = pool.views;
  std::reverse(reversed_views.begin(), reversed_views.end());
  auto a = make_selector(conf::Balance::maglev, pool.views);
  auto b = make_selector(conf::Balance::maglev, reversed_views);
  EXPECT_EQ(assignment(*a, pool.views), assignment(*b, reversed_views));
}

TEST(Maglev, KeysSpreadEvenly) {
  TestPool pool(testing::equal_weights(10));
  auto s = make_selector(conf::Balance::maglev, pool.views);
  std::vector<int> counts(10);
  for (int i = 0; i < key_count; ++i) ++counts[*s->pick(pool.views, Tried{}, key(i))];
  for (int c : counts) EXPECT_NEAR(c, key_count / 10, key_count / 10 * 0.1);
}

TEST(Maglev, WeightsRoughlyRespected) {
  const std::vector<int> weights{1, 2, 3, 4};
  TestPool pool(weights);
  auto s = make_selector(conf::Balance::maglev, pool.views);
  std::vector<int> counts(weights.size());
  for (int i = 0; i < key_count; ++i) ++counts[*s->pick(pool.views, Tried{}, key(i))];
  for (std::size_t i = 0; i < weights.size(); ++i) {
    const double expected = key_count * weights[i] / 10.0;
    EXPECT_NEAR(counts[i], expected, expected * 0.1) << "server " << i;
  }
}

TEST(Maglev, UnavailableServerMovesOnlyItsOwnKeys) {
  TestPool pool(testing::equal_weights(10));
  auto s = make_selector(conf::Balance::maglev, pool.views);
  const auto before = assignment(*s, pool.views);
  pool.views[3].available = false;
  const auto during = assignment(*s, pool.views);
  int moved = 0;
  for (int i = 0; i < key_count; ++i) {
    if (before[i] == pool.views[3].name) {
      EXPECT_NE(during[i], pool.views[3].name);
      EXPECT_FALSE(during[i].empty());
      ++moved;
    } else {
      EXPECT_EQ(during[i], before[i]) << "key " << i << " moved though its server is up";
    }
  }
  EXPECT_LE(moved, key_count * 12 / 100);
  EXPECT_GT(moved, 0);

  pool.views[3].available = true;
  EXPECT_EQ(assignment(*s, pool.views), before) << "keys come back with their server";
}

TEST(Maglev, RemovingAServerFromConfigRemapsFewKeys) {
  TestPool ten(testing::equal_weights(10));
  auto nine_views = ten.views;
  nine_views.erase(nine_views.begin() + 6);
  auto s10 = make_selector(conf::Balance::maglev, ten.views);
  auto s9 = make_selector(conf::Balance::maglev, nine_views);
  const auto before = assignment(*s10, ten.views);
  const auto after = assignment(*s9, nine_views);
  int remapped = 0;
  for (int i = 0; i < key_count; ++i) {
    EXPECT_NE(after[i], ten.views[6].name);
    if (after[i] != before[i]) ++remapped;
  }
  EXPECT_LE(remapped, key_count * 12 / 100);
}

TEST(Maglev, WorkersAgreeDuringAnOutage) {
  TestPool pool(testing::equal_weights(10));
  auto a = make_selector(conf::Balance::maglev, pool.views);
  auto b = make_selector(conf::Balance::maglev, pool.views);
  pool.views[2].available = false;
  pool.views[7].available = false;
  EXPECT_EQ(assignment(*a, pool.views), assignment(*b, pool.views));
}

TEST(Maglev, RetryGoesToTheSameSecondChoiceEverywhere) {
  TestPool pool(testing::equal_weights(5));
  auto a = make_selector(conf::Balance::maglev, pool.views);
  auto b = make_selector(conf::Balance::maglev, pool.views);
  for (int i = 0; i < 300; ++i) {
    Tried tried;
    const auto first = *a->pick(pool.views, tried, key(i));
    tried.add(first);
    const auto second = a->pick(pool.views, tried, key(i));
    ASSERT_TRUE(second);
    EXPECT_NE(*second, first);
    EXPECT_EQ(second, b->pick(pool.views, tried, key(i)));
  }
}

TEST(Maglev, FlappingServersReuseCachedTables) {
  // Not a timing assertion: checks results stay right while the cache cycles
  // through more availability sets than it holds.
  TestPool pool(testing::equal_weights(8));
  auto s = make_selector(conf::Balance::maglev, pool.views);
  auto fresh = make_selector(conf::Balance::maglev, pool.views);
  for (int round = 0; round < 3; ++round) {
    for (std::size_t down = 0; down < 6; ++down) {
      for (auto& v : pool.views) v.available = true;
      pool.views[down].available = false;
      for (int i = 0; i < 2000; ++i) {
        const auto got = s->pick(pool.views, Tried{}, key(i));
        ASSERT_TRUE(got);
        EXPECT_NE(*got, down);
        EXPECT_EQ(got, fresh->pick(pool.views, Tried{}, key(i)));
      }
    }
  }
}

TEST(MaglevTable, EveryMemberGetsSlotsInProportion) {
  TestPool pool({1, 0, 2, 1});
  MaglevTable table(pool.views);
  std::vector<int> slots(4);
  for (std::size_t k = 0; k < MaglevTable::size; ++k) ++slots[*table.lookup(k)];
  EXPECT_EQ(slots[1], 0);
  EXPECT_NEAR(slots[0], MaglevTable::size / 4, 200);
  EXPECT_NEAR(slots[2], MaglevTable::size / 2, 200);
  EXPECT_NEAR(slots[3], MaglevTable::size / 4, 200);
  EXPECT_FALSE(MaglevTable(pool.views, {false, true, false, false}).lookup(1));
}

}  // namespace
}  // namespace gatehouse::balancer
