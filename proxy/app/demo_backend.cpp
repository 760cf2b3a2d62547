#include "proxy/app/demo_backend.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <stdexcept>

#include "proxy/http/http_message.h"
#include "proxy/tls/listener_tls.h"
#include "proxy/tls/tls_stream.h"
#include "sni/certificate.h"

namespace gatehouse::proxy {

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

// Keep-alive HTTP/1.1: each request is answered with the server's name and
// the request line, so a user sees which mailbox server took it.
asio::awaitable<void> serve_one(std::shared_ptr<SSL_CTX> ctx, std::string name, tcp::socket socket) {
  TlsStream stream(std::move(socket), bssl::UniquePtr<SSL>(SSL_new(ctx.get())));
  SSL_set_accept_state(stream.ssl());
  if (co_await stream.handshake()) co_return;
  std::string in;
  char buf[16384];
  for (;;) {
    http::RequestParser parser;
    while (!parser.is_done()) {
      if (!in.empty()) {
        http::error_code ec;
        const std::size_t used = parser.feed(in, ec);
        in.erase(0, used);
        parser.body().clear();
        if (ec) co_return;
        if (parser.is_done()) break;
        if (used > 0 && !in.empty()) continue;
      }
      auto [ec, n] = co_await stream.read_some(buf, sizeof buf);
      if (ec) co_return;
      in.append(buf, n);
    }
    const http::RequestHead& head = parser.head();
    const std::string body = "mailbox " + name + " answered: " + head.method + " " + head.target + "\n";
    const std::string response =
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
        "\r\nX-Mailbox-Server: " + name + "\r\n" + (head.keep_alive ? "" : "Connection: close\r\n") + "\r\n" +
        (head.method == "HEAD" ? "" : body);
    if (co_await stream.write_all(response.data(), response.size())) co_return;
    if (!head.keep_alive) break;
  }
  co_await stream.shutdown_send();
}

asio::awaitable<void> accept_loop(std::shared_ptr<tcp::acceptor> acceptor, std::shared_ptr<SSL_CTX> ctx,
                                  std::string name) {
  for (;;) {
    auto [ec, socket] = co_await acceptor->async_accept(use_tuple);
    if (ec) co_return;
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    asio::co_spawn(acceptor->get_executor(), serve_one(ctx, name, std::move(socket)), asio::detached);
  }
}

}  // namespace

DemoBackends::DemoBackends(std::vector<Backend> backends) : backends_(std::move(backends)) {
  for (auto& b : backends_) {
    auto cert = sni::load_certificate(b.name, b.cert, b.key);
    std::shared_ptr<SSL_CTX> ctx(SSL_CTX_new(TLS_method()), SSL_CTX_free);
    apply_tls_policy(ctx.get(), conf::TlsPolicy::modern);
    if (SSL_CTX_use_certificate(ctx.get(), cert->leaf()) != 1 ||
        SSL_CTX_use_PrivateKey(ctx.get(), cert->key.get()) != 1)
      throw std::runtime_error(b.cert.string() + ": demo backend cannot use this certificate");
    auto acceptor = std::make_shared<tcp::acceptor>(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    b.endpoint = acceptor->local_endpoint();
    asio::co_spawn(io_, accept_loop(acceptor, ctx, b.name), asio::detached);
  }
  thread_ = std::thread([this] { io_.run(); });
}

DemoBackends::~DemoBackends() {
  io_.stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace gatehouse::proxy
