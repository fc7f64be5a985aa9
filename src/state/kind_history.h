// KindHistory: the persistent record of finished leases per job kind (their measured peaks
// and hold times), and the learned estimate it gives (docs/accounting.md, "Learned
// estimates"). Kept in a SQLite database in WAL mode, so that a crash of the daemon in the
// middle of a write loses at most that one run and never corrupts what was recorded before.
//
// Every method may be called from any thread: the database connection is guarded by a mutex.
// Calls do file I/O: callers keep them off their own locks.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gpumgr/ledger.h"
#include "gpumgr/status.h"
#include "util/thread_annotations.h"

struct sqlite3;

namespace gpumgr::state {

// The estimate rule, documented in docs/accounting.md: the p95 (nearest rank) of the last
// kEstimateWindow measured peaks, plus kEstimateMarginPercent, rounded up to a MiB, once at
// least kEstimateMinRuns runs were measured.
inline constexpr std::size_t kEstimateWindow = 50;
inline constexpr std::size_t kEstimateMinRuns = 5;
inline constexpr int kEstimateMarginPercent = 10;

// One finished lease of a kind.
struct KindRun {
  std::string kind;
  // The most its holder used on any one of its devices during the lease (leases are per
  // device); empty where the backend could not attribute memory to the holder.
  std::optional<std::uint64_t> peak_bytes;
  std::uint64_t leased_bytes = 0;  // per device
  double hold_s = 0;
  bool overused = false;  // the holder exceeded its lease (beyond the tolerance)
  bool failed = false;
  std::chrono::system_clock::time_point ended_at;
};

// The nearest-rank quantile q (0 < q <= 1) of `values` (which it sorts); empty for none.
std::optional<double> nearest_rank(std::vector<double> values, double q);

// Summarises a kind's runs, oldest first: the whole history counts toward `runs`,
// `overused_runs` and `last_seen`; the last kEstimateWindow runs give the quantiles and the
// estimate.
KindEstimate summarize_kind(std::string_view kind, std::span<const KindRun> runs);

class KindHistory {
 public:
  // Opens the database at `path`, creating it (and its tables) if missing. A file that is
  // not a readable gpumgr history (corrupt, or another program's) is moved aside to
  // `path.corrupt-<unix seconds>` and a new one started; `note` (if given) then says so,
  // naming both paths. kFailedPrecondition when the folder is missing or not writable.
  static StatusOr<std::unique_ptr<KindHistory>> open(const std::string& path,
                                                     std::string* note = nullptr);
  ~KindHistory();
  KindHistory(const KindHistory&) = delete;
  KindHistory& operator=(const KindHistory&) = delete;

  const std::string& path() const { return path_; }

  // Appends one run (one transaction).
  Status record(const KindRun& run);
  // What the history says of one kind; kNotFound when it has no runs.
  StatusOr<KindEstimate> estimate(std::string_view kind);
  // Every kind, in name order.
  StatusOr<std::vector<KindEstimate>> all();
  // Deletes a kind's runs; kNotFound when it has none.
  Status forget(std::string_view kind);
  // The hold times of a kind's last kEstimateWindow runs, oldest first (for duration-aware
  // scheduling); empty for an unknown kind.
  StatusOr<std::vector<double>> recent_hold_times(std::string_view kind);

 private:
  KindHistory(std::string path, sqlite3* db);
  StatusOr<std::vector<KindRun>> runs_locked(std::string_view kind, std::size_t limit)
      REQUIRES(mutex_);

  const std::string path_;
  Mutex mutex_;
  sqlite3* db_ GUARDED_BY(mutex_);
};

}  // namespace gpumgr::state
