#pragma once
// Pieces every connection uses, whatever its mode: the idle watchdog, the
// backend connect (with one retry elsewhere), and pooled I/O buffers.

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "proxy/runtime/generation.h"
#include "proxy/runtime/worker.h"
#include "proxy/tls/pooled_buffer.h"
#include "proxy/tls/tls_stream.h"

namespace gatehouse::proxy {

using Clock = std::chrono::steady_clock;

// How long a connection between requests must have been quiet before a
// drain closes it. A client that is still sending gets its next request
// answered (with Connection: close) instead of losing it to the close.
inline constexpr auto kDrainQuiet = std::chrono::milliseconds(1000);

// What an IdleGuard does when its deadline passes: interrupt the guarded
// operations (cancel or abort their streams) so that they return.
class IdleExpiry {
 public:
  // `drained`: a drain force-closed the connection (or, between requests,
  // began), rather than the idle time running out.
  virtual void expire(bool drained) = 0;

 protected:
  ~IdleExpiry() = default;
};

// What a soft drain (a reload, or the start of a stop) does to a guarded
// phase. A hard drain (force_close, at drain_timeout) always expires it.
enum class OnDrain {
  finish,      // nothing: the phase (a stream, an exchange, a bound request) may finish
  when_quiet,  // between requests: expire once quiet for kDrainQuiet
  notify,      // expire(false) at once, one time, so the owner starts its own drain (HTTP/2 GOAWAY)
};

// The one idle mechanism of every connection (l4 streams, HTTP/1.1
// connections and exchanges, HTTP/2 connections and streams): one deadline,
// watched by one coroutine (watch(), run beside the connection's work for
// its lifetime) instead of a timer raced against every read. The guarded
// code arms it with the activity stamp to watch and what to do on expiry,
// and moving from one phase to the next costs no timer operation unless the
// deadline comes earlier. The guard of a connection uses the timer its
// ConnectionHandle names, so a drain's poke reaches it.
class IdleGuard {
 public:
  IdleGuard(asio::steady_timer& timer, const ConnectionHandle& handle) : timer_(timer), handle_(handle) {}

  // While armed, `expiry` runs once when *last_activity is `idle` old, at a
  // hard drain, or at a soft one as `on_drain` says. expire() may arm again.
  void arm(const Clock::time_point* last_activity, Clock::duration idle, OnDrain on_drain, IdleExpiry* expiry);
  void disarm() { expiry_ = nullptr; }
  asio::awaitable<void> watch();  // until cancelled, or stop()
  void stop() {
    stopped_ = true;
    timer_.cancel();
  }

 private:
  asio::steady_timer& timer_;
  const ConnectionHandle& handle_;
  const Clock::time_point* last_ = nullptr;
  Clock::duration idle_{};
  OnDrain on_drain_ = OnDrain::finish;
  bool drain_told_ = false;
  IdleExpiry* expiry_ = nullptr;
  bool stopped_ = false;
};

// Runs `first` and `second` to their ends with `guard`'s watcher beside them
// (what `(first && second) || guard.watch()` does) for less memory per idle
// connection: one parallel group, and the watcher in the calling coroutine
// instead of a third. Stops `guard` at the end. An exception from either is
// rethrown once both have ended.
asio::awaitable<void> both_with_guard(asio::awaitable<void> first, asio::awaitable<void> second, IdleGuard& guard);

// Runs `op` against a deadline; nullopt when it passes first (op is then
// cancelled). A deadline already past gives `op` no time.
template <typename T>
asio::awaitable<std::optional<T>> with_deadline(asio::awaitable<T> op, Clock::time_point deadline) {
  using namespace asio::experimental::awaitable_operators;
  asio::steady_timer timer(co_await asio::this_coro::executor, deadline);
  auto result = co_await (std::move(op) || timer.async_wait(asio::as_tuple(asio::use_awaitable)));
  if (result.index() == 0) co_return std::optional<T>(std::move(std::get<0>(result)));
  co_return std::nullopt;
}

// The same with a deadline `timeout` from now (not a coroutine of its own).
template <typename T>
asio::awaitable<std::optional<T>> with_timeout(asio::awaitable<T> op, Clock::duration timeout) {
  return with_deadline(std::move(op), Clock::now() + timeout);
}

// Completes a client's TLS handshake within the listener's
// handshake_timeout and counts it (full/resumed and SNI match in the
// worker's `counts`, failures by reason in metrics()); a failure is logged
// with the client and SNI. false when it failed.
asio::awaitable<bool> accept_handshake(WorkerMetrics& counts, TlsStream& front, const HandshakeInfo& info,
                                       const conf::Listener& config, const std::string& client);

// A protocol's plaintext opening with a server, for starttls listeners:
// before the pool's TLS when the pool says starttls (greeting, EHLO,
// STARTTLS), else after it (the greeting, which the client must not see
// twice). Each returns "" when done, else what went wrong; the connect then
// counts it against the server and tries another.
class BackendOpening {
 public:
  virtual asio::awaitable<std::string> before_tls(TlsStream& plain) const = 0;
  virtual asio::awaitable<std::string> after_tls(TlsStream& stream) const = 0;

 protected:
  ~BackendOpening() = default;
};

struct ConnectTarget {
  const PoolRuntime* pool = nullptr;
  std::uint64_t hash_key = 0;
  bool affinity = false;  // pick by hash_key (consistent hashing) whatever the pool's balance
  conf::ProxyProtocol proxy_protocol = conf::ProxyProtocol::none;
  tcp::endpoint client;  // for the PROXY header
  tcp::endpoint local;
  // The client's TLS, for the PROXY v2 SSL TLV (null: the listener does not
  // terminate TLS); tls_version as SSL_get_version says it ("TLSv1.3").
  const HandshakeInfo* tls_info = nullptr;
  const char* tls_version = nullptr;
  bool reuse = false;  // l7: take an idle keep-alive connection to the picked server when one is alive
  // l7 cookie affinity: this server of the pool first, while it is available.
  std::optional<std::size_t> preferred;
  const BackendOpening* opening = nullptr;  // starttls listeners
};

// The server of `pool` (the target's pool or its fallback) to try next:
// the preferred one (cookie affinity) while it is available and untried,
// else whom the pool's selector picks. The worker's view of availability
// is refreshed from the members first. nullopt when no server is left.
std::optional<std::size_t> pick_server(const ConnectTarget& target, const PoolRuntime& pool, WorkerPool& wp,
                                       const balancer::Tried& tried);

// Picks a server of the pool, connects, sends the PROXY header if asked, and
// completes TLS per the pool's `tls`. A server that fails (refused, timed
// out, wrong certificate) is logged with its name and what it presented,
// and one other server is tried. nullopt when none could be reached.
asio::awaitable<std::optional<BackendConnection>> connect_backend(const Generation& generation, std::size_t worker,
                                                                  const ConnectTarget& target);
// Releases the server's active count taken by connect_backend.
void release_backend(const Generation& generation, std::size_t worker, const BackendConnection& backend,
                     const PoolRuntime* pool);
// Releases it and keeps the connection for the next request (l7 keep-alive),
// unless `generation` is no longer the worker's current one.
void keep_backend(const Generation& generation, std::size_t worker, BackendConnection backend, const PoolRuntime* pool,
                  bool current);

// A 16 KiB I/O buffer for one read and its write, from the thread's free list
// of record-sized buffers (shared with TLS read-ahead): idle connections hold none.
class IoBuffer {
 public:
  static constexpr std::size_t size = 16 * 1024;
  char* data() { return buffer_.get(); }

 private:
  PooledBuffer buffer_;
};
static_assert(IoBuffer::size <= PooledBuffer::size);

std::string to_string(const tcp::endpoint& endpoint);

}  // namespace gatehouse::proxy
