// Opening the daemon's SQLite files (the history of job kinds, the lease journal) the same
// careful way: WAL mode, created private (0600), recognised by their application id and
// schema version, and a file that is corrupt or another program's moved aside to
// `path.corrupt-<unix seconds>` rather than used or deleted.
//
// The functions may be called from any thread; a returned connection is its owner's to
// guard (SQLite connections are not shared between threads here).
#pragma once

#include <cstdint>
#include <limits>
#include <string>

#include "gpumgr/status.h"

struct sqlite3;
struct sqlite3_stmt;

namespace gpumgr::state {

// What a file is: how its messages name it and how it is recognised.
struct DatabaseSpec {
  // How messages name the file: "history database", "lease journal".
  const char* what = "";
  // What a file of another kind or version is called in the note ("not a gpumgr history").
  const char* foreign_name = "";
  int application_id = 0;  // PRAGMA application_id
  int schema_version = 0;  // PRAGMA user_version
  // Creates every table in an empty database (run in one transaction).
  const char* schema_sql = "";
  // A statement naming every column the code reads (e.g. "SELECT a, b FROM t LIMIT 0"):
  // a file of the right id whose tables lack them is treated as foreign.
  const char* shape_sql = "";
  // Upgrades a file of schema_version - 1 in place (run in one transaction with the new
  // user_version), so that an upgrade of gpumgr keeps what the file holds; null: such a
  // file is treated as foreign.
  const char* upgrade_sql = nullptr;
};

// Opens (creating if missing) the database at `path`. A file that is not a usable database
// of `spec` is moved aside and a new one started; `note` (if given) then says so, naming both
// paths ("the history database P was corrupt (...); moved it to Q and started a new one").
// kFailedPrecondition when the folder is missing or not writable or the path is not a regular
// file; kUnavailable when SQLite fails otherwise (busy, I/O), leaving the file alone.
StatusOr<sqlite3*> open_database(const std::string& path, const DatabaseSpec& spec,
                                 std::string* note = nullptr);

// "<what> <path>: <doing>: <sqlite's message>".
std::string database_error(sqlite3* db, const DatabaseSpec& spec, const std::string& path,
                           const std::string& doing);

// A prepared statement, finalised on scope exit.
class Stmt {
 public:
  Stmt() = default;
  ~Stmt();
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  sqlite3_stmt** out() { return &stmt_; }
  sqlite3_stmt* get() const { return stmt_; }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

// SQLite integers are signed 64-bit: sizes above that saturate, negatives read as 0.
inline std::int64_t to_db_int(std::uint64_t v) {
  return static_cast<std::int64_t>(
      v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())
          ? static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())
          : v);
}
inline std::uint64_t from_db_int(std::int64_t v) {
  return v < 0 ? 0 : static_cast<std::uint64_t>(v);
}

}  // namespace gpumgr::state
