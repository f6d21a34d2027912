// Shared between engine.cpp (bind) and engine_eval.cpp (evaluate). Not a public header.
#pragma once

#include <cstddef>

namespace floe::core::detail {

/// Presence words the scan ANDs / AND-NOTs per chunk directly; more go to the residual program.
inline constexpr std::size_t kMaxRequired = 8;
inline constexpr std::size_t kMaxExcluded = 8;

}  // namespace floe::core::detail
