// Shared between engine.cpp (bind) and engine_eval.cpp (evaluate). Not a public header.
#pragma once

#include "floe/core/engine.hpp"

namespace floe::core::detail {

/// Resolves `q`'s scan against `snapshot` and picks its kernel (engine_eval.cpp). bind() stores
/// the result in the BoundQuery; evaluate() calls it only for another snapshot of the same version.
[[nodiscard]] ScanPlan plan_scan(const BoundQuery& q, const Snapshot& snapshot) noexcept;

}  // namespace floe::core::detail
