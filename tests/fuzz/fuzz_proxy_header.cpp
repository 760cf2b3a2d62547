// The PROXY protocol header a backend connection starts with, over every
// shape of endpoint the accept loop can hand it: IPv4, IPv6 and IPv4-mapped
// IPv6, in any mix for the client and local sides, any port. The fuzzer
// builds the endpoints from its input; the checks are what a backend
// (HAProxy's proxy-protocol.txt) requires of the header.

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/runtime/proxy_protocol.h"
#include "tests/fuzz/fuzz_check.h"

using gatehouse::fuzz::expect;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::uint8_t byte() { return at_ < size_ ? data_[at_++] : 0; }
  std::uint16_t u16() {
    const std::uint8_t high = byte();  // in this order: operands of | are unsequenced
    return static_cast<std::uint16_t>(high << 8 | byte());
  }
  // N bytes, zeros past the end of the input.
  template <std::size_t N>
  std::array<unsigned char, N> bytes() {
    std::array<unsigned char, N> out{};
    const std::size_t n = std::min(N, size_ - at_);
    if (n > 0) std::memcpy(out.data(), data_ + at_, n);
    at_ += n;
    return out;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
};

// kind % 3: IPv4, IPv6, IPv4-mapped IPv6.
tcp::endpoint endpoint(Reader& in, std::uint8_t kind) {
  asio::ip::address address;
  if (kind % 3 == 0) {
    address = asio::ip::address_v4(in.bytes<4>());
  } else if (kind % 3 == 1) {
    const auto b = in.bytes<16>();
    address = asio::ip::address_v6(b, kind & 0x80 ? in.byte() : 0);
  } else {
    address = asio::ip::make_address_v6(asio::ip::v4_mapped, asio::ip::address_v4(in.bytes<4>()));
  }
  return {address, in.u16()};
}

// The 16 bytes a header carries for an address (no zone).
asio::ip::address_v6::bytes_type as_v6(const asio::ip::address& a) {
  return (a.is_v6() ? a.to_v6() : asio::ip::make_address_v6(asio::ip::v4_mapped, a.to_v4())).to_bytes();
}

std::vector<std::string_view> words(std::string_view line) {
  std::vector<std::string_view> out;
  while (!line.empty()) {
    const auto space = line.find(' ');
    out.push_back(line.substr(0, space));
    if (space == std::string_view::npos) break;
    line.remove_prefix(space + 1);
  }
  return out;
}

void check_v1(const std::string& h, const tcp::endpoint& client, const tcp::endpoint& local) {
  expect(h.size() <= 107, "a v1 line is at most 107 bytes");
  expect(h.size() >= 2 && h.ends_with("\r\n"), "a v1 line ends in CRLF");
  const std::string_view line(h.data(), h.size() - 2);
  expect(line.find_first_of("\r\n") == std::string_view::npos, "a v1 line is one line");
  const auto w = words(line);
  expect(w.size() == 6 && w[0] == "PROXY" && (w[1] == "TCP4" || w[1] == "TCP6"), "PROXY TCP4|TCP6 and four fields");
  const bool v4 = w[1] == "TCP4";
  for (std::string_view a : {w[2], w[3]})
    expect(a.find_first_not_of("0123456789abcdefABCDEF.:") == std::string_view::npos,
           "v1 addresses are plain IPv4 or IPv6 text (no zone)");
  boost::system::error_code ec1, ec2;
  const auto source = asio::ip::make_address(std::string(w[2]), ec1);
  const auto destination = asio::ip::make_address(std::string(w[3]), ec2);
  expect(!ec1 && !ec2, "both v1 addresses parse");
  // A receiver reads TCP4 addresses as dotted quads and TCP6 ones as IPv6 only.
  expect(source.is_v4() == v4 && destination.is_v4() == v4, "both v1 addresses are of the family the line names");
  if (v4) {
    expect(source == client.address() && destination == local.address(), "v1 carries the addresses");
  } else {
    expect(as_v6(source) == as_v6(client.address()) && as_v6(destination) == as_v6(local.address()),
           "v1 carries the addresses");
  }
  expect(w[4] == std::to_string(client.port()) && w[5] == std::to_string(local.port()), "v1 carries the ports");
}

void check_v2(const std::string& h, const tcp::endpoint& client, const tcp::endpoint& local) {
  static constexpr std::string_view signature("\r\n\r\n\0\r\nQUIT\n", 12);
  expect(h.size() >= 16 && std::string_view(h).substr(0, 12) == signature, "v2 starts with its signature");
  const auto* b = reinterpret_cast<const std::uint8_t*>(h.data());
  expect(b[12] == 0x21, "v2, PROXY command");
  const std::size_t length = static_cast<std::size_t>(b[14] << 8 | b[15]);
  expect(h.size() == 16 + length, "the v2 length field counts the bytes that follow");
  const bool v4 = client.address().is_v4() && local.address().is_v4();
  expect(b[13] == (v4 ? 0x11 : 0x21), "TCP over IPv4 exactly when both ends are IPv4");
  expect(length == (v4 ? 12u : 36u), "the v2 address block has its family's size");
  const std::size_t n = v4 ? 4 : 16;
  auto port_at = [&](std::size_t at) { return static_cast<std::uint16_t>(b[at] << 8 | b[at + 1]); };
  if (v4) {
    expect(std::memcmp(b + 16, client.address().to_v4().to_bytes().data(), n) == 0, "v2 carries the client");
    expect(std::memcmp(b + 20, local.address().to_v4().to_bytes().data(), n) == 0, "v2 carries the local end");
  } else {
    expect(std::memcmp(b + 16, as_v6(client.address()).data(), n) == 0, "v2 carries the client");
    expect(std::memcmp(b + 32, as_v6(local.address()).data(), n) == 0, "v2 carries the local end");
  }
  expect(port_at(16 + 2 * n) == client.port() && port_at(18 + 2 * n) == local.port(), "v2 carries the ports");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Reader in(data, size);
  const std::uint8_t kinds = in.byte();
  const tcp::endpoint client = endpoint(in, kinds & 0x8f);
  const tcp::endpoint local = endpoint(in, static_cast<std::uint8_t>((kinds >> 4) | (kinds & 0x80)));
  check_v1(gatehouse::proxy::proxy_header_v1(client, local), client, local);
  check_v2(gatehouse::proxy::proxy_header_v2(client, local), client, local);
  return 0;
}
