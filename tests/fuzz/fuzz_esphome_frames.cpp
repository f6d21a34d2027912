// libFuzzer entry point for the ESPHome native-API frame decoders (plaintext and Noise, both ends)
// and the protobuf parsing of what they decode. Built by the fuzzer build like every target here
// (`scripts/fuzz esphome_frames`; seeds in tests/fuzz/corpus/esphome_frames/), or by hand with clang
// after any configure (the generated esphome_api.pb.{h,cc} come from that build directory):
//
//   B=build-h1; clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined \
//     -Iesphome-provider/include -Iipc/include -I$B/esphome-provider \
//     tests/fuzz/fuzz_esphome_frames.cpp esphome-provider/src/codec/*.cpp \
//     $B/esphome-provider/esphome_api.pb.cc ipc/src/result.cpp \
//     -lprotobuf-lite -lsodium -lfmt -o fuzz_esphome_frames
//   ./fuzz_esphome_frames -max_len=4096 tests/fuzz/corpus/esphome_frames
//
// The first input byte picks the transport and how the rest is split into feed() calls; every
// call must return (messages or an error), and after an error every later call must fail too.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "floe/esphome/messages.hpp"
#include "floe/esphome/transport.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace floe::esphome;
  if (size < 2) return 0;
  const std::uint8_t mode = data[0] % 4;
  const std::size_t chunk = 1 + data[1] % 64;
  const std::string_view input(reinterpret_cast<const char*>(data + 2), size - 2);
  Psk psk{};
  std::unique_ptr<Transport> t;
  switch (mode) {
    case 0: t = Transport::plaintext(Transport::Side::kClient); break;
    case 1: t = Transport::plaintext(Transport::Side::kServer); break;
    case 2: t = Transport::noise_server(psk, "fuzz", "001122334455"); break;
    default:
      t = Transport::noise_client(psk);
      (void)t->start();
  }
  bool failed = false;
  for (std::size_t at = 0; at < input.size(); at += chunk) {
    std::vector<Message> out;
    std::string reply;
    const bool ok = static_cast<bool>(t->feed(input.substr(at, chunk), out, reply));
    if (failed && ok) std::abort();  // errors are sticky
    failed = failed || !ok;
    for (const auto& m : out) {
      if (m.payload.size() > kMaxPayload) std::abort();
      api::LightCommandRequest light;
      (void)parse(m.payload, light);
      api::DeviceInfoResponse info;
      (void)parse(m.payload, info);
    }
  }
  return 0;
}
