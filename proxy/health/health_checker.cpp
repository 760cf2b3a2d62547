#include "proxy/health/health_checker.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <vector>

#include "proxy/http/http_message.h"
#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"

namespace gatehouse::proxy {

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

}  // namespace

struct HealthChecker::State {
  std::shared_ptr<Generation> generation;
  bool stopped = false;
  std::vector<std::unique_ptr<asio::steady_timer>> timers;
};

asio::awaitable<std::string> probe_server(const PoolRuntime& pool, const ServerRuntime& server,
                                          std::string* presented) {
  const conf::Health& health = pool.config->health;
  auto executor = co_await asio::this_coro::executor;
  tcp::socket socket(executor);
  auto [connect_ec, endpoint] = co_await asio::async_connect(socket, server.endpoints, use_tuple);
  if (connect_ec) co_return "connect: " + connect_ec.message();
  if (health.kind == conf::HealthKind::tcp) co_return std::string();

  BackendCheck check;
  check.server = server.config;
  check.pin = server.pin ? &*server.pin : nullptr;
  TlsStream stream(std::move(socket), pool.tls->new_connection(&check));
  const error_code handshake_ec = co_await stream.handshake();
  if (presented != nullptr) *presented = check.presented_thumbprint;
  if (auto ec = handshake_ec) {
    if (!check.failure.empty()) co_return "TLS: " + check.failure + " (presented " + check.presented_thumbprint + ")";
    co_return "TLS: " + ec.message();
  }
  if (health.kind == conf::HealthKind::tls) co_return std::string();

  const std::string request = "GET " + health.path + " HTTP/1.1\r\nHost: " + server.config->server_name +
                              "\r\nUser-Agent: Gatehouse-HealthCheck\r\nAccept: */*\r\nConnection: close\r\n\r\n";
  if (auto ec = co_await stream.write_all(request.data(), request.size())) co_return "HTTP: " + ec.message();
  std::optional<http::ResponseParser> parser;
  parser.emplace();
  std::string in;
  char buffer[4096];
  for (;;) {
    auto [ec, n] = co_await stream.read_some(buffer, sizeof buffer);
    if (ec) co_return "HTTP: no response (" + ec.message() + ")";
    in.append(buffer, n);
    for (;;) {
      http::error_code perr;
      const std::size_t used = parser->feed(in, perr);
      in.erase(0, used);
      if (perr) co_return "HTTP: malformed response: " + parser->violation();
      if (!parser->is_header_done()) break;
      const int status = parser->head().status;
      if (status / 100 == 1) {  // interim: the final answer follows
        parser.emplace();
        continue;
      }
      if (status == health.expect) co_return std::string();
      co_return "HTTP " + std::to_string(status) + " from " + health.path + ", expected " +
          std::to_string(health.expect);
    }
  }
}

namespace {

asio::awaitable<void> probe_loop(std::shared_ptr<HealthChecker::State> state, asio::steady_timer& timer,
                                 const PoolRuntime& pool, std::size_t index) {
  const conf::Health& health = pool.config->health;
  const ServerRuntime& server = *pool.servers[index];
  PoolMember& member = *pool.members[index];
  // Spread the first probes a little so a large config does not probe in a burst.
  timer.expires_after(std::chrono::milliseconds(20 * static_cast<int>(index % 16)));
  co_await timer.async_wait(use_tuple);
  while (!state->stopped) {
    std::string presented;
    auto outcome = co_await with_timeout(probe_server(pool, server, &presented), health.timeout);
    if (state->stopped) break;
    const std::string failure =
        outcome ? *outcome : "timed out after " + std::to_string(health.timeout.count()) + " ms";
    bool changed = false;
    bool up = false;
    {
      std::lock_guard lock(member.mutex);
      changed = member.health.record(failure.empty());
      up = member.health.up();
      member.last_check = log::now_rfc3339() + (failure.empty() ? " ok" : " " + failure);
      if (!presented.empty()) member.presented_thumbprint = presented;
    }
    if (changed) {
      member.healthy = up;
      boost::json::object fields{{"pool", pool.config->name}, {"server", server.config->name}};
      if (up) {
        fields["after"] = std::to_string(health.rise) + " good probes";
        log::info("server_up", std::move(fields));
      } else {
        fields["reason"] = failure;
        log::warning("server_down", std::move(fields));
      }
    }
    timer.expires_after(health.interval);
    co_await timer.async_wait(use_tuple);
  }
}

}  // namespace

HealthChecker::HealthChecker(asio::io_context& io, std::shared_ptr<Generation> generation)
    : state_(std::make_shared<State>()) {
  state_->generation = std::move(generation);
  for (const auto& pool : state_->generation->pools()) {
    if (pool.config->health.kind == conf::HealthKind::none) continue;
    for (std::size_t i = 0; i < pool.servers.size(); ++i) {
      state_->timers.push_back(std::make_unique<asio::steady_timer>(io));
      asio::co_spawn(io, probe_loop(state_, *state_->timers.back(), pool, i), asio::detached);
    }
  }
}

HealthChecker::~HealthChecker() { stop(); }

void HealthChecker::stop() {
  state_->stopped = true;
  for (auto& t : state_->timers) t->cancel();
}

}  // namespace gatehouse::proxy
