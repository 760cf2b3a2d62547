#pragma once
// The demo's stand-in for an Exchange Mailbox server: HTTPS on loopback with a
// self-signed certificate, answering every request with 200 and its own name.

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace gatehouse::proxy {

class DemoBackends {
 public:
  struct Backend {
    std::string name;  // "MBX01"
    std::filesystem::path cert;
    std::filesystem::path key;
    boost::asio::ip::tcp::endpoint endpoint;  // filled by start()
  };
  // Throws std::runtime_error naming the file or address.
  explicit DemoBackends(std::vector<Backend> backends);
  ~DemoBackends();
  const std::vector<Backend>& backends() const { return backends_; }

 private:
  std::vector<Backend> backends_;
  boost::asio::io_context io_{1};
  std::thread thread_;
};

}  // namespace gatehouse::proxy
