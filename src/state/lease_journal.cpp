#include "state/lease_journal.h"

#include <sqlite3.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstdio>
#include <filesystem>

#include "state/sqlite_file.h"

namespace gpumgr::state {
namespace {

// One table for both: a job is either a lease or a waiter. `seq` (the rowid) orders them:
// a waiter that becomes a lease is written again, so leases come in grant order too.
constexpr const char* kSchemaSql =
    "CREATE TABLE IF NOT EXISTS jobs ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " job_id TEXT NOT NULL UNIQUE,"
    " leased INTEGER NOT NULL,"  // 1: a lease (devices set), 0: a waiter
    " bytes INTEGER NOT NULL,"
    " gpus INTEGER NOT NULL,"
    " priority INTEGER NOT NULL,"
    " device INTEGER NOT NULL,"
    " command TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " default_bytes INTEGER NOT NULL,"
    " devices TEXT NOT NULL,"  // "0,2": the lease's devices, in order
    " token TEXT NOT NULL,"
    " estimate TEXT NOT NULL,"
    " pid INTEGER NOT NULL,"
    " uid INTEGER NOT NULL,"
    " start_ticks INTEGER NOT NULL,"
    " boot_id TEXT NOT NULL,"
    " requested_at INTEGER NOT NULL,"             // unix ns
    " granted_at INTEGER,"                        // unix ns; NULL for a waiter
    " deadline INTEGER,"                          // unix ns; NULL: none
    " holder_pid INTEGER NOT NULL DEFAULT 0,"     // LeaseRequest::holder_pid
    " allowed_devices TEXT NOT NULL DEFAULT '',"  // "0,2": LeaseRequest::allowed_devices
    " preemptible INTEGER NOT NULL DEFAULT 0,"    // revocable leases
    " resident TEXT NOT NULL DEFAULT '',"
    " revoke_grace REAL,"                        // seconds; NULL: the daemon's --revoke-grace
    " beside_resident TEXT NOT NULL DEFAULT ''"  // LeaseRequest::beside_resident
    ");";

// upgrades[i] takes version i + 1 to i + 2.
constexpr const char* kUpgrades[] = {
    // Version 1 had neither holder_pid nor allowed_devices.
    "ALTER TABLE jobs ADD COLUMN holder_pid INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN allowed_devices TEXT NOT NULL DEFAULT '';",
    // Version 2 had no revocable leases.
    "ALTER TABLE jobs ADD COLUMN preemptible INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE jobs ADD COLUMN resident TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE jobs ADD COLUMN revoke_grace REAL;",
    // Version 3 had no requests beside a resident.
    "ALTER TABLE jobs ADD COLUMN beside_resident TEXT NOT NULL DEFAULT '';",
};

// PRAGMA application_id "gpmj".
constexpr DatabaseSpec kJournalFile{
    "lease journal",
    "not a gpumgr lease journal",
    0x67706d6a,
    4,
    kSchemaSql,
    "SELECT seq, job_id, leased, bytes, gpus, priority, device, command, kind, default_bytes, "
    "devices, token, estimate, pid, uid, start_ticks, boot_id, requested_at, granted_at, "
    "deadline, holder_pid, allowed_devices, preemptible, resident, revoke_grace, "
    "beside_resident FROM jobs LIMIT 0",
    kUpgrades};

constexpr const char* kInsertSql =
    "INSERT INTO jobs (job_id, leased, bytes, gpus, priority, device, command, kind, "
    "default_bytes, devices, token, estimate, pid, uid, start_ticks, boot_id, requested_at, "
    "granted_at, deadline, holder_pid, allowed_devices, preemptible, resident, revoke_grace, "
    "beside_resident) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";

void bind_text(sqlite3_stmt* st, int column, const std::string& text) {
  sqlite3_bind_text(st, column, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
}

std::string column_text(sqlite3_stmt* st, int column) {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(st, column));
  const int size = sqlite3_column_bytes(st, column);
  return std::string(text != nullptr ? text : "", static_cast<std::size_t>(size));
}

std::string device_list(const std::vector<int>& devices) {
  std::string out;
  for (const int d : devices) out += (out.empty() ? "" : ",") + std::to_string(d);
  return out;
}

// "0,2" back into devices; a field that is not a device index makes the record unusable.
std::optional<std::vector<int>> parse_devices(const std::string& text) {
  std::vector<int> out;
  std::size_t at = 0;
  while (at < text.size()) {
    const std::size_t comma = std::min(text.find(',', at), text.size());
    int d = -1;
    if (std::sscanf(text.substr(at, comma - at).c_str(), "%d", &d) != 1 || d < 0) {
      return std::nullopt;
    }
    out.push_back(d);
    at = comma + 1;
  }
  return out;
}

}  // namespace

struct JournalRow {
  const LeaseRequest& request;
  bool leased;
  const std::vector<int>* devices;
  const std::string& token;
  const std::string& estimate;
  const ProcessIdentity& holder;
  std::int64_t requested_at;
  std::optional<std::int64_t> granted_at;
  std::optional<std::int64_t> deadline;
};

namespace {

void bind_row(sqlite3_stmt* st, const JournalRow& row) {
  const LeaseRequest& r = row.request;
  bind_text(st, 1, r.job_id);
  sqlite3_bind_int(st, 2, row.leased ? 1 : 0);
  sqlite3_bind_int64(st, 3, to_db_int(r.bytes));
  sqlite3_bind_int(st, 4, r.gpus);
  sqlite3_bind_int(st, 5, r.priority);
  sqlite3_bind_int(st, 6, r.device);
  bind_text(st, 7, r.command);
  bind_text(st, 8, r.kind);
  sqlite3_bind_int64(st, 9, to_db_int(r.default_bytes));
  bind_text(st, 10, row.devices != nullptr ? device_list(*row.devices) : std::string());
  bind_text(st, 11, row.token);
  bind_text(st, 12, row.estimate);
  sqlite3_bind_int64(st, 13, row.holder.pid);
  sqlite3_bind_int64(st, 14, row.holder.uid);
  sqlite3_bind_int64(st, 15, to_db_int(row.holder.start_ticks));
  bind_text(st, 16, row.holder.boot_id);
  sqlite3_bind_int64(st, 17, row.requested_at);
  if (row.granted_at) {
    sqlite3_bind_int64(st, 18, *row.granted_at);
  } else {
    sqlite3_bind_null(st, 18);
  }
  if (row.deadline) {
    sqlite3_bind_int64(st, 19, *row.deadline);
  } else {
    sqlite3_bind_null(st, 19);
  }
  sqlite3_bind_int64(st, 20, r.holder_pid);
  bind_text(st, 21, device_list(r.allowed_devices));
  sqlite3_bind_int(st, 22, r.preemptible ? 1 : 0);
  bind_text(st, 23, r.resident);
  if (r.revoke_grace_s) {
    sqlite3_bind_double(st, 24, *r.revoke_grace_s);
  } else {
    sqlite3_bind_null(st, 24);
  }
  bind_text(st, 25, r.beside_resident);
}

}  // namespace

std::string journal_path(const std::string& state_dir, const std::string& socket_path) {
  std::error_code ec;
  std::string absolute = std::filesystem::absolute(socket_path, ec).lexically_normal().string();
  if (ec) absolute = socket_path;
  char name[40];
  std::snprintf(name, sizeof name, "leases-%016llx.db",
                static_cast<unsigned long long>(XXH3_64bits(absolute.data(), absolute.size())));
  return state_dir + "/" + name;
}

StatusOr<std::unique_ptr<LeaseJournal>> LeaseJournal::open(const std::string& path,
                                                           std::string* note) {
  auto db = open_database(path, kJournalFile, note);
  if (!db.ok()) return db.status();
  std::unique_ptr<LeaseJournal> journal(new LeaseJournal(path, *db));
  MutexLock lock(journal->mutex_);
  if (Status s = journal->prepare_locked(); !s.ok()) return s;
  return journal;
}

LeaseJournal::LeaseJournal(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}

LeaseJournal::~LeaseJournal() {
  MutexLock lock(mutex_);
  statements_.reset();  // finalised before the connection closes
  sqlite3_close_v2(db_);
}

Status LeaseJournal::exec_locked(const char* sql, const char* doing) {
  if (sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) != SQLITE_OK) {
    return Unavailable(database_error(db_, kJournalFile, path_, doing));
  }
  return Status::Ok();
}

StatusOr<JournalContents> LeaseJournal::load() {
  MutexLock lock(mutex_);
  Stmt st;
  if (sqlite3_prepare_v2(db_,
                         "SELECT job_id, leased, bytes, gpus, priority, device, command, kind, "
                         "default_bytes, devices, token, estimate, pid, uid, start_ticks, "
                         "boot_id, requested_at, granted_at, deadline, holder_pid, "
                         "allowed_devices, preemptible, resident, revoke_grace, "
                         "beside_resident FROM jobs ORDER BY seq",
                         -1, st.out(), nullptr) != SQLITE_OK) {
    return Unavailable(database_error(db_, kJournalFile, path_, "reading it"));
  }
  JournalContents out;
  int rc;
  while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
    sqlite3_stmt* s = st.get();
    LeaseRequest r;
    r.job_id = column_text(s, 0);
    const bool leased = sqlite3_column_int(s, 1) != 0;
    r.bytes = from_db_int(sqlite3_column_int64(s, 2));
    r.gpus = sqlite3_column_int(s, 3);
    r.priority = sqlite3_column_int(s, 4);
    r.device = sqlite3_column_int(s, 5);
    r.command = column_text(s, 6);
    r.kind = column_text(s, 7);
    r.default_bytes = from_db_int(sqlite3_column_int64(s, 8));
    r.holder_pid = static_cast<std::uint32_t>(sqlite3_column_int64(s, 19));
    auto allowed = parse_devices(column_text(s, 20));
    if (!allowed) {
      return Status(ErrorCode::kInternal, "lease journal " + path_ + ": job '" + r.job_id +
                                              "' has an unreadable list of allowed devices");
    }
    r.allowed_devices = std::move(*allowed);
    r.preemptible = sqlite3_column_int(s, 21) != 0;
    r.resident = column_text(s, 22);
    if (sqlite3_column_type(s, 23) != SQLITE_NULL) r.revoke_grace_s = sqlite3_column_double(s, 23);
    r.beside_resident = column_text(s, 24);
    ProcessIdentity holder;
    holder.pid = static_cast<std::uint32_t>(sqlite3_column_int64(s, 12));
    holder.uid = static_cast<std::uint32_t>(sqlite3_column_int64(s, 13));
    holder.start_ticks = from_db_int(sqlite3_column_int64(s, 14));
    holder.boot_id = column_text(s, 15);
    const std::int64_t requested_at = sqlite3_column_int64(s, 16);
    if (leased) {
      JournaledLease l;
      auto devices = parse_devices(column_text(s, 9));
      if (!devices || devices->empty()) {
        return Status(ErrorCode::kInternal, "lease journal " + path_ + ": job '" + r.job_id +
                                                "' has no readable device list");
      }
      l.devices = std::move(*devices);
      l.token = column_text(s, 10);
      l.estimate = column_text(s, 11);
      l.holder = std::move(holder);
      l.requested_at_unix_ns = requested_at;
      l.granted_at_unix_ns = sqlite3_column_int64(s, 17);
      l.request = std::move(r);
      out.leases.push_back(std::move(l));
    } else {
      JournaledWaiter w;
      w.token = column_text(s, 10);
      w.holder = std::move(holder);
      w.requested_at_unix_ns = requested_at;
      if (sqlite3_column_type(s, 18) != SQLITE_NULL)
        w.deadline_unix_ns = sqlite3_column_int64(s, 18);
      w.request = std::move(r);
      out.waiters.push_back(std::move(w));
    }
  }
  if (rc != SQLITE_DONE) return Unavailable(database_error(db_, kJournalFile, path_, "reading it"));
  return out;
}

// Statements prepared once, at open: the journal is written at every grant and release.
struct LeaseJournal::Statements {
  Stmt begin, commit, rollback, remove, insert;
};

Status LeaseJournal::prepare_locked() {
  statements_ = std::make_unique<Statements>();
  const std::pair<Stmt*, const char*> all[] = {
      {&statements_->begin, "BEGIN IMMEDIATE"},
      {&statements_->commit, "COMMIT"},
      {&statements_->rollback, "ROLLBACK"},
      {&statements_->remove, "DELETE FROM jobs WHERE job_id = ?"},
      {&statements_->insert, kInsertSql}};
  for (const auto& [stmt, sql] : all) {
    if (sqlite3_prepare_v2(db_, sql, -1, stmt->out(), nullptr) != SQLITE_OK) {
      return Unavailable(database_error(db_, kJournalFile, path_, "preparing its statements"));
    }
  }
  return Status::Ok();
}

namespace {
// Runs a prepared statement to its end and makes it ready for the next use.
bool step_done(sqlite3_stmt* st) {
  const bool done = sqlite3_step(st) == SQLITE_DONE;
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return done;
}
}  // namespace

// One transaction: the job's earlier record goes, `row` is appended (so that the order of
// records is the order of grants and of queueing).
Status LeaseJournal::put_locked(const JournalRow& row, const char* doing) {
  Statements& st = *statements_;
  if (!step_done(st.begin.get())) {
    return Unavailable(database_error(db_, kJournalFile, path_, doing));
  }
  bind_text(st.remove.get(), 1, row.request.job_id);
  bool ok = step_done(st.remove.get());
  if (ok) {
    bind_row(st.insert.get(), row);
    ok = step_done(st.insert.get());
  }
  if (ok) ok = step_done(st.commit.get());
  if (!ok) {
    const Status failure = Unavailable(database_error(db_, kJournalFile, path_, doing));
    (void)step_done(st.rollback.get());
    return failure;
  }
  return Status::Ok();
}

Status LeaseJournal::put_lease(const JournaledLease& lease) {
  MutexLock lock(mutex_);
  return put_locked(
      JournalRow{lease.request, true, &lease.devices, lease.token, lease.estimate, lease.holder,
                 lease.requested_at_unix_ns, lease.granted_at_unix_ns, std::nullopt},
      "recording a lease");
}

Status LeaseJournal::put_waiter(const JournaledWaiter& waiter) {
  MutexLock lock(mutex_);
  const std::string no_estimate;
  return put_locked(
      JournalRow{waiter.request, false, nullptr, waiter.token, no_estimate, waiter.holder,
                 waiter.requested_at_unix_ns, std::nullopt, waiter.deadline_unix_ns},
      "recording a waiter");
}

Status LeaseJournal::remove(const std::string& job_id) {
  MutexLock lock(mutex_);
  bind_text(statements_->remove.get(), 1, job_id);
  if (!step_done(statements_->remove.get())) {
    return Unavailable(database_error(db_, kJournalFile, path_, "forgetting a job"));
  }
  return Status::Ok();
}

Status LeaseJournal::clear() {
  MutexLock lock(mutex_);
  return exec_locked("DELETE FROM jobs", "clearing it");
}

StatusOr<std::size_t> LeaseJournal::size() {
  MutexLock lock(mutex_);
  Stmt st;
  if (sqlite3_prepare_v2(db_, "SELECT count(*) FROM jobs", -1, st.out(), nullptr) != SQLITE_OK ||
      sqlite3_step(st.get()) != SQLITE_ROW) {
    return Unavailable(database_error(db_, kJournalFile, path_, "counting its records"));
  }
  return static_cast<std::size_t>(sqlite3_column_int64(st.get(), 0));
}

}  // namespace gpumgr::state
