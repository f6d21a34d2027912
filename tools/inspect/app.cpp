#include "app.hpp"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <thread>

#include "floe/ipc/protocol.hpp"
#include "inspect.hpp"

namespace floe::inspect {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int kExitViolation = 1;
constexpr int kExitError = 2;

struct Options {
  std::optional<pid_t> pid;
  std::string socket_dir;
  bool socket_dir_given = false;
  std::vector<std::string> regions;
  std::vector<int> fds;
  bool json = false;
  bool watch = false;
  double interval = 1.0;
  unsigned count = 0;
  bool validate = false;
  unsigned seqlock_wait_ms = 500;
  std::string device;
  std::string provider;
  bool rings_only = false;
  bool tree_only = false;
};

/// What one pass found: the core (if attached through one) and each region's report.
struct Pass {
  std::optional<pid_t> core;
  std::vector<RegionReport> regions;
  std::vector<std::uint64_t> inodes;  // per region, to match regions across watch refreshes
};

bool provider_matches(const RegionReport& r, const std::string& name) {
  if (!r.provider) return false;
  const Holder& h = *r.provider;
  return h.comm == name || std::to_string(h.pid) == name || (" " + h.cmdline + " ").find(" --name " + name + " ") !=
                                                                   std::string::npos;
}

/// Attaches, reads and detaches every selected region once.
Result<Pass> read_all(const Options& o) {
  Pass pass;
  std::vector<std::string> paths = o.regions;
  for (int fd : o.fds) paths.push_back(fmt::format("/proc/self/fd/{}", fd));
  const bool explicit_regions = !paths.empty();
  if (!explicit_regions) {
    if (o.pid) {
      pass.core = *o.pid;
    } else {
      auto core = find_core(o.socket_dir, !o.socket_dir_given);
      if (!core) return tl::unexpected(core.error());
      pass.core = *core;
    }
    auto fds = region_fds(*pass.core);
    if (!fds) return tl::unexpected(fds.error());
    paths = std::move(*fds);
  }
  DecodeOptions d;
  d.values = !o.rings_only;
  d.wait_for_odd = o.validate;
  d.seqlock_wait = std::chrono::milliseconds(o.seqlock_wait_ms);
  const HolderIndex holders = HolderIndex::scan();
  for (const auto& path : paths) {
    auto region = OpenedRegion::open(path);
    if (!region) {
      // A device removed between listing and opening is not an error of the live system.
      if (!explicit_regions) continue;
      return tl::unexpected(region.error());
    }
    RegionReport r = region->decode(d);
    for (auto& h : holders.holders(region->device_number(), region->inode(), pass.core.value_or(0))) {
      // The provider can write the header's creator pid: through a core, the core (excluded by its
      // own pid above) is the creator, and the field only names it for a --region/--fd.
      const bool creator = !pass.core && r.header_readable && static_cast<std::uint32_t>(h.pid) == r.creator_pid;
      if (!r.provider && !creator) {
        r.provider = std::move(h);
      } else {
        r.other_holders.push_back(std::move(h));
      }
    }
    r.online = r.provider.has_value();
    if (pass.core && r.header_readable && r.creator_pid != static_cast<std::uint32_t>(*pass.core)) {
      // After the header's own checks, before the parts behind it: layout order.
      const auto at = std::find_if(r.violations.begin(), r.violations.end(),
                                   [](const Violation& v) { return v.where != "region header"; });
      r.violations.insert(at, {"region header", fmt::format("creator pid {} is not the core's pid {} (rewritten "
                                                            "by the provider?)",
                                                            r.creator_pid, *pass.core)});
    }
    if (!o.device.empty() && r.device != o.device) continue;
    if (!o.provider.empty() && !provider_matches(r, o.provider)) continue;
    pass.inodes.push_back(region->inode());
    pass.regions.push_back(std::move(r));
    // --validate reports the first violation only: reading (and waiting on) the rest is wasted.
    if (o.validate && !pass.regions.back().violations.empty()) break;
  }
  return pass;
}

json pass_json(const Pass& p, const Options& o, const std::map<std::uint64_t, Rates>* rates) {
  json j = {{"core_pid", p.core ? json(*p.core) : json(nullptr)}};
  auto regions = json::array();
  for (std::size_t i = 0; i < p.regions.size(); ++i) {
    json r = to_json(p.regions[i]);
    if (o.tree_only) r.erase("rings");
    if (o.rings_only) r.erase("tree");
    if (rates) {
      const auto it = rates->find(p.inodes[i]);
      const Rates x = it == rates->end() ? Rates{} : it->second;
      r["rates"] = {{"tx_messages_per_s", x.tx_per_s}, {"rx_messages_per_s", x.rx_per_s},
                    {"changes_per_s", x.changes_per_s}};
    }
    regions.push_back(std::move(r));
  }
  j["regions"] = std::move(regions);
  return j;
}

std::string dump(const json& j, int indent) { return j.dump(indent, ' ', false, json::error_handler_t::replace); }

std::string pass_text(const Pass& p, const Options& o, const std::map<std::uint64_t, Rates>* rates) {
  std::string out;
  if (p.core) out += fmt::format("floe-core pid {}: {} region(s)\n", *p.core, p.regions.size());
  for (std::size_t i = 0; i < p.regions.size(); ++i) {
    const Rates* x = nullptr;
    if (rates) {
      const auto it = rates->find(p.inodes[i]);
      static const Rates kZero{};
      x = it == rates->end() ? &kZero : &it->second;
    }
    out += "\n" + format_region(p.regions[i], !o.tree_only, !o.rings_only, x);
  }
  return out;
}

int validate(const Options& o) {
  auto pass = read_all(o);
  if (!pass) {
    fmt::print(stderr, "floe-inspect: {}\n", pass.error().to_string());
    return kExitError;
  }
  for (const auto& r : pass->regions) {
    if (r.violations.empty()) continue;
    const Violation& v = r.violations.front();
    const std::string name = r.memfd_name.empty() ? r.source : r.memfd_name;
    if (o.json) {
      fmt::print("{}\n", dump({{"valid", false}, {"region", name}, {"where", v.where}, {"what", v.what}}, -1));
    } else {
      fmt::print("INVALID {}: {}: {}\n", name, v.where, v.what);
    }
    return kExitViolation;
  }
  if (o.json) {
    fmt::print("{}\n", dump({{"valid", true}, {"regions", pass->regions.size()}}, -1));
  } else {
    fmt::print("ok: {} region(s), every invariant holds\n", pass->regions.size());
  }
  return 0;
}

int watch(const Options& o) {
  struct Last {
    std::uint64_t tx = 0, rx = 0, changes = 0;
    Clock::time_point at;
  };
  std::map<std::uint64_t, Last> last;
  const bool tty = ::isatty(STDOUT_FILENO) == 1;
  const auto period = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.interval));
  auto next = Clock::now();
  for (unsigned n = 0; o.count == 0 || n < o.count; ++n) {
    auto pass = read_all(o);
    const auto now = Clock::now();
    if (!pass) {
      fmt::print(stderr, "floe-inspect: {}\n", pass.error().to_string());
      return kExitError;
    }
    std::map<std::uint64_t, Rates> rates;
    std::map<std::uint64_t, Last> seen;
    for (std::size_t i = 0; i < pass->regions.size(); ++i) {
      const RegionReport& r = pass->regions[i];
      Last cur{.tx = 0, .rx = 0, .changes = r.tree.change_total, .at = now};
      for (const auto& ring : r.rings) (ring.name == "tx" ? cur.tx : cur.rx) = ring.records_pushed;
      const auto it = last.find(pass->inodes[i]);
      if (it != last.end()) {
        const double dt = std::chrono::duration<double>(now - it->second.at).count();
        // Counters restart when the core reinitialises the rings for a new provider: no negative rates.
        auto per_s = [dt](std::uint64_t a, std::uint64_t b) { return dt > 0 && a >= b ? (a - b) / dt : 0.0; };
        rates[pass->inodes[i]] = {per_s(cur.tx, it->second.tx), per_s(cur.rx, it->second.rx),
                                  per_s(cur.changes, it->second.changes)};
      }
      seen[pass->inodes[i]] = cur;
    }
    last = std::move(seen);
    if (o.json) {
      fmt::print("{}\n", dump(pass_json(*pass, o, &rates), -1));
    } else {
      if (tty) fmt::print("\x1b[H\x1b[2J");
      fmt::print("floe-inspect --watch (every {}s)\n{}", o.interval, pass_text(*pass, o, &rates));
    }
    std::fflush(stdout);
    if (o.count != 0 && n + 1 == o.count) break;
    next += period;
    std::this_thread::sleep_until(next);
  }
  return 0;
}

}  // namespace

int run(int argc, char** argv) {
  Options o;
  o.socket_dir = ipc::default_socket_dir();
  CLI::App app{"floe-inspect: read-only view of floe's shared memory (regions, rings, device trees)",
               "floe-inspect"};
  app.add_option("--pid", o.pid, "floe-core process to inspect (default: the one serving --socket-dir)");
  app.add_option("--socket-dir", o.socket_dir, "socket directory of the core to find")->capture_default_str();
  app.add_option("--region", o.regions, "inspect this region file only (e.g. /proc/PID/fd/N); repeatable");
  app.add_option("--fd", o.fds, "inspect this inherited fd only; repeatable");
  app.add_flag("--json", o.json, "JSON output for scripts");
  app.add_flag("--watch", o.watch, "refresh every --interval seconds with rates (messages/s, changes/s)");
  app.add_option("--interval", o.interval, "seconds between --watch refreshes")
      ->capture_default_str()
      ->check(CLI::Range(0.01, 3600.0));
  app.add_option("--count", o.count, "stop --watch after N refreshes (0: never)")->capture_default_str();
  app.add_flag("--validate", o.validate,
               "check every invariant; exit 1 with a message at the first violation, 0 if all hold");
  app.add_option("--seqlock-wait-ms", o.seqlock_wait_ms,
                 "--validate: how long an odd seqlock may stay unchanged before it counts as stuck")
      ->capture_default_str();
  app.add_option("--device", o.device, "only this device's region");
  app.add_option("--provider", o.provider, "only regions held by this provider (process name, pid or --name)");
  auto* rings = app.add_flag("--rings-only", o.rings_only, "show only the rings");
  app.add_flag("--tree-only", o.tree_only, "show only the device trees")->excludes(rings);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitError;
  }
  // Only a default directory may fall back to "the one floe-core process" (docs/INSPECT.md).
  o.socket_dir_given = app.get_option("--socket-dir")->count() > 0 || std::getenv("FLOE_SOCKET_DIR") != nullptr;
  if (o.watch && o.validate) {
    fmt::print(stderr, "floe-inspect: --watch and --validate cannot be combined\n");
    return kExitError;
  }
  if (o.validate) return validate(o);
  if (o.watch) return watch(o);
  auto pass = read_all(o);
  if (!pass) {
    fmt::print(stderr, "floe-inspect: {}\n", pass.error().to_string());
    return kExitError;
  }
  if (o.json) {
    fmt::print("{}\n", dump(pass_json(*pass, o, nullptr), 2));
  } else {
    fmt::print("{}", pass_text(*pass, o, nullptr));
  }
  return 0;
}

}  // namespace floe::inspect
