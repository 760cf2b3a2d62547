#include "proxy/app/server.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <optional>
#include <set>
#include <stdexcept>
#include <system_error>
#include <utility>

#include "conf/assert.h"
#include "proxy/admin/admin.h"
#include "proxy/health/health_checker.h"
#include "proxy/l4/l4_session.h"
#include "proxy/l7/l7_session.h"
#include "proxy/l7/redirect.h"
#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"
#include "proxy/runtime/metrics.h"
#include "proxy/runtime/ocsp_fetcher.h"
#include "proxy/tls/ticket_keys.h"

namespace gatehouse::proxy {

namespace {

using reuse_port = asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

std::size_t configured_workers(const conf::Config& config) {
  if (config.server.workers > 0) return static_cast<std::size_t>(config.server.workers);
  return std::max(1u, std::thread::hardware_concurrency());
}

std::shared_ptr<TicketKeys> make_ticket_keys(const conf::Config& config) {
  if (config.server.ticket_keys.empty()) return TicketKeys::random_rotating();
  return TicketKeys::from_file(config.server.ticket_keys);
}

tcp::endpoint resolve_bind(const conf::Listener& listener) {
  error_code ec;
  auto address = asio::ip::make_address(listener.bind.host, ec);
  if (ec) {
    asio::io_context io;
    tcp::resolver resolver(io);
    auto results = resolver.resolve(listener.bind.host, "0", ec);
    if (ec || results.empty())
      throw std::runtime_error("listener \"" + listener.name + "\": cannot resolve bind address \"" +
                               listener.bind.host + "\"");
    address = results.begin()->endpoint().address();
  }
  return {address, listener.bind.port};
}

// The listener's kind of session, not started yet. A plain function, not a
// coroutine: serve_connection's frame then holds one awaitable instead of
// one per mode for the connection's whole life.
asio::awaitable<void> session(Worker& worker, std::shared_ptr<Generation> generation, const ListenerRuntime& listener,
                              tcp::socket socket, tcp::endpoint client) {
  switch (listener.config->mode) {
    case conf::ListenerMode::l4: return serve_l4(worker, std::move(generation), listener, std::move(socket), client);
    case conf::ListenerMode::l7: return serve_l7(worker, std::move(generation), listener, std::move(socket), client);
    case conf::ListenerMode::tcp: return serve_tcp(worker, std::move(generation), listener, std::move(socket), client);
    case conf::ListenerMode::passthrough:
      return serve_passthrough(worker, std::move(generation), listener, std::move(socket), client);
    case conf::ListenerMode::redirect:
      return l7::serve_redirect(worker, std::move(generation), listener, std::move(socket), client);
  }
  GH_ASSERT(false);
  return serve_tcp(worker, std::move(generation), listener, std::move(socket), client);
}

asio::awaitable<void> serve_connection(Worker& worker, std::shared_ptr<Generation> generation,
                                       const ListenerRuntime* listener, tcp::socket socket, tcp::endpoint client) {
  struct Count {
    explicit Count(std::shared_ptr<std::atomic<std::uint64_t>> open) : open(std::move(open)) {
      this->open->fetch_add(1, std::memory_order_relaxed);
    }
    ~Count() { open->fetch_sub(1, std::memory_order_relaxed); }
    std::shared_ptr<std::atomic<std::uint64_t>> open;
  } count(listener->open);
  worker.metrics().connection_accepted();
  co_await session(worker, std::move(generation), *listener, std::move(socket), client);
}

// An event that may repeat many times a second (every refused accept): logged
// at most once a second, with how many were not.
class OncePerSecond {
 public:
  template <typename Log>
  void operator()(Log&& log) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::seconds(1) && logged_) {
      ++suppressed_;
      return;
    }
    log(suppressed_);
    logged_ = true;
    last_ = now;
    suppressed_ = 0;
  }

 private:
  std::chrono::steady_clock::time_point last_{};
  bool logged_ = false;
  std::uint64_t suppressed_ = 0;
};

// A socket accept4() made non-blocking, handed to Asio as one: Asio would
// otherwise make it so itself (one more system call per connection) at its
// first wait. Only the socket's state flags are touched.
class AcceptedSocket : public tcp::socket {
 public:
  AcceptedSocket(const asio::any_io_executor& executor, const tcp& protocol, int fd, error_code& ec)
      : tcp::socket(executor) {
    assign(protocol, fd, ec);
    if (!ec)
      impl_.get_implementation().state_ |=
          asio::detail::socket_ops::user_set_non_blocking | asio::detail::socket_ops::internal_non_blocking;
  }
};

// One accept4(): the client's socket (non-blocking, TCP_NODELAY inherited
// from the listening socket) and address, without the getpeername(),
// ioctl() and setsockopt() an Asio accept is followed by. errno set when
// there is none.
std::optional<std::pair<tcp::socket, tcp::endpoint>> accept_one(tcp::acceptor& acceptor,
                                                                const asio::any_io_executor& executor) {
  tcp::endpoint peer;
  socklen_t length = static_cast<socklen_t>(peer.capacity());
  const int fd = ::accept4(acceptor.native_handle(), peer.data(), &length, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) return std::nullopt;
  peer.resize(length);
  error_code ec;
  AcceptedSocket socket(executor, peer.protocol(), fd, ec);
  if (ec) {
    ::close(fd);
    errno = ec.value();
    return std::nullopt;
  }
  return std::pair<tcp::socket, tcp::endpoint>(std::move(socket), peer);
}

// Whether an accepted connection may be served; counted and logged (once a
// second) when a connection limit refuses it.
bool admit(const Server& server, Worker& worker, const std::string& name, const ListenerRuntime& listener,
           const Generation& generation, OncePerSecond& refused) {
  const std::uint64_t server_limit = generation.config().server.max_connections;
  const std::uint64_t listener_limit = listener.config->max_connections;
  const bool over_server = server.active_connections() >= server_limit;
  if (!over_server && (listener_limit == 0 || listener.open->load(std::memory_order_relaxed) < listener_limit))
    return true;
  // Closed before a byte is read: the client sees a clean end.
  const char* reason = over_server ? "max_connections" : "listener_max_connections";
  worker.metrics().refused(listener.metric_id,
                           over_server ? Refusal::max_connections : Refusal::listener_max_connections);
  refused([&](std::uint64_t suppressed) {
    log::warning("max_connections", {{"listener", name},
                                     {"reason", reason},
                                     {"limit", over_server ? server_limit : listener_limit},
                                     {"suppressed", suppressed}});
  });
  return false;
}

asio::awaitable<void> accept_loop(const Server& server, Worker& worker, std::string name, tcp::acceptor& acceptor) {
  auto executor = co_await asio::this_coro::executor;
  OncePerSecond accept_failed, refused;
  int accepted_in_a_row = 0;
  for (;;) {
    if (!acceptor.is_open()) co_return;
    auto accepted = accept_one(acceptor, executor);
    if (!accepted) {
      const int error = errno;
      if (error == EAGAIN || error == EWOULDBLOCK) {
        accepted_in_a_row = 0;
        auto [ec] = co_await acceptor.async_wait(tcp::acceptor::wait_read, use_tuple);
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
        continue;
      }
      if (error == EINTR) continue;
      accept_failed([&](std::uint64_t suppressed) {
        log::error("accept_failed", {{"listener", name},
                                     {"error", std::generic_category().message(error)},
                                     {"worker", worker.index()},
                                     {"suppressed", suppressed}});
      });
      if (error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM) {
        // Out of descriptors or memory: the connection waits in the backlog
        // until some are freed. Back off instead of spinning on the error.
        asio::steady_timer pause(executor, std::chrono::milliseconds(100));
        co_await pause.async_wait(use_tuple);
      }
      continue;  // (a connection that failed before accept, ECONNABORTED and the like: the next)
    }
    // A burst is accepted in turns with the connections already being served.
    if (++accepted_in_a_row % 16 == 0) co_await asio::post(executor, asio::use_awaitable);
    const auto& generation = worker.generation();
    const ListenerRuntime* listener = generation ? generation->listener(name) : nullptr;
    if (listener == nullptr) continue;  // closes the socket
    if (!admit(server, worker, name, *listener, *generation, refused)) continue;
    asio::co_spawn(executor,
                   serve_connection(worker, generation, listener, std::move(accepted->first), accepted->second),
                   asio::detached);
  }
}

}  // namespace

Server::Server(conf::Config config) : config_file_(config.file) {
  ticket_keys_ = make_ticket_keys(config);
  log::set_access_log(config.server.access_log);
  const std::size_t workers = configured_workers(config);
  for (std::size_t i = 0; i < workers; ++i) workers_.push_back(std::make_unique<Worker>(i));
  current_ = Generation::build(std::move(config), workers, ticket_keys_, next_generation_++);
}

Server::~Server() {
  for (auto& w : workers_) {
    w->io_.stop();
    if (w->thread_.joinable()) w->thread_.join();
    // Connections still held by the stopped io_context end with it, after
    // the control thread's io_context: nothing may post to that then.
    w->on_empty(nullptr);
    // Kept-alive backend sockets belong to this worker's io_context, which
    // is destroyed before the generation that holds them.
    if (w->generation_) w->generation_->close_idle(w->index_);
  }
  if (current_)
    for (auto& w : workers_) current_->close_idle(w->index_);
}

tcp::endpoint Server::admin_endpoint() const { return admin_ ? admin_->endpoint() : tcp::endpoint{}; }

MetricTotals Server::metric_totals() const {
  std::vector<const WorkerMetrics*> each;
  for (const auto& w : workers_) each.push_back(&w->metrics());
  return sum_metrics(each, metrics().ids());
}

tcp::endpoint Server::bound(const std::string& listener) const {
  auto it = bound_.find(listener);
  return it == bound_.end() ? tcp::endpoint{} : it->second.endpoint;
}

void Server::open_listeners(const Generation& generation) {
  // Bind everything first, so a bind error leaves the running set untouched.
  std::map<std::string, std::vector<std::unique_ptr<tcp::acceptor>>> opened;
  std::map<std::string, Bound> new_bound;
  for (const auto& l : generation.listeners()) {
    const conf::Listener& config = *l.config;
    auto existing = bound_.find(config.name);
    if (existing != bound_.end() && existing->second.configured == config.bind) {
      new_bound[config.name] = existing->second;
      continue;
    }
    tcp::endpoint endpoint = resolve_bind(config);
    std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
    for (auto& worker : workers_) {
      auto acceptor = std::make_unique<tcp::acceptor>(worker->io_);
      error_code ec;
      acceptor->open(endpoint.protocol(), ec);
      if (!ec) acceptor->set_option(tcp::acceptor::reuse_address(true), ec);
      if (!ec) acceptor->set_option(reuse_port(true), ec);
      if (!ec && endpoint.address().is_v6()) acceptor->set_option(asio::ip::v6_only(true), ec);
      if (!ec) acceptor->bind(endpoint, ec);
      if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
      // Accepted sockets inherit TCP_NODELAY; accept_loop() calls accept4()
      // itself, which must not block.
      if (!ec) acceptor->set_option(tcp::no_delay(true), ec);
      if (!ec) acceptor->non_blocking(true, ec);
      if (ec)
        throw std::runtime_error(generation.config().file.string() + ":" + std::to_string(config.line) +
                                 ": listener \"" + config.name + "\".bind: cannot listen on " + to_string(endpoint) +
                                 ": " + ec.message());
      // Port 0: the first worker's socket picks the port, the others share it.
      if (endpoint.port() == 0) endpoint = acceptor->local_endpoint();
      acceptors.push_back(std::move(acceptor));
    }
    new_bound[config.name] = Bound{config.bind, endpoint};
    opened[config.name] = std::move(acceptors);
  }

  std::set<std::string> removed;
  for (const auto& [name, b] : bound_)
    if (!new_bound.count(name) || opened.count(name)) removed.insert(name);
  bound_ = std::move(new_bound);

  for (std::size_t i = 0; i < workers_.size(); ++i) {
    Worker& worker = *workers_[i];
    std::map<std::string, std::unique_ptr<tcp::acceptor>> mine;
    for (auto& [name, acceptors] : opened) mine[name] = std::move(acceptors[i]);
    asio::post(worker.io_,
               [this, &worker, removed, mine = std::make_shared<decltype(mine)>(std::move(mine))]() mutable {
                 for (const auto& name : removed) {
                   auto it = worker.acceptors_.find(name);
                   if (it == worker.acceptors_.end()) continue;
                   error_code ignored;
                   it->second->close(ignored);
                   // Destroyed later: the accept loop still refers to it until it sees the close.
                   asio::post(worker.io_, [a = std::shared_ptr<tcp::acceptor>(std::move(it->second))] {});
                   worker.acceptors_.erase(it);
                 }
                 for (auto& [name, acceptor] : *mine) {
                   tcp::acceptor& ref = *acceptor;
                   worker.acceptors_[name] = std::move(acceptor);
                   asio::co_spawn(worker.io_, accept_loop(*this, worker, name, ref), asio::detached);
                 }
               });
  }
}

void Server::publish(std::shared_ptr<Generation> generation) {
  for (auto& w : workers_) {
    asio::post(w->io_, [worker = w.get(), generation] {
      // Kept-alive backend connections belong to the old generation's pools.
      if (worker->generation_) worker->generation_->close_idle(worker->index_);
      worker->generation_ = generation;
    });
  }
  current_ = std::move(generation);
}

void Server::poke_workers(const Generation* generation, Drain drain) {
  for (auto& w : workers_)
    asio::post(w->io_, [worker = w.get(), generation, drain] { worker->poke(generation, drain); });
}

void Server::retire(std::shared_ptr<Generation> old_generation) {
  // Idle keep-alive connections of the old generation end now; busy ones
  // may finish for drain_timeout, then they are closed.
  poke_workers(old_generation.get(), Drain::soft);
  asio::co_spawn(main_io_, end_retired(old_generation, current_->config().server.drain_timeout), asio::detached);
}

asio::awaitable<void> Server::end_retired(std::weak_ptr<Generation> retired, Clock::duration drain_timeout) {
  // The old generation lives as long as a connection uses it, not as long
  // as this wait: a reload a second must not keep thirty of them.
  asio::steady_timer timer(main_io_, drain_timeout);
  co_await timer.async_wait(use_tuple);
  if (auto old = retired.lock()) poke_workers(old.get(), Drain::hard);
}

bool Server::reload(std::string* errors) {
  if (stopping_) return false;
  auto fail = [&](const std::string& message) {
    log::error("reload_failed", {{"config", config_file_.string()}, {"errors", message}});
    if (errors) *errors = message;
    return false;
  };
  conf::LoadResult loaded = conf::load_file(config_file_);
  if (!loaded.ok()) {
    std::string all;
    for (const auto& d : loaded.errors) all += d.to_string() + "\n";
    return fail(all);
  }
  std::shared_ptr<Generation> next;
  try {
    if (loaded.config->server.ticket_keys != ticket_keys_->file()) ticket_keys_ = make_ticket_keys(*loaded.config);
    log::set_access_log(loaded.config->server.access_log);
    next = Generation::build(std::move(*loaded.config), workers_.size(), ticket_keys_, next_generation_);
    next->inherit_state(*current_);
    open_listeners(*next);
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  ++next_generation_;
  apply_site_drains(*next, *current_, drained_sites_);
  auto old = current_;
  publish(next);
  health_ = std::make_unique<HealthChecker>(main_io_, next);
  ocsp_ = std::make_unique<OcspFetcher>(main_io_, next);
  retire(std::move(old));
  log::info("reloaded", {{"config", config_file_.string()}, {"generation", next->number()}});
  return true;
}

void Server::stop() {
  asio::post(main_io_, [this] { asio::co_spawn(main_io_, drain_and_stop(), asio::detached); });
}

std::size_t Server::active_connections() const {
  std::size_t n = 0;
  for (const auto& w : workers_) n += w->active();
  return n;
}

asio::awaitable<bool> Server::wait_empty(Clock::time_point deadline) {
  while (active_connections() > 0 && Clock::now() < deadline) {
    // A worker whose last connection ends cancels this wait (on_empty).
    empty_signal_.expires_at(deadline);
    co_await empty_signal_.async_wait(use_tuple);
  }
  co_return active_connections() == 0;
}

asio::awaitable<void> Server::drain_and_stop() {
  if (stopping_.exchange(true)) co_return;
  const auto drain_timeout = current_->config().server.drain_timeout;
  log::info("draining", {{"connections", active_connections()}, {"drain_timeout_ms", drain_timeout.count()}});
  for (auto& w : workers_) {
    asio::post(w->io_, [this, worker = w.get()] {
      for (auto& [name, acceptor] : worker->acceptors_) {
        error_code ignored;
        acceptor->close(ignored);
      }
      auto wake = [this] { asio::post(main_io_, [this] { empty_signal_.cancel(); }); };
      worker->on_empty(wake);
      worker->poke(nullptr, Drain::soft);
      // Its last connection may have ended between the count the wait saw
      // and now, before anyone listened.
      if (worker->active() == 0) wake();
    });
  }
  if (!co_await wait_empty(Clock::now() + drain_timeout)) {
    log::warning("drain_timeout", {{"connections", active_connections()}});
    poke_workers(nullptr, Drain::hard);
    co_await wait_empty(Clock::now() + std::chrono::seconds(1));
  }
  for (auto& w : workers_) w->io_.stop();
  main_io_.stop();
}

asio::awaitable<void> Server::handle_signals(asio::signal_set& signals) {
  for (;;) {
    auto [ec, signal] = co_await signals.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec) co_return;
    if (signal == SIGHUP) reload();
    else asio::co_spawn(main_io_, drain_and_stop(), asio::detached);
  }
}

int Server::run(std::function<void(Server&)> on_ready) {
  // BoringSSL writes to the socket with write(2): a peer that already reset
  // the connection must give EPIPE, not kill the process.
  ::signal(SIGPIPE, SIG_IGN);
  open_listeners(*current_);
  for (auto& w : workers_) w->generation_ = current_;
  health_ = std::make_unique<HealthChecker>(main_io_, current_);
  ocsp_ = std::make_unique<OcspFetcher>(main_io_, current_);
  if (const auto& admin = current_->config().server.admin) {
    admin_ = std::make_unique<AdminServer>(main_io_, *this, *admin);
    log::info("listening", {{"listener", "admin"}, {"address", to_string(admin_->endpoint())}});
  }
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  for (auto& w : workers_) {
    guards.push_back(asio::make_work_guard(w->io_));
    w->thread_ = std::thread([worker = w.get()] { worker->io_.run(); });
  }

  // Registered before "ready": a SIGHUP from then on reloads.
  asio::signal_set signals(main_io_, SIGHUP, SIGTERM, SIGINT);
  asio::co_spawn(main_io_, handle_signals(signals), asio::detached);

  for (const auto& [name, b] : bound_) log::info("listening", {{"listener", name}, {"address", to_string(b.endpoint)}});
  log::info("ready", {{"generation", current_->number()}, {"workers", workers_.size()}});
  if (on_ready) on_ready(*this);

  main_io_.run();
  admin_.reset();
  health_.reset();
  ocsp_.reset();
  guards.clear();
  for (auto& w : workers_) {
    w->io_.stop();
    if (w->thread_.joinable()) w->thread_.join();
  }
  log::info("stopped");
  return 0;
}

}  // namespace gatehouse::proxy
