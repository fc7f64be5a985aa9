// The daemon's configuration file (/etc/gpumgr/gpumgr.toml, docs/config.md): reading it
// with toml++, and resolving what `gpumgr serve` runs with (defaults, then the file, then the
// flags given on the command line).
//
// Every error in a file names the file, the line and the column ("PATH:LINE:COLUMN: why"):
// a syntax error, an unknown table or key, a value of the wrong type, a value out of range.
// Pure functions of their arguments and the file system: any thread may call them.
#pragma once

#include <array>
#include <string>
#include <string_view>

#include "config/serve_settings.h"
#include "core/quota.h"
#include "gpumgr/status.h"

namespace gpumgr::config {

// Where the daemon looks for its file when --config is not given.
inline constexpr std::string_view kDefaultConfigPath = "/etc/gpumgr/gpumgr.toml";

struct SourcePosition {
  int line = 0;  // from 1; 0: unknown
  int column = 0;
};

struct ConfigFile {
  std::string path;
  ServeSettings settings;  // the defaults, with the file's keys over them
  // Where each key the file sets has its value (line 0 for keys it does not set).
  std::array<SourcePosition, kFieldCount> positions{};
  FieldSet present;  // the keys the file sets
  // The [quota.*] tables, users and groups resolved to ids (no command-line flags).
  core::QuotaConfig quotas;
};

// Parses a file's text. kInvalidArgument, "PATH:LINE:COLUMN: why", for anything wrong.
StatusOr<ConfigFile> parse_config_text(std::string_view text, const std::string& path);
// Reads and parses a file: kNotFound when it does not exist, kPermissionDenied or
// kInvalidArgument when it cannot be read.
StatusOr<ConfigFile> read_config_file(const std::string& path);

// Where the settings come from.
struct SettingsSources {
  std::string config_path;    // the file to read
  bool config_given = false;  // --config given: a missing file is an error, not the defaults
  ServeSettings flags;        // the command line's values
  FieldSet given;             // the flags given on the command line
};

struct ResolvedSettings {
  ServeSettings settings;
  bool from_file = false;    // false: no file at the default path, defaults and flags only
  core::QuotaConfig quotas;  // none without a file
};

// Defaults, the file (when it exists, or always when config_given), then the given flags,
// validated once more together. kNotFound for a missing --config file; kInvalidArgument with
// the file's position or the flag's name for an invalid value.
StatusOr<ResolvedSettings> resolve_settings(const SettingsSources& sources);

}  // namespace gpumgr::config
