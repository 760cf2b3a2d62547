#pragma once
// Reusable pieces for C++ integration tests of the proxy: a temporary
// directory, certificates from the project's own `cert new` code, the real
// gatehouse binary as a child process (its JSON events parsed as they come),
// TLS echo/digest backends on their own thread, and an in-process BoringSSL
// client. Everything is bounded in time: a test that goes wrong fails with a
// message, it does not hang.

#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <sys/types.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/json/object.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "conf/config.h"
#include "proxy/runtime/generation.h"
#include "proxy/tls/ticket_keys.h"
#include "proxy/tls/tls_stream.h"

namespace gatehouse::test {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using proxy::TlsStream;
using namespace std::chrono_literals;

// True in an ASan/UBSan build (compiler-detected) or when GATEHOUSE_SANITIZED
// is set: tests then move less data.
bool sanitized();

// The process ignores SIGPIPE from here on: a peer that resets a connection
// must give the test an EPIPE, not kill it (BoringSSL writes with write(2)).
void ignore_sigpipe();

// A fresh directory under $TMPDIR, mode 0755 so that peers running as other
// users (nginx workers) can read it; removed with its contents.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }
  // Writes `text` to NAME in the directory; returns the path.
  std::filesystem::path write(std::string_view name, std::string_view text) const;

 private:
  std::filesystem::path path_;
};

// A certificate written by sni::write_certificate (the code behind `cert new`)
// as DIR/STEM.crt and DIR/STEM.key, with what configs and clients need.
struct TestCertificate {
  std::filesystem::path cert;
  std::filesystem::path key;
  std::string thumbprint;  // SHA-1, 40 upper-case hex digits
  std::string spki_pin;    // "sha256/BASE64"
};
TestCertificate make_certificate(const TempDir& dir, const std::string& stem, const std::string& common_name,
                                 std::vector<std::string> sans = {}, const std::string& key = "ec256");

// A config generation from TOML text, as `run` builds one (certificates
// loaded, TLS contexts and pools made), for tests of routing and balancing
// decisions without a socket. The text is loaded as DIR/gatehouse.toml, so
// relative paths are DIR's; `edit` may change the validated config before
// the build (shapes the loader refuses); one worker; random ticket keys
// unless `ticket_keys` is given. Throws std::runtime_error with every
// diagnostic.
std::shared_ptr<proxy::Generation> build_generation(const TempDir& dir, std::string_view toml,
                                                    const std::function<void(conf::Config&)>& edit = {},
                                                    std::shared_ptr<proxy::TicketKeys> ticket_keys = {});

// A server SSL_CTX (TLS 1.2 + 1.3) serving `certificate`. Throws on failure.
bssl::UniquePtr<SSL_CTX> server_context(const TestCertificate& certificate);
// A client SSL_CTX (TLS 1.2 + 1.3) that does not verify: tests check what
// they care about (e.g. presented_thumbprint) themselves.
bssl::UniquePtr<SSL_CTX> client_context();
// SHA-1 thumbprint of the peer's leaf certificate, "" when none.
std::string presented_thumbprint(SSL* ssl);

// Incremental SHA-256 (BoringSSL).
class Sha256 {
 public:
  using Digest = std::array<std::uint8_t, SHA256_DIGEST_LENGTH>;
  Sha256() { SHA256_Init(&ctx_); }
  void update(const void* data, std::size_t size) { SHA256_Update(&ctx_, data, size); }
  Digest final();

 private:
  SHA256_CTX ctx_;
};
std::string hex(const Sha256::Digest& digest);

// Deterministic pseudo-random bytes from std::mt19937_64.
class RandomBytes {
 public:
  explicit RandomBytes(std::uint64_t seed) : engine_(seed) {}
  void fill(std::uint8_t* data, std::size_t size);

 private:
  std::mt19937_64 engine_;
};

// Runs `io` on `threads` threads (this one and threads - 1 more) until it has
// no work left or `timeout` passes. Returns false on timeout, after stopping
// `io` (its pending coroutines are then destroyed with it: declare what they
// reference before the io_context). With threads > 1, spawn each
// connection's coroutines on its own strand.
bool run_with_deadline(asio::io_context& io, std::chrono::steady_clock::duration timeout, unsigned threads = 1);

// Connects to 127.0.0.1:port and completes a TLS client handshake sending
// `sni` (none when empty). Error codes, never exceptions.
asio::awaitable<std::pair<error_code, std::optional<TlsStream>>> connect_tls(std::uint16_t port, std::string sni,
                                                                             SSL_CTX* ctx);

// The real gatehouse binary (GATEHOUSE_BINARY) running `run -c CONFIG`.
// A reader thread parses its stderr (one JSON event per line) and stdout
// (the access log when access_log = "-"). The constructor returns once the
// "ready" event came, and throws std::runtime_error with everything the
// process printed when it exits or is not ready in time. The destructor
// stops it (SIGTERM, SIGKILL after a timeout).
//
// The child gets PR_SET_PDEATHSIG, bound to the thread that constructs the
// object: construct it on the test's main thread.
class GatehouseProcess {
 public:
  explicit GatehouseProcess(const std::filesystem::path& config, std::chrono::milliseconds ready_timeout = 30s);
  ~GatehouseProcess();
  GatehouseProcess(const GatehouseProcess&) = delete;
  GatehouseProcess& operator=(const GatehouseProcess&) = delete;

  pid_t pid() const { return pid_; }
  // The port of a listener, from its {"event":"listening"} line. Throws
  // std::out_of_range naming the listener when there is none.
  std::uint16_t port(const std::string& listener) const;
  // Snapshots of what the process printed so far.
  std::vector<boost::json::object> events() const;        // stderr lines that are JSON objects
  std::vector<boost::json::object> access_lines() const;  // stdout lines that are JSON objects
  std::string output() const;                             // stderr and stdout, raw, interleaved
  // Waits until an event satisfies `predicate` (also checking those already
  // seen); nullopt after `timeout` or when the process has ended.
  std::optional<boost::json::object> wait_for_event(const std::function<bool(const boost::json::object&)>& predicate,
                                                    std::chrono::milliseconds timeout);
  std::optional<boost::json::object> wait_for_event(std::string_view name, std::chrono::milliseconds timeout);
  // CPU time (user + system) the process has used so far, from /proc; for
  // figures such as CPU per byte or per handshake. -1 once it has ended.
  double cpu_seconds() const;
  // Sends `signal` (SIGHUP reloads).
  void signal(int signal) const;
  // SIGTERM, waits up to `timeout` for the drain, then SIGKILL. Returns the
  // exit status as the shell shows it (128 + signal when killed by one).
  // Idempotent: later calls return the same status.
  int stop(std::chrono::milliseconds timeout = 15s);

 private:
  void read_output(int err_fd, int out_fd);

  pid_t pid_ = -1;
  std::optional<int> status_;
  std::thread reader_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  bool ended_ = false;  // both pipes reached EOF
  std::vector<boost::json::object> events_;
  std::vector<boost::json::object> access_;
  std::string output_;
};

// A TLS server on 127.0.0.1:0 with its own io_context and thread, serving
// every connection with TlsStream (server side). Mode::echo copies every
// byte back and, after the client's half-close (EOF), half-closes back.
// Mode::digest reads and discards until EOF, then answers the 32-byte
// SHA-256 of everything it read and half-closes.
class TlsBackend {
 public:
  enum class Mode { echo, digest };
  TlsBackend(const TestCertificate& certificate, Mode mode);
  ~TlsBackend();
  TlsBackend(const TlsBackend&) = delete;
  TlsBackend& operator=(const TlsBackend&) = delete;

  std::uint16_t port() const { return port_; }
  std::size_t accepted() const { return accepted_.load(); }
  std::size_t completed() const { return completed_.load(); }  // ended with EOF and the half-close back
  std::uint64_t bytes_read() const { return bytes_read_.load(); }
  // One line per connection that ended on an error (handshake, read, write).
  std::vector<std::string> errors() const;

 private:
  asio::awaitable<void> accept_loop();
  asio::awaitable<void> serve(tcp::socket socket);
  void add_error(std::string error);

  Mode mode_;
  bssl::UniquePtr<SSL_CTX> ctx_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::uint16_t port_ = 0;
  std::atomic<std::size_t> accepted_{0};
  std::atomic<std::size_t> completed_{0};
  std::atomic<std::uint64_t> bytes_read_{0};
  mutable std::mutex mutex_;
  std::vector<std::string> errors_;
  std::thread thread_;
};

}  // namespace gatehouse::test
