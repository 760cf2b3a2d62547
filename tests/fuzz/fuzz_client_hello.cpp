// The ClientHello path of a listener, driven through a real BoringSSL
// server: the input (after one byte that picks the listener's policy) is the
// client's first flight, fed through memory BIOs to an SSL that
// ListenerTls::new_connection made, so that BoringSSL's parser, the early
// callback (SNI, client_offers_ecdsa, SniIndex::select, the context switch)
// and the servername callback all run as they do on an accepted connection.
// The same bytes then go, as text, through the host-name rules and the
// index lookups that the L7 Host check and the coverage report use.

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.h"
#include "proxy/tls/listener_tls.h"
#include "proxy/tls/ticket_keys.h"
#include "sni/certificate.h"
#include "sni/hostname.h"
#include "sni/index.h"
#include "sni/tooling.h"
#include "tests/fuzz/fuzz_check.h"

using gatehouse::fuzz::expect;
namespace sni = gatehouse::sni;
namespace conf = gatehouse::conf;
using gatehouse::proxy::HandshakeInfo;
using gatehouse::proxy::ListenerTls;
using gatehouse::proxy::TicketKeys;

namespace {

struct Fixture {
  std::shared_ptr<TicketKeys> tickets = TicketKeys::random_rotating();
  std::vector<std::shared_ptr<const sni::LoadedCertificate>> certificates;
  // strict_sni x tls policy: index = strict + 2 * tls13.
  std::array<std::unique_ptr<ListenerTls>, 4> listeners;
};

std::shared_ptr<const sni::LoadedCertificate> make(const std::filesystem::path& dir, const std::string& name,
                                                   std::vector<std::string> sans, const std::string& key,
                                                   bool expired = false) {
  sni::NewCertificateOptions options;
  options.common_name = sans.front();
  options.sans = std::move(sans);
  options.key = key;
  if (expired) {
    options.not_before = sni::Clock::now() - std::chrono::days(400);
    options.days = 1;
  }
  const auto files = sni::write_certificate(options, dir / name);
  return sni::load_certificate(name, files.at(0), files.at(1));
}

// Built once: certificates from the project's own `cert new` code (the
// same the tests use), written to a temporary directory only to be read back.
const Fixture& fixture() {
  static const Fixture* built = [] {
    auto* f = new Fixture;
    std::string dir = (std::filesystem::temp_directory_path() / "gatehouse-fuzz-XXXXXX").string();
    if (::mkdtemp(dir.data()) == nullptr) std::abort();
    f->certificates.push_back(make(dir, "mail", {"mail.contoso.com", "autodiscover.contoso.com"}, "ec256"));
    f->certificates.push_back(make(dir, "mail-rsa", {"mail.contoso.com", "autodiscover.contoso.com"}, "rsa2048"));
    f->certificates.push_back(make(dir, "wildcard", {"*.contoso.com"}, "ec256"));
    f->certificates.push_back(make(dir, "fabrikam", {"owa.fabrikam.com", "*.fabrikam.com"}, "ec256"));
    f->certificates.push_back(make(dir, "expired", {"legacy.fabrikam.com"}, "ec256", true));
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
    for (int i = 0; i < 4; ++i) {
      conf::Listener listener;
      listener.name = "https";
      listener.strict_sni = (i & 1) != 0;
      listener.tls = (i & 2) != 0 ? conf::TlsPolicy::tls13 : conf::TlsPolicy::modern;
      listener.alpn = {"h2", "http/1.1"};
      f->listeners[i] = std::make_unique<ListenerTls>(listener, f->certificates, *f->tickets);
    }
    return f;
  }();
  return *built;
}

// The handshake as the listener runs it, with the input as all the client sends.
void handshake(const ListenerTls& listener, std::string_view flight) {
  HandshakeInfo info;
  bssl::UniquePtr<SSL> ssl = listener.new_connection(&info);
  expect(ssl != nullptr, "a listener makes an SSL");
  BIO* in = BIO_new_mem_buf(flight.data(), static_cast<int>(flight.size()));
  BIO* out = BIO_new(BIO_s_mem());
  BIO_set_mem_eof_return(in, -1);   // no more yet, rather than end of stream
  SSL_set_bio(ssl.get(), in, out);  // owned by ssl from here
  // Records after the ClientHello (a fuzzer may invent some) are read too.
  for (int i = 0; i < 8; ++i) {
    const int rv = SSL_do_handshake(ssl.get());
    if (rv == 1 || SSL_get_error(ssl.get(), rv) != SSL_ERROR_WANT_READ || BIO_pending(in) == 0) break;
  }
  if (info.certificate == nullptr) return;
  expect(!info.rejected, "a chosen certificate is not a rejection");
  if (info.match == sni::MatchKind::exact || info.match == sni::MatchKind::wildcard) {
    const auto host = sni::normalize_host(info.sni);
    expect(host.has_value(), "a name matched by the index is a host name");
    expect(sni::covers(*info.certificate, *host), "the certificate chosen for a name covers it (the L7 Host check)");
  }
}

void host_rules(const sni::SniIndex& index, std::string_view text) {
  const auto host = sni::normalize_host(text);
  if (host) {
    const auto again = sni::normalize_host(*host);
    expect(again && *again == *host, "normalize_host is idempotent");
    expect(sni::host_matches(*host, *host), "a host matches itself");
    const std::string_view parent = sni::wildcard_parent(*host);
    if (!parent.empty()) expect(sni::host_matches("*." + std::string(parent), *host), "*.parent matches its child");
    for (const auto& c : index.certificates()) (void)sni::covers(*c, *host);
  }
  const sni::Pattern pattern = sni::normalize_pattern(text);
  (void)sni::describe(pattern.error);
  if (pattern.error == sni::PatternError::none) {
    expect(sni::normalize_pattern(pattern.text).text == pattern.text, "normalize_pattern is idempotent");
    if (host) (void)sni::host_matches(pattern.text, *host);
    (void)sni::is_wildcard(pattern.text);
  }
  for (bool ecdsa : {false, true}) {
    const sni::Selection selected = index.select(text, ecdsa);
    expect((selected.certificate == nullptr) == (selected.kind == sni::MatchKind::rejected),
           "select names a certificate unless it rejects");
    const sni::Selection covering = index.covering(text, ecdsa);
    expect(covering.kind != sni::MatchKind::default_certificate, "covering never falls back to the default");
    if (covering.certificate != nullptr && host)
      expect(sni::covers(*covering.certificate, *host), "covering picks a certificate that covers the host");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const Fixture& f = fixture();
  if (size == 0) return 0;
  const ListenerTls& listener = *f.listeners[data[0] & 3];
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  handshake(listener, rest);
  host_rules(listener.index(), rest);
  return 0;
}
