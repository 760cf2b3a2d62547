// The plaintext half of a starttls listener: every line a client sends
// before STARTTLS goes through ClientDialogue. Besides not crashing, a reply
// is whole CRLF-terminated lines (an echoed IMAP tag can never smuggle a line
// of its own), and nothing but STARTTLS/STLS starts TLS.

#include <cstdint>
#include <string>
#include <string_view>

#include "proxy/l4/mail.h"
#include "tests/fuzz/fuzz_check.h"

using gatehouse::fuzz::expect;
namespace mail = gatehouse::proxy::mail;
namespace conf = gatehouse::conf;

namespace {

bool whole_lines(std::string_view reply) {
  if (reply.size() < 2 || !reply.ends_with("\r\n")) return false;
  for (std::size_t i = 0; i < reply.size(); ++i) {
    if (reply[i] == '\r' && (i + 1 == reply.size() || reply[i + 1] != '\n')) return false;
    if (reply[i] == '\n' && (i == 0 || reply[i - 1] != '\r')) return false;
  }
  return true;
}

bool asks_for_tls(std::string_view line, conf::StartTls protocol) {
  std::string upper;
  for (char c : line) upper += (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
  if (protocol == conf::StartTls::pop3) return upper == "STLS";
  if (protocol == conf::StartTls::smtp) return upper == "STARTTLS";
  const auto space = upper.find(' ');
  return space != std::string::npos && upper.substr(space + 1) == "STARTTLS";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const conf::StartTls protocols[] = {conf::StartTls::smtp, conf::StartTls::imap, conf::StartTls::pop3};
  const conf::StartTls protocol = protocols[data[0] % 3];
  const mail::ClientDialogue dialogue(protocol, "mail.contoso.test");
  expect(whole_lines(dialogue.greeting()), "greeting is whole lines");
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  while (!text.empty()) {
    const auto end = text.find('\n');
    std::string_view line = text.substr(0, end);
    if (line.ends_with('\r')) line.remove_suffix(1);
    const mail::Answer answer = dialogue.answer(line);
    expect(whole_lines(answer.reply), "reply is whole CRLF lines");
    if (answer.next == mail::Answer::Next::start_tls) expect(asks_for_tls(line, protocol), "only STARTTLS starts TLS");
    if (end == std::string_view::npos) break;
    text.remove_prefix(end + 1);
  }
  return 0;
}
