// Gatehouse's own HTTP/2 session (proxy/l7/h2_session.cpp, through
// l7::serve_http2) fed raw frames from a client: the real nghttp2 callbacks,
// the abuse budgets, the request builder, the one request path (routing,
// 404, the forward to a pool whose server refuses connections, 502) and the
// drain of every stream when the client goes away.
//
// The client connection is a socket pair in memory, the TLS layer plain
// (TlsStream without SSL), the configuration generation built once with a
// generated certificate. The client preface is sent first, as every real
// client does; the input follows, then the client half-closes and reads
// everything the session writes until it ends. Invariants: the session
// always ends once the client has gone, its first frame is SETTINGS, and it
// never writes more than a bounded amount per input byte.

#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "conf/config.h"
#include "proxy/l7/l7_session.h"
#include "proxy/runtime/log.h"
#include "proxy/tls/ticket_keys.h"
#include "sni/tooling.h"
#include "tests/fuzz/fuzz_check.h"

using gatehouse::fuzz::expect;
namespace asio = boost::asio;
namespace proxy = gatehouse::proxy;

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// One generation for every input: a listener whose routes send
// fuzz.test/owa to a pool whose only server refuses connections (502), and
// everything else nowhere (404).
std::shared_ptr<proxy::Generation> make_generation() {
  const auto dir = std::filesystem::temp_directory_path() / ("gatehouse-fuzz-h2-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  gatehouse::sni::NewCertificateOptions options;
  options.common_name = "fuzz.test";
  options.sans = {"fuzz.test"};
  const auto written = gatehouse::sni::write_certificate(options, dir / "fuzz");
  const std::string text =
      "[[certificate]]\nname = \"fuzz\"\ncert = \"" + written.at(0).string() + "\"\nkey = \"" + written.at(1).string() +
      "\"\n\n"
      "[[server]]\nname = \"closed\"\naddress = \"127.0.0.1:1\"\n\n"
      "[[pool]]\nname = \"owa\"\nservers = [\"closed\"]\ntls = \"plain\"\n\n"
      "[[listener]]\nname = \"h2\"\nbind = \"127.0.0.1:0\"\nalpn = [\"h2\", \"http/1.1\"]\n\n"
      "[[route]]\nlistener = \"h2\"\nhosts = [\"fuzz.test\"]\npaths = [\"/owa\"]\npool = \"owa\"\n";
  auto loaded = gatehouse::conf::load_string(text, dir / "gatehouse.toml");
  if (!loaded.ok()) {
    for (const auto& d : loaded.errors) std::fprintf(stderr, "%s\n", d.to_string().c_str());
    std::abort();
  }
  auto generation = proxy::Generation::build(std::move(*loaded.config), 1, proxy::TicketKeys::random_rotating(), 1);
  std::filesystem::remove_all(dir);
  return generation;
}

// The client: the preface and the input, then every byte the session
// writes until it closes.
asio::awaitable<void> client(asio::local::stream_protocol::socket& socket, std::string input, std::string& received,
                             bool& written) {
  co_await asio::async_write(socket, asio::buffer(input), use_tuple);
  written = true;
  char buffer[16 * 1024];
  for (;;) {
    auto [ec, n] = co_await socket.async_read_some(asio::buffer(buffer), use_tuple);
    if (ec) break;
    received.append(buffer, n);
  }
}

// The session, then the end of its stream.
asio::awaitable<void> serve(proxy::l7::ClientConnection& connection, bool& ended) {
  co_await proxy::l7::serve_http2(connection);
  ended = true;
  connection.stream.abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const auto generation = [] {
    proxy::log::mute_events();
    proxy::log::set_access_log("");
    return make_generation();
  }();
  const proxy::ListenerRuntime& listener = *generation->listener("h2");

  asio::io_context io(1);
  int fds[2];
  expect(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0, "a socket pair");
  proxy::tcp::socket server_end(io);
  server_end.assign(proxy::tcp::v4(), fds[0]);
  asio::local::stream_protocol::socket client_end(io, asio::local::stream_protocol(), fds[1]);

  proxy::Worker worker(0);
  proxy::HandshakeInfo info;
  std::string received;
  bool ended = false;
  bool written = false;
  {
    proxy::TlsStream stream(std::move(server_end), nullptr);
    asio::steady_timer watchdog(io);
    proxy::TrackedConnection tracked(worker, generation.get(), &watchdog);
    proxy::l7::ClientConnection connection{.worker = worker,
                                           .generation = *generation,
                                           .listener = listener,
                                           .stream = stream,
                                           .info = info,
                                           .client_text = "fuzz",
                                           .client_address = "192.0.2.1",
                                           .handle = tracked.handle(),
                                           .watchdog = watchdog};
    std::string input(kPreface);
    input.append(reinterpret_cast<const char*>(data), size);
    asio::co_spawn(io, client(client_end, std::move(input), received, written), asio::detached);
    asio::co_spawn(io, serve(connection, ended), asio::detached);
    // Idle and handshake timeouts are seconds long; a session that has not
    // ended a while after its client went away never will.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(8);
    while (!written && !ended && std::chrono::steady_clock::now() < deadline) io.run_one_until(deadline);
    // Until the session has answered what it can (a forward's refused
    // connect completes at once on loopback), then the client half-closes.
    for (int quiet = 0; quiet < 3 && std::chrono::steady_clock::now() < deadline;)
      quiet = io.poll() == 0 ? quiet + 1 : 0;
    boost::system::error_code ignored;
    client_end.shutdown(asio::socket_base::shutdown_send, ignored);
    while (!ended && std::chrono::steady_clock::now() < deadline) io.run_one_until(deadline);
    expect(ended, "the session ends once the client has gone");
  }
  io.run_for(std::chrono::seconds(1));  // the client sees the close
  // A server's first frame is its SETTINGS (RFC 9113 3.4).
  if (received.size() >= 9) expect(received[3] == 0x04, "the first frame is SETTINGS");
  expect(received.size() <= 64 * 1024 + 64 * (size + kPreface.size()), "output is bounded by the input");
  return 0;
}
