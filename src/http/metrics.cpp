#include "http/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#ifndef GPUMGR_VERSION
#define GPUMGR_VERSION "unknown"
#endif

namespace gpumgr::http {
namespace {

using Labels = std::vector<std::pair<std::string, std::string>>;

// HELP text escapes only backslash and newline (quotes are legal there).
std::string escape_help(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string label_text(const Labels& labels) {
  if (labels.empty()) return {};
  std::string out = "{";
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (i > 0) out += ',';
    out += labels[i].first + "=\"" + escape_label_value(labels[i].second) + '"';
  }
  return out + '}';
}

// Collects the exposition. Each family is written whole (HELP, TYPE, then every sample),
// because the text format requires a family's samples to be contiguous.
class Writer {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += escape_help(help);
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  void sample(std::string_view name, const Labels& labels, const std::string& value) {
    out_ += name;
    out_ += label_text(labels);
    out_ += ' ';
    out_ += value;
    out_ += '\n';
  }
  void sample(std::string_view name, const Labels& labels, std::uint64_t value) {
    // Integers are written as integers: byte counts above 2^53 would lose digits as doubles.
    sample(name, labels, std::to_string(value));
  }
  void sample(std::string_view name, const Labels& labels, double value) {
    sample(name, labels, format_sample_value(value));
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

Labels device_labels(const DeviceAccount& d) {
  return {{"gpu", std::to_string(d.info.index)}, {"uuid", d.info.uuid}, {"name", d.info.name}};
}

// One gauge family with a sample per device; `value` returns empty where the device cannot
// report the field, and such devices get no sample (absent, rather than a misleading 0).
template <typename F>
void device_gauge(Writer& w, const Snapshot& s, std::string_view name, std::string_view help,
                  F value) {
  w.family(name, "gauge", help);
  for (const auto& d : s.devices) {
    const auto v = value(d);
    if (v) w.sample(name, device_labels(d), *v);
  }
}

void histogram(Writer& w, std::string_view name, std::string_view help, const Histogram& h) {
  w.family(name, "histogram", help);
  const std::string base(name);
  for (std::size_t i = 0; i < h.bounds.size(); ++i) {
    const std::uint64_t n = i < h.counts.size() ? h.counts[i] : h.count;
    w.sample(base + "_bucket", {{"le", format_sample_value(h.bounds[i])}}, n);
  }
  // The +Inf bucket is every observation, by definition equal to _count.
  w.sample(base + "_bucket", {{"le", "+Inf"}}, h.count);
  w.sample(base + "_sum", {}, h.sum);
  w.sample(base + "_count", {}, h.count);
}

double seconds_since_epoch(std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

}  // namespace

std::string_view build_version() { return GPUMGR_VERSION; }

std::string escape_label_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (const char c : value) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string format_sample_value(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buf[64];
  // Whole numbers as integers ("1700000000", not the shorter "1.7e+09") while doubles hold
  // them exactly; everything else as the shortest text that reads back to the same double.
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    const auto whole = std::to_chars(buf, buf + sizeof buf, static_cast<long long>(value));
    return std::string(buf, whole.ptr);
  }
  const auto result = std::to_chars(buf, buf + sizeof buf, value);
  return std::string(buf, result.ptr);
}

std::string render_metrics(const Snapshot& s, const MetricsContext& context) {
  Writer w;
  using U64 = std::optional<std::uint64_t>;
  using F64 = std::optional<double>;

  w.family("gpumgr_build_info", "gauge",
           "Always 1; the labels say which gpumgr and which device backend serve these metrics.");
  w.sample("gpumgr_build_info",
           {{"version", context.version},
            {"backend", s.backend.name},
            {"driver_version", s.backend.driver_version},
            {"cuda_driver_version", s.backend.cuda_driver_version}},
           std::uint64_t{1});
  w.family("gpumgr_start_time_seconds", "gauge",
           "When the serving process started, in seconds since the Unix epoch.");
  w.sample("gpumgr_start_time_seconds", {}, seconds_since_epoch(context.started_at));
  w.family("gpumgr_uptime_seconds", "gauge", "Seconds since the serving process started.");
  w.sample(
      "gpumgr_uptime_seconds", {},
      std::max(0.0, seconds_since_epoch(s.taken_at) - seconds_since_epoch(context.started_at)));

  w.family("gpumgr_memory_limit_ratio", "gauge",
           "Share of each device's memory that leases may hold (--memory-limit).");
  w.sample("gpumgr_memory_limit_ratio", {}, s.config.memory_limit);
  w.family("gpumgr_max_concurrent_jobs", "gauge",
           "How many leases may be active at once (--max-concurrent-jobs).");
  w.sample("gpumgr_max_concurrent_jobs", {},
           static_cast<std::uint64_t>(std::max(0, s.config.max_concurrent_jobs)));

  device_gauge(w, s, "gpumgr_device_memory_total_bytes", "Device memory, in bytes.",
               [](const DeviceAccount& d) { return U64(d.info.total_bytes); });
  device_gauge(w, s, "gpumgr_device_memory_used_bytes",
               "Device memory in use by any process, as the driver reports it, in bytes.",
               [](const DeviceAccount& d) { return U64(d.info.used_bytes); });
  device_gauge(w, s, "gpumgr_device_memory_capacity_bytes",
               "Device memory that leases may hold: memory limit times total, in bytes.",
               [](const DeviceAccount& d) { return U64(d.capacity_bytes); });
  device_gauge(w, s, "gpumgr_device_memory_leased_bytes",
               "Device memory promised to active leases, in bytes.",
               [](const DeviceAccount& d) { return U64(d.leased_bytes); });
  device_gauge(w, s, "gpumgr_device_memory_outside_bytes",
               "Device memory used by processes that hold no lease, in bytes.",
               [](const DeviceAccount& d) { return U64(d.foreign_bytes); });
  device_gauge(w, s, "gpumgr_device_memory_admissible_bytes",
               "Device memory a new lease could be granted now: capacity - leased - overuse - "
               "outside.",
               [](const DeviceAccount& d) { return U64(d.admissible_bytes); });
  device_gauge(w, s, "gpumgr_device_overuse_bytes",
               "Device memory lease holders use beyond their leases (the sum over leases of "
               "used - leased, where positive), in bytes.",
               [](const DeviceAccount& d) { return U64(d.overuse_bytes); });
  device_gauge(w, s, "gpumgr_device_leases_active", "Active leases placed on the device.",
               [](const DeviceAccount& d) {
                 return U64(static_cast<std::uint64_t>(std::max(0, d.active_leases)));
               });
  device_gauge(
      w, s, "gpumgr_device_utilization_ratio",
      "Share of the last sample period the device was busy (0 to 1).", [](const DeviceAccount& d) {
        return d.info.gpu_utilization_percent ? F64(*d.info.gpu_utilization_percent / 100.0)
                                              : F64();
      });
  device_gauge(w, s, "gpumgr_device_memory_utilization_ratio",
               "Share of the last sample period device memory was read or written (0 to 1).",
               [](const DeviceAccount& d) {
                 return d.info.memory_utilization_percent
                            ? F64(*d.info.memory_utilization_percent / 100.0)
                            : F64();
               });
  device_gauge(w, s, "gpumgr_device_temperature_celsius", "Device temperature, in degrees Celsius.",
               [](const DeviceAccount& d) {
                 return d.info.temperature_c ? F64(*d.info.temperature_c) : F64();
               });
  device_gauge(w, s, "gpumgr_device_power_watts", "Device power draw, in watts.",
               [](const DeviceAccount& d) { return F64(d.info.power_draw_w); });
  device_gauge(w, s, "gpumgr_device_power_limit_watts", "Device power limit, in watts.",
               [](const DeviceAccount& d) { return F64(d.info.power_limit_w); });
  device_gauge(w, s, "gpumgr_device_healthy", "1 while the device is healthy, else 0.",
               [](const DeviceAccount& d) { return U64(d.info.healthy ? 1 : 0); });

  w.family("gpumgr_leases_active", "gauge", "Active leases (jobs holding memory).");
  w.sample("gpumgr_leases_active", {}, static_cast<std::uint64_t>(s.leases.size()));
  w.family("gpumgr_queue_depth", "gauge", "Requests waiting in the queue.");
  w.sample("gpumgr_queue_depth", {}, static_cast<std::uint64_t>(s.queue.size()));

  // Per user: its use against its quota (a limit only where one applies) and its fair-share
  // use.
  const auto uid_labels = [](const UserUsage& u) { return Labels{{"uid", std::to_string(u.uid)}}; };
  w.family("gpumgr_user_leased_bytes", "gauge",
           "VRAM a user's leases hold (each lease's size times its devices), in bytes.");
  for (const auto& u : s.users) w.sample("gpumgr_user_leased_bytes", uid_labels(u), u.leased_bytes);
  w.family("gpumgr_user_jobs", "gauge", "A user's active leases.");
  for (const auto& u : s.users) w.sample("gpumgr_user_jobs", uid_labels(u), u.jobs);
  w.family("gpumgr_user_waiting", "gauge", "A user's waiting requests.");
  for (const auto& u : s.users) w.sample("gpumgr_user_waiting", uid_labels(u), u.waiting);
  w.family("gpumgr_user_quota_vram_bytes", "gauge",
           "The tightest max_vram quota that applies to a user, in bytes; no sample: no limit.");
  for (const auto& u : s.users) {
    if (u.max_vram_bytes)
      w.sample("gpumgr_user_quota_vram_bytes", uid_labels(u), *u.max_vram_bytes);
  }
  w.family("gpumgr_user_quota_jobs", "gauge",
           "The tightest max_jobs quota that applies to a user; no sample: no limit.");
  for (const auto& u : s.users) {
    if (u.max_jobs) w.sample("gpumgr_user_quota_jobs", uid_labels(u), *u.max_jobs);
  }
  w.family("gpumgr_user_fair_share_gib_seconds", "gauge",
           "A user's recent use, as fair share weighs it: GiB-seconds leased, decayed with the "
           "fair-share half-life.");
  for (const auto& u : s.users) {
    w.sample("gpumgr_user_fair_share_gib_seconds", uid_labels(u), u.fair_share_gib_s);
  }

  // Per lease and device. A lease whose use cannot be attributed there (the backend lists no
  // processes) has no used/peak sample for that device: absent, never a made-up 0.
  const auto lease_device_labels = [](const LeaseInfo& l, int device) {
    return Labels{{"job_id", l.job_id}, {"gpu", std::to_string(device)}};
  };
  w.family("gpumgr_lease_size_bytes", "gauge",
           "What a lease holds on each of its devices, in bytes.");
  for (const auto& l : s.leases) {
    for (const int d : l.devices)
      w.sample("gpumgr_lease_size_bytes", lease_device_labels(l, d), l.bytes);
  }
  w.family("gpumgr_lease_used_bytes", "gauge",
           "What a lease's holder (its process and their descendants) uses on the device at the "
           "last poll, in bytes; no sample where that cannot be measured.");
  for (const auto& l : s.leases) {
    for (const DeviceUse& u : l.usage) {
      if (u.used_bytes)
        w.sample("gpumgr_lease_used_bytes", lease_device_labels(l, u.device), *u.used_bytes);
    }
  }
  w.family("gpumgr_lease_peak_used_bytes", "gauge",
           "The most a lease's holder has used on the device during the lease, in bytes; no "
           "sample where that cannot be measured.");
  for (const auto& l : s.leases) {
    for (const DeviceUse& u : l.usage) {
      if (u.peak_used_bytes) {
        w.sample("gpumgr_lease_peak_used_bytes", lease_device_labels(l, u.device),
                 *u.peak_used_bytes);
      }
    }
  }
  w.family("gpumgr_lease_overused", "gauge",
           "1 while a lease's holder uses more than the lease (beyond the overuse tolerance) on "
           "any of its devices, else 0.");
  for (const auto& l : s.leases) {
    w.sample("gpumgr_lease_overused", {{"job_id", l.job_id}}, std::uint64_t{l.overused ? 1u : 0u});
  }

  const LedgerStats& st = s.stats;
  w.family("gpumgr_lease_overuse_total", "counter",
           "Times a lease's holder went over its lease (beyond the tolerance): one per episode.");
  w.sample("gpumgr_lease_overuse_total", {}, st.overuse_events);
  w.family("gpumgr_lease_overuse_terminations_total", "counter",
           "Leases whose holder the overuse policy (--on-overuse terminate) terminated.");
  w.sample("gpumgr_lease_overuse_terminations_total", {}, st.overuse_terminations);
  // Revocable leases (docs/scheduling.md, "Revocable leases").
  w.family("gpumgr_lease_revocable", "gauge",
           "1 for each revocable lease, labelled preemptible or resident (plain leases have no "
           "sample).");
  for (const auto& l : s.leases) {
    if (!l.revocable.empty()) {
      w.sample("gpumgr_lease_revocable", {{"job_id", l.job_id}, {"revocable", l.revocable}},
               std::uint64_t{1});
    }
  }
  w.family("gpumgr_lease_revoke_deadline_seconds", "gauge",
           "Seconds until the holder of a lease being revoked is killed unless it releases.");
  for (const auto& l : s.leases) {
    if (l.revoking)
      w.sample("gpumgr_lease_revoke_deadline_seconds", {{"job_id", l.job_id}}, l.revoke_in_s);
  }
  w.family("gpumgr_revocations_total", "counter",
           "Revocable leases revoked for a waiter (or on request), by cause: preempted (a "
           "preemptible job) or resident (an idle model).");
  w.sample("gpumgr_revocations_total", {{"cause", "preempted"}}, st.revocations_preempted);
  w.sample("gpumgr_revocations_total", {{"cause", "resident"}}, st.revocations_resident);
  w.family("gpumgr_revocation_kills_total", "counter",
           "Holders of revoked leases killed because they had not released at the grace's end.");
  w.sample("gpumgr_revocation_kills_total", {}, st.revocation_kills);
  w.family("gpumgr_jobs_total", "counter",
           "Jobs that ended, by outcome: succeeded or failed (released leases), rejected "
           "(refused), timed_out or cancelled (gave up waiting).");
  const std::pair<const char*, std::uint64_t> outcomes[] = {
      {"succeeded", st.jobs_succeeded}, {"failed", st.jobs_failed},
      {"rejected", st.jobs_rejected},   {"timed_out", st.jobs_timed_out},
      {"cancelled", st.jobs_cancelled},
  };
  for (const auto& [outcome, n] : outcomes)
    w.sample("gpumgr_jobs_total", {{"outcome", outcome}}, n);

  histogram(w, "gpumgr_job_wait_seconds",
            "Time from request to grant of every granted lease, in seconds.", st.wait_seconds);
  histogram(w, "gpumgr_job_hold_seconds", "Time from grant to release of every lease, in seconds.",
            st.hold_seconds);
  return w.take();
}

}  // namespace gpumgr::http
