// `gatehouse check`: conf's diagnostics, then what only X.509 knowledge can
// tell: whether every certificate loads, whether every route host name is
// covered by a certificate of its listener, and what will soon hurt (expiry,
// SHA-1, a missing serverAuth EKU, wildcards that do not cover what the
// operator believes they do).

#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>

#include "conf/config.h"
#include "sni/boringssl_util.h"
#include "sni/client_trust.h"
#include "sni/exchange_lints.h"
#include "sni/extended_protection.h"
#include "sni/hostname.h"
#include "sni/index.h"
#include "sni/ocsp.h"
#include "sni/pin.h"
#include "sni/tooling.h"

namespace gatehouse::sni {
namespace {

constexpr auto expiry_warning = std::chrono::days(30);

class Report {
 public:
  Report(std::ostream& out, std::ostream& err) : out_(out), err_(err) {}

  void error(const conf::Diagnostic& diagnostic) {
    ++errors_;
    err_ << diagnostic.to_string() << '\n';
  }
  void warning(const conf::Diagnostic& diagnostic) {
    ++warnings_;
    out_ << "warning: " << diagnostic.to_string() << '\n';
  }
  std::ostream& out() { return out_; }
  int errors() const { return errors_; }
  int warnings() const { return warnings_; }

 private:
  std::ostream& out_;
  std::ostream& err_;
  int errors_ = 0;
  int warnings_ = 0;
};

std::string plural(int count, std::string_view noun) {
  return std::to_string(count) + " " + std::string(noun) + (count == 1 ? "" : "s");
}

std::string date(Clock::time_point time) { return detail::iso8601(time); }

bool weak_signature(std::string_view algorithm) {
  auto contains = [algorithm](std::string_view what) { return algorithm.find(what) != std::string_view::npos; };
  return contains("sha1") || contains("SHA1") || contains("md5") || contains("MD5");
}

// conf's key-path spelling for a named table: `certificate "contoso-san"`.
std::string certificate_key(const std::string& name) { return "certificate \"" + name + "\""; }

using Loaded = LoadedCertificates;

Loaded load_certificates(const conf::Config& config, Report& report) {
  Loaded loaded;
  for (const auto& certificate : config.certificates) {
    try {
      loaded[certificate.name] = load_certificate(certificate.name, certificate.cert, certificate.key);
    } catch (const CertificateError& e) {
      report.error({config.file.string(), certificate.line, certificate_key(certificate.name), e.what()});
    }
  }
  return loaded;
}

void certificate_warnings(const conf::Config& config, const Loaded& loaded, Clock::time_point now, Report& report) {
  for (const auto& certificate : config.certificates) {
    const auto it = loaded.find(certificate.name);
    if (it == loaded.end()) continue;
    const LoadedCertificate& cert = *it->second;
    const CertificateInfo& info = cert.info;
    auto warn = [&](const std::string& message) {
      report.warning({config.file.string(), certificate.line, certificate_key(certificate.name),
                      cert.cert_file.string() + " (thumbprint " + info.thumbprint + ") " + message});
    };
    if (now > info.not_after) {
      warn("expired on " + date(info.not_after) +
           ": clients refuse it and it is served only for names no other certificate covers; renew it");
    } else if (now < info.not_before) {
      warn("is not valid before " + date(info.not_before) + ": check the clock of the machine that issued it");
    } else if (info.not_after - now < expiry_warning) {
      const auto days = std::chrono::duration_cast<std::chrono::days>(info.not_after - now).count();
      warn("expires on " + date(info.not_after) + " (in " + plural(static_cast<int>(days), "day") + "): renew it");
    }
    for (std::size_t i = 0; i < cert.chain.size(); ++i) {
      const CertificateInfo chain_info = i == 0 ? info : describe(cert.chain[i].get());
      // A self-signed root's own signature is never checked by clients.
      if (i > 0 && chain_info.self_signed) continue;
      if (weak_signature(chain_info.signature_algorithm)) {
        warn(std::string(i == 0 ? "is"
                                : "has chain certificate " + std::to_string(i + 1) + " (" + chain_info.subject + ")") +
             " signed with " + chain_info.signature_algorithm +
             ", which current clients reject: reissue it with SHA-256 (gatehouse cert new, or ask the CA)");
      }
    }
    if (info.has_eku_extension) {
      const auto& usages = info.extended_key_usage;
      const bool server_auth = std::find(usages.begin(), usages.end(), "serverAuth") != usages.end() ||
                               std::find(usages.begin(), usages.end(), "anyExtendedKeyUsage") != usages.end();
      if (!server_auth) {
        warn(
            "has an Enhanced Key Usage extension without Server Authentication (1.3.6.1.5.5.7.3.1): TLS clients "
            "will refuse it; reissue it with the Web Server / serverAuth template");
      }
    }
    if (info.key_type == KeyType::rsa && info.key_bits < 2048) {
      warn("has an RSA key of " + std::to_string(info.key_bits) + " bits: use at least 2048");
    }
  }
}

struct Row {
  std::string host;
  std::string certificate;
  std::string match;
};

std::string describe_selection(const Selection& ecdsa, const Selection& rsa, Clock::time_point now) {
  auto label = [now](const LoadedCertificate& cert) {
    std::string text = cert.name;
    if (cert.info.expired(now)) text += " (expired)";
    return text;
  };
  if (ecdsa.certificate == rsa.certificate) return label(*ecdsa.certificate);
  // RSA and ECDSA certificates share the name: clients' signature algorithms decide.
  return label(*ecdsa.certificate) + " (ECDSA), " + label(*rsa.certificate) + " (RSA)";
}

// Why nothing covers `host`, when a certificate almost does.
std::string near_miss(std::string_view host, const std::vector<std::shared_ptr<const LoadedCertificate>>& certs,
                      const conf::Listener& listener, const Loaded& loaded) {
  for (const auto& [name, cert] : loaded) {
    if (std::find(listener.certificates.begin(), listener.certificates.end(), name) != listener.certificates.end()) {
      continue;
    }
    const bool covering = std::any_of(cert->names.begin(), cert->names.end(), [host](const std::string& pattern) {
      return pattern == host || host_matches(pattern, host);
    });
    if (covering) {
      return "; certificate " + name + " covers it but is not in the listener's certificates: add it there";
    }
  }
  for (const auto& cert : certs) {
    for (const auto& name : cert->names) {
      if (!is_wildcard(name)) continue;
      const std::string_view parent = std::string_view(name).substr(2);
      if (host == parent) {
        return "; " + name + " (certificate " + cert->name + ") does not cover the bare " + std::string(host) +
               ": add " + std::string(host) + " as a SAN";
      }
      if (host.size() > parent.size() + 1 && host.ends_with(parent) && host[host.size() - parent.size() - 1] == '.') {
        const std::string_view below = host.substr(0, host.size() - parent.size() - 1);
        // The one name at this depth the wildcard does cover: the label right above its parent.
        const std::string_view extra = below.substr(below.rfind('.') + 1);
        const std::string wider = is_wildcard(host)
                                      ? std::string(host)
                                      : std::string(host) + " or *." + std::string(host.substr(host.find('.') + 1));
        return "; " + name + " (certificate " + cert->name + ") covers exactly one label (" + std::string(extra) + "." +
               std::string(parent) + ", not " + std::string(host) + "): add " + wider + " to a certificate";
      }
    }
  }
  return "; add it as a SAN to one of the listener's certificates";
}

// The listener and its SNI index, for checking the listener's route hosts.
struct Coverage {
  const conf::Config& config;
  const conf::Listener& listener;
  const Loaded& loaded;
  const SniIndex& index;
  std::string fallback;  // what a client gets for a name no certificate covers
  Clock::time_point now;
};

std::string uncovered_fallback(const conf::Listener& listener, const SniIndex& index) {
  if (listener.strict_sni) return "the handshake is refused (strict_sni)";
  if (index.default_certificate())
    return "clients get the default certificate " + index.default_certificate()->name + " and a name mismatch";
  return "clients get no certificate";
}

conf::Diagnostic with_message(conf::Diagnostic at, std::string message) {
  at.message = std::move(message);
  return at;
}

// For a wildcard route host no wildcard certificate covers: the exact names
// below it that certificates list, and those certificates.
struct ExactNames {
  std::string names;    // "a.contoso.com, b.contoso.com"
  std::string holders;  // certificate names, sorted
};

std::optional<ExactNames> exact_names_below(const std::vector<std::shared_ptr<const LoadedCertificate>>& certs,
                                            std::string_view wildcard_host) {
  const std::string_view parent = wildcard_host.substr(2);
  std::vector<std::string> exact;
  std::set<std::string> holders;
  for (const auto& cert : certs) {
    for (const auto& name : cert->names) {
      if (!is_wildcard(name) && wildcard_parent(name) == parent) {
        exact.push_back(name);
        holders.insert(cert->name);
      }
    }
  }
  if (exact.empty()) return std::nullopt;
  ExactNames found;
  for (const auto& name : exact) found.names += (found.names.empty() ? "" : ", ") + name;
  for (const auto& name : holders) found.holders += (found.holders.empty() ? "" : ", ") + name;
  return found;
}

// The coverage row for one route host; reports what is missing or partial at `at`.
Row cover_host(const Coverage& c, const std::string& host, const conf::Diagnostic& at, Report& report) {
  const Selection ecdsa = c.index.covering(host, true, c.now);
  const Selection rsa = c.index.covering(host, false, c.now);
  if (ecdsa.certificate)
    return Row{.host = host,
               .certificate = describe_selection(ecdsa, rsa, c.now),
               .match = std::string(to_string(ecdsa.kind))};
  if (is_wildcard(host)) {
    // Only some names below the wildcard are certified, each exactly.
    if (const auto exact = exact_names_below(c.index.certificates(), host)) {
      report.warning(with_message(at, "route host " + host + " is served by a non-wildcard certificate (" +
                                          exact->holders + ") that lists only " + exact->names +
                                          "; for any other name " + c.fallback + ": add " + host +
                                          " to a certificate"));
      return Row{.host = host, .certificate = exact->holders, .match = "exact names only"};
    }
  }
  report.error(with_message(at, "no certificate of listener " + c.listener.name + " covers " + host + ": " +
                                    c.fallback + near_miss(host, c.index.certificates(), c.listener, c.loaded)));
  return Row{.host = host, .certificate = "-", .match = "MISSING"};
}

// One row per distinct host of the routes on this listener, in route order.
std::vector<Row> coverage_rows(const Coverage& c, Report& report) {
  std::vector<Row> rows;
  std::set<std::string, std::less<>> seen;
  for (std::size_t r = 0; r < c.config.routes.size(); ++r) {
    const conf::Route& route = c.config.routes[r];
    if (route.listener != c.listener.name) continue;
    const std::string key = "route[" + std::to_string(r) + "].hosts";
    if (route.hosts.empty() && seen.insert("*").second) {
      rows.push_back(Row{.host = "(any host)",
                         .certificate = c.index.default_certificate() ? c.index.default_certificate()->name : "-",
                         .match = c.listener.strict_sni ? "known names only" : "default"});
    }
    const conf::Diagnostic at{.file = c.config.file.string(), .line = c.config.line_of(key, route.line), .key = key};
    for (const auto& host : route.hosts) {
      if (seen.insert(host).second) rows.push_back(cover_host(c, host, at, report));
    }
  }
  return rows;
}

void print_coverage(std::ostream& out, const std::vector<Row>& rows) {
  std::size_t host_width = 4;
  std::size_t cert_width = 11;
  for (const auto& row : rows) {
    host_width = std::max(host_width, row.host.size());
    cert_width = std::max(cert_width, row.certificate.size());
  }
  auto print = [&](std::string_view host, std::string_view cert, std::string_view match) {
    out << "  " << host << std::string(host_width - host.size() + 2, ' ') << cert
        << std::string(cert_width - cert.size() + 2, ' ') << match << '\n';
  };
  print("HOST", "CERTIFICATE", "MATCH");
  for (const auto& row : rows) print(row.host, row.certificate, row.match);
}

void check_listener(const conf::Config& config, const conf::Listener& listener, const Loaded& loaded,
                    Clock::time_point now, Report& report) {
  std::ostream& out = report.out();
  std::string mode(conf::to_string(listener.mode));
  if (listener.mode == conf::ListenerMode::passthrough) {
    out << "listener " << listener.name << " (" << mode << ", " << listener.bind.to_string()
        << "): TLS passes through to the backends, no certificate here\n";
    return;
  }
  if (listener.mode == conf::ListenerMode::tcp || listener.mode == conf::ListenerMode::redirect) {
    out << "listener " << listener.name << " (" << mode << ", " << listener.bind.to_string()
        << "): " << (listener.mode == conf::ListenerMode::tcp ? "plain TCP relay" : "plain HTTP redirects")
        << ", no certificate here\n";
    return;
  }
  if (listener.starttls != conf::StartTls::none)
    mode += ", STARTTLS " + std::string(conf::to_string(listener.starttls));
  std::vector<std::shared_ptr<const LoadedCertificate>> certs;
  std::vector<std::string> missing;
  for (const auto& name : listener.certificates) {
    const auto it = loaded.find(name);
    if (it != loaded.end()) {
      certs.push_back(it->second);
    } else {
      missing.push_back(name);
    }
  }
  const bool default_loaded = loaded.contains(listener.default_certificate);
  const SniIndex index(certs, default_loaded ? listener.default_certificate : std::string(), listener.strict_sni);
  const Coverage coverage{.config = config,
                          .listener = listener,
                          .loaded = loaded,
                          .index = index,
                          .fallback = uncovered_fallback(listener, index),
                          .now = now};
  const std::vector<Row> rows = coverage_rows(coverage, report);

  out << "listener " << listener.name << " (" << mode << ", " << listener.bind.to_string() << "): ";
  if (listener.strict_sni) {
    out << "strict SNI, unknown names rejected";
  } else if (index.default_certificate()) {
    out << "default certificate " << index.default_certificate()->name;
  } else {
    out << "no default certificate";
  }
  for (const auto& name : missing) out << "; certificate " << name << " did not load";
  out << '\n';
  if (rows.empty()) {
    out << "  (no routes)\n";
    return;
  }
  print_coverage(out, rows);
}

// Windows logins through a route whose servers present another certificate
// than the front end fail once Extended Protection is on (Exchange 2019 CU14
// turns it on): the channel binding names the certificate the client saw.
void extended_protection_warnings(const conf::Config& config, const Loaded& loaded, Clock::time_point now,
                                  Report& report) {
  for (const auto& listener : config.listeners) {
    if (listener.mode != conf::ListenerMode::l7) continue;
    std::vector<std::shared_ptr<const LoadedCertificate>> certs;
    for (const auto& name : listener.certificates)
      if (const auto it = loaded.find(name); it != loaded.end()) certs.push_back(it->second);
    if (certs.empty()) continue;
    const bool default_loaded = loaded.contains(listener.default_certificate);
    const SniIndex index(certs, default_loaded ? listener.default_certificate : std::string(), false);
    for (std::size_t r = 0; r < config.routes.size(); ++r) {
      const conf::Route& route = config.routes[r];
      if (route.listener != listener.name || route.pool.empty() || !carries_windows_auth(route.paths)) continue;
      const auto fronts = front_certificates(index, route.hosts, now);
      std::set<std::string> visited;
      for (std::string pool_name = route.pool; !pool_name.empty() && visited.insert(pool_name).second;) {
        const auto pool = std::find_if(config.pools.begin(), config.pools.end(),
                                       [&](const conf::Pool& p) { return p.name == pool_name; });
        if (pool == config.pools.end()) break;
        if (pool->tls != conf::BackendTls::plain) {
          for (const auto& server_name : pool->servers) {
            const auto server = std::find_if(config.servers.begin(), config.servers.end(),
                                             [&](const conf::Server& s) { return s.name == server_name; });
            if (server == config.servers.end() || server->pin.empty()) continue;  // known only at run time
            const auto pin = parse_pin(server->pin);
            if (!pin) continue;
            for (const LoadedCertificate* front : fronts) {
              if (pin->matches(front->leaf())) continue;
              std::string paths;
              for (const auto& p : route.paths) paths += (paths.empty() ? "" : ", ") + p;
              const std::string key = "route[" + std::to_string(r) + "].pool";
              report.warning({config.file.string(), config.line_of(key, route.line), key,
                              "Extended Protection: route (" + paths + ") sends Windows logins to pool \"" +
                                  pool->name + "\", whose server \"" + server->name + "\" is pinned to " + server->pin +
                                  ", but Gatehouse serves these hosts with certificate \"" + front->name +
                                  "\" (thumbprint " + front->info.thumbprint +
                                  "); NTLM and Kerberos logins will fail where Extended Protection is on: "
                                  "install that certificate on the server and pin its thumbprint, or turn "
                                  "Extended Protection off for these virtual directories"});
            }
          }
        }
        pool_name = pool->fallback;
      }
    }
  }
}

// Trust-anchor bundles must hold certificates, as the proxy will load them.
void check_trust_bundles(const conf::Config& config, Report& report) {
  auto check = [&](const std::filesystem::path& file, const std::string& key, int table_line) {
    if (file.empty()) return;
    try {
      read_certificates(file);
    } catch (const CertificateError& e) {
      report.error({config.file.string(), config.line_of(key, table_line), key, e.what()});
    }
  };
  for (const auto& pool : config.pools) check(pool.ca, "pool \"" + pool.name + "\".ca", pool.line);
}

// OCSP stapling: what each certificate will staple, and why not.
void check_ocsp(const conf::Config& config, const Loaded& loaded, Clock::time_point now, Report& report) {
  for (const auto& certificate : config.certificates) {
    if (certificate.ocsp == conf::OcspMode::none) continue;
    const std::string key = certificate_key(certificate.name) + ".ocsp";
    const int line = config.line_of(key, certificate.line);
    const auto it = loaded.find(certificate.name);
    if (it == loaded.end()) continue;
    if (certificate.ocsp == conf::OcspMode::automatic) {
      std::string url;
      for (const auto& responder : ocsp_responders(it->second->leaf()))
        if (url.empty() && responder.starts_with("http://")) url = responder;
      if (ocsp_issuer(*it->second) == nullptr)
        report.error({config.file.string(), line, key,
                      it->second->cert_file.string() +
                          " has no issuer certificate after the leaf, so no OCSP "
                          "request can be made nor response checked; append the issuing CA's certificate"});
      else if (url.empty())
        report.error({config.file.string(), line, key,
                      "the certificate names no http:// OCSP responder (Authority Information Access); use "
                      "ocsp = \"FILE\" or remove ocsp"});
      else report.out() << "certificate " << certificate.name << ": OCSP fetched from " << url << '\n';
      continue;
    }
    std::ifstream in(certificate.ocsp_file, std::ios::binary);
    const std::string der((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const OcspVerdict verdict = check_ocsp_response(der, it->second->leaf(), ocsp_issuer(*it->second), now);
    report.out() << "certificate " << certificate.name << ": OCSP response " << certificate.ocsp_file.string() << ": "
                 << (verdict.stapleable ? describe(verdict) : "NOT STAPLED") << '\n';
    if (!verdict.stapleable)
      report.warning(
          {config.file.string(), line, key, certificate.ocsp_file.string() + " is not stapled: " + verdict.problem});
  }
}

// Client certificates: the CA bundle and CRLs load as the listener will
// load them, and the report says what the listener enforces.
void check_client_certificates(const conf::Config& config, Report& report) {
  for (const auto& listener : config.listeners) {
    if (listener.client_certificates == conf::ClientCertificates::none ||
        listener.mode == conf::ListenerMode::passthrough || listener.mode == conf::ListenerMode::tcp ||
        listener.mode == conf::ListenerMode::redirect)
      continue;
    const std::string table = "listener \"" + listener.name + "\"";
    try {
      const ClientTrust trust(listener.client_ca, listener.client_crl, listener.client_verify_depth);
      report.out() << "listener " << listener.name << ": client certificates "
                   << (listener.client_certificates == conf::ClientCertificates::require ? "required" : "optional")
                   << ", " << plural(static_cast<int>(trust.ca_names().size()), "CA") << " in "
                   << listener.client_ca.string() << ", "
                   << (listener.client_crl.empty()
                           ? std::string("no CRL")
                           : plural(static_cast<int>(trust.crl_count()), "CRL") + " in " + listener.client_crl.string())
                   << ", depth " << listener.client_verify_depth << '\n';
    } catch (const CertificateError& e) {
      const bool crl =
          std::string_view(e.what()).starts_with(listener.client_crl.string() + ":") && !listener.client_crl.empty();
      const std::string key = table + (crl ? ".client_crl" : ".client_ca");
      report.error({config.file.string(), config.line_of(key, listener.line), key, e.what()});
    }
  }
}

}  // namespace

int run_check(const std::filesystem::path& config_file, const CheckOptions& options, std::ostream& out,
              std::ostream& err) {
  Report report(out, err);
  const conf::LoadResult result = conf::load_file(config_file);
  for (const auto& error : result.errors) report.error(error);
  for (const auto& warning : result.warnings) report.warning(warning);
  if (result.config) {
    const conf::Config& config = *result.config;
    const Clock::time_point now = Clock::now();
    const Loaded loaded = load_certificates(config, report);
    certificate_warnings(config, loaded, now, report);
    check_trust_bundles(config, report);
    extended_protection_warnings(config, loaded, now, report);
    if (options.exchange)
      for (const auto& lint : exchange_lints(config, loaded, now)) report.warning(lint);
    check_client_certificates(config, report);
    check_ocsp(config, loaded, now, report);
    for (const auto& listener : config.listeners) check_listener(config, listener, loaded, now, report);
  }
  out << "check: " << plural(report.errors(), "error") << ", " << plural(report.warnings(), "warning") << '\n';
  if (report.errors() > 0) return 1;
  if (options.strict && report.warnings() > 0) return 2;
  return 0;
}

}  // namespace gatehouse::sni
