#include "config/config_file.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "gpumgr/units.h"
#include "util/small_file.h"

namespace gpumgr::config {
namespace {

// A configuration file is a page of text; a bigger one is a mistake (a wrong path).
constexpr std::size_t kMaxFileBytes = 1 << 20;

std::string at(const std::string& path, SourcePosition pos) {
  if (pos.line <= 0) return path + ": ";
  return path + ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column) + ": ";
}

SourcePosition position(const toml::source_position& p) {
  return {static_cast<int>(p.line), static_cast<int>(p.column)};
}

std::string_view type_name(toml::node_type t) {
  switch (t) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

std::string_view wanted_name(ValueKind kind) {
  switch (kind) {
    case ValueKind::kString:
      return "a string";
    case ValueKind::kBool:
      return "true or false";
    case ValueKind::kInteger:
      return "an integer";
    case ValueKind::kNumber:
      return "a number";
    case ValueKind::kHttpAddress:
      return "an address (\"HOST:PORT\") or false";
    case ValueKind::kDuration:
      return "a duration (seconds, or a string such as \"1h\")";
  }
  return "a value";
}

std::string list_keys(std::string_view section) {
  std::string keys;
  for (const FieldInfo& f : all_fields()) {
    if (f.section != section) continue;
    if (!keys.empty()) keys += ", ";
    keys += f.key;
  }
  return keys;
}

std::string list_sections() {
  std::string out;
  for (std::string_view s : sections()) {
    if (!out.empty()) out += ", ";
    out += "[" + std::string(s) + "]";
  }
  return out + ", [quota.*]";
}

// Reads one key's value into `settings`; an error message (without position) when its type
// is wrong.
std::optional<std::string> read_value(const FieldInfo& f, const toml::node& node,
                                      ServeSettings& s) {
  const std::string name = key_name(f.field);
  auto wrong = [&] {
    return name + " must be " + std::string(wanted_name(f.kind)) + ", not " +
           std::string(type_name(node.type()));
  };
  ServeSettings value;
  switch (f.kind) {
    case ValueKind::kString: {
      const auto* v = node.as_string();
      if (v == nullptr) return wrong();
      // Which member: the fields of this kind are strings in ServeSettings.
      switch (f.field) {
        case Field::kSocket:
          value.socket = v->get();
          break;
        case Field::kSocketGroup:
          value.socket_group = v->get();
          break;
        case Field::kStateDir:
          value.state_dir = v->get();
          break;
        case Field::kDevice:
          value.device = v->get();
          break;
        case Field::kSimulate:
          value.simulate = v->get();
          break;
        case Field::kOnOveruse:
          value.on_overuse = v->get();
          break;
        default:
          return name + ": internal error: not a string field";
      }
      break;
    }
    case ValueKind::kBool: {
      const auto* v = node.as_boolean();
      if (v == nullptr) return wrong();
      switch (f.field) {
        case Field::kQuiet:
          value.quiet = v->get();
          break;
        case Field::kHttpPublic:
          value.http_public = v->get();
          break;
        case Field::kKillOrphans:
          value.kill_orphans = v->get();
          break;
        case Field::kFairShare:
          value.fair_share = v->get();
          break;
        default:
          return name + ": internal error: not a boolean field";
      }
      break;
    }
    case ValueKind::kInteger: {
      const auto* v = node.as_integer();
      if (v == nullptr) return wrong();
      switch (f.field) {
        case Field::kMaxConcurrentJobs:
          value.max_concurrent_jobs = v->get();
          break;
        case Field::kMaxConnectionsPerUid:
          value.max_connections_per_uid = v->get();
          break;
        default:
          return name + ": internal error: not an integer field";
      }
      break;
    }
    case ValueKind::kNumber: {
      double d = 0;
      if (const auto* i = node.as_integer()) {
        d = static_cast<double>(i->get());
      } else if (const auto* x = node.as_floating_point()) {
        d = x->get();
      } else {
        return wrong();
      }
      switch (f.field) {
        case Field::kReattachGrace:
          value.reattach_grace_s = d;
          break;
        case Field::kPollInterval:
          value.poll_interval_s = d;
          break;
        case Field::kMemoryLimit:
          value.memory_limit = d;
          break;
        case Field::kOveruseGrace:
          value.overuse_grace_s = d;
          break;
        case Field::kRevokeGrace:
          value.revoke_grace_s = d;
          break;
        case Field::kOveruseTolerance:
          value.overuse_tolerance_percent = d;
          break;
        case Field::kHelloTimeout:
          value.hello_timeout_s = d;
          break;
        case Field::kKillOrphansGrace:
          value.kill_orphans_grace_s = d;
          break;
        default:
          return name + ": internal error: not a number field";
      }
      break;
    }
    case ValueKind::kDuration: {
      double d = 0;
      if (const auto* i = node.as_integer()) {
        d = static_cast<double>(i->get());
      } else if (const auto* x = node.as_floating_point()) {
        d = x->get();
      } else if (const auto* t = node.as_string()) {
        auto parsed = parse_duration(t->get());
        if (!parsed.ok()) return name + ": " + parsed.status().message();
        d = parsed.value();
      } else {
        return wrong();
      }
      switch (f.field) {
        case Field::kFairShareHalfLife:
          value.fair_share_half_life_s = d;
          break;
        default:
          return name + ": internal error: not a duration field";
      }
      break;
    }
    case ValueKind::kHttpAddress: {
      if (const auto* b = node.as_boolean()) {
        if (b->get()) return name + " must be an address (\"HOST:PORT\") or false, not true";
        value.no_http = true;
      } else if (const auto* v = node.as_string()) {
        value.no_http = v->get().empty();
        value.http = v->get();
      } else {
        return wrong();
      }
      break;
    }
  }
  copy_field(s, value, f.field);
  return std::nullopt;
}

// A quota table's id: a number is an id as it is; a name is looked up in the system's user
// (or group) database.
std::optional<std::uint32_t> resolve_id(std::string_view name, bool is_group) {
  std::uint32_t id = 0;
  const auto [end, ec] = std::from_chars(name.data(), name.data() + name.size(), id);
  if (ec == std::errc() && end == name.data() + name.size() && !name.empty()) return id;
  std::vector<char> buffer(16384);
  const std::string n(name);
  if (is_group) {
    struct group g {};
    struct group* found = nullptr;
    if (::getgrnam_r(n.c_str(), &g, buffer.data(), buffer.size(), &found) != 0 || !found) {
      return std::nullopt;
    }
    return static_cast<std::uint32_t>(g.gr_gid);
  }
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwnam_r(n.c_str(), &pw, buffer.data(), buffer.size(), &found) != 0 || !found) {
    return std::nullopt;
  }
  return static_cast<std::uint32_t>(pw.pw_uid);
}

// Reads one [quota.*] table's keys; an error with its position, or nullopt.
std::optional<std::string> read_quota_limits(const toml::table& table, const std::string& scope,
                                             const std::string& path, core::QuotaLimits& q) {
  for (auto&& [key, node] : table) {
    const std::string name = scope + "." + std::string(key.str());
    const std::string where = at(path, position(node.source().begin));
    if (key.str() == "max_vram") {
      const auto* v = node.as_string();
      if (v == nullptr) {
        return where + name + " must be a size (\"30GiB\") or a share (\"50%\"), not " +
               std::string(type_name(node.type()));
      }
      const std::string text = v->get();
      if (!text.empty() && text.back() == '%') {
        double percent = 0;
        const char* first = text.data();
        const char* last = text.data() + text.size() - 1;
        const auto [end, ec] = std::from_chars(first, last, percent);
        if (ec != std::errc() || end != last || !(percent > 0 && percent <= 100)) {
          return where + name + " must be a share above 0% and at most 100%, got '" + text + "'";
        }
        q.max_vram_share = percent / 100;
        q.max_vram_bytes.reset();
      } else {
        auto size = parse_size(text);
        if (!size.ok()) return where + name + " is invalid: " + size.status().message();
        if (size.value() == 0) return where + name + " must be positive, got '" + text + "'";
        q.max_vram_bytes = size.value();
        q.max_vram_share.reset();
      }
    } else if (key.str() == "max_jobs") {
      const auto* v = node.as_integer();
      if (v == nullptr) {
        return where + name + " must be an integer, not " + std::string(type_name(node.type()));
      }
      if (v->get() < 0 || v->get() > 1000000) {
        return where + name + " must be between 0 and 1000000, got " + std::to_string(v->get());
      }
      q.max_jobs = v->get();
    } else if (key.str() == "max_priority") {
      const auto* v = node.as_integer();
      if (v == nullptr) {
        return where + name + " must be an integer, not " + std::string(type_name(node.type()));
      }
      if (v->get() < std::numeric_limits<int>::min() ||
          v->get() > std::numeric_limits<int>::max()) {
        return where + name + " is out of range, got " + std::to_string(v->get());
      }
      q.max_priority = static_cast<int>(v->get());
    } else {
      return at(path, position(key.source().begin)) + "unknown key '" + name + "'; the keys of [" +
             scope + "] are max_vram, max_jobs, max_priority";
    }
  }
  return std::nullopt;
}

// The [quota] table: [quota.default], [quota.user.NAME], [quota.group.NAME].
std::optional<std::string> read_quotas(const toml::table& quota, const std::string& path,
                                       core::QuotaConfig& out) {
  constexpr std::string_view kTables =
      "the quota tables are [quota.default], [quota.user.NAME] and [quota.group.NAME]";
  for (auto&& [key, node] : quota) {
    const std::string name(key.str());
    const std::string key_at = at(path, position(key.source().begin));
    const toml::table* table = node.as_table();
    if (name == "default") {
      if (table == nullptr)
        return key_at + "quota.default must be a table; " + std::string(kTables);
      core::QuotaRule rule{"quota.default", {}};
      if (auto e = read_quota_limits(*table, rule.scope, path, rule.limits)) return e;
      out.default_rule = rule;
    } else if (name == "user" || name == "group") {
      const bool is_group = name == "group";
      if (table == nullptr)
        return key_at + "quota." + name + " must be a table; " + std::string(kTables);
      for (auto&& [who, limits] : *table) {
        const std::string scope = "quota." + name + "." + std::string(who.str());
        const std::string who_at = at(path, position(who.source().begin));
        const toml::table* t = limits.as_table();
        if (t == nullptr) return who_at + scope + " must be a table ([" + scope + "])";
        const auto id = resolve_id(who.str(), is_group);
        if (!id) {
          return who_at + "unknown " + name + " '" + std::string(who.str()) + "' in [" + scope +
                 "]: no such " + name + " on this host (give a name it knows, or a numeric id)";
        }
        auto& rules = is_group ? out.groups : out.users;
        if (rules.count(*id) != 0) {
          return who_at + "[" + scope + "] is the same " + name + " (id " + std::to_string(*id) +
                 ") as [" + rules.at(*id).scope + "]";
        }
        core::QuotaRule rule{scope, {}};
        if (auto e = read_quota_limits(*t, scope, path, rule.limits)) return e;
        rules.emplace(*id, std::move(rule));
      }
    } else {
      return key_at + "unknown key 'quota." + name + "'; " + std::string(kTables);
    }
  }
  return std::nullopt;
}

}  // namespace

StatusOr<ConfigFile> parse_config_text(std::string_view text, const std::string& path) {
  toml::table root;
  try {
    root = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    return InvalidArgument(at(path, position(e.source().begin)) +
                           "syntax error: " + std::string(e.description()));
  }
  ConfigFile file;
  file.path = path;
  for (auto&& [section_key, section_node] : root) {
    const std::string section(section_key.str());
    const SourcePosition where = position(section_key.source().begin);
    const toml::table* table = section_node.as_table();
    if (table != nullptr && section == "quota") {
      if (auto e = read_quotas(*table, path, file.quotas)) return InvalidArgument(*e);
      continue;
    }
    if (table == nullptr) {
      std::string hint;
      for (const FieldInfo& f : all_fields()) {
        if (f.key == section) {
          hint = " (put it in [" + std::string(f.section) + "])";
          break;
        }
      }
      return InvalidArgument(at(path, where) + "unknown key '" + section + "' outside a table" +
                             hint + "; the tables are " + list_sections());
    }
    bool known = false;
    for (std::string_view s : sections()) known = known || s == section;
    if (!known) {
      return InvalidArgument(at(path, where) + "unknown table [" + section + "]; the tables are " +
                             list_sections());
    }
    for (auto&& [key, node] : *table) {
      const FieldInfo* f = find_field(section, key.str());
      if (f == nullptr) {
        return InvalidArgument(at(path, position(key.source().begin)) + "unknown key '" + section +
                               "." + std::string(key.str()) + "'; the keys of [" + section +
                               "] are " + list_keys(section));
      }
      const SourcePosition value_at = position(node.source().begin);
      if (auto wrong = read_value(*f, node, file.settings)) {
        return InvalidArgument(at(path, value_at) + *wrong);
      }
      file.positions[index_of(f->field)] = value_at;
      file.present.set(index_of(f->field));
    }
  }
  // Whether an HTTP address may be public depends on http.public, which the command line may
  // give: the file alone is checked for the address, resolve_settings() for the pair.
  ServeSettings alone = file.settings;
  alone.http_public = true;
  if (auto problem = validate_settings(alone)) {
    return InvalidArgument(at(path, file.positions[index_of(problem->field)]) +
                           key_name(problem->field) + " " + problem->reason);
  }
  return file;
}

StatusOr<ConfigFile> read_config_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string why =
        "cannot read the configuration file " + path + ": " + std::strerror(err);
    if (err == ENOENT) return NotFound(why);
    if (err == EACCES) return Status(ErrorCode::kPermissionDenied, why);
    return InvalidArgument(why);
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument("the configuration file " + path + " is not a regular file");
  }
  if (static_cast<std::size_t>(st.st_size) > kMaxFileBytes) {
    ::close(fd);
    return InvalidArgument("the configuration file " + path + " is larger than 1 MiB");
  }
  std::optional<std::string> text = read_open_file(fd, kMaxFileBytes);
  ::close(fd);
  if (!text) return InvalidArgument("cannot read the configuration file " + path);
  return parse_config_text(*text, path);
}

StatusOr<ResolvedSettings> resolve_settings(const SettingsSources& sources) {
  ResolvedSettings out;
  ConfigFile file;
  auto read = read_config_file(sources.config_path);
  if (read.ok()) {
    file = std::move(read).value();
    out.from_file = true;
    out.quotas = file.quotas;
  } else if (read.status().code() != ErrorCode::kNotFound || sources.config_given) {
    return read.status();
  }
  out.settings = override_with(file.settings, sources.flags, sources.given);
  if (auto problem = validate_settings(out.settings)) {
    const FieldInfo& f = field_info(problem->field);
    if (sources.given.test(index_of(problem->field))) {
      return InvalidArgument(std::string(f.flag) + " " + problem->reason);
    }
    // Valid alone, invalid with a flag (an HTTP address with --http-public missing): the
    // file's key is where the value is.
    return InvalidArgument(at(file.path.empty() ? sources.config_path : file.path,
                              file.positions[index_of(problem->field)]) +
                           key_name(problem->field) + " " + problem->reason);
  }
  return out;
}

}  // namespace gpumgr::config
