#include "bench/handshake_bench.h"

#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/resource.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>
#include <tuple>

#include "conf/assert.h"
#include "conf/config.h"
#include "proxy/tls/tls_stream.h"

namespace gatehouse::bench {

namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using Clock = std::chrono::steady_clock;
using namespace asio::experimental::awaitable_operators;

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
// After a full TLS 1.3 handshake the ticket follows the server's handling of
// our Finished; a server busy with every other loop's warm-up may take a while.
constexpr auto kTicketWait = std::chrono::seconds(1);

// ---- options ---------------------------------------------------------------

enum class Resume { never, always };
enum class Sig { any, ecdsa, rsa };

struct Settings {
  tcp::endpoint endpoint;
  std::vector<std::string> names;  // "" = no SNI
  Resume resume = Resume::never;
  Sig sig = Sig::any;
  std::uint64_t count = 0;
  Clock::duration duration{};
  Clock::duration timeout{};
  int concurrency = 1;
  int threads = 1;
};

std::string flag_error(std::string_view flag, std::string_view value, std::string_view what) {
  std::string s = "bench handshake: ";
  s += flag;
  s += " \"";
  s += value;
  s += "\" ";
  s += what;
  return s;
}

// Tells `err` which flag is wrong and why; false, for a validation step to return.
bool refuse(std::ostream& err, std::string_view flag, std::string_view value, std::string_view what) {
  err << flag_error(flag, value, what) << "\n";
  return false;
}

// ---- sessions --------------------------------------------------------------

// Attached to each client SSL so the new-session callback knows where the
// session goes.
struct SessionSink {
  bssl::UniquePtr<SSL_SESSION>* slot = nullptr;
  bool got = false;
};

int sink_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

int on_new_session(SSL* ssl, SSL_SESSION* session) {
  auto* sink = static_cast<SessionSink*>(SSL_get_ex_data(ssl, sink_index()));
  if (sink == nullptr || sink->slot == nullptr || !SSL_SESSION_is_resumable(session)) return 0;
  sink->slot->reset(session);  // takes the reference
  sink->got = true;
  return 1;
}

bssl::UniquePtr<SSL_CTX> make_client_context(const HandshakeOptions& options, const Settings& settings,
                                             std::string& error) {
  bssl::UniquePtr<SSL_CTX> ctx(SSL_CTX_new(TLS_method()));
  if (!ctx) {
    error = "bench handshake: cannot create a TLS context";
    return nullptr;
  }
  // A load generator: the chain is not verified (the handshake signature still is).
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  uint16_t min_version = TLS1_2_VERSION;
  uint16_t max_version = TLS1_3_VERSION;
  if (options.tls == "1.2") min_version = max_version = TLS1_2_VERSION;
  if (options.tls == "1.3") min_version = max_version = TLS1_3_VERSION;
  SSL_CTX_set_min_proto_version(ctx.get(), min_version);
  SSL_CTX_set_max_proto_version(ctx.get(), max_version);

  // Offering only one key type's signature algorithms makes the server pick
  // that certificate (and fail the handshake when it has none). TLS 1.2 also
  // ties the certificate type to the cipher suite.
  static const uint16_t ecdsa_prefs[] = {SSL_SIGN_ECDSA_SECP256R1_SHA256, SSL_SIGN_ECDSA_SECP384R1_SHA384,
                                         SSL_SIGN_ECDSA_SECP521R1_SHA512};
  static const uint16_t rsa_prefs[] = {SSL_SIGN_RSA_PSS_RSAE_SHA256, SSL_SIGN_RSA_PSS_RSAE_SHA384,
                                       SSL_SIGN_RSA_PSS_RSAE_SHA512, SSL_SIGN_RSA_PKCS1_SHA256,
                                       SSL_SIGN_RSA_PKCS1_SHA384,    SSL_SIGN_RSA_PKCS1_SHA512};
  bool ok = true;
  if (settings.sig == Sig::ecdsa) {
    ok = SSL_CTX_set_verify_algorithm_prefs(ctx.get(), ecdsa_prefs, std::size(ecdsa_prefs)) == 1 &&
         SSL_CTX_set_strict_cipher_list(ctx.get(),
                                        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
                                        "ECDHE-ECDSA-CHACHA20-POLY1305") == 1;
  } else if (settings.sig == Sig::rsa) {
    ok = SSL_CTX_set_verify_algorithm_prefs(ctx.get(), rsa_prefs, std::size(rsa_prefs)) == 1 &&
         SSL_CTX_set_strict_cipher_list(ctx.get(),
                                        "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384:"
                                        "ECDHE-RSA-CHACHA20-POLY1305") == 1;
  }
  if (!ok) {
    ERR_clear_error();
    error = "bench handshake: BoringSSL refused the signature algorithm or cipher settings for --sig";
    return nullptr;
  }
  if (settings.resume == Resume::always) {
    // Sessions are kept per loop and per name by on_new_session, not in the
    // context's cache.
    SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_sess_set_new_cb(ctx.get(), &on_new_session);
  } else {
    SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  }
  return ctx;
}

// ---- one connection --------------------------------------------------------

struct KeyType {
  int id = 0;  // EVP_PKEY_EC, EVP_PKEY_RSA, ...
  int bits = 0;
  int curve = 0;  // NID for EC keys
  auto operator<=>(const KeyType&) const = default;
};

std::string describe(const KeyType& k) {
  if (k.id == EVP_PKEY_EC) {
    switch (k.curve) {
      case NID_X9_62_prime256v1: return "ECDSA P-256";
      case NID_secp384r1: return "ECDSA P-384";
      case NID_secp521r1: return "ECDSA P-521";
      default: {
        std::string s = "ECDSA ";
        s += std::to_string(k.bits);
        return s;
      }
    }
  }
  if (k.id == EVP_PKEY_RSA) {
    std::string s = "RSA-";
    s += std::to_string(k.bits);
    return s;
  }
  if (k.id == EVP_PKEY_ED25519) return "Ed25519";
  if (k.id == 0) return "none";
  std::string s = "key type ";
  s += std::to_string(k.id);
  return s;
}

KeyType peer_key_type(SSL* ssl) {
  KeyType k;
  bssl::UniquePtr<X509> leaf(SSL_get_peer_certificate(ssl));
  if (!leaf) return k;
  bssl::UniquePtr<EVP_PKEY> key(X509_get_pubkey(leaf.get()));
  if (!key) return k;
  k.id = EVP_PKEY_id(key.get());
  k.bits = EVP_PKEY_bits(key.get());
  if (k.id == EVP_PKEY_EC) {
    if (const EC_KEY* ec = EVP_PKEY_get0_EC_KEY(key.get())) k.curve = EC_GROUP_get_curve_name(EC_KEY_get0_group(ec));
  }
  return k;
}

struct Outcome {
  std::string error;  // "" = handshake done
  bool resumed = false;
  bool got_session = false;
  Clock::duration latency{};
  uint16_t version = 0;
  KeyType key;
};

// One connection: the name it sends and what it does with sessions.
struct Attempt {
  const std::string& name;                          // SNI; "" sends none
  bssl::UniquePtr<SSL_SESSION>* session = nullptr;  // offered when it holds one; a new one replaces it
  bool wait_for_session = false;                    // warm-up: keep reading until the server sends one
};

// TLS 1.3 sends its tickets after the handshake, and BoringSSL processes
// them inside SSL_read. A server waiting for a request sends nothing
// else, so read until the callback fired, the peer closed, or time is up.
asio::awaitable<void> read_until_session(proxy::TlsStream& stream, const SessionSink& sink) {
  asio::steady_timer deadline(co_await asio::this_coro::executor);
  deadline.expires_after(kTicketWait);
  char scratch[512];
  while (!sink.got) {
    auto [ec, n] = stream.try_read_some(scratch, sizeof scratch);
    if (sink.got) break;
    if (!ec) continue;  // application data: ignored
    if (ec != asio::error::would_block && ec != asio::error::in_progress) break;
    auto ready = co_await (stream.wait_readable() || deadline.async_wait(use_tuple));
    if (ready.index() == 1 || std::get<0>(ready)) break;
  }
}

asio::awaitable<Outcome> connect_and_handshake(const tcp::endpoint& endpoint, SSL_CTX* ctx, Attempt attempt) {
  Outcome outcome;
  auto executor = co_await asio::this_coro::executor;
  const auto started = Clock::now();
  tcp::socket socket(executor);
  auto [connect_ec] = co_await socket.async_connect(endpoint, use_tuple);
  if (connect_ec) {
    outcome.error = "connect: ";
    outcome.error += connect_ec.message();
    co_return outcome;
  }
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx));
  if (!ssl) {
    outcome.error = "SSL_new failed";
    co_return outcome;
  }
  SSL_set_connect_state(ssl.get());
  if (!attempt.name.empty()) SSL_set_tlsext_host_name(ssl.get(), attempt.name.c_str());
  SessionSink sink{.slot = attempt.session};
  SSL_set_ex_data(ssl.get(), sink_index(), &sink);
  if (attempt.session != nullptr && *attempt.session) SSL_set_session(ssl.get(), attempt.session->get());

  proxy::TlsStream stream(std::move(socket), std::move(ssl));
  if (auto ec = co_await stream.handshake()) {
    outcome.error = "handshake: ";
    outcome.error += ec.message();
    co_return outcome;
  }
  outcome.latency = Clock::now() - started;
  SSL* s = stream.ssl();
  outcome.resumed = SSL_session_reused(s) == 1;
  outcome.version = static_cast<uint16_t>(SSL_version(s));
  outcome.key = peer_key_type(s);

  if (attempt.wait_for_session && !sink.got) co_await read_until_session(stream, sink);
  outcome.got_session = sink.got;
  SSL_set_ex_data(s, sink_index(), nullptr);
  co_await stream.shutdown_send();  // close_notify, FIN; the socket closes with the stream
  co_return outcome;
}

// ---- per thread ------------------------------------------------------------

struct Stats {
  std::uint64_t full = 0;
  std::uint64_t resumed = 0;
  std::vector<std::uint32_t> latency_us;
  std::map<std::string, std::uint64_t> errors;
  std::map<uint16_t, std::uint64_t> versions;
  std::map<KeyType, std::uint64_t> keys;
  std::uint64_t warmup_without_session = 0;
  std::uint64_t warmup_total = 0;
  std::map<std::string, std::uint64_t> warmup_errors;

  void merge(const Stats& o) {
    full += o.full;
    resumed += o.resumed;
    latency_us.insert(latency_us.end(), o.latency_us.begin(), o.latency_us.end());
    for (const auto& [k, v] : o.errors) errors[k] += v;
    for (const auto& [k, v] : o.versions) versions[k] += v;
    for (const auto& [k, v] : o.keys) keys[k] += v;
    warmup_without_session += o.warmup_without_session;
    warmup_total += o.warmup_total;
    for (const auto& [k, v] : o.warmup_errors) warmup_errors[k] += v;
  }
};

struct Shared {
  const Settings* settings = nullptr;
  SSL_CTX* ctx = nullptr;
  std::atomic<std::uint64_t> claimed{0};
  std::atomic<std::uint64_t> done{0};
  std::atomic<std::uint64_t> failed{0};
  std::atomic<std::uint64_t> next_name{0};
  Clock::time_point deadline{};  // written before the measured phase starts
};

// One connection loop: the names it rotates through and a session per name.
struct Loop {
  std::vector<std::size_t> names;
  std::vector<bssl::UniquePtr<SSL_SESSION>> sessions;
  std::size_t next = 0;
};

asio::awaitable<std::optional<Outcome>> with_timeout(asio::awaitable<Outcome> op, Clock::duration timeout) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(timeout);
  auto result = co_await (std::move(op) || timer.async_wait(use_tuple));
  if (result.index() == 0) co_return std::move(std::get<0>(result));
  co_return std::nullopt;
}

asio::awaitable<void> warm_up(Shared& shared, Loop& loop, Stats& stats) {
  const Settings& settings = *shared.settings;
  for (std::size_t i = 0; i < loop.names.size(); ++i) {
    ++stats.warmup_total;
    const Attempt attempt{
        .name = settings.names[loop.names[i]], .session = &loop.sessions[i], .wait_for_session = true};
    auto outcome = co_await with_timeout(connect_and_handshake(settings.endpoint, shared.ctx, attempt),
                                         settings.timeout + kTicketWait);
    if (!outcome) {
      ++stats.warmup_errors["timeout"];
    } else if (!outcome->error.empty()) {
      ++stats.warmup_errors[outcome->error];
    } else if (!outcome->got_session) {
      ++stats.warmup_without_session;
    }
  }
}

asio::awaitable<void> measure(Shared& shared, Loop& loop, Stats& stats) {
  const Settings& settings = *shared.settings;
  const bool resume = settings.resume == Resume::always;
  for (;;) {
    if (settings.count > 0) {
      if (shared.claimed.fetch_add(1, std::memory_order_relaxed) >= settings.count) break;
    } else if (Clock::now() >= shared.deadline) {
      break;
    }
    // Full handshakes rotate through every name in turn; resumed ones use
    // the names this loop holds sessions for.
    const std::size_t slot = loop.next++ % loop.names.size();
    const std::string& name =
        resume ? settings.names[loop.names[slot]]
               : settings.names[shared.next_name.fetch_add(1, std::memory_order_relaxed) % settings.names.size()];
    const Attempt attempt{.name = name, .session = resume ? &loop.sessions[slot] : nullptr};
    auto outcome =
        co_await with_timeout(connect_and_handshake(settings.endpoint, shared.ctx, attempt), settings.timeout);
    if (!outcome || !outcome->error.empty()) {
      ++stats.errors[outcome ? outcome->error : std::string("timeout")];
      shared.failed.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    (outcome->resumed ? stats.resumed : stats.full) += 1;
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(outcome->latency).count();
    stats.latency_us.push_back(static_cast<std::uint32_t>(std::min<long long>(us, UINT32_MAX)));
    ++stats.versions[outcome->version];
    ++stats.keys[outcome->key];
    shared.done.fetch_add(1, std::memory_order_relaxed);
  }
}

// ---- /proc -----------------------------------------------------------------

// utime + stime of the whole process (all its threads, live and exited), in
// clock ticks: fields 14 and 15 of /proc/PID/stat.
std::optional<std::uint64_t> process_cpu_ticks(int pid) {
  std::string path = "/proc/";
  path += std::to_string(pid);
  path += "/stat";
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  const auto close = line.rfind(')');  // the command name may hold spaces and parentheses
  if (close == std::string::npos) return std::nullopt;
  std::istringstream fields(line.substr(close + 1));
  std::string skip;
  for (int field = 3; field <= 13; ++field) fields >> skip;
  std::uint64_t utime = 0;
  std::uint64_t stime = 0;
  if (!(fields >> utime >> stime)) return std::nullopt;
  return utime + stime;
}

std::optional<double> servers_cpu_seconds(const std::vector<int>& pids) {
  static const double ticks_per_second = static_cast<double>(sysconf(_SC_CLK_TCK));
  std::uint64_t total = 0;
  for (int pid : pids) {
    auto ticks = process_cpu_ticks(pid);
    if (!ticks) return std::nullopt;
    total += *ticks;
  }
  return static_cast<double>(total) / ticks_per_second;
}

double self_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// ---- report ----------------------------------------------------------------

std::string version_name(uint16_t v) {
  switch (v) {
    case TLS1_3_VERSION: return "TLSv1.3";
    case TLS1_2_VERSION: return "TLSv1.2";
    case TLS1_1_VERSION: return "TLSv1.1";
    case TLS1_VERSION: return "TLSv1";
    default: return std::to_string(v);
  }
}

double percentile(const std::vector<std::uint32_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  // Nearest rank.
  auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  rank = std::clamp<std::size_t>(rank, 1, sorted.size());
  return sorted[rank - 1] / 1000.0;
}

std::string fixed(double v, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

void row(std::ostream& out, std::string_view label, const std::string& value) {
  out << "  " << std::left << std::setw(22) << label << value << "\n";
}

// ---- validation -------------------------------------------------------------

// Each step below fills its part of the settings, or tells `err` what is wrong
// and returns false; the steps run in the order the flags are reported.

bool read_modes(const HandshakeOptions& options, Settings& settings, std::ostream& err) {
  if (options.resume != "never" && options.resume != "always")
    return refuse(err, "--resume", options.resume, "must be never or always");
  settings.resume = options.resume == "always" ? Resume::always : Resume::never;
  if (options.sig == "ecdsa") settings.sig = Sig::ecdsa;
  else if (options.sig == "rsa") settings.sig = Sig::rsa;
  else if (options.sig != "any") return refuse(err, "--sig", options.sig, "must be ecdsa, rsa or any");
  if (!options.tls.empty() && options.tls != "1.2" && options.tls != "1.3")
    return refuse(err, "--tls", options.tls, "must be 1.2 or 1.3");
  return true;
}

bool read_load(const HandshakeOptions& options, Settings& settings, std::ostream& err) {
  if (options.concurrency < 1)
    return refuse(err, "--concurrency", std::to_string(options.concurrency), "must be at least 1");
  settings.concurrency = options.concurrency;
  settings.threads = std::clamp(options.threads, 1, options.concurrency);
  settings.count = options.count;
  if (settings.count == 0) {
    const auto d = conf::parse_duration(options.duration);
    if (!d || d->count() <= 0)
      return refuse(err, "--duration", options.duration, "is not a duration like 10s, 500ms or 2m");
    settings.duration = *d;
  }
  const auto t = conf::parse_duration(options.timeout);
  if (!t || t->count() <= 0) return refuse(err, "--timeout", options.timeout, "is not a duration like 10s or 500ms");
  settings.timeout = *t;
  return true;
}

bool check_server_pids(const HandshakeOptions& options, std::ostream& err) {
  for (int pid : options.server_pids) {
    if (pid <= 0 || !process_cpu_ticks(pid))
      return refuse(err, "--server-pid", std::to_string(pid), "is not a running process (no readable /proc/PID/stat)");
  }
  return true;
}

bool read_names(const HandshakeOptions& options, const conf::Address& address, Settings& settings, std::ostream& err) {
  settings.names = options.sni;
  if (settings.names.empty()) {
    error_code ec;
    asio::ip::make_address(address.host, ec);
    settings.names.push_back(ec ? address.host : std::string());  // no SNI to an IP literal
  }
  for (const auto& n : settings.names) {
    if (n.empty() && options.sni.size() > 0) {
      err << "bench handshake: --sni has an empty name; give NAME[,NAME...]\n";
      return false;
    }
  }
  return true;
}

bool resolve_target(const HandshakeOptions& options, const conf::Address& address, Settings& settings,
                    std::ostream& err) {
  asio::io_context io;
  tcp::resolver resolver(io);
  error_code ec;
  auto results = resolver.resolve(address.host, std::to_string(address.port), ec);
  if (ec || results.empty()) {
    err << "bench handshake: cannot resolve " << address.host << " (--target " << options.target
        << "): " << ec.message() << "\n";
    return false;
  }
  settings.endpoint = results.begin()->endpoint();
  return true;
}

std::optional<Settings> read_settings(const HandshakeOptions& options, std::ostream& err) {
  const auto address = conf::parse_address(options.target);
  if (!address || address->port == 0) {
    refuse(err, "--target", options.target, "is not HOST:PORT (e.g. 127.0.0.1:8443 or [::1]:443)");
    return std::nullopt;
  }
  Settings settings;
  if (!read_modes(options, settings, err) || !read_load(options, settings, err) || !check_server_pids(options, err) ||
      !read_names(options, *address, settings, err) || !resolve_target(options, *address, settings, err))
    return std::nullopt;
  return settings;
}

// ---- the run ----------------------------------------------------------------

void prepare_process() {
  // A peer that resets must give an error code, not kill the load generator.
  std::signal(SIGPIPE, SIG_IGN);
  // Each loop holds one descriptor; leave room for many.
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
}

// With resumption every name needs a session in some loop, so loop i takes
// names i, i+C, i+2C ... (or name i mod N when N <= C) and rotates through
// those; full handshakes rotate through all names.
std::vector<Loop> make_loops(const Settings& settings) {
  // Validation leaves at least one name (maybe "", no SNI); a loop without one would divide by zero.
  GH_ASSERT(!settings.names.empty());
  const std::size_t loops_n = static_cast<std::size_t>(settings.concurrency);
  std::vector<Loop> loops(loops_n);
  for (std::size_t i = 0; i < loops_n; ++i) {
    if (settings.names.size() <= loops_n) {
      loops[i].names.push_back(i % settings.names.size());
    } else {
      for (std::size_t n = i; n < settings.names.size(); n += loops_n) loops[i].names.push_back(n);
    }
    loops[i].sessions.resize(loops[i].names.size());
  }
  return loops;
}

// What the client threads and the reporting thread share during a run.
struct Run {
  Run(const Settings& settings, SSL_CTX* ctx)
      : shared{.settings = &settings, .ctx = ctx},
        loops(make_loops(settings)),
        stats(static_cast<std::size_t>(settings.threads)),
        thread_ended(stats.size()),
        sync(static_cast<std::ptrdiff_t>(stats.size() + 1)) {}

  std::size_t threads() const { return stats.size(); }
  bool needs_warm_up() const { return shared.settings->resume == Resume::always; }

  Shared shared;
  std::vector<Loop> loops;
  std::vector<Stats> stats;                     // one per thread
  std::vector<Clock::time_point> thread_ended;  // one per thread
  std::barrier<> sync;                          // the client threads and the reporting thread
  std::atomic<std::size_t> finished{0};         // client threads done
};

// Client thread t runs loops t, t+T, t+2T ... on its own io_context: the
// warm-up, then (once every thread is warm and the clock has started) the
// measured phase.
void client_thread(Run& run, std::size_t t) {
  asio::io_context io(1);
  if (run.needs_warm_up()) {
    for (std::size_t i = t; i < run.loops.size(); i += run.threads())
      asio::co_spawn(io, warm_up(run.shared, run.loops[i], run.stats[t]), asio::detached);
    io.run();
    io.restart();
  }
  run.sync.arrive_and_wait();  // warm-up done everywhere
  run.sync.arrive_and_wait();  // start time and deadline set
  for (std::size_t i = t; i < run.loops.size(); i += run.threads())
    asio::co_spawn(io, measure(run.shared, run.loops[i], run.stats[t]), asio::detached);
  io.run();
  run.thread_ended[t] = Clock::now();
  run.finished.fetch_add(1);
}

// Returns when every client thread is done; meanwhile, on a terminal, a
// progress line once a second.
void wait_for_clients(Run& run, Clock::time_point started, bool tty, std::ostream& err) {
  std::uint64_t last_done = 0;
  auto next_tick = started + std::chrono::seconds(1);
  while (run.finished.load() < run.threads()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (tty && Clock::now() >= next_tick) {
      const std::uint64_t done = run.shared.done.load();
      const auto secs = std::chrono::duration_cast<std::chrono::seconds>(next_tick - started).count();
      err << "\r" << std::setw(4) << secs << "s  " << done << " handshakes  " << (done - last_done) << "/s  errors "
          << run.shared.failed.load() << "    " << std::flush;
      last_done = done;
      next_tick += std::chrono::seconds(1);
    }
  }
}

// CPU seconds used so far by the servers (none without --server-pid, or when
// one of them is gone) and by this process.
struct CpuSample {
  std::optional<double> servers;
  double self = 0;
};

CpuSample sample_cpu(const std::vector<int>& server_pids) {
  return CpuSample{.servers = server_pids.empty() ? std::nullopt : servers_cpu_seconds(server_pids),
                   .self = self_cpu_seconds()};
}

// A finished run: what the loops saw, how long they took, and the CPU spent.
struct Measurement {
  Stats all;  // merged over the threads
  Clock::duration elapsed{};
  std::optional<double> server_cpu;  // seconds
  double client_cpu = 0;             // seconds
};

Measurement run_loops(const Settings& settings, SSL_CTX* ctx, const std::vector<int>& server_pids, std::ostream& err) {
  Run run(settings, ctx);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < run.threads(); ++t) threads.emplace_back([&run, t] { client_thread(run, t); });

  const bool tty = isatty(STDERR_FILENO) == 1;
  if (tty && run.needs_warm_up())
    err << "warming up: one full handshake per loop and name to get sessions ...\r" << std::flush;
  run.sync.arrive_and_wait();
  const CpuSample cpu_start = sample_cpu(server_pids);
  const auto started = Clock::now();
  run.shared.deadline = started + settings.duration;
  run.sync.arrive_and_wait();

  wait_for_clients(run, started, tty, err);
  // The server finishes its side of the last connections (close, logs)
  // just after the client is done with them; that work is theirs too.
  if (!server_pids.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const CpuSample cpu_end = sample_cpu(server_pids);
  for (auto& th : threads) th.join();
  // The run ends when the last loop finished, not when this thread noticed.
  const auto ended = *std::max_element(run.thread_ended.begin(), run.thread_ended.end());
  if (!server_pids.empty() && !cpu_end.servers)
    err << "bench handshake: a --server-pid process exited during the run; no server CPU figure\n";
  if (tty) err << "\r" << std::string(72, ' ') << "\r" << std::flush;

  Measurement measured{.elapsed = ended - started, .client_cpu = cpu_end.self - cpu_start.self};
  for (const auto& s : run.stats) measured.all.merge(s);
  if (cpu_start.servers && cpu_end.servers) measured.server_cpu = *cpu_end.servers - *cpu_start.servers;
  return measured;
}

// ---- results ----------------------------------------------------------------

// What the report says, worked out once for the table and the JSON.
struct Results {
  Stats all;  // latencies sorted
  std::uint64_t total = 0;
  std::uint64_t errors_total = 0;
  double seconds = 0;
  double rate = 0;  // handshakes per second
  double p50 = 0;   // latencies in ms
  double p90 = 0;
  double p99 = 0;
  double mean = 0;
  std::optional<double> server_cpu;   // seconds
  double client_cpu = 0;              // seconds
  std::vector<std::string> problems;  // what went against the request: each makes the exit non-zero

  double per_handshake_us(double cpu) const { return total ? cpu * 1e6 / static_cast<double>(total) : 0.0; }
};

std::string refused_resumption(const std::string& target, const Stats& all) {
  std::string p = "asked for resumed handshakes (--resume always) but ";
  p += std::to_string(all.full);
  p += " of ";
  p += std::to_string(all.full + all.resumed);
  p += " were FULL handshakes: ";
  p += target;
  p += all.warmup_without_session > 0 ? " gave no session (no ticket, no session ID) to "
                                      : " refused the sessions it issued on ";
  if (all.warmup_without_session > 0) {
    p += std::to_string(all.warmup_without_session);
    p += " of ";
    p += std::to_string(all.warmup_total);
    p += " warm-up handshakes";
  } else {
    p += "later connections";
  }
  p += "; check that the server enables session tickets or a session cache";
  return p;
}

std::optional<std::string> wrong_key_type(const HandshakeOptions& options, Sig sig, const Stats& all) {
  const int want = sig == Sig::ecdsa ? EVP_PKEY_EC : EVP_PKEY_RSA;
  std::uint64_t other = 0;
  for (const auto& [k, v] : all.keys)
    if (k.id != want) other += v;
  if (other == 0) return std::nullopt;
  std::string p = "asked for ";
  p += sig == Sig::ecdsa ? "ECDSA" : "RSA";
  p += " certificates (--sig ";
  p += options.sig;
  p += ") but ";
  p += std::to_string(other);
  p += " connections got another key type";
  return p;
}

std::vector<std::string> problems_of(const HandshakeOptions& options, const Settings& settings, const Stats& all) {
  std::vector<std::string> problems;
  if (settings.resume == Resume::always && all.full > 0) problems.push_back(refused_resumption(options.target, all));
  if (settings.resume == Resume::never && all.resumed > 0) {
    std::string p = "asked for full handshakes but ";
    p += std::to_string(all.resumed);
    p += " were resumed";
    problems.push_back(std::move(p));
  }
  if (settings.sig != Sig::any) {
    if (auto p = wrong_key_type(options, settings.sig, all)) problems.push_back(std::move(*p));
  }
  return problems;
}

Results results_of(Measurement measured, const HandshakeOptions& options, const Settings& settings) {
  Results r{.all = std::move(measured.all), .server_cpu = measured.server_cpu, .client_cpu = measured.client_cpu};
  std::sort(r.all.latency_us.begin(), r.all.latency_us.end());
  r.total = r.all.full + r.all.resumed;
  for (const auto& [k, v] : r.all.errors) r.errors_total += v;
  r.seconds = std::chrono::duration<double>(measured.elapsed).count();
  r.rate = r.seconds > 0 ? static_cast<double>(r.total) / r.seconds : 0;
  r.p50 = percentile(r.all.latency_us, 50);
  r.p90 = percentile(r.all.latency_us, 90);
  r.p99 = percentile(r.all.latency_us, 99);
  for (auto v : r.all.latency_us) r.mean += v;
  r.mean = r.all.latency_us.empty() ? 0 : r.mean / static_cast<double>(r.all.latency_us.size()) / 1000.0;
  r.problems = problems_of(options, settings, r.all);
  return r;
}

// ---- reports ----------------------------------------------------------------

// "NAME COUNT, NAME COUNT" over a tally, in key order.
template <class Counts, class Name>
std::string tally_text(const Counts& counts, Name name) {
  std::string text;
  for (const auto& [key, n] : counts) {
    if (!text.empty()) text += ", ";
    text += name(key);
    text += " ";
    text += std::to_string(n);
  }
  return text;
}

void print_table(std::ostream& out, const HandshakeOptions& options, const Settings& settings, const Results& r) {
  out << "gatehouse bench handshake " << options.target << ": " << settings.concurrency << " connections, "
      << settings.threads << " thread(s), TLS " << (options.tls.empty() ? "1.2/1.3" : options.tls) << ", resume "
      << options.resume << ", sig " << options.sig << "\n";
  row(out, "handshakes", std::to_string(r.total));
  row(out, "full / resumed", std::to_string(r.all.full) + " / " + std::to_string(r.all.resumed));
  row(out, "duration", fixed(r.seconds, 3) + " s");
  row(out, "handshakes/s", fixed(r.rate, 1));
  {
    std::ostringstream latency;
    latency << std::fixed << std::setprecision(3) << "p50 " << r.p50 << "  p90 " << r.p90 << "  p99 " << r.p99
            << "  mean " << r.mean;
    row(out, "latency ms", latency.str());
  }
  const std::string version_text = tally_text(r.all.versions, version_name);
  const std::string key_text = tally_text(r.all.keys, [](const KeyType& k) { return describe(k); });
  row(out, "tls versions", version_text.empty() ? "-" : version_text);
  row(out, "certificates", key_text.empty() ? "-" : key_text);
  if (r.server_cpu) {
    std::string pids;
    for (int pid : options.server_pids) {
      if (!pids.empty()) pids += ",";
      pids += std::to_string(pid);
    }
    row(out, "server cpu",
        fixed(*r.server_cpu, 3) + " s (pid " + pids + ") = " + fixed(r.per_handshake_us(*r.server_cpu), 1) +
            " us/handshake");
  }
  row(out, "client cpu",
      fixed(r.client_cpu, 3) + " s = " + fixed(r.per_handshake_us(r.client_cpu), 1) + " us/handshake");
  row(out, "errors", std::to_string(r.errors_total));
  for (const auto& [reason, n] : r.all.errors) out << "    " << std::setw(8) << n << "  " << reason << "\n";
  if (!r.all.warmup_errors.empty()) {
    out << "  warm-up errors\n";
    for (const auto& [reason, n] : r.all.warmup_errors) out << "    " << std::setw(8) << n << "  " << reason << "\n";
  }
  out << std::flush;
}

// Says on `err` why the run failed, if it did; the exit status.
int report_failures(std::ostream& err, const HandshakeOptions& options, const Results& r) {
  int status = 0;
  for (const auto& p : r.problems) {
    err << "\n*** gatehouse bench handshake: FAILED: " << p << " ***\n";
    status = 3;
  }
  if (status == 0 && r.total == 0) {
    err << "gatehouse bench handshake: no handshake with " << options.target << " succeeded";
    if (!r.all.errors.empty()) err << " (first error: " << r.all.errors.begin()->first << ")";
    err << "\n";
    status = 1;
  }
  return status;
}

template <class Counts, class Name>
json::object tally_json(const Counts& counts, Name name) {
  json::object j;
  for (const auto& [key, n] : counts) j[name(key)] = n;
  return j;
}

json::object json_report(const HandshakeOptions& options, const Settings& settings, const Results& r, bool ok) {
  json::object j;
  j["target"] = options.target;
  json::array names;
  for (const auto& n : settings.names) names.emplace_back(n);
  j["sni"] = std::move(names);
  j["concurrency"] = settings.concurrency;
  j["threads"] = settings.threads;
  j["resume"] = options.resume;
  j["tls"] = options.tls.empty() ? "any" : options.tls;
  j["sig"] = options.sig;
  if (settings.count > 0) j["count"] = settings.count;
  j["duration_seconds"] = r.seconds;
  j["total"] = r.total;
  j["full"] = r.all.full;
  j["resumed"] = r.all.resumed;
  j["handshakes_per_second"] = r.rate;
  j["latency_ms"] = {{"p50", r.p50},
                     {"p90", r.p90},
                     {"p99", r.p99},
                     {"mean", r.mean},
                     {"min", r.all.latency_us.empty() ? 0.0 : r.all.latency_us.front() / 1000.0},
                     {"max", r.all.latency_us.empty() ? 0.0 : r.all.latency_us.back() / 1000.0}};
  j["errors"] = tally_json(r.all.errors, [](const std::string& reason) { return reason; });
  j["errors_total"] = r.errors_total;
  j["tls_versions"] = tally_json(r.all.versions, version_name);
  j["certificate_key_types"] = tally_json(r.all.keys, [](const KeyType& k) { return describe(k); });
  if (r.server_cpu) {
    json::array pids;
    for (int pid : options.server_pids) pids.emplace_back(pid);
    j["server_pids"] = std::move(pids);
    j["server_cpu_seconds"] = *r.server_cpu;
    j["server_cpu_us_per_handshake"] = r.per_handshake_us(*r.server_cpu);
  } else {
    j["server_cpu_us_per_handshake"] = nullptr;
  }
  j["client_cpu_seconds"] = r.client_cpu;
  j["client_cpu_us_per_handshake"] = r.per_handshake_us(r.client_cpu);
  if (settings.resume == Resume::always) {
    json::object w{{"handshakes", r.all.warmup_total}, {"without_session", r.all.warmup_without_session}};
    w["errors"] = tally_json(r.all.warmup_errors, [](const std::string& reason) { return reason; });
    j["warmup"] = std::move(w);
  }
  json::array problem_list;
  for (const auto& p : r.problems) problem_list.emplace_back(p);
  j["problems"] = std::move(problem_list);
  j["ok"] = ok;
  return j;
}

bool write_json(const std::string& file_name, const json::object& j, std::ostream& err) {
  std::ofstream file(file_name);
  file << json::serialize(j) << "\n";
  if (!file) {
    err << "bench handshake: cannot write --json " << file_name << "\n";
    return false;
  }
  return true;
}

}  // namespace

int run_handshake_bench(const HandshakeOptions& options, std::ostream& out, std::ostream& err) {
  const std::optional<Settings> settings = read_settings(options, err);
  if (!settings) return 1;
  std::string ctx_error;
  auto ctx = make_client_context(options, *settings, ctx_error);
  if (!ctx) {
    err << ctx_error << "\n";
    return 1;
  }
  prepare_process();

  const Results results = results_of(run_loops(*settings, ctx.get(), options.server_pids, err), options, *settings);
  print_table(out, options, *settings, results);
  int status = report_failures(err, options, results);
  if (!options.json_file.empty() &&
      !write_json(options.json_file, json_report(options, *settings, results, status == 0), err) && status == 0)
    status = 1;
  return status;
}

}  // namespace gatehouse::bench
