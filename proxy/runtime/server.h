#pragma once
// The running proxy: N workers, each a thread with its own io_context and its
// own SO_REUSEPORT acceptor per listener, so an accepted connection never
// crosses threads. The main thread handles signals, builds new generations
// on reload and publishes them to the workers.

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "conf/config.h"
#include "proxy/runtime/generation.h"
#include "proxy/runtime/metrics.h"

namespace gatehouse::proxy {

class TicketKeys;
class HealthChecker;
class OcspFetcher;
class AdminServer;

// A live connection as its worker sees it, so a drain can end it.
struct ConnectionHandle {
  const Generation* generation = nullptr;
  boost::asio::steady_timer* watchdog = nullptr;  // cancelled to make the connection re-check its deadline
  bool force_close = false;
  // Set when a reload or stop begins: a connection between requests (HTTP
  // keep-alive, an HTTP/2 connection without streams) ends now instead of
  // waiting for drain_timeout.
  bool draining = false;
};

class Worker {
 public:
  explicit Worker(std::size_t index) : index_(index) {}
  std::size_t index() const { return index_; }
  boost::asio::io_context& io() { return io_; }
  const std::shared_ptr<Generation>& generation() const { return generation_; }

  void track(ConnectionHandle* c) {
    connections_.insert(c);
    ++active_;
  }
  void untrack(ConnectionHandle* c) {
    connections_.erase(c);
    --active_;
  }
  std::size_t active() const { return active_.load(std::memory_order_relaxed); }
  // What this worker counts; written only on its thread.
  WorkerMetrics& metrics() { return metrics_; }
  const WorkerMetrics& metrics() const { return metrics_; }

 private:
  friend class Server;
  // Declaration order is destruction order reversed: acceptors go first,
  // then the io_context (whose pending coroutines still untrack themselves
  // and count into metrics_), then the rest.
  std::size_t index_;
  WorkerMetrics metrics_;
  std::atomic<std::size_t> active_{0};
  std::unordered_set<ConnectionHandle*> connections_;
  std::shared_ptr<Generation> generation_;  // touched only on this worker's thread
  std::thread thread_;
  boost::asio::io_context io_{1};
  std::map<std::string, std::unique_ptr<boost::asio::ip::tcp::acceptor>> acceptors_;  // by listener name
};

// Registers a connection with its worker, for drains, while it lives.
class TrackedConnection {
 public:
  TrackedConnection(Worker& worker, const Generation* generation, boost::asio::steady_timer* watchdog)
      : worker_(worker), handle_{generation, watchdog} {
    worker_.track(&handle_);
  }
  ~TrackedConnection() { worker_.untrack(&handle_); }
  TrackedConnection(const TrackedConnection&) = delete;
  TrackedConnection& operator=(const TrackedConnection&) = delete;
  ConnectionHandle& handle() { return handle_; }

 private:
  Worker& worker_;
  ConnectionHandle handle_;
};

class Server {
 public:
  // Builds the first generation; throws std::runtime_error (naming the file,
  // key or peer) when the config cannot be served.
  explicit Server(conf::Config config);
  ~Server();

  // Serves until SIGTERM/SIGINT (or stop()), then drains; SIGHUP reloads.
  // `on_ready` runs once every listener is bound.
  int run(std::function<void(Server&)> on_ready = {});
  void stop();

  // Reloads from the config file; false (old generation kept) on any error.
  bool reload(std::string* errors = nullptr);

  // Bound address of a listener (resolves port 0).
  boost::asio::ip::tcp::endpoint bound(const std::string& listener) const;

  // For the admin endpoint (control thread only).
  const std::shared_ptr<Generation>& current() const { return current_; }
  std::size_t active_connections() const;
  std::size_t worker_count() const { return workers_.size(); }
  MetricTotals metric_totals() const;  // every worker's counters, summed
  boost::asio::ip::tcp::endpoint admin_endpoint() const;

 private:
  struct Bound {
    conf::Address configured;
    boost::asio::ip::tcp::endpoint endpoint;
  };
  void publish(std::shared_ptr<Generation> generation);
  void open_listeners(const Generation& generation);
  void retire(std::shared_ptr<Generation> old_generation);
  void drain_and_stop();

  conf::Config initial_;
  std::filesystem::path config_file_;
  std::shared_ptr<TicketKeys> ticket_keys_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::shared_ptr<Generation> current_;
  std::uint64_t next_generation_ = 1;
  std::map<std::string, Bound> bound_;
  boost::asio::io_context main_io_{1};
  std::unique_ptr<HealthChecker> health_;  // runs on main_io_, so destroyed before it
  std::unique_ptr<OcspFetcher> ocsp_;      // likewise
  std::unique_ptr<AdminServer> admin_;     // likewise
  std::atomic<bool> stopping_{false};
};

}  // namespace gatehouse::proxy
