#include "balancer/balancer.h"

#include <algorithm>
#include <random>
#include <stdexcept>
#include <string>

#include "balancer/maglev.h"

namespace gatehouse::balancer {
namespace {

struct Eligible {
  const Tried& tried;
  std::string_view site;  // empty = any site

  bool operator()(std::span<const ServerView> servers, std::size_t i) const {
    const ServerView& s = servers[i];
    return s.available && s.weight > 0 && !tried.contains(i) && (site.empty() || s.site == site);
  }
};

std::uint64_t weight_of(const ServerView& s) { return static_cast<std::uint64_t>(s.weight); }

// Compares active/weight without dividing: negative when a is less loaded.
int compare_load(const ServerView& a, const ServerView& b) {
  const std::uint64_t l = std::uint64_t{a.active} * weight_of(b);
  const std::uint64_t r = std::uint64_t{b.active} * weight_of(a);
  return l < r ? -1 : l > r ? 1 : 0;
}

// Local-site preference, the same for every algorithm: run it over the local
// servers first, then over all of them.
class Algorithm : public Selector {
 public:
  explicit Algorithm(std::string_view local_site) : local_site_(local_site) {}

  std::optional<std::size_t> pick(std::span<const ServerView> servers, const Tried& tried, std::uint64_t key) final {
    if (!local_site_.empty())
      if (auto i = choose(servers, Eligible{tried, local_site_}, key)) return i;
    return choose(servers, Eligible{tried, {}}, key);
  }

 protected:
  virtual std::optional<std::size_t> choose(std::span<const ServerView> servers, const Eligible& eligible,
                                            std::uint64_t key) = 0;

 private:
  std::string local_site_;  // owned: the config that named it may be reloaded away
};

// nginx's smooth weighted round robin: weights {5,1,1} give a a b a c a a, the
// heavy server's turns spread out rather than in a burst of five.
class SmoothWeights {
 public:
  template <class Accept>
  std::optional<std::size_t> pick(std::span<const ServerView> servers, Accept accept) {
    if (current_.size() != servers.size()) current_.assign(servers.size(), 0);
    std::int64_t total = 0;
    std::optional<std::size_t> best;
    for (std::size_t i = 0; i < servers.size(); ++i) {
      if (!accept(i)) continue;
      current_[i] += servers[i].weight;
      total += servers[i].weight;
      if (!best || current_[i] > current_[*best]) best = i;
    }
    if (best) current_[*best] -= total;
    return best;
  }

 private:
  std::vector<std::int64_t> current_;
};

class RoundRobin final : public Algorithm {
 public:
  using Algorithm::Algorithm;

 protected:
  std::optional<std::size_t> choose(std::span<const ServerView> servers, const Eligible& eligible,
                                    std::uint64_t) override {
    return weights_.pick(servers, [&](std::size_t i) { return eligible(servers, i); });
  }

 private:
  SmoothWeights weights_;
};

// Fewest active per unit of weight. Ties (an idle pool above all) go through
// weighted round robin, as in nginx, so they spread instead of piling on the
// first server.
class LeastConn final : public Algorithm {
 public:
  using Algorithm::Algorithm;

 protected:
  std::optional<std::size_t> choose(std::span<const ServerView> servers, const Eligible& eligible,
                                    std::uint64_t) override {
    std::optional<std::size_t> least;
    for (std::size_t i = 0; i < servers.size(); ++i)
      if (eligible(servers, i) && (!least || compare_load(servers[i], servers[*least]) < 0)) least = i;
    if (!least) return std::nullopt;
    const ServerView& floor = servers[*least];
    return weights_.pick(servers,
                         [&](std::size_t i) { return eligible(servers, i) && compare_load(servers[i], floor) == 0; });
  }

 private:
  SmoothWeights weights_;
};

// Power of two choices: two distinct servers drawn by weight, the less loaded
// one wins. Each worker only sees its own `active`, and the randomness keeps
// workers from herding onto the same "least loaded" server.
class RandomTwo final : public Algorithm {
 public:
  explicit RandomTwo(std::string_view local_site) : Algorithm(local_site), rng_(std::random_device{}()) {}

 protected:
  std::optional<std::size_t> choose(std::span<const ServerView> servers, const Eligible& eligible,
                                    std::uint64_t) override {
    std::uint64_t total = 0;
    std::size_t count = 0;
    for (std::size_t i = 0; i < servers.size(); ++i)
      if (eligible(servers, i)) total += weight_of(servers[i]), ++count;
    if (count == 0) return std::nullopt;
    const std::size_t first = draw(servers, eligible, total, servers.size());
    if (count == 1) return first;
    const std::size_t second = draw(servers, eligible, total - weight_of(servers[first]), first);
    return compare_load(servers[second], servers[first]) < 0 ? second : first;
  }

 private:
  // A server drawn with probability weight/total among the eligible ones but `skip`.
  std::size_t draw(std::span<const ServerView> servers, const Eligible& eligible, std::uint64_t total,
                   std::size_t skip) {
    std::uint64_t r = std::uniform_int_distribution<std::uint64_t>(0, total - 1)(rng_);
    std::size_t last = skip;
    for (std::size_t i = 0; i < servers.size(); ++i) {
      if (i == skip || !eligible(servers, i)) continue;
      if (r < weight_of(servers[i])) return i;
      r -= weight_of(servers[i]);
      last = i;
    }
    return last;  // not reached: the weights sum to total
  }

  std::mt19937_64 rng_;
};

// Keys map through a table of the configured servers, so a key stays on its
// server for as long as that server is up, whatever happens to the others.
// Keys whose server is out (or tried) go through a table of just the servers
// that are left; being a function of that set alone, it too agrees across
// workers and instances. Such tables cost a few milliseconds to build, so the
// last few sets are kept: one per outage, plus the odd retry.
class Maglev final : public Algorithm {
 public:
  Maglev(std::span<const ServerView> servers, std::string_view local_site) : Algorithm(local_site), primary_(servers) {}

 protected:
  std::optional<std::size_t> choose(std::span<const ServerView> servers, const Eligible& eligible,
                                    std::uint64_t key) override {
    if (auto i = primary_.lookup(key); i && *i < servers.size() && eligible(servers, *i)) return i;

    members_.assign(servers.size(), false);
    bool any = false;
    for (std::size_t i = 0; i < servers.size(); ++i)
      if (eligible(servers, i)) members_[i] = true, any = true;
    if (!any) return std::nullopt;
    return fallback(servers).lookup(key);
  }

 private:
  struct Cached {
    std::vector<bool> members;
    MaglevTable table;
    std::uint64_t used = 0;
  };
  static constexpr std::size_t cache_size = 4;

  const MaglevTable& fallback(std::span<const ServerView> servers) {
    ++clock_;
    for (Cached& c : cache_)
      if (c.members == members_) return c.used = clock_, c.table;
    if (cache_.size() < cache_size) {
      cache_.emplace_back();
    } else {
      auto oldest = std::min_element(cache_.begin(), cache_.end(),
                                     [](const Cached& a, const Cached& b) { return a.used < b.used; });
      std::rotate(oldest, oldest + 1, cache_.end());
    }
    Cached& c = cache_.back();
    c = Cached{members_, MaglevTable(servers, members_), clock_};
    return c.table;
  }

  MaglevTable primary_;
  std::vector<bool> members_;  // scratch, kept to avoid an allocation per miss
  std::vector<Cached> cache_;
  std::uint64_t clock_ = 0;
};

}  // namespace

std::unique_ptr<Selector> make_selector(conf::Balance balance, std::span<const ServerView> servers,
                                        std::string_view local_site) {
  switch (balance) {
    case conf::Balance::round_robin: return std::make_unique<RoundRobin>(local_site);
    case conf::Balance::least_conn: return std::make_unique<LeastConn>(local_site);
    case conf::Balance::random_two: return std::make_unique<RandomTwo>(local_site);
    case conf::Balance::maglev: return std::make_unique<Maglev>(servers, local_site);
  }
  throw std::invalid_argument("make_selector: unknown balance algorithm");
}

std::uint64_t hash_key(std::string_view bytes) {
  std::uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a 64
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  h ^= h >> 33;  // MurmurHash3 fmix64
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

}  // namespace gatehouse::balancer
