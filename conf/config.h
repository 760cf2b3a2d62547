#pragma once
// Gatehouse configuration: the whole TOML schema (conf/README.md) as an
// immutable, validated value. Nothing outside conf/ sees TOML. load_file()
// either returns a Config whose every reference resolves, or the full list of
// errors, each with file, line and key path. The settings table is [global];
// older files call it [server] beside the [[server]] array, which plain TOML
// forbids in one file: load_* still accept that, with a warning.

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace gatehouse::conf {

using Duration = std::chrono::milliseconds;

struct Address {
  std::string host;  // "0.0.0.0", "127.0.0.1", "::1" (no brackets), or a DNS name
  std::uint16_t port = 0;
  std::string to_string() const;  // "host:port" or "[v6]:port"
  bool operator==(const Address&) const = default;
};

// One error or warning, always with the file it came from; line 0 when the
// problem is not tied to one line (e.g. the file could not be read).
struct Diagnostic {
  std::string file;
  int line = 0;
  std::string key;                // key path: `listener "https".bind`, `pool "owa".servers[1]`, `route[0].hosts[2]`
                                  // (the name when the table has one, else its index in file order), "global.workers"
  std::string message;            // what is wrong and what to do
  std::string to_string() const;  // "file:line: key: message"
};

enum class ListenerMode { l7, l4, passthrough, tcp, redirect };
// The mail protocol whose plaintext opening an l4 listener speaks before its
// TLS (STARTTLS / STLS).
enum class StartTls { none, smtp, imap, pop3 };
enum class TlsPolicy { modern, tls13 };
enum class ClientCertificates { none, optional, require };
enum class ProxyProtocol { none, v1, v2 };
enum class Affinity { none, source_ip, cookie };
enum class Balance { round_robin, least_conn, random_two, maglev };
enum class BackendTls { verify, insecure, plain };
enum class HealthKind { none, tcp, tls, http };

struct ServerSettings {
  int workers = 0;                                            // 0 = one per CPU core
  std::optional<Address> admin = Address{"127.0.0.1", 9901};  // nullopt when admin = ""
  std::string access_log = "-";                               // "-" stdout, a path, or "" for none
  std::filesystem::path ticket_keys;                          // empty = random per process, rotated hourly
  Duration drain_timeout = std::chrono::seconds(30);
  std::uint64_t max_connections = 100000;
};

enum class OcspMode { none, automatic, file };

struct Certificate {
  std::string name;
  std::filesystem::path cert;  // absolute (relative paths resolved against the config's directory)
  std::filesystem::path key;
  OcspMode ocsp = OcspMode::none;   // `ocsp`: "" none, "auto", or a path (file)
  std::filesystem::path ocsp_file;  // the DER OCSP response when ocsp is a path
  int line = 0;                     // where the [[certificate]] table starts, for messages
};

struct Listener {
  std::string name;
  Address bind;
  ListenerMode mode = ListenerMode::l7;
  std::vector<std::string> certificates;  // resolved: never empty for l7/l4 (empty in TOML = all, in file
                                          // order); always empty for passthrough and tcp, which serve none
  std::string default_certificate;        // resolved: "" in TOML = the first of certificates ("" for passthrough)
  bool strict_sni = false;
  TlsPolicy tls = TlsPolicy::modern;
  std::vector<std::string> alpn;  // resolved default: l7 {"h2","http/1.1"}, l4 {}; passthrough always {}
  ClientCertificates client_certificates = ClientCertificates::none;
  std::filesystem::path client_ca;     // PEM bundle of the CAs that issue client certificates
  std::filesystem::path client_crl;    // PEM CRLs checked for the client's leaf; empty = none
  int client_verify_depth = 4;         // most intermediate CAs between a client's leaf and client_ca
  StartTls starttls = StartTls::none;  // l4 only
  std::string greeting_name;  // starttls: resolved: "" in TOML = the default certificate's first name (at build)
  std::string pool;           // l4/passthrough/tcp default pool, may be ""
  ProxyProtocol proxy_protocol = ProxyProtocol::none;
  Duration handshake_timeout = std::chrono::seconds(10);
  Duration idle_timeout = std::chrono::minutes(5);
  std::uint64_t max_connections = 0;  // open at once on this listener, all workers; 0 = only [global]'s limit
  int line = 0;
};

// A client address range: "10.0.0.0/8", "2001:db8::/32", or one address.
// An IPv4 range also matches the IPv4-mapped IPv6 form of its addresses.
struct Cidr {
  bool v6 = false;
  std::array<std::uint8_t, 16> bytes{};  // network order; 4 used for IPv4
  int prefix = 0;                        // bits
  std::string text;                      // as written, for messages
  // `address`: 4 bytes (IPv4) or 16 (IPv6, v4-mapped allowed).
  bool contains(std::span<const std::uint8_t> address) const;
};
std::optional<Cidr> parse_cidr(std::string_view text);

struct Route {
  std::string listener;
  std::vector<std::string> hosts;  // normalised lower case, no trailing dot; may hold "*.parent"; empty = any
  // Lower-cased (matching is case-insensitive); "/owa" a prefix, "=/" exact.
  std::vector<std::string> paths = {"/"};
  std::string pool;
  std::string redirect;     // instead of pool: answer 302 with this Location (l7 and redirect listeners)
  std::vector<Cidr> allow;  // client ranges that may use the route; empty = all
  std::vector<Cidr> deny;   // client ranges refused (before allow)
  // Whether a client at `address` (4 or 16 bytes) may use the route.
  bool admits(std::span<const std::uint8_t> address) const;
  Affinity affinity = Affinity::none;
  std::optional<Duration> idle_timeout;  // overrides the listener's
  int line = 0;
};

// An emergency rule ([[deny]], l7 and redirect listeners): a request that
// meets every condition given is answered with `status` before routing.
struct DenyRule {
  std::string listener;            // "" = every listener
  std::vector<std::string> hosts;  // normalised like route hosts; empty = any
  std::vector<std::string> paths;  // lower-cased prefixes of the normalised path; empty = any
  std::string url;                 // RE2, over the normalised path, "?" and the query; "" = any
  std::string header_name;         // with header_match: a field of this name whose value matches
  std::string header_match;        // RE2
  int status = 403;
  int line = 0;
};

struct Server {
  std::string name;
  Address address;
  std::string site;
  int weight = 1;
  std::string server_name;  // SNI and verified name, lower-cased; resolved: "" in TOML = the address host
  std::string pin;          // as written: "sha256/BASE64" or 40 hex digits (SHA-1 thumbprint, spaces/colons allowed)
  int line = 0;
};

struct Health {
  HealthKind kind = HealthKind::none;
  std::string path = "/";
  int expect = 200;
  Duration interval = std::chrono::seconds(5);
  Duration timeout = std::chrono::seconds(2);
  int rise = 2;
  int fall = 3;
};

struct Pool {
  std::string name;
  std::vector<std::string> servers;
  Balance balance = Balance::round_robin;
  std::string hash_key = "source_ip";  // "source_ip" | "cookie" | "header:NAME"
  std::string local_site;
  std::string fallback;
  BackendTls tls = BackendTls::verify;
  bool starttls = false;  // for starttls listeners: plain connect, the protocol's STARTTLS, then TLS as `tls` says
  std::filesystem::path ca;
  // One server attempt: TCP connect, STARTTLS opening and TLS handshake;
  // past it the attempt fails and another server is tried.
  Duration connect_timeout = std::chrono::seconds(5);
  Health health;
  int line = 0;
};

struct Config {
  std::filesystem::path file;  // the file it was loaded from
  ServerSettings server;
  std::vector<Certificate> certificates;
  std::vector<Listener> listeners;
  std::vector<Route> routes;
  std::vector<DenyRule> deny_rules;
  std::vector<Server> servers;
  std::vector<Pool> pools;

  // Line of every key that was written, by conf's key path (e.g.
  // `pool "owa".ca`, `route[0].hosts`), so later checks (certificate
  // contents, coverage) can point at the key itself; `fallback` when absent.
  std::map<std::string, int, std::less<>> key_lines;
  int line_of(std::string_view key_path, int fallback = 0) const;

  const Certificate* find_certificate(std::string_view name) const;
  const Listener* find_listener(std::string_view name) const;
  const Server* find_server(std::string_view name) const;
  const Pool* find_pool(std::string_view name) const;
};

struct LoadResult {
  std::optional<Config> config;  // set only when errors is empty
  std::vector<Diagnostic> errors;
  std::vector<Diagnostic> warnings;  // e.g. tls = "insecure" pools
  bool ok() const { return errors.empty(); }
};

// Reads and validates a config file. Never throws for bad input.
LoadResult load_file(const std::filesystem::path& file);
// Same, from text; `file` names it in messages and its directory anchors relative paths.
LoadResult load_string(std::string_view text, const std::filesystem::path& file);

// "500ms", "30s", "5m", "1h", "1h30m"; nullopt when malformed.
std::optional<Duration> parse_duration(std::string_view text);
// "host:port", "[v6]:port"; port 0 allowed (tests bind port 0); nullopt when malformed.
std::optional<Address> parse_address(std::string_view text);

std::string_view to_string(ListenerMode);
std::string_view to_string(StartTls);  // "" for none
std::string_view to_string(BackendTls);
std::string_view to_string(Balance);

}  // namespace gatehouse::conf
