// Finding regions without asking anyone: /proc/net/unix for the core's socket, /proc/PID/fd for
// its memfds and for the other processes holding them. Same-uid processes only (the kernel's
// ptrace "read" check on /proc/PID/fd); nothing here signals, traces or writes to another process.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <fstream>
#include <map>
#include <new>
#include <set>
#include <sstream>

#include "floe/ipc/protocol.hpp"
#include "floe/ipc/region.hpp"
#include "inspect.hpp"

namespace floe::inspect {
namespace {

constexpr std::string_view kMemfdPrefix = "/memfd:";
// Far above any floe region (trees and rings are bounded far below it), far below what a copy of
// an unsealed file may take from the inspector's memory.
constexpr std::uint64_t kMaxRegionBytes = std::uint64_t{1} << 30;
constexpr std::string_view kDeleted = " (deleted)";

std::optional<pid_t> parse_pid(std::string_view s) {
  pid_t v = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size() || v <= 0) return std::nullopt;
  return v;
}

/// Calls fn(name) for each entry of `dir` but "." and "..".
template <typename Fn>
void each_entry(const std::string& dir, Fn&& fn) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return;
  while (const dirent* e = ::readdir(d)) {
    const std::string_view name = e->d_name;
    if (name != "." && name != "..") fn(std::string(name));
  }
  ::closedir(d);
}

std::string read_link(const std::string& path) {
  char buf[512];
  const ssize_t n = ::readlink(path.c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

std::string read_small_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<pid_t> all_pids() {
  std::vector<pid_t> out;
  each_entry("/proc", [&](const std::string& n) {
    if (auto p = parse_pid(n)) out.push_back(*p);
  });
  return out;
}

}  // namespace

std::string memfd_name_of(const std::string& path) {
  std::string target = read_link(path);
  if (!target.starts_with(kMemfdPrefix)) return {};
  target.erase(0, kMemfdPrefix.size());
  if (target.ends_with(kDeleted)) target.erase(target.size() - kDeleted.size());
  return target;
}

Holder describe_process(pid_t pid) {
  Holder h;
  h.pid = pid;
  h.comm = read_small_file(fmt::format("/proc/{}/comm", pid));
  if (!h.comm.empty() && h.comm.back() == '\n') h.comm.pop_back();
  h.cmdline = read_small_file(fmt::format("/proc/{}/cmdline", pid));
  while (!h.cmdline.empty() && h.cmdline.back() == '\0') h.cmdline.pop_back();
  std::replace(h.cmdline.begin(), h.cmdline.end(), '\0', ' ');
  return h;
}

namespace {

/// Processes holding a socket bound to `path`, from /proc/net/unix and /proc/PID/fd.
std::set<pid_t> socket_holders(const std::string& path) {
  // /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path"; the listener and the core's
  // accepted connections carry the bound path.
  std::set<std::string> inodes;
  std::istringstream lines(read_small_file("/proc/net/unix"));
  for (std::string line; std::getline(lines, line);) {
    std::istringstream f(line);
    std::string num, ref, proto, flags, type, st, inode, p;
    if (f >> num >> ref >> proto >> flags >> type >> st >> inode >> p && p == path) inodes.insert(inode);
  }
  std::set<pid_t> owners;
  if (inodes.empty()) return owners;
  for (pid_t pid : all_pids()) {
    if (pid == ::getpid()) continue;
    const std::string dir = fmt::format("/proc/{}/fd", pid);
    each_entry(dir, [&](const std::string& n) {
      const std::string t = read_link(dir + "/" + n);
      if (t.starts_with("socket:[") && t.size() > 9 && inodes.count(t.substr(8, t.size() - 9)) != 0) {
        owners.insert(pid);
      }
    });
  }
  return owners;
}

}  // namespace

Result<pid_t> find_core(const std::string& socket_dir, bool by_name) {
  const std::string path = socket_dir + "/" + std::string(ipc::kClientSocketName);
  // The kernel prints /proc/net/unix a page at a time; sockets opened and closed between two pages
  // shift the rest, so one read can miss the listener's line while clients come and go. Look again
  // before concluding there is no core.
  std::set<pid_t> owners;
  for (int attempt = 0; attempt < 5 && owners.empty(); ++attempt) owners = socket_holders(path);
  if (owners.size() == 1) return *owners.begin();
  if (owners.size() > 1) {
    return logic_error("find_core", fmt::format("{} processes hold {}; choose one with --pid", owners.size(), path));
  }
  if (!by_name) {
    return logic_error("find_core", fmt::format("no process holds {} (is floe-core running with this socket "
                                                "directory, as this user?)",
                                                path));
  }
  // No socket holder visible (another uid, or a core that lost its socket file): by executable name.
  std::vector<pid_t> cores;
  for (pid_t pid : all_pids()) {
    const std::string exe = read_link(fmt::format("/proc/{}/exe", pid));
    const auto slash = exe.find_last_of('/');
    std::string base = slash == std::string::npos ? exe : exe.substr(slash + 1);
    if (base.ends_with(kDeleted)) base.erase(base.size() - kDeleted.size());
    if (base == "floe-core") cores.push_back(pid);
  }
  if (cores.size() == 1) return cores.front();
  if (cores.empty()) {
    return logic_error("find_core", fmt::format("no process holds {} and no floe-core process is visible "
                                                "(is the core running, as this user?)",
                                                path));
  }
  return logic_error("find_core", fmt::format("no process holds {} and {} floe-core processes run; choose one "
                                              "with --pid",
                                              path, cores.size()));
}

Result<std::vector<std::string>> region_fds(pid_t pid) {
  const std::string dir = fmt::format("/proc/{}/fd", pid);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return sys_error("opendir", dir);
  ::closedir(d);
  std::vector<std::pair<int, std::string>> found;
  each_entry(dir, [&](const std::string& n) {
    const std::string path = dir + "/" + n;
    if (memfd_name_of(path).starts_with("floe-")) found.emplace_back(std::atoi(n.c_str()), path);
  });
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

HolderIndex HolderIndex::scan() {
  HolderIndex index;
  for (pid_t pid : all_pids()) {
    if (pid == ::getpid()) continue;
    const std::string dir = fmt::format("/proc/{}/fd", pid);
    each_entry(dir, [&](const std::string& n) {
      const std::string path = dir + "/" + n;
      if (!read_link(path).starts_with(kMemfdPrefix)) return;  // stat only memfds: cheap, no side effect
      struct stat st {};
      if (::stat(path.c_str(), &st) == 0) index.entries_.emplace_back(st.st_dev, st.st_ino, pid);
    });
  }
  std::sort(index.entries_.begin(), index.entries_.end());
  index.entries_.erase(std::unique(index.entries_.begin(), index.entries_.end()), index.entries_.end());
  return index;
}

std::vector<Holder> HolderIndex::holders(std::uint64_t dev, std::uint64_t ino, pid_t exclude) const {
  std::vector<Holder> out;
  auto it = std::lower_bound(entries_.begin(), entries_.end(), std::make_tuple(dev, ino, pid_t{0}));
  for (; it != entries_.end() && std::get<0>(*it) == dev && std::get<1>(*it) == ino; ++it) {
    if (std::get<2>(*it) != exclude) out.push_back(describe_process(std::get<2>(*it)));
  }
  return out;
}

// ---- OpenedRegion ------------------------------------------------------------------------------

void OpenedRegion::AlignedFree::operator()(std::byte* p) const noexcept {
  ::operator delete[](p, std::align_val_t{64});
}

Result<OpenedRegion> OpenedRegion::open(const std::string& path) {
  OpenedRegion r;
  r.path_ = path;
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below); it changes
  // nothing for a regular file or memfd.
  r.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (r.fd_ < 0) return sys_errorf("open", "'{}' (read-only)", path);
  struct stat st {};
  if (::fstat(r.fd_, &st) < 0) return sys_error("fstat", path);
  if (!S_ISREG(st.st_mode)) return logic_error("open", fmt::format("'{}' is not a regular file or memfd", path));
  r.size_ = static_cast<std::uint64_t>(st.st_size);
  if (r.size_ > kMaxRegionBytes) {
    return logic_error("open", fmt::format("'{}' has {} bytes, more than the {} a floe region can have", path,
                                           r.size_, kMaxRegionBytes));
  }
  r.dev_ = st.st_dev;
  r.ino_ = st.st_ino;
  const int seals = ::fcntl(r.fd_, F_GET_SEALS);
  r.seals_ = seals < 0 ? -1 : seals;
  if (r.size_ == 0) return r;
  if (r.seals_ >= 0 && (r.seals_ & F_SEAL_SHRINK) != 0) {
    // Cannot shrink: a mapping of every byte stays valid. PROT_READ only: a write would fault.
    void* p = ::mmap(nullptr, r.size_, PROT_READ, MAP_SHARED, r.fd_, 0);
    if (p == MAP_FAILED) return sys_errorf("mmap", "'{}' ({} bytes, read-only)", path, r.size_);
    r.data_ = static_cast<const std::byte*>(p);
    return r;
  }
  FLOE_TRY(r.refresh());
  return r;
}

Status OpenedRegion::refresh() {
  if (data_ != nullptr && copy_ == nullptr) return {};  // a live mapping
  struct stat st {};
  if (::fstat(fd_, &st) < 0) return sys_error("fstat", path_);
  const auto size = static_cast<std::uint64_t>(st.st_size);
  // An unsealed file can grow after open(): the limit again, and no exception out of here.
  if (size > kMaxRegionBytes) {
    return logic_error("refresh", fmt::format("'{}' has grown to {} bytes, more than the {} a floe region can have",
                                              path_, size, kMaxRegionBytes));
  }
  std::byte* mem = size ? static_cast<std::byte*>(::operator new[](size, std::align_val_t{64}, std::nothrow)) : nullptr;
  if (size != 0 && mem == nullptr) {
    return logic_error("refresh", fmt::format("cannot allocate {} bytes to copy '{}'", size, path_));
  }
  std::unique_ptr<std::byte[], AlignedFree> buf(mem);
  std::uint64_t got = 0;
  while (got < size) {
    const ssize_t n = ::pread(fd_, buf.get() + got, size - got, static_cast<off_t>(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return sys_error("pread", path_);
    if (n == 0) break;  // shrunk meanwhile: what was read is the region
    got += static_cast<std::uint64_t>(n);
  }
  copy_ = std::move(buf);
  data_ = copy_.get();
  size_ = got;
  return {};
}

RegionReport OpenedRegion::decode(const DecodeOptions& options) const {
  RegionReport r = decode_region(bytes(), size_, seals_, options);
  r.source = path_;
  r.snapshot = copy_ != nullptr;
  r.memfd_name = memfd_name_of(path_);
  name_device(r);
  return r;
}

void OpenedRegion::release() noexcept {
  if (data_ != nullptr && copy_ == nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
  copy_.reset();
  data_ = nullptr;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

OpenedRegion::OpenedRegion(OpenedRegion&& o) noexcept
    : path_(std::move(o.path_)), fd_(std::exchange(o.fd_, -1)), data_(std::exchange(o.data_, nullptr)),
      size_(o.size_), seals_(o.seals_), dev_(o.dev_), ino_(o.ino_), copy_(std::move(o.copy_)) {}

OpenedRegion& OpenedRegion::operator=(OpenedRegion&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    fd_ = std::exchange(o.fd_, -1);
    data_ = std::exchange(o.data_, nullptr);
    size_ = o.size_;
    seals_ = o.seals_;
    dev_ = o.dev_;
    ino_ = o.ino_;
    copy_ = std::move(o.copy_);
  }
  return *this;
}

OpenedRegion::~OpenedRegion() { release(); }

}  // namespace floe::inspect
