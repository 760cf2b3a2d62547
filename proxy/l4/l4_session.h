#pragma once
// The stream listeners. An l4 connection: terminate TLS (certificate chosen
// by SNI; on a starttls listener after the mail protocol's plaintext
// opening), pick a server of the pool the SNI routes to, connect and
// re-encrypt per the pool's `tls` (and starttls), then copy bytes both ways
// with half-close passed through until both directions end, an error, or the
// idle timeout. Passthrough and tcp connections relay without terminating.

#include <boost/asio/awaitable.hpp>

#include <memory>

#include "proxy/runtime/generation.h"
#include "proxy/runtime/worker.h"
#include "proxy/tls/tls_stream.h"

namespace gatehouse::proxy {

// Each serve_* takes the accepted socket and the client's address as
// accept() returned it.
asio::awaitable<void> serve_l4(Worker& worker, std::shared_ptr<Generation> generation, const ListenerRuntime& listener,
                               tcp::socket socket, tcp::endpoint client);
// A passthrough connection: the ClientHello is read (within the listener's
// handshake_timeout) without terminating TLS, its SNI picks the route, and
// every byte is relayed as it came, so the client sees the server's own
// certificate.
asio::awaitable<void> serve_passthrough(Worker& worker, std::shared_ptr<Generation> generation,
                                        const ListenerRuntime& listener, tcp::socket socket, tcp::endpoint client);
// A plain TCP relay (mode = "tcp"): no TLS here, the pool's server is picked
// (routes on a tcp listener have no hosts) and bytes are copied both ways.
asio::awaitable<void> serve_tcp(Worker& worker, std::shared_ptr<Generation> generation, const ListenerRuntime& listener,
                                tcp::socket socket, tcp::endpoint client);

// Copies `from` to `to` until end of stream (then half-closes `to`) or an
// error (then aborts both). Holds no buffer while `from` is idle.
asio::awaitable<void> pump(TlsStream& from, TlsStream& to, std::chrono::steady_clock::time_point& last_activity,
                           std::uint64_t& bytes);

}  // namespace gatehouse::proxy
