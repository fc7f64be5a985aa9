// ServeSettings: every setting of `gpumgr serve`, with its default, and the one validation
// that both the command line and the configuration file (docs/config.md) go through.
//
// Each setting is a Field with a key in the file ([section] key), a command-line flag, and
// whether a reload (SIGHUP) may change it while the daemon runs. The settings the daemon runs
// with are the defaults, then the file's keys, then the flags given on the command line.
//
// Plain values and pure functions: any thread may call them.
#pragma once

#include <bitset>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gpumgr/ledger.h"

namespace gpumgr::config {

struct ServeSettings {
  // [daemon]
  std::string socket;  // empty: daemon::default_server_socket_path()
  std::string socket_group;
  std::string state_dir;  // empty: state::default_state_dir()
  double reattach_grace_s = 30;
  bool quiet = false;
  // [http]
  std::string http = "127.0.0.1:9400";
  bool no_http = false;  // `listen = false` or "" in the file, --no-http on the command line
  bool http_public = false;
  // [devices]
  std::string device = "auto";
  std::string simulate;
  double poll_interval_s = 0.25;
  // [limits]
  double memory_limit = 0.8;
  long long max_concurrent_jobs = 3;
  double revoke_grace_s = 30;  // seconds a revoked lease's holder has to release
  // [overuse]
  std::string on_overuse = "report";
  double overuse_grace_s = 10;
  double overuse_tolerance_percent = 5;
  // [clients]
  double hello_timeout_s = 5;
  long long max_connections_per_uid = 256;
  bool kill_orphans = false;
  double kill_orphans_grace_s = 5;
  // [scheduling]
  bool fair_share = true;
  double fair_share_half_life_s = 3600;
};

enum class Field {
  kSocket,
  kSocketGroup,
  kStateDir,
  kReattachGrace,
  kQuiet,
  kHttp,  // the address and whether there is HTTP at all (http, no_http)
  kHttpPublic,
  kDevice,
  kSimulate,
  kPollInterval,
  kMemoryLimit,
  kMaxConcurrentJobs,
  kRevokeGrace,
  kOnOveruse,
  kOveruseGrace,
  kOveruseTolerance,
  kHelloTimeout,
  kMaxConnectionsPerUid,
  kKillOrphans,
  kKillOrphansGrace,
  kFairShare,
  kFairShareHalfLife,
  kCount
};
inline constexpr std::size_t kFieldCount = static_cast<std::size_t>(Field::kCount);
using FieldSet = std::bitset<kFieldCount>;
inline std::size_t index_of(Field f) { return static_cast<std::size_t>(f); }

// What a key's value is in the file.
enum class ValueKind {
  kString,
  kBool,
  kInteger,
  kNumber,       // an integer or a float
  kHttpAddress,  // "HOST:PORT", or "" / false for none
  kDuration,     // seconds as a number, or a string with a unit: "90s", "30m", "1h", "2d"
};

// A duration as kDuration reads it ("1h", "30m", "90s", "2d", "1.5h", or a bare number of
// seconds), in seconds; kInvalidArgument naming the text otherwise.
StatusOr<double> parse_duration(std::string_view text);

struct FieldInfo {
  Field field;
  std::string_view section;  // the file's table: [daemon], [http], ...
  std::string_view key;      // the key in that table
  std::string_view flag;     // the command-line flag that overrides it
  ValueKind kind;
  // Whether a reload applies a new value while the daemon runs; the others keep their value
  // until the next start.
  bool reloadable;
};

// Every field, in the order of docs/config.md.
std::span<const FieldInfo> all_fields();
const FieldInfo& field_info(Field field);
// "limits.memory_limit".
std::string key_name(Field field);
// The field that [section] key names, or null.
const FieldInfo* find_field(std::string_view section, std::string_view key);
// The file's tables, in order.
std::span<const std::string_view> sections();

// A field's value as text, for the reload log ("0.8", "true", "'127.0.0.1:9400'", "none").
std::string value_text(const ServeSettings& settings, Field field);
// Copies one field's value (for kHttp, the address and no_http together).
void copy_field(ServeSettings& to, const ServeSettings& from, Field field);
// `base` with the fields in `given` taken from `overrides`: the command line over the file.
ServeSettings override_with(const ServeSettings& base, const ServeSettings& overrides,
                            const FieldSet& given);

// What is wrong with one field's value ("must be between 0.001 and 3600 seconds, got 0",
// phrased to follow the field's name); nullopt when it is valid.
std::optional<std::string> check_field(const ServeSettings& settings, Field field);

struct Problem {
  Field field;
  std::string reason;  // as check_field gives it
};
// The first invalid field, in all_fields() order; nullopt when every field is valid. The one
// validation of the daemon's settings: the flags and the file both go through it.
std::optional<Problem> validate_settings(const ServeSettings& settings);

// The ledger's part of valid settings (history_path is left empty: it comes from the state
// folder).
LedgerConfig to_ledger_config(const ServeSettings& settings);

// What a reload does with new settings: the reloadable fields take the new values; the
// others keep the running ones, and each such change is reported.
struct ReloadPlan {
  ServeSettings apply;               // what to run with now
  std::vector<std::string> changed;  // "limits.memory_limit: 0.5 -> 0.9"
  // "daemon.socket changed ('/a' -> '/b') but takes effect only at a restart; keeping '/a'"
  std::vector<std::string> kept;
};
ReloadPlan plan_reload(const ServeSettings& running, const ServeSettings& wanted);

}  // namespace gpumgr::config
