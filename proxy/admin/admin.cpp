#include "proxy/admin/admin.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value_from.hpp>
#include <boost/url/parse.hpp>

#include <stdexcept>

#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"
#include "proxy/runtime/worker.h"

namespace gatehouse::proxy {

namespace http = boost::beast::http;

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

Response answer(const Request& req, http::status status, std::string content_type, std::string body) {
  Response res{status, req.version()};
  res.set(http::field::server, "Gatehouse");
  res.set(http::field::content_type, content_type);
  res.set(http::field::cache_control, "no-store");
  res.body() = std::move(body);
  res.keep_alive(req.keep_alive());
  res.prepare_payload();
  return res;
}

Response json_answer(const Request& req, http::status status, const boost::json::value& v) {
  return answer(req, status, "application/json", boost::json::serialize(v) + "\n");
}

// "/pools/{pool}/servers/{server}/{action}" split on '/', percent-decoded.
std::vector<std::string> segments(std::string_view target) {
  std::vector<std::string> out;
  auto url = boost::urls::parse_origin_form(target);
  if (!url) return out;
  for (auto seg : url->segments()) out.push_back(seg);
  return out;
}

// POST /pools/{pool}/servers/{server}/drain|enable: parts as segments() split them.
Response server_drain(AdminControl& server, const Request& req, const std::vector<std::string>& parts) {
  const PoolRuntime* pool = server.current()->pool(parts[1]);
  if (pool == nullptr) return json_answer(req, http::status::not_found, {{"error", "no pool \"" + parts[1] + "\""}});
  const std::size_t i = pool->index_of(parts[3]);
  if (i == pool->servers.size())
    return json_answer(req, http::status::not_found,
                       {{"error", "pool \"" + parts[1] + "\" has no server \"" + parts[3] + "\""}});
  const bool drain = parts[4] == "drain";
  pool->members[i]->drained = drain;
  log::info(drain ? "server_drained" : "server_enabled", {{"pool", parts[1]}, {"server", parts[3]}, {"by", "admin"}});
  return json_answer(req, http::status::ok, {{"pool", parts[1]}, {"server", parts[3]}, {"drained", drain}});
}

// POST /sites/{site}/drain|enable: every server of the site in every pool of
// the current generation. The site is remembered as drained, so a reload
// drains the servers it adds to it; enabling forgets it and enables every
// server of the site, also those drained one by one.
Response site_drain(AdminControl& server, const Request& req, const std::string& site, bool drain) {
  const Generation& g = *server.current();
  SiteSet& drained = server.drained_sites();
  if (site_members(g, site).empty() && !drained.contains(site)) {
    std::string known;
    for (const std::string& name : site_names(g)) known += (known.empty() ? "\"" : ", \"") + name + "\"";
    return json_answer(
        req, http::status::not_found,
        {{"error", "no server has site \"" + site + "\" (sites: " + (known.empty() ? "none" : known) + ")"},
         {"sites", boost::json::value_from(site_names(g))}});
  }
  if (drain) drained.insert(site);
  else drained.erase(site);
  boost::json::array servers;
  for (const SiteMember& m : set_site_drained(g, site, drain))
    servers.push_back(boost::json::object{{"pool", m.pool_name()}, {"server", m.server_name()}});
  log::info(drain ? "site_drained" : "site_enabled", {{"site", site}, {"count", servers.size()}, {"by", "admin"}});
  return json_answer(req, http::status::ok, {{"site", site}, {"drained", drain}, {"servers", std::move(servers)}});
}

Response handle(AdminControl& server, const Request& req) {
  const auto parts = segments(req.target());
  const bool get = req.method() == http::verb::get || req.method() == http::verb::head;
  const bool post = req.method() == http::verb::post;
  if (parts.size() == 1 && parts[0] == "metrics" && get)
    return answer(req, http::status::ok, "text/plain; version=0.0.4; charset=utf-8", prometheus_text(server));
  if (parts.size() == 1 && parts[0] == "status.json" && get)
    return json_answer(req, http::status::ok, status_json(server));
  if ((parts.empty() || (parts.size() == 1 && (parts[0] == "status" || parts[0].empty()))) && get)
    return answer(req, http::status::ok, "text/html; charset=utf-8", status_html(status_json(server)));
  if (parts.size() == 1 && parts[0] == "reload" && post) {
    std::string errors;
    if (!server.reload(&errors))
      return json_answer(req, http::status::bad_request, {{"reloaded", false}, {"errors", errors}});
    return json_answer(req, http::status::ok, {{"reloaded", true}, {"generation", server.current()->number()}});
  }
  const bool action = !parts.empty() && (parts.back() == "drain" || parts.back() == "enable");
  if (parts.size() == 5 && parts[0] == "pools" && parts[2] == "servers" && action && post)
    return server_drain(server, req, parts);
  if (parts.size() == 3 && parts[0] == "sites" && action && post)
    return site_drain(server, req, parts[1], parts[2] == "drain");
  if (get || post)
    return answer(req, http::status::not_found, "text/plain; charset=utf-8",
                  "not found: GET /metrics, /status, /status.json; POST /reload, "
                  "/pools/{pool}/servers/{server}/drain|enable, /sites/{site}/drain|enable\n");
  return answer(req, http::status::method_not_allowed, "text/plain; charset=utf-8", "method not allowed\n");
}

asio::awaitable<void> session(AdminControl& server, tcp::socket socket) {
  boost::beast::tcp_stream stream(std::move(socket));
  boost::beast::flat_buffer buffer;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(1024 * 1024);
    stream.expires_after(std::chrono::seconds(30));
    auto [ec, n] = co_await http::async_read(stream, buffer, parser, use_tuple);
    if (ec) break;
    Request req = parser.release();
    Response res = handle(server, req);
    if (req.method() == http::verb::head) res.body().clear();
    auto [wec, wn] = co_await http::async_write(stream, res, use_tuple);
    if (wec || !res.keep_alive()) break;
  }
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
}

asio::awaitable<void> accept_loop(AdminControl& server, std::shared_ptr<tcp::acceptor> acceptor) {
  for (;;) {
    auto [ec, socket] = co_await acceptor->async_accept(use_tuple);
    if (!acceptor->is_open()) co_return;
    if (ec) continue;
    asio::co_spawn(acceptor->get_executor(), session(server, std::move(socket)), asio::detached);
  }
}

}  // namespace

AdminServer::AdminServer(asio::io_context& io, AdminControl& server, const conf::Address& address)
    : acceptor_(std::make_shared<tcp::acceptor>(io)) {
  error_code ec;
  const auto ip = asio::ip::make_address(address.host, ec);
  if (ec)
    throw std::runtime_error("[global] admin = \"" + address.to_string() +
                             "\": not an IP address; use e.g. \"127.0.0.1:9901\"");
  const tcp::endpoint endpoint(ip, address.port);
  acceptor_->open(endpoint.protocol(), ec);
  if (!ec) acceptor_->set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_->bind(endpoint, ec);
  if (!ec) acceptor_->listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw std::runtime_error("[global] admin = \"" + address.to_string() + "\": cannot listen: " + ec.message() +
                             " (choose another port, or \"\" to disable the admin endpoint)");
  endpoint_ = acceptor_->local_endpoint();
  asio::co_spawn(io, accept_loop(server, acceptor_), asio::detached);
}

AdminServer::~AdminServer() {
  error_code ignored;
  acceptor_->close(ignored);
}

}  // namespace gatehouse::proxy
