#pragma once
// The running proxy: N workers, each a thread with its own io_context and its
// own SO_REUSEPORT acceptor per listener, so an accepted connection never
// crosses threads. The main thread handles signals, builds new generations
// on reload and publishes them to the workers.

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
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
#include "proxy/admin/admin.h"
#include "proxy/runtime/connection.h"
#include "proxy/runtime/generation.h"
#include "proxy/runtime/worker.h"

namespace gatehouse::proxy {

class TicketKeys;
class HealthChecker;
class OcspFetcher;

class Server final : public AdminControl {
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
  bool reload(std::string* errors = nullptr) override;

  // Bound address of a listener (resolves port 0).
  boost::asio::ip::tcp::endpoint bound(const std::string& listener) const override;

  // For the admin endpoint (control thread only).
  const std::shared_ptr<Generation>& current() const override { return current_; }
  std::size_t active_connections() const override;
  std::size_t worker_count() const override { return workers_.size(); }
  MetricTotals metric_totals() const override;
  boost::asio::ip::tcp::endpoint admin_endpoint() const;
  SiteSet& drained_sites() override { return drained_sites_; }
  const SiteSet& drained_sites() const override { return drained_sites_; }

 private:
  struct Bound {
    conf::Address configured;
    boost::asio::ip::tcp::endpoint endpoint;
  };
  void publish(std::shared_ptr<Generation> generation);
  void open_listeners(const Generation& generation);
  void retire(std::shared_ptr<Generation> old_generation);
  asio::awaitable<void> end_retired(std::weak_ptr<Generation> retired, Clock::duration drain_timeout);
  // Posts Worker::poke to every worker.
  void poke_workers(const Generation* generation, Drain drain);
  // Stops accepting, lets connections finish for drain_timeout, ends the
  // rest, and stops the workers and the control thread.
  asio::awaitable<void> drain_and_stop();
  // true once no worker has a connection; false at `deadline`.
  asio::awaitable<bool> wait_empty(Clock::time_point deadline);
  asio::awaitable<void> handle_signals(
      boost::asio::signal_set& signals);  // SIGHUP reloads; SIGTERM and SIGINT drain and stop

  conf::Config initial_;
  std::filesystem::path config_file_;
  std::shared_ptr<TicketKeys> ticket_keys_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::shared_ptr<Generation> current_;
  std::uint64_t next_generation_ = 1;
  std::map<std::string, Bound> bound_;
  SiteSet drained_sites_;  // by the admin endpoint; control thread only
  boost::asio::io_context main_io_{1};
  boost::asio::steady_timer empty_signal_{main_io_};  // cancelled when a draining worker empties
  std::unique_ptr<HealthChecker> health_;             // runs on main_io_, so destroyed before it
  std::unique_ptr<OcspFetcher> ocsp_;                 // likewise
  std::unique_ptr<AdminServer> admin_;                // likewise
  std::atomic<bool> stopping_{false};
};

}  // namespace gatehouse::proxy
