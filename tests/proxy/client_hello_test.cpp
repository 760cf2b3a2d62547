// The passthrough ClientHello peek, fed ClientHellos a real BoringSSL client
// wrote: whole, a byte at a time, in random splits, re-framed into several
// records (split at every point of the handshake header), over 16 KiB, at
// and over the size limits; and refused input, each with the reason the log
// shows: not TLS, SSLv2, bad records, malformed bodies, bad server names.

#include "proxy/l4/client_hello.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/bytestring.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace gatehouse::proxy {
namespace {

using ::testing::HasSubstr;
using Bytes = std::vector<std::uint8_t>;
using State = ClientHelloPeek::State;

Bytes as_bytes(std::string_view text) { return Bytes(text.begin(), text.end()); }

// ALPN wire format: each name u8-prefixed.
Bytes alpn_wire(const std::vector<std::string>& protocols) {
  Bytes out;
  for (const auto& p : protocols) {
    out.push_back(static_cast<std::uint8_t>(p.size()));
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

// What a BoringSSL client sends first: its ClientHello, in the records it
// chose.
Bytes client_hello(const char* server_name, const Bytes& alpn = {}) {
  bssl::UniquePtr<SSL_CTX> ctx(SSL_CTX_new(TLS_method()));
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx.get()));
  if (server_name != nullptr) {
    EXPECT_EQ(SSL_set_tlsext_host_name(ssl.get(), server_name), 1);
  }
  if (!alpn.empty()) {
    EXPECT_EQ(SSL_set_alpn_protos(ssl.get(), alpn.data(), alpn.size()), 0);
  }
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl.get(), in, out);  // owned by ssl from here
  SSL_set_connect_state(ssl.get());
  const int rv = SSL_do_handshake(ssl.get());
  EXPECT_EQ(SSL_get_error(ssl.get(), rv), SSL_ERROR_WANT_READ);
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
  EXPECT_EQ(BIO_mem_contents(out, &data, &size), 1);
  return Bytes(data, data + size);
}

// The record payloads of `records` joined: the handshake message(s).
Bytes handshake_message(const Bytes& records) {
  Bytes out;
  CBS cbs;
  CBS_init(&cbs, records.data(), records.size());
  while (CBS_len(&cbs) != 0) {
    std::uint8_t type = 0;
    std::uint16_t version = 0;
    CBS payload;
    EXPECT_TRUE(CBS_get_u8(&cbs, &type) && CBS_get_u16(&cbs, &version) && CBS_get_u16_length_prefixed(&cbs, &payload));
    out.insert(out.end(), CBS_data(&payload), CBS_data(&payload) + CBS_len(&payload));
  }
  return out;
}

Bytes record(std::uint8_t type, const Bytes& payload, std::uint16_t version = 0x0301) {
  Bytes out{type, static_cast<std::uint8_t>(version >> 8), static_cast<std::uint8_t>(version),
            static_cast<std::uint8_t>(payload.size() >> 8), static_cast<std::uint8_t>(payload.size())};
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

// `message` in handshake records whose payloads end at the offsets `cuts`
// (ascending); the last record takes the rest.
Bytes frame(const Bytes& message, const std::vector<std::size_t>& cuts = {}) {
  Bytes out;
  std::size_t from = 0;
  for (std::size_t to : cuts) {
    const Bytes r = record(22, Bytes(message.begin() + from, message.begin() + to));
    out.insert(out.end(), r.begin(), r.end());
    from = to;
  }
  const Bytes r = record(22, Bytes(message.begin() + from, message.end()));
  out.insert(out.end(), r.begin(), r.end());
  return out;
}

// Records of at most `size` bytes each, as a client fragments.
Bytes frame_by(const Bytes& message, std::size_t size) {
  std::vector<std::size_t> cuts;
  for (std::size_t at = size; at < message.size(); at += size) cuts.push_back(at);
  return frame(message, cuts);
}

// A ClientHello taken apart, to be changed and put back together: the
// fields before the extensions block, and the extensions.
struct Hello {
  Bytes head;
  std::vector<std::pair<std::uint16_t, Bytes>> extensions;
  bool extensions_block = true;

  Bytes* find(std::uint16_t type) {
    for (auto& [t, data] : extensions)
      if (t == type) return &data;
    return nullptr;
  }
};

Hello take_apart(const Bytes& message) {
  Hello hello;
  CBS cbs, body, field;
  CBS_init(&cbs, message.data(), message.size());
  std::uint8_t type = 0;
  EXPECT_TRUE(CBS_get_u8(&cbs, &type) && CBS_get_u24_length_prefixed(&cbs, &body) && CBS_len(&cbs) == 0);
  const std::uint8_t* start = CBS_data(&body);
  EXPECT_TRUE(CBS_skip(&body, 2 + 32) && CBS_get_u8_length_prefixed(&body, &field) &&
              CBS_get_u16_length_prefixed(&body, &field) && CBS_get_u8_length_prefixed(&body, &field));
  hello.head.assign(start, CBS_data(&body));
  CBS extensions;
  EXPECT_TRUE(CBS_get_u16_length_prefixed(&body, &extensions));
  while (CBS_len(&extensions) != 0) {
    std::uint16_t ext = 0;
    CBS data;
    EXPECT_TRUE(CBS_get_u16(&extensions, &ext) && CBS_get_u16_length_prefixed(&extensions, &data));
    hello.extensions.emplace_back(ext, Bytes(CBS_data(&data), CBS_data(&data) + CBS_len(&data)));
  }
  return hello;
}

void put_u16(Bytes& out, std::size_t v) {
  out.push_back(static_cast<std::uint8_t>(v >> 8));
  out.push_back(static_cast<std::uint8_t>(v));
}

// The handshake message (header included).
Bytes put_together(const Hello& hello) {
  Bytes body = hello.head;
  if (hello.extensions_block) {
    Bytes block;
    for (const auto& [type, data] : hello.extensions) {
      put_u16(block, type);
      put_u16(block, data.size());
      block.insert(block.end(), data.begin(), data.end());
    }
    put_u16(body, block.size());
    body.insert(body.end(), block.begin(), block.end());
  }
  Bytes message{1, static_cast<std::uint8_t>(body.size() >> 16), static_cast<std::uint8_t>(body.size() >> 8),
                static_cast<std::uint8_t>(body.size())};
  message.insert(message.end(), body.begin(), body.end());
  return message;
}

// A server_name extension carrying `names` (name_type, name).
Bytes server_name_extension(const std::vector<std::pair<std::uint8_t, std::string>>& names) {
  Bytes list;
  for (const auto& [type, name] : names) {
    list.push_back(type);
    put_u16(list, name.size());
    list.insert(list.end(), name.begin(), name.end());
  }
  Bytes data;
  put_u16(data, list.size());
  data.insert(data.end(), list.begin(), list.end());
  return data;
}

// Feeds `data` in pieces ending at `cuts` (ascending). With `waits`, the
// peek must ask for more until the last piece. Returns it after the last.
ClientHelloPeek feed_cut(const Bytes& data, const std::vector<std::size_t>& cuts, bool waits = true) {
  ClientHelloPeek peek;
  std::size_t from = 0;
  for (std::size_t to : cuts) {
    const State state = peek.feed({data.data() + from, to - from});
    if (waits) {
      EXPECT_EQ(state, State::need_more) << "after " << to << " bytes: " << peek.error();
      EXPECT_EQ(peek.bytes().size(), to);
    }
    from = to;
  }
  peek.feed({data.data() + from, data.size() - from});
  return peek;
}

ClientHelloPeek feed_whole(const Bytes& data) { return feed_cut(data, {}); }

ClientHelloPeek feed_bytewise(const Bytes& data, bool waits = true) {
  std::vector<std::size_t> cuts;
  for (std::size_t i = 1; i < data.size(); ++i) cuts.push_back(i);
  return feed_cut(data, cuts, waits);
}

void expect_done(const ClientHelloPeek& peek, const Bytes& data, std::string_view sni) {
  EXPECT_EQ(peek.state(), State::done) << peek.error();
  EXPECT_EQ(peek.error(), "");
  EXPECT_EQ(peek.sni(), sni);
  EXPECT_TRUE(std::ranges::equal(peek.bytes(), data)) << "bytes are kept as received";
  EXPECT_EQ(peek.hello_size(), data.size());
}

std::string refused(const Bytes& data) {
  ClientHelloPeek peek = feed_whole(data);
  EXPECT_EQ(peek.state(), State::invalid);
  EXPECT_EQ(peek.sni(), "");
  return peek.error();
}

// ---- real ClientHellos, any split

TEST(ClientHelloPeek, SniIsLowerCasedWithoutTheTrailingDot) {
  const Bytes hello = client_hello("MAIL.Contoso.COM.", alpn_wire({"h2", "http/1.1"}));
  const ClientHelloPeek peek = feed_whole(hello);
  expect_done(peek, hello, "mail.contoso.com");
  EXPECT_THAT(peek.alpn(), ::testing::ElementsAre("h2", "http/1.1"));
}

TEST(ClientHelloPeek, NoServerNameIsAnEmptySni) {
  const Bytes hello = client_hello(nullptr);
  const ClientHelloPeek peek = feed_whole(hello);
  expect_done(peek, hello, "");
  EXPECT_TRUE(peek.alpn().empty());
}

TEST(ClientHelloPeek, OneByteAtATime) {
  for (const char* name : {"owa.contoso.com", static_cast<const char*>(nullptr)}) {
    const Bytes hello = client_hello(name);
    expect_done(feed_bytewise(hello), hello, name == nullptr ? "" : name);
  }
}

TEST(ClientHelloPeek, RandomSplits) {
  const Bytes hello = client_hello("Autodiscover.Contoso.com", alpn_wire({"http/1.1"}));
  std::mt19937 random(20240607);
  for (int round = 0; round < 300; ++round) {
    std::vector<std::size_t> cuts;
    for (std::size_t at = 0;;) {
      at += 1 + random() % (round % 2 == 0 ? 8 : 200);
      if (at >= hello.size()) break;
      cuts.push_back(at);
    }
    SCOPED_TRACE("round " + std::to_string(round));
    expect_done(feed_cut(hello, cuts), hello, "autodiscover.contoso.com");
  }
}

TEST(ClientHelloPeek, MessageReframedIntoTwoRecords) {
  const Bytes message = handshake_message(client_hello("mail.contoso.com"));
  for (std::size_t cut :
       {std::size_t{1}, std::size_t{4}, std::size_t{5}, std::size_t{40}, message.size() / 2, message.size() - 1}) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    const Bytes records = frame(message, {cut});
    expect_done(feed_whole(records), records, "mail.contoso.com");
    expect_done(feed_bytewise(records), records, "mail.contoso.com");
  }
}

// Every way of cutting the 4-byte handshake header (and the body after it)
// into records: cut points at offsets 1, 2, 3 and 4 of the message, each
// present or not.
TEST(ClientHelloPeek, HandshakeHeaderSplitAtEveryPoint) {
  const Bytes message = handshake_message(client_hello("ews.contoso.com"));
  for (unsigned mask = 0; mask < 16; ++mask) {
    std::vector<std::size_t> cuts;
    for (std::size_t at = 1; at <= 4; ++at)
      if (mask & (1u << (at - 1))) cuts.push_back(at);
    SCOPED_TRACE("record cuts mask " + std::to_string(mask));
    const Bytes records = frame(message, cuts);
    expect_done(feed_whole(records), records, "ews.contoso.com");
    expect_done(feed_bytewise(records), records, "ews.contoso.com");
  }
}

TEST(ClientHelloPeek, OneByteRecords) {
  const Bytes message = handshake_message(client_hello("mail.contoso.com"));
  const Bytes records = frame_by(message, 1);
  ASSERT_LE(records.size(), ClientHelloPeek::kMaxRawBytes);
  expect_done(feed_whole(records), records, "mail.contoso.com");
}

// A long ALPN list makes BoringSSL write a ClientHello of ~20 KB, which it
// sends as two records, as a client with large post-quantum key shares does.
TEST(ClientHelloPeek, OverSixteenKibInTwoRecordsFromTheClient) {
  std::vector<std::string> protocols;
  for (int i = 0; i < 80; ++i) protocols.push_back("proto-" + std::to_string(i) + "-" + std::string(240, 'x'));
  const Bytes hello = client_hello("mail.contoso.com", alpn_wire(protocols));
  const Bytes message = handshake_message(hello);
  ASSERT_GT(message.size(), 16384u + 4);
  ASSERT_EQ(hello.size(), message.size() + 2 * 5) << "BoringSSL wrote two records";
  const ClientHelloPeek peek = feed_whole(hello);
  expect_done(peek, hello, "mail.contoso.com");
  ASSERT_EQ(peek.alpn().size(), protocols.size());
  EXPECT_EQ(peek.alpn().back(), protocols.back());
  std::mt19937 random(7);
  for (int round = 0; round < 20; ++round) {
    std::vector<std::size_t> cuts;
    for (std::size_t at = random() % 1500 + 1; at < hello.size(); at += random() % 1500 + 1) cuts.push_back(at);
    expect_done(feed_cut(hello, cuts), hello, "mail.contoso.com");
  }
}

// ---- size limits

// A real ClientHello padded (extension 21) to a body of exactly `body` bytes.
Bytes hello_of_body_size(std::size_t body) {
  Hello hello = take_apart(handshake_message(client_hello("mail.contoso.com")));
  const std::size_t now = put_together(hello).size() - 4;
  hello.extensions.emplace_back(21, Bytes(body - now - 4, 0));
  Bytes message = put_together(hello);
  EXPECT_EQ(message.size(), body + 4);
  return message;
}

TEST(ClientHelloPeek, LargestClientHelloIsAccepted) {
  const Bytes message = hello_of_body_size(ClientHelloPeek::kMaxBytes);
  const Bytes records = frame_by(message, 16384);
  expect_done(feed_whole(records), records, "mail.contoso.com");
  expect_done(feed_cut(records, {1000, 20000, 40000, 65000}), records, "mail.contoso.com");
}

TEST(ClientHelloPeek, OverSixtyFourKibIsRefusedAsSoonAsTheHeaderSaysSo) {
  const Bytes records = frame_by(hello_of_body_size(ClientHelloPeek::kMaxBytes + 1), 16384);
  ClientHelloPeek peek;
  EXPECT_EQ(peek.feed({records.data(), 8}), State::need_more);
  EXPECT_EQ(peek.feed({records.data() + 8, 1}), State::invalid);
  EXPECT_EQ(peek.error(), "ClientHello over 65536 bytes (65537)");
  EXPECT_EQ(refused(records), "ClientHello over 65536 bytes (65537)");
}

// The records of the largest ClientHello may be up to 64: kMaxRawBytes
// holds its body, its header and 64 record headers, and no more.
TEST(ClientHelloPeek, RecordHeadersCountTowardsTheRawLimit) {
  const Bytes message = hello_of_body_size(ClientHelloPeek::kMaxBytes);
  const std::size_t per64 = (message.size() + 63) / 64;
  const Bytes in64 = frame_by(message, per64);
  ASSERT_EQ(in64.size(), ClientHelloPeek::kMaxRawBytes);
  expect_done(feed_whole(in64), in64, "mail.contoso.com");
  const Bytes in65 = frame_by(message, message.size() / 65 + 1);
  ASSERT_EQ(in65.size(), ClientHelloPeek::kMaxRawBytes + 5);
  EXPECT_EQ(refused(in65), "ClientHello records over 65860 bytes (record headers included)");
}

// Records that reach kMaxRawBytes before the ClientHello is complete: the
// first byte of one more record is refused, so no more is ever held.
TEST(ClientHelloPeek, NoRecordStartsPastTheRawLimit) {
  const Bytes message = hello_of_body_size(ClientHelloPeek::kMaxBytes);
  const std::size_t payload = ClientHelloPeek::kMaxRawBytes - 65 * 5;  // what 65 records may carry
  std::vector<std::size_t> cuts;
  for (std::size_t at = 1000; at <= 64000; at += 1000) cuts.push_back(at);
  cuts.push_back(payload);
  const Bytes records = frame(message, cuts);
  ASSERT_EQ(cuts.size(), 65u);
  ClientHelloPeek peek;
  EXPECT_EQ(peek.feed({records.data(), ClientHelloPeek::kMaxRawBytes}), State::need_more);
  EXPECT_EQ(peek.feed({records.data() + ClientHelloPeek::kMaxRawBytes, 1}), State::invalid);
  EXPECT_EQ(peek.error(), "ClientHello records over 65860 bytes (record headers included)");
}

// ---- bytes around the ClientHello

TEST(ClientHelloPeek, BytesAfterTheClientHelloAreKept) {
  const Bytes hello = client_hello("mail.contoso.com");
  Bytes stream = hello;
  const Bytes ccs = record(20, {1}, 0x0303);
  const Bytes early_data = record(23, Bytes(300, 0xab), 0x0303);
  stream.insert(stream.end(), ccs.begin(), ccs.end());
  stream.insert(stream.end(), early_data.begin(), early_data.end());
  ClientHelloPeek peek = feed_cut(stream, {hello.size() - 1});
  EXPECT_EQ(peek.state(), State::done);
  EXPECT_EQ(peek.sni(), "mail.contoso.com");
  EXPECT_EQ(peek.hello_size(), hello.size());
  EXPECT_TRUE(std::ranges::equal(peek.bytes(), stream));
  // Later bytes are kept too, untouched.
  EXPECT_EQ(peek.feed(std::span<const std::uint8_t>(Bytes{0x16, 0x00})), State::done);
  EXPECT_EQ(peek.bytes().size(), stream.size() + 2);
  EXPECT_EQ(peek.hello_size(), hello.size());
}

TEST(ClientHelloPeek, HandshakeBytesPastTheClientHelloInItsRecordAreRefused) {
  Bytes message = handshake_message(client_hello("mail.contoso.com"));
  const Bytes finished{20, 0, 0, 0};  // a second handshake message
  message.insert(message.end(), finished.begin(), finished.end());
  EXPECT_EQ(refused(frame(message)), "handshake record continues past the ClientHello");
  // Also when the record that goes too far comes after the header is known.
  EXPECT_EQ(refused(frame(message, {10})), "handshake record continues past the ClientHello");
  EXPECT_EQ(refused(frame(message, {2})), "handshake record continues past the ClientHello");
}

TEST(ClientHelloPeek, InputAfterInvalidIsIgnored) {
  ClientHelloPeek peek;
  EXPECT_EQ(peek.feed(as_bytes("GET / HTTP/1.1\r\n")), State::invalid);
  const Bytes hello = client_hello("mail.contoso.com");
  EXPECT_EQ(peek.feed(hello), State::invalid);
  EXPECT_EQ(peek.bytes().size(), 16u);
  EXPECT_EQ(peek.error(), "not a TLS handshake record (first byte 0x47)");
}

// ---- refused on the record layer, each with its reason

struct RecordCase {
  const char* name;
  Bytes input;
  const char* error;
};

void PrintTo(const RecordCase& c, std::ostream* out) { *out << c.name; }

class RefusedRecords : public ::testing::TestWithParam<RecordCase> {};

TEST_P(RefusedRecords, WithTheReason) {
  const RecordCase& c = GetParam();
  EXPECT_EQ(refused(c.input), c.error);
  const ClientHelloPeek peek = feed_bytewise(c.input, false);
  EXPECT_EQ(peek.state(), State::invalid);
  EXPECT_EQ(peek.error(), c.error);
}

const RecordCase record_cases[] = {
    {"http", as_bytes("GET / HTTP/1.1\r\n"), "not a TLS handshake record (first byte 0x47)"},
    {"sslv2", {0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15}, "SSLv2-format ClientHello (first byte 0x80)"},
    {"alert_first", {0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28}, "not a TLS handshake record (first byte 0x15)"},
    {"application_data_first", {0x17, 0x03, 0x03, 0x00, 0x01, 0x00}, "not a TLS handshake record (first byte 0x17)"},
    {"zero_length", {0x16, 0x03, 0x01, 0x00, 0x00}, "zero-length handshake record"},
    {"record_too_long", {0x16, 0x03, 0x01, 0x4e, 0x20, 0x01}, "record of 20000 bytes exceeds 16384"},
    {"record_just_too_long", {0x16, 0x03, 0x01, 0x40, 0x01, 0x01}, "record of 16385 bytes exceeds 16384"},
    {"record_version", {0x16, 0x02, 0x00, 0x00, 0x04, 0x01}, "record version 0x0200 is not TLS"},
    {"server_hello",
     {0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x26},
     "handshake message type 2 is not a ClientHello"},
    {"zero_length_second",
     {0x16, 0x03, 0x01, 0x00, 0x02, 0x01, 0x00, 0x16, 0x03, 0x01, 0x00, 0x00},
     "zero-length handshake record"},
    {"alert_inside",
     {0x16, 0x03, 0x01, 0x00, 0x02, 0x01, 0x00, 0x15, 0x03, 0x01, 0x00, 0x02},
     "record of content type 21 inside the ClientHello"},
    {"past_the_message",
     {0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x00, 0x00},
     "handshake record continues past the ClientHello"},
};

INSTANTIATE_TEST_SUITE_P(Cases, RefusedRecords, ::testing::ValuesIn(record_cases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ClientHelloPeek, RecordOfAnotherTypeBetweenClientHelloRecords) {
  Bytes records = frame(handshake_message(client_hello("mail.contoso.com")), {100});
  records[5 + 100] = 23;  // the second record becomes application data
  EXPECT_EQ(refused(records), "record of content type 23 inside the ClientHello");
}

TEST(ClientHelloPeek, RecordsOfTheLargestSizeAreAccepted) {
  ClientHelloPeek peek;
  EXPECT_EQ(peek.feed(Bytes{0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x40, 0x00}), State::need_more);
}

// ---- refused or accepted bodies: a real ClientHello, changed

struct BodyCase {
  const char* name;
  void (*change)(Hello&);
  const char* error;  // nullptr: accepted
  const char* sni = "mail.contoso.com";
};

void PrintTo(const BodyCase& c, std::ostream* out) { *out << c.name; }

class Bodies : public ::testing::TestWithParam<BodyCase> {};

TEST_P(Bodies, AreJudged) {
  const BodyCase& c = GetParam();
  Hello hello = take_apart(handshake_message(client_hello("mail.contoso.com", alpn_wire({"h2"}))));
  c.change(hello);
  const Bytes records = frame(put_together(hello));
  for (const ClientHelloPeek& peek : {feed_whole(records), feed_bytewise(records)}) {
    if (c.error == nullptr) {
      expect_done(peek, records, c.sni);
    } else {
      EXPECT_EQ(peek.state(), State::invalid);
      EXPECT_EQ(peek.error(), c.error);
      EXPECT_EQ(peek.sni(), "");
    }
  }
}

void set_server_name(Hello& hello, const std::vector<std::pair<std::uint8_t, std::string>>& names) {
  *hello.find(0) = server_name_extension(names);
}

constexpr std::size_t kSessionIdAt = 2 + 32;  // legacy_version, random

const BodyCase body_cases[] = {
    {"unchanged", [](Hello&) {}, nullptr},
    {"no_extensions_block", [](Hello& h) { h.extensions_block = false; }, nullptr, ""},
    {"empty_extensions_block", [](Hello& h) { h.extensions.clear(); }, nullptr, ""},
    {"duplicate_server_name",
     [](Hello& h) {
       h.extensions.push_back({0, *h.find(0)});
     },
     "malformed ClientHello: extension 0 sent twice"},
    {"duplicate_unknown",
     [](Hello& h) {
       h.extensions.insert(h.extensions.begin(), 2, {0x7a7a, {}});
     },
     "malformed ClientHello: extension 31354 sent twice"},
    {"truncated_head", [](Hello& h) { h.head.resize(20), h.extensions_block = false; },
     "malformed ClientHello: bad random"},
    {"session_id_33",
     [](Hello& h) {
       h.head.insert(h.head.begin() + kSessionIdAt + 1, 33 - h.head[kSessionIdAt], 0);
       h.head[kSessionIdAt] = 33;
     },
     "malformed ClientHello: bad session_id"},
    {"no_cipher_suites",
     [](Hello& h) {
       Bytes head(h.head.begin(), h.head.begin() + kSessionIdAt + 1 + h.head[kSessionIdAt]);
       head.insert(head.end(), {0, 0, 1, 0});
       h.head = head;
     },
     "malformed ClientHello: bad cipher_suites"},
    {"odd_cipher_suites",
     [](Hello& h) {
       Bytes head(h.head.begin(), h.head.begin() + kSessionIdAt + 1 + h.head[kSessionIdAt]);
       head.insert(head.end(), {0, 3, 0x13, 0x01, 0x13, 1, 0});
       h.head = head;
     },
     "malformed ClientHello: bad cipher_suites"},
    {"no_compression_methods", [](Hello& h) { h.head.back() = 0, h.head[h.head.size() - 2] = 0; },
     "malformed ClientHello: bad compression_methods"},
    {"server_name_upper_dot",
     [](Hello& h) {
       set_server_name(h, {{0, "A."}});
     },
     nullptr, "a"},
    {"server_name_two_dots",
     [](Hello& h) {
       set_server_name(h, {{0, "Mail.."}});
     },
     nullptr, "mail."},
    {"server_name_256",
     [](Hello& h) {
       set_server_name(h, {{0, std::string(256, 'a')}});
     },
     "malformed ClientHello: bad server name of 256 bytes"},
    {"server_name_empty",
     [](Hello& h) {
       set_server_name(h, {{0, ""}});
     },
     "malformed ClientHello: bad server name of 0 bytes"},
    {"server_name_dot",
     [](Hello& h) {
       set_server_name(h, {{0, "."}});
     },
     "malformed ClientHello: bad server name \".\""},
    {"server_name_nul",
     [](Hello& h) {
       set_server_name(h, {{0, std::string("mail\0x", 6)}});
     },
     "malformed ClientHello: bad server name (byte 0x00)"},
    {"server_name_space",
     [](Hello& h) {
       set_server_name(h, {{0, "mail contoso"}});
     },
     "malformed ClientHello: bad server name (byte 0x20)"},
    {"server_name_del",
     [](Hello& h) {
       set_server_name(h, {{0, "mail\x7f"}});
     },
     "malformed ClientHello: bad server name (byte 0x7f)"},
    {"server_name_utf8",
     [](Hello& h) {
       set_server_name(h, {{0, "m\xc3\xa4il"}});
     },
     "malformed ClientHello: bad server name (byte 0xc3)"},
    {"server_name_two_hosts",
     [](Hello& h) {
       set_server_name(h, {{0, "a"}, {0, "b"}});
     },
     "malformed ClientHello: bad server_name extension (two host names)"},
    {"server_name_other_type_only",
     [](Hello& h) {
       set_server_name(h, {{7, "x"}});
     },
     nullptr, ""},
    {"server_name_other_type_then_host",
     [](Hello& h) {
       set_server_name(h, {{7, "x"}, {0, "Owa.Contoso.com"}});
     },
     nullptr, "owa.contoso.com"},
    {"server_name_empty_list", [](Hello& h) { set_server_name(h, {}); },
     "malformed ClientHello: bad server_name extension"},
    {"server_name_extra_bytes", [](Hello& h) { h.find(0)->push_back(0); },
     "malformed ClientHello: bad server_name extension"},
    {"server_name_cut", [](Hello& h) { h.find(0)->pop_back(); }, "malformed ClientHello: bad server_name extension"},
    {"server_name_no_data", [](Hello& h) { h.find(0)->clear(); }, "malformed ClientHello: bad server_name extension"},
    {"alpn_empty_list",
     [](Hello& h) {
       *h.find(16) = {0, 0};
     },
     "malformed ClientHello: bad ALPN extension"},
    {"alpn_empty_name",
     [](Hello& h) {
       *h.find(16) = {0, 2, 0, 0};
     },
     "malformed ClientHello: bad ALPN extension"},
};

INSTANTIATE_TEST_SUITE_P(Cases, Bodies, ::testing::ValuesIn(body_cases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ClientHelloPeek, LongestServerNameIsAccepted) {
  Hello hello = take_apart(handshake_message(client_hello("mail.contoso.com")));
  set_server_name(hello, {{0, std::string(255, 'A')}});
  Bytes records = frame(put_together(hello));
  expect_done(feed_whole(records), records, std::string(255, 'a'));
  set_server_name(hello, {{0, std::string(254, 'A') + "."}});
  records = frame(put_together(hello));
  expect_done(feed_whole(records), records, std::string(254, 'a'));
}

TEST(ClientHelloPeek, EveryExtensionTwiceIsRefused) {
  const Hello hello = take_apart(handshake_message(client_hello("mail.contoso.com", alpn_wire({"h2"}))));
  ASSERT_GT(hello.extensions.size(), 5u);
  for (const auto& extension : hello.extensions) {
    Hello twice = hello;
    twice.extensions.push_back(extension);
    EXPECT_EQ(refused(frame(put_together(twice))),
              "malformed ClientHello: extension " + std::to_string(extension.first) + " sent twice");
  }
}

// The extensions block's own length, one off either way, and a body cut
// short, with the handshake and record lengths kept consistent.
TEST(ClientHelloPeek, ExtensionsBlockLengthMustMatch) {
  const Bytes message = handshake_message(client_hello("mail.contoso.com"));
  const std::size_t at = 4 + take_apart(message).head.size();  // the block's u16 length
  for (int delta : {-1, +1}) {
    Bytes changed = message;
    const int length = (changed[at] << 8 | changed[at + 1]) + delta;
    changed[at] = static_cast<std::uint8_t>(length >> 8);
    changed[at + 1] = static_cast<std::uint8_t>(length);
    EXPECT_EQ(refused(frame(changed)), "malformed ClientHello: bad extensions block") << delta;
  }
  Bytes cut(message.begin(), message.end() - 3);
  const std::size_t body = cut.size() - 4;
  cut[1] = static_cast<std::uint8_t>(body >> 16), cut[2] = static_cast<std::uint8_t>(body >> 8);
  cut[3] = static_cast<std::uint8_t>(body);
  EXPECT_EQ(refused(frame(cut)), "malformed ClientHello: bad extensions block");
}

}  // namespace
}  // namespace gatehouse::proxy
