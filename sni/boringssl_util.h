#pragma once
// Internal to sni/: small conversions between BoringSSL types and the strings
// and time points the rest of the library speaks. Not part of the contract.

#include <openssl/asn1.h>
#include <openssl/base.h>
#include <openssl/bio.h>

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "sni/certificate.h"

namespace gatehouse::sni::detail {

std::string hex_upper(std::span<const std::uint8_t> bytes);
std::string base64(std::span<const std::uint8_t> bytes);

// The oldest error on BoringSSL's thread-local queue as text ("" when none);
// clears the queue so later calls start clean.
std::string take_error();

// Everything written to a memory BIO.
std::string bio_contents(BIO* bio);

// ASN1_TIME <-> system_clock. This BoringSSL snapshot has no
// ASN1_TIME_to_posix, so the conversion goes through ASN1_TIME_diff.
Clock::time_point to_time_point(const ASN1_TIME* time);
// "2025-03-01T12:00:00Z"
std::string iso8601(Clock::time_point time);

}  // namespace gatehouse::sni::detail
