#pragma once
// The certificate commands users run: `cert new` (a self-signed certificate
// like Exchange's default, or a CSR for a CA), `cert inspect`, and `check`'s
// coverage report. Pure X.509 work: nothing here opens a socket.

#include <boost/json/object.hpp>

#include <chrono>
#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "sni/certificate.h"

namespace gatehouse::sni {

struct NewCertificateOptions {
  std::string common_name;
  std::vector<std::string> sans;                // DNS names; empty = {common_name}
  std::string key = "rsa2048";                  // rsa2048 | rsa3072 | ec256 | ec384
  int days = 5 * 365;                           // Exchange's self-signed default: 5 years
  std::optional<Clock::time_point> not_before;  // default: now - 1 minute
  bool csr = false;
};

struct GeneratedCertificate {
  std::string cert_pem;  // or the CSR when options.csr
  std::string key_pem;   // PKCS#8
};

// Throws std::invalid_argument naming the flag for bad options.
GeneratedCertificate generate_certificate(const NewCertificateOptions& options);
// Writes PREFIX.crt (or .csr) and PREFIX.key (mode 0600). Throws
// std::runtime_error naming the file on I/O errors. Returns the paths written.
std::vector<std::filesystem::path> write_certificate(const NewCertificateOptions& options,
                                                     const std::filesystem::path& prefix);

// `cert inspect`: Exchange-style properties of every certificate in `file`;
// HasPrivateKey when a key file beside it (same stem, .key) matches.
boost::json::object inspect_json(const std::filesystem::path& file);  // {"file":..., "certificates":[...]}
void inspect_text(const std::filesystem::path& file, std::ostream& out);

struct CheckOptions {
  bool strict = false;    // --strict: warnings make the exit code 2
  bool exchange = false;  // --exchange: the Exchange lints (sni/exchange_lints.h) as warnings too
};

// `gatehouse check -c FILE [--exchange] [--strict]`: config errors,
// certificate load errors, the coverage of every route host name, and
// warnings. Returns the exit code: 0 ok, 1 errors, 2 warnings with `strict`.
int run_check(const std::filesystem::path& config_file, const CheckOptions& options, std::ostream& out,
              std::ostream& err);

}  // namespace gatehouse::sni
