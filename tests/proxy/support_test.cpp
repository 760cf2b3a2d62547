// Self-tests of the integration-test support (TLS backends, the in-process
// client, GatehouseProcess), so that a failing proxy test points at the proxy.
#include "tests/proxy/test_support.h"

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>

namespace gatehouse::test {
namespace {

// Sends `payload`, half-closes, and collects everything until EOF.
struct Exchange {
  std::string error;
  std::string received;
  bool eof = false;
  std::string thumbprint;
};

asio::awaitable<void> exchange(std::uint16_t port, SSL_CTX* ctx, std::string payload, Exchange& out) {
  auto [ec, stream] = co_await connect_tls(port, "backend.test", ctx);
  if (ec) {
    out.error = "connect: " + ec.message();
    co_return;
  }
  out.thumbprint = presented_thumbprint(stream->ssl());
  if (auto write_ec = co_await stream->write_all(payload.data(), payload.size())) {
    out.error = "write: " + write_ec.message();
    co_return;
  }
  co_await stream->shutdown_send();
  char buffer[4096];
  for (;;) {
    auto [read_ec, n] = co_await stream->read_some(buffer, sizeof buffer);
    if (read_ec == asio::error::eof) {
      out.eof = true;
      co_return;
    }
    if (read_ec) {
      out.error = "read: " + read_ec.message();
      co_return;
    }
    out.received.append(buffer, n);
  }
}

TEST(TestSupport, EchoBackendEchoesAndHalfClosesBack) {
  TempDir dir;
  const auto cert = make_certificate(dir, "backend", "backend.test");
  EXPECT_EQ(cert.thumbprint.size(), 40u);
  TlsBackend backend(cert, TlsBackend::Mode::echo);
  auto ctx = client_context();
  Exchange result;
  asio::io_context io;
  asio::co_spawn(io, exchange(backend.port(), ctx.get(), "hello, mailbox", result), asio::detached);
  ASSERT_TRUE(run_with_deadline(io, 20s)) << "exchange with the echo backend timed out";
  EXPECT_EQ(result.error, "");
  EXPECT_EQ(result.received, "hello, mailbox");
  EXPECT_TRUE(result.eof);
  EXPECT_EQ(result.thumbprint, cert.thumbprint);
  // The backend counts completion after its half-close, which the client may see first.
  for (int i = 0; i < 200 && backend.completed() < 1; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(backend.completed(), 1u);
  EXPECT_TRUE(backend.errors().empty()) << backend.errors().front();
}

TEST(TestSupport, DigestBackendAnswersSha256AtEof) {
  TempDir dir;
  const auto cert = make_certificate(dir, "backend", "backend.test");
  TlsBackend backend(cert, TlsBackend::Mode::digest);
  auto ctx = client_context();
  const std::string payload(100000, 'x');
  Sha256 sha;
  sha.update(payload.data(), payload.size());
  const auto expected = sha.final();
  Exchange result;
  asio::io_context io;
  asio::co_spawn(io, exchange(backend.port(), ctx.get(), payload, result), asio::detached);
  ASSERT_TRUE(run_with_deadline(io, 20s)) << "exchange with the digest backend timed out";
  EXPECT_EQ(result.error, "");
  EXPECT_TRUE(result.eof);
  EXPECT_EQ(result.received, std::string(expected.begin(), expected.end()));
}

TEST(TestSupport, RunWithDeadlineReportsTimeout) {
  asio::io_context io;
  asio::steady_timer timer(io, 1h);
  timer.async_wait([](error_code) {});
  const auto started = std::chrono::steady_clock::now();
  EXPECT_FALSE(run_with_deadline(io, 100ms));
  EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
}

TEST(TestSupport, GatehouseProcessReportsWhatABadConfigPrinted) {
  TempDir dir;
  const auto config = dir.write("bad.toml", "[global]\nworkers = \"many\"\n");
  try {
    GatehouseProcess proxy(config, 20s);
    FAIL() << "gatehouse became ready with a bad config";
  } catch (const std::runtime_error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("did not become ready"), std::string::npos) << message;
    EXPECT_NE(message.find("workers"), std::string::npos) << "the error should name the key: " << message;
  }
}

}  // namespace
}  // namespace gatehouse::test
