#include "proxy/runtime/ocsp_fetcher.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/url/parse.hpp>

#include <algorithm>
#include <vector>

#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"
#include "sni/ocsp.h"

namespace gatehouse::proxy {

namespace {

namespace http = boost::beast::http;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
constexpr auto kFetchTimeout = std::chrono::seconds(15);
constexpr auto kFirstRetry = std::chrono::seconds(5);
constexpr auto kMaxRetry = std::chrono::minutes(10);
// A responder that hands out responses already past half their validity is
// not asked again more often than this.
constexpr auto kMinRefresh = std::chrono::seconds(10);

std::string seconds_text(sni::Clock::duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::seconds>(d).count()) + "s";
}

}  // namespace

struct OcspFetcher::State {
  std::shared_ptr<Generation> generation;
  bool stopped = false;
  std::vector<std::unique_ptr<asio::steady_timer>> timers;
};

asio::awaitable<OcspHttpResult> ocsp_http_post(std::string url, std::string request) {
  OcspHttpResult result;
  auto parsed = boost::urls::parse_uri(url);
  if (!parsed || parsed->scheme() != "http" || parsed->host().empty()) {
    result.error = "not an http:// URL: " + url;
    co_return result;
  }
  const std::string host(parsed->host_address());  // "::1", not "[::1]", for the resolver
  const std::string port = parsed->has_port() ? std::string(parsed->port()) : "80";
  std::string target(parsed->encoded_path());
  if (target.empty()) target = "/";
  if (parsed->has_query()) target += "?" + std::string(parsed->encoded_query());

  auto executor = co_await asio::this_coro::executor;
  tcp::resolver resolver(executor);
  auto [resolve_ec, endpoints] = co_await resolver.async_resolve(host, port, use_tuple);
  if (resolve_ec) {
    result.error = "cannot resolve " + host + ": " + resolve_ec.message();
    co_return result;
  }
  boost::beast::tcp_stream stream(executor);
  auto [connect_ec, endpoint] = co_await stream.async_connect(endpoints, use_tuple);
  if (connect_ec) {
    result.error = "connect: " + connect_ec.message();
    co_return result;
  }
  http::request<http::string_body> req{http::verb::post, target, 11};
  req.set(http::field::host, std::string(parsed->encoded_host_and_port()));
  req.set(http::field::user_agent, "Gatehouse-OCSP");
  req.set(http::field::content_type, "application/ocsp-request");
  req.set(http::field::accept, "application/ocsp-response");
  req.set(http::field::connection, "close");
  req.body() = std::move(request);
  req.prepare_payload();
  if (auto [ec, n] = co_await http::async_write(stream, req, use_tuple); ec) {
    result.error = "sending the request: " + ec.message();
    co_return result;
  }
  boost::beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 * 1024);  // responses are a few KiB
  if (auto [ec, n] = co_await http::async_read(stream, buffer, parser, use_tuple); ec) {
    result.error = "reading the response: " + ec.message();
    co_return result;
  }
  if (parser.get().result_int() != 200) {
    result.error = "HTTP " + std::to_string(parser.get().result_int());
    co_return result;
  }
  result.body = std::move(parser.get().body());
  co_return result;
}

namespace {

asio::awaitable<void> fetch_loop(std::shared_ptr<OcspFetcher::State> state, asio::steady_timer& timer,
                                 const OcspAuto& task) {
  const std::string request = sni::ocsp_request(task.certificate->leaf(), task.issuer);
  auto retry = sni::Clock::duration(kFirstRetry);
  bool expiry_reported = false;
  while (!state->stopped) {
    const auto now = sni::Clock::now();
    auto staple = task.slot->get();
    sni::Clock::duration wait{};
    if (staple && now < staple->refresh_at) {
      wait = staple->refresh_at - now;  // fresh enough (inherited across a reload, or just fetched)
    } else {
      auto outcome = co_await with_timeout(ocsp_http_post(task.url, request), kFetchTimeout);
      if (state->stopped) break;
      std::string problem = !outcome ? "no answer within " + seconds_text(kFetchTimeout) : outcome->error;
      if (problem.empty()) {
        const auto verdict =
            sni::check_ocsp_response(outcome->body, task.certificate->leaf(), task.issuer, sni::Clock::now());
        if (verdict.stapleable) {
          // Refresh at half the validity, so a responder outage of up to
          // that long never leaves the certificate without a staple.
          const auto refresh = verdict.this_update + (verdict.next_update - verdict.this_update) / 2;
          task.slot->set(std::make_shared<const Staple>(
              Staple{std::move(outcome->body), verdict.next_update,
                     std::max(refresh, std::min(sni::Clock::now() + kMinRefresh, verdict.next_update))}));
          log::info("ocsp_fetched",
                    {{"certificate", task.name}, {"responder", task.url}, {"state", sni::describe(verdict)}});
          retry = kFirstRetry;
          expiry_reported = false;
          continue;
        }
        problem = verdict.problem;
      }
      wait = retry;
      retry = std::min<sni::Clock::duration>(retry * 2, kMaxRetry);
      const auto current = task.slot->current(sni::Clock::now());
      log::warning("ocsp_fetch_failed",
                   {{"certificate", task.name},
                    {"responder", task.url},
                    {"reason", problem},
                    {"retry_in", seconds_text(wait)},
                    {"stapling", current ? "the last good response, until its nextUpdate" : "nothing"}});
    }
    staple = task.slot->get();
    const auto after = sni::Clock::now();
    if (staple && after >= staple->next_update) {
      if (!expiry_reported) {
        log::warning("ocsp_staple_expired", {{"certificate", task.name},
                                             {"responder", task.url},
                                             {"reason",
                                              "no newer response; the certificate is served without a "
                                              "staple until the responder answers"}});
        expiry_reported = true;
      }
    } else if (staple) {
      wait = std::min(wait, staple->next_update - after);  // wake to report the expiry on time
    }
    timer.expires_after(std::max<sni::Clock::duration>(wait, std::chrono::milliseconds(100)));
    co_await timer.async_wait(use_tuple);
  }
}

}  // namespace

OcspFetcher::OcspFetcher(asio::io_context& io, std::shared_ptr<Generation> generation)
    : state_(std::make_shared<State>()) {
  state_->generation = std::move(generation);
  for (const auto& task : state_->generation->ocsp_auto()) {
    state_->timers.push_back(std::make_unique<asio::steady_timer>(io));
    asio::co_spawn(io, fetch_loop(state_, *state_->timers.back(), task), asio::detached);
  }
}

OcspFetcher::~OcspFetcher() { stop(); }

void OcspFetcher::stop() {
  state_->stopped = true;
  for (auto& t : state_->timers) t->cancel();
}

}  // namespace gatehouse::proxy
