#include "sni/index.h"

#include <stdexcept>

#include "sni/hostname.h"

namespace gatehouse::sni {
namespace {

using Candidates = std::vector<const LoadedCertificate*>;

const Candidates* find(const std::unordered_map<std::string, Candidates>& map, const std::string& key) {
  const auto it = map.find(key);
  return it == map.end() ? nullptr : &it->second;
}

// The best of `candidates` whose expiry state is `want_expired`: the key type
// the client can verify first, then listener order (the candidates' order).
const LoadedCertificate* pick(const Candidates* candidates, bool want_expired, bool client_offers_ecdsa,
                              Clock::time_point now) {
  if (!candidates) return nullptr;
  const KeyType preferred = client_offers_ecdsa ? KeyType::ecdsa : KeyType::rsa;
  const LoadedCertificate* fallback = nullptr;
  for (const LoadedCertificate* candidate : *candidates) {
    if (candidate->info.expired(now) != want_expired) continue;
    if (candidate->info.key_type == preferred) return candidate;
    if (!fallback) fallback = candidate;
  }
  return fallback;
}

}  // namespace

std::string_view to_string(MatchKind kind) {
  switch (kind) {
    case MatchKind::exact: return "exact";
    case MatchKind::wildcard: return "wildcard";
    case MatchKind::default_certificate: return "default";
    case MatchKind::rejected: return "rejected";
  }
  return "unknown";
}

bool covers(const LoadedCertificate& certificate, std::string_view normalised_host) {
  for (const auto& name : certificate.names) {
    if (host_matches(name, normalised_host)) return true;
  }
  return false;
}

SniIndex::SniIndex(std::vector<std::shared_ptr<const LoadedCertificate>> certificates, std::string_view default_name,
                   bool strict)
    : certificates_(std::move(certificates)), strict_(strict) {
  for (const auto& certificate : certificates_) {
    for (const auto& name : certificate->names) {
      // names are normalised and unique per certificate (host_names()).
      if (is_wildcard(name)) {
        wildcard_[name.substr(2)].push_back(certificate.get());
      } else {
        exact_[name].push_back(certificate.get());
      }
    }
    if (!default_ && (default_name.empty() || certificate->name == default_name)) default_ = certificate.get();
  }
  if (!default_name.empty() && !default_) {
    throw std::invalid_argument("default certificate \"" + std::string(default_name) +
                                "\" is not among the listener's certificates");
  }
}

Selection SniIndex::covering(std::string_view host, bool client_offers_ecdsa, Clock::time_point now) const {
  if (is_wildcard(host)) {
    // A route pattern: only a wildcard for the same parent serves every name it admits.
    const auto parent = normalize_host(host.substr(2));
    if (!parent) return {};
    const Candidates* wildcards = find(wildcard_, *parent);
    for (bool expired : {false, true}) {
      if (const auto* chosen = pick(wildcards, expired, client_offers_ecdsa, now)) return {chosen, MatchKind::wildcard};
    }
    return {};
  }
  const auto name = normalize_host(host);
  if (!name) return {};
  const Candidates* exact = find(exact_, *name);
  const std::string_view parent = wildcard_parent(*name);
  const Candidates* wildcards = parent.empty() ? nullptr : find(wildcard_, std::string(parent));
  // An expired certificate is used only when nothing else, exact or wildcard, covers the name.
  for (bool expired : {false, true}) {
    if (const auto* chosen = pick(exact, expired, client_offers_ecdsa, now)) return {chosen, MatchKind::exact};
    if (const auto* chosen = pick(wildcards, expired, client_offers_ecdsa, now)) return {chosen, MatchKind::wildcard};
  }
  return {};
}

Selection SniIndex::select(std::string_view server_name, bool client_offers_ecdsa, Clock::time_point now) const {
  // '*' never reaches covering() from a client: normalize_host refuses it there.
  if (!server_name.empty() && server_name.find('*') == std::string_view::npos) {
    Selection chosen = covering(server_name, client_offers_ecdsa, now);
    if (chosen.certificate) return chosen;
  }
  if (strict_ || !default_) return {};
  return {default_, MatchKind::default_certificate};
}

}  // namespace gatehouse::sni
