#include "tests/proxy/test_support.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>

#include "sni/certificate.h"
#include "sni/tooling.h"

#ifndef GATEHOUSE_BINARY
#error "GATEHOUSE_BINARY must name the gatehouse binary (tests/CMakeLists.txt defines it)"
#endif

namespace gatehouse::test {

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

}  // namespace

bool sanitized() {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#else
  const char* env = std::getenv("GATEHOUSE_SANITIZED");
  return env != nullptr && *env != '\0' && std::string_view(env) != "0";
#endif
}

void ignore_sigpipe() { std::signal(SIGPIPE, SIG_IGN); }

// ---- TempDir

TempDir::TempDir() {
  std::string templ = (std::filesystem::temp_directory_path() / "gatehouse-test-XXXXXX").string();
  if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error(errno_text("mkdtemp"));
  path_ = templ;
  // mkdtemp makes 0700; peers running as another user must be able to read.
  std::filesystem::permissions(path_, std::filesystem::perms::owner_all | std::filesystem::perms::group_read |
                                          std::filesystem::perms::group_exec | std::filesystem::perms::others_read |
                                          std::filesystem::perms::others_exec);
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

std::filesystem::path TempDir::write(std::string_view name, std::string_view text) const {
  const auto file = path_ / name;
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  if (!out) throw std::runtime_error("cannot write " + file.string());
  return file;
}

// ---- certificates and contexts

TestCertificate make_certificate(const TempDir& dir, const std::string& stem, const std::string& common_name,
                                 std::vector<std::string> sans, const std::string& key) {
  sni::NewCertificateOptions options;
  options.common_name = common_name;
  options.sans = std::move(sans);
  options.key = key;
  const auto written = sni::write_certificate(options, dir / stem);
  TestCertificate result;
  result.cert = written.at(0);
  result.key = written.at(1);
  const auto loaded = sni::load_certificate(stem, result.cert, result.key);
  result.thumbprint = sni::thumbprint(loaded->leaf());
  result.spki_pin = sni::spki_pin(loaded->leaf());
  return result;
}

std::shared_ptr<proxy::Generation> build_generation(const TempDir& dir, std::string_view toml,
                                                    const std::function<void(conf::Config&)>& edit,
                                                    std::shared_ptr<proxy::TicketKeys> ticket_keys) {
  auto loaded = conf::load_string(toml, dir / "gatehouse.toml");
  if (!loaded.ok()) {
    std::string message = "the test's config does not load:";
    for (const auto& d : loaded.errors) message += "\n  " + d.to_string();
    throw std::runtime_error(message);
  }
  if (edit) edit(*loaded.config);
  if (!ticket_keys) ticket_keys = proxy::TicketKeys::random_rotating();
  return proxy::Generation::build(std::move(*loaded.config), 1, std::move(ticket_keys), 1);
}

bssl::UniquePtr<SSL_CTX> server_context(const TestCertificate& certificate) {
  const auto loaded = sni::load_certificate("backend", certificate.cert, certificate.key);
  bssl::UniquePtr<SSL_CTX> ctx(SSL_CTX_new(TLS_method()));
  if (!ctx) throw std::runtime_error("SSL_CTX_new failed");
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION);
  if (SSL_CTX_use_certificate(ctx.get(), loaded->leaf()) != 1 ||
      SSL_CTX_use_PrivateKey(ctx.get(), loaded->key.get()) != 1)
    throw std::runtime_error("cannot serve " + certificate.cert.string() + " with " + certificate.key.string());
  return ctx;
}

bssl::UniquePtr<SSL_CTX> client_context() {
  bssl::UniquePtr<SSL_CTX> ctx(SSL_CTX_new(TLS_method()));
  if (!ctx) throw std::runtime_error("SSL_CTX_new failed");
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  return ctx;
}

std::string presented_thumbprint(SSL* ssl) {
  bssl::UniquePtr<X509> leaf(SSL_get_peer_certificate(ssl));
  return leaf ? sni::thumbprint(leaf.get()) : std::string();
}

// ---- data

Sha256::Digest Sha256::final() {
  Digest digest{};
  SHA256_Final(digest.data(), &ctx_);
  return digest;
}

std::string hex(const Sha256::Digest& digest) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string text;
  for (const auto byte : digest) {
    text += digits[byte >> 4];
    text += digits[byte & 0xf];
  }
  return text;
}

void RandomBytes::fill(std::uint8_t* data, std::size_t size) {
  while (size >= sizeof(std::uint64_t)) {
    const std::uint64_t word = engine_();
    std::memcpy(data, &word, sizeof word);
    data += sizeof word;
    size -= sizeof word;
  }
  if (size > 0) {
    const std::uint64_t word = engine_();
    std::memcpy(data, &word, size);
  }
}

bool run_with_deadline(asio::io_context& io, std::chrono::steady_clock::duration timeout, unsigned threads) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::vector<std::thread> helpers;
  for (unsigned i = 1; i < threads; ++i) helpers.emplace_back([&io, deadline] { io.run_until(deadline); });
  io.run_until(deadline);
  // Out of work: every run returns. Deadline: stop the others too.
  const bool finished = io.stopped();
  io.stop();
  for (auto& t : helpers) t.join();
  return finished;
}

asio::awaitable<std::pair<error_code, std::optional<TlsStream>>> connect_tls(std::uint16_t port, std::string sni,
                                                                             SSL_CTX* ctx) {
  ignore_sigpipe();
  tcp::socket socket(co_await asio::this_coro::executor);
  auto [ec] = co_await socket.async_connect(tcp::endpoint(asio::ip::address_v4::loopback(), port), use_tuple);
  if (ec) co_return std::pair{ec, std::optional<TlsStream>()};
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx));
  if (!ssl) co_return std::pair{error_code(asio::error::no_memory), std::optional<TlsStream>()};
  SSL_set_connect_state(ssl.get());
  if (!sni.empty()) SSL_set_tlsext_host_name(ssl.get(), sni.c_str());
  std::optional<TlsStream> stream(std::in_place, std::move(socket), std::move(ssl));
  if (auto handshake_ec = co_await stream->handshake()) co_return std::pair{handshake_ec, std::optional<TlsStream>()};
  co_return std::pair{error_code(), std::move(stream)};
}

// ---- GatehouseProcess

GatehouseProcess::GatehouseProcess(const std::filesystem::path& config, std::chrono::milliseconds ready_timeout) {
  ignore_sigpipe();
  if (::access(GATEHOUSE_BINARY, X_OK) != 0)
    throw std::runtime_error(errno_text("GATEHOUSE_BINARY " GATEHOUSE_BINARY " is not executable") +
                             " (build the gatehouse target first)");
  int err_pipe[2];
  int out_pipe[2];
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) throw std::runtime_error(errno_text("pipe2"));
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    ::close(err_pipe[0]);
    ::close(err_pipe[1]);
    throw std::runtime_error(errno_text("pipe2"));
  }
  // Everything the child needs is prepared before fork(): after it, in a
  // multi-threaded parent, only async-signal-safe calls are allowed.
  const std::string binary = GATEHOUSE_BINARY;
  const std::string config_arg = config.string();
  std::vector<char*> argv{const_cast<char*>(binary.c_str()), const_cast<char*>("run"), const_cast<char*>("-c"),
                          const_cast<char*>(config_arg.c_str()), nullptr};
  const pid_t parent = ::getpid();
  static constexpr char exec_failed[] = "gatehouse test support: execv of GATEHOUSE_BINARY failed\n";

  pid_ = ::fork();
  if (pid_ < 0) {
    for (int fd : {err_pipe[0], err_pipe[1], out_pipe[0], out_pipe[1]}) ::close(fd);
    throw std::runtime_error(errno_text("fork"));
  }
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    ::dup2(out_pipe[1], STDOUT_FILENO);  // dup2 clears O_CLOEXEC on the copy
    ::dup2(err_pipe[1], STDERR_FILENO);
    ::execv(argv[0], argv.data());
    [[maybe_unused]] auto n = ::write(STDERR_FILENO, exec_failed, sizeof exec_failed - 1);
    ::_exit(127);
  }
  ::close(err_pipe[1]);
  ::close(out_pipe[1]);
  reader_ = std::thread([this, err = err_pipe[0], out = out_pipe[0]] { read_output(err, out); });

  if (!wait_for_event("ready", ready_timeout)) {
    const int status = stop(5s);
    throw std::runtime_error("gatehouse run -c " + config_arg + " did not become ready (exit status " +
                             std::to_string(status) + "); it printed:\n" + output());
  }
}

GatehouseProcess::~GatehouseProcess() { stop(); }

void GatehouseProcess::read_output(int err_fd, int out_fd) {
  struct Source {
    int fd;
    bool is_stderr;
    std::string partial;
  };
  Source sources[2] = {{err_fd, true, {}}, {out_fd, false, {}}};
  int open = 2;
  char buffer[16384];
  while (open > 0) {
    pollfd fds[2];
    nfds_t count = 0;
    Source* polled[2];
    for (auto& s : sources) {
      if (s.fd < 0) continue;
      fds[count] = {s.fd, POLLIN, 0};
      polled[count++] = &s;
    }
    if (::poll(fds, count, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (nfds_t i = 0; i < count; ++i) {
      if (fds[i].revents == 0) continue;
      Source& s = *polled[i];
      const ssize_t n = ::read(s.fd, buffer, sizeof buffer);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::close(s.fd);
        s.fd = -1;
        --open;
        continue;
      }
      s.partial.append(buffer, static_cast<std::size_t>(n));
      std::lock_guard lock(mutex_);
      output_.append(buffer, static_cast<std::size_t>(n));
      std::size_t start = 0;
      for (std::size_t end; (end = s.partial.find('\n', start)) != std::string::npos; start = end + 1) {
        const std::string_view line(s.partial.data() + start, end - start);
        error_code ec;
        auto value = boost::json::parse(line, ec);
        if (ec || !value.is_object()) continue;  // e.g. sanitizer reports
        (s.is_stderr ? events_ : access_).push_back(std::move(value.as_object()));
      }
      s.partial.erase(0, start);
      changed_.notify_all();
    }
  }
  for (auto& s : sources)
    if (s.fd >= 0) ::close(s.fd);
  std::lock_guard lock(mutex_);
  ended_ = true;
  changed_.notify_all();
}

std::uint16_t GatehouseProcess::port(const std::string& listener) const {
  std::lock_guard lock(mutex_);
  for (const auto& e : events_) {
    const auto* event = e.if_contains("event");
    const auto* name = e.if_contains("listener");
    const auto* address = e.if_contains("address");
    if (!event || !name || !address || !event->is_string() || !name->is_string() || !address->is_string()) continue;
    if (event->as_string() != "listening" || name->as_string() != listener) continue;
    const std::string_view text = address->as_string();
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) break;
    return static_cast<std::uint16_t>(std::stoul(std::string(text.substr(colon + 1))));
  }
  throw std::out_of_range("gatehouse printed no {\"event\":\"listening\"} line for listener \"" + listener + "\"");
}

std::vector<boost::json::object> GatehouseProcess::events() const {
  std::lock_guard lock(mutex_);
  return events_;
}

std::vector<boost::json::object> GatehouseProcess::access_lines() const {
  std::lock_guard lock(mutex_);
  return access_;
}

std::string GatehouseProcess::output() const {
  std::lock_guard lock(mutex_);
  return output_;
}

std::optional<boost::json::object> GatehouseProcess::wait_for_event(
    const std::function<bool(const boost::json::object&)>& predicate, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock lock(mutex_);
  std::size_t checked = 0;
  for (;;) {
    for (; checked < events_.size(); ++checked)
      if (predicate(events_[checked])) return events_[checked];
    if (ended_) return std::nullopt;
    if (changed_.wait_until(lock, deadline) == std::cv_status::timeout && checked == events_.size())
      return std::nullopt;
  }
}

std::optional<boost::json::object> GatehouseProcess::wait_for_event(std::string_view name,
                                                                    std::chrono::milliseconds timeout) {
  return wait_for_event(
      [name](const boost::json::object& e) {
        const auto* event = e.if_contains("event");
        return event && event->is_string() && event->as_string() == name;
      },
      timeout);
}

double GatehouseProcess::cpu_seconds() const {
  if (pid_ <= 0 || status_) return -1;
  std::ifstream in("/proc/" + std::to_string(pid_) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The command name (field 2) may hold spaces: count fields after its ')'.
  const auto paren = stat.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream fields(stat.substr(paren + 1));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i)
    if (i >= 14) ticks += std::stod(field);  // utime, stime
  return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

void GatehouseProcess::signal(int signal) const {
  if (pid_ > 0 && !status_) ::kill(pid_, signal);
}

int GatehouseProcess::stop(std::chrono::milliseconds timeout) {
  if (status_) return *status_;
  if (pid_ <= 0) return -1;
  ::kill(pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int raw = 0;
  pid_t done = 0;
  while ((done = ::waitpid(pid_, &raw, WNOHANG)) == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  if (done == 0) {
    ::kill(pid_, SIGKILL);
    while ((done = ::waitpid(pid_, &raw, 0)) < 0 && errno == EINTR) {}
  }
  if (done == pid_ && WIFEXITED(raw)) status_ = WEXITSTATUS(raw);
  else if (done == pid_ && WIFSIGNALED(raw)) status_ = 128 + WTERMSIG(raw);
  else status_ = -1;
  if (reader_.joinable()) reader_.join();
  return *status_;
}

// ---- TlsBackend

TlsBackend::TlsBackend(const TestCertificate& certificate, Mode mode)
    : mode_(mode), ctx_(server_context(certificate)), acceptor_(io_) {
  ignore_sigpipe();
  const tcp::endpoint endpoint(asio::ip::address_v4::loopback(), 0);
  acceptor_.open(endpoint.protocol());
  acceptor_.set_option(tcp::acceptor::reuse_address(true));
  acceptor_.bind(endpoint);
  acceptor_.listen(asio::socket_base::max_listen_connections);
  port_ = acceptor_.local_endpoint().port();
  asio::co_spawn(io_, accept_loop(), [this](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      add_error(std::string("accept loop: ") + x.what());
    }
  });
  thread_ = std::thread([this] {
    try {
      io_.run();
    } catch (const std::exception& x) {
      add_error(std::string("backend io_context: ") + x.what());
    }
  });
}

TlsBackend::~TlsBackend() {
  io_.stop();
  if (thread_.joinable()) thread_.join();
  // Coroutines still pending are destroyed with io_, after the acceptor.
}

std::vector<std::string> TlsBackend::errors() const {
  std::lock_guard lock(mutex_);
  return errors_;
}

void TlsBackend::add_error(std::string error) {
  std::lock_guard lock(mutex_);
  errors_.push_back(std::move(error));
}

asio::awaitable<void> TlsBackend::accept_loop() {
  for (;;) {
    auto [ec, socket] = co_await acceptor_.async_accept(use_tuple);
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
    if (ec) continue;  // e.g. EMFILE, ECONNABORTED: keep serving
    ++accepted_;
    asio::co_spawn(io_, serve(std::move(socket)), [this](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& x) {
        add_error(std::string("connection: ") + x.what());
      }
    });
  }
}

asio::awaitable<void> TlsBackend::serve(tcp::socket socket) {
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx_.get()));
  SSL_set_accept_state(ssl.get());
  TlsStream stream(std::move(socket), std::move(ssl));
  if (auto ec = co_await stream.handshake()) {
    add_error("handshake: " + ec.message());
    co_return;
  }
  std::vector<std::uint8_t> buffer(64 * 1024);
  Sha256 sha;
  for (;;) {
    auto [ec, n] = co_await stream.read_some(buffer.data(), buffer.size());
    if (ec == asio::error::eof) break;
    if (ec) {
      add_error("read: " + ec.message());
      co_return;
    }
    bytes_read_ += n;
    if (mode_ == Mode::digest) {
      sha.update(buffer.data(), n);
    } else if (auto write_ec = co_await stream.write_all(buffer.data(), n)) {
      add_error("write: " + write_ec.message());
      co_return;
    }
  }
  if (mode_ == Mode::digest) {
    const auto digest = sha.final();
    if (auto ec = co_await stream.write_all(digest.data(), digest.size())) {
      add_error("write digest: " + ec.message());
      co_return;
    }
  }
  co_await stream.shutdown_send();
  ++completed_;
}

}  // namespace gatehouse::test
