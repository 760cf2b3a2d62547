#pragma once
// A redirect listener (mode = "redirect"): plain HTTP, typically on port 80,
// answering every request itself and forwarding nothing. A route of the
// listener with `redirect` answers 302 to its URL (the Autodiscover HTTP
// redirect method, "/" to "/owa"); every other request gets 301 to the same
// host and target over https. Access rules, [[deny]] rules, the access log,
// request metrics, idle timeout and drain work as on l7 listeners.

#include <boost/asio/awaitable.hpp>

#include <memory>

#include "proxy/runtime/generation.h"
#include "proxy/runtime/worker.h"

namespace gatehouse::proxy::l7 {

asio::awaitable<void> serve_redirect(Worker& worker, std::shared_ptr<Generation> generation,
                                     const ListenerRuntime& listener, tcp::socket socket, tcp::endpoint client);

}  // namespace gatehouse::proxy::l7
