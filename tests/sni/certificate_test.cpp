#include "sni/certificate.h"

#include <openssl/mem.h>
#include <openssl/sha.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/sni/test_certs.h"

namespace gatehouse::sni {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::make_cert;
using testing::make_raw_cert;
using testing::RawOptions;
using testing::TempDir;

// The message of the CertificateError `load` throws, or "" when it loads.
std::string load_error(const std::filesystem::path& cert, const std::filesystem::path& key) {
  try {
    load_certificate("test", cert, key);
  } catch (const CertificateError& e) {
    return e.what();
  }
  return {};
}

TEST(LoadCertificate, GeneratedCertificateLoads) {
  TempDir dir;
  const auto files = make_cert(dir.path(), "mail", "mail.contoso.com",
                               {"mail.contoso.com", "Autodiscover.Contoso.com", "*.contoso.com"}, "rsa2048");
  const auto loaded = load_certificate("contoso-san", files.cert, files.key);
  EXPECT_EQ(loaded->name, "contoso-san");
  EXPECT_EQ(loaded->cert_file, files.cert);
  EXPECT_EQ(loaded->key_file, files.key);
  ASSERT_EQ(loaded->chain.size(), 1u);
  EXPECT_THAT(loaded->names, ElementsAre("mail.contoso.com", "autodiscover.contoso.com", "*.contoso.com"));
  EXPECT_EQ(loaded->info.subject, "CN=mail.contoso.com");
  EXPECT_EQ(loaded->info.issuer, "CN=mail.contoso.com");
  EXPECT_EQ(loaded->info.common_name, "mail.contoso.com");
  EXPECT_EQ(loaded->info.key_type, KeyType::rsa);
  EXPECT_EQ(loaded->info.key_bits, 2048);
  EXPECT_EQ(loaded->info.curve, "");
  EXPECT_EQ(loaded->info.signature_algorithm, "sha256WithRSAEncryption");
  EXPECT_TRUE(loaded->info.has_eku_extension);
  EXPECT_THAT(loaded->info.extended_key_usage, ElementsAre("serverAuth"));
  EXPECT_TRUE(loaded->info.self_signed);
  EXPECT_FALSE(loaded->info.expired(Clock::now()));
  // Exchange's self-signed default: 5 years.
  const auto validity = loaded->info.not_after - loaded->info.not_before;
  EXPECT_EQ(std::chrono::duration_cast<std::chrono::days>(validity).count(), 5 * 365);
  EXPECT_LT(loaded->info.not_before, Clock::now());
  EXPECT_GT(loaded->info.not_before, Clock::now() - std::chrono::minutes(5));
}

TEST(LoadCertificate, SubjectInWindowsOrder) {
  TempDir dir;
  const auto files = make_raw_cert(dir.path(), "raw", RawOptions{});  // DER order: O, then CN
  const auto loaded = load_certificate("raw", files.cert, files.key);
  EXPECT_EQ(loaded->info.subject, "CN=raw.contoso.com, O=Contoso");
  EXPECT_EQ(loaded->info.key_type, KeyType::ecdsa);
  EXPECT_EQ(loaded->info.curve, "P-256");
  EXPECT_EQ(loaded->info.key_bits, 256);
  EXPECT_FALSE(loaded->info.has_eku_extension);
  // No SAN: the CN is the name.
  EXPECT_THAT(loaded->names, ElementsAre("raw.contoso.com"));
}

TEST(LoadCertificate, CnIgnoredWhenSanPresent) {
  TempDir dir;
  const auto files = make_cert(dir.path(), "ab", "a.example.org", {"b.example.org"});
  const auto loaded = load_certificate("ab", files.cert, files.key);
  EXPECT_THAT(loaded->names, ElementsAre("b.example.org"));
  EXPECT_THAT(loaded->info.dns_names, ElementsAre("b.example.org"));
}

TEST(LoadCertificate, KeyMismatchNamesBothFilesAndThumbprint) {
  TempDir dir;
  const auto mail = make_cert(dir.path(), "mail", "mail.contoso.com");
  const auto other = make_cert(dir.path(), "other", "other.contoso.com");
  const std::string thumb = thumbprint(read_certificates(mail.cert).front().get());
  EXPECT_THAT(load_error(mail.cert, other.key),
              AllOf(HasSubstr(other.key.string() + ": private key does not match certificate " + mail.cert.string()),
                    HasSubstr("thumbprint " + thumb), HasSubstr("use the key generated with this certificate")));
}

TEST(LoadCertificate, KeyOfALaterCertificateSaysPutTheLeafFirst) {
  TempDir dir;
  const auto leaf = make_cert(dir.path(), "leaf", "mail.contoso.com");
  const auto second = make_cert(dir.path(), "second", "ca.contoso.com");
  const auto bundle = dir / "bundle.crt";
  testing::write_text(bundle, testing::read_text(leaf.cert) + testing::read_text(second.cert));
  EXPECT_THAT(load_error(bundle, second.key),
              AllOf(HasSubstr(bundle.string()), HasSubstr("certificate 2"), HasSubstr("leaf certificate first")));
  // With the right key the chain loads, leaf first.
  const auto loaded = load_certificate("bundle", bundle, leaf.key);
  ASSERT_EQ(loaded->chain.size(), 2u);
  EXPECT_EQ(loaded->info.common_name, "mail.contoso.com");
}

TEST(LoadCertificate, Rsa1024Refused) {
  TempDir dir;
  RawOptions o;
  o.rsa_bits = 1024;
  const auto files = make_raw_cert(dir.path(), "weak", o);
  EXPECT_THAT(load_error(files.cert, files.key),
              AllOf(HasSubstr(files.cert.string()), HasSubstr("1024 bits"), HasSubstr("2048")));
}

TEST(LoadCertificate, P521Refused) {
  TempDir dir;
  RawOptions o;
  o.curve = NID_secp521r1;
  const auto files = make_raw_cert(dir.path(), "p521", o);
  EXPECT_THAT(load_error(files.cert, files.key), AllOf(HasSubstr(files.cert.string()), HasSubstr("P-521")));
}

TEST(LoadCertificate, WildcardOverTldRefused) {
  TempDir dir;
  RawOptions o;
  o.dns_sans = {"mail.contoso.com", "*.com"};
  const auto files = make_raw_cert(dir.path(), "tld", o);
  EXPECT_THAT(load_error(files.cert, files.key),
              AllOf(HasSubstr(files.cert.string()), HasSubstr("\"*.com\""), HasSubstr("reissue")));
}

TEST(LoadCertificate, PartialWildcardRefused) {
  TempDir dir;
  RawOptions o;
  o.dns_sans = {"m*.contoso.com"};
  const auto files = make_raw_cert(dir.path(), "partial", o);
  EXPECT_THAT(load_error(files.cert, files.key), HasSubstr("m*.contoso.com"));
}

TEST(LoadCertificate, NoHostNameRefused) {
  TempDir dir;
  RawOptions o;
  o.common_name = "Microsoft Exchange Server Auth Certificate";
  const auto files = make_raw_cert(dir.path(), "auth", o);
  EXPECT_THAT(load_error(files.cert, files.key),
              AllOf(HasSubstr(files.cert.string()), HasSubstr("names no host"), HasSubstr("--san")));
}

TEST(LoadCertificate, GarbageFile) {
  TempDir dir;
  const auto key = make_cert(dir.path(), "mail", "mail.contoso.com").key;
  const auto garbage = dir / "garbage.crt";
  testing::write_text(garbage, "this is not a certificate\n");
  EXPECT_THAT(load_error(garbage, key),
              AllOf(HasSubstr(garbage.string() + ": no certificate found"), HasSubstr("BEGIN CERTIFICATE")));
}

TEST(LoadCertificate, CorruptPemBlock) {
  TempDir dir;
  const auto files = make_cert(dir.path(), "mail", "mail.contoso.com");
  const auto corrupt = dir / "corrupt.crt";
  testing::write_text(
      corrupt, testing::read_text(files.cert) + "-----BEGIN CERTIFICATE-----\nnot!base64\n-----END CERTIFICATE-----\n");
  EXPECT_THAT(load_error(corrupt, files.key),
              AllOf(HasSubstr(corrupt.string()), HasSubstr("certificate 2 is not valid PEM")));
}

TEST(LoadCertificate, MissingFiles) {
  TempDir dir;
  const auto files = make_cert(dir.path(), "mail", "mail.contoso.com");
  const auto missing = dir / "missing.crt";
  EXPECT_THAT(load_error(missing, files.key), AllOf(HasSubstr(missing.string()), HasSubstr("no such file")));
  const auto missing_key = dir / "missing.key";
  EXPECT_THAT(load_error(files.cert, missing_key), AllOf(HasSubstr(missing_key.string()), HasSubstr("no such file")));
}

TEST(LoadCertificate, SwappedCertAndKey) {
  TempDir dir;
  const auto files = make_cert(dir.path(), "mail", "mail.contoso.com");
  EXPECT_THAT(load_error(files.key, files.cert), HasSubstr("swapped"));
}

TEST(LoadCertificate, EncryptedKeyRefused) {
  TempDir dir;
  const auto files = make_cert(dir.path(), "mail", "mail.contoso.com");
  const auto encrypted = dir / "encrypted.key";
  testing::write_text(encrypted, "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n");
  EXPECT_THAT(load_error(files.cert, encrypted), AllOf(HasSubstr(encrypted.string()), HasSubstr("encrypted")));
}

TEST(ReadCertificates, AcceptsDer) {
  TempDir dir;
  const auto files = make_cert(dir.path(), "mail", "mail.contoso.com");
  const auto pem = read_certificates(files.cert);
  std::uint8_t* der = nullptr;
  const int length = i2d_X509(pem.front().get(), &der);
  ASSERT_GT(length, 0);
  const auto der_file = dir / "mail.cer";
  testing::write_text(der_file, std::string(reinterpret_cast<const char*>(der), static_cast<std::size_t>(length)));
  OPENSSL_free(der);
  const auto read = read_certificates(der_file);
  ASSERT_EQ(read.size(), 1u);
  EXPECT_EQ(thumbprint(read.front().get()), thumbprint(pem.front().get()));
}

TEST(ReadPrivateKey, TraditionalRsaAndEcFormats) {
  TempDir dir;
  // Keys as `openssl genrsa` (traditional) and `openssl ecparam -genkey` (with parameters) write them.
  RawOptions rsa;
  rsa.rsa_bits = 2048;
  auto rsa_key = testing::raw_key(rsa);
  bssl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  ASSERT_TRUE(
      PEM_write_bio_RSAPrivateKey(bio.get(), EVP_PKEY_get0_RSA(rsa_key.get()), nullptr, nullptr, 0, nullptr, nullptr));
  const std::uint8_t* data = nullptr;
  std::size_t length = 0;
  BIO_mem_contents(bio.get(), &data, &length);
  const auto rsa_file = dir / "rsa.key";
  testing::write_text(rsa_file, std::string(reinterpret_cast<const char*>(data), length));
  EXPECT_EQ(EVP_PKEY_id(read_private_key(rsa_file).get()), EVP_PKEY_RSA);

  auto ec_key = testing::raw_key(RawOptions{});
  bssl::UniquePtr<BIO> ec_bio(BIO_new(BIO_s_mem()));
  ASSERT_TRUE(PEM_write_bio_ECPrivateKey(ec_bio.get(), EVP_PKEY_get0_EC_KEY(ec_key.get()), nullptr, nullptr, 0, nullptr,
                                         nullptr));
  BIO_mem_contents(ec_bio.get(), &data, &length);
  const auto ec_file = dir / "ec.key";
  testing::write_text(ec_file, "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n" +
                                   std::string(reinterpret_cast<const char*>(data), length));
  EXPECT_EQ(EVP_PKEY_id(read_private_key(ec_file).get()), EVP_PKEY_EC);
}

TEST(Describe, ThumbprintIsSha1OfDer) {
  TempDir dir;
  const auto files = make_cert(dir.path(), "mail", "mail.contoso.com");
  const auto chain = read_certificates(files.cert);
  std::uint8_t* der = nullptr;
  const int length = i2d_X509(chain.front().get(), &der);
  std::uint8_t digest[SHA_DIGEST_LENGTH];
  SHA1(der, static_cast<std::size_t>(length), digest);
  OPENSSL_free(der);
  char hex[2 * SHA_DIGEST_LENGTH + 1];
  for (int i = 0; i < SHA_DIGEST_LENGTH; ++i) std::snprintf(hex + 2 * i, 3, "%02X", digest[i]);
  EXPECT_EQ(thumbprint(chain.front().get()), hex);
  EXPECT_EQ(describe(chain.front().get()).thumbprint, hex);
}

TEST(Describe, Sha1SignatureAndClientAuthOnly) {
  TempDir dir;
  RawOptions o;
  o.rsa_bits = 2048;
  o.digest = EVP_sha1();
  o.eku = {NID_client_auth};
  const auto files = make_raw_cert(dir.path(), "old", o);
  const auto info = describe(read_certificates(files.cert).front().get());
  EXPECT_EQ(info.signature_algorithm, "sha1WithRSAEncryption");
  EXPECT_TRUE(info.has_eku_extension);
  EXPECT_THAT(info.extended_key_usage, ElementsAre("clientAuth"));
}

TEST(Describe, ExpiredWindow) {
  TempDir dir;
  const auto files = make_cert(dir.path(), "old", "old.contoso.com", {}, "ec256", /*expired=*/true);
  const auto info = describe(read_certificates(files.cert).front().get());
  EXPECT_TRUE(info.expired(Clock::now()));
  EXPECT_FALSE(info.expired(info.not_before + std::chrono::hours(1)));
  EXPECT_TRUE(info.expired(info.not_before - std::chrono::hours(1)));
}

}  // namespace
}  // namespace gatehouse::sni
