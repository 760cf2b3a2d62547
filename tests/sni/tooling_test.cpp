#include "sni/tooling.h"

#include <sys/stat.h>

#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <boost/json.hpp>

#include <cstdio>
#include <memory>

#include "tests/sni/test_certs.h"

namespace gatehouse::sni {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::TempDir;

namespace json = boost::json;

std::string sha1_hex_of_der(X509* cert) {
  std::uint8_t* der = nullptr;
  const int length = i2d_X509(cert, &der);
  std::uint8_t digest[SHA_DIGEST_LENGTH];
  SHA1(der, static_cast<std::size_t>(length), digest);
  OPENSSL_free(der);
  std::string hex;
  char byte[3];
  for (std::uint8_t b : digest) {
    std::snprintf(byte, sizeof byte, "%02X", b);
    hex += byte;
  }
  return hex;
}

bssl::UniquePtr<X509> parse_pem_cert(const std::string& pem) {
  bssl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return bssl::UniquePtr<X509>(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

std::vector<std::string> san_names(const STACK_OF(X509_EXTENSION) * extensions) {
  std::vector<std::string> names;
  const int at = X509v3_get_ext_by_NID(extensions, NID_subject_alt_name, -1);
  if (at < 0) return names;
  bssl::UniquePtr<GENERAL_NAMES> sans(static_cast<GENERAL_NAMES*>(X509V3_EXT_d2i(X509v3_get_ext(extensions, at))));
  for (const GENERAL_NAME* name : sans.get()) {
    if (name->type == GEN_DNS) {
      names.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(name->d.dNSName)),
                         static_cast<std::size_t>(ASN1_STRING_length(name->d.dNSName)));
    }
  }
  return names;
}

struct KeyCase {
  std::string key;
  std::string key_type;
  int bits;
  std::string signature;
};

class GenerateEachKey : public ::testing::TestWithParam<KeyCase> {};

TEST_P(GenerateEachKey, GeneratesAndInspects) {
  const KeyCase& c = GetParam();
  TempDir dir;
  NewCertificateOptions options;
  options.common_name = "mail.contoso.com";
  options.sans = {"mail.contoso.com", "Autodiscover.Contoso.com"};
  options.key = c.key;
  const auto written = write_certificate(options, dir / "mail");
  ASSERT_EQ(written.size(), 2u);
  EXPECT_EQ(written[0], dir / "mail.crt");
  EXPECT_EQ(written[1], dir / "mail.key");

  const auto chain = read_certificates(written[0]);
  ASSERT_EQ(chain.size(), 1u);
  const json::object inspected = inspect_json(written[0]);
  EXPECT_EQ(inspected.at("file").as_string(), written[0].string());
  const auto& certs = inspected.at("certificates").as_array();
  ASSERT_EQ(certs.size(), 1u);
  const auto& cert = certs[0].as_object();
  EXPECT_EQ(cert.at("Subject").as_string(), "CN=mail.contoso.com");
  EXPECT_EQ(cert.at("Issuer").as_string(), "CN=mail.contoso.com");
  EXPECT_EQ(json::serialize(cert.at("CertificateDomains")), R"(["mail.contoso.com","autodiscover.contoso.com"])");
  EXPECT_EQ(cert.at("Thumbprint").as_string(), sha1_hex_of_der(chain.front().get()));
  EXPECT_EQ(cert.at("Sha256Pin").as_string(), spki_pin(chain.front().get()));
  EXPECT_EQ(cert.at("PublicKeySize").as_int64(), c.bits);
  EXPECT_EQ(cert.at("KeyType").as_string(), c.key_type);
  EXPECT_EQ(cert.at("SignatureAlgorithm").as_string(), c.signature);
  EXPECT_EQ(json::serialize(cert.at("EnhancedKeyUsage")), R"x(["Server Authentication (1.3.6.1.5.5.7.3.1)"])x");
  EXPECT_TRUE(cert.at("IsSelfSigned").as_bool());
  EXPECT_TRUE(cert.at("HasPrivateKey").as_bool());
  EXPECT_EQ(cert.at("SerialNumber").as_string().size(), 32u);  // 16 random bytes
  EXPECT_THAT(std::string(cert.at("NotBefore").as_string()),
              ::testing::MatchesRegex("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"));

  // And it loads as a serving certificate.
  const auto loaded = load_certificate("mail", written[0], written[1]);
  EXPECT_THAT(loaded->names, ElementsAre("mail.contoso.com", "autodiscover.contoso.com"));
}

INSTANTIATE_TEST_SUITE_P(Tooling, GenerateEachKey,
                         ::testing::Values(KeyCase{"rsa2048", "RSA", 2048, "sha256WithRSAEncryption"},
                                           KeyCase{"rsa3072", "RSA", 3072, "sha256WithRSAEncryption"},
                                           KeyCase{"ec256", "ECDSA P-256", 256, "ecdsa-with-SHA256"},
                                           KeyCase{"ec384", "ECDSA P-384", 384, "ecdsa-with-SHA384"}),
                         [](const auto& info) { return info.param.key; });

TEST(Tooling, ExtensionsLikeExchangeSelfSigned) {
  NewCertificateOptions options;
  options.common_name = "mbx01.contoso.com";
  options.key = "rsa2048";
  const auto generated = generate_certificate(options);
  const auto cert = parse_pem_cert(generated.cert_pem);
  ASSERT_TRUE(cert);
  EXPECT_EQ(X509_get_version(cert.get()), X509_VERSION_3);
  // No --san: the CN is the only SAN.
  const auto info = describe(cert.get());
  EXPECT_THAT(info.dns_names, ElementsAre("mbx01.contoso.com"));
  // Digital Signature + Key Encipherment (a0), end entity, serverAuth, SKI.
  EXPECT_EQ(X509_get_key_usage(cert.get()), static_cast<std::uint32_t>(KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT));
  EXPECT_EQ(X509_get_extended_key_usage(cert.get()) & XKU_SSL_SERVER, static_cast<std::uint32_t>(XKU_SSL_SERVER));
  int critical = -1;
  bssl::UniquePtr<BASIC_CONSTRAINTS> bc(
      static_cast<BASIC_CONSTRAINTS*>(X509_get_ext_d2i(cert.get(), NID_basic_constraints, &critical, nullptr)));
  ASSERT_TRUE(bc);
  EXPECT_FALSE(bc->ca);
  EXPECT_EQ(critical, 1);
  EXPECT_GE(X509_get_ext_by_NID(cert.get(), NID_subject_key_identifier, -1), 0);
  // Serial positive, 16 bytes.
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert.get());
  EXPECT_EQ(ASN1_STRING_type(serial), V_ASN1_INTEGER);
  EXPECT_EQ(ASN1_STRING_length(serial), 16);

  NewCertificateOptions ec = options;
  ec.key = "ec256";
  const auto ec_cert = parse_pem_cert(generate_certificate(ec).cert_pem);
  EXPECT_EQ(X509_get_key_usage(ec_cert.get()), static_cast<std::uint32_t>(KU_DIGITAL_SIGNATURE));
}

TEST(Tooling, SerialsDiffer) {
  NewCertificateOptions options;
  options.common_name = "mail.contoso.com";
  options.key = "ec256";
  const auto a = parse_pem_cert(generate_certificate(options).cert_pem);
  const auto b = parse_pem_cert(generate_certificate(options).cert_pem);
  EXPECT_NE(ASN1_INTEGER_cmp(X509_get0_serialNumber(a.get()), X509_get0_serialNumber(b.get())), 0);
}

TEST(Tooling, NotBeforeAndDays) {
  NewCertificateOptions options;
  options.common_name = "old.contoso.com";
  options.key = "ec256";
  options.not_before = Clock::now() - std::chrono::days(400);
  options.days = 1;
  const auto cert = parse_pem_cert(generate_certificate(options).cert_pem);
  const auto info = describe(cert.get());
  EXPECT_TRUE(info.expired(Clock::now()));
  EXPECT_EQ(std::chrono::duration_cast<std::chrono::hours>(info.not_after - info.not_before).count(), 24);
  EXPECT_LT(std::chrono::abs(info.not_before - *options.not_before), std::chrono::seconds(2));
}

TEST(Tooling, CsrCarriesSubjectAndNames) {
  TempDir dir;
  NewCertificateOptions options;
  options.common_name = "mail.contoso.com";
  options.sans = {"mail.contoso.com", "autodiscover.contoso.com"};
  options.key = "ec256";
  options.csr = true;
  const auto written = write_certificate(options, dir / "request");
  ASSERT_EQ(written.size(), 2u);
  EXPECT_EQ(written[0], dir / "request.csr");
  EXPECT_EQ(written[1], dir / "request.key");
  EXPECT_FALSE(std::filesystem::exists(dir / "request.crt"));

  const std::string pem = testing::read_text(written[0]);
  EXPECT_THAT(pem, HasSubstr("-----BEGIN CERTIFICATE REQUEST-----"));
  bssl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  bssl::UniquePtr<X509_REQ> request(PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr));
  ASSERT_TRUE(request);
  bssl::UniquePtr<EVP_PKEY> public_key(X509_REQ_get_pubkey(request.get()));
  EXPECT_EQ(X509_REQ_verify(request.get(), public_key.get()), 1);  // signed by its key
  const auto key = read_private_key(written[1]);
  EXPECT_EQ(EVP_PKEY_cmp(public_key.get(), key.get()), 1);
  char cn[256] = {};
  X509_NAME_get_text_by_NID(X509_REQ_get_subject_name(request.get()), NID_commonName, cn, sizeof cn);
  EXPECT_STREQ(cn, "mail.contoso.com");
  bssl::UniquePtr<STACK_OF(X509_EXTENSION)> extensions(X509_REQ_get_extensions(request.get()));
  ASSERT_TRUE(extensions);
  EXPECT_THAT(san_names(extensions.get()), ElementsAre("mail.contoso.com", "autodiscover.contoso.com"));
}

TEST(Tooling, KeyFileMode0600EvenWhenItExisted) {
  TempDir dir;
  const auto key_file = dir / "mail.key";
  testing::write_text(key_file, "old");
  ASSERT_EQ(::chmod(key_file.c_str(), 0644), 0);
  NewCertificateOptions options;
  options.common_name = "mail.contoso.com";
  options.key = "ec256";
  const auto written = write_certificate(options, dir / "mail");
  struct stat st {};
  ASSERT_EQ(::stat(key_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(written[0].c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  EXPECT_THAT(testing::read_text(key_file), HasSubstr("-----BEGIN PRIVATE KEY-----"));  // PKCS#8
}

TEST(Tooling, PrefixWithExtension) {
  TempDir dir;
  NewCertificateOptions options;
  options.common_name = "mail.contoso.com";
  options.key = "ec256";
  const auto written = write_certificate(options, dir / "mail.crt");
  EXPECT_EQ(written[0], dir / "mail.crt");
  EXPECT_EQ(written[1], dir / "mail.key");
  // A name that merely contains dots keeps them.
  const auto dotted = write_certificate(options, dir / "mail.contoso.com");
  EXPECT_EQ(dotted[0], dir / "mail.contoso.com.crt");
}

TEST(Tooling, WriteErrorNamesTheFile) {
  TempDir dir;
  NewCertificateOptions options;
  options.common_name = "mail.contoso.com";
  options.key = "ec256";
  const auto prefix = dir / "missing-dir" / "mail";
  try {
    write_certificate(options, prefix);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_THAT(e.what(), AllOf(HasSubstr((dir / "missing-dir" / "mail.key").string()), HasSubstr("cannot create")));
  }
}

struct BadOption {
  std::string what;
  std::function<void(NewCertificateOptions&)> change;
  std::string flag;
};

TEST(Tooling, BadOptionsNameTheFlag) {
  const std::vector<BadOption> cases = {
      {"unknown key", [](auto& o) { o.key = "rsa1024"; }, "--key"},
      {"dsa", [](auto& o) { o.key = "dsa"; }, "--key"},
      {"empty cn", [](auto& o) { o.common_name = ""; }, "--cn"},
      {"cn not a host without --san", [](auto& o) { o.common_name = "Mailbox 01"; }, "--cn"},
      {"cn too long",
       [](auto& o) {
         o.common_name = std::string(65, 'a');
         o.sans = {"a.contoso.com"};
       },
       "--cn"},
      {"zero days", [](auto& o) { o.days = 0; }, "--days"},
      {"negative days", [](auto& o) { o.days = -5; }, "--days"},
      {"tld wildcard",
       [](auto& o) {
         o.sans = {"mail.contoso.com", "*.com"};
       },
       "--san"},
      {"partial wildcard", [](auto& o) { o.sans = {"m*.contoso.com"}; }, "--san"},
      {"bad characters", [](auto& o) { o.sans = {"mail_contoso com"}; }, "--san"},
      {"empty san", [](auto& o) { o.sans = {""}; }, "--san"},
  };
  for (const auto& c : cases) {
    NewCertificateOptions options;
    options.common_name = "mail.contoso.com";
    options.key = "ec256";
    c.change(options);
    try {
      generate_certificate(options);
      ADD_FAILURE() << c.what << ": no error";
    } catch (const std::invalid_argument& e) {
      EXPECT_THAT(e.what(), ::testing::StartsWith(c.flag)) << c.what;
    }
  }
}

TEST(Tooling, FreeTextCnWithSans) {
  NewCertificateOptions options;
  options.common_name = "Mailbox01";
  options.sans = {"mailbox01", "mailbox01.contoso.com"};  // Exchange's default shape
  options.key = "ec256";
  const auto cert = parse_pem_cert(generate_certificate(options).cert_pem);
  const auto info = describe(cert.get());
  EXPECT_EQ(info.subject, "CN=Mailbox01");
  EXPECT_THAT(info.dns_names, ElementsAre("mailbox01", "mailbox01.contoso.com"));
}

TEST(Inspect, HasPrivateKeyOnlyWhenAMatchingKeyIsBeside) {
  TempDir dir;
  const auto a = testing::make_cert(dir.path(), "a", "a.contoso.com");
  const auto b = testing::make_cert(dir.path(), "b", "b.contoso.com");
  auto has_key = [](const std::filesystem::path& file) {
    return inspect_json(file).at("certificates").as_array().at(0).as_object().at("HasPrivateKey").as_bool();
  };
  EXPECT_TRUE(has_key(a.cert));
  std::filesystem::remove(a.key);
  EXPECT_FALSE(has_key(a.cert));
  std::filesystem::copy_file(b.key, a.key);  // a key that does not match
  EXPECT_FALSE(has_key(a.cert));
  // A combined PEM (certificate and key in one file) counts too.
  const auto combined = dir / "combined.pem";
  testing::write_text(combined, testing::read_text(b.cert) + testing::read_text(b.key));
  EXPECT_TRUE(has_key(combined));
}

TEST(Inspect, EveryCertificateOfTheFile) {
  TempDir dir;
  const auto leaf = testing::make_cert(dir.path(), "leaf", "mail.contoso.com");
  const auto other = testing::make_cert(dir.path(), "other", "ca.contoso.com");
  const auto bundle = dir / "leaf.pem";
  testing::write_text(bundle, testing::read_text(leaf.cert) + testing::read_text(other.cert));
  // leaf.key, written beside it by make_cert, belongs to the first certificate.
  const auto certs = inspect_json(bundle).at("certificates").as_array();
  ASSERT_EQ(certs.size(), 2u);
  EXPECT_EQ(certs[0].as_object().at("Subject").as_string(), "CN=mail.contoso.com");
  EXPECT_TRUE(certs[0].as_object().at("HasPrivateKey").as_bool());
  EXPECT_EQ(certs[1].as_object().at("Subject").as_string(), "CN=ca.contoso.com");
  EXPECT_FALSE(certs[1].as_object().at("HasPrivateKey").as_bool());
}

TEST(Inspect, TextIsAlignedFormatList) {
  TempDir dir;
  const auto files =
      testing::make_cert(dir.path(), "mail", "mail.contoso.com", {"mail.contoso.com", "autodiscover.contoso.com"});
  std::ostringstream out;
  inspect_text(files.cert, out);
  const std::string text = out.str();
  const std::string thumb = thumbprint(read_certificates(files.cert).front().get());
  EXPECT_THAT(text, HasSubstr("Subject            : CN=mail.contoso.com\n"));
  EXPECT_THAT(text, HasSubstr("CertificateDomains : {mail.contoso.com, autodiscover.contoso.com}\n"));
  EXPECT_THAT(text, HasSubstr("Thumbprint         : " + thumb + "\n"));
  EXPECT_THAT(text, HasSubstr("IsSelfSigned       : True\n"));
  EXPECT_THAT(text, HasSubstr("HasPrivateKey      : True\n"));
  EXPECT_THAT(text, HasSubstr("KeyType            : ECDSA P-256\n"));
  // Every line is "Name<padding> : value" with the colon in one column.
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    EXPECT_EQ(line.find(" : "), 18u) << line;
  }
}

TEST(Inspect, MissingFileThrowsNamingIt) {
  TempDir dir;
  EXPECT_THROW(inspect_json(dir / "nope.crt"), CertificateError);
  std::ostringstream out;
  try {
    inspect_text(dir / "nope.crt", out);
    FAIL();
  } catch (const CertificateError& e) {
    EXPECT_THAT(e.what(), HasSubstr((dir / "nope.crt").string()));
  }
}

// The thumbprint is what `openssl x509 -fingerprint -sha1` prints, colons aside.
TEST(Inspect, ThumbprintMatchesOpensslCli) {
  if (std::system("openssl version >/dev/null 2>&1") != 0) GTEST_SKIP() << "openssl CLI not installed";
  TempDir dir;
  const auto files = testing::make_cert(dir.path(), "mail", "mail.contoso.com", {}, "rsa2048");
  const auto out = dir / "fingerprint.txt";
  const std::string command =
      "openssl x509 -noout -fingerprint -sha1 -in '" + files.cert.string() + "' > '" + out.string() + "'";
  ASSERT_EQ(std::system(command.c_str()), 0);
  std::string fingerprint = testing::read_text(out);
  fingerprint = fingerprint.substr(fingerprint.find('=') + 1);
  std::erase(fingerprint, ':');
  std::erase(fingerprint, '\n');
  EXPECT_EQ(inspect_json(files.cert).at("certificates").as_array()[0].as_object().at("Thumbprint").as_string(),
            fingerprint);
}

}  // namespace
}  // namespace gatehouse::sni
