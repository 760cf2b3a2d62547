#pragma once
// The admin endpoint of SPEC.md: plain HTTP/1.1 (Boost.Beast) on the control
// thread, loopback by default.
//
//   GET  /metrics                                   Prometheus text format 0.0.4
//   GET  /status                                    HTML page for operators (refreshes itself)
//   GET  /status.json                               the same data as JSON
//   POST /reload                                    200 + new generation, or 400 + the errors
//   POST /pools/{pool}/servers/{server}/drain       no new traffic to that server in that pool
//   POST /pools/{pool}/servers/{server}/enable      traffic again
//   POST /sites/{site}/drain                        no new traffic to any server of that site, in any pool
//   POST /sites/{site}/enable                       traffic again to every server of the site

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/json/value.hpp>

#include <memory>
#include <string>

#include "conf/config.h"
#include "proxy/admin/sites.h"
#include "proxy/runtime/generation.h"
#include "proxy/runtime/metrics.h"

namespace gatehouse::proxy {

// What the admin endpoint needs of the running proxy, which implements it
// (the application layer, above this one). Called on the control thread.
class AdminControl {
 public:
  virtual const std::shared_ptr<Generation>& current() const = 0;
  // Reloads from the config file; false (old generation kept) on any error.
  virtual bool reload(std::string* errors) = 0;
  virtual std::size_t active_connections() const = 0;
  virtual std::size_t worker_count() const = 0;
  // Every worker's counters, summed.
  virtual MetricTotals metric_totals() const = 0;
  // Bound address of a listener (port 0 resolved).
  virtual boost::asio::ip::tcp::endpoint bound(const std::string& listener) const = 0;
  // The sites drained as a whole (POST /sites/{site}/drain), kept across
  // generations: a reload drains the servers it adds to one (apply_site_drains).
  virtual SiteSet& drained_sites() = 0;
  virtual const SiteSet& drained_sites() const = 0;

 protected:
  ~AdminControl() = default;
};

class AdminServer {
 public:
  // Throws std::runtime_error naming [global] admin when it cannot listen.
  AdminServer(boost::asio::io_context& io, AdminControl& server, const conf::Address& address);
  ~AdminServer();
  boost::asio::ip::tcp::endpoint endpoint() const { return endpoint_; }

 private:
  std::shared_ptr<boost::asio::ip::tcp::acceptor> acceptor_;
  boost::asio::ip::tcp::endpoint endpoint_;
};

// What /status.json serves (and /status renders).
boost::json::value status_json(const AdminControl& server);
std::string status_html(const boost::json::value& status);
// What /metrics serves.
std::string prometheus_text(const AdminControl& server);

}  // namespace gatehouse::proxy
