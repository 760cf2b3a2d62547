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
#include "proxy/runtime/server.h"
#include "proxy/tls/tls_stream.h"

namespace gatehouse::proxy {

using Clock = std::chrono::steady_clock;

// Ends when the connection has been idle for `idle` since `last_activity`, or
// when a drain force-closes it. Cancelled (by the || it runs in) otherwise.
asio::awaitable<void> idle_watchdog(asio::steady_timer& timer, const Clock::time_point& last_activity,
                                    Clock::duration idle, const ConnectionHandle& handle);

// Runs `op` against a deadline; nullopt on timeout (op is then cancelled).
template <typename T>
asio::awaitable<std::optional<T>> with_timeout(asio::awaitable<T> op, Clock::duration timeout) {
  using namespace asio::experimental::awaitable_operators;
  asio::steady_timer timer(co_await asio::this_coro::executor, timeout);
  auto result = co_await (std::move(op) || timer.async_wait(asio::as_tuple(asio::use_awaitable)));
  if (result.index() == 0) co_return std::optional<T>(std::move(std::get<0>(result)));
  co_return std::nullopt;
}

// A connected, verified backend.
struct BackendConnection {
  std::optional<TlsStream> stream;
  std::size_t server_index = 0;  // in the pool
  const ServerRuntime* server = nullptr;
  std::unique_ptr<BackendCheck> check;  // must outlive stream's SSL
};

struct ConnectTarget {
  const PoolRuntime* pool = nullptr;
  std::uint64_t hash_key = 0;
  bool affinity = false;  // pick by hash_key (consistent hashing) whatever the pool's balance
  Clock::duration timeout = std::chrono::seconds(10);
  conf::ProxyProtocol proxy_protocol = conf::ProxyProtocol::none;
  tcp::endpoint client;  // for the PROXY header
  tcp::endpoint local;
};

// Picks a server of the pool, connects, sends the PROXY header if asked, and
// completes TLS per the pool's `tls`. A server that fails (refused, timed
// out, wrong certificate) is logged with its name and what it presented,
// and one other server is tried. nullopt when none could be reached.
asio::awaitable<std::optional<BackendConnection>> connect_backend(const Generation& generation, std::size_t worker,
                                                                  const ConnectTarget& target);
// Releases the server's active count taken by connect_backend.
void release_backend(const Generation& generation, std::size_t worker, const BackendConnection& backend,
                     const PoolRuntime* pool);

// 16 KiB I/O buffers recycled per thread, so idle connections hold none.
class IoBuffer {
 public:
  static constexpr std::size_t size = 16 * 1024;
  IoBuffer();
  ~IoBuffer();
  IoBuffer(const IoBuffer&) = delete;
  IoBuffer& operator=(const IoBuffer&) = delete;
  char* data() { return data_; }

 private:
  char* data_;
};

std::string to_string(const tcp::endpoint& endpoint);

}  // namespace gatehouse::proxy
