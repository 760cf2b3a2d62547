// Windows authentication headers from untrusted clients and backends:
// Authorization values (NTLM Type 3 messages in base64, Negotiate, Basic),
// the binary NTLMSSP parser itself, and the challenges that bind a backend
// connection. The input is used three ways: as one header value, as the
// decoded binary token, and as "Name: value" lines.

#include <openssl/base64.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "proxy/l7/windows_auth.h"
#include "tests/fuzz/fuzz_check.h"

using gatehouse::fuzz::expect;
namespace l7 = gatehouse::proxy::l7;
namespace http = gatehouse::proxy::http;

namespace {

std::string encode_base64(std::string_view bytes) {
  std::size_t length = 0;
  EVP_EncodedLength(&length, bytes.size());
  std::string out(length, '\0');
  const std::size_t n = EVP_EncodeBlock(reinterpret_cast<std::uint8_t*>(out.data()),
                                        reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  out.resize(n);
  return out;
}

http::Fields lines_as_fields(std::string_view text) {
  http::Fields fields;
  while (!text.empty()) {
    const auto end = text.find('\n');
    const std::string_view line = text.substr(0, end);
    const auto colon = line.find(':');
    if (colon != std::string_view::npos)
      fields.push_back({std::string(line.substr(0, colon)), std::string(line.substr(colon + 1))});
    if (end == std::string_view::npos) break;
    text.remove_prefix(end + 1);
  }
  return fields;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  // One header value as a client sends it.
  const l7::RequestAuth auth = l7::parse_authorization(text);
  if (auth.final_leg) expect(auth.connection_bound, "an NTLM Type 3 is connection-bound");
  if (!auth.connection_bound && !auth.user.empty()) {
    expect(auth.user.find(':') == std::string::npos, "Basic never yields the password");
    expect(auth.user.size() <= 512, "a Basic user name is bounded");
  }

  // The binary token, directly and as a client would send it.
  const auto user = l7::ntlm_user(text);
  for (std::string_view scheme : {"NTLM ", "Negotiate "}) {
    const l7::RequestAuth wrapped = l7::parse_authorization(std::string(scheme) + encode_base64(text));
    expect(wrapped.connection_bound, "NTLM and Negotiate are connection-bound");
    expect(wrapped.final_leg == user.has_value(), "a token is a last leg exactly when it names a user");
    if (user) expect(wrapped.user == *user, "the same user whether sent or parsed");
  }
  if (user) expect(user->size() <= 2 * 3 * 512 + 1, "names are bounded");

  // base64 both ways.
  if (const auto decoded = l7::decode_base64(text)) (void)l7::ntlm_user(*decoded);
  const auto round = l7::decode_base64(encode_base64(text));
  expect(round && *round == text, "base64 decodes what it encodes");

  // Header lines: a request's credentials and a response's challenge.
  const http::Fields fields = lines_as_fields(text);
  (void)l7::request_auth(fields);
  const int status = size >= 2 ? 100 + (data[0] << 8 | data[1]) % 500 : 401;
  for (int s : {status, 401, 407, 200}) (void)l7::response_binds(s, fields);
  return 0;
}
