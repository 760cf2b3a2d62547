// The value-level parts of config.h: durations, addresses, names of enum
// values, lookups. No TOML here.

#include "conf/config.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <limits>

namespace gatehouse::conf {

std::string Address::to_string() const {
  // Appended piece by piece: GCC 12 at -O3 warns falsely (-Wrestrict) on "literal" + std::string&&.
  bool v6 = host.find(':') != std::string::npos;
  std::string text;
  if (v6) text += '[';
  text += host;
  if (v6) text += ']';
  text += ':';
  text += std::to_string(port);
  return text;
}

std::string Diagnostic::to_string() const {
  std::string text = file;
  if (line > 0) {
    text += ':';
    text += std::to_string(line);
  }
  text += ": ";
  if (!key.empty()) {
    text += key;
    text += ": ";
  }
  text += message;
  return text;
}

namespace {

template <class T>
const T* find_named(const std::vector<T>& items, std::string_view name) {
  auto it = std::find_if(items.begin(), items.end(), [&](const T& item) { return item.name == name; });
  return it == items.end() ? nullptr : &*it;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Parses all of `text` as a decimal number; no sign, no spaces.
template <class T>
std::optional<T> parse_number(std::string_view text) {
  if (text.empty() || !std::all_of(text.begin(), text.end(), is_digit)) return std::nullopt;
  T value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

bool is_ipv4_like(std::string_view host) {
  return std::all_of(host.begin(), host.end(), [](char c) { return is_digit(c) || c == '.'; });
}

// A DNS name as an address host: letters, digits, '-', '_', non-empty labels
// (one trailing dot allowed, as in "mbx01.contoso.com.").
bool is_dns_name(std::string_view host) {
  if (host.ends_with('.')) host.remove_suffix(1);
  if (host.empty() || host.size() > 253) return false;
  std::size_t label = 0;
  for (char c : host) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    bool ok = is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '_';
    if (!ok || ++label > 63) return false;
  }
  return label > 0;
}

}  // namespace

int Config::line_of(std::string_view key_path, int fallback) const {
  auto it = key_lines.find(key_path);
  return it == key_lines.end() ? fallback : it->second;
}

const Certificate* Config::find_certificate(std::string_view name) const { return find_named(certificates, name); }
const Listener* Config::find_listener(std::string_view name) const { return find_named(listeners, name); }
const Server* Config::find_server(std::string_view name) const { return find_named(servers, name); }
const Pool* Config::find_pool(std::string_view name) const { return find_named(pools, name); }

std::optional<Duration> parse_duration(std::string_view text) {
  // Ten years: anything longer is a typo, and it keeps deadline arithmetic on
  // nanosecond clocks far from overflow.
  constexpr std::int64_t max_ms = 10LL * 366 * 24 * 3600 * 1000;
  if (text.empty()) return std::nullopt;
  std::int64_t total = 0;
  while (!text.empty()) {
    std::size_t digits = 0;
    while (digits < text.size() && is_digit(text[digits])) ++digits;
    if (digits == 0 || digits > 15) return std::nullopt;  // 15 digits cannot overflow below
    auto number = parse_number<std::int64_t>(text.substr(0, digits));
    text.remove_prefix(digits);
    std::int64_t unit_ms = 0;
    if (text.starts_with("ms")) {
      unit_ms = 1;
      text.remove_prefix(2);
    } else if (!text.empty() && (text[0] == 's' || text[0] == 'm' || text[0] == 'h')) {
      unit_ms = text[0] == 's' ? 1000 : text[0] == 'm' ? 60'000 : 3'600'000;
      text.remove_prefix(1);
    } else {
      return std::nullopt;  // no unit, or an unknown one
    }
    if (!number || *number > max_ms / unit_ms) return std::nullopt;
    total += *number * unit_ms;
    if (total > max_ms) return std::nullopt;
  }
  return Duration(total);
}

std::optional<Address> parse_address(std::string_view text) {
  std::string_view host;
  std::string_view rest;
  if (text.starts_with('[')) {
    auto close = text.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = text.substr(1, close - 1);
    rest = text.substr(close + 1);
    in6_addr v6{};
    if (host.empty() || inet_pton(AF_INET6, std::string(host).c_str(), &v6) != 1) return std::nullopt;
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    rest = text.substr(colon);
    if (host.find(':') != std::string_view::npos) return std::nullopt;  // IPv6 needs brackets
    if (is_ipv4_like(host)) {
      in_addr v4{};
      if (inet_pton(AF_INET, std::string(host).c_str(), &v4) != 1) return std::nullopt;
    } else if (!is_dns_name(host)) {
      return std::nullopt;
    }
  }
  if (!rest.starts_with(':') || rest.size() > 6) return std::nullopt;
  auto port = parse_number<std::uint32_t>(rest.substr(1));
  if (!port || *port > 65535) return std::nullopt;
  return Address{std::string(host), static_cast<std::uint16_t>(*port)};
}

std::string_view to_string(ListenerMode mode) {
  switch (mode) {
    case ListenerMode::l7: return "l7";
    case ListenerMode::l4: return "l4";
    case ListenerMode::passthrough: return "passthrough";
    case ListenerMode::tcp: return "tcp";
    case ListenerMode::redirect: return "redirect";
  }
  return "?";
}

std::optional<Cidr> parse_cidr(std::string_view text) {
  Cidr out;
  out.text = std::string(text);
  const auto slash = text.find('/');
  const std::string address(text.substr(0, slash));
  if (::inet_pton(AF_INET, address.c_str(), out.bytes.data()) == 1) {
    out.prefix = 32;
  } else if (::inet_pton(AF_INET6, address.c_str(), out.bytes.data()) == 1) {
    out.v6 = true;
    out.prefix = 128;
  } else {
    return std::nullopt;
  }
  if (slash != std::string_view::npos) {
    const std::string_view bits = text.substr(slash + 1);
    int value = 0;
    const auto [end, ec] = std::from_chars(bits.data(), bits.data() + bits.size(), value);
    if (bits.empty() || ec != std::errc() || end != bits.data() + bits.size() || value < 0 || value > out.prefix)
      return std::nullopt;
    out.prefix = value;
  }
  return out;
}

bool Cidr::contains(std::span<const std::uint8_t> address) const {
  static constexpr std::uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (address.size() == 16 && !v6 && std::equal(address.begin(), address.begin() + 12, v4_mapped))
    address = address.subspan(12);
  if (address.size() != (v6 ? 16u : 4u)) return false;
  const int whole = prefix / 8;
  if (!std::equal(address.begin(), address.begin() + whole, bytes.begin())) return false;
  const int rest = prefix % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<std::uint8_t>(0xff << (8 - rest));
  return (address[static_cast<std::size_t>(whole)] & mask) == (bytes[static_cast<std::size_t>(whole)] & mask);
}

bool Route::admits(std::span<const std::uint8_t> address) const {
  for (const Cidr& range : deny)
    if (range.contains(address)) return false;
  if (allow.empty()) return true;
  for (const Cidr& range : allow)
    if (range.contains(address)) return true;
  return false;
}

std::string_view to_string(StartTls starttls) {
  switch (starttls) {
    case StartTls::none: return "";
    case StartTls::smtp: return "smtp";
    case StartTls::imap: return "imap";
    case StartTls::pop3: return "pop3";
  }
  return "?";
}

std::string_view to_string(BackendTls tls) {
  switch (tls) {
    case BackendTls::verify: return "verify";
    case BackendTls::insecure: return "insecure";
    case BackendTls::plain: return "plain";
  }
  return "?";
}

std::string_view to_string(Balance balance) {
  switch (balance) {
    case Balance::round_robin: return "round_robin";
    case Balance::least_conn: return "least_conn";
    case Balance::random_two: return "random_two";
    case Balance::maglev: return "maglev";
  }
  return "?";
}

}  // namespace gatehouse::conf
