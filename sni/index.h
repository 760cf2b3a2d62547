#pragma once
// The SNI index of one listener: built once per config generation, then a pure
// O(1) lookup (exact name hash, then the one-level wildcard key, then the
// default), called from BoringSSL's early callback before any key is used.

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "sni/certificate.h"

namespace gatehouse::sni {

enum class MatchKind { exact, wildcard, default_certificate, rejected };
std::string_view to_string(MatchKind);

struct Selection {
  const LoadedCertificate* certificate = nullptr;  // nullptr only when kind == rejected
  MatchKind kind = MatchKind::rejected;
};

// Whether `certificate` lists a name covering `normalised_host` (exact or
// one-level wildcard): the L7 check that a request's Host belongs to the
// certificate its connection's SNI chose (else 421).
bool covers(const LoadedCertificate& certificate, std::string_view normalised_host);

class SniIndex {
 public:
  // `certificates` in listener order; `default_name` names one of them (""
  // means the first). With `strict`, an absent or unknown name is rejected
  // instead of getting the default. Throws std::invalid_argument when
  // `default_name` is not among `certificates`.
  SniIndex(std::vector<std::shared_ptr<const LoadedCertificate>> certificates, std::string_view default_name,
           bool strict);

  // `server_name` as the client sent it (may be empty, any case, trailing dot).
  // Among several certificates for a name: unexpired before expired (an
  // expired one only when nothing else, exact or wildcard, covers the name),
  // then ECDSA when `client_offers_ecdsa`, else RSA.
  Selection select(std::string_view server_name, bool client_offers_ecdsa, Clock::time_point now = Clock::now()) const;

  // Which certificate would serve `host` (for the coverage report and for the
  // L7 Host check); same rules as select() without the default. `host` may
  // also be a route pattern "*.parent": only a wildcard certificate for that
  // same parent covers it.
  Selection covering(std::string_view host, bool client_offers_ecdsa = true,
                     Clock::time_point now = Clock::now()) const;

  const std::vector<std::shared_ptr<const LoadedCertificate>>& certificates() const { return certificates_; }
  const LoadedCertificate* default_certificate() const { return default_; }
  bool strict() const { return strict_; }

 private:
  std::vector<std::shared_ptr<const LoadedCertificate>> certificates_;
  std::unordered_map<std::string, std::vector<const LoadedCertificate*>> exact_;
  std::unordered_map<std::string, std::vector<const LoadedCertificate*>> wildcard_;  // keyed by parent
  const LoadedCertificate* default_ = nullptr;
  bool strict_ = false;
};

}  // namespace gatehouse::sni
