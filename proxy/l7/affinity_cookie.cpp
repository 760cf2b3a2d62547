#include "proxy/l7/affinity_cookie.h"

#include <boost/beast/core/string.hpp>

namespace gatehouse::proxy::l7 {

std::string_view cookie_value(const http::Fields& fields, std::string_view name) {
  for (const auto& f : fields) {
    if (!boost::beast::iequals(f.name, "cookie")) continue;
    std::string_view rest = f.value;
    while (!rest.empty()) {
      const auto semi = rest.find(';');
      std::string_view pair = rest.substr(0, semi);
      while (!pair.empty() && pair.front() == ' ') pair.remove_prefix(1);
      if (pair.size() > name.size() && pair.substr(0, name.size()) == name && pair[name.size()] == '=')
        return pair.substr(name.size() + 1);
      if (semi == std::string_view::npos) break;
      rest.remove_prefix(semi + 1);
    }
  }
  return {};
}

std::optional<std::size_t> affinity_cookie_server(const Generation& generation, const PoolRuntime& pool,
                                                  const http::Fields& request) {
  return generation.affinity_server(pool, cookie_value(request, kAffinityCookie));
}

std::string affinity_set_cookie(const Generation& generation, const PoolRuntime& pool, const PoolRuntime* picked,
                                std::size_t server, std::optional<std::size_t> cookie_server) {
  if (picked != &pool || cookie_server == server) return {};
  return std::string(kAffinityCookie) + "=" + generation.affinity_cookie(pool, server) + "; Path=/; Secure; HttpOnly";
}

}  // namespace gatehouse::proxy::l7
