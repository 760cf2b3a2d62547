#pragma once
// Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted the way
// Envoy's MaglevTable does it. The table is a function of the member servers'
// names and weights only — not of their order or of any state — so every worker
// and every instance with the same config maps a key to the same server.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "balancer/balancer.h"

namespace gatehouse::balancer {

class MaglevTable {
 public:
  static constexpr std::size_t size = 65537;  // prime, so every skip visits every slot
  static constexpr std::size_t max_servers = 65535;

  MaglevTable() = default;
  // Over every server with a positive weight; `members`, when not empty, further
  // limits it to the servers whose entry is true.
  explicit MaglevTable(std::span<const ServerView> servers, const std::vector<bool>& members = {});

  // Index (into the servers the table was built from) owning `key`; nullopt
  // only for a table with no member.
  std::optional<std::size_t> lookup(std::uint64_t key) const {
    if (slots_.empty()) return std::nullopt;
    return slots_[key % size];
  }
  bool empty() const { return slots_.empty(); }

 private:
  std::vector<std::uint16_t> slots_;  // 128 KiB; uint16 because a pool never nears 65535 servers
};

}  // namespace gatehouse::balancer
