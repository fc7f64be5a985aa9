#include "state/sqlite_file.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

namespace gpumgr::state {
namespace {

constexpr int kBusyTimeoutMs = 5000;

bool is_corruption(int rc) {
  const int primary = rc & 0xff;
  return primary == SQLITE_NOTADB || primary == SQLITE_CORRUPT || primary == SQLITE_FORMAT;
}

// What opening found: a usable database, a file to move aside (why), or a hard failure.
struct Probe {
  enum class Kind { kOk, kBad, kFailed } kind = Kind::kOk;
  std::string why;
  bool foreign = false;  // a valid database, but not one of `spec` this version reads
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

// A failure at step `doing`: corruption means moving aside, anything else (busy, I/O,
// permission) is an error that leaves the file alone.
Probe classify(sqlite3* db, int rc, const DatabaseSpec& spec, const std::string& path,
               const std::string& doing) {
  if (is_corruption(rc)) return bad(sqlite3_errmsg(db));
  return failed(Unavailable(database_error(db, spec, path, doing)));
}

// Sets the connection up, checks that the file is a database of `spec`, and creates the
// schema in a database that has none.
Probe probe(sqlite3* db, const DatabaseSpec& spec, const std::string& path) {
  sqlite3_busy_timeout(db, kBusyTimeoutMs);
  char* err = nullptr;
  int rc = sqlite3_exec(db, "PRAGMA journal_mode=WAL", nullptr, nullptr, &err);
  sqlite3_free(err);
  if (rc != SQLITE_OK) return classify(db, rc, spec, path, "setting WAL mode");
  // NORMAL in WAL mode: a committed transaction survives a crash of the process (it is in
  // the WAL file, which the next opener replays); only a power loss may lose the last ones.
  rc = sqlite3_exec(db, "PRAGMA synchronous=NORMAL", nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return classify(db, rc, spec, path, "setting synchronous mode");

  {
    Stmt check;
    rc = sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, check.out(), nullptr);
    if (rc != SQLITE_OK) return classify(db, rc, spec, path, "checking it");
    rc = sqlite3_step(check.get());
    if (rc != SQLITE_ROW) return classify(db, rc, spec, path, "checking it");
    const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(check.get(), 0));
    const std::string result = text != nullptr ? text : "";
    if (result != "ok") return bad("integrity check: " + result);
  }

  const int app_id = query_int(db, "PRAGMA application_id", &rc);
  if (rc != SQLITE_OK) return classify(db, rc, spec, path, "reading its application id");
  const int version = query_int(db, "PRAGMA user_version", &rc);
  if (rc != SQLITE_OK) return classify(db, rc, spec, path, "reading its schema version");
  const int objects = query_int(db, "SELECT count(*) FROM sqlite_master", &rc);
  if (rc != SQLITE_OK) return classify(db, rc, spec, path, "listing its tables");

  if (app_id == 0 && version == 0 && objects == 0) {
    // New (or empty) file: create the schema in one transaction, so that a crash leaves
    // either nothing or everything.
    const std::string sql = std::string("BEGIN IMMEDIATE;") + spec.schema_sql +
                            "PRAGMA application_id=" + std::to_string(spec.application_id) +
                            ";PRAGMA user_version=" + std::to_string(spec.schema_version) +
                            ";COMMIT;";
    rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      return classify(db, rc, spec, path, "creating its tables");
    }
    return {};
  }
  if (app_id != spec.application_id) {
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
  if (version == spec.schema_version - 1 && spec.upgrade_sql != nullptr) {
    const std::string sql = std::string("BEGIN IMMEDIATE;") + spec.upgrade_sql +
                            ";PRAGMA user_version=" + std::to_string(spec.schema_version) +
                            ";COMMIT;";
    rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      return classify(db, rc, spec, path, "upgrading its schema");
    }
  } else if (version != spec.schema_version) {
    return foreign("schema version " + std::to_string(version) + ", this gpumgr reads version " +
                   std::to_string(spec.schema_version));
  }
  Stmt columns;
  rc = sqlite3_prepare_v2(db, spec.shape_sql, -1, columns.out(), nullptr);
  if (rc != SQLITE_OK) {
    if ((rc & 0xff) == SQLITE_ERROR) {
      return foreign(std::string("unexpected tables: ") + sqlite3_errmsg(db));
    }
    return classify(db, rc, spec, path, "reading its schema");
  }
  return {};
}

// Moves `path` (and its WAL side files) aside to a fresh name; returns that name.
StatusOr<std::string> move_aside(const std::string& path, const DatabaseSpec& spec) {
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  std::string target = path + ".corrupt-" + std::to_string(now);
  for (int i = 1; ::access(target.c_str(), F_OK) == 0; ++i) {
    target = path + ".corrupt-" + std::to_string(now) + "." + std::to_string(i);
  }
  if (::rename(path.c_str(), target.c_str()) != 0) {
    return Status(ErrorCode::kFailedPrecondition, std::string(spec.what) + " " + path +
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

Status check_folder(const std::string& path, const DatabaseSpec& spec) {
  std::string folder = std::filesystem::path(path).parent_path().string();
  if (folder.empty()) folder = ".";
  const std::string cannot = std::string("cannot open the ") + spec.what + " " + path + ": ";
  struct stat st {};
  if (::stat(folder.c_str(), &st) != 0) {
    return Status(ErrorCode::kFailedPrecondition,
                  cannot + "its folder " + folder + " " +
                      (errno == ENOENT ? "does not exist" : std::strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return Status(ErrorCode::kFailedPrecondition, cannot + folder + " is a file, not a folder");
  }
  if (::faccessat(AT_FDCWD, folder.c_str(), W_OK | X_OK, AT_EACCESS) != 0) {
    return Status(
        ErrorCode::kFailedPrecondition,
        cannot + "its folder " + folder + " is not writable (" + std::strerror(errno) + ")");
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
Status create_private(const std::string& path, const DatabaseSpec& spec) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    ::close(fd);
    return Status::Ok();
  }
  if (errno == EEXIST) return Status::Ok();
  return Status(ErrorCode::kFailedPrecondition, std::string("cannot create the ") + spec.what +
                                                    " " + path + ": " + std::strerror(errno));
}

}  // namespace

Stmt::~Stmt() { sqlite3_finalize(stmt_); }

std::string database_error(sqlite3* db, const DatabaseSpec& spec, const std::string& path,
                           const std::string& doing) {
  return std::string(spec.what) + " " + path + ": " + doing + ": " + sqlite3_errmsg(db);
}

StatusOr<sqlite3*> open_database(const std::string& path, const DatabaseSpec& spec,
                                 std::string* note) {
  if (note != nullptr) note->clear();
  if (path.empty()) {
    return Status(ErrorCode::kFailedPrecondition, std::string("no ") + spec.what + " path given");
  }
  if (Status s = check_folder(path, spec); !s.ok()) return s;
  if (struct stat st{}; ::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    return Status(ErrorCode::kFailedPrecondition, std::string("cannot open the ") + spec.what +
                                                      " " + path + ": it is not a regular file");
  }
  for (int attempt = 0;; ++attempt) {
    if (Status s = create_private(path, spec); !s.ok()) return s;
    sqlite3* db = nullptr;
    Probe p;
    if (!has_sqlite_header(path)) {
      p = bad("file is not a database");
    } else {
      const int rc =
          sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
      if (rc == SQLITE_OK) {
        p = probe(db, spec, path);
      } else if (db != nullptr) {
        p = classify(db, rc, spec, path, "opening it");
      } else {
        p = failed(Unavailable(std::string(spec.what) + " " + path + ": out of memory"));
      }
    }
    if (p.kind == Probe::Kind::kOk) return db;
    sqlite3_close_v2(db);
    if (p.kind == Probe::Kind::kFailed) return p.status;
    if (attempt > 0) {
      return Status(ErrorCode::kInternal,
                    std::string(spec.what) + " " + path + ": a new database is unusable: " + p.why);
    }
    auto moved = move_aside(path, spec);
    if (!moved.ok()) return moved.status();
    if (note != nullptr) {
      *note = std::string("the ") + spec.what + " " + path + " was " +
              (p.foreign ? spec.foreign_name : "corrupt") + " (" + p.why + "); moved it to " +
              *moved + " and started a new one";
    }
  }
}

}  // namespace gpumgr::state
