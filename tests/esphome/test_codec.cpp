// The ESPHome native-API codec: plaintext and Noise framing, round trips under every split of the
// byte stream, and a clear error (never a crash) for every kind of bad input.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "floe/esphome/messages.hpp"
#include "floe/esphome/noise.hpp"
#include "floe/esphome/transport.hpp"
#include "support/environment.hpp"

namespace floe::esphome {
namespace {

using ::testing::HasSubstr;

std::string hex(std::string_view s) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(d[c >> 4]);
    out.push_back(d[c & 15]);
  }
  return out;
}
template <std::size_t N>
std::string hex(const std::array<std::uint8_t, N>& a) {
  return hex(std::string_view(reinterpret_cast<const char*>(a.data()), N));
}

Psk key(std::uint8_t seed) {
  Psk k{};
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = static_cast<std::uint8_t>(seed + i * 7);
  return k;
}

std::vector<Message> sample_messages() {
  api::HelloRequest hello;
  hello.set_client_info("floe test");
  hello.set_api_version_major(1);
  hello.set_api_version_minor(14);
  api::LightCommandRequest light;
  light.set_key(0xdeadbeef);
  light.set_has_state(true);
  light.set_state(true);
  light.set_has_brightness(true);
  light.set_brightness(0.5f);
  light.set_device_id(7);
  std::string big(300, 'x');  // two-byte length varint
  api::TextSensorStateResponse text;
  text.set_key(1);
  text.set_state(big);
  return {
      {to_u16(MsgType::HelloRequest), serialize(hello)},
      {to_u16(MsgType::PingRequest), ""},
      {to_u16(MsgType::LightCommandRequest), serialize(light)},
      {to_u16(MsgType::TextSensorStateResponse), serialize(text)},
      {200, "unknown type, passed through"},  // type needs a two-byte varint
  };
}

void expect_same(const std::vector<Message>& got, const std::vector<Message>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].type, want[i].type) << i;
    EXPECT_EQ(got[i].payload, want[i].payload) << i;
  }
}

// ---- plaintext ------------------------------------------------------------------------------------

TEST(PlaintextCodec, PingIsThreeBytes) {
  auto t = Transport::plaintext();
  EXPECT_EQ(*t->encode(to_u16(MsgType::PingRequest), ""), std::string("\x00\x00\x07", 3));
  EXPECT_TRUE(t->ready());
  EXPECT_EQ(t->start(), "");
}

TEST(PlaintextCodec, RoundTripUnderEverySplit) {
  const auto msgs = sample_messages();
  auto enc = Transport::plaintext();
  std::string stream;
  for (const auto& m : msgs) stream += *enc->encode(m.type, m.payload);
  for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
    auto dec = Transport::plaintext(Transport::Side::kServer);
    std::vector<Message> out;
    std::string reply;
    ASSERT_TRUE(dec->feed(std::string_view(stream).substr(0, cut), out, reply)) << cut;
    ASSERT_TRUE(dec->feed(std::string_view(stream).substr(cut), out, reply)) << cut;
    expect_same(out, msgs);
    EXPECT_TRUE(reply.empty());
  }
  // One byte at a time.
  auto dec = Transport::plaintext();
  std::vector<Message> out;
  std::string reply;
  for (char c : stream) ASSERT_TRUE(dec->feed(std::string_view(&c, 1), out, reply));
  expect_same(out, msgs);
}

TEST(PlaintextCodec, TruncatedFrameWaitsForTheRest) {
  auto t = Transport::plaintext();
  std::vector<Message> out;
  std::string reply;
  ASSERT_TRUE(t->feed(std::string_view("\x00\x05\x01" "abc", 6), out, reply));
  EXPECT_TRUE(out.empty());
  ASSERT_TRUE(t->feed(std::string_view("de", 2), out, reply));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].payload, "abcde");
}

TEST(PlaintextCodec, OversizedLengthIsRefused) {
  auto t = Transport::plaintext();
  std::vector<Message> out;
  std::string reply;
  // varint(9999999) = ff ac e2 04
  auto r = t->feed(std::string_view("\x00\xff\xac\xe2\x04\x01", 6), out, reply);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("frame length 9999999 exceeds limit"));
}

TEST(PlaintextCodec, BadVarintIsRefused) {
  auto t = Transport::plaintext();
  std::vector<Message> out;
  std::string reply;
  auto r = t->feed(std::string_view("\x00\x01\xff\xff\xff\xff\xff\xff", 8), out, reply);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("bad varint"));
  // Errors are sticky: the connection is done.
  EXPECT_FALSE(t->feed(std::string_view("\x00\x00\x07", 3), out, reply));
  EXPECT_FALSE(t->encode(7, ""));
}

TEST(PlaintextCodec, MessageTypeOutOfRangeIsRefused) {
  auto t = Transport::plaintext();
  std::vector<Message> out;
  std::string reply;
  auto r = t->feed(std::string_view("\x00\x00\x80\x80\x04", 5), out, reply);  // type 65536
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("out of range"));
}

TEST(PlaintextCodec, ClientSeeingANoiseDeviceSaysEncryptionIsExpected) {
  auto server = Transport::noise_server(key(1), "dev", "aabbccddeeff");
  auto client = Transport::plaintext();
  std::vector<Message> out;
  std::string reply;
  auto hello = *client->encode(to_u16(MsgType::HelloRequest), "");
  auto r = server->feed(hello, out, reply);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("plaintext peer but a key is configured"));
  ASSERT_FALSE(reply.empty());  // firmware's explicit refusal, a Noise frame
  std::string back;
  auto c = client->feed(reply, out, back);
  ASSERT_FALSE(c);
  EXPECT_THAT(c.error().message, HasSubstr("device expects encryption but no key configured"));
}

TEST(PlaintextCodec, ServerAnswersANoiseClientWithBadIndicator) {
  auto client = Transport::noise_client(key(1));
  auto server = Transport::plaintext(Transport::Side::kServer);
  std::vector<Message> out;
  std::string reply;
  auto r = server->feed(client->start(), out, reply);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("no encryption key"));
  EXPECT_EQ(reply, std::string("\x00" "Bad indicator byte", 19));
  std::string back;
  auto c = client->feed(reply, out, back);
  ASSERT_FALSE(c);
  EXPECT_THAT(c.error().message, HasSubstr("plaintext peer) but a key is configured"));
}

TEST(PlaintextCodec, GarbageIndicatorIsRefused) {
  auto t = Transport::plaintext();
  std::vector<Message> out;
  std::string reply;
  auto r = t->feed("GET / HTTP/1.1\r\n", out, reply);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("bad indicator byte 0x47"));
}

TEST(Messages, GarbageProtobufDoesNotParse) {
  api::HelloRequest hello;
  EXPECT_FALSE(parse(std::string_view("\x0a\xff\xff\xff\xff\x0f", 6), hello));  // length beyond the end
  EXPECT_FALSE(parse(std::string_view("\xff", 1), hello));                       // truncated tag varint
  EXPECT_TRUE(parse(std::string_view("\x78\x01", 2), hello));                    // unknown field 15 skipped
  EXPECT_TRUE(parse("", hello));
}

TEST(Messages, TypeTableMatchesTheProtocol) {
  EXPECT_EQ(to_u16(type_of<api::ListEntitiesButtonResponse>()), 61);
  EXPECT_EQ(to_u16(type_of<api::SelectCommandRequest>()), 54);
  EXPECT_EQ(to_u16(type_of<api::GetTimeResponse>()), 37);
  EXPECT_EQ(type_name(32).value_or(""), "LightCommandRequest");
  EXPECT_FALSE(is_known_type(999));
  EXPECT_FALSE(type_name(0).has_value());
}

// ---- Noise ----------------------------------------------------------------------------------------

struct Pair {
  std::unique_ptr<Transport> client;
  std::unique_ptr<Transport> server;
};

// Runs the handshake to completion, checking every step.
Pair handshake(const Psk& k) {
  Pair p{Transport::noise_client(k), Transport::noise_server(k, "kitchen", "a1b2c3d4e5f6")};
  std::vector<Message> out;
  std::string reply;
  EXPECT_FALSE(p.client->ready());
  auto first = p.client->start();
  EXPECT_EQ(first.substr(0, 4), std::string("\x01\x00\x00\x01", 4));  // empty hello, then a frame
  EXPECT_TRUE(p.server->feed(first, out, reply));
  EXPECT_TRUE(p.server->ready());
  std::string none;
  EXPECT_TRUE(p.client->feed(reply, out, none));
  EXPECT_TRUE(p.client->ready());
  EXPECT_TRUE(out.empty());
  EXPECT_TRUE(none.empty());
  EXPECT_EQ(p.client->peer_name(), "kitchen");
  EXPECT_EQ(p.client->peer_mac(), "a1b2c3d4e5f6");
  return p;
}

TEST(NoiseCodec, HandshakeAndMessagesBothWays) {
  auto p = handshake(key(3));
  const auto msgs = sample_messages();
  std::string c2s, s2c;
  for (const auto& m : msgs) {
    c2s += *p.client->encode(m.type, m.payload);
    s2c += *p.server->encode(m.type, m.payload);
  }
  std::vector<Message> at_server, at_client;
  std::string reply;
  ASSERT_TRUE(p.server->feed(c2s, at_server, reply));
  auto cr = p.client->feed(s2c, at_client, reply);
  ASSERT_TRUE(cr) << cr.error().message;
  expect_same(at_server, msgs);
  expect_same(at_client, msgs);
  EXPECT_TRUE(reply.empty());
}

TEST(NoiseCodec, RoundTripUnderEverySplit) {
  // The whole client -> server stream (hello, handshake, data) cut at every position.
  const auto msgs = sample_messages();
  const std::size_t probe_len = [&] {
    auto p = handshake(key(4));
    std::string s;
    for (const auto& m : msgs) s += *p.client->encode(m.type, m.payload);
    return s.size();
  }();
  auto client0 = Transport::noise_client(key(4));
  const std::size_t start_len = client0->start().size();
  for (std::size_t cut = 0; cut <= start_len + probe_len; ++cut) {
    auto client = Transport::noise_client(key(4));
    auto server = Transport::noise_server(key(4), "n", "m");
    std::vector<Message> out;
    std::string reply, none;
    const auto first = client->start();
    // The data frames need the handshake's keys: let the server answer the start first when the
    // cut lies beyond it, then cut the data.
    if (cut <= first.size()) {
      ASSERT_TRUE(server->feed(std::string_view(first).substr(0, cut), out, reply));
      ASSERT_TRUE(server->feed(std::string_view(first).substr(cut), out, reply));
      ASSERT_TRUE(client->feed(reply, out, none));
      std::string data;
      for (const auto& m : msgs) data += *client->encode(m.type, m.payload);
      ASSERT_TRUE(server->feed(data, out, reply));
    } else {
      ASSERT_TRUE(server->feed(first, out, reply));
      ASSERT_TRUE(client->feed(reply, out, none));
      std::string data;
      for (const auto& m : msgs) data += *client->encode(m.type, m.payload);
      const auto c = cut - first.size();
      ASSERT_TRUE(server->feed(std::string_view(data).substr(0, c), out, reply));
      ASSERT_TRUE(server->feed(std::string_view(data).substr(c), out, reply));
    }
    expect_same(out, msgs);
  }
}

TEST(NoiseCodec, ServerReplyUnderEverySplit) {
  for (std::size_t cut = 0;; ++cut) {
    auto client = Transport::noise_client(key(5));
    auto server = Transport::noise_server(key(5), "node", "001122334455");
    std::vector<Message> out;
    std::string reply, none;
    ASSERT_TRUE(server->feed(client->start(), out, reply));
    reply += *server->encode(to_u16(MsgType::PingRequest), "");  // batched after the handshake
    if (cut > reply.size()) break;
    ASSERT_TRUE(client->feed(std::string_view(reply).substr(0, cut), out, none));
    ASSERT_TRUE(client->feed(std::string_view(reply).substr(cut), out, none));
    ASSERT_TRUE(client->ready());
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].type, to_u16(MsgType::PingRequest));
  }
}

TEST(NoiseCodec, WrongKeyIsReportedAsSuch) {
  auto client = Transport::noise_client(key(1));
  auto server = Transport::noise_server(key(2), "node", "001122334455");
  std::vector<Message> out;
  std::string reply, none;
  auto s = server->feed(client->start(), out, reply);
  ASSERT_FALSE(s);
  EXPECT_THAT(s.error().message, HasSubstr("wrong encryption key"));
  EXPECT_NE(reply.find("Handshake MAC failure"), std::string::npos);
  auto c = client->feed(reply, out, none);
  ASSERT_FALSE(c);
  EXPECT_THAT(c.error().message, HasSubstr("wrong encryption key"));
  EXPECT_FALSE(client->ready());
}

TEST(NoiseCodec, EncodeBeforeHandshakeFails) {
  auto client = Transport::noise_client(key(1));
  auto r = client->encode(7, "");
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("handshake"));
  auto server = Transport::noise_server(key(1), "a", "b");
  EXPECT_FALSE(server->encode(7, ""));
}

TEST(NoiseCodec, TamperedFrameFailsToDecrypt) {
  auto p = handshake(key(6));
  auto frame = *p.client->encode(to_u16(MsgType::PingRequest), "");
  frame[5] = static_cast<char>(frame[5] ^ 0x40);
  std::vector<Message> out;
  std::string reply;
  auto r = p.server->feed(frame, out, reply);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("could not decrypt"));
  EXPECT_TRUE(out.empty());
}

TEST(NoiseCodec, ReplayedFrameFailsToDecrypt) {
  auto p = handshake(key(6));
  auto frame = *p.client->encode(to_u16(MsgType::PingRequest), "");
  std::vector<Message> out;
  std::string reply;
  ASSERT_TRUE(p.server->feed(frame, out, reply));
  EXPECT_FALSE(p.server->feed(frame, out, reply));  // the nonce moved on
}

TEST(NoiseCodec, OversizedHandshakeFrameIsRejected) {
  auto server = Transport::noise_server(key(1), "a", "b");
  std::vector<Message> out;
  std::string reply;
  auto r = server->feed(std::string_view("\x01\xff\xff", 3), out, reply);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("exceeds limit"));
  EXPECT_NE(reply.find("Bad handshake packet len"), std::string::npos);
}

TEST(NoiseCodec, ShortEncryptedFrameIsRefused) {
  auto p = handshake(key(7));
  std::vector<Message> out;
  std::string reply;
  auto r = p.server->feed(std::string_view("\x01\x00\x03" "abc", 6), out, reply);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("could not decrypt"));
}

TEST(NoiseCodec, DeviceRefusalTextIsShown) {
  auto client = Transport::noise_client(key(1));
  (void)client->start();
  std::vector<Message> out;
  std::string none;
  // Server hello, then a refusal with a reason.
  std::string bytes("\x01\x00\x05\x01n\0m\0", 8);
  bytes += std::string("\x01\x00\x0a\x01", 4) + "Go away!!";
  auto r = client->feed(bytes, out, none);
  ASSERT_FALSE(r);
  EXPECT_THAT(r.error().message, HasSubstr("refused the encryption handshake: Go away!!"));
}

TEST(NoiseCodec, PayloadLimit) {
  auto p = handshake(key(8));
  EXPECT_TRUE(p.client->encode(1, std::string(kMaxPayload, 'a')));
  EXPECT_FALSE(p.client->encode(1, std::string(kMaxPayload + 1, 'a')));
  auto plain = Transport::plaintext();
  EXPECT_FALSE(plain->encode(1, std::string(kMaxPayload + 1, 'a')));
}

// ---- Noise primitives -----------------------------------------------------------------------------

TEST(NoisePrimitives, KnownValues) {
  // RFC 4231 test case 2.
  EXPECT_EQ(hex(noise::hmac_sha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // h0 = SHA-256 of the protocol name (longer than 32 bytes, so hashed), then MixHash(prologue):
  // SHA-256(f0b89082...7f7b || "NoiseAPIInit\0\0"), computed independently with Python's hashlib.
  noise::Handshake hs(noise::Handshake::Role::kInitiator, key(0), std::string("NoiseAPIInit\0\0", 14));
  EXPECT_EQ(hex(hs.handshake_hash()), "e118ea76fecd615fda78e16054f431702b62650438dc7a42d2d4b7226a4c5506");
}

TEST(NoisePrimitives, FixedEphemeralsGiveTheSameTranscriptOnBothSides) {
  noise::Key ei{}, er{};
  ei.fill(0x11);
  er.fill(0x22);
  const std::string prologue("NoiseAPIInit\0\0", 14);
  noise::Handshake a(noise::Handshake::Role::kInitiator, key(9), prologue, ei);
  noise::Handshake b(noise::Handshake::Role::kResponder, key(9), prologue, er);
  auto m1 = a.write_message("");
  ASSERT_TRUE(m1);
  EXPECT_EQ(m1->size(), 48u);  // e + tag of the empty payload
  ASSERT_TRUE(b.read_message(*m1));
  auto m2 = b.write_message("hi");
  ASSERT_TRUE(m2);
  auto payload = a.read_message(*m2);
  ASSERT_TRUE(payload);
  EXPECT_EQ(*payload, "hi");
  ASSERT_TRUE(a.done() && b.done());
  EXPECT_EQ(a.handshake_hash(), b.handshake_hash());
  auto [a_send, a_recv] = a.split();
  auto [b_send, b_recv] = b.split();
  auto c = a_send.encrypt({}, "ping");
  EXPECT_EQ(*b_recv.decrypt({}, *c), "ping");
  auto d = b_send.encrypt({}, "pong");
  EXPECT_EQ(*a_recv.decrypt({}, *d), "pong");
  // Deterministic: the same inputs give the same first message.
  noise::Handshake a2(noise::Handshake::Role::kInitiator, key(9), prologue, ei);
  EXPECT_EQ(*a2.write_message(""), *m1);
  // A different prologue (e.g. a different client hello) breaks the handshake.
  noise::Handshake b3(noise::Handshake::Role::kResponder, key(9), std::string("NoiseAPIInit\0\1x", 15), er);
  EXPECT_FALSE(b3.read_message(*m1));
}

TEST(NoisePrimitives, ForgedOrShortMessagesAreRefused) {
  noise::Handshake b(noise::Handshake::Role::kResponder, key(9), "p");
  EXPECT_FALSE(b.read_message(std::string(47, '\0')));  // shorter than e + tag
  noise::Handshake c(noise::Handshake::Role::kResponder, key(9), "p");
  EXPECT_FALSE(c.read_message(std::string(48, '\0')));  // zero key, tag that does not authenticate
  EXPECT_FALSE(c.write_message(""));                     // a failed handshake stays failed
}

TEST(Psk, DecodesTheDeviceKey) {
  const Psk k = key(42);
  const auto text = encode_psk(k);
  EXPECT_EQ(text.size(), 44u);
  EXPECT_EQ(*decode_psk(text), k);
  EXPECT_EQ(*decode_psk("  " + text + "\n"), k);
  auto bad = decode_psk("not base64!");
  ASSERT_FALSE(bad);
  EXPECT_THAT(bad.error().message, HasSubstr("not valid base64"));
  auto short_key = decode_psk("AAAA");
  ASSERT_FALSE(short_key);
  EXPECT_THAT(short_key.error().message, HasSubstr("3 bytes, expected 32"));
  EXPECT_FALSE(decode_psk(""));
}

// ---- bounded random input -------------------------------------------------------------------------

// Random and mutated bytes into every transport: each call returns (messages or an error), never
// crashes, never loops; a bounded number of iterations.
TEST(CodecRandomInput, NeverCrashes) {
  std::mt19937 rng(12345);
  const auto iterations = floe::test::scaled(3000, 200);
  const auto msgs = sample_messages();
  std::string valid_plain;
  {
    auto t = Transport::plaintext();
    for (const auto& m : msgs) valid_plain += *t->encode(m.type, m.payload);
  }
  std::size_t errors = 0, decoded = 0;
  for (std::uint64_t i = 0; i < iterations; ++i) {
    std::string input;
    const int mode = static_cast<int>(rng() % 3);
    if (mode == 0) {
      input.resize(rng() % 200);
      for (auto& c : input) c = static_cast<char>(rng());
      if (!input.empty() && rng() % 2) input[0] = static_cast<char>(rng() % 2);  // plausible indicator
    } else if (mode == 1) {
      input = valid_plain;
      for (int f = 0; f < 1 + static_cast<int>(rng() % 4); ++f) input[rng() % input.size()] = static_cast<char>(rng());
    } else {
      // A real Noise client start, mutated.
      auto c = Transport::noise_client(key(1));
      input = c->start();
      input[rng() % input.size()] = static_cast<char>(rng());
    }
    std::vector<std::unique_ptr<Transport>> ts;
    ts.push_back(Transport::plaintext());
    ts.push_back(Transport::plaintext(Transport::Side::kServer));
    ts.push_back(Transport::noise_server(key(1), "n", "m"));
    auto nc = Transport::noise_client(key(1));
    (void)nc->start();
    ts.push_back(std::move(nc));
    for (auto& t : ts) {
      std::vector<Message> out;
      std::string reply;
      // Feed in random chunks.
      std::size_t at = 0;
      bool ok = true;
      while (at < input.size() && ok) {
        const std::size_t n = 1 + rng() % 64;
        ok = static_cast<bool>(t->feed(std::string_view(input).substr(at, n), out, reply));
        at += n;
      }
      errors += ok ? 0 : 1;
      decoded += out.size();
      for (const auto& m : out) {
        api::LightCommandRequest any;
        (void)parse(m.payload, any);  // garbage protobuf: false or a message, never a crash
      }
    }
  }
  EXPECT_GT(errors, 0u);
  EXPECT_GT(decoded, 0u);
}

}  // namespace
}  // namespace floe::esphome
