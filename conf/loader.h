#pragma once
// Internal to conf/: the loader reads TOML into a Config (read.cpp), then checks
// what needs the whole file -- names, references, modes -- and fills in
// defaults (validate.cpp). Both halves report through the same Diagnostic sink.

#include <toml++/toml.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"

namespace gatehouse::conf::detail {

// Where one table of the file came from, so checks made after reading point at
// the line of the exact key.
struct Origin {
  std::string label;  // "server", `listener "https"`, or `listener[2]` when it has no usable name
  int line = 0;       // where the table starts
  std::map<std::string, int, std::less<>> present;  // key (e.g. "bind", "health.kind") -> its line
  std::set<std::string, std::less<>> invalid;       // present but rejected: later checks stay quiet

  bool has(std::string_view key) const { return present.contains(key); }
  bool valid(std::string_view key) const { return has(key) && !invalid.contains(key); }
  int line_of(std::string_view key) const;  // the table's line when the key is absent
  std::string path(std::string_view key) const { return key.empty() ? label : label + "." + std::string(key); }
};

class Loader {
 public:
  explicit Loader(std::filesystem::path file);
  LoadResult load(std::string_view text);

  // `key` is relative to the origin ("bind", "servers[1]"); the line is the
  // key's own unless given.
  void error(const Origin& origin, std::string_view key, std::string message, int line = 0);
  void warning(const Origin& origin, std::string_view key, std::string message, int line = 0);
  const std::filesystem::path& base_dir() const { return base_dir_; }

 private:
  // read.cpp
  void read_root(const toml::table& root);
  template <class T>
  void read_array(const toml::node& node, std::string_view kind, std::vector<T>& items, std::vector<Origin>& origins);
  void read(const toml::table& table, Origin& origin, ServerSettings& out);
  void read(const toml::table& table, Origin& origin, Certificate& out);
  void read(const toml::table& table, Origin& origin, Listener& out);
  void read(const toml::table& table, Origin& origin, Route& out);
  void read(const toml::table& table, Origin& origin, Server& out);
  void read(const toml::table& table, Origin& origin, Pool& out);
  void read(const toml::table& table, Origin& origin, DenyRule& out);

  // validate.cpp
  void validate();
  void check_names();
  void check_listener(Listener& listener, const Origin& origin);
  void check_starttls(const Listener& listener, const Origin& origin);
  void check_unterminated_listener(Listener& listener, const Origin& origin);
  void check_l7_listener(const Listener& listener, const Origin& origin);
  void check_listener_certificates(Listener& listener, const Origin& origin);
  void check_client_certificates(const Listener& listener, const Origin& origin);
  void check_alpn(Listener& listener, const Origin& origin);
  void check_route(Route& route, const Origin& origin);
  void check_pool(const Pool& pool, const Origin& origin);
  void check_deny_rule(const DenyRule& rule, const Origin& origin);
  std::vector<const Pool*> reached_pools(const Listener& listener) const;
  void check_pool_users(std::size_t listener);
  void mail_warnings(const Listener& listener, const Origin& origin);
  // "a -> b -> a" when following fallback from `pool` comes back to a pool
  // of the chain; "" otherwise.
  std::string fallback_cycle(const Pool& pool) const;

  std::filesystem::path file_;
  std::filesystem::path base_dir_;
  Config config_;
  LoadResult result_;
  Origin settings_origin_{"global"};
  std::set<std::string, std::less<>> pool_reports_;              // "pool.key" reported by check_pool_users
  std::map<std::string, StartTls, std::less<>> pool_protocols_;  // a starttls pool's first protocol
  std::vector<Origin> deny_origins_;
  std::vector<Origin> certificate_origins_, listener_origins_, route_origins_, server_origins_, pool_origins_;
};

}  // namespace gatehouse::conf::detail
