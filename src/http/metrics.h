// The Prometheus text exposition (format 0.0.4) of a Snapshot: what GET /metrics serves.
// Names follow Prometheus conventions (base units, `_bytes`, `_seconds`, `_ratio`, `_total`
// for counters); docs/http.md lists them. Pure functions: any thread may call them.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "gpumgr/ledger.h"

namespace gpumgr::http {

// What the metrics need besides the snapshot: facts about the serving process.
struct MetricsContext {
  std::string version;                               // gpumgr_build_info{version=...}
  std::chrono::system_clock::time_point started_at;  // the server's start
};

// The exposition text, ending in a newline. Device samples carry the labels gpu (index),
// uuid and name; a device field the backend cannot report (an empty optional) has no sample.
// Lease samples carry job_id (and gpu, per device of the lease); a holder's use that cannot be
// measured (an empty DeviceUse optional) has no sample either, never a 0.
std::string render_metrics(const Snapshot& snapshot, const MetricsContext& context);

// A label value with `\`, `"` and newlines escaped, as the text format requires.
std::string escape_label_value(std::string_view value);

// A sample value in the text format: the shortest decimal that reads back exactly, and
// "+Inf", "-Inf", "NaN" for the special values.
std::string format_sample_value(double value);

// The version of the library this was built from ("0.1.0").
std::string_view build_version();

}  // namespace gpumgr::http
