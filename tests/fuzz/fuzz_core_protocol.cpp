// libFuzzer target: floe-core's management and client protocols, fed to a real core. Run by
// `scripts/fuzz core_protocol` (seeds: tests/fuzz/corpus/core_protocol).
//
// The core (core::App) runs in this process, on its own threads, in a private socket directory,
// so its code is instrumented and a crash or sanitizer report in it ends the run. Each input is
// one connection:
//   byte 0   bit 0: the client socket instead of the provider socket
//            bit 1: send a valid Hello first and wait for the core's answer (reach later states)
//            bit 2: attach descriptors to the packets (SCM_RIGHTS)
//   then up to 8 packets, each [length: 1 byte][that many bytes] (+ [fd kind: 1 byte] with bit 2).
// After the last packet the connection is half-closed and the input ends when the core has read
// everything and hung up (or 10 s pass: a hang is a finding). The core must never crash, and must
// keep answering: every 256 inputs a fresh client Hello has to get a Welcome.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "client.pb.h"
#include "floe/core/config.hpp"
#include "floe/core/daemon.hpp"
#include "floe/ipc/channel.hpp"
#include "floe/ipc/fd.hpp"
#include "floe/ipc/protocol.hpp"
#include "management.pb.h"
#include "spdlog/spdlog.h"

namespace {

using namespace floe;

struct Core {
  std::string dir;
  std::string provider_path;
  std::string client_path;
};

core::App* g_app = nullptr;  // started once, never stopped (a global, so LeakSanitizer sees it held)

// Started once and never stopped: the process ends when libFuzzer is done.
const Core& running_core() {
  static const Core c = [] {
    char tmpl[] = "/dev/shm/floe-fuzz-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) std::abort();
    core::Config cfg;
    cfg.socket_dir = tmpl;
    cfg.worker_threads = 1;
    cfg.request_timeout = std::chrono::milliseconds(20);
    cfg.log_level = "off";
    core::resolve_defaults(cfg);
    g_app = new core::App(cfg);
    std::thread([] { (void)g_app->run(); }).detach();
    const std::string dir(tmpl);
    Core out{dir, dir + "/" + std::string(ipc::kProviderSocketName), dir + "/" + std::string(ipc::kClientSocketName)};
    for (int i = 0; i < 500 && ::access(out.client_path.c_str(), F_OK) != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return out;
  }();
  return c;
}

// Reads until the core hangs up. False if it neither answers nor hangs up within the limit.
bool drain_until_hangup(ipc::Channel& ch) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{ch.fd(), POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    auto packet = ch.receive();
    if (!packet) return true;  // EOF, reset: the core is done with us
  }
  return false;
}

bool core_welcomes_a_client() {
  auto ch = ipc::Channel::connect(running_core().client_path);
  if (!ch) return false;
  proto::ClientRequest hello;
  hello.set_id(1);
  hello.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
  hello.mutable_hello()->set_peer_name("fuzz-check");
  hello.mutable_hello()->set_role(proto::PEER_ROLE_CLIENT);
  if (!ch->send(hello)) return false;
  pollfd p{ch->fd(), POLLIN, 0};
  if (::poll(&p, 1, 10'000) <= 0) return false;
  proto::ClientResponse response;
  return ch->receive(response) && response.has_welcome();
}

ipc::Fd make_fd(std::uint8_t kind) {
  switch (kind % 4) {
    case 0: return ipc::Fd(::eventfd(0, EFD_CLOEXEC));
    case 1: {  // an unsealed memfd of a random small size: never a valid region
      ipc::Fd fd(::memfd_create("fuzz", MFD_CLOEXEC));
      if (fd) (void)::ftruncate(fd.get(), static_cast<off_t>(kind) * 64);
      return fd;
    }
    case 2: return ipc::Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    default: return ipc::Fd();
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  spdlog::set_level(spdlog::level::off);  // thousands of connections a second: their log lines are noise
  (void)running_core();  // before the first input, so the core's own allocations are not that input's leak
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static std::uint64_t runs = 0;
  const Core& c = running_core();
  if (size == 0) return 0;
  const std::uint8_t flags = data[0];
  const bool client = (flags & 1) != 0;
  auto ch = ipc::Channel::connect(client ? c.client_path : c.provider_path);
  if (!ch) {
    std::fprintf(stderr, "fuzz_core_protocol: cannot connect: %s\n", ch.error().to_string().c_str());
    std::abort();
  }
  if ((flags & 2) != 0) {
    bool sent = false;
    if (client) {
      proto::ClientRequest hello;
      hello.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
      hello.mutable_hello()->set_peer_name("fuzz");
      hello.mutable_hello()->set_role(proto::PEER_ROLE_CLIENT);
      sent = static_cast<bool>(ch->send(hello));
    } else {
      proto::Envelope hello;
      hello.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
      hello.mutable_hello()->set_peer_name("fuzz");
      hello.mutable_hello()->set_role(proto::PEER_ROLE_PROVIDER);
      sent = static_cast<bool>(ch->send(hello));
    }
    pollfd p{ch->fd(), POLLIN, 0};
    if (sent && ::poll(&p, 1, 10'000) > 0) (void)ch->receive();
  }
  std::size_t at = 1;
  for (int n = 0; n < 8 && at < size; ++n) {
    const std::size_t declared = data[at++];
    const std::size_t len = std::min(declared, size - at);
    const std::span<const std::byte> bytes{reinterpret_cast<const std::byte*>(data + at), len};
    at += len;
    std::vector<ipc::Fd> owned;
    std::vector<int> fds;
    if ((flags & 4) != 0 && at < size) {
      const std::uint8_t kind = data[at++];
      for (int k = 0; k < 1 + kind / 64; ++k) {
        if (ipc::Fd fd = make_fd(static_cast<std::uint8_t>(kind + k)); fd) {
          fds.push_back(fd.get());
          owned.push_back(std::move(fd));
        }
      }
    }
    if (!ch->send(bytes, fds)) break;  // the core already hung up: fine
  }
  ::shutdown(ch->fd(), SHUT_WR);
  if (!drain_until_hangup(*ch)) {
    std::fprintf(stderr, "fuzz_core_protocol: the core kept the connection open 10 s after EOF\n");
    std::abort();
  }
  if (++runs % 256 == 0 && !core_welcomes_a_client()) {
    std::fprintf(stderr, "fuzz_core_protocol: the core no longer welcomes clients\n");
    std::abort();
  }
  return 0;
}
