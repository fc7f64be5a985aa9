#include "state/kind_history.h"

#include <sqlite3.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "gpumgr/units.h"
#include "state/sqlite_file.h"

namespace gpumgr::state {
namespace {

constexpr const char* kSchemaSql =
    "CREATE TABLE IF NOT EXISTS runs ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " kind TEXT NOT NULL,"
    " peak_bytes INTEGER,"  // NULL: the holder's use could not be measured
    " leased_bytes INTEGER NOT NULL,"
    " hold_s REAL NOT NULL,"
    " overused INTEGER NOT NULL,"
    " failed INTEGER NOT NULL,"
    " ended_at INTEGER NOT NULL"  // unix seconds
    ");"
    "CREATE INDEX IF NOT EXISTS runs_kind_id ON runs(kind, id);";

// The nearest-rank index of quantile q among n > 0 sorted values. The small epsilon keeps
// q * n from landing just above an integer through rounding (0.07 * 100 = 7.000000000000001).
std::size_t rank_index(std::size_t n, double q) {
  if (!(q > 0)) return 0;
  if (q >= 1) return n - 1;
  const double rank = std::ceil(q * static_cast<double>(n) - 1e-9);
  if (rank < 1) return 0;
  return std::min(n - 1, static_cast<std::size_t>(rank) - 1);
}

std::uint64_t nearest_rank_bytes(std::vector<std::uint64_t> values, double q) {
  std::sort(values.begin(), values.end());
  return values[rank_index(values.size(), q)];
}

// ceil(bytes * (100 + margin) / 100), rounded up to a MiB, exactly; saturates.
std::uint64_t with_margin_mib(std::uint64_t bytes) {
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max() / kMiB * kMiB;
  constexpr auto m = static_cast<std::uint64_t>(kEstimateMarginPercent);
  if (bytes >= kMax) return kMax;
  // bytes * m / 100 = whole * m + rest * m / 100, so that nothing overflows on the way.
  const std::uint64_t whole = bytes / 100, rest = bytes % 100;
  if (m > 0 && whole > (kMax - bytes) / m) return kMax;
  const std::uint64_t extra = whole * m + (rest * m + 99) / 100;
  if (extra > kMax - bytes) return kMax;
  const std::uint64_t with = bytes + extra;
  const std::uint64_t mib = (with + kMiB - 1) / kMiB * kMiB;
  return std::max(mib, kMiB);  // a lease of 0 bytes is not a lease
}

std::string plural(std::uint64_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

// The history's file, as sqlite_file.h opens it. PRAGMA application_id marks it as ours
// ("gpmh"); PRAGMA user_version is the schema.
constexpr DatabaseSpec kHistoryFile{
    "history database",
    "not a gpumgr history",
    0x67706d68,
    1,
    kSchemaSql,
    "SELECT id, kind, peak_bytes, leased_bytes, hold_s, overused, failed, ended_at FROM runs "
    "LIMIT 0"};

std::string db_error(sqlite3* db, const std::string& path, const std::string& what) {
  return database_error(db, kHistoryFile, path, what);
}

}  // namespace

std::optional<double> nearest_rank(std::vector<double> values, double q) {
  std::erase_if(values, [](double v) { return std::isnan(v); });
  if (values.empty()) return std::nullopt;
  std::sort(values.begin(), values.end());
  return values[rank_index(values.size(), q)];
}

KindEstimate summarize_kind(std::string_view kind, std::span<const KindRun> runs) {
  KindEstimate e;
  e.kind = std::string(kind);
  e.runs = runs.size();
  for (const KindRun& r : runs) e.overused_runs += r.overused ? 1 : 0;
  if (!runs.empty()) e.last_seen = runs.back().ended_at;

  const std::span<const KindRun> window =
      runs.subspan(runs.size() - std::min(runs.size(), kEstimateWindow));
  std::vector<std::uint64_t> peaks;
  std::vector<double> holds;
  for (const KindRun& r : window) {
    if (r.peak_bytes) peaks.push_back(*r.peak_bytes);
    holds.push_back(r.hold_s);
  }
  e.measured_runs = peaks.size();
  e.hold_p50_s = nearest_rank(holds, 0.5);
  e.hold_p95_s = nearest_rank(holds, 0.95);
  if (!peaks.empty()) {
    e.peak_p50_bytes = nearest_rank_bytes(peaks, 0.5);
    e.peak_p95_bytes = nearest_rank_bytes(peaks, 0.95);
    e.peak_max_bytes = *std::max_element(peaks.begin(), peaks.end());
  }
  const std::string quoted = "'" + e.kind + "'";
  if (peaks.size() >= kEstimateMinRuns) {
    e.estimate_bytes = with_margin_mib(*e.peak_p95_bytes);
    e.estimate_note = "learned from " + plural(peaks.size(), "run", "runs") + ": p95 " +
                      format_bytes(*e.peak_p95_bytes) + " + " +
                      std::to_string(kEstimateMarginPercent) + "%";
  } else {
    e.estimate_note = "kind " + quoted + " has " +
                      plural(peaks.size(), "measured run", "measured runs") + "; " +
                      std::to_string(kEstimateMinRuns) + " are needed for an estimate";
    if (const std::size_t unmeasured = window.size() - peaks.size(); unmeasured > 0) {
      e.estimate_note +=
          " (" + plural(unmeasured, "recent run", "recent runs") + " had no measured peak)";
    }
  }
  return e;
}

StatusOr<std::unique_ptr<KindHistory>> KindHistory::open(const std::string& path,
                                                         std::string* note) {
  auto db = open_database(path, kHistoryFile, note);
  if (!db.ok()) return db.status();
  return std::unique_ptr<KindHistory>(new KindHistory(path, *db));
}

KindHistory::KindHistory(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}

KindHistory::~KindHistory() {
  MutexLock lock(mutex_);
  sqlite3_close_v2(db_);
}

Status KindHistory::record(const KindRun& run) {
  if (run.kind.empty()) return InvalidArgument("a run's kind must not be empty");
  if (!std::isfinite(run.hold_s) || run.hold_s < 0) {
    return InvalidArgument("a run's hold time must be a non-negative number, got " +
                           std::to_string(run.hold_s));
  }
  const auto ended =
      std::chrono::duration_cast<std::chrono::seconds>(run.ended_at.time_since_epoch()).count();
  MutexLock lock(mutex_);
  Stmt st;
  int rc = sqlite3_prepare_v2(db_,
                              "INSERT INTO runs (kind, peak_bytes, leased_bytes, hold_s, "
                              "overused, failed, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                              -1, st.out(), nullptr);
  if (rc != SQLITE_OK) return Unavailable(db_error(db_, path_, "recording a run"));
  sqlite3_bind_text(st.get(), 1, run.kind.data(), static_cast<int>(run.kind.size()),
                    SQLITE_TRANSIENT);
  if (run.peak_bytes) {
    sqlite3_bind_int64(st.get(), 2, to_db_int(*run.peak_bytes));
  } else {
    sqlite3_bind_null(st.get(), 2);
  }
  sqlite3_bind_int64(st.get(), 3, to_db_int(run.leased_bytes));
  sqlite3_bind_double(st.get(), 4, run.hold_s);
  sqlite3_bind_int(st.get(), 5, run.overused ? 1 : 0);
  sqlite3_bind_int(st.get(), 6, run.failed ? 1 : 0);
  sqlite3_bind_int64(st.get(), 7, static_cast<sqlite3_int64>(ended));
  rc = sqlite3_step(st.get());  // in autocommit mode: one transaction
  if (rc != SQLITE_DONE) return Unavailable(db_error(db_, path_, "recording a run"));
  return Status::Ok();
}

StatusOr<std::vector<KindRun>> KindHistory::runs_locked(std::string_view kind, std::size_t limit) {
  Stmt st;
  int rc = sqlite3_prepare_v2(db_,
                              "SELECT peak_bytes, leased_bytes, hold_s, overused, failed, ended_at "
                              "FROM runs WHERE kind = ? ORDER BY id DESC LIMIT ?",
                              -1, st.out(), nullptr);
  if (rc != SQLITE_OK) return Unavailable(db_error(db_, path_, "reading runs"));
  sqlite3_bind_text(st.get(), 1, kind.data(), static_cast<int>(kind.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int64(st.get(), 2, static_cast<sqlite3_int64>(limit));
  std::vector<KindRun> runs;
  while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
    KindRun r;
    r.kind = std::string(kind);
    if (sqlite3_column_type(st.get(), 0) != SQLITE_NULL) {
      r.peak_bytes = from_db_int(sqlite3_column_int64(st.get(), 0));
    }
    r.leased_bytes = from_db_int(sqlite3_column_int64(st.get(), 1));
    r.hold_s = sqlite3_column_double(st.get(), 2);
    r.overused = sqlite3_column_int(st.get(), 3) != 0;
    r.failed = sqlite3_column_int(st.get(), 4) != 0;
    r.ended_at = std::chrono::system_clock::time_point(
        std::chrono::seconds(sqlite3_column_int64(st.get(), 5)));
    runs.push_back(std::move(r));
  }
  if (rc != SQLITE_DONE) return Unavailable(db_error(db_, path_, "reading runs"));
  std::reverse(runs.begin(), runs.end());
  return runs;
}

namespace {
struct Totals {
  std::string kind;
  std::uint64_t runs = 0;
  std::uint64_t overused = 0;
};
}  // namespace

// The window comes from runs_locked; the whole-history counts from one aggregate query, so
// that a long history is never loaded whole.
StatusOr<KindEstimate> KindHistory::estimate(std::string_view kind) {
  MutexLock lock(mutex_);
  Stmt st;
  if (sqlite3_prepare_v2(db_, "SELECT count(*), total(overused) FROM runs WHERE kind = ?", -1,
                         st.out(), nullptr) != SQLITE_OK) {
    return Unavailable(db_error(db_, path_, "reading runs"));
  }
  sqlite3_bind_text(st.get(), 1, kind.data(), static_cast<int>(kind.size()), SQLITE_TRANSIENT);
  if (sqlite3_step(st.get()) != SQLITE_ROW)
    return Unavailable(db_error(db_, path_, "reading runs"));
  const auto count = from_db_int(sqlite3_column_int64(st.get(), 0));
  const auto overused = static_cast<std::uint64_t>(sqlite3_column_double(st.get(), 1));
  if (count == 0) return NotFound("no history for kind '" + std::string(kind) + "'");
  auto window = runs_locked(kind, kEstimateWindow);
  if (!window.ok()) return window.status();
  KindEstimate e = summarize_kind(kind, *window);
  e.runs = count;
  e.overused_runs = overused;
  return e;
}

StatusOr<std::vector<KindEstimate>> KindHistory::all() {
  MutexLock lock(mutex_);
  Stmt st;
  if (sqlite3_prepare_v2(db_,
                         "SELECT kind, count(*), total(overused) FROM runs GROUP BY kind "
                         "ORDER BY kind",
                         -1, st.out(), nullptr) != SQLITE_OK) {
    return Unavailable(db_error(db_, path_, "listing kinds"));
  }
  std::vector<Totals> totals;
  int rc;
  while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(st.get(), 0));
    const int size = sqlite3_column_bytes(st.get(), 0);
    totals.push_back(
        Totals{std::string(text != nullptr ? text : "", static_cast<std::size_t>(size)),
               from_db_int(sqlite3_column_int64(st.get(), 1)),
               static_cast<std::uint64_t>(sqlite3_column_double(st.get(), 2))});
  }
  if (rc != SQLITE_DONE) return Unavailable(db_error(db_, path_, "listing kinds"));
  std::vector<KindEstimate> out;
  for (const Totals& t : totals) {
    auto window = runs_locked(t.kind, kEstimateWindow);
    if (!window.ok()) return window.status();
    KindEstimate e = summarize_kind(t.kind, *window);
    e.runs = t.runs;
    e.overused_runs = t.overused;
    out.push_back(std::move(e));
  }
  return out;
}

Status KindHistory::forget(std::string_view kind) {
  MutexLock lock(mutex_);
  Stmt st;
  if (sqlite3_prepare_v2(db_, "DELETE FROM runs WHERE kind = ?", -1, st.out(), nullptr) !=
      SQLITE_OK) {
    return Unavailable(db_error(db_, path_, "forgetting a kind"));
  }
  sqlite3_bind_text(st.get(), 1, kind.data(), static_cast<int>(kind.size()), SQLITE_TRANSIENT);
  if (sqlite3_step(st.get()) != SQLITE_DONE) {
    return Unavailable(db_error(db_, path_, "forgetting a kind"));
  }
  if (sqlite3_changes(db_) == 0) return NotFound("no history for kind '" + std::string(kind) + "'");
  return Status::Ok();
}

StatusOr<std::vector<double>> KindHistory::recent_hold_times(std::string_view kind) {
  MutexLock lock(mutex_);
  auto window = runs_locked(kind, kEstimateWindow);
  if (!window.ok()) return window.status();
  std::vector<double> out;
  out.reserve(window->size());
  for (const KindRun& r : *window) out.push_back(r.hold_s);
  return out;
}

}  // namespace gpumgr::state
