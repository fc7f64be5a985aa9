#include "state/kind_history.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "gpumgr/units.h"

namespace gpumgr::state {
namespace {

// PRAGMA application_id marks the file as ours ("gpmh"); PRAGMA user_version is the schema.
constexpr int kApplicationId = 0x67706d68;
constexpr int kSchemaVersion = 1;
constexpr int kBusyTimeoutMs = 5000;

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

std::int64_t to_db_int(std::uint64_t v) {
  return static_cast<std::int64_t>(
      std::min<std::uint64_t>(v, std::numeric_limits<std::int64_t>::max()));
}

std::uint64_t from_db_int(std::int64_t v) { return v < 0 ? 0 : static_cast<std::uint64_t>(v); }

// A prepared statement, finalised on scope exit.
class Stmt {
 public:
  Stmt() = default;
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  sqlite3_stmt** out() { return &stmt_; }
  sqlite3_stmt* get() const { return stmt_; }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

bool is_corruption(int rc) {
  const int primary = rc & 0xff;
  return primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT || primary == SQLITE_FORMAT;
}

std::string db_error(sqlite3* db, const std::string& path, const std::string& what) {
  return "history database " + path + ": " + what + ": " + sqlite3_errmsg(db);
}

// What opening found: a usable database, a file to move aside (why), or a hard failure.
struct Probe {
  enum class Kind { kOk, kBad, kFailed } kind = Kind::kOk;
  std::string why;
  bool foreign = false;  // a valid database, but not a gpumgr history this version reads
  Status status;
};

Probe bad(std::string why) { return Probe{Probe::Kind::kBad, std::move(why), false, {}}; }
Probe foreign(std::string why) { return Probe{Probe::Kind::kBad, std::move(why), true, {}}; }
Probe failed(Status s) { return Probe{Probe::Kind::kFailed, {}, false, std::move(s)}; }

// Runs one statement that returns a single integer.
int query_int(sqlite3* db, const char* sql, int* rc) {
  Stmt st;
  *rc = sqlite3_prepare_v2(db, sql, -1, st.out(), nullptr);
  if (*rc != SQLITE_OK) return 0;
  *rc = sqlite3_step(st.get());
  if (*rc != SQLITE_ROW) return 0;
  const int v = sqlite3_column_int(st.get(), 0);
  *rc = SQLITE_OK;
  return v;
}

// A failure at step `what`: corruption means moving aside, anything else (busy, I/O,
// permission) is an error that leaves the file alone.
Probe classify(sqlite3* db, int rc, const std::string& path, const std::string& what) {
  if (is_corruption(rc)) return bad(sqlite3_errmsg(db));
  return failed(Unavailable(db_error(db, path, what)));
}

// Sets the connection up, checks that the file is a gpumgr history, and creates the schema
// in a database that has none.
Probe probe(sqlite3* db, const std::string& path) {
  sqlite3_busy_timeout(db, kBusyTimeoutMs);
  char* err = nullptr;
  int rc = sqlite3_exec(db, "PRAGMA journal_mode=WAL", nullptr, nullptr, &err);
  sqlite3_free(err);
  if (rc != SQLITE_OK) return classify(db, rc, path, "setting WAL mode");
  rc = sqlite3_exec(db, "PRAGMA synchronous=NORMAL", nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return classify(db, rc, path, "setting synchronous mode");

  {
    Stmt check;
    rc = sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, check.out(), nullptr);
    if (rc != SQLITE_OK) return classify(db, rc, path, "checking it");
    rc = sqlite3_step(check.get());
    if (rc != SQLITE_ROW) return classify(db, rc, path, "checking it");
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(check.get(), 0));
    const std::string result = text != nullptr ? text : "";
    if (result != "ok") return bad("integrity check: " + result);
  }

  const int app_id = query_int(db, "PRAGMA application_id", &rc);
  if (rc != SQLITE_OK) return classify(db, rc, path, "reading its application id");
  const int version = query_int(db, "PRAGMA user_version", &rc);
  if (rc != SQLITE_OK) return classify(db, rc, path, "reading its schema version");
  const int objects = query_int(db, "SELECT count(*) FROM sqlite_master", &rc);
  if (rc != SQLITE_OK) return classify(db, rc, path, "listing its tables");

  if (app_id == 0 && version == 0 && objects == 0) {
    // New (or empty) file: create the schema in one transaction, so that a crash leaves
    // either nothing or everything.
    const std::string sql = std::string("BEGIN IMMEDIATE;") + kSchemaSql +
                            "PRAGMA application_id=" + std::to_string(kApplicationId) +
                            ";PRAGMA user_version=" + std::to_string(kSchemaVersion) + ";COMMIT;";
    rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      return classify(db, rc, path, "creating its tables");
    }
    return {};
  }
  if (app_id != kApplicationId) {
    Stmt names;
    std::string tables;
    if (sqlite3_prepare_v2(db, "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name",
                           -1, names.out(), nullptr) == SQLITE_OK) {
      while (sqlite3_step(names.get()) == SQLITE_ROW) {
        const auto* n = reinterpret_cast<const char*>(sqlite3_column_text(names.get(), 0));
        tables += (tables.empty() ? "" : ", ") + std::string(n != nullptr ? n : "");
      }
    }
    return foreign("another program's database: tables " + (tables.empty() ? "none" : tables) +
                   ", application id " + std::to_string(app_id));
  }
  if (version != kSchemaVersion) {
    return foreign("schema version " + std::to_string(version) + ", this gpumgr reads version " +
                   std::to_string(kSchemaVersion));
  }
  Stmt columns;
  rc = sqlite3_prepare_v2(db,
                          "SELECT id, kind, peak_bytes, leased_bytes, hold_s, overused, failed, "
                          "ended_at FROM runs LIMIT 0",
                          -1, columns.out(), nullptr);
  if (rc != SQLITE_OK) {
    if ((rc & 0xff) == SQLITE_ERROR) {
      return foreign(std::string("unexpected tables: ") + sqlite3_errmsg(db));
    }
    return classify(db, rc, path, "reading its schema");
  }
  return {};
}

// Moves `path` (and its WAL side files) aside to a fresh name; returns that name.
StatusOr<std::string> move_aside(const std::string& path) {
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  std::string target = path + ".corrupt-" + std::to_string(now);
  for (int i = 1; ::access(target.c_str(), F_OK) == 0; ++i) {
    target = path + ".corrupt-" + std::to_string(now) + "." + std::to_string(i);
  }
  if (::rename(path.c_str(), target.c_str()) != 0) {
    return Status(ErrorCode::kFailedPrecondition, "history database " + path +
                                                      " is unusable and could not be moved to " +
                                                      target + ": " + std::strerror(errno));
  }
  for (const char* side : {"-wal", "-shm", "-journal"}) {
    const std::string from = path + side;
    if (::rename(from.c_str(), (target + side).c_str()) != 0 && errno != ENOENT) {
      ::unlink(from.c_str());  // a stale side file must not be applied to the new database
    }
  }
  return target;
}

Status check_folder(const std::string& path) {
  std::string folder = std::filesystem::path(path).parent_path().string();
  if (folder.empty()) folder = ".";
  struct stat st {};
  if (::stat(folder.c_str(), &st) != 0) {
    return Status(ErrorCode::kFailedPrecondition,
                  "cannot open the history database " + path + ": its folder " + folder + " " +
                      (errno == ENOENT ? "does not exist" : std::strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status(ErrorCode::kFailedPrecondition, "cannot open the history database " + path +
                                                      ": " + folder + " is a file, not a folder");
  }
  if (::faccessat(AT_FDCWD, folder.c_str(), W_OK | X_OK, AT_EACCESS) != 0) {
    return Status(ErrorCode::kFailedPrecondition,
                  "cannot open the history database " + path + ": its folder " + folder +
                      " is not writable (" + std::strerror(errno) + ")");
  }
  return Status::Ok();
}

// Whether a non-empty file starts with SQLite's header. Checked before SQLite opens it:
// SQLite would otherwise take a stale -wal file next to a damaged one as its own and delete
// it on close.
bool has_sqlite_header(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;  // missing or unreadable: SQLite says which
  char header[16] = {};
  const ssize_t n = ::read(fd, header, sizeof header);
  ::close(fd);
  if (n <= 0) return true;  // empty: a new database; a failed read: SQLite says why
  return n == static_cast<ssize_t>(sizeof header) &&
         std::memcmp(header, "SQLite format 3", sizeof header) == 0;
}

// Creates the file with mode 0600 if it is missing (SQLite would use 0644); its WAL side
// files take the same mode.
Status create_private(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    ::close(fd);
    return Status::Ok();
  }
  if (errno == EEXIST) return Status::Ok();
  return Status(ErrorCode::kFailedPrecondition,
                "cannot create the history database " + path + ": " + std::strerror(errno));
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
  if (note != nullptr) note->clear();
  if (path.empty()) {
    return Status(ErrorCode::kFailedPrecondition, "no history database path given");
  }
  if (Status s = check_folder(path); !s.ok()) return s;
  if (struct stat st{}; ::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    return Status(ErrorCode::kFailedPrecondition,
                  "cannot open the history database " + path + ": it is not a regular file");
  }
  for (int attempt = 0;; ++attempt) {
    if (Status s = create_private(path); !s.ok()) return s;
    sqlite3* db = nullptr;
    Probe p;
    if (!has_sqlite_header(path)) {
      p = bad("file is not a database");
    } else {
      const int rc =
          sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
      if (rc == SQLITE_OK) {
        p = probe(db, path);
      } else if (db != nullptr) {
        p = classify(db, rc, path, "opening it");
      } else {
        p = failed(Unavailable("history database " + path + ": out of memory"));
      }
    }
    if (p.kind == Probe::Kind::kOk) return std::unique_ptr<KindHistory>(new KindHistory(path, db));
    sqlite3_close_v2(db);
    if (p.kind == Probe::Kind::kFailed) return p.status;
    if (attempt > 0) {
      return Status(ErrorCode::kInternal,
                    "history database " + path + ": a new database is unusable: " + p.why);
    }
    auto moved = move_aside(path);
    if (!moved.ok()) return moved.status();
    if (note != nullptr) {
      *note = "the history database " + path + " was " +
              (p.foreign ? "not a gpumgr history" : "corrupt") + " (" + p.why + "); moved it to " +
              *moved + " and started a new one";
    }
  }
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
