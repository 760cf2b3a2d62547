// An HTTP/2 server session fed raw frames from a client. Http2Session
// (proxy/l7/h2_session.cpp) lives on a TLS connection inside a worker with a
// config generation, so this target builds the nghttp2 server session the way
// Http2Session::start() does -- the same options (manual window updates,
// max_outbound_ack 1000, max_settings 32), the same SETTINGS and connection
// window -- with callbacks that keep the same per-stream state and answer
// every complete request with a small body. The client preface is sent
// first, as every real client does; the input is then read 4096 bytes at a
// time like Http2Session::reader(), with the writer draining in between.
// Keep in step with Http2Session::start().

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "tests/fuzz/fuzz_check.h"

using gatehouse::fuzz::expect;

namespace {

constexpr std::uint32_t kMaxConcurrentStreams = 100;
constexpr std::uint32_t kStreamWindow = 128 * 1024;
constexpr std::int32_t kConnectionWindow = 1024 * 1024;
constexpr std::size_t kMaxHeaderList = 64 * 1024;
constexpr std::size_t kSliceBytes = 4096;

struct Stream {
  std::size_t header_bytes = 0;
  std::string method, path, authority;
  std::string body;
  std::string response = "hello from gatehouse\n";
  std::size_t sent = 0;
  bool answered = false;
};

struct Session {
  nghttp2_session* session = nullptr;
  std::map<std::int32_t, Stream> streams;
};

ssize_t read_response(nghttp2_session*, std::int32_t, std::uint8_t* buf, std::size_t length, std::uint32_t* flags,
                      nghttp2_data_source* source, void*) {
  auto* s = static_cast<Stream*>(source->ptr);
  const std::size_t n = std::min(length, s->response.size() - s->sent);
  std::memcpy(buf, s->response.data() + s->sent, n);
  s->sent += n;
  if (s->sent == s->response.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

void answer(Session& self, std::int32_t id, Stream& s) {
  if (s.answered) return;
  s.answered = true;
  const std::string status = s.header_bytes > kMaxHeaderList ? "431" : "200";
  nghttp2_nv nv[] = {
      {reinterpret_cast<std::uint8_t*>(const_cast<char*>(":status")),
       reinterpret_cast<std::uint8_t*>(const_cast<char*>(status.data())), 7, status.size(), NGHTTP2_NV_FLAG_NONE},
  };
  nghttp2_data_provider provider{};
  provider.source.ptr = &s;
  provider.read_callback = &read_response;
  nghttp2_submit_response(self.session, id, nv, 1, &provider);
}

int on_begin_headers(nghttp2_session*, const nghttp2_frame* frame, void* user) {
  auto* self = static_cast<Session*>(user);
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST)
    self->streams[frame->hd.stream_id];
  return 0;
}

int on_header(nghttp2_session*, const nghttp2_frame* frame, const std::uint8_t* name, std::size_t namelen,
              const std::uint8_t* value, std::size_t valuelen, std::uint8_t, void* user) {
  auto* self = static_cast<Session*>(user);
  auto it = self->streams.find(frame->hd.stream_id);
  if (it == self->streams.end()) return 0;
  Stream& s = it->second;
  s.header_bytes += namelen + valuelen + 32;
  if (s.header_bytes > kMaxHeaderList) return 0;
  const std::string_view n(reinterpret_cast<const char*>(name), namelen);
  const std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  if (n == ":method") s.method = v;
  else if (n == ":path") s.path = v;
  else if (n == ":authority") s.authority = v;
  return 0;
}

int on_frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* user) {
  auto* self = static_cast<Session*>(user);
  if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
    auto it = self->streams.find(frame->hd.stream_id);
    if (it != self->streams.end()) answer(*self, it->first, it->second);
  }
  return 0;
}

int on_data_chunk(nghttp2_session* session, std::uint8_t, std::int32_t id, const std::uint8_t* data, std::size_t len,
                  void* user) {
  auto* self = static_cast<Session*>(user);
  auto it = self->streams.find(id);
  if (it != self->streams.end() && it->second.body.size() < 64 * 1024)
    it->second.body.append(reinterpret_cast<const char*>(data), len);
  // Gatehouse gives the window back once the backend took the bytes; here at once.
  nghttp2_session_consume(session, id, len);
  return 0;
}

int on_stream_close(nghttp2_session*, std::int32_t id, std::uint32_t, void* user) {
  static_cast<Session*>(user)->streams.erase(id);
  return 0;
}

int on_invalid_header(nghttp2_session*, const nghttp2_frame*, const std::uint8_t*, std::size_t, const std::uint8_t*,
                      std::size_t, std::uint8_t, void*) {
  return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // the stream is refused, as in Http2Session
}

bool start(Session& self) {
  nghttp2_session_callbacks* callbacks = nullptr;
  nghttp2_session_callbacks_new(&callbacks);
  nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, &on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(callbacks, &on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, &on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, &on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, &on_stream_close);
  nghttp2_session_callbacks_set_on_invalid_header_callback(callbacks, &on_invalid_header);
  nghttp2_option* option = nullptr;
  nghttp2_option_new(&option);
  nghttp2_option_set_no_auto_window_update(option, 1);
  nghttp2_option_set_max_outbound_ack(option, 1000);
  nghttp2_option_set_max_settings(option, 32);
  const int rv = nghttp2_session_server_new2(&self.session, callbacks, &self, option);
  nghttp2_option_del(option);
  nghttp2_session_callbacks_del(callbacks);
  if (rv != 0) return false;
  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, kMaxConcurrentStreams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, kStreamWindow},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<std::uint32_t>(kMaxHeaderList)},
  };
  nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, settings, std::size(settings));
  nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0, kConnectionWindow);
  return true;
}

// What the writer sends; false once the session has nothing more to do.
bool drain(Session& self) {
  for (int frames = 0; frames < 4096; ++frames) {
    const std::uint8_t* out = nullptr;
    const ssize_t n = nghttp2_session_mem_send(self.session, &out);
    if (n < 0) return false;
    if (n == 0) break;
  }
  return nghttp2_session_want_read(self.session) != 0 || nghttp2_session_want_write(self.session) != 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Session self;
  expect(start(self), "the session starts");
  static constexpr std::string_view preface = NGHTTP2_CLIENT_MAGIC;
  expect(nghttp2_session_mem_recv(self.session, reinterpret_cast<const std::uint8_t*>(preface.data()),
                                  preface.size()) == static_cast<ssize_t>(preface.size()),
         "the client preface is read");
  for (std::size_t at = 0; at < size;) {
    const std::size_t piece = std::min(kSliceBytes, size - at);
    const ssize_t rv = nghttp2_session_mem_recv(self.session, data + at, piece);
    if (rv < 0) break;
    expect(static_cast<std::size_t>(rv) == piece, "nghttp2 reads a whole slice");
    at += piece;
    if (!drain(self)) break;
  }
  drain(self);
  nghttp2_session_del(self.session);
  return 0;
}
