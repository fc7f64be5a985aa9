// Job traces for `gpumgr simulate`: the CSV format of docs/simulate.md, parsed into jobs.
//
// A trace is CSV with a header line. Columns `arrival_s,vram_mib,duration_s` are required;
// `gpus,priority,job_id,kind,preemptible,resident,user` are optional (defaults 1, 0, the
// 1-based data row number, no kind, 0, none and one anonymous user). Columns
// may come in any order and unknown columns are ignored, so that converters can keep extra
// fields. Every error names the line (the header is line 1) and, where there is one, the column.
//
// Pure functions over their arguments: any thread may call them.
#pragma once

#include <cstdint>
#include <istream>
#include <string>
#include <vector>

#include "gpumgr/status.h"

namespace gpumgr::sim {

// One job of a trace, in file order.
struct TraceJob {
  std::string job_id;
  double arrival_s = 0;          // when the job asks for its lease, seconds from time 0
  std::uint64_t vram_bytes = 0;  // per device (a gpus=2 job holds this on each of two)
  double duration_s = 0;         // how long it holds the lease once granted
  int gpus = 1;
  int priority = 0;  // higher first, as in LeaseRequest
  std::string kind;  // LeaseRequest::kind; empty: none
  // Revocable leases (docs/simulate.md): a preemptible job revoked for a waiter starts over
  // (its work is lost); a resident holds its memory for its duration unless revoked first.
  bool preemptible = false;
  std::string resident;  // LeaseRequest::resident; empty: not resident
  std::string user;  // who submits it (fair share, per-user report); empty: the one anonymous user
};

// Parses a whole trace. Rejects: a missing or duplicated header column, rows with a field
// count different from the header's, numbers that do not parse, NaN or infinite values,
// negative arrival or duration, vram 0 (or rounding to 0 bytes) or beyond 2^53 bytes,
// gpus < 1, non-integer gpus or priority, duplicate job ids, a kind or a user with control
// characters or longer than 256 bytes. Blank lines are skipped.
// Fields may be quoted ("a,b"); a quoted field may not span lines.
StatusOr<std::vector<TraceJob>> parse_trace(std::istream& in);

// Opens `path` and parses it; errors are prefixed with the path ("t.csv: line 3: ...").
// kNotFound when the file cannot be opened.
StatusOr<std::vector<TraceJob>> load_trace(const std::string& path);

}  // namespace gpumgr::sim
