#include "core/snapshot_json.h"

#include <cmath>

namespace gpumgr {
namespace {
using nlohmann::json;

double to_unix_seconds(std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

std::chrono::system_clock::time_point from_unix_seconds(double s) {
  return std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::duration<double>(s)));
}

template <typename T>
void put_optional(json& j, const char* key, const std::optional<T>& value) {
  j[key] = value ? json(*value) : json(nullptr);
}

template <typename T>
std::optional<T> get_optional(const json& j, const char* key) {
  if (!j.contains(key) || j.at(key).is_null()) return std::nullopt;
  return j.at(key).get<T>();
}

json device_json(const DeviceAccount& a) {
  const DeviceInfo& d = a.info;
  json j;
  j["index"] = d.index;
  j["kind"] = std::string(device_kind_name(d.kind));
  j["uuid"] = d.uuid;
  j["name"] = d.name;
  j["pci_bus_id"] = d.pci_bus_id;
  j["total_bytes"] = d.total_bytes;
  j["used_bytes"] = d.used_bytes;
  j["free_bytes"] = d.free_bytes;
  j["capacity_bytes"] = a.capacity_bytes;
  j["leased_bytes"] = a.leased_bytes;
  j["foreign_bytes"] = a.foreign_bytes;
  j["overuse_bytes"] = a.overuse_bytes;
  j["admissible_bytes"] = a.admissible_bytes;
  j["peak_leased_bytes"] = a.peak_leased_bytes;
  j["active_leases"] = a.active_leases;
  j["reserved_for_head"] = a.reserved_for_head;
  put_optional(j, "utilization_percent", d.gpu_utilization_percent);
  put_optional(j, "memory_utilization_percent", d.memory_utilization_percent);
  put_optional(j, "temperature_c", d.temperature_c);
  put_optional(j, "power_draw_w", d.power_draw_w);
  put_optional(j, "power_limit_w", d.power_limit_w);
  put_optional(j, "compute_capability_major", d.compute_capability_major);
  put_optional(j, "compute_capability_minor", d.compute_capability_minor);
  j["healthy"] = d.healthy;
  j["health_reason"] = d.health_reason;
  j["processes_known"] = d.processes_known;
  json procs = json::array();
  for (const auto& p : d.processes) procs.push_back({{"pid", p.pid}, {"used_bytes", p.used_bytes}});
  j["processes"] = procs;
  return j;
}

DeviceAccount device_from_json(const json& j) {
  DeviceAccount a;
  DeviceInfo& d = a.info;
  d.index = j.at("index").get<int>();
  const std::string kind = j.at("kind").get<std::string>();
  d.kind = kind == "gpu"   ? DeviceKind::kGpu
           : kind == "cpu" ? DeviceKind::kCpu
                           : DeviceKind::kSimulated;
  d.uuid = j.at("uuid").get<std::string>();
  d.name = j.at("name").get<std::string>();
  d.pci_bus_id = j.at("pci_bus_id").get<std::string>();
  d.total_bytes = j.at("total_bytes").get<std::uint64_t>();
  d.used_bytes = j.at("used_bytes").get<std::uint64_t>();
  d.free_bytes = j.at("free_bytes").get<std::uint64_t>();
  a.capacity_bytes = j.at("capacity_bytes").get<std::uint64_t>();
  a.leased_bytes = j.at("leased_bytes").get<std::uint64_t>();
  a.foreign_bytes = j.at("foreign_bytes").get<std::uint64_t>();
  a.overuse_bytes = j.value("overuse_bytes", std::uint64_t{0});
  a.admissible_bytes = j.at("admissible_bytes").get<std::uint64_t>();
  a.peak_leased_bytes = j.at("peak_leased_bytes").get<std::uint64_t>();
  a.active_leases = j.at("active_leases").get<int>();
  a.reserved_for_head = j.at("reserved_for_head").get<bool>();
  d.gpu_utilization_percent = get_optional<unsigned>(j, "utilization_percent");
  d.memory_utilization_percent = get_optional<unsigned>(j, "memory_utilization_percent");
  d.temperature_c = get_optional<unsigned>(j, "temperature_c");
  d.power_draw_w = get_optional<double>(j, "power_draw_w");
  d.power_limit_w = get_optional<double>(j, "power_limit_w");
  d.compute_capability_major = get_optional<int>(j, "compute_capability_major");
  d.compute_capability_minor = get_optional<int>(j, "compute_capability_minor");
  d.healthy = j.at("healthy").get<bool>();
  d.health_reason = j.at("health_reason").get<std::string>();
  d.processes_known = j.at("processes_known").get<bool>();
  for (const auto& p : j.at("processes")) {
    d.processes.push_back(
        {p.at("pid").get<std::uint32_t>(), p.at("used_bytes").get<std::uint64_t>()});
  }
  return a;
}

Histogram histogram_from_json(const json& j) {
  Histogram h;
  h.count = j.at("count").get<std::uint64_t>();
  h.sum = j.at("sum").get<double>();
  h.min = j.at("min").get<double>();
  h.max = j.at("max").get<double>();
  for (const auto& b : j.at("buckets")) {
    if (!b.at("le").is_null()) h.bounds.push_back(b.at("le").get<double>());
    h.counts.push_back(b.at("count").get<std::uint64_t>());
  }
  return h;
}

WaiterInfo waiter_from_json(const json& j) {
  WaiterInfo w;
  w.job_id = j.at("job_id").get<std::string>();
  w.bytes = j.at("bytes").get<std::uint64_t>();
  w.gpus = j.at("gpus").get<int>();
  w.priority = j.at("priority").get<int>();
  w.device = j.at("device").get<int>();
  if (const auto it = j.find("allowed_devices"); it != j.end()) {
    w.allowed_devices = it->get<std::vector<int>>();
  }
  w.beside_resident = j.value("beside_resident", std::string());
  w.position = j.at("position").get<int>();
  w.pid = j.at("pid").get<std::uint32_t>();
  w.uid = j.at("uid").get<std::uint32_t>();
  w.command = j.at("command").get<std::string>();
  w.waited_s = j.at("waited_s").get<double>();
  w.quota_wait = j.value("quota_wait", std::string());
  return w;
}

// A quota's limit: a number, or null for none.
json optional_json(const std::optional<std::uint64_t>& v) { return v ? json(*v) : json(nullptr); }
std::optional<std::uint64_t> optional_from_json(const json& j) {
  if (j.is_null()) return std::nullopt;
  return j.get<std::uint64_t>();
}

json user_json(const UserUsage& u) {
  return {{"uid", u.uid},
          {"leased_bytes", u.leased_bytes},
          {"jobs", u.jobs},
          {"waiting", u.waiting},
          {"max_vram_bytes", optional_json(u.max_vram_bytes)},
          {"max_jobs", optional_json(u.max_jobs)},
          {"fair_share_gib_s", u.fair_share_gib_s}};
}

UserUsage user_from_json(const json& j) {
  UserUsage u;
  u.uid = j.at("uid").get<std::uint32_t>();
  u.leased_bytes = j.at("leased_bytes").get<std::uint64_t>();
  u.jobs = j.at("jobs").get<std::uint64_t>();
  u.waiting = j.at("waiting").get<std::uint64_t>();
  u.max_vram_bytes = optional_from_json(j.at("max_vram_bytes"));
  u.max_jobs = optional_from_json(j.at("max_jobs"));
  u.fair_share_gib_s = j.at("fair_share_gib_s").get<double>();
  return u;
}

LeaseInfo lease_from_json_unchecked(const json& j) {
  LeaseInfo l;
  l.job_id = j.at("job_id").get<std::string>();
  l.devices = j.at("devices").get<std::vector<int>>();
  l.bytes = j.at("bytes").get<std::uint64_t>();
  l.priority = j.at("priority").get<int>();
  l.pid = j.at("pid").get<std::uint32_t>();
  l.uid = j.at("uid").get<std::uint32_t>();
  l.command = j.at("command").get<std::string>();
  l.granted_at = from_unix_seconds(j.at("granted_at").get<double>());
  l.waited_s = j.at("waited_s").get<double>();
  // Fields added after version 1 first shipped: absent from an older daemon's replies.
  l.kind = j.value("kind", std::string());
  if (const auto it = j.find("usage"); it != j.end()) {
    for (const auto& u : *it) {
      l.usage.push_back(DeviceUse{u.at("device").get<int>(),
                                  get_optional<std::uint64_t>(u, "used_bytes"),
                                  get_optional<std::uint64_t>(u, "peak_used_bytes")});
    }
  }
  l.overused = j.value("overused", false);
  l.overused_s = j.value("overused_s", 0.0);
  l.estimate = j.value("estimate", std::string());
  l.enforcement = j.value("enforcement", std::string());
  l.revocable = j.value("revocable", std::string());
  l.resident = j.value("resident", std::string());
  l.in_use_by = j.value("in_use_by", 0);
  l.beside_resident = j.value("beside_resident", std::string());
  l.revoking = j.value("revoking", false);
  l.revoke_in_s = j.value("revoke_in_s", 0.0);
  l.revoked_for = j.value("revoked_for", std::string());
  return l;
}

}  // namespace

json to_json(const Histogram& h) {
  json buckets = json::array();
  for (std::size_t i = 0; i < h.counts.size(); ++i) {
    buckets.push_back(
        {{"le", i < h.bounds.size() ? json(h.bounds[i]) : json(nullptr)}, {"count", h.counts[i]}});
  }
  return {{"count", h.count}, {"sum", h.sum},     {"min", h.min},
          {"max", h.max},     {"mean", h.mean()}, {"buckets", buckets}};
}

json to_json(const LeaseInfo& l) {
  const double granted = to_unix_seconds(l.granted_at);
  const double age = std::max(0.0, to_unix_seconds(std::chrono::system_clock::now()) - granted);
  json usage = json::array();
  for (const DeviceUse& u : l.usage) {
    json entry = {{"device", u.device}};
    put_optional(entry, "used_bytes", u.used_bytes);
    put_optional(entry, "peak_used_bytes", u.peak_used_bytes);
    usage.push_back(entry);
  }
  json j = {{"job_id", l.job_id},     {"devices", l.devices},
            {"bytes", l.bytes},       {"priority", l.priority},
            {"pid", l.pid},           {"uid", l.uid},
            {"command", l.command},   {"granted_at", granted},
            {"age_s", age},           {"waited_s", l.waited_s},
            {"kind", l.kind},         {"usage", usage},
            {"overused", l.overused}, {"overused_s", l.overused_s},
            {"estimate", l.estimate}, {"enforcement", l.enforcement}};
  // Revocable leases only: a plain lease's JSON stays as it was.
  if (!l.revocable.empty()) {
    j["revocable"] = l.revocable;
    if (!l.resident.empty()) {
      j["resident"] = l.resident;
      j["in_use_by"] = l.in_use_by;
    }
    j["revoking"] = l.revoking;
    if (l.revoking) {
      j["revoke_in_s"] = l.revoke_in_s;
      j["revoked_for"] = l.revoked_for;
    }
  }
  if (!l.beside_resident.empty()) j["beside_resident"] = l.beside_resident;
  return j;
}

json to_json(const KindEstimate& e) {
  json j = {{"kind", e.kind},
            {"runs", e.runs},
            {"measured_runs", e.measured_runs},
            {"overused_runs", e.overused_runs},
            {"last_seen", to_unix_seconds(e.last_seen)},
            {"estimate_note", e.estimate_note}};
  put_optional(j, "peak_p50_bytes", e.peak_p50_bytes);
  put_optional(j, "peak_p95_bytes", e.peak_p95_bytes);
  put_optional(j, "peak_max_bytes", e.peak_max_bytes);
  put_optional(j, "hold_p50_s", e.hold_p50_s);
  put_optional(j, "hold_p95_s", e.hold_p95_s);
  put_optional(j, "estimate_bytes", e.estimate_bytes);
  return j;
}

StatusOr<KindEstimate> estimate_from_json(const json& j) {
  try {
    KindEstimate e;
    e.kind = j.at("kind").get<std::string>();
    e.runs = j.at("runs").get<std::uint64_t>();
    e.measured_runs = j.at("measured_runs").get<std::uint64_t>();
    e.overused_runs = j.at("overused_runs").get<std::uint64_t>();
    e.last_seen = from_unix_seconds(j.at("last_seen").get<double>());
    e.estimate_note = j.at("estimate_note").get<std::string>();
    e.peak_p50_bytes = get_optional<std::uint64_t>(j, "peak_p50_bytes");
    e.peak_p95_bytes = get_optional<std::uint64_t>(j, "peak_p95_bytes");
    e.peak_max_bytes = get_optional<std::uint64_t>(j, "peak_max_bytes");
    e.hold_p50_s = get_optional<double>(j, "hold_p50_s");
    e.hold_p95_s = get_optional<double>(j, "hold_p95_s");
    e.estimate_bytes = get_optional<std::uint64_t>(j, "estimate_bytes");
    return e;
  } catch (const json::exception& ex) {
    return InvalidArgument(std::string("bad estimate JSON: ") + ex.what());
  }
}

json to_json(const WaiterInfo& w) {
  json j = {{"job_id", w.job_id},
            {"bytes", w.bytes},
            {"gpus", w.gpus},
            {"priority", w.priority},
            {"device", w.device},
            {"position", w.position},
            {"pid", w.pid},
            {"uid", w.uid},
            {"command", w.command},
            {"waited_s", w.waited_s},
            {"quota_wait", w.quota_wait}};
  if (!w.allowed_devices.empty()) j["allowed_devices"] = w.allowed_devices;
  if (!w.beside_resident.empty()) j["beside_resident"] = w.beside_resident;
  return j;
}

json to_json(const Snapshot& s) {
  json j;
  j["version"] = kStatusJsonVersion;
  j["source"] = s.source;
  j["taken_at"] = to_unix_seconds(s.taken_at);
  j["backend"] = {{"name", s.backend.name},
                  {"driver_version", s.backend.driver_version},
                  {"cuda_driver_version", s.backend.cuda_driver_version},
                  {"nvml_version", s.backend.nvml_version}};
  j["config"] = {{"max_concurrent_jobs", s.config.max_concurrent_jobs},
                 {"memory_limit", s.config.memory_limit},
                 {"placement", std::string(placement_policy_name(s.config.placement))},
                 {"queue", std::string(queue_policy_name(s.config.queue))},
                 {"poll_interval_ms", s.config.poll_interval.count()},
                 {"on_overuse", std::string(overuse_policy_name(s.config.overuse.policy))},
                 {"overuse_grace_s", s.config.overuse.grace_s},
                 {"revoke_grace_s", s.config.revoke_grace_s},
                 {"overuse_tolerance_percent", s.config.overuse.tolerance_percent},
                 {"fair_share", s.config.fair_share},
                 {"fair_share_half_life_s", s.config.fair_share_half_life_s}};
  json devices = json::array();
  for (const auto& d : s.devices) devices.push_back(device_json(d));
  j["devices"] = devices;
  json leases = json::array();
  for (const auto& l : s.leases) leases.push_back(to_json(l));
  j["leases"] = leases;
  json queue = json::array();
  for (const auto& w : s.queue) queue.push_back(to_json(w));
  j["queue"] = queue;
  json users = json::array();
  for (const auto& u : s.users) users.push_back(user_json(u));
  j["users"] = users;
  const LedgerStats& st = s.stats;
  j["stats"] = {{"jobs_processed", st.jobs_processed()},
                {"jobs_succeeded", st.jobs_succeeded},
                {"jobs_failed", st.jobs_failed},
                {"jobs_rejected", st.jobs_rejected},
                {"jobs_timed_out", st.jobs_timed_out},
                {"jobs_cancelled", st.jobs_cancelled},
                {"overuse_events", st.overuse_events},
                {"overuse_terminations", st.overuse_terminations},
                {"revocations_preempted", st.revocations_preempted},
                {"revocations_resident", st.revocations_resident},
                {"revocation_kills", st.revocation_kills},
                {"active_jobs", st.active_jobs},
                {"peak_active_jobs", st.peak_active_jobs},
                {"hold_seconds", to_json(st.hold_seconds)},
                {"wait_seconds", to_json(st.wait_seconds)}};
  return j;
}

StatusOr<LeaseInfo> lease_from_json(const json& j) {
  try {
    return lease_from_json_unchecked(j);
  } catch (const json::exception& e) {
    return InvalidArgument(std::string("bad lease JSON: ") + e.what());
  }
}

StatusOr<Snapshot> snapshot_from_json(const json& j) {
  try {
    Snapshot s;
    if (j.at("version").get<int>() != kStatusJsonVersion) {
      return InvalidArgument("status JSON version " + j.at("version").dump() + " is not " +
                             std::to_string(kStatusJsonVersion));
    }
    s.source = j.at("source").get<std::string>();
    s.taken_at = from_unix_seconds(j.at("taken_at").get<double>());
    const json& b = j.at("backend");
    s.backend = {b.at("name").get<std::string>(), b.at("driver_version").get<std::string>(),
                 b.at("cuda_driver_version").get<std::string>(),
                 b.at("nvml_version").get<std::string>()};
    const json& c = j.at("config");
    s.config.max_concurrent_jobs = c.at("max_concurrent_jobs").get<int>();
    s.config.memory_limit = c.at("memory_limit").get<double>();
    auto placement = parse_placement_policy(c.at("placement").get<std::string>());
    if (!placement.ok()) return placement.status();
    s.config.placement = placement.value();
    auto queue = parse_queue_policy(c.at("queue").get<std::string>());
    if (!queue.ok()) return queue.status();
    s.config.queue = queue.value();
    s.config.poll_interval =
        std::chrono::milliseconds(c.at("poll_interval_ms").get<std::int64_t>());
    s.config.fair_share = c.value("fair_share", true);
    s.config.fair_share_half_life_s = c.value("fair_share_half_life_s", 3600.0);
    auto overuse = parse_overuse_policy(c.value("on_overuse", std::string("report")));
    if (!overuse.ok()) return overuse.status();
    s.config.overuse.policy = overuse.value();
    s.config.overuse.grace_s = c.value("overuse_grace_s", 10.0);
    s.config.revoke_grace_s = c.value("revoke_grace_s", 30.0);
    s.config.overuse.tolerance_percent = c.value("overuse_tolerance_percent", 5.0);
    for (const auto& d : j.at("devices")) s.devices.push_back(device_from_json(d));
    for (const auto& l : j.at("leases")) s.leases.push_back(lease_from_json_unchecked(l));
    for (const auto& w : j.at("queue")) s.queue.push_back(waiter_from_json(w));
    // Absent from an older daemon's JSON: no users listed.
    if (j.contains("users")) {
      for (const auto& u : j.at("users")) s.users.push_back(user_from_json(u));
    }
    const json& st = j.at("stats");
    s.stats.jobs_succeeded = st.at("jobs_succeeded").get<std::uint64_t>();
    s.stats.jobs_failed = st.at("jobs_failed").get<std::uint64_t>();
    s.stats.jobs_rejected = st.at("jobs_rejected").get<std::uint64_t>();
    s.stats.jobs_timed_out = st.at("jobs_timed_out").get<std::uint64_t>();
    s.stats.jobs_cancelled = st.at("jobs_cancelled").get<std::uint64_t>();
    s.stats.overuse_events = st.value("overuse_events", std::uint64_t{0});
    s.stats.overuse_terminations = st.value("overuse_terminations", std::uint64_t{0});
    s.stats.revocations_preempted = st.value("revocations_preempted", std::uint64_t{0});
    s.stats.revocations_resident = st.value("revocations_resident", std::uint64_t{0});
    s.stats.revocation_kills = st.value("revocation_kills", std::uint64_t{0});
    s.stats.active_jobs = st.at("active_jobs").get<int>();
    s.stats.peak_active_jobs = st.at("peak_active_jobs").get<int>();
    s.stats.hold_seconds = histogram_from_json(st.at("hold_seconds"));
    s.stats.wait_seconds = histogram_from_json(st.at("wait_seconds"));
    return s;
  } catch (const json::exception& e) {
    return InvalidArgument(std::string("bad status JSON: ") + e.what());
  }
}

}  // namespace gpumgr
