// The Noise protocol pieces ESPHome's encryption needs — Noise_NNpsk0_25519_ChaChaPoly_SHA256 —
// built on libsodium (X25519, ChaCha20-Poly1305 IETF, SHA-256, HMAC-SHA256). Transport (see
// transport.hpp) uses these; they are public so that tests can check them against known vectors
// (fixed ephemeral keys) independently of the framing.
//
// NNpsk0: -> psk, e   <- e, ee. Neither side has a static key; both prove they hold the psk.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "floe/ipc/result.hpp"

namespace floe::esphome::noise {

inline constexpr std::size_t kKeyLen = 32;
inline constexpr std::size_t kHashLen = 32;
inline constexpr std::size_t kTagLen = 16;
inline constexpr std::string_view kProtocolName = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";

using Key = std::array<std::uint8_t, kKeyLen>;
using Hash = std::array<std::uint8_t, kHashLen>;

/// Calls sodium_init() once; false if libsodium cannot initialise (no entropy source).
[[nodiscard]] bool ensure_sodium();

/// HMAC-SHA256(key, data).
[[nodiscard]] Hash hmac_sha256(std::string_view key, std::string_view data);
/// Noise's HKDF: 2 or 3 outputs from chaining key `ck` and input key material.
[[nodiscard]] std::array<Hash, 3> hkdf(const Hash& ck, std::string_view ikm, int outputs);

/// A key and a 64-bit nonce; ChaCha20-Poly1305 with nonce = 4 zero bytes + little-endian n.
class CipherState {
 public:
  CipherState() = default;
  explicit CipherState(const Key& k) : k_(k), has_key_(true) {}
  [[nodiscard]] bool has_key() const noexcept { return has_key_; }
  /// ciphertext + tag (plaintext unchanged when there is no key yet, as Noise says).
  [[nodiscard]] Result<std::string> encrypt(std::string_view ad, std::string_view plaintext);
  /// Error "authentication failed" when the tag does not match (wrong key, corrupted bytes).
  [[nodiscard]] Result<std::string> decrypt(std::string_view ad, std::string_view ciphertext);
  [[nodiscard]] std::uint64_t nonce() const noexcept { return n_; }

 private:
  Key k_{};
  bool has_key_ = false;
  std::uint64_t n_ = 0;
};

/// The handshake of one side. write_message/read_message alternate as the pattern says
/// (initiator: write, read; responder: read, write); after the second message done() is true and
/// split() gives the two transport ciphers.
class Handshake {
 public:
  enum class Role { kInitiator, kResponder };
  /// `ephemeral`: a fixed private key for test vectors; random when nullopt.
  Handshake(Role role, const Key& psk, std::string_view prologue, std::optional<Key> ephemeral = std::nullopt);

  [[nodiscard]] Result<std::string> write_message(std::string_view payload);
  [[nodiscard]] Result<std::string> read_message(std::string_view message);
  [[nodiscard]] bool done() const noexcept { return step_ == 2; }
  /// {send, receive} for this side. Only after done().
  [[nodiscard]] std::pair<CipherState, CipherState> split() const;
  [[nodiscard]] const Hash& handshake_hash() const noexcept { return h_; }

 private:
  void mix_hash(std::string_view data);
  void mix_key(std::string_view ikm);
  void mix_key_and_hash(std::string_view ikm);
  [[nodiscard]] Result<std::string> encrypt_and_hash(std::string_view plaintext);
  [[nodiscard]] Result<std::string> decrypt_and_hash(std::string_view ciphertext);
  void make_ephemeral(std::optional<Key> fixed);
  // DH(e, re) mixed into the key: the pattern's "ee" token.
  [[nodiscard]] Result<void> mix_ee(const char* op);

  Role role_;
  Key psk_;
  Hash ck_{};
  Hash h_{};
  CipherState cipher_;
  Key e_priv_{};
  Key e_pub_{};
  Key re_{};
  int step_ = 0;  // messages processed
  bool failed_ = false;
};

}  // namespace floe::esphome::noise
