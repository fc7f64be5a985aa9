// The JSON form of a Snapshot (documented in docs/status-json.md): what `gpumgr status
// --json` prints, what the daemon's HTTP API serves and what its protocol carries. Parsing
// is the exact inverse of printing, so a remote ledger's snapshot equals the daemon's.
// Pure functions: any thread may call them.
#pragma once

#include <nlohmann/json.hpp>

#include "gpumgr/ledger.h"

namespace gpumgr {

inline constexpr int kStatusJsonVersion = 1;

nlohmann::json to_json(const Snapshot& snapshot);
nlohmann::json to_json(const LeaseInfo& lease);
nlohmann::json to_json(const WaiterInfo& waiter);
nlohmann::json to_json(const Histogram& histogram);
nlohmann::json to_json(const KindEstimate& estimate);

// kInvalidArgument naming the first missing or mistyped field.
StatusOr<Snapshot> snapshot_from_json(const nlohmann::json& json);
StatusOr<LeaseInfo> lease_from_json(const nlohmann::json& json);
StatusOr<KindEstimate> estimate_from_json(const nlohmann::json& json);

}  // namespace gpumgr
