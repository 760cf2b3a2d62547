#pragma once
// A worker: a thread with its own io_context and its own SO_REUSEPORT
// acceptor per listener, so an accepted connection never crosses threads;
// and the handle through which a drain reaches each of its connections.

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
#include <vector>

#include "conf/assert.h"
#include "conf/config.h"
#include "proxy/runtime/generation.h"
#include "proxy/runtime/metrics.h"

namespace gatehouse::proxy {

// How a drain reaches a connection.
enum class Drain {
  soft,  // a reload or stop begins: connections between requests end (see OnDrain), the rest finish
  hard,  // drain_timeout has passed: every connection ends now
};

// A live connection as its worker sees it, so a drain can end it.
struct ConnectionHandle {
  const Generation* generation = nullptr;
  boost::asio::steady_timer* watchdog = nullptr;  // the connection's IdleGuard timer
  bool force_close = false;
  bool draining = false;
  // Links in the worker's list of live connections (Worker::track): no
  // allocation per connection.
  ConnectionHandle* prev = nullptr;
  ConnectionHandle* next = nullptr;

  // Marks the drain and wakes the connection's IdleGuard to act on it.
  void poke(Drain drain) {
    (drain == Drain::soft ? draining : force_close) = true;
    watchdog->cancel();
  }
};

class Worker {
 public:
  explicit Worker(std::size_t index) : index_(index) {}
  std::size_t index() const { return index_; }
  boost::asio::io_context& io() { return io_; }
  const std::shared_ptr<Generation>& generation() const { return generation_; }

  void track(ConnectionHandle* c) {
    c->prev = nullptr;
    c->next = connections_;
    if (connections_ != nullptr) connections_->prev = c;
    connections_ = c;
    ++active_;
  }
  void untrack(ConnectionHandle* c) {
    GH_ASSERT(active_ > 0 && (c->prev != nullptr || connections_ == c));
    (c->prev != nullptr ? c->prev->next : connections_) = c->next;
    if (c->next != nullptr) c->next->prev = c->prev;
    c->prev = c->next = nullptr;
    if (--active_ == 0 && on_empty_) on_empty_();
  }
  std::size_t active() const { return active_.load(std::memory_order_relaxed); }
  // What this worker counts; written only on its thread.
  WorkerMetrics& metrics() { return metrics_; }
  const WorkerMetrics& metrics() const { return metrics_; }

  // Pokes every connection accepted under `generation` (every connection
  // when null). On the worker's thread.
  void poke(const Generation* generation, Drain drain) {
    for (ConnectionHandle* c = connections_; c != nullptr; c = c->next)
      if (generation == nullptr || c->generation == generation) c->poke(drain);
  }
  // Runs (on the worker's thread) each time its last connection ends, so a
  // stop waits for the workers to empty without polling. Set on the
  // worker's thread.
  void on_empty(std::function<void()> callback) { on_empty_ = std::move(callback); }

 private:
  friend class Server;  // the application layer (proxy/app) runs workers
  // Declaration order is destruction order reversed: acceptors go first,
  // then the io_context (whose pending coroutines still untrack themselves
  // and count into metrics_), then the rest.
  std::size_t index_;
  WorkerMetrics metrics_;
  std::atomic<std::size_t> active_{0};
  ConnectionHandle* connections_ = nullptr;  // the most recent first
  std::function<void()> on_empty_;
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

}  // namespace gatehouse::proxy
