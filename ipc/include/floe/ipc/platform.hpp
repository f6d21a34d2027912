// Small platform facts shared by every layer.
#pragma once

#include <cstddef>
#include <cstdio>
#include <cstdlib>

namespace floe {

/// One cache line on every x86-64 and most ARM64 parts. Not hardware_destructive_interference_size,
/// whose value g++ 12 warns may change between compiler versions (and this one is part of a
/// cross-process layout).
inline constexpr std::size_t kCacheLine = 64;

/// One read of a field in shared memory that a hostile peer may be rewriting: the value checked is
/// the value used (the compiler may not read it again).
template <typename T>
[[nodiscard]] T read_once(const T& field) noexcept {
  return *static_cast<const volatile T*>(&field);
}

/// Hint to the CPU that we are in a spin-wait loop.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

}  // namespace floe

// Contract checks: on in debug and sanitizer builds, compiled out in release builds.
#if defined(NDEBUG) && !defined(FLOE_ASSERTIONS)
#define FLOE_ASSERT(cond) ((void)0)
#else
#define FLOE_ASSERT(cond)                                                            \
  ((cond) ? (void)0                                                                 \
          : (std::fprintf(stderr, "%s:%d: FLOE_ASSERT(%s) failed\n", __FILE__, __LINE__, \
                          #cond),                                                  \
             std::abort()))
#endif
