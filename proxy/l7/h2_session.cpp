// HTTP/2 front end on nghttp2: one coroutine reads frames, one writes what
// nghttp2 has queued, and each request stream is its own coroutine that
// forwards over an HTTP/1.1 backend connection. Flow control is manual: a
// request body's window is given back only once the backend has taken the
// bytes, and a response's data waits in a small per-stream buffer that the
// writer drains as the client's window allows.
//
// A stream costs little: its object is recycled within the connection, its
// coroutine is cancelled through a signal bound to it rather than raced
// against a watcher, and its idle guard gets a watcher only once the stream
// has lived as long as the shortest idle timeout its exchange could have.
//
// Debian's nghttp2 1.52 predates the upstream fixes for Rapid Reset
// (CVE-2023-44487) and the CONTINUATION flood (CVE-2024-28182), so both are
// bounded here: client stream resets draw from a token bucket, and a header
// block may span only so many CONTINUATION frames and bytes. The rest of the
// 2019 denial-of-service catalogue is bounded the same way: PING, SETTINGS
// and PRIORITY floods, resets the client provokes, malformed (zero-length)
// header names, runs of empty frames, and header blocks that decode to far
// more than they weigh (HPACK bombs). A connection over any budget gets
// GOAWAY(ENHANCE_YOUR_CALM), an h2_abuse event naming the pattern, and is
// closed. And whatever a connection sends, the reader yields to the worker's
// other connections after a bounded amount of work (frames, decoded header
// bytes, streams opened), so one connection cannot starve the rest.

#include <nghttp2/nghttp2.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/string.hpp>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <exception>
#include <vector>

#include "proxy/l7/h2_request.h"
#include "proxy/l7/l7_session.h"
#include "proxy/runtime/connection.h"
#include "proxy/runtime/log.h"

namespace gatehouse::proxy::l7 {

using namespace asio::experimental::awaitable_operators;

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

constexpr std::uint32_t kMaxConcurrentStreams = 100;
constexpr std::uint32_t kStreamWindow = 128 * 1024;
constexpr std::int32_t kConnectionWindow = 1024 * 1024;
constexpr std::size_t kMaxHeaderList = 64 * 1024;      // counted as RFC 9113 6.5.2: name + value + 32
constexpr std::size_t kResponseHighWater = 64 * 1024;  // per stream, waiting for the client's window
// Per header block; below nghttp2's own limit (8 in Debian's patched 1.52),
// so the abuser is told why (GOAWAY ENHANCE_YOUR_CALM) before nghttp2 drops
// the connection without a word.
constexpr int kMaxContinuations = 6;
constexpr std::size_t kMaxHeaderBlock = 256 * 1024;  // encoded bytes of one header block
constexpr double kResetBurst = 200;                  // client resets allowed at once
constexpr double kResetRate = 100;                   // and per second after that

// A token bucket: `burst` events at once, then `rate` per second.
class Budget {
 public:
  Budget(double burst, double rate) : burst_(burst), rate_(rate), tokens_(burst) {}
  // false once the events come faster than the budget allows.
  bool spend(Clock::time_point now) {
    tokens_ = std::min(burst_, tokens_ + std::chrono::duration<double>(now - refill_).count() * rate_);
    refill_ = now;
    tokens_ -= 1;
    return tokens_ >= 0;
  }
  std::string describe() const {
    return "more than " + std::to_string(static_cast<int>(burst_)) + " at once or " +
           std::to_string(static_cast<int>(rate_)) + "/s";
  }

 private:
  double burst_;
  double rate_;
  double tokens_;
  Clock::time_point refill_ = Clock::now();
};

// Budgets of the rest of the catalogue. A browser sends a handful of
// PING/SETTINGS frames per connection and a few PRIORITY frames per page.
constexpr double kPingBurst = 50, kPingRate = 10;                     // CVE-2019-9512
constexpr double kSettingsBurst = 20, kSettingsRate = 5;              // CVE-2019-9515
constexpr double kPriorityBurst = 1000, kPriorityRate = 500;          // CVE-2019-9513
constexpr double kServerResetBurst = 200, kServerResetRate = 100;     // CVE-2019-9514: resets the client provokes
constexpr double kInvalidHeaderBurst = 100, kInvalidHeaderRate = 20;  // CVE-2019-9516
constexpr int kMaxEmptyFrames = 16;                                   // in a row without END_STREAM (CVE-2019-9518)
// A header list over its limit that decodes to this many times the bytes
// its block weighed is a bomb (CVE-2016-6581), not a big request: literal
// fields decode to about their size, Huffman-coded ones to under twice it.
constexpr std::size_t kBombRatio = 8;
// Work one connection may do before the reader lets other connections run.
constexpr std::size_t kSliceBytes = 4096;  // fed to nghttp2 at a time
constexpr std::size_t kYieldFrames = 256;
constexpr std::size_t kYieldHeaderBytes = 256 * 1024;
constexpr std::size_t kYieldStreams = 32;
// Finished streams a connection keeps for its next ones, and the buffer
// capacity a kept stream may hold on to.
constexpr std::size_t kSpareStreams = 16;
constexpr std::size_t kSpareBuffer = 4096;

void wait_forever(asio::steady_timer& timer) { timer.expires_at(Clock::time_point::max()); }

class Http2Session;

class Stream final : public Downstream {
 public:
  Stream(Http2Session& session, const asio::any_io_executor& executor)
      : session_(session), signal_(executor), watchdog_(executor) {}

  // Makes a new or recycled stream the fresh stream `id`.
  void open(std::int32_t id, const ConnectionHandle& handle);

  asio::awaitable<error_code> read_body(std::string& out, bool& done) override;
  const Fields& request_trailers() const override { return request_.trailers(); }
  void interim(const ResponseHead& head) override;
  void head(const ResponseHead& head, bool has_body) override;
  void body(std::string_view data) override;
  void end(const Fields& trailers) override;
  asio::awaitable<error_code> flush() override;
  void abort() override;
  void cancel() override {
    cancelled_ = true;
    signal_.cancel();
  }

  // The client reset the stream, nghttp2 closed it, or the connection
  // ends: the exchange is cancelled at once, backend request included.
  void close() {
    closed_ = true;
    signal_.cancel();
    if (serving_) stop_serving_.emit(asio::cancellation_type::terminal);
    if (watching_) guard_->stop();
  }
  void wake() { signal_.cancel(); }

  static ssize_t read_data(nghttp2_session*, std::int32_t, std::uint8_t* buf, std::size_t length, std::uint32_t* flags,
                           nghttp2_data_source* source, void*);

  Http2Session& session_;
  std::int32_t id_ = 0;
  asio::steady_timer signal_;    // body arrived, window drained, or closed
  asio::steady_timer watchdog_;  // the exchange's idle timer, which guard_ runs
  // Watches the exchange for the route's idle_timeout; new for each stream
  // (a stopped guard stays stopped). Its watch() runs from watch_at_ on.
  std::optional<IdleGuard> guard_;
  asio::cancellation_signal stop_serving_;  // bound to serve_stream's co_spawn

  // Who still needs the object: the table of open streams, serve_stream and
  // the guard's watch(). At none, it goes back to the connection's spares.
  int holders_ = 0;
  bool serving_ = false;
  bool watching_ = false;
  // The connection's queue of served streams whose guard is not watched yet,
  // in the order (and so by the time) they started.
  Clock::time_point watch_at_;
  Stream* queue_prev_ = nullptr;
  Stream* queue_next_ = nullptr;
  bool queued_ = false;

  Http2RequestHead request_;
  std::size_t header_bytes_ = 0;
  std::size_t field_count_ = 0;
  bool headers_done_ = false;
  bool bad_ = false;

  std::string body_in_;
  bool body_end_ = false;

  std::string out_;
  std::size_t out_offset_ = 0;
  bool out_end_ = false;
  Fields out_trailers_;
  bool deferred_ = false;
  bool unflushed_ = false;  // body bytes queued since the last flush()
  bool response_started_ = false;
  bool closed_ = false;
  bool cancelled_ = false;
};

class Http2Session final : IdleExpiry {
 public:
  explicit Http2Session(ClientConnection& connection)
      : connection_(connection),
        executor_(connection.stream.socket().get_executor()),
        write_signal_(executor_),
        done_signal_(executor_),
        watch_timer_(executor_),
        guard_(connection.watchdog, connection.handle),
        watch_delay_(shortest_idle(connection)) {}
  ~Http2Session() {
    if (session_ != nullptr) nghttp2_session_del(session_);
  }

  asio::awaitable<void> run();

  nghttp2_session* session() const { return session_; }
  void want_write() { write_signal_.cancel(); }
  void touch() { last_activity_ = Clock::now(); }
  // Completions of a stream's exchange and of its guard's watcher.
  void served(Stream& s);
  void watched(Stream& s);

 private:
  friend class Stream;

  bool start();
  asio::awaitable<void> reader();
  asio::awaitable<void> writer();
  // The connection's idle guard expired: idle with no stream open, a drain
  // (GOAWAY in two steps) or the drain's hard end.
  void expire(bool drained) override;
  void arm_idle() { guard_.arm(&last_activity_, connection_.listener.config->idle_timeout, OnDrain::notify, this); }
  // Ends the session now: the writer stops, and the reader with it.
  void close_now() {
    closing_ = true;
    connection_.stream.abort();
    want_write();
  }
  // The shortest idle timeout an exchange of this connection can have: no
  // stream's guard can expire sooner after the stream starts.
  static Clock::duration shortest_idle(const ClientConnection& connection);

  // Streams: the table of open ones (by id), and the recycling of objects.
  Stream& add_stream(std::int32_t id);
  void remove_stream(std::int32_t id);
  Stream* find(std::int32_t id);
  void release(Stream& s);
  // A stream's exchange: spawned once its header block has ended.
  void spawn(Stream& s);
  asio::awaitable<void> serve_stream(Stream& s);
  void finished_one() {
    if (--outstanding_ == 0) done_signal_.cancel();
  }
  // The guards of long-lived streams, watched from watch_at_ on.
  void queue_watch(Stream& s);
  void unqueue_watch(Stream& s);
  void arm_watch_timer();
  void on_watch_timer();

  void abuse(std::string reason);

  static int on_begin_frame(nghttp2_session*, const nghttp2_frame_hd* hd, void* user);
  static int on_begin_headers(nghttp2_session*, const nghttp2_frame* frame, void* user);
  static int on_header(nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name, std::size_t namelen,
                       const std::uint8_t* value, std::size_t valuelen, std::uint8_t flags, void* user);
  static int on_frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* user);
  static int on_data_chunk(nghttp2_session*, std::uint8_t flags, std::int32_t stream_id, const std::uint8_t* data,
                           std::size_t len, void* user);
  static int on_stream_close(nghttp2_session*, std::int32_t stream_id, std::uint32_t error_code, void* user);
  static int on_invalid_header(nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name,
                               std::size_t namelen, const std::uint8_t* value, std::size_t valuelen, std::uint8_t flags,
                               void* user);
  static int on_frame_send(nghttp2_session*, const nghttp2_frame* frame, void* user);
  // Spends one event of `budget`; over it, the connection ends as `pattern`.
  bool within(Budget& budget, const char* pattern, const char* what);

  ClientConnection& connection_;
  asio::any_io_executor executor_;
  nghttp2_session* session_ = nullptr;
  std::vector<std::pair<std::int32_t, Stream*>> streams_;  // open, by id
  std::vector<std::unique_ptr<Stream>> owned_;             // every stream object of the connection
  std::vector<Stream*> spare_;                             // owned, free for the next stream
  asio::steady_timer write_signal_;
  asio::steady_timer done_signal_;
  asio::steady_timer watch_timer_;  // when the first queued stream's guard is due a watcher
  IdleGuard guard_;                 // on the connection's watchdog timer, which a drain pokes
  const Clock::duration watch_delay_;
  Stream* watch_head_ = nullptr;
  Stream* watch_tail_ = nullptr;
  bool watch_timer_armed_ = false;
  bool stopping_ = false;  // run() is ending: no more watchers
  Clock::time_point last_activity_ = Clock::now();
  std::size_t running_ = 0;      // streams being served
  std::size_t outstanding_ = 0;  // completions still to come: exchanges, watchers, watch_timer_
  bool reading_done_ = false;
  bool terminated_ = false;
  bool closing_ = false;      // the writer ends
  bool notice_sent_ = false;  // the first, graceful GOAWAY of a drain
  Clock::time_point notice_at_;
  bool goaway_sent_ = false;
  // CONTINUATION accounting of the header block being received.
  int continuations_ = 0;
  std::size_t block_bytes_ = 0;
  Budget client_resets_{kResetBurst, kResetRate};  // Rapid Reset
  Budget pings_{kPingBurst, kPingRate};
  Budget settings_{kSettingsBurst, kSettingsRate};
  Budget priorities_{kPriorityBurst, kPriorityRate};
  Budget server_resets_{kServerResetBurst, kServerResetRate};
  Budget invalid_headers_{kInvalidHeaderBurst, kInvalidHeaderRate};
  int empty_frames_ = 0;
  // Work since the reader last yielded.
  std::size_t frames_since_yield_ = 0;
  std::size_t header_bytes_since_yield_ = 0;
  std::size_t streams_since_yield_ = 0;
};

// --- Stream -------------------------------------------------------------

namespace {

// Empty for reuse; a big buffer is let go rather than kept by an idle stream.
void reuse(std::string& buffer) {
  if (buffer.capacity() > kSpareBuffer) std::string().swap(buffer);
  else buffer.clear();
}

}  // namespace

void Stream::open(std::int32_t id, const ConnectionHandle& handle) {
  id_ = id;
  guard_.emplace(watchdog_, handle);
  request_.clear();
  header_bytes_ = 0;
  field_count_ = 0;
  headers_done_ = false;
  bad_ = false;
  reuse(body_in_);
  body_end_ = false;
  reuse(out_);
  out_offset_ = 0;
  out_end_ = false;
  out_trailers_.clear();
  deferred_ = false;
  unflushed_ = false;
  response_started_ = false;
  closed_ = false;
  cancelled_ = false;
}

asio::awaitable<error_code> Stream::read_body(std::string& out, bool& done) {
  for (;;) {
    if (cancelled_) co_return asio::error::operation_aborted;
    if (!body_in_.empty()) {
      out.append(body_in_);
      if (!closed_) {
        nghttp2_session_consume(session_.session(), id_, body_in_.size());
        session_.want_write();  // WINDOW_UPDATE
      }
      body_in_.clear();
      done = body_end_;
      co_return error_code{};
    }
    if (body_end_) {
      done = true;
      co_return error_code{};
    }
    if (closed_) co_return asio::error::connection_reset;
    wait_forever(signal_);
    co_await signal_.async_wait(use_tuple);
  }
}

void Stream::interim(const ResponseHead& head) {
  if (closed_ || head.status != 100) return;
  const std::string status = "100";
  nghttp2_nv nv{reinterpret_cast<std::uint8_t*>(const_cast<char*>(":status")),
                reinterpret_cast<std::uint8_t*>(const_cast<char*>(status.data())), 7, status.size(),
                NGHTTP2_NV_FLAG_NONE};
  nghttp2_submit_headers(session_.session(), NGHTTP2_FLAG_NONE, id_, nullptr, &nv, 1, nullptr);
  session_.want_write();
}

namespace {

// A header list for nghttp2: names lower-cased into one buffer, values
// pointing at the fields themselves (nghttp2 copies both before its submit
// call returns). The buffers are the worker thread's, reused: one list is
// built and submitted at a time, and nothing allocates per response.
class NvList {
 public:
  NvList() {
    nva_.clear();
    names_.clear();
  }
  NvList(const NvList&) = delete;
  NvList& operator=(const NvList&) = delete;

  void add(std::string_view name, std::string_view value) {
    nva_.push_back({reinterpret_cast<std::uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<std::uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
                    NGHTTP2_NV_FLAG_NONE});
  }
  // Once per list: the names buffer must not move after it is pointed at.
  void add_fields(const Fields& fields) {
    std::size_t bytes = 0;
    for (const auto& f : fields) bytes += f.name.size();
    names_.resize(bytes);
    char* at = names_.data();
    for (const auto& f : fields) {
      char* name = at;
      for (char c : f.name) *at++ = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
      add(std::string_view(name, f.name.size()), f.value);
    }
  }
  const nghttp2_nv* data() const { return nva_.data(); }
  std::size_t size() const { return nva_.size(); }

 private:
  static thread_local std::vector<nghttp2_nv> nva_;
  static thread_local std::string names_;
};

thread_local std::vector<nghttp2_nv> NvList::nva_;
thread_local std::string NvList::names_;

// A number as decimal digits in `buffer`.
std::string_view decimal(char (&buffer)[24], std::uint64_t n) {
  const auto end = std::to_chars(buffer, buffer + sizeof buffer, n).ptr;
  return std::string_view(buffer, static_cast<std::size_t>(end - buffer));
}

}  // namespace

void Stream::head(const ResponseHead& head, bool has_body) {
  if (closed_) return;
  char status[24];
  char length[24];
  NvList nva;
  nva.add(":status", decimal(status, static_cast<std::uint64_t>(head.status)));
  nva.add_fields(head.fields);
  if (head.content_length) nva.add("content-length", decimal(length, *head.content_length));
  response_started_ = true;
  nghttp2_data_provider provider{};
  provider.source.ptr = this;
  provider.read_callback = &Stream::read_data;
  nghttp2_submit_response(session_.session(), id_, nva.data(), nva.size(), has_body ? &provider : nullptr);
  session_.want_write();
}

void Stream::body(std::string_view data) {
  if (closed_) return;
  out_.append(data);
  unflushed_ = true;
  if (deferred_) {
    deferred_ = false;
    nghttp2_session_resume_data(session_.session(), id_);
  }
}

void Stream::end(const Fields& trailers) {
  if (closed_) return;
  out_end_ = true;
  out_trailers_ = trailers;
  if (deferred_) {
    deferred_ = false;
    nghttp2_session_resume_data(session_.session(), id_);
  }
  session_.want_write();
}

asio::awaitable<error_code> Stream::flush() {
  // Heads, ends and resets wake the writer themselves; body bytes wait for
  // this, so that a response's pieces go out in one write.
  if (std::exchange(unflushed_, false)) session_.want_write();
  while (!closed_ && !cancelled_ && out_.size() - out_offset_ > kResponseHighWater) {
    wait_forever(signal_);
    co_await signal_.async_wait(use_tuple);
  }
  if (cancelled_ && !closed_) co_return asio::error::operation_aborted;
  co_return closed_ && !out_end_ ? error_code(asio::error::connection_reset) : error_code{};
}

void Stream::abort() {
  if (closed_) return;
  nghttp2_submit_rst_stream(session_.session(), NGHTTP2_FLAG_NONE, id_, NGHTTP2_INTERNAL_ERROR);
  session_.want_write();
}

ssize_t Stream::read_data(nghttp2_session* session, std::int32_t id, std::uint8_t* buf, std::size_t length,
                          std::uint32_t* flags, nghttp2_data_source* source, void*) {
  auto* self = static_cast<Stream*>(source->ptr);
  const std::size_t available = self->out_.size() - self->out_offset_;
  const std::size_t n = std::min(available, length);
  if (n > 0) {
    std::memcpy(buf, self->out_.data() + self->out_offset_, n);
    self->out_offset_ += n;
    if (self->out_offset_ == self->out_.size()) {
      self->out_.clear();
      self->out_offset_ = 0;
    }
    self->wake();  // room for more
  }
  if (self->out_offset_ == 0 && self->out_.empty() && self->out_end_) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (!self->out_trailers_.empty()) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      NvList nva;
      nva.add_fields(self->out_trailers_);
      nghttp2_submit_trailer(session, id, nva.data(), nva.size());
    }
    return static_cast<ssize_t>(n);
  }
  if (n == 0) {
    self->deferred_ = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  return static_cast<ssize_t>(n);
}

// --- Session ------------------------------------------------------------

bool Http2Session::start() {
  nghttp2_session_callbacks* callbacks = nullptr;
  nghttp2_session_callbacks_new(&callbacks);
  nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks, &Http2Session::on_begin_frame);
  nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, &Http2Session::on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, &Http2Session::on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, &Http2Session::on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, &Http2Session::on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, &Http2Session::on_stream_close);
  nghttp2_session_callbacks_set_on_invalid_header_callback(callbacks, &Http2Session::on_invalid_header);
  nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, &Http2Session::on_frame_send);
  nghttp2_option* option = nullptr;
  nghttp2_option_new(&option);
  nghttp2_option_set_no_auto_window_update(option, 1);
  nghttp2_option_set_max_outbound_ack(option, 1000);
  nghttp2_option_set_max_settings(option, 32);
  const int rv = nghttp2_session_server_new2(&session_, callbacks, this, option);
  nghttp2_option_del(option);
  nghttp2_session_callbacks_del(callbacks);
  if (rv != 0) return false;
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, kMaxConcurrentStreams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, kStreamWindow},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<std::uint32_t>(kMaxHeaderList)},
  };
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings));
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, kConnectionWindow);
  return true;
}

void Http2Session::abuse(std::string reason) {
  if (terminated_) return;
  terminated_ = true;
  log::warning(
      "h2_abuse",
      {{"listener", connection_.listener.config->name}, {"client", connection_.client_text}, {"reason", reason}});
  nghttp2_session_terminate_session(session_, NGHTTP2_ENHANCE_YOUR_CALM);
  want_write();
}

bool Http2Session::within(Budget& budget, const char* pattern, const char* what) {
  if (budget.spend(Clock::now())) return true;
  abuse(std::string(pattern) + ": the client sent " + what + " " + budget.describe());
  return false;
}

int Http2Session::on_begin_frame(nghttp2_session*, const nghttp2_frame_hd* hd, void* user) {
  auto* self = static_cast<Http2Session*>(user);
  ++self->frames_since_yield_;
  switch (hd->type) {
    case NGHTTP2_PING:
      if ((hd->flags & NGHTTP2_FLAG_ACK) == 0 && !self->within(self->pings_, "ping_flood", "PING frames"))
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      break;
    case NGHTTP2_SETTINGS:
      if ((hd->flags & NGHTTP2_FLAG_ACK) == 0 && !self->within(self->settings_, "settings_flood", "SETTINGS frames"))
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      break;
    case NGHTTP2_PRIORITY:
      if (!self->within(self->priorities_, "priority_flood", "PRIORITY frames")) return NGHTTP2_ERR_CALLBACK_FAILURE;
      break;
    default: break;
  }
  // Frames that carry nothing and end nothing (CVE-2019-9518). DATA is
  // judged when its padding is known (on_frame_recv).
  if (hd->type == NGHTTP2_CONTINUATION || hd->type == NGHTTP2_HEADERS) {
    const bool ends = (hd->flags & (NGHTTP2_FLAG_END_STREAM | NGHTTP2_FLAG_END_HEADERS)) != 0;
    if (hd->length == 0 && !ends) {
      if (++self->empty_frames_ > kMaxEmptyFrames) {
        self->abuse("empty_frames: " + std::to_string(kMaxEmptyFrames) + " empty HEADERS/CONTINUATION frames in a row");
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
    } else if (hd->length > 0) {
      self->empty_frames_ = 0;
    }
  }
  if (hd->type == NGHTTP2_HEADERS) {
    self->continuations_ = 0;
    self->block_bytes_ = hd->length;
  } else if (hd->type == NGHTTP2_CONTINUATION) {
    ++self->continuations_;
    self->block_bytes_ += hd->length;
    if (self->continuations_ > kMaxContinuations || self->block_bytes_ > kMaxHeaderBlock) {
      self->abuse("continuation_flood: a header block ran over " + std::to_string(kMaxContinuations) +
                  " CONTINUATION frames or " + std::to_string(kMaxHeaderBlock / 1024) + " KiB");
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
  }
  return 0;
}

int Http2Session::on_begin_headers(nghttp2_session*, const nghttp2_frame* frame, void* user) {
  auto* self = static_cast<Http2Session*>(user);
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  ++self->streams_since_yield_;
  self->add_stream(frame->hd.stream_id);
  return 0;
}

int Http2Session::on_header(nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name_data,
                            std::size_t namelen, const std::uint8_t* value_data, std::size_t valuelen, std::uint8_t,
                            void* user) {
  auto* self = static_cast<Http2Session*>(user);
  Stream* s = self->find(frame->hd.stream_id);
  if (s == nullptr) return 0;
  s->header_bytes_ += namelen + valuelen + 32;
  self->header_bytes_since_yield_ += namelen + valuelen;
  if (s->header_bytes_ > kMaxHeaderList || ++s->field_count_ > kMaxHeaderFields) {
    // Counted, never kept: the stream is refused when its block ends. Until
    // then the count goes on, so that a list decoding to far more than its
    // block weighed shows itself as an HPACK bomb, which ends the connection.
    s->bad_ = true;
    if (s->header_bytes_ > kBombRatio * self->block_bytes_) {
      self->abuse("hpack_bomb: a header block of " + std::to_string(self->block_bytes_) + " bytes decoded to over " +
                  std::to_string(s->header_bytes_ / 1024) + " KiB");
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
  }
  if (s->bad_) return 0;
  const std::string_view name(reinterpret_cast<const char*>(name_data), namelen);
  const std::string_view value(reinterpret_cast<const char*>(value_data), valuelen);
  if (s->headers_done_) {
    s->request_.add_trailer(name, value);
    return 0;
  }
  // A malformed request refuses its stream (RST_STREAM PROTOCOL_ERROR).
  return s->request_.add(name, value) ? 0 : NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

int Http2Session::on_frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* user) {
  auto* self = static_cast<Http2Session*>(user);
  self->touch();
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
      Stream* found = self->find(frame->hd.stream_id);
      if (found == nullptr) break;
      Stream& s = *found;
      const bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
      if (s.bad_) {
        // Over the header list limits: refused; the backend never sees it.
        nghttp2_submit_rst_stream(self->session_, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_INTERNAL_ERROR);
        self->want_write();
        break;
      }
      if (!s.headers_done_) {
        s.headers_done_ = true;
        s.body_end_ = end_stream;
        self->spawn(s);
      } else if (end_stream) {
        s.body_end_ = true;
        s.wake();
      }
      break;
    }
    case NGHTTP2_DATA:
      if (frame->hd.length <= frame->data.padlen && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0) {
        if (++self->empty_frames_ > kMaxEmptyFrames) {
          self->abuse("empty_frames: " + std::to_string(kMaxEmptyFrames) + " empty DATA frames in a row");
          return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
      } else {
        self->empty_frames_ = 0;
      }
      if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
        if (Stream* s = self->find(frame->hd.stream_id)) {
          s->body_end_ = true;
          s->wake();
        }
      }
      break;
    case NGHTTP2_RST_STREAM:
      if (!self->within(self->client_resets_, "rapid_reset", "stream resets")) return NGHTTP2_ERR_CALLBACK_FAILURE;
      break;
    default: break;
  }
  return 0;
}

int Http2Session::on_data_chunk(nghttp2_session* session, std::uint8_t, std::int32_t stream_id,
                                const std::uint8_t* data, std::size_t len, void* user) {
  auto* self = static_cast<Http2Session*>(user);
  Stream* s = self->find(stream_id);
  if (s == nullptr || s->closed_) {
    nghttp2_session_consume(session, stream_id, len);
    return 0;
  }
  s->body_in_.append(reinterpret_cast<const char*>(data), len);
  s->wake();
  return 0;
}

int Http2Session::on_invalid_header(nghttp2_session*, const nghttp2_frame*, const std::uint8_t*, std::size_t,
                                    const std::uint8_t*, std::size_t, std::uint8_t, void* user) {
  // A zero-length or malformed field name (CVE-2019-9516): the stream is
  // refused; a stream of them ends the connection.
  auto* self = static_cast<Http2Session*>(user);
  if (!self->within(self->invalid_headers_, "invalid_headers", "header fields with empty or malformed names"))
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

int Http2Session::on_frame_send(nghttp2_session*, const nghttp2_frame* frame, void* user) {
  // Resets the client makes Gatehouse send: each costs a frame the client
  // may never read (CVE-2019-9514). Resets that end an answered upload
  // early are not the client's doing.
  auto* self = static_cast<Http2Session*>(user);
  // (Not a callback failure: the GOAWAY that abuse() queues must still go out.)
  if (frame->hd.type == NGHTTP2_RST_STREAM && frame->rst_stream.error_code != NGHTTP2_NO_ERROR &&
      frame->rst_stream.error_code != NGHTTP2_HTTP_1_1_REQUIRED && !self->terminated_)
    self->within(self->server_resets_, "reset_flood", "streams that had to be reset");
  return 0;
}

int Http2Session::on_stream_close(nghttp2_session*, std::int32_t stream_id, std::uint32_t, void* user) {
  static_cast<Http2Session*>(user)->remove_stream(stream_id);
  return 0;
}

// --- Stream bookkeeping -------------------------------------------------

Clock::duration Http2Session::shortest_idle(const ClientConnection& connection) {
  auto shortest = Clock::duration(connection.listener.config->idle_timeout);
  for (const conf::Route& route : connection.generation.config().routes) {
    if (route.idle_timeout) shortest = std::min(shortest, Clock::duration(*route.idle_timeout));
  }
  return shortest;
}

Stream& Http2Session::add_stream(std::int32_t id) {
  remove_stream(id);  // (nghttp2 never opens an id twice)
  Stream* s = nullptr;
  if (!spare_.empty()) {
    s = spare_.back();
    spare_.pop_back();
  } else {
    owned_.push_back(std::make_unique<Stream>(*this, executor_));
    s = owned_.back().get();
  }
  s->open(id, connection_.handle);
  s->holders_ = 1;  // the table
  // Client stream ids only grow: the new one almost always goes last.
  auto at = streams_.end();
  if (!streams_.empty() && streams_.back().first > id)
    at = std::lower_bound(streams_.begin(), streams_.end(), id,
                          [](const auto& e, std::int32_t v) { return e.first < v; });
  streams_.insert(at, {id, s});
  return *s;
}

Stream* Http2Session::find(std::int32_t id) {
  auto it =
      std::lower_bound(streams_.begin(), streams_.end(), id, [](const auto& e, std::int32_t v) { return e.first < v; });
  return it == streams_.end() || it->first != id ? nullptr : it->second;
}

void Http2Session::remove_stream(std::int32_t id) {
  auto it =
      std::lower_bound(streams_.begin(), streams_.end(), id, [](const auto& e, std::int32_t v) { return e.first < v; });
  if (it == streams_.end() || it->first != id) return;
  Stream& s = *it->second;
  streams_.erase(it);
  s.close();
  release(s);
}

void Http2Session::release(Stream& s) {
  if (--s.holders_ > 0) return;
  if (spare_.size() < kSpareStreams) {
    spare_.push_back(&s);
    return;
  }
  auto it = std::find_if(owned_.begin(), owned_.end(), [&](const auto& p) { return p.get() == &s; });
  std::swap(*it, owned_.back());
  owned_.pop_back();
}

// Ends serve_stream's co_spawn: not a coroutine, and no frame of its own.
struct Served {
  Http2Session* session;
  Stream* stream;
  void operator()(std::exception_ptr) const;
};

struct Watched {
  Http2Session* session;
  Stream* stream;
  void operator()(std::exception_ptr) const;
};

void Http2Session::spawn(Stream& s) {
  ++s.holders_;
  s.serving_ = true;
  ++running_;
  ++outstanding_;
  queue_watch(s);
  asio::co_spawn(executor_, serve_stream(s), asio::bind_cancellation_slot(s.stop_serving_.slot(), Served{this, &s}));
}

void Http2Session::served(Stream& s) {
  s.serving_ = false;  // (its slot's handler stays, for the next stream to reuse the memory)
  unqueue_watch(s);
  if (s.watching_) s.guard_->stop();
  --running_;
  release(s);
  finished_one();
}

void Http2Session::watched(Stream& s) {
  s.watching_ = false;
  release(s);
  finished_one();
}

void Served::operator()(std::exception_ptr) const { session->served(*stream); }
void Watched::operator()(std::exception_ptr) const { session->watched(*stream); }

void Http2Session::queue_watch(Stream& s) {
  s.watch_at_ = Clock::now() + watch_delay_;
  s.queued_ = true;
  s.queue_next_ = nullptr;
  s.queue_prev_ = watch_tail_;
  if (watch_tail_ != nullptr) watch_tail_->queue_next_ = &s;
  else watch_head_ = &s;
  watch_tail_ = &s;
  if (!watch_timer_armed_) arm_watch_timer();
}

void Http2Session::unqueue_watch(Stream& s) {
  if (!std::exchange(s.queued_, false)) return;
  if (s.queue_prev_ != nullptr) s.queue_prev_->queue_next_ = s.queue_next_;
  else watch_head_ = s.queue_next_;
  if (s.queue_next_ != nullptr) s.queue_next_->queue_prev_ = s.queue_prev_;
  else watch_tail_ = s.queue_prev_;
  s.queue_prev_ = s.queue_next_ = nullptr;
}

void Http2Session::arm_watch_timer() {
  watch_timer_armed_ = true;
  ++outstanding_;
  watch_timer_.expires_at(watch_head_->watch_at_);
  watch_timer_.async_wait([this](error_code) { on_watch_timer(); });
}

void Http2Session::on_watch_timer() {
  watch_timer_armed_ = false;
  const auto now = Clock::now();
  while (!stopping_ && watch_head_ != nullptr && watch_head_->watch_at_ <= now) {
    // The stream has lived as long as the shortest idle timeout: from now
    // on its guard is watched as the exchange armed it.
    Stream& s = *watch_head_;
    unqueue_watch(s);
    ++s.holders_;
    s.watching_ = true;
    ++outstanding_;
    asio::co_spawn(executor_, s.guard_->watch(), Watched{this, &s});
  }
  if (!stopping_ && watch_head_ != nullptr) arm_watch_timer();
  finished_one();
}

asio::awaitable<void> Http2Session::serve_stream(Stream& s) {
  const RequestHead& head = s.request_.finish(s.body_end_);
  const RequestIo io{.down = s, .guard = *s.guard_, .executor = executor_};
  const ExchangeResult result = co_await handle_request(connection_, head, io);
  if (s.closed_) co_return;
  if (result.http11_required) {
    // NTLM and Negotiate authenticate a connection, which streams of one
    // HTTP/2 connection cannot own: the client retries over HTTP/1.1
    // (RFC 9113 8.1; IIS answers so too), where the connection is bound.
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s.id_, NGHTTP2_HTTP_1_1_REQUIRED);
    want_write();
  } else if (result.response_done && !s.body_end_) {
    // Answered before the request body ended: stop the upload (RFC 9113 8.1).
    nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s.id_, NGHTTP2_NO_ERROR);
    want_write();
  }
}

asio::awaitable<void> Http2Session::reader() {
  TlsStream& tls = connection_.stream;
  while (!terminated_) {
    IoBuffer buffer;
    auto [ec, n] = co_await tls.read_some(buffer.data(), IoBuffer::size);
    if (ec) break;
    touch();
    bool failed = false;
    for (std::size_t at = 0; at < n && !terminated_;) {
      const std::size_t piece = std::min(kSliceBytes, n - at);
      const ssize_t rv =
          nghttp2_session_mem_recv(session_, reinterpret_cast<const std::uint8_t*>(buffer.data() + at), piece);
      if (rv < 0) {
        if (!terminated_)
          log::info("h2_protocol_error", {{"listener", connection_.listener.config->name},
                                          {"client", connection_.client_text},
                                          {"error", nghttp2_strerror(static_cast<int>(rv))}});
        failed = true;
        break;
      }
      at += piece;
      if (frames_since_yield_ > kYieldFrames || header_bytes_since_yield_ > kYieldHeaderBytes ||
          streams_since_yield_ > kYieldStreams) {
        // Enough for one turn: the worker's other connections go first.
        frames_since_yield_ = header_bytes_since_yield_ = streams_since_yield_ = 0;
        want_write();
        co_await asio::post(tls.socket().get_executor(), asio::use_awaitable);
      }
    }
    if (failed) break;
    want_write();
    if (nghttp2_session_want_read(session_) == 0 && nghttp2_session_want_write(session_) == 0) break;
  }
  reading_done_ = true;
  want_write();
}

asio::awaitable<void> Http2Session::writer() {
  TlsStream& tls = connection_.stream;
  std::string out;
  for (;;) {
    out.clear();
    std::size_t frames = 0;
    for (;;) {
      const std::uint8_t* data = nullptr;
      const ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n <= 0) break;
      out.append(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n));
      if (out.size() >= 64 * 1024 || ++frames >= kYieldFrames) break;
    }
    if (!out.empty()) {
      if (co_await tls.write_all(out.data(), out.size())) break;
      touch();
      // Many small frames (a client dribbling its window a byte at a
      // time): the worker's other connections go first.
      if (frames >= kYieldFrames) co_await asio::post(tls.socket().get_executor(), asio::use_awaitable);
      continue;
    }
    if (reading_done_ || terminated_ || closing_) break;
    if (nghttp2_session_want_read(session_) == 0 && nghttp2_session_want_write(session_) == 0) break;
    wait_forever(write_signal_);
    co_await write_signal_.async_wait(use_tuple);
  }
  // Ends the reader too.
  tls.abort();
}

void Http2Session::expire(bool drained) {
  if (drained) {  // drain_timeout: streams end with the connection
    close_now();
    return;
  }
  if (connection_.handle.draining) {
    // Graceful, in two steps (RFC 9113 6.8): a GOAWAY that still accepts
    // every stream, so that the client stops opening new ones, and after a
    // round trip's grace the final one naming the last stream taken.
    // Streams already open finish; none the client sent is dropped.
    if (!notice_sent_) {
      notice_sent_ = true;
      notice_at_ = Clock::now();
      nghttp2_submit_shutdown_notice(session_);
      want_write();
      guard_.arm(&notice_at_, kDrainQuiet, OnDrain::notify, this);
      return;
    }
    if (!goaway_sent_) {
      goaway_sent_ = true;
      nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(session_),
                            NGHTTP2_NO_ERROR, nullptr, 0);
      want_write();
    }
    // Once the last stream has been answered, nghttp2 wants neither to read
    // nor to write, and the writer ends the session.
    arm_idle();
    return;
  }
  // Streams have their own (route) idle timeouts; the connection's counts
  // only while none is open.
  if (running_ > 0) {
    touch();
    arm_idle();
    return;
  }
  close_now();
}

asio::awaitable<void> Http2Session::run() {
  if (!start()) co_return;
  arm_idle();
  co_await both_with_guard(reader(), writer(), guard_);
  guard_.disarm();
  stopping_ = true;
  watch_timer_.cancel();
  while (!streams_.empty()) remove_stream(streams_.back().first);
  while (outstanding_ > 0) {
    wait_forever(done_signal_);
    co_await done_signal_.async_wait(use_tuple);
  }
}

}  // namespace

asio::awaitable<void> serve_http2(ClientConnection& connection) {
  Http2Session session(connection);
  co_await session.run();
}

}  // namespace gatehouse::proxy::l7
