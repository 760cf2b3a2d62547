#pragma once
// Cookie affinity (route affinity = "cookie"): the cookie that keeps a
// client on the server of a pool that first answered it. Its value,
// "server.mac", is made and checked by the generation, whose key outlives
// reloads (Generation::affinity_cookie). Pure: no socket, so every decision
// is unit-tested.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "proxy/http/http_message.h"
#include "proxy/runtime/generation.h"

namespace gatehouse::proxy::l7 {

inline constexpr std::string_view kAffinityCookie = "GatehouseAffinity";

// The value of the first cookie `name` in the request's Cookie field(s), or
// "". Names are case-sensitive (RFC 6265 5.4).
std::string_view cookie_value(const http::Fields& fields, std::string_view name);

// The server of `pool` the request's affinity cookie names, or nullopt: no
// cookie, or one that is tampered, stale, from another key or for a server
// not in the pool, which is ignored (the request is balanced anew, never
// refused).
std::optional<std::size_t> affinity_cookie_server(const Generation& generation, const PoolRuntime& pool,
                                                  const http::Fields& request);

// The Set-Cookie value for a response from server `server` of `picked`
// (the pool that served it), or "" when none is needed: the request's
// cookie already named that server, or the server belongs to a fallback
// pool (a cookie for it would not hold once the route's pool is back).
std::string affinity_set_cookie(const Generation& generation, const PoolRuntime& pool, const PoolRuntime* picked,
                                std::size_t server, std::optional<std::size_t> cookie_server);

}  // namespace gatehouse::proxy::l7
