// A replay's per-job timeline as CSV (`gpumgr simulate --timeline FILE`): one row per job and
// policy, with the job's shape from the trace beside when it arrived, started and ended, so
// that waits can be broken down by size, GPU count, kind or user with any CSV tool
// (bench/wait_by_shape.py is one). Columns (docs/simulate.md):
//
//   policy,residency,job_id,user,kind,gpus,vram_mib,arrival_s,start_s,end_s,wait_s,devices,
//   loaded_model
//
// Times are seconds from the trace's time 0 in the shortest form that reads back to the same
// double; `devices` lists the job's devices separated by spaces; fields with a comma, a quote
// or a line break are quoted (RFC 4180), so job ids, kinds and users come out as the trace
// had them.
//
// Pure functions over their arguments: any thread may call them.
#pragma once

#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "sim/replay.h"
#include "sim/trace.h"

namespace gpumgr::sim {

// The header line, ending in a newline.
void write_timeline_header(std::ostream& out);

// The rows of `report` (replayed from `jobs`, whose timeline it still holds: one SimJob per
// job, in trace order). A report whose timeline does not match `jobs` writes nothing and
// returns false.
bool write_timeline_rows(std::ostream& out, const std::vector<TraceJob>& jobs,
                         const SimReport& report);

// `field` as a CSV field: as it is, or quoted with its quotes doubled where it needs quoting.
std::string csv_field(std::string_view field);

}  // namespace gpumgr::sim
