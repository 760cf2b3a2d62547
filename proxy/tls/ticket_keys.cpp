#include "proxy/tls/ticket_keys.h"

#include <openssl/cipher.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace gatehouse::proxy {

namespace {

int ex_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

// Decrypt-only keys kept after a rotation, so tickets issued just before it
// still resume.
constexpr std::size_t kRetainedKeys = 2;

}  // namespace

std::shared_ptr<TicketKeys> TicketKeys::random_rotating(std::chrono::seconds period) {
  auto keys = std::shared_ptr<TicketKeys>(new TicketKeys());
  keys->period_ = period;
  RAND_bytes(keys->cookie_key_.data(), keys->cookie_key_.size());
  std::lock_guard lock(keys->mutex_);
  keys->rotated_at_ = std::chrono::steady_clock::now() - period;  // forces the first key
  keys->rotate_if_due();
  return keys;
}

std::shared_ptr<TicketKeys> TicketKeys::from_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error(file.string() + ": cannot read the session-ticket key file ([global] ticket_keys)");
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::size_t size = 0;
  if (!data.empty() && data.size() % 80 == 0) size = 80;
  else if (!data.empty() && data.size() % 48 == 0) size = 48;
  if (size == 0)
    throw std::runtime_error(
        file.string() + ": ticket key file must hold one or more keys of 80 bytes (or 48 bytes), " +
        std::to_string(data.size()) + " bytes found; create one with: openssl rand 80 > " + file.string());
  auto keys = std::shared_ptr<TicketKeys>(new TicketKeys());
  keys->file_ = file;
  // Instances sharing the file also agree on affinity cookies.
  static constexpr char kLabel[] = "gatehouse affinity cookie";
  unsigned int out_len = 0;
  HMAC(EVP_sha256(), data.data(), data.size(), reinterpret_cast<const uint8_t*>(kLabel), sizeof kLabel - 1,
       keys->cookie_key_.data(), &out_len);
  const std::size_t secret = (size - 16) / 2;
  for (std::size_t off = 0; off < data.size(); off += size) {
    Key key;
    std::copy_n(data.begin() + static_cast<long>(off), 16, key.name.begin());
    key.hmac.assign(data.begin() + static_cast<long>(off + 16), data.begin() + static_cast<long>(off + 16 + secret));
    key.aes.assign(data.begin() + static_cast<long>(off + 16 + secret), data.begin() + static_cast<long>(off + size));
    keys->keys_.push_back(std::move(key));
  }
  return keys;
}

void TicketKeys::rotate_if_due() {
  if (period_.count() == 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - rotated_at_ < period_) return;
  Key key;
  RAND_bytes(key.name.data(), key.name.size());
  key.hmac.resize(32);
  key.aes.resize(32);
  RAND_bytes(key.hmac.data(), key.hmac.size());
  RAND_bytes(key.aes.data(), key.aes.size());
  keys_.insert(keys_.begin(), std::move(key));
  if (keys_.size() > 1 + kRetainedKeys) keys_.resize(1 + kRetainedKeys);
  rotated_at_ = now;
}

void TicketKeys::install(SSL_CTX* ctx) {
  SSL_CTX_set_ex_data(ctx, ex_index(), this);
  SSL_CTX_set_tlsext_ticket_key_cb(ctx, &TicketKeys::callback);
}

int TicketKeys::callback(SSL* ssl, uint8_t* name, uint8_t* iv, EVP_CIPHER_CTX* cipher, HMAC_CTX* hmac, int encrypt) {
  auto* self = static_cast<TicketKeys*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ex_index()));
  if (self == nullptr) return encrypt ? -1 : 0;
  return self->handle(name, iv, cipher, hmac, encrypt != 0);
}

int TicketKeys::handle(uint8_t* name, uint8_t* iv, EVP_CIPHER_CTX* cipher, HMAC_CTX* hmac, bool encrypt) {
  std::lock_guard lock(mutex_);
  auto aes = [](const Key& k) { return k.aes.size() == 32 ? EVP_aes_256_cbc() : EVP_aes_128_cbc(); };
  if (encrypt) {
    rotate_if_due();
    const Key& key = keys_.front();
    std::memcpy(name, key.name.data(), key.name.size());
    RAND_bytes(iv, EVP_MAX_IV_LENGTH);
    if (!EVP_EncryptInit_ex(cipher, aes(key), nullptr, key.aes.data(), iv) ||
        !HMAC_Init_ex(hmac, key.hmac.data(), key.hmac.size(), EVP_sha256(), nullptr))
      return -1;
    return 1;
  }
  for (std::size_t i = 0; i < keys_.size(); ++i) {
    const Key& key = keys_[i];
    if (std::memcmp(name, key.name.data(), key.name.size()) != 0) continue;
    if (!HMAC_Init_ex(hmac, key.hmac.data(), key.hmac.size(), EVP_sha256(), nullptr) ||
        !EVP_DecryptInit_ex(cipher, aes(key), nullptr, key.aes.data(), iv))
      return -1;
    return i == 0 ? 1 : 2;  // 2: valid, but issue a ticket under the current key
  }
  return 0;  // unknown key: full handshake
}

}  // namespace gatehouse::proxy
