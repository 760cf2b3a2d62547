// X-Forwarded-Client-Cert as Envoy writes it, and what a certificate's own
// bytes can never do to it: break out of the quoted subject or inject a field.
// Verification itself runs against real clients in
// tests/integration/test_client_certs.py.

#include <gtest/gtest.h>

#include "sni/certificate.h"
#include "sni/client_trust.h"

namespace gatehouse::sni {
namespace {

TEST(ClientIdentity, XfccInEnvoysFormat) {
  ClientIdentity id;
  id.sha256_hex = "ab01";
  id.subject = "CN=alice,O=Contoso";
  id.uris = {"spiffe://contoso.test/alice"};
  id.dns_names = {"alice.contoso.test", "a.contoso.test"};
  EXPECT_EQ(id.xfcc(),
            "Hash=ab01;Subject=\"CN=alice,O=Contoso\";URI=spiffe://contoso.test/alice;"
            "DNS=alice.contoso.test;DNS=a.contoso.test");
}

TEST(ClientIdentity, XfccEscapesWhatCouldForgeAField) {
  ClientIdentity id;
  id.sha256_hex = "ab01";
  id.subject = R"(CN=x\";By=evil,O=a"b)";
  id.dns_names = {"a;Hash=00", "b\r\nX-Admin: 1"};
  const std::string xfcc = id.xfcc();
  EXPECT_EQ(xfcc, R"(Hash=ab01;Subject="CN=x\\\";By=evil,O=a\"b";DNS="a;Hash=00";DNS="b%0D%0AX-Admin: 1")");
  EXPECT_EQ(xfcc.find('\r'), std::string::npos);
  EXPECT_EQ(xfcc.find('\n'), std::string::npos);
}

TEST(ClientTrust, BadFilesAreNamed) {
  EXPECT_THROW(ClientTrust("/nonexistent/ca.pem", "", 4), CertificateError);
  try {
    ClientTrust("/nonexistent/ca.pem", "", 4);
  } catch (const CertificateError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/ca.pem"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace gatehouse::sni
