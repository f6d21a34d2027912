// floe-core: the main loop (sockets, provider sessions, signals), device lifecycle, persistence.
#include "floe/core/daemon.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <chrono>
#include <cstring>
#include <fstream>
#include <list>
#include <optional>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "daemon_internal.hpp"
#include "floe/core/limits.hpp"
#include "floe/ipc/notify.hpp"
#include "floe/ipc/protobuf_log.hpp"
#include "floe/ipc/protocol.hpp"
#include "floe/ipc/text.hpp"

namespace floe::core {
namespace detail {
namespace {

// Envelope ids of the core's own Heartbeats have this bit set; an echo of one is not echoed back.
constexpr std::uint64_t kProbeIdBit = std::uint64_t{1} << 63;

bool uid_allowed(const Config& cfg, uid_t uid) {
  return std::find(cfg.allowed_uids.begin(), cfg.allowed_uids.end(), uid) != cfg.allowed_uids.end();
}

ipc::TreeSchema schema_from(const proto::AddDevice& add) {
  ipc::TreeSchema s;
  for (const auto& e : add.entities()) {
    ipc::EntityDecl decl;
    for (const auto& c : e.components()) {
      decl.components.push_back({static_cast<ipc::Component>(std::min<std::uint32_t>(c.component(), 0xFFFF)),
                                 c.max_bytes()});
    }
    s.entities.push_back(std::move(decl));
  }
  return s;
}

}  // namespace

void Core::write_state_locked() {
  saver.clear();
  StoredState st;
  auto snap = registry.snapshot();
  for (const auto& [id, stored] : meta) {
    StoredDevice d = stored;
    d.groups.clear();
    if (const DeviceRecord* rec = snap->device(id)) {
      for (GroupId g : snap->groups_of(rec->id)) {
        if (const GroupRecord* gr = snap->group(g)) d.groups.push_back(gr->name);
      }
    }
    st.devices.push_back(std::move(d));
  }
  for (const auto& g : snap->groups()) st.groups.push_back(g.name);
  if (auto r = save_state(config.state_file, st); !r) {
    spdlog::error("saving state: {}", r.error().to_string());
  }
}

/// A device the core knows: declared now or in an earlier run. Main thread only.
struct Device {
  std::string id;
  ipc::TreeSchema schema;
  ipc::DeviceRegionLayout layout;
  std::shared_ptr<ipc::Region> region;
  std::shared_ptr<const ipc::TreeReader> reader;
  DeviceId reg;
  std::uint64_t owner = 0;  // provider session id; 0 = offline
  bool ever_attached = false;
  bool available = true;  // DeviceAvailability: reachable by its provider (reset by each grant)
  // Its last provider was disconnected for corrupting a ring: whatever else it wrote into the
  // region is suspect, so the next declaration gets a new region (and loses the old state).
  bool tainted = false;
  // The process its last grant went to (pid, and its start time: one process instance), if known.
  pid_t granted_pid = 0;
  std::uint64_t granted_start = 0;
};

namespace {

/// When a live process started (/proc/PID/stat field 22, clock ticks since boot): with the pid it
/// names one process, since a pid reused later has a later start. nullopt if the process is gone
/// (or a zombie, which writes nothing any more) or cannot be read.
std::optional<std::uint64_t> process_start(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  const std::size_t name_end = line.rfind(')');  // the name (field 2) may hold spaces and ')'
  if (name_end == std::string::npos) return std::nullopt;
  std::istringstream fields(line.substr(name_end + 1));
  char state = 0;
  fields >> state;  // field 3
  if (state == 'Z' || state == 'X' || state == 'x') return std::nullopt;
  std::string skip;
  for (int field = 4; field < 22; ++field) fields >> skip;
  std::uint64_t start = 0;
  if (!(fields >> start)) return std::nullopt;
  return start;
}

}  // namespace

/// Whether a known device's region still holds the structure the core wrote: the region header
/// as a provider's Region::open checks it, the device header byte for byte, and a tree that
/// validates. A provider maps its regions writable, so a buggy or hostile one can leave any of
/// them broken; such a region is replaced rather than handed to the next provider.
Status check_region(const Device& d) {
  constexpr std::string_view op = "device region";
  auto fd = d.region->share(ipc::RegionAccess::kReadWrite);
  if (!fd) return tl::unexpected(fd.error());
  auto reopened = ipc::Region::open(std::move(*fd), {.access = ipc::RegionAccess::kReadOnly,
                                                     .expected_size = d.region->size(),
                                                     .min_size = 0,
                                                     .require_kind = true,
                                                     .kind = ipc::RegionKind::kDevice});
  if (!reopened) return tl::unexpected(reopened.error());
  if (std::memcmp(d.region->data() + ipc::kRegionPayloadOffset, &d.layout.header, sizeof d.layout.header) != 0) {
    return logic_error(op, "the device header was overwritten");
  }
  auto parts = ipc::device_region_attach({d.region->data(), d.region->size()});
  if (!parts) return tl::unexpected(parts.error());
  auto tree = ipc::TreeReader::attach(parts->tree);
  if (!tree) return tl::unexpected(tree.error());
  return {};
}

struct ProviderSession {
  ProviderSession(ipc::Channel c, const Limits& limits)
      : channel(std::move(c)),
        messages(limits.provider_messages_per_second, limits.provider_message_burst, std::chrono::steady_clock::now()) {}
  /// "provider 'NAME' (pid P, uid U)": how every log line about this peer names it.
  [[nodiscard]] std::string who() const {
    return fmt::format("provider '{}' (pid {}, uid {})", welcomed ? name : std::string("?"), peer.pid, peer.uid);
  }
  std::uint64_t id = 0;
  ipc::Channel channel;
  ipc::PeerCredentials peer;
  std::uint64_t peer_start = 0;  // process_start(peer.pid) at accept; 0 if unknown
  std::string name;
  bool welcomed = false;
  ipc::WatchId watch = 0;
  std::vector<std::string> devices;
  std::size_t entities = 0;          // over `devices`
  std::uint64_t region_bytes = 0;    // over `devices`
  TokenBucket messages;      // limits.provider_messages_per_second / provider_message_burst
  std::shared_ptr<ProviderBells> bells;  // doorbells, if the provider asked and the core offers them
  /// While the daemon handles a burst of this provider's packets, what it sends the provider
  /// waits here and goes, in order, once the registry has published the burst's changes (one
  /// snapshot for the burst): a grant never reaches the provider before clients can see its device.
  struct Held {
    std::string bytes;
    std::vector<ipc::Fd> fds;
  };
  bool holding = false;
  std::vector<Held> held;
  std::unordered_map<std::string, std::uint32_t> slots;  // doorbell slot of each device declared here
  std::vector<std::uint32_t> free_slots;
  std::uint32_t next_slot = 0;
  /// The doorbell slot of device `id` on this connection (kept across re-declarations).
  std::uint32_t slot_of(const std::string& id) {
    if (auto it = slots.find(id); it != slots.end()) return it->second;
    std::uint32_t slot = next_slot;
    if (!free_slots.empty()) {
      slot = free_slots.back();
      free_slots.pop_back();
    } else {
      ++next_slot;
    }
    slots.emplace(id, slot);
    return slot;
  }
  void release_slot(const std::string& id) {
    if (auto it = slots.find(id); it != slots.end()) {
      free_slots.push_back(it->second);
      slots.erase(it);
    }
  }
  std::chrono::steady_clock::time_point last_heard = std::chrono::steady_clock::now();
  bool probed = false;  // a Heartbeat was sent since the provider was last heard
};

/// The daemon proper, living on the main thread.
class Daemon {
 public:
  explicit Daemon(Core& core) : core_(core) {}
  ~Daemon();
  int run();

 private:
  Status setup();
  Status restore_state();
  Result<std::shared_ptr<Device>> make_device(const std::string& id, const ipc::TreeSchema& schema);
  /// The doorbells of a provider connection; the fds to send are left in `share` (the region) and
  /// `provider_ends` (the provider's ends of its signal pipe and of each shard's).
  Result<std::shared_ptr<ProviderBells>> make_bells(const ProviderSession& s, ipc::Fd& share,
                                                    std::vector<ipc::Fd>& provider_ends);
  void accept_provider();
  void accept_client();
  void shed(ipc::Listener& listener, const std::function<void(ipc::Channel&)>& tell);
  void on_provider_readable(std::uint64_t sid);
  void handle_provider(ProviderSession& s, const proto::Envelope& env, std::vector<ipc::Fd>& fds);
  void add_device(ProviderSession& s, std::uint64_t msg_id, const proto::AddDevice& add);
  void remove_device(ProviderSession& s, std::uint64_t msg_id, const std::string& device_id);
  /// With bind_devices_to_uid: the uid a stored device belongs to, when it is not `s`'s own uid.
  [[nodiscard]] std::optional<std::uint32_t> foreign_uid(const StoredDevice& stored, const ProviderSession& s) const {
    if (!core_.config.bind_devices_to_uid || !stored.uid || *stored.uid == s.peer.uid) return std::nullopt;
    return stored.uid;
  }
  void set_availability(ProviderSession& s, std::uint64_t msg_id, const proto::DeviceAvailability& a);
  void check_provider_liveness();
  void provider_error(ProviderSession& s, std::uint64_t id, proto::ErrorCode code, const std::string& msg, bool fatal);
  /// Sends `env` with `fds` (duplicated) to the provider, or holds it while `s.holding`.
  Status send_to(ProviderSession& s, const proto::Envelope& env, std::span<const int> fds = {});
  /// Ends a burst: publishes the registry's deferred changes, re-evaluates watches, then sends
  /// what was held, in order.
  void release_held(ProviderSession& s);
  /// Within a burst of `s`: publishes what waits now, and goes on deferring.
  void publish_now(const ProviderSession& s);
  void close_provider(std::uint64_t sid, const std::string& why);
  void offline_device(Device& d);
  /// Erases the device's metadata (under meta_mu), and its count in known_per_uid_.
  void forget_meta(std::string_view id) {
    auto it = core_.meta.find(id);
    if (it == core_.meta.end()) return;
    if (auto k = known_per_uid_.find(it->second.uid); k != known_per_uid_.end() && --k->second == 0) {
      known_per_uid_.erase(k);
    }
    core_.meta.erase(it);
  }
  /// Stores (or replaces) the device's metadata, keeping known_per_uid_ in step (under meta_mu).
  void remember_meta(StoredDevice meta) {
    forget_meta(meta.id);
    ++known_per_uid_[meta.uid];
    std::string id = meta.id;
    core_.meta[std::move(id)] = std::move(meta);
  }
  /// Devices known (core_.meta) that providers of `uid` declared.
  [[nodiscard]] std::size_t known_of(std::uint32_t uid) const {
    const auto it = known_per_uid_.find(uid);
    return it == known_per_uid_.end() ? 0 : it->second;
  }
  void shutdown();

  Core& core_;
  std::optional<ipc::Listener> provider_listener_;
  std::optional<ipc::Listener> client_listener_;
  ipc::Fd signal_fd_;
  ipc::Fd spare_fd_;      // given up to refuse a newcomer when out of descriptors (shed)
  std::map<std::uint64_t, std::unique_ptr<ProviderSession>> providers_;
  std::map<std::string, std::shared_ptr<Device>, std::less<>> devices_;
  // core_.meta's devices by their uid (max_known_devices_per_uid); none for those of old state files.
  std::map<std::optional<std::uint32_t>, std::size_t> known_per_uid_;
  std::vector<std::unique_ptr<ClientLoop>> client_loops_;
  bool state_loaded_ = false;  // never overwrite a state file we could not read
  std::uint64_t next_probe_id_ = kProbeIdBit;
};

Daemon::~Daemon() { shutdown(); }

namespace {

// True if a floe-core answers a client Hello on `client_path` within two seconds (any answer,
// even a refusal, proves a live core; a reset, EOF or silence proves a stale socket).
bool core_answers(const std::string& client_path) {
  auto channel = ipc::Channel::connect(client_path);
  if (!channel) return false;
  proto::ClientRequest hello;
  hello.set_id(1);
  hello.mutable_hello()->set_protocol_version(ipc::kProtocolVersion);
  hello.mutable_hello()->set_peer_name("floe-core-probe");
  hello.mutable_hello()->set_role(proto::PEER_ROLE_CLIENT);
  if (!channel->send(hello)) return false;
  pollfd pfd{channel->fd(), POLLIN, 0};
  if (::poll(&pfd, 1, 2000) <= 0) return false;
  proto::ClientResponse answer;
  return channel->receive(answer).has_value();
}

}  // namespace

Status Daemon::setup() {
  const Config& cfg = core_.config;
  std::error_code ec;
  if (!std::filesystem::exists(cfg.socket_dir, ec)) {
    std::filesystem::create_directories(std::filesystem::path(cfg.socket_dir).parent_path(), ec);
    if (::mkdir(cfg.socket_dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return sys_errorf("floe-core", "cannot create socket directory {}", cfg.socket_dir);
    }
  } else if (!std::filesystem::is_directory(cfg.socket_dir, ec)) {
    return logic_error("floe-core", fmt::format("socket directory {} is not a directory", cfg.socket_dir));
  }
  // Whoever can write the directory can replace the sockets and pose as the core, so it must be
  // ours and closed to other users (a group may be let in to reach the 0660 sockets).
  struct stat dir_st {};
  if (::stat(cfg.socket_dir.c_str(), &dir_st) != 0) {
    return sys_errorf("floe-core", "socket directory {}", cfg.socket_dir);
  }
  if (dir_st.st_uid != ::geteuid()) {
    return logic_error("floe-core", fmt::format("socket directory {} belongs to uid {}, not to floe-core's uid {}: its "
                                                "owner could replace the sockets",
                                                cfg.socket_dir, dir_st.st_uid, ::geteuid()));
  }
  if ((dir_st.st_mode & S_IWOTH) != 0) {
    return logic_error("floe-core", fmt::format("socket directory {} is writable by every user (mode {:o}): anyone "
                                                "could replace the sockets; make it 0700 (0750 to let a group in)",
                                                cfg.socket_dir, dir_st.st_mode & 07777));
  }
  if ((dir_st.st_mode & S_IWGRP) != 0) {
    spdlog::warn("socket directory {} is writable by its group (mode {:o}): the group's members could replace the "
                 "sockets", cfg.socket_dir, dir_st.st_mode & 07777);
  }
  const std::string provider_path = cfg.socket_dir + "/" + std::string(ipc::kProviderSocketName);
  const std::string client_path = cfg.socket_dir + "/" + std::string(ipc::kClientSocketName);
  // Listener::bind replaces a stale socket file; make sure it is stale, not another live core's.
  // Connecting is not proof of life: a SIGKILLed core's listener can keep accepting into its
  // backlog until the kernel finishes tearing down its io_uring, which takes longer under load.
  // Only a core that answers a Hello is live.
  const bool live = core_answers(client_path);
  if (live) {
    return logic_error("floe-core", fmt::format("another floe-core is already listening on {}", provider_path));
  }
  // Stale: remove the old socket files ourselves, since a dying listener may still accept and
  // Listener::bind would take that for a live process.
  for (const std::string& path : {provider_path, client_path}) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
  }

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  const int sfd = ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) return sys_error("signalfd");
  signal_fd_.reset(sfd);
  spare_fd_ = ipc::Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!spare_fd_) return sys_error("open", "/dev/null (the spare descriptor)");

  FLOE_TRY(core_.main.init(cfg.loop_backend));
  spdlog::info("main loop backend: {}", ipc::to_string(core_.main.loop().backend()));
  for (unsigned i = 0; i < cfg.worker_threads; ++i) {
    core_.shards.push_back(std::make_unique<Shard>(core_, i));
    FLOE_TRY(core_.shards.back()->start(cfg.loop_backend));
  }
  for (unsigned i = 0; i < cfg.client_threads; ++i) {
    client_loops_.push_back(std::make_unique<ClientLoop>(core_, i));
    FLOE_TRY(client_loops_.back()->start());
  }
  core_.on_corrupt = [this](DeviceId dev, std::uint64_t owner, std::string why) {
    core_.main.post([this, dev, owner, why = std::move(why)] {
      for (auto& [id, d] : devices_) {
        // Only the provider that held the rings: if it is gone and the device granted anew, the
        // new provider did nothing wrong.
        if (d->reg == dev && d->owner != 0 && d->owner == owner) {
          if (auto p = providers_.find(d->owner); p != providers_.end()) {
            std::lock_guard lock(core_.meta_mu);
            for (const auto& mine : p->second->devices) {
              if (auto m = devices_.find(mine); m != devices_.end() && m->second->owner == d->owner) m->second->tainted = true;
            }
          }
          close_provider(d->owner, fmt::format("corrupt ring of device '{}': {}", id, why));
          return;
        }
      }
    });
  };

  // Two cores sharing one state file would overwrite each other's devices and groups.
  auto state_lock = lock_state_file(core_.config.state_file);
  if (!state_lock) return tl::unexpected(state_lock.error());
  core_.state_lock = std::move(*state_lock);
  FLOE_TRY(restore_state());

  auto pl = ipc::Listener::bind(provider_path, 0660);
  if (!pl) return tl::unexpected(pl.error());
  provider_listener_.emplace(std::move(*pl));
  auto cl = ipc::Listener::bind(client_path, 0660);
  if (!cl) return tl::unexpected(cl.error());
  client_listener_.emplace(std::move(*cl));

  auto& loop = core_.main.loop();
  if (auto w = loop.watch_readable(provider_listener_->fd(), [this] { accept_provider(); }); !w) return tl::unexpected(w.error());
  if (auto w = loop.watch_readable(client_listener_->fd(), [this] { accept_client(); }); !w) return tl::unexpected(w.error());
  if (auto w = loop.watch_readable(signal_fd_.get(),
                                   [this] {
                                     signalfd_siginfo info{};
                                     while (::read(signal_fd_.get(), &info, sizeof info) == sizeof info) {
                                       spdlog::info("signal {}: shutting down", info.ssi_signo);
                                     }
                                     core_.main.loop().stop();
                                   });
      !w) {
    return tl::unexpected(w.error());
  }
  // Silent providers are probed at half the timeout and dropped at the timeout; checking four
  // times per timeout bounds how late that happens.
  const auto check = std::clamp<std::chrono::milliseconds>(cfg.provider_timeout / 4, std::chrono::milliseconds(10),
                                                           std::chrono::seconds(1));
  if (auto w = loop.add_timer(check, true, [this] { check_provider_liveness(); }); !w) return tl::unexpected(w.error());
  spdlog::info("floe-core listening in {} ({} worker threads, state {})", cfg.socket_dir, cfg.worker_threads,
               cfg.state_file);
  return {};
}

Result<std::shared_ptr<Device>> Daemon::make_device(const std::string& id, const ipc::TreeSchema& schema) {
  auto d = std::make_shared<Device>();
  d->id = id;
  d->schema = schema;
  auto layout = ipc::DeviceRegionLayout::compute(
      schema, {.tx_capacity = core_.config.tx_capacity, .rx_capacity = core_.config.rx_capacity,
               .notify = core_.config.notify, .tree_color = ipc::tree_color_of(id)});
  if (!layout) return tl::unexpected(layout.error());
  d->layout = std::move(*layout);
  auto region = ipc::Region::create({.name = "floe-dev-" + id, .size = d->layout.region_size,
                                     .kind = ipc::RegionKind::kDevice});
  if (!region) return tl::unexpected(region.error());
  d->region = std::make_shared<ipc::Region>(std::move(*region));
  FLOE_TRY(ipc::device_region_init({d->region->data(), d->region->size()}, d->layout));
  auto parts = ipc::device_region_attach({d->region->data(), d->region->size()});
  if (!parts) return tl::unexpected(parts.error());
  auto reader = ipc::TreeReader::attach(parts->tree);
  if (!reader) return tl::unexpected(reader.error());
  d->reader = std::make_shared<const ipc::TreeReader>(std::move(*reader));
  return d;
}

Result<std::shared_ptr<ProviderBells>> Daemon::make_bells(const ProviderSession& s, ipc::Fd& share,
                                                         std::vector<ipc::Fd>& provider_ends) {
  const auto shards = static_cast<std::uint32_t>(core_.shards.size());
  const std::uint32_t slots = core_.config.limits.max_devices_per_provider;
  auto region = ipc::Region::create({.name = fmt::format("floe-bells-{}", s.id),
                                     .size = ipc::doorbell_region_size(1 + shards, slots),
                                     .kind = ipc::RegionKind::kDoorbells});
  if (!region) return tl::unexpected(region.error());
  auto b = std::make_shared<ProviderBells>(std::move(*region));
  const std::span<std::byte> bytes{b->region.data(), b->region.size()};
  FLOE_TRY(ipc::doorbell_region_init(bytes, 1 + shards, slots));
  auto bells = ipc::doorbell_region_attach(bytes, 1 + shards, slots);
  if (!bells) return tl::unexpected(bells.error());
  b->bells = std::move(*bells);
  auto provider_pipe = ipc::make_signal_pipe();
  if (!provider_pipe) return tl::unexpected(provider_pipe.error());
  b->provider_signal = std::move(provider_pipe->write);
  provider_ends.push_back(std::move(provider_pipe->read));
  for (std::uint32_t i = 0; i < shards; ++i) {
    auto pipe = ipc::make_signal_pipe();
    if (!pipe) return tl::unexpected(pipe.error());
    b->shard_signals.push_back(std::move(pipe->read));
    provider_ends.push_back(std::move(pipe->write));
  }
  auto shared = b->region.share(ipc::RegionAccess::kReadWrite);
  if (!shared) return tl::unexpected(shared.error());
  share = std::move(*shared);
  return b;
}

Status Daemon::restore_state() {
  auto st = load_state(core_.config.state_file);
  if (!st) return tl::unexpected(st.error());
  std::lock_guard lock(core_.meta_mu);
  auto r = core_.registry.edit([&](Registry::Editor& ed) -> Status {
    std::map<std::string, GroupId> groups;
    for (const auto& g : st->groups) {
      auto id = ed.create_group(g);
      if (!id) return tl::unexpected(id.error());
      groups[g] = *id;
    }
    for (const auto& sd : st->devices) {
      auto d = make_device(sd.id, schema_of(sd));
      if (!d) return logic_error("state_file", fmt::format("device '{}': {}", sd.id, d.error().message));
      DeviceSpec spec{.name = sd.id, .provider = sd.provider, .entity_ids = {}, .entity_names = {},
                      .reader = (*d)->reader, .keepalive = (*d)->region, .online = false};
      for (const auto& e : sd.entities) {
        spec.entity_ids.push_back(e.id);
        spec.entity_names.push_back(e.name);
      }
      auto reg = ed.add_device(std::move(spec));
      if (!reg) return logic_error("state_file", fmt::format("device '{}': {}", sd.id, reg.error().message));
      (*d)->reg = *reg;
      for (const auto& g : sd.groups) {
        auto it = groups.find(g);
        if (it == groups.end()) {
          auto id = ed.create_group(g);
          if (!id) return tl::unexpected(id.error());
          it = groups.emplace(g, *id).first;
        }
        FLOE_TRY(ed.add_to_group(it->second, *reg));
      }
      devices_[sd.id] = *d;
      remember_meta(sd);
    }
    return {};
  });
  if (!r) return logic_error("state_file", fmt::format("{}: {}", core_.config.state_file, r.error().message));
  state_loaded_ = true;
  if (!st->devices.empty()) spdlog::info("restored {} devices (offline until their providers return)", st->devices.size());
  return {};
}

static bool out_of_descriptors(const Error& e) noexcept { return e.code == EMFILE || e.code == ENFILE; }

// Out of descriptors, accept() fails and leaves the newcomer in the backlog, unanswered until a
// descriptor frees up. The spare descriptor is given up so it can be accepted, told why and closed.
void Daemon::shed(ipc::Listener& listener, const std::function<void(ipc::Channel&)>& tell) {
  spare_fd_ = ipc::Fd();
  if (auto ch = listener.accept()) tell(*ch);
  spare_fd_ = ipc::Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
}

void Daemon::accept_provider() {
  auto ch = provider_listener_->accept();
  if (!ch && out_of_descriptors(ch.error())) {
    spdlog::error("provider refused: floe-core is out of file descriptors ({})", ch.error().to_string());
    shed(*provider_listener_, [](ipc::Channel& c) {
      proto::Envelope env;
      env.mutable_error()->set_code(proto::ERROR_CODE_LIMIT);
      env.mutable_error()->set_message("floe-core is out of file descriptors; try again later");
      env.mutable_error()->set_fatal(true);
      (void)c.send(env);
    });
    return;
  }
  if (!ch) {
    spdlog::warn("provider accept: {}", ch.error().to_string());
    return;
  }
  auto cred = ch->peer_credentials();
  if (!cred || !uid_allowed(core_.config, cred->uid)) {
    const std::string msg = cred ? fmt::format("uid {} is not allowed to connect to floe-core", cred->uid)
                                 : "cannot read the peer's credentials";
    spdlog::warn("provider refused: {}", msg);
    proto::Envelope env;
    env.mutable_error()->set_code(proto::ERROR_CODE_UNAUTHORIZED);
    env.mutable_error()->set_message(msg);
    env.mutable_error()->set_fatal(true);
    (void)ch->send(env);
    return;
  }
  const Limits& limits = core_.config.limits;
  if (providers_.size() >= limits.max_providers) {
    const std::string msg = fmt::format("too many providers connected ({}; limits.max_providers = {})",
                                        providers_.size(), limits.max_providers);
    spdlog::warn("provider refused (pid {}, uid {}): {}", cred->pid, cred->uid, msg);
    proto::Envelope env;
    env.mutable_error()->set_code(proto::ERROR_CODE_LIMIT);
    env.mutable_error()->set_message(msg);
    env.mutable_error()->set_fatal(true);
    (void)ch->send(env);
    return;
  }
  if (auto r = ch->set_nonblocking(true); !r) return;
  auto s = std::make_unique<ProviderSession>(std::move(*ch), limits);
  s->id = core_.next_session_id.fetch_add(1, std::memory_order_relaxed);
  s->peer = *cred;
  s->peer_start = process_start(cred->pid).value_or(0);
  const std::uint64_t sid = s->id;
  auto w = core_.main.loop().watch_readable(s->channel.fd(), [this, sid] { on_provider_readable(sid); });
  if (!w) {
    spdlog::error("provider watch: {}", w.error().to_string());
    return;
  }
  s->watch = *w;
  spdlog::debug("provider session {} from pid {} uid {}", sid, cred->pid, cred->uid);
  providers_[sid] = std::move(s);
}

void Daemon::accept_client() {
  auto refusal = [](proto::ErrorCode code, const std::string& msg) {
    proto::ClientResponse resp;
    resp.mutable_error()->set_code(code);
    resp.mutable_error()->set_message(msg);
    resp.mutable_error()->set_fatal(true);
    return resp;
  };
  auto ch = client_listener_->accept();
  if (!ch && out_of_descriptors(ch.error())) {
    spdlog::error("client refused: floe-core is out of file descriptors ({})", ch.error().to_string());
    shed(*client_listener_, [&](ipc::Channel& c) {
      (void)c.send(refusal(proto::ERROR_CODE_LIMIT, "floe-core is out of file descriptors; try again later"));
    });
    return;
  }
  if (!ch) {
    spdlog::warn("client accept: {}", ch.error().to_string());
    return;
  }
  auto refuse = [&](proto::ErrorCode code, const std::string& msg) {
    spdlog::warn("client refused: {}", msg);
    (void)ch->send(refusal(code, msg));
  };
  auto cred = ch->peer_credentials();
  if (!cred || !uid_allowed(core_.config, cred->uid)) {
    refuse(proto::ERROR_CODE_UNAUTHORIZED, cred ? fmt::format("uid {} is not allowed to connect to floe-core", cred->uid)
                                                : "cannot read the peer's credentials");
    return;
  }
  // The loop serving the fewest sessions takes it.
  std::size_t connected = 0;
  ClientLoop* least = nullptr;
  for (auto& loop : client_loops_) {
    connected += loop->count();
    if (loop->serving() && (least == nullptr || loop->count() < least->count())) least = loop.get();
  }
  if (least == nullptr) {
    refuse(proto::ERROR_CODE_INTERNAL, "floe-core has no working client loop (see its log)");
    return;
  }
  if (connected >= core_.config.max_clients) {
    refuse(proto::ERROR_CODE_LIMIT, fmt::format("too many clients ({} connected; max_clients = {})", connected,
                                                core_.config.max_clients));
    return;
  }
  least->adopt(std::make_unique<ClientSession>(core_, std::move(*ch), *cred));
}

void Daemon::on_provider_readable(std::uint64_t sid) {
  // The burst's registry changes publish once at its end (declaring N devices one snapshot each
  // was O(N^2)), and what the provider is sent waits until then (release_held).
  if (auto it = providers_.find(sid); it != providers_.end()) {
    it->second->holding = true;
    core_.registry.defer_publication();
  }
  struct EndBurst {
    Daemon& d;
    std::uint64_t sid;
    ~EndBurst() {
      try {
        if (auto it = d.providers_.find(sid); it != d.providers_.end()) {
          d.release_held(*it->second);
        } else {
          d.core_.registry.publish_deferred();  // closed meanwhile (close_provider released it first)
        }
      } catch (const std::exception& e) {
        spdlog::error("ending a burst of provider messages: {}", e.what());
      }
    }
  } end_burst{*this, sid};
  for (int budget = 0; budget < 64; ++budget) {
    auto it = providers_.find(sid);
    if (it == providers_.end()) return;
    ProviderSession& s = *it->second;
    auto packet = s.channel.receive();
    if (!packet) {
      if (packet.error().code == EAGAIN || packet.error().code == EWOULDBLOCK) return;
      close_provider(sid, packet.error().code == ECONNRESET ? "disconnected" : packet.error().to_string());
      return;
    }
    s.last_heard = std::chrono::steady_clock::now();
    s.probed = false;
    const Limits& limits = core_.config.limits;
    // The burst absorbs a provider declaring its devices at once; only one that keeps sending
    // faster than the rate empties the bucket.
    if (!s.messages.try_take(s.last_heard)) {
      provider_error(s, 0, proto::ERROR_CODE_LIMIT,
                     fmt::format("more than {} management messages per second (limits.provider_messages_per_second, "
                                 "burst limits.provider_message_burst = {}); disconnecting",
                                 limits.provider_messages_per_second, limits.provider_message_burst),
                     true);
      return;
    }
    proto::Envelope env;
    if (!env.ParseFromArray(packet->bytes.data(), static_cast<int>(packet->bytes.size()))) {
      provider_error(s, 0, proto::ERROR_CODE_MALFORMED, "packet is not a floe.proto.Envelope", true);
      return;
    }
    if (packet->bytes.size() > limits.max_message_bytes) {
      // Refused unread (its fds are closed with the packet); the connection stays usable.
      provider_error(s, env.id(), proto::ERROR_CODE_LIMIT,
                     fmt::format("a management message of {} bytes exceeds limits.max_message_bytes = {}",
                                 packet->bytes.size(), limits.max_message_bytes),
                     false);
      continue;
    }
    handle_provider(s, env, packet->fds);
  }
}

void Daemon::provider_error(ProviderSession& s, std::uint64_t id, proto::ErrorCode code, const std::string& msg,
                            bool fatal) {
  proto::Envelope env;
  env.set_id(id);
  env.mutable_error()->set_code(code);
  env.mutable_error()->set_message(msg);
  env.mutable_error()->set_fatal(fatal);
  (void)send_to(s, env);
  if (fatal) {
    close_provider(s.id, msg);
  } else {
    spdlog::warn("{}: {}", s.who(), msg);
  }
}

Status Daemon::send_to(ProviderSession& s, const proto::Envelope& env, std::span<const int> fds) {
  if (!s.holding) return s.channel.send(env, fds);
  ProviderSession::Held h{.bytes = env.SerializeAsString(), .fds = {}};
  for (int fd : fds) {
    const int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) {
      // Out of descriptors: no holding this one. What waits goes now (published first), then
      // this packet, and the burst goes on holding.
      release_held(s);
      auto sent = s.channel.send(env, fds);
      s.holding = true;
      core_.registry.defer_publication();
      return sent;
    }
    h.fds.emplace_back(dup);
  }
  s.held.push_back(std::move(h));
  return {};
}

void Daemon::release_held(ProviderSession& s) {
  if (!s.holding) return;
  s.holding = false;
  // The state saver may have written while the burst's changes waited: it writes again (mark()
  // needs no meta_mu, which a caller here may hold: send_to from add_device). A burst that changed
  // nothing (heartbeats) writes nothing.
  if (core_.registry.publish_deferred()) core_.saver.mark();
  core_.hub.flush();
  std::vector<ProviderSession::Held> held;
  held.swap(s.held);
  for (const auto& h : held) {
    std::vector<int> fds;
    for (const auto& fd : h.fds) fds.push_back(fd.get());
    if (auto r = s.channel.send(std::as_bytes(std::span(h.bytes)), fds); !r) {
      spdlog::warn("{}: sending {} answers: {}", s.who(), held.size(), r.error().to_string());
      if (r.error().code == EPIPE || r.error().code == ECONNRESET) break;  // gone: the rest cannot go either
    }
  }
}

void Daemon::publish_now(const ProviderSession& s) {
  // A device that becomes unreachable, or is replaced by a new region, is published at once, not
  // at the end of the burst: clients stop sending it sets, and a group edit finds the new record.
  if (!s.holding) return;  // not in a burst: the edit published already
  core_.registry.publish_deferred();
  core_.registry.defer_publication();
}

void Daemon::handle_provider(ProviderSession& s, const proto::Envelope& env, std::vector<ipc::Fd>& fds) {
  if (!fds.empty()) {
    provider_error(s, env.id(), proto::ERROR_CODE_MALFORMED, "providers do not send file descriptors", true);
    return;
  }
  if (!s.welcomed) {
    if (!env.has_hello()) {
      provider_error(s, env.id(), proto::ERROR_CODE_MALFORMED, "the first message must be Hello", true);
      return;
    }
    const auto& h = env.hello();
    if (h.protocol_version() != ipc::kProtocolVersion) {
      provider_error(s, env.id(), proto::ERROR_CODE_PROTOCOL_VERSION,
                     fmt::format("provider speaks protocol {}, core speaks {}", h.protocol_version(),
                                 ipc::kProtocolVersion),
                     true);
      return;
    }
    if (h.role() != proto::PEER_ROLE_PROVIDER && h.role() != proto::PEER_ROLE_UNSPECIFIED) {
      provider_error(s, env.id(), proto::ERROR_CODE_MALFORMED, "this is the provider socket; clients use client.sock", true);
      return;
    }
    // The name goes into log lines and the registry: no control characters (a newline or an
    // escape sequence in it could forge log lines). UTF-8 is fine (protobuf checked it).
    const std::string& name = h.peer_name();
    if (name.empty() || name.size() > 64 ||
        std::any_of(name.begin(), name.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; })) {
      provider_error(s, env.id(), proto::ERROR_CODE_MALFORMED,
                     fmt::format("Hello.peer_name must be 1..64 bytes without control characters (got '{}')",
                                 ipc::excerpt(name)),
                     true);
      return;
    }
    s.name = h.peer_name();
    s.welcomed = true;
    proto::Envelope w;
    w.set_id(env.id());
    w.mutable_welcome()->set_protocol_version(ipc::kProtocolVersion);
    w.mutable_welcome()->set_core_name("floe-core");
    w.mutable_welcome()->set_session_id(s.id);
    std::vector<int> welcome_fds;
    ipc::Fd share;                      // the doorbell region's fd, open until the Welcome is sent
    std::vector<ipc::Fd> provider_ends;  // the provider's ends of the signal pipes, likewise
    if (h.doorbells() && core_.config.doorbells && core_.config.notify == ipc::NotifyMode::kEventfd &&
        core_.shards.size() + 2 <= ipc::kMaxPacketFds) {
      if (auto bells = make_bells(s, share, provider_ends); bells) {
        s.bells = std::move(*bells);
        auto* g = w.mutable_welcome()->mutable_doorbells();
        g->set_slots(s.bells->provider().slots());
        g->set_shards(static_cast<std::uint32_t>(s.bells->shard_signals.size()));
        g->set_size(s.bells->region.size());
        welcome_fds.push_back(share.get());
        for (const auto& e : provider_ends) welcome_fds.push_back(e.get());
      } else {
        // Without doorbells every grant carries its own signal pipes: slower, but it works.
        spdlog::warn("{}: no doorbells ({}); signal pipes per device instead", s.who(), bells.error().to_string());
      }
    }
    if (auto r = send_to(s, w, welcome_fds); !r) spdlog::warn("{}: sending Welcome: {}", s.who(), r.error().to_string());
    spdlog::info("provider '{}' connected (pid {}{})", s.name, s.peer.pid, s.bells ? "" : ", no doorbells");
    return;
  }
  switch (env.body_case()) {
    case proto::Envelope::kAddDevice: add_device(s, env.id(), env.add_device()); break;
    case proto::Envelope::kRemoveDevice: remove_device(s, env.id(), env.remove_device().device_id()); break;
    case proto::Envelope::kDeviceAvailability: set_availability(s, env.id(), env.device_availability()); break;
    case proto::Envelope::kHeartbeat: {
      if ((env.id() & kProbeIdBit) != 0) break;  // an answer to one of our probes: not echoed
      proto::Envelope hb;
      hb.set_id(env.id());
      hb.mutable_heartbeat()->set_sequence(env.heartbeat().sequence());
      (void)send_to(s, hb);
      break;
    }
    default:
      provider_error(s, env.id(), proto::ERROR_CODE_MALFORMED, "unexpected message on the provider socket", false);
  }
}

void Daemon::add_device(ProviderSession& s, std::uint64_t msg_id, const proto::AddDevice& add) {
  const std::string& id = add.device_id();
  auto fail = [&](proto::ErrorCode code, const std::string& msg) { provider_error(s, msg_id, code, msg, false); };
  if (!Registry::valid_entity_id(id)) {
    return fail(proto::ERROR_CODE_MALFORMED,
                fmt::format("device id '{}' must be 1..64 characters of [a-z0-9_.-]", ipc::excerpt(id)));
  }
  if (add.entities_size() == 0) return fail(proto::ERROR_CODE_MALFORMED, fmt::format("device '{}' declares no entities", id));
  for (const auto& e : add.entities()) {
    if (!Registry::valid_entity_id(e.id())) {
      return fail(proto::ERROR_CODE_MALFORMED,
                  fmt::format("device '{}': entity id '{}' must be 1..64 characters of [a-z0-9_.-]", id,
                              ipc::excerpt(e.id())));
    }
    for (const auto& c : e.components()) {
      if (ipc::find_component(static_cast<ipc::Component>(std::min<std::uint32_t>(c.component(), 0xFFFF))) == nullptr) {
        return fail(proto::ERROR_CODE_MALFORMED,
                    fmt::format("device '{}': entity '{}': unknown component id {} (a newer catalogue?)", id, e.id(),
                                c.component()));
      }
    }
  }
  const Limits& limits = core_.config.limits;
  const bool known_here = std::find(s.devices.begin(), s.devices.end(), id) != s.devices.end();
  if (const std::size_t known = known_of(s.peer.uid);
      !devices_.contains(id) && known >= limits.max_known_devices_per_uid) {
    return fail(proto::ERROR_CODE_LIMIT,
                fmt::format("device '{}' refused: uid {} already has {} devices known to floe-core, online or offline "
                            "(limits.max_known_devices_per_uid = {}); a device stays known until its provider "
                            "removes it",
                            id, s.peer.uid, known, limits.max_known_devices_per_uid));
  }
  if (!known_here && s.devices.size() >= limits.max_devices_per_provider) {
    return fail(proto::ERROR_CODE_LIMIT, fmt::format("device '{}' refused: the provider already has {} devices "
                                                     "(limits.max_devices_per_provider = {})",
                                                     id, s.devices.size(), limits.max_devices_per_provider));
  }
  const auto entity_count = static_cast<std::size_t>(add.entities_size());
  if (entity_count > limits.max_entities_per_device) {
    return fail(proto::ERROR_CODE_LIMIT, fmt::format("device '{}' refused: {} entities exceed "
                                                     "limits.max_entities_per_device = {}",
                                                     id, entity_count, limits.max_entities_per_device));
  }
  if (!known_here && s.entities + entity_count > limits.max_entities_per_provider) {
    return fail(proto::ERROR_CODE_LIMIT, fmt::format("device '{}' refused: its {} entities would bring the provider to "
                                                     "{} (limits.max_entities_per_provider = {})",
                                                     id, entity_count, s.entities + entity_count,
                                                     limits.max_entities_per_provider));
  }
  const ipc::TreeSchema schema = schema_from(add);
  auto sized = ipc::DeviceRegionLayout::compute(
      schema, {.tx_capacity = core_.config.tx_capacity, .rx_capacity = core_.config.rx_capacity,
               .notify = core_.config.notify});
  if (!sized) return fail(proto::ERROR_CODE_MALFORMED, fmt::format("device '{}': {}", id, sized.error().message));
  const std::uint64_t region_bytes = sized->region_size;
  if (!known_here && s.region_bytes + region_bytes > limits.max_region_bytes_per_provider) {
    return fail(proto::ERROR_CODE_LIMIT, fmt::format("device '{}' refused: its region of {} bytes would bring the "
                                                     "provider to {} (limits.max_region_bytes_per_provider = {})",
                                                     id, region_bytes, s.region_bytes + region_bytes,
                                                     limits.max_region_bytes_per_provider));
  }
  StoredDevice meta{.id = id, .name = add.name().empty() ? id : add.name(), .provider = s.name,
                    .uid = s.peer.uid, .entities = {}, .groups = {}};
  for (const auto& e : add.entities()) {
    StoredEntity se{.id = e.id(), .name = e.name().empty() ? e.id() : e.name(), .components = {}};
    for (const auto& c : e.components()) {
      se.components.push_back({static_cast<ipc::Component>(c.component()), c.max_bytes()});
    }
    meta.entities.push_back(std::move(se));
  }

  std::lock_guard lock(core_.meta_mu);
  std::shared_ptr<Device> dev;
  std::vector<std::string> keep_groups;
  bool reuse = false;
  if (auto it = devices_.find(id); it != devices_.end()) {
    Device& old = *it->second;
    if (old.owner != 0) {
      auto owner = providers_.find(old.owner);
      const std::string who = owner != providers_.end() ? owner->second->name : "another provider";
      return fail(proto::ERROR_CODE_CONFLICT,
                  old.owner == s.id ? fmt::format("device '{}' is already declared on this connection", id)
                                    : fmt::format("device '{}' belongs to connected provider '{}'", id, who));
    }
    const auto& old_meta = core_.meta[id];
    if (auto owner_uid = foreign_uid(old_meta, s)) {
      return fail(proto::ERROR_CODE_CONFLICT,
                  fmt::format("device '{}' belongs to uid {} (the uid of the provider that declared it); this provider "
                              "runs as uid {} (bind_devices_to_uid, docs/SECURITY.md)",
                              id, *owner_uid, s.peer.uid));
    }
    bool same_ids = old_meta.entities.size() == meta.entities.size();
    for (std::size_t i = 0; same_ids && i < meta.entities.size(); ++i) {
      same_ids = old_meta.entities[i].id == meta.entities[i].id && old_meta.entities[i].name == meta.entities[i].name;
    }
    std::string why_new;
    if (old.schema != schema || !same_ids || old_meta.provider != s.name) {
      why_new = "re-declared with a different schema";
    } else if (old.tainted) {
      why_new = "its last provider corrupted its region";
    } else if (old.granted_start != 0 && old.granted_pid != s.peer.pid &&
               process_start(old.granted_pid) == old.granted_start) {
      // It lost its connection but lives on, the region still mapped writable: it could write the
      // tree or race the rings' re-initialisation under the new provider.
      why_new = fmt::format("its last provider (pid {}) still runs and maps its region", old.granted_pid);
    } else if (auto intact = check_region(old); !intact) {
      why_new = "its region fails validation (" + intact.error().message + ")";
    }
    if (why_new.empty()) {
      reuse = true;
      dev = it->second;
    } else {
      // A new schema (or new entity ids, or a new owner): a new region; the groups stay.
      auto snap = core_.registry.snapshot();
      for (GroupId g : snap->groups_of(old.reg)) {
        if (const GroupRecord* gr = snap->group(g)) keep_groups.push_back(gr->name);
      }
      if (auto r = core_.registry.remove_device(old.reg); !r) spdlog::warn("remove {}: {}", id, r.error().to_string());
      publish_now(s);
      core_.shard_of(old.reg).detach(old.reg);
      devices_.erase(it);
      forget_meta(id);
      spdlog::info("device '{}' {}: new region", id, why_new);
    }
  }
  // Declared groups are joined on every registration (docs/CORE.md, "Groups").
  for (const auto& g : add.groups()) keep_groups.push_back(g);
  auto join_groups = [&](Registry::Editor& ed, DeviceId reg) {
    for (const auto& g : keep_groups) {
      if (!Registry::valid_entity_id(g)) continue;
      // The editor's view: a group created earlier in this edit counts.
      std::optional<GroupId> gid = ed.find_group(g);
      if (!gid) {
        auto created = ed.create_group(g);
        if (!created) continue;
        gid = *created;
      }
      (void)ed.add_to_group(*gid, reg);
    }
  };

  if (!reuse) {
    auto made = make_device(id, schema);
    if (!made) return fail(proto::ERROR_CODE_MALFORMED, fmt::format("device '{}': {}", id, made.error().message));
    dev = *made;
  }
  // Without doorbells the device has a signal pipe each way: we keep the tx write end and the rx
  // read end, the grant carries the others. With doorbells it needs none (empty placeholders keep
  // one path).
  auto tx = s.bells ? Result<ipc::SignalPipe>(ipc::SignalPipe{}) : ipc::make_signal_pipe();
  auto rx = s.bells ? Result<ipc::SignalPipe>(ipc::SignalPipe{}) : ipc::make_signal_pipe();
  auto share = dev->region->share(ipc::RegionAccess::kReadWrite);
  if (!tx || !rx || !share) {
    if (reuse) (void)core_.registry.set_online(dev->reg, false);
    return fail(proto::ERROR_CODE_INTERNAL, "out of file descriptors");
  }
  // A slot taken here goes back if the declaration fails below: failed declarations must not use up
  // the doorbell's slots.
  const bool new_slot = s.bells && !s.slots.contains(id);
  const std::uint32_t slot = s.bells ? s.slot_of(id) : 0;
  auto fail_after_slot = [&](proto::ErrorCode code, const std::string& msg) {
    if (new_slot) s.release_slot(id);
    fail(code, msg);
  };
  auto attach = [&](DeviceId reg) {
    return core_.shard_of(reg).attach({.device = reg, .region = dev->region, .reader = dev->reader,
                                       .options = dev->layout.options, .reinit_rings = dev->ever_attached,
                                       .tx_signal = std::move(tx->write), .rx_signal = std::move(rx->read),
                                       .bells = s.bells, .slot = slot, .owner = s.id});
  };
  // Online only once its shard holds the rings: a client that sees it online and sets at once
  // finds the tx port (the session writes the ring itself) instead of a spurious "offline".
  if (!reuse) {
    // One publication: the device appears online, its rings already attached (its shard is told
    // about it while the registry's writer waits; shards never edit the registry) and its groups
    // joined. A declaration used to publish twice, and every publication is O(devices).
    DeviceSpec spec{.name = id, .provider = s.name, .entity_ids = {}, .entity_names = {}, .reader = dev->reader,
                    .keepalive = dev->region, .online = true};
    for (const auto& e : meta.entities) {
      spec.entity_ids.push_back(e.id);
      spec.entity_names.push_back(e.name);
    }
    Status attached;
    auto reg = core_.registry.edit([&](Registry::Editor& ed) -> Result<DeviceId> {
      auto r = ed.add_device(std::move(spec));
      if (!r) return r;
      if (attached = attach(*r); !attached) {
        (void)ed.remove_device(*r);  // never published
        return r;
      }
      join_groups(ed, *r);
      return r;
    });
    if (!reg) return fail_after_slot(proto::ERROR_CODE_CONFLICT, fmt::format("device '{}': {}", id, reg.error().message));
    if (!attached) {
      return fail_after_slot(proto::ERROR_CODE_INTERNAL, fmt::format("device '{}': {}", id, attached.error().to_string()));
    }
    dev->reg = *reg;
  } else {
    if (auto attached = attach(dev->reg); !attached) {
      (void)core_.registry.set_online(dev->reg, false);
      return fail_after_slot(proto::ERROR_CODE_INTERNAL, fmt::format("device '{}': {}", id, attached.error().to_string()));
    }
    if (auto r = core_.registry.edit([&](Registry::Editor& ed) -> Status {
          FLOE_TRY(ed.set_online(dev->reg, true));
          join_groups(ed, dev->reg);
          return {};
        });
        !r) {
      core_.shard_of(dev->reg).detach(dev->reg);
      return fail_after_slot(proto::ERROR_CODE_INTERNAL, r.error().to_string());
    }
  }
  dev->ever_attached = true;
  dev->owner = s.id;
  dev->granted_pid = s.peer.pid;
  dev->granted_start = s.peer_start;
  dev->available = true;
  devices_[id] = dev;
  remember_meta(std::move(meta));
  if (!known_here) {
    s.devices.push_back(id);
    s.entities += entity_count;
    s.region_bytes += region_bytes;
  }

  proto::Envelope env;
  env.set_id(msg_id);
  auto* g = env.mutable_device_grant();
  g->set_device_id(id);
  g->set_handle(key_of(dev->reg));
  g->set_tree_offset(dev->layout.header.tree_offset);
  g->set_tree_size(dev->layout.header.tree_size);
  auto* rg = g->mutable_region();
  const auto& region_name = dev->region->header().name;  // shared memory: bounded, never trusted to end
  rg->set_name(std::string(region_name, ::strnlen(region_name, sizeof region_name)));
  rg->set_size(dev->region->size());
  rg->add_fd_roles(proto::FD_ROLE_REGION);
  if (s.bells) {
    g->set_doorbell_slot(slot);
    g->set_shard(core_.shard_of(dev->reg).index());
  } else {
    rg->add_fd_roles(proto::FD_ROLE_TX_EVENTFD);
    rg->add_fd_roles(proto::FD_ROLE_RX_EVENTFD);
  }
  rg->mutable_tx()->set_offset(dev->layout.header.tx_offset);
  rg->mutable_tx()->set_capacity(dev->layout.options.tx_capacity);
  rg->mutable_tx()->set_notify_mode(static_cast<std::uint32_t>(dev->layout.options.notify));
  rg->mutable_rx()->set_offset(dev->layout.header.rx_offset);
  rg->mutable_rx()->set_capacity(dev->layout.options.rx_capacity);
  rg->mutable_rx()->set_notify_mode(static_cast<std::uint32_t>(dev->layout.options.notify));
  // The provider's ends, closed here once sent.
  const int fds[] = {share->get(), tx->read.get(), rx->write.get()};
  if (auto r = send_to(s, env, std::span<const int>(fds, s.bells ? 1 : 3)); !r) {
    spdlog::warn("provider '{}': sending the grant of '{}': {}", s.name, id, r.error().to_string());
  }
  spdlog::info("device '{}' online ({} entities, provider '{}'{})", id, add.entities_size(), s.name,
               reuse ? ", state kept" : "");
  core_.save_state_locked();
  core_.hub.flush();
}

void Daemon::remove_device(ProviderSession& s, std::uint64_t msg_id, const std::string& device_id) {
  std::lock_guard lock(core_.meta_mu);
  auto it = devices_.find(device_id);
  // The provider that declares it, or (offline) the provider of that name that declared it last:
  // an SDK tells the core on reconnect about removals made while it was away.
  const auto m = core_.meta.find(device_id);
  const bool mine = it != devices_.end() &&
                    (it->second->owner == s.id ||
                     (it->second->owner == 0 && m != core_.meta.end() && m->second.provider == s.name));
  if (!mine) {
    provider_error(s, msg_id, proto::ERROR_CODE_NOT_FOUND,
                   fmt::format("device '{}' is not declared by provider '{}'", ipc::excerpt(device_id), s.name), false);
    return;
  }
  if (auto owner_uid = m != core_.meta.end() ? foreign_uid(m->second, s) : std::nullopt) {
    provider_error(s, msg_id, proto::ERROR_CODE_CONFLICT,
                   fmt::format("device '{}' belongs to uid {}; this provider runs as uid {} and may not remove it "
                               "(bind_devices_to_uid, docs/SECURITY.md)",
                               device_id, *owner_uid, s.peer.uid),
                   false);
    return;
  }
  Device& d = *it->second;
  if (std::find(s.devices.begin(), s.devices.end(), device_id) != s.devices.end()) {
    s.entities -= std::min(s.entities, d.schema.entities.size());
    s.region_bytes -= std::min<std::uint64_t>(s.region_bytes, d.layout.region_size);
  }
  core_.shard_of(d.reg).detach(d.reg);
  core_.pending.fail_device(d.reg, {proto::ERROR_CODE_OFFLINE, "the device was removed"});
  // Published with the burst (a provider removing all its devices costs one snapshot); its
  // acknowledgement waits for that, and a set racing the removal is failed by the detach.
  if (auto r = core_.registry.remove_device(d.reg); !r) spdlog::warn("remove {}: {}", device_id, r.error().to_string());
  devices_.erase(it);
  forget_meta(device_id);
  std::erase(s.devices, device_id);
  s.release_slot(device_id);
  proto::Envelope env;
  env.set_id(msg_id);
  env.mutable_device_removed()->set_device_id(device_id);
  (void)send_to(s, env);
  spdlog::info("device '{}' removed by provider '{}'", device_id, s.name);
  core_.save_state_locked();
  core_.hub.flush();
}

void Daemon::set_availability(ProviderSession& s, std::uint64_t msg_id, const proto::DeviceAvailability& a) {
  auto it = devices_.find(a.device_id());
  if (it == devices_.end() || it->second->owner != s.id) {
    provider_error(s, msg_id, proto::ERROR_CODE_NOT_FOUND,
                   fmt::format("device '{}' is not declared on this connection", ipc::excerpt(a.device_id())), false);
    return;
  }
  Device& d = *it->second;
  if (d.available == a.available()) return;
  d.available = a.available();
  // Offline in the registry, as for a lost provider, but the grant and the rings stay: the
  // provider may still write values and answer what it already received.
  if (auto r = core_.registry.set_online(d.reg, d.available); !r) spdlog::warn("availability {}: {}", d.id, r.error().to_string());
  if (!d.available) publish_now(s);
  const std::string why = a.reason().empty() ? std::string() : fmt::format(" ({})", a.reason().substr(0, 512));
  if (!d.available) {
    core_.pending.fail_device(d.reg, {proto::ERROR_CODE_OFFLINE, fmt::format("device '{}' is unreachable{}", d.id, why)});
    spdlog::info("device '{}' unreachable, says provider '{}'{}", d.id, s.name, why);
  } else {
    spdlog::info("device '{}' reachable again, says provider '{}'{}", d.id, s.name, why);
  }
  core_.hub.flush();
}

void Daemon::check_provider_liveness() {
  // A snapshot retired while a reader held it is freed at the next publication. A quiet home may
  // not have one for long (a burst publishes once), and such a snapshot keeps the regions of
  // removed devices open: free it here.
  core_.registry.collect();
  const auto now = std::chrono::steady_clock::now();
  const auto timeout = core_.config.provider_timeout;
  std::vector<std::pair<std::uint64_t, std::string>> silent;
  for (auto& [sid, s] : providers_) {
    const auto quiet = std::chrono::duration_cast<std::chrono::milliseconds>(now - s->last_heard);
    if (quiet >= timeout) {
      silent.emplace_back(sid, fmt::format("silent for {} ms (provider_timeout_ms = {}){}", quiet.count(),
                                           timeout.count(), s->welcomed ? "" : ", no Hello"));
    } else if (quiet >= timeout / 2 && !s->probed && s->welcomed) {
      proto::Envelope hb;
      s->probed = true;
      hb.set_id(next_probe_id_++);
      hb.mutable_heartbeat()->set_sequence(hb.id() & ~kProbeIdBit);
      (void)s->channel.send(hb);
    }
  }
  for (const auto& [sid, why] : silent) {
    // Silent means it sent nothing, not that this loop was too busy to read it: read first.
    on_provider_readable(sid);
    auto it = providers_.find(sid);
    if (it == providers_.end() || std::chrono::steady_clock::now() - it->second->last_heard < timeout) continue;
    spdlog::warn("{} disconnected: {}", it->second->who(), why);
    close_provider(sid, why);
  }
}

void Daemon::offline_device(Device& d) {
  core_.shard_of(d.reg).detach(d.reg);
  if (auto r = core_.registry.set_online(d.reg, false); !r) spdlog::warn("offline {}: {}", d.id, r.error().to_string());
  core_.pending.fail_device(d.reg, {proto::ERROR_CODE_OFFLINE, fmt::format("device '{}' went offline", d.id)});
  d.owner = 0;
}

void Daemon::close_provider(std::uint64_t sid, const std::string& why) {
  auto it = providers_.find(sid);
  if (it == providers_.end()) return;
  release_held(*it->second);  // what it was told before (e.g. a fatal error's reason) still goes
  std::unique_ptr<ProviderSession> s = std::move(it->second);
  providers_.erase(it);
  core_.main.loop().cancel(s->watch);
  {
    std::lock_guard lock(core_.meta_mu);
    // One snapshot for all its devices going offline, not one each (O(devices^2)).
    core_.registry.defer_publication();
    for (const auto& id : s->devices) {
      if (auto d = devices_.find(id); d != devices_.end() && d->second->owner == sid) offline_device(*d->second);
    }
    core_.registry.publish_deferred();
  }
  if (s->bells) {
    for (auto& shard : core_.shards) shard->forget_bells(s->bells);
  }
  if (s->welcomed) {
    spdlog::info("{} gone ({}): {} devices offline", s->who(), why, s->devices.size());
  } else {
    spdlog::info("provider connection (pid {}, uid {}) closed before Hello: {}", s->peer.pid, s->peer.uid, why);
  }
  core_.hub.flush();
  // Not destroyed inside its own watch callback: the loop may still hold that callback.
  core_.main.post([dead = std::shared_ptr<ProviderSession>(std::move(s))] {});
}

int Daemon::run() {
  if (auto r = setup(); !r) {
    spdlog::critical("floe-core cannot start: {}", r.error().to_string());
    return 1;
  }
  auto r = core_.main.loop().run();
  if (!r) spdlog::error("main loop failed: {}", r.error().to_string());
  shutdown();
  return r ? 0 : 1;
}

void Daemon::shutdown() {
  if (!signal_fd_) return;
  signal_fd_.reset();
  provider_listener_.reset();  // unlinks provider.sock
  client_listener_.reset();    // unlinks client.sock
  core_.pending.fail_all({proto::ERROR_CODE_OFFLINE, "floe-core is shutting down"});
  for (auto& loop : client_loops_) loop->stop_and_join();  // closes every session
  client_loops_.clear();
  std::vector<std::uint64_t> ids;
  for (auto& [id, s] : providers_) ids.push_back(id);
  for (auto id : ids) close_provider(id, "floe-core is shutting down");
  for (auto& shard : core_.shards) shard->stop_and_join();
  core_.main.run_tasks();
  if (state_loaded_) {
    std::lock_guard lock(core_.meta_mu);
    core_.write_state_locked();
  }
  spdlog::info("floe-core stopped");
}

}  // namespace detail

App::App(Config config) : config_(std::move(config)) {}
App::~App() = default;

int App::run() {
  resolve_defaults(config_);
  // Before any thread exists, so every thread inherits the mask and only the signalfd sees them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  // Clients and providers send protobuf; the daemon reports what it cannot parse itself.
  ipc::route_protobuf_logs_to_spdlog();
  core_ = std::make_unique<detail::Core>(config_);
  int code = 0;
  {
    detail::Daemon daemon(*core_);
    code = daemon.run();
  }
  core_.reset();
  return code;
}

}  // namespace floe::core
