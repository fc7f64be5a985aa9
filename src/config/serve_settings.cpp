#include "config/serve_settings.h"

#include <array>
#include <cctype>
#include <cmath>
#include <sstream>
#include <variant>

#include "core/overuse.h"
#include "gpumgr/backends.h"
#include "http/http_server.h"

namespace gpumgr::config {
namespace {

using Member = std::variant<std::string ServeSettings::*, bool ServeSettings::*,
                            long long ServeSettings::*, double ServeSettings::*>;

struct Entry {
  FieldInfo info;
  Member member;
};

// The table behind all_fields(): the field's key, flag and kind, and where it lives in
// ServeSettings. Sections in the order the documentation gives them.
const std::array<Entry, kFieldCount> kEntries = {{
    {{Field::kSocket, "daemon", "socket", "--socket", ValueKind::kString, false},
     &ServeSettings::socket},
    {{Field::kSocketGroup, "daemon", "socket_group", "--socket-group", ValueKind::kString, false},
     &ServeSettings::socket_group},
    {{Field::kStateDir, "daemon", "state_dir", "--state-dir", ValueKind::kString, false},
     &ServeSettings::state_dir},
    {{Field::kReattachGrace, "daemon", "reattach_grace", "--reattach-grace", ValueKind::kNumber,
      false},
     &ServeSettings::reattach_grace_s},
    {{Field::kQuiet, "daemon", "quiet", "--quiet", ValueKind::kBool, true}, &ServeSettings::quiet},
    {{Field::kHttp, "http", "listen", "--http", ValueKind::kHttpAddress, false},
     &ServeSettings::http},
    {{Field::kHttpPublic, "http", "public", "--http-public", ValueKind::kBool, false},
     &ServeSettings::http_public},
    {{Field::kDevice, "devices", "device", "--device", ValueKind::kString, false},
     &ServeSettings::device},
    {{Field::kSimulate, "devices", "simulate", "--simulate", ValueKind::kString, false},
     &ServeSettings::simulate},
    {{Field::kPollInterval, "devices", "poll_interval", "--poll-interval", ValueKind::kNumber,
      true},
     &ServeSettings::poll_interval_s},
    {{Field::kMemoryLimit, "limits", "memory_limit", "--memory-limit", ValueKind::kNumber, true},
     &ServeSettings::memory_limit},
    {{Field::kMaxConcurrentJobs, "limits", "max_concurrent_jobs", "--max-concurrent-jobs",
      ValueKind::kInteger, true},
     &ServeSettings::max_concurrent_jobs},
    {{Field::kRevokeGrace, "limits", "revoke_grace", "--revoke-grace", ValueKind::kNumber, true},
     &ServeSettings::revoke_grace_s},
    {{Field::kOnOveruse, "overuse", "policy", "--on-overuse", ValueKind::kString, true},
     &ServeSettings::on_overuse},
    {{Field::kOveruseGrace, "overuse", "grace", "--overuse-grace", ValueKind::kNumber, true},
     &ServeSettings::overuse_grace_s},
    {{Field::kOveruseTolerance, "overuse", "tolerance_percent", "--overuse-tolerance",
      ValueKind::kNumber, true},
     &ServeSettings::overuse_tolerance_percent},
    {{Field::kHelloTimeout, "clients", "hello_timeout", "--hello-timeout", ValueKind::kNumber,
      true},
     &ServeSettings::hello_timeout_s},
    {{Field::kMaxConnectionsPerUid, "clients", "max_connections_per_uid",
      "--max-connections-per-uid", ValueKind::kInteger, true},
     &ServeSettings::max_connections_per_uid},
    {{Field::kKillOrphans, "clients", "kill_orphans", "--kill-orphans", ValueKind::kBool, true},
     &ServeSettings::kill_orphans},
    {{Field::kKillOrphansGrace, "clients", "kill_orphans_grace", "--kill-orphans-grace",
      ValueKind::kNumber, true},
     &ServeSettings::kill_orphans_grace_s},
    {{Field::kFairShare, "scheduling", "fair_share", "--fair-share", ValueKind::kBool, true},
     &ServeSettings::fair_share},
    {{Field::kFairShareHalfLife, "scheduling", "fair_share_half_life", "--fair-share-half-life",
      ValueKind::kDuration, true},
     &ServeSettings::fair_share_half_life_s},
}};

const std::array<std::string_view, 7> kSections = {"daemon",  "http",    "devices",   "limits",
                                                   "overuse", "clients", "scheduling"};

const std::array<FieldInfo, kFieldCount> kInfos = [] {
  std::array<FieldInfo, kFieldCount> infos{};
  for (std::size_t i = 0; i < kFieldCount; ++i) infos[i] = kEntries[i].info;
  return infos;
}();

const Entry& entry(Field field) { return kEntries.at(index_of(field)); }

std::string number_text(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// "must be between LO and HI UNIT, got V" for a number outside [lo, hi] (NaN included).
std::optional<std::string> in_range(double v, double lo, double hi, std::string_view what) {
  if (std::isfinite(v) && v >= lo && v <= hi) return std::nullopt;
  return "must be between " + std::string(what) + ", got " + number_text(v);
}

// A library check's refusal, phrased to follow the field's name.
std::optional<std::string> refused(const Status& s) {
  if (s.ok()) return std::nullopt;
  return "is invalid: " + s.message();
}

}  // namespace

std::span<const FieldInfo> all_fields() { return kInfos; }

StatusOr<double> parse_duration(std::string_view text) {
  auto bad = [&] {
    return InvalidArgument("'" + std::string(text) +
                           "' is not a duration: a number of seconds, or one with a unit "
                           "(\"90s\", \"30m\", \"1h\", \"2d\")");
  };
  std::string t(text);
  while (!t.empty() && t.back() == ' ') t.pop_back();
  if (t.empty()) return bad();
  double unit = 1;
  switch (t.back()) {
    case 's':
      t.pop_back();
      break;
    case 'm':
      unit = 60;
      t.pop_back();
      break;
    case 'h':
      unit = 3600;
      t.pop_back();
      break;
    case 'd':
      unit = 86400;
      t.pop_back();
      break;
    default:
      break;
  }
  if (t.empty() || !(std::isdigit(static_cast<unsigned char>(t.front())) || t.front() == '.')) {
    return bad();
  }
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(t, &used);
  } catch (...) {
    return bad();
  }
  if (used != t.size() || !std::isfinite(v)) return bad();
  return v * unit;
}

const FieldInfo& field_info(Field field) { return kInfos.at(index_of(field)); }

std::string key_name(Field field) {
  const FieldInfo& f = field_info(field);
  return std::string(f.section) + "." + std::string(f.key);
}

const FieldInfo* find_field(std::string_view section, std::string_view key) {
  for (const FieldInfo& f : kInfos) {
    if (f.section == section && f.key == key) return &f;
  }
  return nullptr;
}

std::span<const std::string_view> sections() { return kSections; }

std::string value_text(const ServeSettings& s, Field field) {
  if (field == Field::kHttp && s.no_http) return "none";
  return std::visit(
      [&](auto member) -> std::string {
        const auto& v = s.*member;
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return "'" + v + "'";
        } else if constexpr (std::is_same_v<T, bool>) {
          return v ? "true" : "false";
        } else if constexpr (std::is_same_v<T, long long>) {
          return std::to_string(v);
        } else {
          return number_text(v);
        }
      },
      entry(field).member);
}

void copy_field(ServeSettings& to, const ServeSettings& from, Field field) {
  std::visit([&](auto member) { to.*member = from.*member; }, entry(field).member);
  if (field == Field::kHttp) to.no_http = from.no_http;
}

ServeSettings override_with(const ServeSettings& base, const ServeSettings& overrides,
                            const FieldSet& given) {
  ServeSettings out = base;
  for (std::size_t i = 0; i < kFieldCount; ++i) {
    if (given.test(i)) copy_field(out, overrides, static_cast<Field>(i));
  }
  return out;
}

std::optional<std::string> check_field(const ServeSettings& s, Field field) {
  switch (field) {
    case Field::kSocket:
    case Field::kSocketGroup:
    case Field::kStateDir:
    case Field::kQuiet:
    case Field::kHttpPublic:
    case Field::kKillOrphans:
      // Checked where they are used (the socket's folder and group, the state folder).
      return std::nullopt;
    case Field::kReattachGrace:
      return in_range(s.reattach_grace_s, 0, 3600, "0 and 3600 seconds");
    case Field::kHttp:
      if (s.no_http) return std::nullopt;
      return refused(http::parse_http_address(s.http, s.http_public).status());
    case Field::kDevice:
      return refused(parse_device_selector(s.device).status());
    case Field::kSimulate:
      if (s.simulate.empty()) return std::nullopt;
      return refused(parse_simulate_spec(s.simulate).status());
    case Field::kPollInterval:
      return in_range(s.poll_interval_s, 0.001, 3600, "0.001 and 3600 seconds");
    case Field::kMemoryLimit: {
      LedgerConfig c;
      c.memory_limit = s.memory_limit;
      return refused(validate_config(c));
    }
    case Field::kMaxConcurrentJobs:
      if (s.max_concurrent_jobs < 1 || s.max_concurrent_jobs > 1000000) {
        return "must be between 1 and 1000000, got " + std::to_string(s.max_concurrent_jobs);
      }
      return std::nullopt;
    case Field::kRevokeGrace: {
      LedgerConfig c;
      c.revoke_grace_s = s.revoke_grace_s;
      return refused(validate_config(c));
    }
    case Field::kOnOveruse:
      return refused(parse_overuse_policy(s.on_overuse).status());
    case Field::kOveruseGrace:
      return refused(core::validate_overuse_config({OverusePolicy::kReport, s.overuse_grace_s, 0}));
    case Field::kOveruseTolerance:
      return refused(
          core::validate_overuse_config({OverusePolicy::kReport, 0, s.overuse_tolerance_percent}));
    case Field::kHelloTimeout:
      return in_range(s.hello_timeout_s, 0, 86400, "0 (no limit) and 86400 seconds");
    case Field::kMaxConnectionsPerUid:
      if (s.max_connections_per_uid < 0 || s.max_connections_per_uid > 100000000) {
        return "must be between 0 (no limit) and 100000000, got " +
               std::to_string(s.max_connections_per_uid);
      }
      return std::nullopt;
    case Field::kKillOrphansGrace:
      return in_range(s.kill_orphans_grace_s, 0, 3600, "0 and 3600 seconds");
    case Field::kFairShare:
      return std::nullopt;
    case Field::kFairShareHalfLife:
      return in_range(s.fair_share_half_life_s, 1, 365 * 86400.0,
                      "1 second and 365 days (31536000 seconds)");
    case Field::kCount:
      break;
  }
  return std::nullopt;
}

std::optional<Problem> validate_settings(const ServeSettings& s) {
  for (const FieldInfo& f : kInfos) {
    if (auto reason = check_field(s, f.field)) return Problem{f.field, std::move(*reason)};
  }
  return std::nullopt;
}

LedgerConfig to_ledger_config(const ServeSettings& s) {
  LedgerConfig c;
  c.max_concurrent_jobs = static_cast<int>(s.max_concurrent_jobs);
  c.memory_limit = s.memory_limit;
  c.revoke_grace_s = s.revoke_grace_s;
  c.poll_interval =
      std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(s.poll_interval_s * 1000)));
  auto policy = parse_overuse_policy(s.on_overuse);
  c.overuse = {policy.ok() ? policy.value() : OverusePolicy::kReport, s.overuse_grace_s,
               s.overuse_tolerance_percent};
  c.fair_share = s.fair_share;
  c.fair_share_half_life_s = s.fair_share_half_life_s;
  return c;
}

ReloadPlan plan_reload(const ServeSettings& running, const ServeSettings& wanted) {
  ReloadPlan plan;
  plan.apply = running;
  for (const FieldInfo& f : kInfos) {
    const std::string before = value_text(running, f.field);
    const std::string after = value_text(wanted, f.field);
    if (before == after) continue;
    if (f.reloadable) {
      copy_field(plan.apply, wanted, f.field);
      plan.changed.push_back(key_name(f.field) + ": " + before + " -> " + after);
    } else {
      plan.kept.push_back(key_name(f.field) + " changed (" + before + " -> " + after +
                          ") but takes effect only at a restart; keeping " + before);
    }
  }
  return plan;
}

}  // namespace gpumgr::config
