#include "proxy/tls/tls_stream.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include "proxy/tls/pooled_buffer.h"

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

// The read-ahead: bytes read from the socket that BoringSSL (or, for plain
// TCP, the caller) has not taken yet, plus an end or error still to report.
// It lives on the heap so that the BIO's pointer survives moves.
struct TlsStream::ReadAhead {
  int fd = -1;
  PooledBuffer buffer;
  const char* begin = nullptr;
  std::size_t size = 0;
  bool eof = false;
  int error = 0;  // errno of a failed read, reported once the bytes before it are taken

  bool has_news() const { return size > 0 || eof || error != 0; }

  std::size_t take(void* out, std::size_t max) {
    const std::size_t n = std::min(max, size);
    std::memcpy(out, begin, n);
    begin += n;
    size -= n;
    if (size == 0) release();
    return n;
  }

  void drop() {
    size = 0;
    release();
  }

  void release() { buffer.release(); }

  // One non-blocking read of what the socket has; false when it has
  // nothing yet (EAGAIN), true when there are bytes, an end or an error.
  bool read_now() {
    for (;;) {
      const ssize_t n = ::recv(fd, buffer.get(), PooledBuffer::size, 0);
      if (n > 0) {
        begin = buffer.get();
        size = static_cast<std::size_t>(n);
        return true;
      }
      if (n == 0) {
        buffer.release();
        eof = true;
        return true;
      }
      if (errno == EINTR) continue;
      buffer.release();
      if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
      error = errno;
      return true;
    }
  }
};

namespace {

// BoringSSL's SSL_get_error() reads the error queue, so it must be empty
// before each call; emptying an empty queue costs more than looking.
void clear_errors() {
  if (ERR_peek_error() != 0) ERR_clear_error();
}

int bio_read(BIO* bio, char* out, int len) {
  auto* ahead = static_cast<TlsStream::ReadAhead*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (len <= 0) return 0;
  if (ahead->size > 0) return static_cast<int>(ahead->take(out, static_cast<std::size_t>(len)));
  if (ahead->error != 0) {
    errno = ahead->error;
    return -1;
  }
  if (ahead->eof) return 0;
  BIO_set_retry_read(bio);  // TlsStream::wait_readable() reads the socket
  return -1;
}

int bio_write(BIO* bio, const char* in, int len) {
  BIO_clear_retry_flags(bio);
  const int fd = static_cast<TlsStream::ReadAhead*>(BIO_get_data(bio))->fd;
  const ssize_t n = ::send(fd, in, static_cast<std::size_t>(len), MSG_NOSIGNAL);
  if (n >= 0) return static_cast<int>(n);
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) BIO_set_retry_write(bio);
  return -1;
}

long bio_ctrl(BIO* bio, int cmd, long /*num*/, void* /*ptr*/) {
  switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_PENDING: return static_cast<long>(static_cast<TlsStream::ReadAhead*>(BIO_get_data(bio))->size);
    default: return 0;
  }
}

const BIO_METHOD* read_ahead_method() {
  static const BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_TYPE_SOURCE_SINK, "gatehouse read-ahead socket");
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_ctrl(m, bio_ctrl);
    return m;
  }();
  return method;
}

}  // namespace

TlsStream::TlsStream(tcp::socket socket, bssl::UniquePtr<SSL> ssl)
    : socket_(std::move(socket)), read_(std::make_unique<ReadAhead>()), ssl_(std::move(ssl)) {
  // Accepted sockets come non-blocking and with TCP_NODELAY (inherited from
  // the listening socket); connect_backend() sets TCP_NODELAY on its own.
  error_code ignored;
  if (!socket_.non_blocking()) socket_.non_blocking(true, ignored);
  read_->fd = socket_.native_handle();
  if (ssl_) start_tls(std::move(ssl_));
}

TlsStream::TlsStream(TlsStream&&) noexcept = default;

std::size_t TlsStream::start_tls(bssl::UniquePtr<SSL> ssl) {
  ReadAhead& ahead = *read_;
  const std::size_t dropped = ahead.size;
  ahead.drop();
  ssl_ = std::move(ssl);
  BIO* bio = BIO_new(read_ahead_method());
  BIO_set_data(bio, read_.get());
  BIO_set_init(bio, 1);
  SSL_set_bio(ssl_.get(), bio, bio);  // one reference, owned by ssl_
  return dropped;
}

TlsStream& TlsStream::operator=(TlsStream&& other) noexcept {
  if (this != &other) {
    ssl_.reset();  // before the read-ahead its BIO points to
    socket_ = std::move(other.socket_);
    read_ = std::move(other.read_);
    ssl_ = std::move(other.ssl_);
    aborted_ = other.aborted_;
    reads_cancelled_ = other.reads_cancelled_;
  }
  return *this;
}

TlsStream::~TlsStream() = default;

error_code TlsStream::ssl_failure(int ret, int err) {
  if (err == SSL_ERROR_ZERO_RETURN) return asio::error::eof;
  const uint32_t packed = ERR_peek_last_error();
  ERR_clear_error();
  if (err == SSL_ERROR_SYSCALL) {
    if (ret == 0 && packed == 0) return asio::error::eof;  // FIN without close_notify
    if (errno != 0 && packed == 0) return error_code(errno, boost::system::system_category());
    // (bio_read sets errno from a failed read; this is in case something
    // cleared it since.)
    if (read_->error != 0 && packed == 0) return error_code(read_->error, boost::system::system_category());
    if (packed == 0) return asio::error::connection_reset;
  }
  if (packed == 0) return asio::error::fault;
  return error_code(static_cast<int>(packed), tls_category());
}

asio::awaitable<error_code> TlsStream::wait_for(int ssl_error) {
  if (aborted_) co_return asio::error::operation_aborted;
  if (ssl_error == SSL_ERROR_WANT_READ) co_return co_await wait_readable();
  auto [ec] = co_await socket_.async_wait(tcp::socket::wait_write, use_tuple);
  if (!ec && aborted_) ec = asio::error::operation_aborted;
  co_return ec;
}

asio::awaitable<error_code> TlsStream::handshake() {
  if (!ssl_) co_return error_code{};
  for (;;) {
    if (aborted_) co_return asio::error::operation_aborted;
    clear_errors();
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
  ReadAhead& ahead = *read_;
  if (!ssl_) {
    if (ahead.size > 0) return {error_code{}, ahead.take(data, size)};
    if (ahead.error != 0) return {error_code(ahead.error, boost::system::system_category()), 0};
    if (ahead.eof) return {asio::error::eof, 0};
    return {asio::error::would_block, 0};
  }
  clear_errors();
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
    if (ec == asio::error::would_block && !ssl_) {
      // Plain TCP: straight into the caller's buffer.
      if (reads_cancelled_) co_return std::pair{error_code(asio::error::operation_aborted), std::size_t{0}};
      auto [read_ec, read_n] = co_await socket_.async_read_some(asio::buffer(data, size), use_tuple);
      if (aborted_ || reads_cancelled_) read_ec = asio::error::operation_aborted;
      co_return std::pair{read_ec, read_n};
    }
    if (ec == asio::error::would_block || ec == asio::error::in_progress) {
      if (auto wait_ec = co_await wait_for(ec == asio::error::in_progress ? SSL_ERROR_WANT_WRITE : SSL_ERROR_WANT_READ))
        co_return std::pair{wait_ec, std::size_t{0}};
      continue;
    }
    co_return std::pair{ec, n};
  }
}

asio::awaitable<error_code> TlsStream::wait_readable() {
  ReadAhead& ahead = *read_;
  for (;;) {
    if (aborted_ || reads_cancelled_) co_return asio::error::operation_aborted;
    if (ahead.has_news() || ahead.read_now()) co_return error_code{};
    // Nothing yet: wait for the socket holding no buffer. (Two waits at
    // once, a reader and a write that wants to read, both wake; the first
    // to read takes the bytes, the other finds them.)
    auto [ec] = co_await socket_.async_wait(tcp::socket::wait_read, use_tuple);
    if (aborted_ || reads_cancelled_ || ec == asio::error::operation_aborted) co_return asio::error::operation_aborted;
    if (ec) {
      ahead.error = ec.category() == boost::system::system_category() ? ec.value() : EIO;
      co_return error_code{};
    }
  }
}

bool TlsStream::release_read_ahead() { return read_->size == 0; }

bool TlsStream::quiet() {
  if (aborted_ || (ssl_ && SSL_pending(ssl_.get()) > 0)) return false;
  ReadAhead& ahead = *read_;
  if (!ahead.has_news() && !ahead.read_now()) return true;
  if (ahead.size == 0 || !ssl_) return false;
  // Bytes on a TLS connection may be only a late post-handshake message (a
  // NewSessionTicket), which BoringSSL takes without returning anything.
  char probe;
  auto [ec, n] = try_read_some(&probe, 1);
  return ec == asio::error::would_block;
}

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
    clear_errors();
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
    clear_errors();
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

void TlsStream::cancel() {
  reads_cancelled_ = true;
  error_code ignored;
  socket_.cancel(ignored);
}

void TlsStream::abort() {
  aborted_ = true;
  error_code ignored;
  socket_.cancel(ignored);
}

}  // namespace gatehouse::proxy
