#include "proxy/l4/mail.h"

#include <algorithm>
#include <vector>

namespace gatehouse::proxy::mail {

namespace {

constexpr std::size_t kMaxReplyLine = 4096;
constexpr int kMaxReplyLines = 64;

bool equals_ignoring_case(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
           return lower(x) == lower(y);
         });
}

bool starts_with_ignoring_case(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && equals_ignoring_case(text.substr(0, prefix.size()), prefix);
}

// The first word and the rest after one space.
std::pair<std::string_view, std::string_view> split_word(std::string_view line) {
  const auto space = line.find(' ');
  if (space == std::string_view::npos) return {line, {}};
  return {line.substr(0, space), line.substr(space + 1)};
}

// A server's line as a log shows it: at most 200 bytes.
std::string shown(std::string_view line) {
  return "\"" + std::string(line.substr(0, 200)) + (line.size() > 200 ? "...\"" : "\"");
}

std::string read_failure(const error_code& ec, std::string_view waiting_for) {
  if (ec == asio::error::message_size)
    return "the server sent a line over " + std::to_string(kMaxReplyLine) + " bytes as its " + std::string(waiting_for);
  if (ec == asio::error::eof)
    return "the server closed the connection instead of sending its " + std::string(waiting_for);
  return "reading the server's " + std::string(waiting_for) + " failed: " + ec.message();
}

// An SMTP reply (RFC 5321 4.2): one code on every line, "-" after it on all
// but the last.
struct SmtpReply {
  int code = 0;
  std::vector<std::string> lines;  // the text after the code
  std::string error;
};

asio::awaitable<SmtpReply> read_smtp_reply(LineReader& reader, TlsStream& stream, std::string_view waiting_for) {
  SmtpReply reply;
  for (int n = 0; n < kMaxReplyLines; ++n) {
    auto [ec, line] = co_await reader.read_line(stream, kMaxReplyLine);
    if (ec) {
      reply.error = read_failure(ec, waiting_for);
      co_return reply;
    }
    const bool coded = line.size() >= 3 &&
                       std::all_of(line.begin(), line.begin() + 3, [](char c) { return c >= '0' && c <= '9'; }) &&
                       (line.size() == 3 || line[3] == ' ' || line[3] == '-');
    const int code = coded ? std::stoi(line.substr(0, 3)) : 0;
    if (!coded || (reply.code != 0 && code != reply.code)) {
      reply.error = "the server's " + std::string(waiting_for) + " is not an SMTP reply: " + shown(line);
      co_return reply;
    }
    reply.code = code;
    reply.lines.push_back(line.size() > 4 ? line.substr(4) : std::string());
    if (line.size() == 3 || line[3] == ' ') co_return reply;
  }
  reply.error = "the server's " + std::string(waiting_for) + " runs over " + std::to_string(kMaxReplyLines) + " lines";
  co_return reply;
}

std::string unexpected(std::string_view waiting_for, const SmtpReply& reply) {
  return "the server answered " + std::string(waiting_for) + " with " +
         shown(std::to_string(reply.code) + " " + (reply.lines.empty() ? std::string() : reply.lines.front()));
}

asio::awaitable<std::string> smtp_starttls(TlsStream& plain, const std::string& name) {
  LineReader reader;
  SmtpReply greeting = co_await read_smtp_reply(reader, plain, "greeting");
  if (!greeting.error.empty()) co_return greeting.error;
  if (greeting.code != 220) co_return unexpected("the connection", greeting);
  const std::string ehlo = "EHLO " + name + "\r\n";
  const error_code sent1 = co_await plain.write_all(ehlo.data(), ehlo.size());
  if (sent1) co_return "sending EHLO failed: " + sent1.message();
  SmtpReply capabilities = co_await read_smtp_reply(reader, plain, "EHLO reply");
  if (!capabilities.error.empty()) co_return capabilities.error;
  if (capabilities.code != 250) co_return unexpected("EHLO", capabilities);
  const bool offered = std::any_of(capabilities.lines.begin() + 1, capabilities.lines.end(),
                                   [](const std::string& line) { return equals_ignoring_case(line, "STARTTLS"); });
  if (!offered) co_return "the server does not offer STARTTLS in its EHLO reply (set starttls = false on the pool)";
  static constexpr std::string_view command = "STARTTLS\r\n";
  const error_code sent2 = co_await plain.write_all(command.data(), command.size());
  if (sent2) co_return "sending STARTTLS failed: " + sent2.message();
  SmtpReply go = co_await read_smtp_reply(reader, plain, "STARTTLS reply");
  if (!go.error.empty()) co_return go.error;
  if (go.code != 220) co_return unexpected("STARTTLS", go);
  co_return std::string();
}

// One line that must start with `positive` ("* OK", "+OK").
asio::awaitable<std::string> expect_line(LineReader& reader, TlsStream& stream, std::string_view positive,
                                         std::string_view waiting_for) {
  auto [ec, line] = co_await reader.read_line(stream, kMaxReplyLine);
  if (ec) co_return read_failure(ec, waiting_for);
  if (!starts_with_ignoring_case(line, positive))
    co_return "the server's " + std::string(waiting_for) + " is not \"" + std::string(positive) +
        " ...\": " + shown(line);
  co_return std::string();
}

constexpr std::string_view kImapTag = "gh1";

asio::awaitable<std::string> imap_starttls(TlsStream& plain) {
  LineReader reader;
  const std::string greeting = co_await expect_line(reader, plain, "* OK", "greeting");
  if (!greeting.empty()) co_return greeting;
  const std::string command = std::string(kImapTag) + " STARTTLS\r\n";
  const error_code sent3 = co_await plain.write_all(command.data(), command.size());
  if (sent3) co_return "sending STARTTLS failed: " + sent3.message();
  // Untagged lines (a CAPABILITY, say) may come before the tagged answer.
  for (int n = 0; n < kMaxReplyLines; ++n) {
    auto [ec, line] = co_await reader.read_line(plain, kMaxReplyLine);
    if (ec) co_return read_failure(ec, "STARTTLS reply");
    if (line.starts_with("* ")) continue;
    const auto [tag, rest] = split_word(line);
    if (tag != kImapTag)
      co_return "the server's STARTTLS reply is not tagged " + std::string(kImapTag) + ": " + shown(line);
    if (!starts_with_ignoring_case(rest, "OK")) co_return "the server refused STARTTLS: " + shown(line);
    co_return std::string();
  }
  co_return "the server's STARTTLS reply runs over " + std::to_string(kMaxReplyLines) + " lines";
}

asio::awaitable<std::string> pop3_stls(TlsStream& plain) {
  LineReader reader;
  const std::string greeting = co_await expect_line(reader, plain, "+OK", "greeting");
  if (!greeting.empty()) co_return greeting;
  static constexpr std::string_view command = "STLS\r\n";
  const error_code sent4 = co_await plain.write_all(command.data(), command.size());
  if (sent4) co_return "sending STLS failed: " + sent4.message();
  co_return co_await expect_line(reader, plain, "+OK", "STLS reply");
}

}  // namespace

asio::awaitable<std::pair<error_code, std::string>> LineReader::read_line(TlsStream& stream, std::size_t max) {
  for (;;) {
    const auto end = buffer_.find('\n', start_);
    if (end != std::string::npos) {
      std::string line = buffer_.substr(start_, end - start_);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      start_ = end + 1;
      if (start_ == buffer_.size()) {
        buffer_.clear();
        start_ = 0;
      }
      co_return std::pair{error_code{}, std::move(line)};
    }
    if (buffer_.size() - start_ > max) co_return std::pair{error_code(asio::error::message_size), std::string()};
    char chunk[512];
    auto [ec, n] = co_await stream.read_some(chunk, sizeof chunk);
    if (ec) co_return std::pair{ec, std::string()};
    buffer_.append(chunk, n);
  }
}

std::string ClientDialogue::greeting() const {
  switch (protocol_) {
    case conf::StartTls::smtp: return "220 " + name_ + " ESMTP\r\n";
    case conf::StartTls::imap: return "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] " + name_ + " ready\r\n";
    case conf::StartTls::pop3: return "+OK " + name_ + " ready\r\n";
    case conf::StartTls::none: break;
  }
  return {};
}

Answer ClientDialogue::answer(std::string_view line) const {
  if (protocol_ == conf::StartTls::imap) return answer_imap(line);
  const auto [verb, rest] = split_word(line);
  // A space after the verb, even with nothing after it, is an argument.
  const bool bare = verb.size() == line.size();
  if (protocol_ == conf::StartTls::smtp) return answer_smtp(verb, rest, bare);
  return answer_pop3(verb, bare);
}

Answer ClientDialogue::answer_smtp(std::string_view verb, std::string_view rest, bool bare) const {
  using Next = Answer::Next;
  if (equals_ignoring_case(verb, "EHLO")) {
    if (rest.empty()) return {"501 5.5.4 Syntax: EHLO hostname\r\n"};
    return {"250-" + name_ + "\r\n250 STARTTLS\r\n"};
  }
  if (equals_ignoring_case(verb, "HELO")) {
    if (rest.empty()) return {"501 5.5.4 Syntax: HELO hostname\r\n"};
    return {"250 " + name_ + "\r\n"};
  }
  if (equals_ignoring_case(verb, "STARTTLS")) {
    if (!bare) return {"501 5.5.4 Syntax: STARTTLS\r\n"};
    return {"220 2.0.0 Ready to start TLS\r\n", Next::start_tls};
  }
  if (equals_ignoring_case(verb, "NOOP") || equals_ignoring_case(verb, "RSET")) return {"250 2.0.0 OK\r\n"};
  if (equals_ignoring_case(verb, "QUIT")) return {"221 2.0.0 Bye\r\n", Next::close};
  return {"530 5.7.0 Must issue a STARTTLS command first\r\n"};
}

Answer ClientDialogue::answer_imap(std::string_view line) const {
  using Next = Answer::Next;
  const auto [tag, rest] = split_word(line);
  const std::string_view command = split_word(rest).first;
  // A tag is any atom but "*" and "+" (RFC 3501 9: no specials).
  const bool tag_ok = !tag.empty() && tag != "*" && tag != "+" &&
                      tag.find_first_of("(){%\"\\]") == std::string_view::npos &&
                      std::all_of(tag.begin(), tag.end(), [](char c) { return c > 0x20 && c < 0x7f; });
  if (!tag_ok || command.empty()) return {"* BAD Error in IMAP command received by server\r\n"};
  const std::string t(tag);
  if (equals_ignoring_case(command, "CAPABILITY"))
    return {"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n" + t + " OK CAPABILITY completed\r\n"};
  if (equals_ignoring_case(command, "NOOP")) return {t + " OK NOOP completed\r\n"};
  if (equals_ignoring_case(command, "LOGOUT"))
    return {"* BYE Logging out\r\n" + t + " OK LOGOUT completed\r\n", Next::close};
  if (equals_ignoring_case(command, "STARTTLS")) {
    // Exactly "tag STARTTLS": a trailing space is an (empty) argument.
    if (rest.size() != command.size()) return {t + " BAD STARTTLS takes no arguments\r\n"};
    return {t + " OK Begin TLS negotiation now\r\n", Next::start_tls};
  }
  return {t + " BAD Must issue a STARTTLS command first\r\n"};
}

Answer ClientDialogue::answer_pop3(std::string_view verb, bool bare) const {
  using Next = Answer::Next;
  if (equals_ignoring_case(verb, "CAPA")) return {"+OK Capability list follows\r\nSTLS\r\n.\r\n"};
  if (equals_ignoring_case(verb, "STLS")) {
    if (!bare) return {"-ERR STLS takes no arguments\r\n"};
    return {"+OK Begin TLS negotiation\r\n", Next::start_tls};
  }
  if (equals_ignoring_case(verb, "QUIT")) return {"+OK Bye\r\n", Next::close};
  return {"-ERR Must issue a STLS command first\r\n"};
}

std::string ClientDialogue::too_long() const {
  switch (protocol_) {
    case conf::StartTls::smtp: return "500 5.5.0 Line too long\r\n";
    case conf::StartTls::imap: return "* BYE Line too long\r\n";
    default: return "-ERR Line too long\r\n";
  }
}

std::string ClientDialogue::timed_out() const {
  switch (protocol_) {
    case conf::StartTls::smtp: return "421 4.4.2 " + name_ + " Error: timeout exceeded\r\n";
    case conf::StartTls::imap: return "* BYE Disconnected for inactivity\r\n";
    default: return "-ERR Disconnected for inactivity\r\n";
  }
}

std::string ClientDialogue::too_many() const {
  switch (protocol_) {
    case conf::StartTls::smtp: return "421 4.7.0 " + name_ + " Error: too many commands before STARTTLS\r\n";
    case conf::StartTls::imap: return "* BYE Too many commands before STARTTLS\r\n";
    default: return "-ERR Too many commands before STLS\r\n";
  }
}

asio::awaitable<ClientOpening> open_client(TlsStream& plain, conf::StartTls protocol, const std::string& name,
                                           Clock::time_point deadline) {
  const ClientDialogue dialogue(protocol, name);
  ClientOpening opening;
  LineReader reader;
  const std::string greeting = dialogue.greeting();
  const error_code greeted = co_await plain.write_all(greeting.data(), greeting.size());
  if (greeted) {
    opening.ended = "the client closed before the greeting";
    co_return opening;
  }
  while (opening.ended.empty()) {
    auto line = co_await with_deadline(reader.read_line(plain, ClientDialogue::kMaxLine), deadline);
    std::string reply;
    if (!line) {
      reply = dialogue.timed_out();
      opening.ended = "timed out before STARTTLS";
    } else if (line->first == asio::error::message_size) {
      reply = dialogue.too_long();
      opening.ended = "a line over " + std::to_string(ClientDialogue::kMaxLine) + " bytes before STARTTLS";
    } else if (line->first) {
      opening.ended = "the client closed before STARTTLS";
      co_return opening;
    } else if (++opening.commands > ClientDialogue::kMaxCommands) {
      reply = dialogue.too_many();
      opening.ended = "over " + std::to_string(ClientDialogue::kMaxCommands) + " commands before STARTTLS";
    } else {
      Answer answer = dialogue.answer(line->second);
      reply = std::move(answer.reply);
      if (answer.next == Answer::Next::close) opening.ended = "the client quit before STARTTLS";
      if (answer.next == Answer::Next::start_tls) {
        opening.start_tls = true;
        opening.pipelined = reader.buffered();
      }
    }
    const error_code written = co_await plain.write_all(reply.data(), reply.size());
    if (written && opening.ended.empty()) opening.ended = "the client closed before STARTTLS";
    if (opening.start_tls) {
      opening.start_tls = !written;
      co_return opening;
    }
  }
  co_return opening;
}

asio::awaitable<std::string> ServerOpening::before_tls(TlsStream& plain) const {
  switch (protocol_) {
    case conf::StartTls::smtp: co_return co_await smtp_starttls(plain, name_);
    case conf::StartTls::imap: co_return co_await imap_starttls(plain);
    case conf::StartTls::pop3: co_return co_await pop3_stls(plain);
    case conf::StartTls::none: break;
  }
  co_return std::string();
}

asio::awaitable<std::string> ServerOpening::after_tls(TlsStream& stream) const {
  LineReader reader;
  switch (protocol_) {
    case conf::StartTls::smtp: {
      SmtpReply greeting = co_await read_smtp_reply(reader, stream, "greeting");
      if (!greeting.error.empty()) co_return greeting.error;
      if (greeting.code != 220) co_return unexpected("the connection", greeting);
      co_return std::string();
    }
    case conf::StartTls::imap: co_return co_await expect_line(reader, stream, "* OK", "greeting");
    case conf::StartTls::pop3: co_return co_await expect_line(reader, stream, "+OK", "greeting");
    case conf::StartTls::none: break;
  }
  co_return std::string();
}

}  // namespace gatehouse::proxy::mail
