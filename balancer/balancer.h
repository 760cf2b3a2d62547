#pragma once
// Server selection for one pool. Selectors are pure and single-threaded: the
// runtime keeps one per pool per worker thread and hands it, on every pick, a
// view of the pool's servers as that worker sees them. No locks, no sockets.
//
// Every algorithm promises: never an unavailable, zero-weight or tried server;
// nullopt when no other server is left. With a local site, servers of that site
// are preferred and the others are used only when no local one is left.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "conf/config.h"

namespace gatehouse::balancer {

// One entry per server of the pool, in config order; indices are stable for the
// selector's lifetime (a config reload builds new selectors).
struct ServerView {
  std::string_view name;
  std::string_view site;
  int weight = 1;            // 0 (or less) = never picked
  bool available = true;     // healthy and not drained
  std::uint32_t active = 0;  // open connections/requests to it from this worker
};

// Servers already tried for this request, so a retry goes elsewhere. Pools are
// small, so the common case is one word and never allocates.
class Tried {
 public:
  void add(std::size_t i) {
    if (i < 64) {
      low_ |= bit(i);
      return;
    }
    const std::size_t word = i / 64 - 1;
    if (word >= high_.size()) high_.resize(word + 1);
    high_[word] |= bit(i % 64);
  }
  bool contains(std::size_t i) const {
    if (i < 64) return (low_ & bit(i)) != 0;
    const std::size_t word = i / 64 - 1;
    return word < high_.size() && (high_[word] & bit(i % 64)) != 0;
  }
  bool empty() const {
    if (low_ != 0) return false;
    for (auto w : high_)
      if (w != 0) return false;
    return true;
  }
  void clear() {
    low_ = 0;
    high_.clear();
  }

 private:
  static constexpr std::uint64_t bit(std::size_t i) { return std::uint64_t{1} << i; }
  std::uint64_t low_ = 0;
  std::vector<std::uint64_t> high_;  // indices >= 64, 64 per word
};

class Selector {
 public:
  virtual ~Selector() = default;
  // Index of the server to use, or nullopt when no available, untried server
  // exists. `key` is the affinity key (see hash_key); only maglev reads it.
  virtual std::optional<std::size_t> pick(std::span<const ServerView> servers, const Tried& tried,
                                          std::uint64_t key) = 0;
};

// `servers` is the pool as configured (names and weights are what maglev's
// table is built from; availability is read at pick time). Throws
// std::length_error for a maglev pool of more than 65535 servers.
std::unique_ptr<Selector> make_selector(conf::Balance balance, std::span<const ServerView> servers,
                                        std::string_view local_site = {});

// Affinity key of some bytes (source address, cookie, header value). A fixed
// function of the bytes alone, so every worker, process and build agrees:
// 64-bit FNV-1a, then MurmurHash3's fmix64 so that keys differing only in
// their last byte still spread over the whole table.
std::uint64_t hash_key(std::string_view bytes);

}  // namespace gatehouse::balancer
