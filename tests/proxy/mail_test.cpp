// What a starttls listener says to a client before TLS: the greeting, the
// few commands each protocol allows, STARTTLS/STLS, and a refusal for the
// rest (no mail, login or mailbox command is ever answered in plain text).

#include "proxy/l4/mail.h"

#include <gtest/gtest.h>

namespace gatehouse::proxy::mail {
namespace {

using Next = Answer::Next;

TEST(SmtpDialogue, GreetsAndOffersOnlyStartTls) {
  const ClientDialogue smtp(conf::StartTls::smtp, "mail.contoso.com");
  EXPECT_EQ(smtp.greeting(), "220 mail.contoso.com ESMTP\r\n");
  const Answer ehlo = smtp.answer("EHLO client.example");
  EXPECT_EQ(ehlo.reply, "250-mail.contoso.com\r\n250 STARTTLS\r\n");
  EXPECT_EQ(ehlo.next, Next::more);
  EXPECT_EQ(smtp.answer("helo client.example").reply, "250 mail.contoso.com\r\n");
  EXPECT_EQ(smtp.answer("EHLO").reply.substr(0, 4), "501 ");
}

TEST(SmtpDialogue, StartTlsNoopRsetQuit) {
  const ClientDialogue smtp(conf::StartTls::smtp, "mail.contoso.com");
  const Answer go = smtp.answer("starttls");
  EXPECT_EQ(go.reply, "220 2.0.0 Ready to start TLS\r\n");
  EXPECT_EQ(go.next, Next::start_tls);
  EXPECT_EQ(smtp.answer("STARTTLS now").next, Next::more);  // arguments: 501, no TLS
  EXPECT_EQ(smtp.answer("STARTTLS ").next, Next::more);     // an empty one too
  EXPECT_EQ(smtp.answer("NOOP").reply, "250 2.0.0 OK\r\n");
  EXPECT_EQ(smtp.answer("RSET").reply, "250 2.0.0 OK\r\n");
  const Answer quit = smtp.answer("QUIT");
  EXPECT_EQ(quit.reply.substr(0, 4), "221 ");
  EXPECT_EQ(quit.next, Next::close);
}

TEST(SmtpDialogue, EverythingElseMustWaitForTls) {
  const ClientDialogue smtp(conf::StartTls::smtp, "mail.contoso.com");
  for (const char* line : {"MAIL FROM:<a@contoso.com>", "RCPT TO:<b@contoso.com>", "DATA",
                           "AUTH PLAIN AGFhAGI=", "VRFY admin", "XCLIENT ADDR=10.0.0.1", "", "\x16\x03\x01"}) {
    const Answer a = smtp.answer(line);
    EXPECT_EQ(a.reply, "530 5.7.0 Must issue a STARTTLS command first\r\n") << line;
    EXPECT_EQ(a.next, Next::more) << line;
  }
}

TEST(ImapDialogue, GreetsWithCapabilitiesAndTagsReplies) {
  const ClientDialogue imap(conf::StartTls::imap, "mail.contoso.com");
  EXPECT_EQ(imap.greeting(), "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] mail.contoso.com ready\r\n");
  EXPECT_EQ(imap.answer("a1 CAPABILITY").reply,
            "* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\na1 OK CAPABILITY completed\r\n");
  EXPECT_EQ(imap.answer("a2 noop").reply, "a2 OK NOOP completed\r\n");
  const Answer logout = imap.answer("a3 LOGOUT");
  EXPECT_EQ(logout.next, Next::close);
  EXPECT_NE(logout.reply.find("a3 OK"), std::string::npos);
  const Answer go = imap.answer("a4 STARTTLS");
  EXPECT_EQ(go.reply, "a4 OK Begin TLS negotiation now\r\n");
  EXPECT_EQ(go.next, Next::start_tls);
}

TEST(ImapDialogue, LoginAndMailboxCommandsGetBad) {
  const ClientDialogue imap(conf::StartTls::imap, "mail.contoso.com");
  for (const char* command : {"LOGIN user secret", "AUTHENTICATE PLAIN", "SELECT INBOX", "ID NIL"}) {
    const Answer a = imap.answer(std::string("t ") + command);
    EXPECT_EQ(a.reply, "t BAD Must issue a STARTTLS command first\r\n") << command;
    EXPECT_EQ(a.next, Next::more);
  }
  // No tag, or a tag that is not an atom: an untagged BAD.
  for (const char* line : {"", "LOGIN", "* LOGIN a b", "(x) NOOP", "+ STARTTLS"})
    EXPECT_EQ(imap.answer(line).reply, "* BAD Error in IMAP command received by server\r\n") << line;
  EXPECT_EQ(imap.answer("t STARTTLS x").next, Next::more);
  EXPECT_EQ(imap.answer("t STARTTLS ").next, Next::more);
}

TEST(Pop3Dialogue, CapaStlsQuitAndNothingElse) {
  const ClientDialogue pop3(conf::StartTls::pop3, "mail.contoso.com");
  EXPECT_EQ(pop3.greeting(), "+OK mail.contoso.com ready\r\n");
  EXPECT_EQ(pop3.answer("CAPA").reply, "+OK Capability list follows\r\nSTLS\r\n.\r\n");
  const Answer go = pop3.answer("stls");
  EXPECT_EQ(go.next, Next::start_tls);
  EXPECT_EQ(go.reply.substr(0, 3), "+OK");
  EXPECT_EQ(pop3.answer("QUIT").next, Next::close);
  EXPECT_EQ(pop3.answer("STLS now").next, Next::more);
  EXPECT_EQ(pop3.answer("STLS ").next, Next::more);
  for (const char* line : {"USER alice", "PASS secret", "APOP alice 0123", "AUTH PLAIN", "LIST", "RETR 1"}) {
    const Answer a = pop3.answer(line);
    EXPECT_EQ(a.reply.substr(0, 4), "-ERR") << line;
    EXPECT_EQ(a.next, Next::more) << line;
  }
}

TEST(Dialogue, LastWordsNameTheProblem) {
  const ClientDialogue smtp(conf::StartTls::smtp, "mx.contoso.com");
  EXPECT_EQ(smtp.timed_out().substr(0, 4), "421 ");
  EXPECT_EQ(smtp.too_many().substr(0, 4), "421 ");
  EXPECT_EQ(smtp.too_long().substr(0, 4), "500 ");
  const ClientDialogue imap(conf::StartTls::imap, "mx.contoso.com");
  EXPECT_EQ(imap.timed_out().substr(0, 6), "* BYE ");
  const ClientDialogue pop3(conf::StartTls::pop3, "mx.contoso.com");
  EXPECT_EQ(pop3.too_many().substr(0, 4), "-ERR");
}

}  // namespace
}  // namespace gatehouse::proxy::mail
