// floe::esphome::Transport — the framing of one ESPHome native-API TCP connection, without the
// socket: bytes in, messages out; messages in, bytes out. Used by the client (floe-esphome) and the
// server (floe-esphome-sim), and fuzzed (tests/fuzz/fuzz_esphome_frames.cpp).
//
// Plaintext frame: 0x00, varint(payload length), varint(type), payload.
// Noise (Noise_NNpsk0_25519_ChaChaPoly_SHA256, prologue "NoiseAPIInit\0\0" + the client hello
// frame's length and body): frames 0x01, u16 BE length, body. The client sends an empty hello frame
// and then 0x00 + its handshake message; the server answers 0x01 + node name NUL + MAC NUL, then
// 0x00 + its handshake message (or 0x01 + a reason, e.g. "Handshake MAC failure" for a wrong key).
// After that every frame body is encrypted [type u16 BE][length u16 BE][payload] + 16-byte tag.
//
// Thread-safety: none; one Transport belongs to one connection and one thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "floe/ipc/result.hpp"

namespace floe::esphome {

/// The largest payload either transport accepts or produces. Clients cap frames at 65535 bytes;
/// a Noise frame (u16 length) holds 4 header bytes and a 16-byte tag besides the payload.
inline constexpr std::size_t kMaxPayload = 65535 - 4 - 16;
/// Noise handshake frames are small (hello ~50 bytes); anything bigger before the handshake ends
/// is refused ("Bad handshake packet len").
inline constexpr std::size_t kMaxHandshakeFrame = 128;

using Psk = std::array<std::uint8_t, 32>;

/// One decoded message: its wire type (see MsgType; unknown numbers are passed through) and its
/// protobuf bytes.
struct Message {
  std::uint16_t type = 0;
  std::string payload;
};

class Transport {
 public:
  enum class Kind { kPlaintext, kNoiseClient, kNoiseServer };

  virtual ~Transport();

  /// Which end of the connection; only changes the wording of errors and what a plaintext server
  /// sends a Noise client before closing (firmware's "\x00Bad indicator byte").
  enum class Side { kClient, kServer };

  static std::unique_ptr<Transport> plaintext(Side side = Side::kClient);
  /// `psk`: the 32 bytes of the device's base64 `api: encryption: key:` (see decode_psk).
  static std::unique_ptr<Transport> noise_client(Psk psk);
  /// `node_name` and `mac` (12 lowercase hex digits, as firmware sends it) go into the server hello.
  static std::unique_ptr<Transport> noise_server(Psk psk, std::string node_name, std::string mac);

  [[nodiscard]] virtual Kind kind() const noexcept = 0;

  /// Bytes a client sends first (Noise: hello frame + handshake message); "" otherwise.
  [[nodiscard]] virtual std::string start() = 0;

  /// Feeds received bytes, split anywhere (partial frames, many frames at once). Complete
  /// messages are appended to `out`, bytes to send back (handshake replies, a refusal for the peer)
  /// to `reply` — send `reply` even when an error is returned. An error means: close the
  /// connection; Error::message says why in words a user understands. After an error every later
  /// call fails too.
  [[nodiscard]] virtual floe::Result<void> feed(std::span<const std::byte> in, std::vector<Message>& out,
                                               std::string& reply) = 0;
  [[nodiscard]] floe::Result<void> feed(std::string_view in, std::vector<Message>& out, std::string& reply) {
    return feed(std::as_bytes(std::span(in.data(), in.size())), out, reply);
  }

  /// One framed (and, for Noise, encrypted) message. Errors before the handshake completes and
  /// for a payload above kMaxPayload. Concatenate several results to batch frames in one write.
  [[nodiscard]] virtual floe::Result<std::string> encode(std::uint16_t type, std::string_view payload) = 0;

  /// Handshake done (plaintext: always).
  [[nodiscard]] virtual bool ready() const = 0;

  /// Noise client: the node name and MAC from the server hello ("" before it / otherwise).
  [[nodiscard]] virtual std::string_view peer_name() const noexcept { return {}; }
  [[nodiscard]] virtual std::string_view peer_mac() const noexcept { return {}; }
};

/// Decodes the base64 key of `api: encryption: key:` (standard alphabet, padding required as
/// ESPHome writes it, surrounding whitespace ignored). Error unless it is exactly 32 bytes.
[[nodiscard]] floe::Result<Psk> decode_psk(std::string_view base64);
/// The inverse, for configs and tests.
[[nodiscard]] std::string encode_psk(const Psk& psk);

}  // namespace floe::esphome
