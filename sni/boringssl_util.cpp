#include "sni/boringssl_util.h"

#include <openssl/base64.h>
#include <openssl/err.h>

#include <cstdio>
#include <stdexcept>

namespace gatehouse::sni::detail {

std::string hex_upper(std::span<const std::uint8_t> bytes) {
  static constexpr char digits[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (std::uint8_t b : bytes) {
    out.push_back(digits[b >> 4]);
    out.push_back(digits[b & 0x0f]);
  }
  return out;
}

std::string base64(std::span<const std::uint8_t> bytes) {
  std::size_t length = 0;
  if (!EVP_EncodedLength(&length, bytes.size())) throw std::length_error("base64 input too long");
  std::string out(length, '\0');
  const std::size_t written = EVP_EncodeBlock(reinterpret_cast<std::uint8_t*>(out.data()), bytes.data(), bytes.size());
  out.resize(written);
  return out;
}

std::string take_error() {
  const std::uint32_t code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return {};
  char buffer[256];
  ERR_error_string_n(code, buffer, sizeof buffer);
  return buffer;
}

std::string bio_contents(BIO* bio) {
  const std::uint8_t* data = nullptr;
  std::size_t length = 0;
  if (!BIO_mem_contents(bio, &data, &length)) return {};
  return std::string(reinterpret_cast<const char*>(data), length);
}

Clock::time_point to_time_point(const ASN1_TIME* time) {
  bssl::UniquePtr<ASN1_TIME> epoch(ASN1_TIME_set(nullptr, 0));
  int days = 0;
  int seconds = 0;
  if (!epoch || !time || !ASN1_TIME_diff(&days, &seconds, epoch.get(), time)) {
    ERR_clear_error();
    return Clock::time_point{};
  }
  return Clock::time_point{} + std::chrono::days(days) + std::chrono::seconds(seconds);
}

std::string iso8601(Clock::time_point time) {
  // GCC 12 has no <format>; the calendar types do the civil-date arithmetic.
  const auto day = std::chrono::floor<std::chrono::days>(time);
  const std::chrono::year_month_day date{day};
  const std::chrono::hh_mm_ss clock{std::chrono::floor<std::chrono::seconds>(time - day)};
  char buffer[40];
  std::snprintf(buffer, sizeof buffer, "%04d-%02u-%02uT%02d:%02d:%02dZ", static_cast<int>(date.year()),
                static_cast<unsigned>(date.month()), static_cast<unsigned>(date.day()),
                static_cast<int>(clock.hours().count()), static_cast<int>(clock.minutes().count()),
                static_cast<int>(clock.seconds().count()));
  return buffer;
}

}  // namespace gatehouse::sni::detail
