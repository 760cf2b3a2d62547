// TOML -> Config, one table at a time: types, enum values, syntax of single
// values, unknown keys. Checks that need the whole file are in validate.cpp.

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fstream>
#include <sstream>

#include "conf/checks.h"
#include "conf/loader.h"

namespace gatehouse::conf {
namespace detail {
namespace {

namespace fs = std::filesystem;

// The settings table is [global]. Older files call it [server], beside the
// [[server]] array, which TOML forbids in one document. For those files the
// loader renames a standalone "[server]" header to this key before parsing
// (lines stay put), reads it back as the settings table and warns.
constexpr std::string_view settings_key = "gatehouse-server-settings";

bool is_settings_header(std::string_view line) {
  auto skip_blanks = [&] {
    while (!line.empty() && (line[0] == ' ' || line[0] == '\t')) line.remove_prefix(1);
  };
  skip_blanks();
  if (!line.starts_with('[') || line.starts_with("[[")) return false;
  line.remove_prefix(1);
  skip_blanks();
  if (!line.starts_with("server")) return false;
  line.remove_prefix(6);
  skip_blanks();
  if (!line.starts_with(']')) return false;
  line.remove_prefix(1);
  skip_blanks();
  return line.empty() || line[0] == '#' || line[0] == '\r' || line[0] == '\n';
}

std::string rewrite_settings_header(std::string_view text) {
  enum class In { code, multiline_basic, multiline_literal } in = In::code;
  std::string out;
  out.reserve(text.size() + 32);
  while (!text.empty()) {
    auto end = text.find('\n');
    auto line = text.substr(0, end == std::string_view::npos ? text.size() : end + 1);
    text.remove_prefix(line.size());
    if (in == In::code && is_settings_header(line)) {
      out += "[" + std::string(settings_key) + "]\n";
      continue;
    }
    out += line;
    // Track multi-line strings so that a "[server]" line inside one is left alone.
    for (std::size_t i = 0; i < line.size(); ++i) {
      auto rest = line.substr(i);
      if (in == In::multiline_basic) {
        if (rest[0] == '\\') ++i;
        else if (rest.starts_with("\"\"\"")) in = In::code, i += 2;
      } else if (in == In::multiline_literal) {
        if (rest.starts_with("'''")) in = In::code, i += 2;
      } else if (rest[0] == '#') {
        break;
      } else if (rest.starts_with("\"\"\"")) {
        in = In::multiline_basic, i += 2;
      } else if (rest.starts_with("'''")) {
        in = In::multiline_literal, i += 2;
      } else if (rest[0] == '"' || rest[0] == '\'') {
        for (++i; i < line.size() && line[i] != rest[0]; ++i)
          if (rest[0] == '"' && line[i] == '\\') ++i;
      }
    }
  }
  return out;
}

std::string replace_all(std::string text, std::string_view from, std::string_view to) {
  for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

// Best guess at the key a syntax error is about: the table header in effect
// and the key on the failing line, e.g. "listener.bind".
std::string guess_key(std::string_view text, int line) {
  std::vector<std::string_view> lines;
  for (std::size_t start = 0; start <= text.size();) {
    auto end = std::min(text.find('\n', start), text.size());
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '[')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == ']' || s.back() == '\r'))
      s.remove_suffix(1);
    return std::string(s);
  };
  std::string key;
  if (line >= 1 && line <= static_cast<int>(lines.size())) {
    auto current = lines[line - 1];
    if (auto eq = current.find('='); eq != std::string_view::npos && !trim(current).starts_with('#'))
      key = trim(current.substr(0, eq));
  }
  for (int i = std::min<int>(line, static_cast<int>(lines.size())) - 1; i >= 0; --i) {
    auto header = lines[i];
    while (!header.empty() && (header[0] == ' ' || header[0] == '\t')) header.remove_prefix(1);
    if (!header.starts_with('[')) continue;
    auto section = trim(header.substr(0, header.find(']') + 1));
    if (section == settings_key) section = "server";
    if (i == line - 1) return section;  // the failing line is itself a header
    return key.empty() ? section : section + "." + key;
  }
  return key;
}

int line_of(const toml::node& node) { return static_cast<int>(node.source().begin.line); }

std::string describe(const toml::node& node) {
  std::ostringstream value;
  switch (node.type()) {
    case toml::node_type::string: value << "a string (\"" << node.as_string()->get() << "\")"; break;
    case toml::node_type::integer: value << "an integer (" << node.as_integer()->get() << ")"; break;
    case toml::node_type::floating_point: value << "a float (" << node.as_floating_point()->get() << ")"; break;
    case toml::node_type::boolean: value << "a boolean (" << std::boolalpha << node.as_boolean()->get() << ")"; break;
    case toml::node_type::table: value << "a table"; break;
    case toml::node_type::array: value << "an array"; break;
    default: value << "a date or time"; break;
  }
  return value.str();
}

std::string join_quoted(std::span<const std::string_view> names) {
  std::string text;
  for (auto name : names) text += (text.empty() ? "\"" : ", \"") + std::string(name) + "\"";
  return text;
}

template <class E>
struct Choice {
  std::string_view name;
  E value;
};

constexpr Choice<ListenerMode> mode_choices[] = {{"l7", ListenerMode::l7},
                                                 {"l4", ListenerMode::l4},
                                                 {"passthrough", ListenerMode::passthrough},
                                                 {"tcp", ListenerMode::tcp},
                                                 {"redirect", ListenerMode::redirect}};
constexpr Choice<StartTls> starttls_choices[] = {
    {"", StartTls::none}, {"smtp", StartTls::smtp}, {"imap", StartTls::imap}, {"pop3", StartTls::pop3}};
constexpr Choice<TlsPolicy> tls_policy_choices[] = {{"modern", TlsPolicy::modern}, {"tls13", TlsPolicy::tls13}};
constexpr Choice<ClientCertificates> client_certificate_choices[] = {{"none", ClientCertificates::none},
                                                                     {"optional", ClientCertificates::optional},
                                                                     {"require", ClientCertificates::require}};
constexpr Choice<ProxyProtocol> proxy_protocol_choices[] = {
    {"", ProxyProtocol::none}, {"v1", ProxyProtocol::v1}, {"v2", ProxyProtocol::v2}};
constexpr Choice<Affinity> affinity_choices[] = {
    {"none", Affinity::none}, {"source_ip", Affinity::source_ip}, {"cookie", Affinity::cookie}};
constexpr Choice<Balance> balance_choices[] = {{"round_robin", Balance::round_robin},
                                               {"least_conn", Balance::least_conn},
                                               {"random_two", Balance::random_two},
                                               {"maglev", Balance::maglev}};
constexpr Choice<BackendTls> backend_tls_choices[] = {
    {"verify", BackendTls::verify}, {"insecure", BackendTls::insecure}, {"plain", BackendTls::plain}};
constexpr Choice<HealthKind> health_kind_choices[] = {
    {"none", HealthKind::none}, {"tcp", HealthKind::tcp}, {"tls", HealthKind::tls}, {"http", HealthKind::http}};

constexpr std::string_view top_level_keys[] = {"global", "server", "certificate", "listener", "route", "deny", "pool"};
constexpr std::string_view settings_keys[] = {"workers",     "admin",         "access_log",
                                              "ticket_keys", "drain_timeout", "max_connections"};
constexpr std::string_view certificate_keys[] = {"name", "cert", "key", "ocsp"};
constexpr std::string_view listener_keys[] = {"name",
                                              "bind",
                                              "mode",
                                              "certificates",
                                              "default_certificate",
                                              "strict_sni",
                                              "tls",
                                              "alpn",
                                              "client_certificates",
                                              "client_ca",
                                              "client_crl",
                                              "client_verify_depth",
                                              "starttls",
                                              "greeting_name",
                                              "pool",
                                              "proxy_protocol",
                                              "handshake_timeout",
                                              "idle_timeout",
                                              "max_connections"};
constexpr std::string_view route_keys[] = {"listener", "hosts", "paths", "pool",        "redirect",
                                           "affinity", "allow", "deny",  "idle_timeout"};
constexpr std::string_view deny_keys[] = {"listener", "hosts", "paths", "url", "header", "status"};
constexpr std::string_view deny_header_keys[] = {"name", "match"};
constexpr std::string_view server_keys[] = {"name", "address", "site", "weight", "server_name", "pin"};
constexpr std::string_view pool_keys[] = {"name", "servers",  "balance", "hash_key",        "local_site", "fallback",
                                          "tls",  "starttls", "ca",      "connect_timeout", "health"};
constexpr std::string_view health_keys[] = {"kind", "path", "expect", "interval", "timeout", "rise", "fall"};

std::string unknown_key_message(std::string_view key, std::string_view section,
                                std::span<const std::string_view> known) {
  std::string message = "unknown key \"" + std::string(key) + "\" in " + std::string(section);
  if (auto close = closest_match(key, known); !close.empty())
    return message + "; did you mean \"" + std::string(close) + "\"?";
  return message + "; known keys: " + join_quoted(known);
}

// Reads the keys of one TOML table into a struct. Every accessor returns true
// only when the key is present and valid; otherwise it has reported why and
// marked the key invalid so that later checks do not pile on.
class TableReader {
 public:
  TableReader(Loader& loader, const toml::table& table, Origin& origin, std::string_view section,
              std::span<const std::string_view> known, std::string prefix = {})
      : loader_(loader), table_(table), origin_(origin), prefix_(std::move(prefix)) {
    for (auto&& [key, node] : table_) {
      std::string name = prefix_ + std::string(key.str());
      int line = line_of(node) > 0 ? line_of(node) : origin_.line;
      origin_.present.emplace(name, line);
      if (std::find(known.begin(), known.end(), key.str()) == known.end())
        loader_.error(origin_, name, unknown_key_message(key.str(), section, known), line);
    }
  }

  void require(std::string_view key, std::string_view example) {
    if (!table_.contains(key))
      loader_.error(origin_, full(key), "required key is missing; add " + std::string(example), origin_.line);
  }

  bool string(std::string_view key, std::string& out) {
    auto* node = table_.get(key);
    if (!node) return false;
    if (auto* text = node->as_string()) {
      out = text->get();
      return true;
    }
    return type_error(key, *node, "a string");
  }

  bool name(std::string_view key, std::string& out) {
    if (!string(key, out)) return false;
    if (is_valid_name(out)) return true;
    return value_error(key, "\"" + out + "\" is not a usable name: use letters, digits, '-', '_' and '.' " +
                                "(names appear in admin URLs, metrics and logs)");
  }

  bool boolean(std::string_view key, bool& out) {
    auto* node = table_.get(key);
    if (!node) return false;
    if (auto* flag = node->as_boolean()) {
      out = flag->get();
      return true;
    }
    return type_error(key, *node, "true or false");
  }

  template <class T>
  bool integer(std::string_view key, std::int64_t low, std::int64_t high, T& out) {
    auto* node = table_.get(key);
    if (!node) return false;
    auto* number = node->as_integer();
    if (!number) return type_error(key, *node, "an integer");
    std::int64_t value = number->get();
    if (value < low || value > high) {
      std::string range = high == INT_MAX || high == INT64_MAX
                              ? "at least " + std::to_string(low)
                              : "between " + std::to_string(low) + " and " + std::to_string(high);
      return value_error(key, std::to_string(value) + " is out of range: it must be " + range);
    }
    out = static_cast<T>(value);
    return true;
  }

  bool strings(std::string_view key, std::vector<std::string>& out) {
    auto* node = table_.get(key);
    if (!node) return false;
    auto* array = node->as_array();
    if (!array) return type_error(key, *node, "an array of strings, e.g. [\"a\", \"b\"]");
    out.clear();
    bool ok = true;
    for (std::size_t i = 0; i < array->size(); ++i) {
      const toml::node& element = *array->get(i);
      if (auto* text = element.as_string()) {
        out.push_back(text->get());
      } else {
        ok = type_error(element_key(key, i), element, "a string");
      }
    }
    return ok;
  }

  template <class E, std::size_t N>
  bool choice(std::string_view key, const Choice<E> (&choices)[N], E& out) {
    std::string text;
    if (!string(key, text)) return false;
    for (auto& option : choices) {
      if (option.name == text) {
        out = option.value;
        return true;
      }
    }
    std::vector<std::string_view> names;
    for (auto& option : choices) names.push_back(option.name);
    return value_error(key,
                       "\"" + text + "\" is not a valid " + std::string(key) + "; use one of " + join_quoted(names));
  }

  bool duration(std::string_view key, Duration& out, bool positive = false) {
    std::string text;
    if (!string(key, text)) return false;
    auto value = parse_duration(text);
    if (!value)
      return value_error(key, "\"" + text + "\" is not a duration: write a number and a unit, as in \"500ms\", " +
                                  "\"30s\", \"5m\", \"1h\" or \"1h30m\" (at most ten years)");
    if (positive && value->count() == 0) return value_error(key, "must be longer than zero, e.g. \"5s\"");
    out = *value;
    return true;
  }

  std::optional<Address> address(std::string_view key, std::string_view text) {
    if (auto value = parse_address(text)) return value;
    std::string message = "\"" + std::string(text) + "\" is not an address: write \"host:port\" or \"[v6]:port\"";
    if (!text.starts_with('[') && std::count(text.begin(), text.end(), ':') > 1)
      message += "; an IPv6 address needs brackets, as in \"[::1]:443\"";
    else if (text.find(':') == std::string_view::npos) message += "; the port is missing";
    else message += " with a port from 0 to 65535";
    value_error(key, message);
    return std::nullopt;
  }

  bool address(std::string_view key, Address& out) {
    std::string text;
    if (!string(key, text)) return false;
    auto value = address(key, text);
    if (value) out = *value;
    return value.has_value();
  }

  // A file conf only checks for readability; its content is sni/'s business.
  bool file(std::string_view key, fs::path& out) {
    std::string text;
    if (!string(key, text)) return false;
    if (text.empty()) {
      out.clear();
      return true;
    }
    fs::path path = fs::path(text).is_absolute() ? fs::path(text) : loader_.base_dir() / text;
    out = path.lexically_normal();
    std::error_code ignored;
    std::string problem;
    if (fs::is_directory(out, ignored)) problem = "is a directory";
    else if (::access(out.c_str(), R_OK) != 0) problem = std::strerror(errno);
    if (problem.empty()) return true;
    std::string message = "cannot read \"" + out.string() + "\" (" + problem + ")";
    if (fs::path(text).is_relative())
      message += "; relative paths are resolved against the config file's directory " + loader_.base_dir().string();
    return value_error(key, message);
  }

  // Route-style host names: normalised, wildcards as route hosts allow.
  bool hosts(std::string_view key, std::vector<std::string>& out) {
    if (!strings(key, out)) return false;
    bool ok = true;
    for (std::size_t i = 0; i < out.size(); ++i) {
      auto result = normalize_route_host(out[i]);
      if (!result.error.empty()) ok = value_error(element_key(key, i), "\"" + out[i] + "\": " + result.error);
      out[i] = std::move(result.host);
    }
    return ok;
  }

  const toml::node* node(std::string_view key) const { return table_.get(key); }

  std::string full(std::string_view key) const { return prefix_ + std::string(key); }
  static std::string element_key(std::string_view key, std::size_t index) {
    return std::string(key) + "[" + std::to_string(index) + "]";
  }

  // An error in one element ("alpn[1]") invalidates the whole key ("alpn").
  bool value_error(std::string_view key, std::string message, int line = 0) {
    origin_.invalid.insert(full(key.substr(0, key.find('['))));
    loader_.error(origin_, full(key), std::move(message), line);
    return false;
  }

  bool type_error(std::string_view key, const toml::node& node, std::string_view expected) {
    return value_error(key, "expected " + std::string(expected) + ", got " + describe(node), line_of(node));
  }

 private:
  Loader& loader_;
  const toml::table& table_;
  Origin& origin_;
  std::string prefix_;
};

}  // namespace

int Origin::line_of(std::string_view key) const {
  auto it = present.find(key.substr(0, key.find('[')));
  return it == present.end() ? line : it->second;
}

Loader::Loader(fs::path file) : file_(std::move(file)) {
  std::error_code ec;
  auto absolute = fs::absolute(file_, ec);
  base_dir_ = (ec ? file_ : absolute).parent_path();
  config_.file = file_;
}

void Loader::error(const Origin& origin, std::string_view key, std::string message, int line) {
  result_.errors.push_back(
      {file_.string(), line > 0 ? line : origin.line_of(key), origin.path(key), std::move(message)});
}

void Loader::warning(const Origin& origin, std::string_view key, std::string message, int line) {
  result_.warnings.push_back(
      {file_.string(), line > 0 ? line : origin.line_of(key), origin.path(key), std::move(message)});
}

LoadResult Loader::load(std::string_view text) {
  std::string source = rewrite_settings_header(text);
  toml::table root;
  try {
    root = toml::parse(std::string_view(source), std::string_view(file_.string()));
  } catch (const toml::parse_error& e) {
    int line = static_cast<int>(e.source().begin.line);
    std::string message = "TOML syntax error: " + replace_all(std::string(e.description()), settings_key, "server");
    message += " (column " + std::to_string(e.source().begin.column) + ")";
    if (message.find("inline table") != std::string::npos)
      message += "; an inline table such as health = { ... } must fit on one line";
    result_.errors.push_back({file_.string(), line, guess_key(source, line), std::move(message)});
    return std::move(result_);
  }
  read_root(root);
  validate();
  auto by_line = [](const Diagnostic& a, const Diagnostic& b) { return a.line < b.line; };
  std::stable_sort(result_.errors.begin(), result_.errors.end(), by_line);
  std::stable_sort(result_.warnings.begin(), result_.warnings.end(), by_line);
  if (result_.errors.empty()) {
    auto record = [this](const Origin& origin) {
      for (const auto& [key, line] : origin.present) config_.key_lines[origin.path(key)] = line;
    };
    record(settings_origin_);
    for (const auto* origins :
         {&certificate_origins_, &listener_origins_, &route_origins_, &server_origins_, &pool_origins_, &deny_origins_})
      for (const auto& origin : *origins) record(origin);
    result_.config = std::move(config_);
  }
  return std::move(result_);
}

void Loader::read_root(const toml::table& root) {
  Origin top;
  for (auto&& [key, node] : root) {
    std::string_view name = key.str();
    if (name == settings_key || (name == "server" && node.is_table()) || name == "global") {
      // [global] is the name; [server] is what older files say.
      if (settings_origin_.line != 0) {
        error(top, std::string(name == settings_key ? "server" : name),
              "process settings are given twice ([global] and [server]); keep one [global] table", line_of(node));
        continue;
      }
      if (!node.is_table()) {
        error(top, std::string(name), "must be a table: [global]", line_of(node));
        continue;
      }
      settings_origin_.label = name == "global" ? "global" : "server";
      settings_origin_.line = line_of(node);
      if (name != "global")
        warning(settings_origin_, "",
                "[server] is the old name of the settings table; write [global] instead (standard TOML, and so "
                "every other TOML tool, refuses a [server] table beside [[server]] tables)");
      read(*node.as_table(), settings_origin_, config_.server);
    } else if (name == "server") {
      read_array(node, "server", config_.servers, server_origins_);
    } else if (name == "certificate") {
      read_array(node, "certificate", config_.certificates, certificate_origins_);
    } else if (name == "listener") {
      read_array(node, "listener", config_.listeners, listener_origins_);
    } else if (name == "route") {
      read_array(node, "route", config_.routes, route_origins_);
    } else if (name == "pool") {
      read_array(node, "pool", config_.pools, pool_origins_);
    } else if (name == "deny") {
      read_array(node, "deny", config_.deny_rules, deny_origins_);
    } else if (std::find(std::begin(settings_keys), std::end(settings_keys), name) != std::end(settings_keys)) {
      error(top, name, "\"" + std::string(name) + "\" belongs in the [global] table; move it below a [global] line",
            line_of(node));
    } else {
      error(top, name, unknown_key_message(name, "the top level", top_level_keys), line_of(node));
    }
  }
}

template <class T>
void Loader::read_array(const toml::node& node, std::string_view kind, std::vector<T>& items,
                        std::vector<Origin>& origins) {
  Origin top;
  std::string header = "[[" + std::string(kind) + "]]";
  auto* array = node.as_array();
  if (!array) {
    error(top, kind,
          "expected " + header + " tables, got " + describe(node) + "; write " + header +
              " (double brackets) above each one",
          line_of(node));
    return;
  }
  for (std::size_t i = 0; i < array->size(); ++i) {
    const toml::node& element = *array->get(i);
    Origin origin;
    origin.line = line_of(element);
    origin.label = std::string(kind) + "[" + std::to_string(i) + "]";
    auto* table = element.as_table();
    if (!table) {
      error(origin, "", "expected a table, got " + describe(element) + "; write " + header + " tables");
      continue;
    }
    if (auto name = table->get_as<std::string>("name"); name && !name->get().empty())
      origin.label = std::string(kind) + " \"" + name->get() + "\"";
    items.emplace_back();
    items.back().line = origin.line;
    read(*table, origin, items.back());
    origins.push_back(std::move(origin));
  }
}

void Loader::read(const toml::table& table, Origin& origin, ServerSettings& out) {
  TableReader r(*this, table, origin, "[" + origin.label + "]", settings_keys);
  r.integer("workers", 0, INT_MAX, out.workers);
  std::string admin;
  if (r.string("admin", admin)) out.admin = admin.empty() ? std::nullopt : r.address("admin", admin);
  r.string("access_log", out.access_log);
  if (r.file("ticket_keys", out.ticket_keys) && !out.ticket_keys.empty()) {
    // Same format as nginx's ssl_session_ticket_key: keys of 80 (or 48) bytes.
    std::error_code ec;
    const auto size = std::filesystem::file_size(out.ticket_keys, ec);
    if (!ec && (size == 0 || (size % 80 != 0 && size % 48 != 0)))
      error(origin, "ticket_keys",
            out.ticket_keys.string() + " holds " + std::to_string(size) +
                " bytes; a ticket key file holds keys of 80 bytes (or 48): create one with openssl rand 80 > " +
                out.ticket_keys.string());
  }
  r.duration("drain_timeout", out.drain_timeout);
  r.integer("max_connections", 1, INT64_MAX, out.max_connections);
}

void Loader::read(const toml::table& table, Origin& origin, Certificate& out) {
  TableReader r(*this, table, origin, "[[certificate]]", certificate_keys);
  r.require("name", "name = \"contoso-san\"");
  r.require("cert", "cert = \"certs/mail.crt\" (PEM, leaf first)");
  r.require("key", "key = \"certs/mail.key\" (PEM)");
  r.name("name", out.name);
  if (r.file("cert", out.cert) && out.cert.empty()) r.value_error("cert", "must name a PEM certificate file");
  if (r.file("key", out.key) && out.key.empty()) r.value_error("key", "must name a PEM private key file");
  if (std::string ocsp; r.string("ocsp", ocsp) && !ocsp.empty()) {
    if (ocsp == "auto") out.ocsp = OcspMode::automatic;
    else if (r.file("ocsp", out.ocsp_file)) out.ocsp = OcspMode::file;
  }
}

void Loader::read(const toml::table& table, Origin& origin, Listener& out) {
  TableReader r(*this, table, origin, "[[listener]]", listener_keys);
  r.require("name", "name = \"https\"");
  r.require("bind", "bind = \"0.0.0.0:443\"");
  r.name("name", out.name);
  r.address("bind", out.bind);
  r.choice("mode", mode_choices, out.mode);
  r.strings("certificates", out.certificates);
  r.string("default_certificate", out.default_certificate);
  r.boolean("strict_sni", out.strict_sni);
  r.choice("tls", tls_policy_choices, out.tls);
  if (r.strings("alpn", out.alpn))
    for (std::size_t i = 0; i < out.alpn.size(); ++i)
      if (out.alpn[i].empty() || out.alpn[i].size() > 255)
        r.value_error(r.element_key("alpn", i), "an ALPN protocol name is 1 to 255 bytes, e.g. \"h2\"");
  r.choice("client_certificates", client_certificate_choices, out.client_certificates);
  r.file("client_ca", out.client_ca);
  r.file("client_crl", out.client_crl);
  r.integer("client_verify_depth", 1, 16, out.client_verify_depth);
  r.choice("starttls", starttls_choices, out.starttls);
  if (r.string("greeting_name", out.greeting_name) && !out.greeting_name.empty()) {
    // It goes into the greeting and EHLO reply verbatim: a host name only.
    auto result = normalize_route_host(out.greeting_name);
    if (!result.error.empty() || result.host.starts_with('*'))
      r.value_error("greeting_name", "\"" + out.greeting_name + "\" is not a host name for the greeting, e.g. " +
                                         "\"mail.contoso.com\"" + (result.error.empty() ? "" : ": " + result.error));
    else out.greeting_name = result.host;
  }
  r.string("pool", out.pool);
  r.choice("proxy_protocol", proxy_protocol_choices, out.proxy_protocol);
  r.duration("handshake_timeout", out.handshake_timeout, true);
  r.duration("idle_timeout", out.idle_timeout, true);
  r.integer("max_connections", 0, INT64_MAX, out.max_connections);
}

void Loader::read(const toml::table& table, Origin& origin, Route& out) {
  TableReader r(*this, table, origin, "[[route]]", route_keys);
  r.require("listener", "listener = \"https\" (the [[listener]] it belongs to)");
  if (!table.contains("redirect")) r.require("pool", "pool = \"owa\" (the [[pool]] that serves it)");
  r.string("listener", out.listener);
  r.string("pool", out.pool);
  if (r.string("redirect", out.redirect)) {
    const bool absolute = out.redirect.starts_with("https://") || out.redirect.starts_with("http://");
    if ((!absolute && !out.redirect.starts_with('/')) ||
        out.redirect.find_first_of(" \t\r\n\"<>\\") != std::string::npos || out.redirect.size() > 2048)
      r.value_error("redirect", "\"" + out.redirect + "\" is not a URL to redirect to: write \"https://host/path\" " +
                                    "(or a path \"/owa\"), without spaces or quotes");
    if (table.contains("pool"))
      r.value_error("redirect", "a route either forwards (pool) or redirects (redirect), not both; remove one");
  }
  r.hosts("hosts", out.hosts);
  if (r.strings("paths", out.paths)) {
    if (out.paths.empty()) r.value_error("paths", "paths = [] matches nothing; omit paths to match every path");
    for (std::size_t i = 0; i < out.paths.size(); ++i) {
      auto& path = out.paths[i];
      const std::string_view bare = std::string_view(path).substr(path.starts_with('=') ? 1 : 0);
      if (!bare.starts_with('/'))
        r.value_error(
            r.element_key("paths", i),
            "\"" + path + "\" must start with \"/\" (a prefix, e.g. \"/owa\") or \"=/\" (exact, e.g. \"=/\")");
      else if (bare.find_first_of("%?#;\\") != std::string_view::npos || bare.find("//") != std::string_view::npos ||
               bare.find("/./") != std::string_view::npos || bare.find("/../") != std::string_view::npos ||
               bare.ends_with("/.") || bare.ends_with("/.."))
        r.value_error(r.element_key("paths", i),
                      "\"" + path + "\": write the path as it reads once decoded and normalised (no %, ?, #, ;, \\, " +
                          "// or dot segments): requests are matched in that form");
      // Matching is case-insensitive (IIS paths are), so store one case.
      std::transform(path.begin(), path.end(), path.begin(),
                     [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; });
    }
  }
  for (const char* key : {"allow", "deny"}) {
    std::vector<std::string> texts;
    if (!r.strings(key, texts)) continue;
    auto& ranges = std::string_view(key) == "allow" ? out.allow : out.deny;
    for (std::size_t i = 0; i < texts.size(); ++i) {
      if (auto range = parse_cidr(texts[i])) ranges.push_back(std::move(*range));
      else
        r.value_error(r.element_key(key, i), "\"" + texts[i] + "\" is not an address range: write \"10.0.0.0/8\", " +
                                                 "\"2001:db8::/32\" or one address");
    }
  }
  r.choice("affinity", affinity_choices, out.affinity);
  Duration idle{};
  if (r.duration("idle_timeout", idle, true)) out.idle_timeout = idle;
}

void Loader::read(const toml::table& table, Origin& origin, Server& out) {
  TableReader r(*this, table, origin, "[[server]]", server_keys);
  r.require("name", "name = \"mbx01\"");
  r.require("address", "address = \"10.0.1.11:443\"");
  r.name("name", out.name);
  if (r.address("address", out.address) && out.address.port == 0)
    r.value_error("address", "a backend needs a real port, not 0; e.g. \"" + out.address.host + ":443\"");
  r.string("site", out.site);
  r.integer("weight", 0, 256, out.weight);
  if (r.string("server_name", out.server_name) && !out.server_name.empty()) {
    auto result = normalize_route_host(out.server_name);
    if (!result.error.empty() || result.host.starts_with('*'))
      r.value_error("server_name", "\"" + out.server_name + "\" is not a host name to send as SNI and verify" +
                                       (result.error.empty() ? "" : ": " + result.error));
    else out.server_name = result.host;
  }
  if (out.server_name.empty()) out.server_name = out.address.host;
  if (r.string("pin", out.pin) && !out.pin.empty())
    if (auto problem = pin_error(out.pin))
      r.value_error("pin", *problem + "; gatehouse cert pin HOST:PORT prints the right value");
}

void Loader::read(const toml::table& table, Origin& origin, Pool& out) {
  TableReader r(*this, table, origin, "[[pool]]", pool_keys);
  r.require("name", "name = \"owa\"");
  r.require("servers", "servers = [\"mbx01\", \"mbx02\"] (names of [[server]])");
  r.name("name", out.name);
  if (r.strings("servers", out.servers) && out.servers.empty())
    r.value_error("servers", "a pool needs at least one server; list names of [[server]] tables");
  r.choice("balance", balance_choices, out.balance);
  if (r.string("hash_key", out.hash_key) && out.hash_key != "source_ip" && out.hash_key != "cookie" &&
      !(out.hash_key.starts_with("header:") && is_token(std::string_view(out.hash_key).substr(7))))
    r.value_error("hash_key", "\"" + out.hash_key + "\" is not a valid hash_key; use \"source_ip\", \"cookie\" " +
                                  "or \"header:NAME\" (an HTTP header name)");
  r.string("local_site", out.local_site);
  r.string("fallback", out.fallback);
  r.choice("tls", backend_tls_choices, out.tls);
  r.boolean("starttls", out.starttls);
  r.file("ca", out.ca);
  r.duration("connect_timeout", out.connect_timeout, true);

  const toml::node* health = r.node("health");
  if (!health) return;
  if (!health->is_table()) {
    r.type_error("health", *health, "a table, e.g. health = { kind = \"http\", path = \"/owa/healthcheck.htm\" }");
    return;
  }
  TableReader h(*this, *health->as_table(), origin, "health", health_keys, "health.");
  Health& out_health = out.health;
  h.choice("kind", health_kind_choices, out_health.kind);
  if (h.string("path", out_health.path) && !out_health.path.starts_with('/'))
    h.value_error("path", "\"" + out_health.path + "\" must start with \"/\", e.g. \"/owa/healthcheck.htm\"");
  h.integer("expect", 100, 599, out_health.expect);
  h.duration("interval", out_health.interval, true);
  h.duration("timeout", out_health.timeout, true);
  h.integer("rise", 1, INT_MAX, out_health.rise);
  h.integer("fall", 1, INT_MAX, out_health.fall);
}

void Loader::read(const toml::table& table, Origin& origin, DenyRule& out) {
  TableReader r(*this, table, origin, "[[deny]]", deny_keys);
  r.string("listener", out.listener);
  r.hosts("hosts", out.hosts);
  if (r.strings("paths", out.paths))
    for (std::size_t i = 0; i < out.paths.size(); ++i) {
      auto& path = out.paths[i];
      if (!path.starts_with('/'))
        r.value_error(r.element_key("paths", i), "\"" + path + "\" must start with \"/\", e.g. \"/ecp\"");
      std::transform(path.begin(), path.end(), path.begin(),
                     [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; });
    }
  if (r.string("url", out.url))
    if (auto problem = regex_error(out.url)) r.value_error("url", *problem);
  r.integer("status", 400, 599, out.status);
  const toml::node* header = r.node("header");
  if (!header) return;
  if (!header->is_table()) {
    r.type_error("header", *header, "a table, e.g. header = { name = \"Cookie\", match = 'X-BEResource' }");
    return;
  }
  TableReader h(*this, *header->as_table(), origin, "header", deny_header_keys, "header.");
  h.require("name", "name = \"Cookie\"");
  h.require("match", "match = '(?i)X-AnonResource-Backend' (an RE2 regular expression)");
  if (h.string("name", out.header_name) && !is_token(out.header_name))
    h.value_error("name", "\"" + out.header_name + "\" is not an HTTP header name");
  if (h.string("match", out.header_match))
    if (auto problem = regex_error(out.header_match)) h.value_error("match", *problem);
}

}  // namespace detail

LoadResult load_string(std::string_view text, const std::filesystem::path& file) {
  return detail::Loader(file).load(text);
}

LoadResult load_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::error_code ec;
  if (!in || std::filesystem::is_directory(file, ec)) {
    LoadResult result;
    std::string why = std::filesystem::is_directory(file, ec) ? "it is a directory" : std::strerror(errno);
    result.errors.push_back({file.string(), 0, "", "cannot read the config file (" + why + "); check the path"});
    return result;
  }
  std::ostringstream text;
  text << in.rdbuf();
  return load_string(text.str(), file);
}

}  // namespace gatehouse::conf
