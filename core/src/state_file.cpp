#include "floe/core/state_file.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace floe::core {
namespace {

constexpr std::string_view kOp = "state_file";

/// `path` with every symbolic link along its last component followed (at most 40, like the
/// kernel): the file itself is replaced on save, so a link to persistent storage must stay a link.
std::filesystem::path follow_links(const std::filesystem::path& path) {
  std::filesystem::path p = path;
  std::error_code ec;
  for (int hops = 0; hops < 40 && std::filesystem::is_symlink(p, ec); ++hops) {
    std::filesystem::path target = std::filesystem::read_symlink(p, ec);
    if (ec) break;
    p = target.is_absolute() ? target : p.parent_path() / target;
  }
  return p;
}

std::filesystem::path directory_of(const std::filesystem::path& path) {
  std::filesystem::path dir = path.parent_path();
  return dir.empty() ? std::filesystem::path(".") : dir;
}
using json = nlohmann::json;

struct BadState {
  std::string message;
};

const json& need(const json& obj, const char* key, json::value_t type, const std::string& where) {
  if (!obj.is_object()) throw BadState{fmt::format("{}: expected an object", where)};
  auto it = obj.find(key);
  if (it == obj.end()) throw BadState{fmt::format("{}: missing '{}'", where, key)};
  const bool ok = type == json::value_t::number_unsigned ? it->is_number_unsigned() : it->type() == type;
  if (!ok) throw BadState{fmt::format("{}.{}: wrong type", where, key)};
  return *it;
}

std::vector<std::string> strings(const json& arr, const std::string& where) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < arr.size(); ++i) {
    if (!arr[i].is_string()) throw BadState{fmt::format("{}[{}]: expected a string", where, i)};
    out.push_back(arr[i].get<std::string>());
  }
  return out;
}

}  // namespace

ipc::TreeSchema schema_of(const StoredDevice& device) {
  ipc::TreeSchema s;
  for (const auto& e : device.entities) s.entities.push_back({e.components});
  return s;
}

std::string state_to_json(const StoredState& state) {
  json root = json::object();
  root["version"] = kStateFileVersion;
  json devices = json::array();
  for (const auto& d : state.devices) {
    json entities = json::array();
    for (const auto& e : d.entities) {
      json comps = json::array();
      for (const auto& c : e.components) {
        comps.push_back({{"component", ipc::to_id(c.component)}, {"max_bytes", c.max_bytes}});
      }
      entities.push_back({{"id", e.id}, {"name", e.name}, {"components", comps}});
    }
    json device = {{"id", d.id}, {"name", d.name}, {"provider", d.provider}};
    if (d.uid) device["uid"] = *d.uid;
    device["entities"] = std::move(entities);
    device["groups"] = d.groups;
    devices.push_back(std::move(device));
  }
  root["devices"] = devices;
  root["groups"] = state.groups;
  return root.dump(2) + "\n";
}

Result<StoredState> state_from_json(std::string_view text) {
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return logic_error(kOp, "not valid JSON");
  try {
    const auto& version = need(root, "version", json::value_t::number_unsigned, "state");
    if (version.get<std::uint64_t>() != kStateFileVersion) {
      throw BadState{fmt::format("state: version {} is not {}", version.get<std::uint64_t>(), kStateFileVersion)};
    }
    StoredState st;
    const auto& devices = need(root, "devices", json::value_t::array, "state");
    for (std::size_t i = 0; i < devices.size(); ++i) {
      const std::string w = fmt::format("devices[{}]", i);
      StoredDevice d;
      d.id = need(devices[i], "id", json::value_t::string, w).get<std::string>();
      d.name = need(devices[i], "name", json::value_t::string, w).get<std::string>();
      d.provider = need(devices[i], "provider", json::value_t::string, w).get<std::string>();
      if (devices[i].contains("uid")) {
        const auto uid = need(devices[i], "uid", json::value_t::number_unsigned, w).get<std::uint64_t>();
        if (uid > 0xFFFFFFFE) throw BadState{w + ".uid: out of range"};  // (uid_t)-1 names nobody
        d.uid = static_cast<std::uint32_t>(uid);
      }
      d.groups = strings(need(devices[i], "groups", json::value_t::array, w), w + ".groups");
      const auto& entities = need(devices[i], "entities", json::value_t::array, w);
      for (std::size_t j = 0; j < entities.size(); ++j) {
        const std::string we = fmt::format("{}.entities[{}]", w, j);
        StoredEntity e;
        e.id = need(entities[j], "id", json::value_t::string, we).get<std::string>();
        e.name = need(entities[j], "name", json::value_t::string, we).get<std::string>();
        const auto& comps = need(entities[j], "components", json::value_t::array, we);
        for (std::size_t k = 0; k < comps.size(); ++k) {
          const std::string wc = fmt::format("{}.components[{}]", we, k);
          const auto id = need(comps[k], "component", json::value_t::number_unsigned, wc).get<std::uint64_t>();
          const auto max = need(comps[k], "max_bytes", json::value_t::number_unsigned, wc).get<std::uint64_t>();
          if (id == 0 || id > 0xFFFF || max > 0xFFFFFFFF) throw BadState{wc + ": out of range"};
          e.components.push_back({static_cast<ipc::Component>(id), static_cast<std::uint32_t>(max)});
        }
        d.entities.push_back(std::move(e));
      }
      st.devices.push_back(std::move(d));
    }
    st.groups = strings(need(root, "groups", json::value_t::array, "state"), "groups");
    return st;
  } catch (const BadState& e) {
    return logic_error(kOp, e.message);
  }
}

Result<StoredState> load_state(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    if (errno != ENOENT) return sys_errorf(kOp, "cannot read {}", path);
    // No file in an existing directory: a first start. No directory (a disk not mounted yet):
    // starting empty would overwrite the real state once the directory appears.
    const std::filesystem::path dir = directory_of(follow_links(path));
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) {
      return logic_error(kOp, fmt::format("{}: its directory {} does not exist (not mounted yet?); create it, "
                                          "or point state_file elsewhere",
                                          path, dir.string()));
    }
    return StoredState{};
  }
  std::stringstream ss;
  ss << in.rdbuf();
  auto st = state_from_json(ss.str());
  if (!st) return logic_error(kOp, fmt::format("{} is corrupt: {}", path, st.error().message));
  return st;
}

Status save_state(const std::string& path, const StoredState& state) {
  const std::string text = state_to_json(state);
  const std::filesystem::path target = follow_links(path);
  const std::filesystem::path dir = directory_of(target);
  // A name of its own (mkstemp, mode 0600): a second writer never writes into this one's file.
  std::string tmp = target.string() + ".tmp.XXXXXX";
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  // Arguments that are ready (c_str, no temporaries): errno is read after they are evaluated.
  if (fd < 0) return sys_errorf(kOp, "create a temporary file next to {}", target.c_str());
  const auto fail = [&](const char* what) {
    auto err = sys_errorf(kOp, "{} {}", what, tmp);
    ::close(fd);
    ::unlink(tmp.c_str());
    return err;
  };
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("write");
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) return fail("fsync");
  ::close(fd);
  if (::rename(tmp.c_str(), target.c_str()) != 0) {
    auto err = sys_errorf(kOp, "rename {} -> {}", tmp, target.c_str());
    ::unlink(tmp.c_str());
    return err;
  }
  // The rename is durable only once the directory is: a failure here is reported (the saver
  // tries again with the next change).
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return sys_errorf(kOp, "open directory {} to fsync it", dir.c_str());
  const int synced = ::fsync(dfd);
  const int saved_errno = errno;
  ::close(dfd);
  if (synced != 0) return sys_error(kOp, saved_errno, fmt::format("fsync directory {}", dir.string()));
  return {};
}

Result<ipc::Fd> lock_state_file(const std::string& path) {
  const std::string lock = follow_links(path).string() + ".lock";
  ipc::Fd fd(::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return sys_errorf(kOp, "open {}", lock);
  for (;;) {
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) return fd;
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) {
      return logic_error(kOp, fmt::format("{} is in use by another floe-core (it holds {}); give each core its own "
                                          "state_file",
                                          path, lock));
    }
    return sys_errorf(kOp, "flock {}", lock);
  }
}

}  // namespace floe::core
