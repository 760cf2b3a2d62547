#pragma once
// A pool for tests: owns the strings the ServerViews point into.

#include <cstddef>
#include <string>
#include <vector>

#include "balancer/balancer.h"

namespace gatehouse::balancer::testing {

class TestPool {
 public:
  // Servers named mbx00, mbx01, ...; sites, when given, one per server.
  explicit TestPool(const std::vector<int>& weights, const std::vector<std::string>& sites = {}) {
    for (std::size_t i = 0; i < weights.size(); ++i) {
      names_.push_back(name(i));
      sites_.push_back(i < sites.size() ? sites[i] : "");
    }
    for (std::size_t i = 0; i < weights.size(); ++i)
      views.push_back(ServerView{names_[i], sites_[i], weights[i], true, 0});
  }
  static std::string name(std::size_t i) { return (i < 10 ? "mbx0" : "mbx") + std::to_string(i); }

  std::vector<ServerView> views;

 private:
  std::vector<std::string> names_;
  std::vector<std::string> sites_;
};

inline std::vector<int> equal_weights(std::size_t n) { return std::vector<int>(n, 1); }

}  // namespace gatehouse::balancer::testing
