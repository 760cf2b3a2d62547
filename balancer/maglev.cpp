#include "balancer/maglev.h"

#include <algorithm>
#include <stdexcept>

namespace gatehouse::balancer {
namespace {

struct Builder {
  std::size_t server;
  std::uint64_t weight;
  std::uint64_t target = 0;  // picks are earned when iteration * weight reaches it
  std::size_t position;      // next slot of this server's permutation
  std::size_t skip;          // 1 .. size-1

  void advance() {
    position += skip;
    if (position >= MaglevTable::size) position -= MaglevTable::size;
  }
};

}  // namespace

MaglevTable::MaglevTable(std::span<const ServerView> servers, const std::vector<bool>& members) {
  if (servers.size() > max_servers) throw std::length_error("maglev: a pool may have at most 65535 servers");

  std::vector<Builder> builders;
  std::uint64_t max_weight = 0;
  for (std::size_t i = 0; i < servers.size(); ++i) {
    const ServerView& s = servers[i];
    if (s.weight <= 0 || (!members.empty() && (i >= members.size() || !members[i]))) continue;
    // Offset and skip come from disjoint parts of one well-mixed hash.
    const std::uint64_t h = hash_key(s.name);
    const std::size_t offset = h % size;
    const std::size_t skip = (h / size) % (size - 1) + 1;
    builders.push_back({i, static_cast<std::uint64_t>(s.weight), 0, offset, skip});
    max_weight = std::max<std::uint64_t>(max_weight, static_cast<std::uint64_t>(s.weight));
  }
  if (builders.empty()) return;
  // Sorting by name makes the table independent of config order.
  std::stable_sort(builders.begin(), builders.end(),
                   [&](const Builder& a, const Builder& b) { return servers[a.server].name < servers[b.server].name; });

  constexpr std::uint16_t empty_slot = 0xffff;
  slots_.assign(size, empty_slot);
  std::size_t filled = 0;
  // Envoy's weighting: a server of the largest weight claims a slot every
  // iteration, one of a third of it every third iteration, and so on, so slot
  // counts follow the weights while each server still walks its own permutation.
  for (std::uint64_t iteration = 1; filled < size; ++iteration) {
    for (Builder& b : builders) {
      if (iteration * b.weight < b.target) continue;
      b.target += max_weight;
      while (slots_[b.position] != empty_slot) b.advance();
      slots_[b.position] = static_cast<std::uint16_t>(b.server);
      b.advance();
      if (++filled == size) break;
    }
  }
}

}  // namespace gatehouse::balancer
