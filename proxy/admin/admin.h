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

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/json/value.hpp>

#include <memory>
#include <string>

#include "conf/config.h"

namespace gatehouse::proxy {

class Server;

class AdminServer {
 public:
  // Throws std::runtime_error naming [server] admin when it cannot listen.
  AdminServer(boost::asio::io_context& io, Server& server, const conf::Address& address);
  ~AdminServer();
  boost::asio::ip::tcp::endpoint endpoint() const { return endpoint_; }

 private:
  std::shared_ptr<boost::asio::ip::tcp::acceptor> acceptor_;
  boost::asio::ip::tcp::endpoint endpoint_;
};

// What /status.json serves (and /status renders).
boost::json::value status_json(const Server& server);
std::string status_html(const boost::json::value& status);
// What /metrics serves.
std::string prometheus_text(const Server& server);

}  // namespace gatehouse::proxy
