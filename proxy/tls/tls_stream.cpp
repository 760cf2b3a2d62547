#include "proxy/tls/tls_stream.h"

#include <openssl/err.h>
#include <sys/socket.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

namespace gatehouse::proxy {

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

class TlsCategory final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "tls"; }
  std::string message(int value) const override {
    if (const char* reason = ERR_reason_error_string(static_cast<uint32_t>(value))) return reason;
    return "TLS error " + std::to_string(value);
  }
};

}  // namespace

const boost::system::error_category& tls_category() {
  static const TlsCategory category;
  return category;
}

std::string describe_ssl_error(const error_code& ec) { return ec.message(); }

TlsStream::TlsStream(tcp::socket socket, bssl::UniquePtr<SSL> ssl)
    : socket_(std::move(socket)), ssl_(std::move(ssl)) {
  error_code ignored;
  socket_.non_blocking(true, ignored);
  socket_.set_option(tcp::no_delay(true), ignored);
  if (ssl_) SSL_set_fd(ssl_.get(), socket_.native_handle());
}

error_code TlsStream::ssl_failure(int ret, int err) {
  if (err == SSL_ERROR_ZERO_RETURN) return asio::error::eof;
  const uint32_t packed = ERR_peek_last_error();
  ERR_clear_error();
  if (err == SSL_ERROR_SYSCALL) {
    if (ret == 0 && packed == 0) return asio::error::eof;  // FIN without close_notify
    if (errno != 0 && packed == 0) return error_code(errno, boost::system::system_category());
    if (packed == 0) return asio::error::connection_reset;
  }
  if (packed == 0) return asio::error::fault;
  return error_code(static_cast<int>(packed), tls_category());
}

asio::awaitable<error_code> TlsStream::wait_for(int ssl_error) {
  if (aborted_) co_return asio::error::operation_aborted;
  auto type = ssl_error == SSL_ERROR_WANT_WRITE ? tcp::socket::wait_write : tcp::socket::wait_read;
  auto [ec] = co_await socket_.async_wait(type, use_tuple);
  if (!ec && aborted_) ec = asio::error::operation_aborted;
  co_return ec;
}

asio::awaitable<error_code> TlsStream::handshake() {
  if (!ssl_) co_return error_code{};
  for (;;) {
    if (aborted_) co_return asio::error::operation_aborted;
    ERR_clear_error();
    errno = 0;
    const int ret = SSL_do_handshake(ssl_.get());
    if (ret == 1) co_return error_code{};
    const int err = SSL_get_error(ssl_.get(), ret);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
      error_code ec = ssl_failure(ret, err);
      co_return ec == asio::error::eof ? error_code(asio::error::connection_reset) : ec;
    }
    if (auto ec = co_await wait_for(err)) co_return ec;
  }
}

std::pair<error_code, std::size_t> TlsStream::try_read_some(void* data, std::size_t size) {
  if (aborted_) return {asio::error::operation_aborted, 0};
  if (!ssl_) {
    error_code ec;
    const std::size_t n = socket_.read_some(asio::buffer(data, size), ec);
    if (ec == asio::error::try_again) ec = asio::error::would_block;
    return {ec, n};
  }
  ERR_clear_error();
  errno = 0;
  const int ret = SSL_read(ssl_.get(), data, static_cast<int>(std::min<std::size_t>(size, INT32_MAX)));
  if (ret > 0) return {error_code{}, static_cast<std::size_t>(ret)};
  const int err = SSL_get_error(ssl_.get(), ret);
  // A TLS 1.3 read may need to write (e.g. a KeyUpdate reply); treat it as
  // "not readable yet" only for WANT_READ.
  if (err == SSL_ERROR_WANT_READ) return {asio::error::would_block, 0};
  if (err == SSL_ERROR_WANT_WRITE) return {asio::error::in_progress, 0};
  return {ssl_failure(ret, err), 0};
}

asio::awaitable<std::pair<error_code, std::size_t>> TlsStream::read_some(void* data, std::size_t size) {
  for (;;) {
    auto [ec, n] = try_read_some(data, size);
    if (ec == asio::error::would_block || ec == asio::error::in_progress) {
      if (auto wait_ec = co_await wait_for(ec == asio::error::in_progress ? SSL_ERROR_WANT_WRITE : SSL_ERROR_WANT_READ))
        co_return std::pair{wait_ec, std::size_t{0}};
      continue;
    }
    co_return std::pair{ec, n};
  }
}

asio::awaitable<error_code> TlsStream::wait_readable() { co_return co_await wait_for(SSL_ERROR_WANT_READ); }

asio::awaitable<error_code> TlsStream::write_all(const void* data, std::size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    if (aborted_) co_return asio::error::operation_aborted;
    if (!ssl_) {
      error_code ec;
      const std::size_t n = socket_.write_some(asio::buffer(p, size), ec);
      if (!ec) {
        p += n;
        size -= n;
        continue;
      }
      if (ec != asio::error::would_block && ec != asio::error::try_again) co_return ec;
      if (auto wait_ec = co_await wait_for(SSL_ERROR_WANT_WRITE)) co_return wait_ec;
      continue;
    }
    ERR_clear_error();
    errno = 0;
    // BoringSSL requires a retried SSL_write to repeat the same arguments,
    // which this loop does: p and size only move on success.
    const int ret = SSL_write(ssl_.get(), p, static_cast<int>(std::min<std::size_t>(size, 1 << 30)));
    if (ret > 0) {
      p += ret;
      size -= static_cast<std::size_t>(ret);
      continue;
    }
    const int err = SSL_get_error(ssl_.get(), ret);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
      error_code ec = ssl_failure(ret, err);
      co_return ec == asio::error::eof ? error_code(asio::error::broken_pipe) : ec;
    }
    if (auto ec = co_await wait_for(err)) co_return ec;
  }
  co_return error_code{};
}

asio::awaitable<error_code> TlsStream::flush() {
  if (!ssl_) co_return error_code{};
  for (;;) {
    if (aborted_) co_return asio::error::operation_aborted;
    ERR_clear_error();
    errno = 0;
    const int ret = SSL_write(ssl_.get(), "", 0);
    if (ret >= 0) co_return error_code{};
    const int err = SSL_get_error(ssl_.get(), ret);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) co_return ssl_failure(ret, err);
    if (auto ec = co_await wait_for(err)) co_return ec;
  }
}

asio::awaitable<void> TlsStream::shutdown_send() {
  if (aborted_) co_return;
  if (ssl_) {
    ERR_clear_error();
    // One call sends close_notify; the peer's close_notify is not awaited so
    // the other direction keeps flowing.
    int ret = SSL_shutdown(ssl_.get());
    while (ret < 0) {
      const int err = SSL_get_error(ssl_.get(), ret);
      if (err != SSL_ERROR_WANT_WRITE) break;
      if (co_await wait_for(err)) break;
      ERR_clear_error();
      ret = SSL_shutdown(ssl_.get());
    }
    ERR_clear_error();
  }
  error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_send, ignored);
}

void TlsStream::abort() {
  aborted_ = true;
  error_code ignored;
  socket_.cancel(ignored);
}

}  // namespace gatehouse::proxy
