#pragma once
// An l7 connection: terminate TLS (certificate by SNI), then speak HTTP/2
// when ALPN chose "h2", else HTTP/1.1; every request is routed by Host (or
// :authority) and path to a pool and forwarded over a kept-alive,
// re-encrypted HTTP/1.1 backend connection.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <memory>
#include <string>
#include <string_view>

#include "proxy/l7/request.h"
#include "proxy/runtime/generation.h"
#include "proxy/runtime/worker.h"
#include "proxy/tls/tls_stream.h"

namespace gatehouse::proxy {

asio::awaitable<void> serve_l7(Worker& worker, std::shared_ptr<Generation> generation, const ListenerRuntime& listener,
                               tcp::socket socket, tcp::endpoint client);

namespace l7 {

asio::awaitable<void> serve_http1(ClientConnection& connection);
asio::awaitable<void> serve_http2(ClientConnection& connection);

}  // namespace l7
}  // namespace gatehouse::proxy
