// Job traces for `gpumgr simulate`: the CSV format of docs/simulate.md, parsed into jobs.
//
// A trace is CSV with a header line. Columns `arrival_s,vram_mib,duration_s` are required;
// `gpus,priority,job_id,kind,preemptible,resident,user,model,model_vram_mib,load_s` are
// optional (defaults 1, 0, the 1-based data row number, no kind, 0, none, one anonymous user
// and no model). Columns
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
  // The model the job runs on (docs/simulate.md, "Models and residency"); empty: none. Its
  // weights take model_bytes on the job's device beside the job's own vram_bytes (its working
  // memory), and loading them takes load_s. Every job on one model gives the same two figures.
  std::string model;
  std::uint64_t model_bytes = 0;
  double load_s = 0;
};

// The longest model name: a model resident on device d is named "<model>@<d>" in the
// scheduler, whose resident names are at most 256 bytes.
inline constexpr std::size_t kMaxModelNameLength = 240;

// Parses a whole trace. Rejects: a missing or duplicated header column, rows with a field
// count different from the header's, numbers that do not parse, NaN or infinite values,
// negative arrival or duration, vram 0 (or rounding to 0 bytes) or beyond 2^53 bytes,
// gpus < 1, non-integer gpus or priority, duplicate job ids, a kind or a user with control
// characters or longer than 256 bytes; for models: a model name with control characters or
// longer than kMaxModelNameLength, a model without model_vram_mib (> 0) and load_s (>= 0), either
// of those without a model, one model given two sizes or two load times, and a job on a model
// that is preemptible, resident or on more than one GPU. Blank lines are skipped.
// Fields may be quoted ("a,b"); a quoted field may not span lines.
StatusOr<std::vector<TraceJob>> parse_trace(std::istream& in);

// Opens `path` and parses it; errors are prefixed with the path ("t.csv: line 3: ...").
// kNotFound when the file cannot be opened.
StatusOr<std::vector<TraceJob>> load_trace(const std::string& path);

}  // namespace gpumgr::sim
