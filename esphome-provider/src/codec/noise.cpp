// Noise_NNpsk0_25519_ChaChaPoly_SHA256 on libsodium. Follows the Noise specification's
// SymmetricState / HandshakeState (revision 34), restricted to the one pattern ESPHome uses.
#include "floe/esphome/noise.hpp"

#include <sodium.h>

#include <cstring>

namespace floe::esphome::noise {
namespace {

std::string_view view(const std::uint8_t* p, std::size_t n) { return {reinterpret_cast<const char*>(p), n}; }
template <std::size_t N>
std::string_view view(const std::array<std::uint8_t, N>& a) {
  return view(a.data(), N);
}
const unsigned char* bytes(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }

}  // namespace

bool ensure_sodium() {
  static const bool ok = sodium_init() >= 0;
  return ok;
}

Hash hmac_sha256(std::string_view key, std::string_view data) {
  crypto_auth_hmacsha256_state st;
  crypto_auth_hmacsha256_init(&st, bytes(key), key.size());
  crypto_auth_hmacsha256_update(&st, bytes(data), data.size());
  Hash out{};
  crypto_auth_hmacsha256_final(&st, out.data());
  sodium_memzero(&st, sizeof st);
  return out;
}

std::array<Hash, 3> hkdf(const Hash& ck, std::string_view ikm, int outputs) {
  const Hash temp_key = hmac_sha256(view(ck), ikm);
  std::array<Hash, 3> out{};
  std::string block;
  for (int i = 0; i < outputs && i < 3; ++i) {
    block.assign(i == 0 ? std::string_view{} : view(out[static_cast<std::size_t>(i - 1)]));
    block.push_back(static_cast<char>(i + 1));
    out[static_cast<std::size_t>(i)] = hmac_sha256(view(temp_key), block);
  }
  return out;
}

Result<std::string> CipherState::encrypt(std::string_view ad, std::string_view plaintext) {
  if (!has_key_) return std::string(plaintext);
  if (n_ == UINT64_MAX) return logic_error("noise.encrypt", "nonce exhausted");
  std::array<unsigned char, crypto_aead_chacha20poly1305_IETF_NPUBBYTES> nonce{};
  for (int i = 0; i < 8; ++i) nonce[4 + static_cast<std::size_t>(i)] = static_cast<unsigned char>(n_ >> (8 * i));
  std::string out(plaintext.size() + kTagLen, '\0');
  unsigned long long len = 0;
  crypto_aead_chacha20poly1305_ietf_encrypt(reinterpret_cast<unsigned char*>(out.data()), &len, bytes(plaintext),
                                            plaintext.size(), bytes(ad), ad.size(), nullptr, nonce.data(), k_.data());
  out.resize(static_cast<std::size_t>(len));
  ++n_;
  return out;
}

Result<std::string> CipherState::decrypt(std::string_view ad, std::string_view ciphertext) {
  if (!has_key_) return std::string(ciphertext);
  if (ciphertext.size() < kTagLen) return logic_error("noise.decrypt", "ciphertext shorter than its tag");
  if (n_ == UINT64_MAX) return logic_error("noise.decrypt", "nonce exhausted");
  std::array<unsigned char, crypto_aead_chacha20poly1305_IETF_NPUBBYTES> nonce{};
  for (int i = 0; i < 8; ++i) nonce[4 + static_cast<std::size_t>(i)] = static_cast<unsigned char>(n_ >> (8 * i));
  std::string out(ciphertext.size() - kTagLen, '\0');
  unsigned long long len = 0;
  if (crypto_aead_chacha20poly1305_ietf_decrypt(reinterpret_cast<unsigned char*>(out.data()), &len, nullptr,
                                                bytes(ciphertext), ciphertext.size(), bytes(ad), ad.size(),
                                                nonce.data(), k_.data()) != 0) {
    return logic_error("noise.decrypt", "authentication failed");
  }
  out.resize(static_cast<std::size_t>(len));
  ++n_;
  return out;
}

Handshake::Handshake(Role role, const Key& psk, std::string_view prologue, std::optional<Key> ephemeral)
    : role_(role), psk_(psk) {
  // The name is longer than HASHLEN, so h = HASH(name); ck starts equal to h.
  crypto_hash_sha256(h_.data(), bytes(kProtocolName), kProtocolName.size());
  ck_ = h_;
  mix_hash(prologue);
  make_ephemeral(ephemeral);
}

void Handshake::make_ephemeral(std::optional<Key> fixed) {
  if (fixed) {
    e_priv_ = *fixed;
  } else {
    (void)ensure_sodium();
    randombytes_buf(e_priv_.data(), e_priv_.size());
  }
  crypto_scalarmult_curve25519_base(e_pub_.data(), e_priv_.data());
}

void Handshake::mix_hash(std::string_view data) {
  crypto_hash_sha256_state st;
  crypto_hash_sha256_init(&st);
  crypto_hash_sha256_update(&st, h_.data(), h_.size());
  crypto_hash_sha256_update(&st, bytes(data), data.size());
  crypto_hash_sha256_final(&st, h_.data());
}

void Handshake::mix_key(std::string_view ikm) {
  const auto out = hkdf(ck_, ikm, 2);
  ck_ = out[0];
  cipher_ = CipherState(out[1]);
}

void Handshake::mix_key_and_hash(std::string_view ikm) {
  const auto out = hkdf(ck_, ikm, 3);
  ck_ = out[0];
  mix_hash(view(out[1]));
  cipher_ = CipherState(out[2]);
}

Result<std::string> Handshake::encrypt_and_hash(std::string_view plaintext) {
  auto c = cipher_.encrypt(view(h_), plaintext);
  if (!c) return c;
  mix_hash(*c);
  return c;
}

Result<std::string> Handshake::decrypt_and_hash(std::string_view ciphertext) {
  auto p = cipher_.decrypt(view(h_), ciphertext);
  if (!p) return p;
  mix_hash(ciphertext);
  return p;
}

Result<void> Handshake::mix_ee(const char* op) {
  Key shared{};
  if (crypto_scalarmult_curve25519(shared.data(), e_priv_.data(), re_.data()) != 0) {
    failed_ = true;
    return logic_error(op, "peer's ephemeral key is a low-order point");
  }
  mix_key(view(shared));
  sodium_memzero(shared.data(), shared.size());
  return {};
}

Result<std::string> Handshake::write_message(std::string_view payload) {
  const bool mine = (role_ == Role::kInitiator && step_ == 0) || (role_ == Role::kResponder && step_ == 1);
  if (failed_ || !mine) return logic_error("noise.write_message", "not this side's turn in the handshake");
  std::string msg;
  if (step_ == 0) mix_key_and_hash(view(psk_));  // -> psk
  // e (with a psk in the pattern, e is also mixed into the key)
  msg.append(view(e_pub_));
  mix_hash(view(e_pub_));
  mix_key(view(e_pub_));
  if (step_ == 1) FLOE_TRY(mix_ee("noise.write_message"));  // <- ee
  auto c = encrypt_and_hash(payload);
  if (!c) {
    failed_ = true;
    return c;
  }
  msg.append(*c);
  ++step_;
  return msg;
}

Result<std::string> Handshake::read_message(std::string_view message) {
  const bool theirs = (role_ == Role::kResponder && step_ == 0) || (role_ == Role::kInitiator && step_ == 1);
  if (failed_ || !theirs) return logic_error("noise.read_message", "not the peer's turn in the handshake");
  if (message.size() < kKeyLen + kTagLen) {
    failed_ = true;
    return logic_error("noise.read_message", "handshake message too short");
  }
  if (step_ == 0) mix_key_and_hash(view(psk_));
  std::memcpy(re_.data(), message.data(), kKeyLen);
  mix_hash(view(re_));
  mix_key(view(re_));
  if (step_ == 1) FLOE_TRY(mix_ee("noise.read_message"));
  auto p = decrypt_and_hash(message.substr(kKeyLen));
  if (!p) {
    failed_ = true;
    return p;
  }
  ++step_;
  return p;
}

std::pair<CipherState, CipherState> Handshake::split() const {
  const auto out = hkdf(ck_, {}, 2);
  Key k1{}, k2{};
  std::memcpy(k1.data(), out[0].data(), kKeyLen);
  std::memcpy(k2.data(), out[1].data(), kKeyLen);
  // The first key encrypts initiator -> responder.
  if (role_ == Role::kInitiator) return {CipherState(k1), CipherState(k2)};
  return {CipherState(k2), CipherState(k1)};
}

}  // namespace floe::esphome::noise
