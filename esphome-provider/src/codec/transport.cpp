// Plaintext and Noise framing of the ESPHome native API (see transport.hpp for the wire format).
#include "floe/esphome/transport.hpp"

#include <sodium.h>

#include <fmt/format.h>

#include <optional>

#include "floe/esphome/noise.hpp"

namespace floe::esphome {
namespace {

constexpr char kPlainIndicator = 0x00;
constexpr char kNoiseIndicator = 0x01;
constexpr std::string_view kPrologueInit = "NoiseAPIInit";
constexpr std::string_view kMacFailure = "Handshake MAC failure";
// Noise frame body: type u16, length u16, payload, tag.
constexpr std::size_t kNoiseHeader = 4;

void put_u16(std::string& out, std::size_t v) {
  out.push_back(static_cast<char>((v >> 8) & 0xff));
  out.push_back(static_cast<char>(v & 0xff));
}
std::uint16_t get_u16(std::string_view s, std::size_t at) {
  return static_cast<std::uint16_t>((static_cast<std::uint8_t>(s[at]) << 8) | static_cast<std::uint8_t>(s[at + 1]));
}
void put_varint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

enum class VarintStatus { kOk, kNeedMore, kBad };
// A varint of at most 5 bytes (32 bits), as both fields of a plaintext header are.
VarintStatus get_varint(std::string_view s, std::size_t& at, std::uint32_t& value) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 5; ++i) {
    if (at + i >= s.size()) return VarintStatus::kNeedMore;
    const auto b = static_cast<std::uint8_t>(s[at + i]);
    v |= static_cast<std::uint64_t>(b & 0x7f) << (7 * i);
    if ((b & 0x80) == 0) {
      if (v > UINT32_MAX) return VarintStatus::kBad;
      value = static_cast<std::uint32_t>(v);
      at += i + 1;
      return VarintStatus::kOk;
    }
  }
  return VarintStatus::kBad;
}

std::string noise_frame(std::string_view body) {
  std::string out;
  out.reserve(3 + body.size());
  out.push_back(kNoiseIndicator);
  put_u16(out, body.size());
  out.append(body);
  return out;
}

std::string printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 80)) out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  return out;
}

// Shared by every transport: the receive buffer and the sticky failure.
class TransportBase : public Transport {
 protected:
  explicit TransportBase(const char* op) : op_(op) {}

  tl::unexpected<Error> fail(std::string message) {
    failed_ = Error{op_, 0, std::move(message)};
    buffer_.clear();
    return tl::unexpected(*failed_);
  }
  [[nodiscard]] Result<void> check_failed() const {
    if (failed_) return tl::unexpected(*failed_);
    return {};
  }
  void append(std::span<const std::byte> in) { buffer_.append(reinterpret_cast<const char*>(in.data()), in.size()); }
  // Drops consumed bytes from the front once per feed() (not per frame) to keep feeds linear.
  void consume(std::size_t n) { buffer_.erase(0, n); }

  const char* op_;
  std::string buffer_;
  std::optional<Error> failed_;
};

// ---- plaintext ------------------------------------------------------------------------------------

class PlaintextTransport final : public TransportBase {
 public:
  explicit PlaintextTransport(Side side) : TransportBase("esphome.plaintext"), side_(side) {}

  Kind kind() const noexcept override { return Kind::kPlaintext; }
  std::string start() override { return {}; }
  bool ready() const override { return true; }

  Result<void> feed(std::span<const std::byte> in, std::vector<Message>& out, std::string& reply) override {
    FLOE_TRY(check_failed());
    append(in);
    std::size_t at = 0;
    while (at < buffer_.size()) {
      const std::string_view buf(buffer_);
      if (buf[at] != kPlainIndicator) return bad_indicator(static_cast<std::uint8_t>(buf[at]), reply);
      std::size_t pos = at + 1;
      std::uint32_t length = 0;
      std::uint32_t type = 0;
      auto st = get_varint(buf, pos, length);
      if (st == VarintStatus::kBad) return fail("bad varint in the frame length");
      if (st == VarintStatus::kOk && length > kMaxPayload)
        return fail(fmt::format("frame length {} exceeds limit {}", length, kMaxPayload));
      if (st == VarintStatus::kOk) st = get_varint(buf, pos, type);
      if (st == VarintStatus::kBad) return fail("bad varint in the message type");
      if (st == VarintStatus::kNeedMore) break;
      if (type > UINT16_MAX) return fail(fmt::format("message type {} out of range", type));
      if (buf.size() - pos < length) break;
      out.push_back(Message{static_cast<std::uint16_t>(type), std::string(buf.substr(pos, length))});
      at = pos + length;
    }
    consume(at);
    return {};
  }

  Result<std::string> encode(std::uint16_t type, std::string_view payload) override {
    FLOE_TRY(check_failed());
    if (payload.size() > kMaxPayload)
      return logic_error(op_, fmt::format("payload of {} bytes exceeds limit {}", payload.size(), kMaxPayload));
    std::string out;
    out.reserve(payload.size() + 8);
    out.push_back(kPlainIndicator);
    put_varint(out, payload.size());
    put_varint(out, type);
    out.append(payload);
    return out;
  }

 private:
  tl::unexpected<Error> bad_indicator(std::uint8_t byte, std::string& reply) {
    if (side_ == Side::kServer) {
      // Firmware answers this way so that a Noise client can report "requires encryption" (at
      // least 3 bytes, so the client reads a whole header).
      reply.append(std::string_view("\x00" "Bad indicator byte", 19));
      if (byte == 0x01) return fail("client uses encryption but this device has no encryption key");
    } else if (byte == 0x01) {
      return fail("device expects encryption but no key configured");
    }
    return fail(fmt::format("bad indicator byte 0x{:02x} (not an ESPHome native API peer?)", byte));
  }

  Side side_;
};

// ---- Noise ----------------------------------------------------------------------------------------

// What both Noise ends share: frame splitting, data-phase encryption.
class NoiseBase : public TransportBase {
 protected:
  explicit NoiseBase(Psk psk) : TransportBase("esphome.noise"), psk_(psk) { (void)noise::ensure_sodium(); }

  bool ready() const override { return data_; }

  // The next complete frame body in buffer_ from `at`, or nullopt if more bytes are needed.
  // Errors for a wrong indicator or a frame too big for the current phase.
  Result<std::optional<std::string_view>> next_frame(std::size_t& at) {
    const std::string_view buf(buffer_);
    if (buf.size() - at < 3) {
      if (at < buf.size() && buf[at] != kNoiseIndicator) return bad_indicator(static_cast<std::uint8_t>(buf[at]));
      return std::optional<std::string_view>{};
    }
    if (buf[at] != kNoiseIndicator) return bad_indicator(static_cast<std::uint8_t>(buf[at]));
    const std::size_t size = get_u16(buf, at + 1);
    if (!data_ && size > kMaxHandshakeFrame) return oversized_handshake(size);
    if (buf.size() - at - 3 < size) return std::optional<std::string_view>{};
    const auto body = buf.substr(at + 3, size);
    at += 3 + size;
    return std::optional<std::string_view>{body};
  }

  Result<void> decode_data(std::string_view body, std::vector<Message>& out) {
    auto plain = recv_.decrypt({}, body);
    if (!plain) return fail("could not decrypt a frame (corrupted data or wrong encryption key)");
    if (plain->size() < kNoiseHeader) return fail(fmt::format("encrypted frame of {} bytes is too short", plain->size()));
    const std::uint16_t type = get_u16(*plain, 0);
    const std::size_t len = get_u16(*plain, 2);
    if (len > plain->size() - kNoiseHeader)
      return fail(fmt::format("frame says {} payload bytes but carries {}", len, plain->size() - kNoiseHeader));
    out.push_back(Message{type, plain->substr(kNoiseHeader, len)});
    return {};
  }

  Result<std::string> encode(std::uint16_t type, std::string_view payload) override {
    FLOE_TRY(check_failed());
    if (!data_) return logic_error(op_, "cannot send before the encryption handshake completes");
    if (payload.size() > kMaxPayload)
      return logic_error(op_, fmt::format("payload of {} bytes exceeds limit {}", payload.size(), kMaxPayload));
    std::string plain;
    plain.reserve(kNoiseHeader + payload.size());
    put_u16(plain, type);
    put_u16(plain, payload.size());
    plain.append(payload);
    auto sealed = send_.encrypt({}, plain);
    if (!sealed) return tl::unexpected(sealed.error());
    return noise_frame(*sealed);
  }

  // Splits the buffer into frames: data frames are decrypted into `out`, the others go to
  // handshake_frame() of the concrete end.
  Result<void> feed_frames(std::span<const std::byte> in, std::vector<Message>& out, std::string& reply) {
    append(in);
    std::size_t at = 0;
    for (;;) {
      auto frame = next_frame(at);
      if (!frame) return tl::unexpected(frame.error());
      if (!*frame) break;
      if (data_) {
        FLOE_TRY(decode_data(**frame, out));
      } else {
        FLOE_TRY(handshake_frame(**frame, reply));
      }
    }
    consume(at);
    return {};
  }

  virtual Result<void> handshake_frame(std::string_view body, std::string& reply) = 0;
  virtual tl::unexpected<Error> bad_indicator(std::uint8_t byte) = 0;
  virtual tl::unexpected<Error> oversized_handshake(std::size_t size) = 0;

  Psk psk_;
  std::optional<noise::Handshake> hs_;
  noise::CipherState send_;
  noise::CipherState recv_;
  bool data_ = false;
};

class NoiseClient final : public NoiseBase {
 public:
  explicit NoiseClient(Psk psk) : NoiseBase(psk) {}

  Kind kind() const noexcept override { return Kind::kNoiseClient; }
  std::string_view peer_name() const noexcept override { return name_; }
  std::string_view peer_mac() const noexcept override { return mac_; }

  std::string start() override {
    if (started_ || failed_) return {};
    started_ = true;
    // Our hello frame is empty, so the prologue ends with its length 0x0000.
    std::string prologue(kPrologueInit);
    put_u16(prologue, 0);
    hs_.emplace(noise::Handshake::Role::kInitiator, noise::Key(psk_), prologue);
    auto msg = hs_->write_message({});
    if (!msg) {
      (void)fail(msg.error().message);
      return {};
    }
    std::string out = noise_frame({});
    out += noise_frame(std::string(1, '\0') + *msg);
    return out;
  }

  Result<void> feed(std::span<const std::byte> in, std::vector<Message>& out, std::string& reply) override {
    FLOE_TRY(check_failed());
    if (!started_) return fail("received data before start() sent the client hello");
    return feed_frames(in, out, reply);
  }

 private:
  Result<void> handshake_frame(std::string_view body, std::string& /*reply*/) override {
    return got_hello_ ? server_handshake(body) : server_hello(body);
  }
  tl::unexpected<Error> bad_indicator(std::uint8_t byte) override {
    if (byte == 0x00 && !data_)
      return fail("device does not use encryption (plaintext peer) but a key is configured");
    return fail(fmt::format("bad indicator byte 0x{:02x} in an encrypted connection", byte));
  }
  tl::unexpected<Error> oversized_handshake(std::size_t size) override {
    return fail(fmt::format("handshake frame of {} bytes exceeds limit {}", size, kMaxHandshakeFrame));
  }

  Result<void> server_hello(std::string_view body) {
    if (body.empty()) return fail("empty server hello");
    if (body[0] != 0x01) return fail(fmt::format("device chose unknown protocol {}", static_cast<int>(body[0])));
    // Name and MAC, each NUL-terminated; older firmware sends neither.
    const auto rest = body.substr(1);
    const auto nul = rest.find('\0');
    if (nul != std::string_view::npos) {
      name_ = std::string(rest.substr(0, nul));
      const auto after = rest.substr(nul + 1);
      mac_ = std::string(after.substr(0, after.find('\0')));
    }
    got_hello_ = true;
    return {};
  }

  Result<void> server_handshake(std::string_view body) {
    if (body.empty()) return fail("empty handshake reply from the device");
    if (body[0] != 0x00) {
      const auto reason = body.substr(1);
      if (reason == kMacFailure) return fail("wrong encryption key (device reports: Handshake MAC failure)");
      return fail(fmt::format("device refused the encryption handshake: {}", printable(reason)));
    }
    auto payload = hs_->read_message(body.substr(1));
    if (!payload) return fail("encryption handshake failed: the device's reply does not authenticate (wrong encryption key?)");
    std::tie(send_, recv_) = hs_->split();
    hs_.reset();
    data_ = true;
    return {};
  }

  bool started_ = false;
  bool got_hello_ = false;
  std::string name_;
  std::string mac_;
};

class NoiseServer final : public NoiseBase {
 public:
  NoiseServer(Psk psk, std::string name, std::string mac)
      : NoiseBase(psk), name_(std::move(name)), mac_(std::move(mac)) {}

  Kind kind() const noexcept override { return Kind::kNoiseServer; }
  std::string start() override { return {}; }

  Result<void> feed(std::span<const std::byte> in, std::vector<Message>& out, std::string& reply) override {
    FLOE_TRY(check_failed());
    reply_ = &reply;
    return feed_frames(in, out, reply);
  }

 private:
  Result<void> handshake_frame(std::string_view body, std::string& reply) override {
    if (hs_) return client_handshake(body, reply);
    client_hello(body, reply);
    return {};
  }
  // Refusals go to the peer as a Noise frame [0x01][reason] before closing, as firmware does.
  tl::unexpected<Error> reject(std::string_view reason, std::string message) {
    if (reply_ != nullptr) reply_->append(noise_frame(std::string(1, '\x01') + std::string(reason)));
    return fail(std::move(message));
  }
  tl::unexpected<Error> bad_indicator(std::uint8_t byte) override {
    if (data_) return fail(fmt::format("bad indicator byte 0x{:02x} in an encrypted connection", byte));
    if (byte == 0x00) return reject("Bad indicator byte", "plaintext peer but a key is configured");
    return reject("Bad indicator byte", fmt::format("bad indicator byte 0x{:02x}", byte));
  }
  tl::unexpected<Error> oversized_handshake(std::size_t size) override {
    return reject("Bad handshake packet len",
                  fmt::format("handshake frame of {} bytes exceeds limit {}", size, kMaxHandshakeFrame));
  }

  void client_hello(std::string_view body, std::string& reply) {
    // The client hello (normally empty) is part of the prologue: its length and its bytes.
    std::string prologue(kPrologueInit);
    put_u16(prologue, body.size());
    prologue.append(body);
    hs_.emplace(noise::Handshake::Role::kResponder, noise::Key(psk_), prologue);
    std::string hello(1, '\x01');
    hello.append(name_);
    hello.push_back('\0');
    hello.append(mac_);
    hello.push_back('\0');
    reply.append(noise_frame(hello));
  }

  Result<void> client_handshake(std::string_view body, std::string& reply) {
    if (body.empty()) return reject("Empty handshake message", "empty handshake message from the client");
    if (body[0] != 0x00) return reject("Bad handshake error byte", "bad handshake error byte from the client");
    if (!hs_->read_message(body.substr(1)))
      return reject(kMacFailure, "wrong encryption key (the client's handshake does not authenticate)");
    auto msg = hs_->write_message({});
    if (!msg) return fail(msg.error().message);
    reply.append(noise_frame(std::string(1, '\0') + *msg));
    std::tie(send_, recv_) = hs_->split();
    data_ = true;
    return {};
  }

  std::string name_;
  std::string mac_;
  std::string* reply_ = nullptr;
};

}  // namespace

Transport::~Transport() = default;

std::unique_ptr<Transport> Transport::plaintext(Side side) { return std::make_unique<PlaintextTransport>(side); }
std::unique_ptr<Transport> Transport::noise_client(Psk psk) { return std::make_unique<NoiseClient>(psk); }
std::unique_ptr<Transport> Transport::noise_server(Psk psk, std::string node_name, std::string mac) {
  return std::make_unique<NoiseServer>(psk, std::move(node_name), std::move(mac));
}

Result<Psk> decode_psk(std::string_view base64) {
  while (!base64.empty() && (base64.front() == ' ' || base64.front() == '\t' || base64.front() == '\n' || base64.front() == '\r'))
    base64.remove_prefix(1);
  while (!base64.empty() && (base64.back() == ' ' || base64.back() == '\t' || base64.back() == '\n' || base64.back() == '\r'))
    base64.remove_suffix(1);
  if (base64.empty()) return logic_error("esphome.decode_psk", "encryption key is empty");
  if (!noise::ensure_sodium()) return logic_error("esphome.decode_psk", "libsodium failed to initialise");
  std::string bin(base64.size(), '\0');
  std::size_t len = 0;
  const char* end = nullptr;
  if (sodium_base642bin(reinterpret_cast<unsigned char*>(bin.data()), bin.size(), base64.data(), base64.size(), nullptr,
                        &len, &end, sodium_base64_VARIANT_ORIGINAL) != 0 ||
      end != base64.data() + base64.size()) {
    return logic_error("esphome.decode_psk", "encryption key is not valid base64");
  }
  if (len != 32)
    return logic_error("esphome.decode_psk", fmt::format("encryption key decodes to {} bytes, expected 32", len));
  Psk psk{};
  std::copy_n(reinterpret_cast<const std::uint8_t*>(bin.data()), 32, psk.begin());
  return psk;
}

std::string encode_psk(const Psk& psk) {
  (void)noise::ensure_sodium();
  std::string out(sodium_base64_ENCODED_LEN(32, sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), psk.data(), psk.size(), sodium_base64_VARIANT_ORIGINAL);
  out.resize(out.find('\0'));
  return out;
}

}  // namespace floe::esphome
