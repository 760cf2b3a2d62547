#include "proxy/runtime/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <boost/json/serialize.hpp>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <stdexcept>

#include "proxy/runtime/metrics.h"

namespace gatehouse::proxy::log {

namespace {

std::atomic<int> access_fd{STDOUT_FILENO};
std::atomic<bool> muted{false};

void write_line(int fd, boost::json::object& fields) {
  std::string line = boost::json::serialize(fields);
  line += '\n';
  const char* p = line.data();
  std::size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // a full disk or closed pipe must not stop the proxy
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

}  // namespace

std::string now_rfc3339() {
  using namespace std::chrono;
  const auto now = system_clock::now();
  const std::time_t t = system_clock::to_time_t(now);
  const auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

void mute_events() { muted = true; }

void event(std::string_view level, std::string_view name, boost::json::object fields) {
  if (muted.load(std::memory_order_relaxed)) return;
  boost::json::object line;
  line["time"] = now_rfc3339();
  line["level"] = level;
  line["event"] = name;
  for (auto& kv : fields) line[kv.key()] = std::move(kv.value());
  if (level != "info") metrics().note_problem(boost::json::serialize(line));
  write_line(STDERR_FILENO, line);
}

void set_access_log(const std::string& destination) {
  int fd = -1;
  if (destination == "-") {
    fd = STDOUT_FILENO;
  } else if (!destination.empty()) {
    fd = ::open(destination.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0)
      throw std::runtime_error(destination +
                               ": cannot open the access log ([global] access_log): " + std::strerror(errno));
  }
  const int current = access_fd.load();
  if (fd > STDERR_FILENO && current > STDERR_FILENO) {
    // File to file (every reload, also to reopen a rotated log): the new
    // file takes the current descriptor's number, so a worker writing right
    // now reaches the old file or the new one, never a closed descriptor.
    const int moved = ::dup3(fd, current, O_CLOEXEC);
    const int err = errno;
    ::close(fd);
    if (moved < 0)
      throw std::runtime_error(destination +
                               ": cannot switch the access log ([global] access_log): " + std::strerror(err));
    return;
  }
  const int old = access_fd.exchange(fd);
  if (old > STDERR_FILENO) {
    // No longer written to, but a worker may be writing to it right now:
    // point it at /dev/null rather than close it, so its number is not
    // reused under that write (one descriptor per switch away from a file).
    const int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null >= 0) {
      ::dup3(null, old, O_CLOEXEC);
      ::close(null);
    }
  }
}

bool access_enabled() { return access_fd.load(std::memory_order_relaxed) >= 0; }

void access(boost::json::object fields) {
  const int fd = access_fd.load(std::memory_order_relaxed);
  if (fd < 0) return;
  boost::json::object line;
  line["time"] = now_rfc3339();
  for (auto& kv : fields) line[kv.key()] = std::move(kv.value());
  write_line(fd, line);
}

}  // namespace gatehouse::proxy::log
