#include "floe/ipc/region.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace floe::ipc {

static_assert(kRegionSeals == (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
              "kRegionSeals must match the kernel's F_SEAL_* values");
static_assert(kRegionPayloadOffset >= sizeof(RegionHeader));
static_assert(kRegionPayloadOffset % kCacheLine == 0);

namespace {

constexpr std::string_view kCreate = "region.create";
constexpr std::string_view kOpen = "region.open";

struct SealName {
  int seal;
  const char* name;
};
constexpr SealName kSealNames[] = {
    {F_SEAL_SHRINK, "F_SEAL_SHRINK"},
    {F_SEAL_GROW, "F_SEAL_GROW"},
    {F_SEAL_SEAL, "F_SEAL_SEAL"},
};

std::size_t page_size() noexcept {
  static const std::size_t size = [] {
    const long s = ::sysconf(_SC_PAGESIZE);
    return s > 0 ? static_cast<std::size_t>(s) : std::size_t{4096};
  }();
  return size;
}

// How an fd is named in errors before its header could be trusted: the memfd name from
// /proc/self/fd ("region 'dev-7'"), or the fd number and what it points at.
std::string describe_fd(int fd) {
  char link[256];
  const std::string proc = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(proc.c_str(), link, sizeof(link) - 1);
  if (n <= 0) return fmt::format("fd {}", fd);
  std::string target(link, static_cast<std::size_t>(n));
  constexpr std::string_view kMemfdPrefix = "/memfd:";
  constexpr std::string_view kDeletedSuffix = " (deleted)";
  if (target.starts_with(kMemfdPrefix)) {
    target.erase(0, kMemfdPrefix.size());
    if (target.ends_with(kDeletedSuffix)) target.erase(target.size() - kDeletedSuffix.size());
    return fmt::format("region '{}'", target);
  }
  return fmt::format("fd {} ({})", fd, target);
}

template <typename T>
T load_field(const std::byte* raw, std::size_t offset) noexcept {
  T value;
  std::memcpy(&value, raw + offset, sizeof(T));
  return value;
}

// The header as plain values, read from bytes that may have been written by anyone.
struct HeaderFields {
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t header_size;
  std::uint64_t size;
  std::uint32_t kind;
  std::string name;
};

HeaderFields decode_header(const std::byte* raw) {
  HeaderFields h;
  h.magic = load_field<std::uint64_t>(raw, offsetof(RegionHeader, magic));
  h.layout_version = load_field<std::uint32_t>(raw, offsetof(RegionHeader, layout_version));
  h.header_size = load_field<std::uint32_t>(raw, offsetof(RegionHeader, header_size));
  h.size = load_field<std::uint64_t>(raw, offsetof(RegionHeader, size));
  h.kind = load_field<std::uint32_t>(raw, offsetof(RegionHeader, kind));
  const auto* name = reinterpret_cast<const char*>(raw + offsetof(RegionHeader, name));
  h.name.assign(name, ::strnlen(name, sizeof(RegionHeader::name)));
  return h;
}

}  // namespace

Result<int> get_seals(int fd) {
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) return sys_error("fcntl(F_GET_SEALS)");
  return seals;
}

Result<Region> Region::create(const RegionCreateOptions& options) {
  if (options.size == 0) return logic_error(kCreate, "size must be greater than zero");
  if (options.size < kRegionPayloadOffset) {
    return logic_error(kCreate, fmt::format("size {} is smaller than the {}-byte header area",
                                            options.size, kRegionPayloadOffset));
  }
  const std::size_t page = page_size();
  if (options.size > std::numeric_limits<std::size_t>::max() - page ||
      options.size > static_cast<std::size_t>(std::numeric_limits<off_t>::max()) - page) {
    return logic_error(kCreate, fmt::format("size {} is too large", options.size));
  }
  const std::size_t size = (options.size + page - 1) / page * page;

  // memfd names are NUL-terminated C strings; an embedded NUL would silently cut the name.
  if (options.name.find('\0') != std::string_view::npos) {
    return logic_error(kCreate, "name contains a NUL byte");
  }
  const std::string name(options.name);
  Fd fd(::memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return sys_errorf("memfd_create", "region '{}'", name);

  if (::ftruncate(fd.get(), static_cast<off_t>(size)) < 0) {
    return sys_errorf("ftruncate", "region '{}' to {} bytes", name, size);
  }

  RegionHeader header{};
  header.magic = kRegionMagic;
  header.layout_version = kRegionLayoutVersion;
  header.header_size = sizeof(RegionHeader);
  header.size = size;
  header.kind = static_cast<std::uint32_t>(options.kind);
  header.creator_pid = static_cast<std::uint32_t>(::getpid());
  header.generation.store(0, std::memory_order_relaxed);
  header.flags.store(0, std::memory_order_relaxed);
  const std::size_t name_len = std::min(name.size(), sizeof(header.name) - 1);
  std::memcpy(header.name, name.data(), name_len);
  header.name[name_len] = '\0';

  // Written with pwrite before the fd is shared or mapped: no peer can observe a partial header.
  const ssize_t written = ::pwrite(fd.get(), &header, sizeof(header), 0);
  if (written < 0) return sys_errorf("pwrite", "region '{}' header", name);
  if (static_cast<std::size_t>(written) != sizeof(header)) {
    return logic_error(kCreate, fmt::format("region '{}': short header write ({} of {} bytes)", name,
                                            written, sizeof(header)));
  }

  if (::fcntl(fd.get(), F_ADD_SEALS, kRegionSeals) < 0) {
    return sys_errorf("fcntl(F_ADD_SEALS)", "region '{}'", name);
  }

  void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (base == MAP_FAILED) return sys_errorf("mmap", "region '{}' ({} bytes)", name, size);
  return Region(std::move(fd), static_cast<std::byte*>(base), size, /*read_only=*/false);
}

Result<Region> Region::open(Fd fd, const RegionOpenOptions& options) {
  if (!fd) return logic_error(kOpen, "invalid fd");
  const std::string who = describe_fd(fd.get());

  // 1. Seals. Without F_SEAL_SHRINK a peer could truncate the file under our mapping and make
  //    every access SIGBUS; without F_SEAL_GROW or F_SEAL_SEAL the guarantees could change later.
  const int seals = ::fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0) {
    const int err = errno;
    if (err == EINVAL) {
      return sys_error(kOpen, err,
                       fmt::format("{}: not a sealable memfd (fcntl(F_GET_SEALS) refused it)", who));
    }
    return sys_error(kOpen, err, fmt::format("{}: fcntl(F_GET_SEALS) failed", who));
  }
  if ((seals & kRegionSeals) != kRegionSeals) {
    std::string missing;
    for (const auto& s : kSealNames) {
      if ((seals & s.seal) == 0) {
        if (!missing.empty()) missing += ", ";
        missing += s.name;
      }
    }
    const bool several = missing.find(',') != std::string::npos;
    return logic_error(kOpen, fmt::format("{}: missing seal{} {}", who, several ? "s" : "", missing));
  }
  if (options.access == RegionAccess::kReadWrite && (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) != 0) {
    return logic_error(kOpen, fmt::format("{}: sealed against writes (F_SEAL_WRITE or F_SEAL_FUTURE_WRITE); "
                                          "open it with RegionAccess::kReadOnly",
                                          who));
  }

  // 2. Size. The seals make it final, so checking it once is enough.
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) return sys_errorf(kOpen, "{}: fstat failed", who);
  if (!S_ISREG(st.st_mode)) return logic_error(kOpen, fmt::format("{}: not a regular file", who));
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size == 0) return logic_error(kOpen, fmt::format("{}: size is 0", who));
  if (size < kRegionPayloadOffset) {
    return logic_error(kOpen, fmt::format("{}: size {} is smaller than the {}-byte header area", who, size,
                                          kRegionPayloadOffset));
  }
  if (size > std::numeric_limits<std::size_t>::max()) {
    return logic_error(kOpen, fmt::format("{}: size {} does not fit in this address space", who, size));
  }
  if (options.expected_size != 0 && size != options.expected_size) {
    return logic_error(kOpen, fmt::format("{}: size {} does not match the expected {}", who, size,
                                          options.expected_size));
  }
  if (size < options.min_size) {
    return logic_error(kOpen, fmt::format("{}: size {} is smaller than the required minimum {}", who, size,
                                          options.min_size));
  }

  // 3. Header, read with pread so nothing is mapped until it checks out.
  alignas(RegionHeader) std::byte raw[sizeof(RegionHeader)];
  ssize_t got = 0;
  do {
    got = ::pread(fd.get(), raw, sizeof(raw), 0);
  } while (got < 0 && errno == EINTR);
  if (got < 0) return sys_errorf(kOpen, "{}: reading the header failed", who);
  if (static_cast<std::size_t>(got) != sizeof(raw)) {
    return logic_error(kOpen, fmt::format("{}: short header read ({} of {} bytes)", who, got, sizeof(raw)));
  }
  const HeaderFields h = decode_header(raw);
  if (h.magic != kRegionMagic) {
    return logic_error(kOpen, fmt::format("{}: bad magic {:#018x}, expected {:#018x} (not a floe region)", who,
                                          h.magic, kRegionMagic));
  }
  if (h.layout_version != kRegionLayoutVersion) {
    return logic_error(kOpen, fmt::format("{}: layout version {}, this build understands only {}", who,
                                          h.layout_version, kRegionLayoutVersion));
  }
  if (h.header_size != sizeof(RegionHeader)) {
    return logic_error(kOpen, fmt::format("{}: header size {}, expected {} (creator built with a different "
                                          "RegionHeader)",
                                          who, h.header_size, sizeof(RegionHeader)));
  }
  if (h.size != size) {
    return logic_error(kOpen, fmt::format("{}: header says size {} but the file is {} bytes", who, h.size, size));
  }
  if (options.require_kind && h.kind != static_cast<std::uint32_t>(options.kind)) {
    return logic_error(kOpen, fmt::format("{}: kind {}, expected {}", who, h.kind,
                                          static_cast<std::uint32_t>(options.kind)));
  }

  // 4. Map.
  const bool read_only = options.access == RegionAccess::kReadOnly;
  const int prot = read_only ? PROT_READ : PROT_READ | PROT_WRITE;
  void* base = ::mmap(nullptr, static_cast<std::size_t>(size), prot, MAP_SHARED, fd.get(), 0);
  if (base == MAP_FAILED) {
    const int err = errno;
    if (err == EACCES && !read_only) {
      return sys_error(kOpen, err,
                       fmt::format("region '{}': the fd does not allow writing (shared read-only?); open it "
                                   "with RegionAccess::kReadOnly",
                                   h.name));
    }
    return sys_error(kOpen, err, fmt::format("region '{}': mmap of {} bytes failed", h.name, size));
  }
  return Region(std::move(fd), static_cast<std::byte*>(base), static_cast<std::size_t>(size), read_only);
}

Region::Region(Region&& other) noexcept
    : fd_(std::move(other.fd_)),
      base_(std::exchange(other.base_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      read_only_(std::exchange(other.read_only_, false)) {}

Region& Region::operator=(Region&& other) noexcept {
  if (this != &other) {
    unmap();
    fd_ = std::move(other.fd_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
    read_only_ = std::exchange(other.read_only_, false);
  }
  return *this;
}

Region::~Region() { unmap(); }

void Region::unmap() noexcept {
  if (base_ != nullptr) ::munmap(base_, size_);
  base_ = nullptr;
  size_ = 0;
  fd_.reset();
}

Result<Fd> Region::share(RegionAccess access) const {
  if (!fd_) return logic_error("region.share", "empty region (moved from?)");
  if (access == RegionAccess::kReadWrite) {
    if (read_only_) return logic_error("region.share", "a region opened read-only cannot share write access");
    return fd_.duplicate();
  }
  // A dup would share our O_RDWR open file description; a fresh open of the /proc link gets a
  // description of its own that is read-only, so mmap(PROT_WRITE, MAP_SHARED) on it fails.
  // Not a security boundary: memfd inodes are mode 0777, so a receiver can reopen its own
  // /proc/self/fd/N with O_RDWR. It stops mistakes, not a hostile peer.
  const std::string path = "/proc/self/fd/" + std::to_string(fd_.get());
  Fd ro(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!ro) return sys_errorf("open", "{} (O_RDONLY) to share region read-only", path);
  return ro;
}

}  // namespace floe::ipc
