#pragma once
// Session-ticket keys shared by every SSL_CTX of the process (and across
// config generations, so reloads keep resumption working). Either random and
// rotated hourly, or read from a file shared by several instances: binary,
// 80 bytes per key (16 name, 32 HMAC, 32 AES-256) or 48 bytes per key (16
// name, 16 HMAC, 16 AES-128) as nginx's ssl_session_ticket_key; the first key
// encrypts, all decrypt.

#include <openssl/ssl.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <vector>

namespace gatehouse::proxy {

class TicketKeys {
 public:
  static std::shared_ptr<TicketKeys> random_rotating(std::chrono::seconds period = std::chrono::hours(1));
  // Throws std::runtime_error naming the file.
  static std::shared_ptr<TicketKeys> from_file(const std::filesystem::path& file);

  // Installs the ticket callback on `ctx`; the keys must outlive it.
  void install(SSL_CTX* ctx);
  const std::filesystem::path& file() const { return file_; }
  // MAC key of affinity cookies: derived from the key file (so instances
  // sharing it agree), else random for this process; never rotated.
  const std::array<uint8_t, 32>& cookie_key() const { return cookie_key_; }

 private:
  struct Key {
    std::array<uint8_t, 16> name{};
    std::vector<uint8_t> hmac;
    std::vector<uint8_t> aes;
  };
  static int callback(SSL* ssl, uint8_t* name, uint8_t* iv, EVP_CIPHER_CTX* cipher, HMAC_CTX* hmac, int encrypt);
  int handle(uint8_t* name, uint8_t* iv, EVP_CIPHER_CTX* cipher, HMAC_CTX* hmac, bool encrypt);
  void rotate_if_due();  // caller holds mutex_

  std::mutex mutex_;
  std::vector<Key> keys_;           // keys_[0] encrypts
  std::chrono::seconds period_{0};  // 0 = never rotate (file keys)
  std::chrono::steady_clock::time_point rotated_at_;
  std::filesystem::path file_;
  std::array<uint8_t, 32> cookie_key_{};
};

}  // namespace gatehouse::proxy
