#include "cli/render.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "gpumgr/units.h"
#include "util/terminal_text.h"

namespace gpumgr::cli {
namespace {

const char* kReset = "\033[0m";
const char* kLeased = "\033[32m";   // green
const char* kForeign = "\033[33m";  // yellow
const char* kOveruse = "\033[35m";  // magenta
const char* kDim = "\033[2m";
const char* kRed = "\033[31m";
const char* kBoldRed = "\033[1;31m";

// Every string from a snapshot is shown through this: clients choose job ids, commands and
// kinds, and none of them may reach the terminal raw.
std::string safe(std::string_view text) { return terminal_safe(text); }

// `s` (safe text) cut or filled to `width` columns; a cut ends in '~'.
std::string pad(std::string s, std::size_t width, bool right = false) {
  std::size_t columns = terminal_columns(s);
  if (columns > width) {
    s = width > 1 ? std::string(terminal_prefix(s, width - 1)) + "~"
                  : std::string(terminal_prefix(s, width));
    columns = terminal_columns(s);
  }
  const std::string fill(width > columns ? width - columns : 0, ' ');
  return right ? fill + s : s + fill;
}

std::string paint(const std::string& text, const char* colour, bool color) {
  return color ? colour + text + kReset : text;
}

std::string gib(std::uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", static_cast<double>(bytes) / static_cast<double>(kGiB));
  return buf;
}

std::string number(double value) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", value);
  return buf;
}

template <typename T>
std::string opt(const std::optional<T>& v, const char* suffix) {
  if (!v) return "-";
  std::ostringstream out;
  out << *v << suffix;
  return out.str();
}

// "5.1 GiB", "unknown", or "5.1 GiB+?" where another device's figure is unknown.
std::string use_text(const std::optional<std::uint64_t>& bytes, bool partial) {
  if (!bytes) return "unknown";
  return format_bytes(*bytes) + (partial ? "+?" : "");
}

}  // namespace

std::string format_duration(double seconds) {
  char buf[32];
  if (seconds < 60) {
    std::snprintf(buf, sizeof buf, "%.1fs", seconds);
  } else if (seconds < 3600) {
    const int s = static_cast<int>(seconds);
    std::snprintf(buf, sizeof buf, "%dm%02ds", s / 60, s % 60);
  } else {
    const int m = static_cast<int>(seconds / 60);
    std::snprintf(buf, sizeof buf, "%dh%02dm", m / 60, m % 60);
  }
  return buf;
}

std::string memory_bar(const DeviceAccount& d, int width, bool color) {
  const double total = static_cast<double>(std::max<std::uint64_t>(d.info.total_bytes, 1));
  const auto cells = [&](std::uint64_t bytes) {
    return static_cast<int>(std::lround(static_cast<double>(bytes) / total * width));
  };
  const int leased = std::min(cells(d.leased_bytes), width);
  const int overuse = std::min(cells(d.overuse_bytes), width - leased);
  const int foreign = std::min(cells(d.foreign_bytes), width - leased - overuse);
  const int cap = std::min(cells(d.capacity_bytes), width);
  std::string out = "[";
  for (int i = 0; i < width; ++i) {
    char c = '.';
    const char* col = kDim;
    if (i < leased) {
      c = '#';
      col = kLeased;
    } else if (i < leased + overuse) {
      c = '!';
      col = kOveruse;
    } else if (i < leased + overuse + foreign) {
      c = '%';
      col = kForeign;
    }
    if (i == cap && cap < width) {
      c = '|';
      col = kRed;
    }
    if (color) out += col;
    out += c;
    if (color) out += kReset;
  }
  return out + "]";
}

LeaseUse lease_use(const LeaseInfo& l) {
  LeaseUse use;
  bool unknown = l.usage.empty();
  for (const DeviceUse& u : l.usage) {
    if (!u.used_bytes) {
      unknown = true;
    } else {
      use.used_bytes = std::max(use.used_bytes.value_or(0), *u.used_bytes);
    }
    if (u.peak_used_bytes || u.used_bytes) {
      use.peak_used_bytes = std::max({use.peak_used_bytes.value_or(0),
                                      u.peak_used_bytes.value_or(0), u.used_bytes.value_or(0)});
    }
  }
  use.partial = unknown && use.used_bytes.has_value();
  return use;
}

std::string lease_bar(const LeaseInfo& l, int width, bool color) {
  width = std::max(width, 1);
  const LeaseUse use = lease_use(l);
  if (!use.used_bytes) {
    std::string label = pad(" unknown", static_cast<std::size_t>(width));
    return "[" + paint(label, kDim, color) + "]";
  }
  const std::uint64_t used = *use.used_bytes;
  const std::uint64_t peak = std::max(use.peak_used_bytes.value_or(used), used);
  const double scale = static_cast<double>(std::max<std::uint64_t>({l.bytes, peak, 1}));
  const auto cells = [&](std::uint64_t bytes) {
    return std::min(width,
                    static_cast<int>(std::lround(static_cast<double>(bytes) / scale * width)));
  };
  const int lease_end = cells(l.bytes);
  const int used_cells = cells(used);
  const int peak_cells = cells(peak);
  std::string out = "[";
  for (int i = 0; i < width; ++i) {
    char c = i < lease_end ? '.' : ' ';
    const char* col = kDim;
    if (i < used_cells) {
      c = i < lease_end ? '#' : '!';
      col = i < lease_end ? kLeased : kOveruse;
    } else if (i < peak_cells) {
      c = ':';
      col = kDim;
    }
    if (i == lease_end && c != '!') {
      c = '|';
      col = kRed;
    }
    if (color) out += col;
    out += c;
    if (color) out += kReset;
  }
  return out + "]";
}

namespace {

int count_lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

constexpr int kLeaseBarCells = 10;

// The lease table's layout: which optional columns fit.
struct LeaseColumns {
  bool bar = false;
  bool uid = true;
  bool waited = true;
};

LeaseColumns lease_columns(const RenderOptions& o) {
  LeaseColumns c;
  if (!o.lease_bars) return c;
  c.bar = true;
  // JOB KIND GPUS SIZE USED PEAK BAR PID AGE always; UID, then WAITED, where 16 columns of
  // the command still fit after them.
  const int fixed = 2 + 20 + 12 + 6 + 10 + 10 + 10 + (2 + kLeaseBarCells + 2) + 8 + 8 + 2;
  c.uid = fixed + 6 + 16 <= o.width;
  c.waited = fixed + 6 + 8 + 16 <= o.width;
  return c;
}

std::string render_unbounded(const Snapshot& s, const RenderOptions& o) {
  std::ostringstream out;
  const auto now = std::chrono::system_clock::now();
  out << "gpumgr: " << safe(s.source) << ", " << safe(s.backend.name) << " backend";
  if (!s.backend.driver_version.empty()) out << ", driver " << safe(s.backend.driver_version);
  if (!s.backend.cuda_driver_version.empty()) {
    out << ", CUDA " << safe(s.backend.cuda_driver_version);
  }
  const OveruseConfig& ov = s.config.overuse;
  out << "\nlimit " << static_cast<int>(std::lround(s.config.memory_limit * 100))
      << "% of each device, at most " << s.config.max_concurrent_jobs
      << " concurrent jobs, placement " << placement_policy_name(s.config.placement) << ", queue "
      << queue_policy_name(s.config.queue) << ", overuse policy " << overuse_policy_name(ov.policy);
  if (ov.policy == OverusePolicy::kTerminate) out << " after " << format_duration(ov.grace_s);
  out << " (tolerance " << number(ov.tolerance_percent) << "%)\n\n";

  // Fixed columns take 78 characters; the memory bar gets the rest (at least 10).
  const int bar = std::clamp(o.width - 80, 10, 60);
  out << pad("GPU", 4) << pad("NAME", 24) << pad("MEMORY", static_cast<std::size_t>(bar + 3))
      << pad("USED/TOTAL GiB", 15) << pad("CAP", 6, true) << pad("UTIL", 6, true)
      << pad("TEMP", 6, true) << pad("POWER", 8, true) << "  HEALTH\n";
  for (const auto& d : s.devices) {
    const DeviceInfo& i = d.info;
    std::string power = "-";
    if (i.power_draw_w) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.0fW", *i.power_draw_w);
      power = buf;
    }
    out << pad(std::to_string(i.index), 4) << pad(safe(i.name), 23) << " "
        << memory_bar(d, bar, o.color) << " "
        << pad(gib(i.used_bytes) + "/" + gib(i.total_bytes), 15)
        << pad(gib(d.capacity_bytes), 6, true) << pad(opt(i.gpu_utilization_percent, "%"), 6, true)
        << pad(opt(i.temperature_c, "C"), 6, true) << pad(power, 8, true) << "  "
        << (i.healthy ? "ok" : "UNHEALTHY: " + safe(i.health_reason)) << "\n";
    const std::string overuse = "overuse " + format_bytes(d.overuse_bytes);
    out << "    leased " << format_bytes(d.leased_bytes) << " in " << d.active_leases
        << " lease(s), " << (d.overuse_bytes > 0 ? paint(overuse, kOveruse, o.color) : overuse)
        << ", outside " << format_bytes(d.foreign_bytes) << ", admissible "
        << format_bytes(d.admissible_bytes)
        << (d.reserved_for_head ? ", reserved for the queue's head" : "") << "\n";
  }

  out << "    memory bars: # leased, ! overuse, % outside use, . free, | the capacity line\n";

  auto limit_rows = [&](std::size_t n) {
    return o.max_rows < 0 ? n : std::min(n, static_cast<std::size_t>(o.max_rows));
  };
  const LeaseColumns cols = lease_columns(o);
  out << "\nLEASES (" << s.leases.size() << ")\n";
  if (!s.leases.empty()) {
    out << "  " << pad("JOB", 20) << pad("KIND", 12) << pad("GPUS", 6) << pad("SIZE", 10, true)
        << pad("USED", 10, true) << pad("PEAK", 10, true);
    if (cols.bar) out << "  " << pad("USE OF LEASE", kLeaseBarCells + 2);
    out << pad("PID", 8, true);
    if (cols.uid) out << pad("UID", 6, true);
    out << pad("AGE", 8, true);
    if (cols.waited) out << pad("WAITED", 8, true);
    out << "  COMMAND\n";
    for (std::size_t k = 0; k < limit_rows(s.leases.size()); ++k) {
      const auto& l = s.leases[k];
      std::string gpus;
      for (const int d : l.devices) gpus += (gpus.empty() ? "" : ",") + std::to_string(d);
      const double age = std::chrono::duration<double>(now - l.granted_at).count();
      const LeaseUse use = lease_use(l);
      const std::string used = pad(use_text(use.used_bytes, use.partial), 10, true);
      const std::string peak = pad(use_text(use.peak_used_bytes, use.partial), 10, true);
      out << "  " << pad(safe(l.job_id), 20) << pad(l.kind.empty() ? "-" : safe(l.kind), 12)
          << pad(gpus, 6) << pad(format_bytes(l.bytes), 10, true)
          << (l.overused       ? paint(used, kBoldRed, o.color)
              : use.used_bytes ? used
                               : paint(used, kDim, o.color))
          << peak;
      if (cols.bar) out << "  " << lease_bar(l, kLeaseBarCells, o.color);
      out << pad(std::to_string(l.pid), 8, true);
      if (cols.uid) out << pad(std::to_string(l.uid), 6, true);
      out << pad(format_duration(std::max(0.0, age)), 8, true);
      if (cols.waited) out << pad(format_duration(l.waited_s), 8, true);
      out << "  " << safe(l.command) << "\n";
      // What the row has no room for, on lines of their own below it.
      if (l.overused) {
        std::string line = "OVER its lease for " + format_duration(l.overused_s) + ": uses " +
                           use_text(use.used_bytes, use.partial) + " of " + format_bytes(l.bytes);
        if (!l.enforcement.empty()) line += "; " + safe(l.enforcement);
        out << "      " << paint(line, kBoldRed, o.color) << "\n";
      } else if (!l.enforcement.empty()) {
        out << "      " << paint(safe(l.enforcement), kBoldRed, o.color) << "\n";
      }
      if (!l.estimate.empty()) out << "      size " << safe(l.estimate) << "\n";
      if (l.revoking) {
        const std::string line =
            "REVOKED" + (l.revoked_for.empty() ? "" : " for job '" + safe(l.revoked_for) + "'") +
            ": killed in " + format_duration(l.revoke_in_s) + " unless released";
        out << "      " << paint(line, kBoldRed, o.color) << "\n";
      } else if (!l.revocable.empty()) {
        out << "      revocable: "
            << (l.resident.empty() ? l.revocable : "resident '" + safe(l.resident) + "'");
        if (l.in_use_by > 0) {
          out << ", in use by " << l.in_use_by << (l.in_use_by == 1 ? " job" : " jobs");
        }
        out << "\n";
      }
      if (!l.beside_resident.empty()) {
        out << "      beside resident '" << safe(l.beside_resident) << "'\n";
      }
    }
    if (limit_rows(s.leases.size()) < s.leases.size()) {
      out << "  ... " << s.leases.size() - limit_rows(s.leases.size()) << " more\n";
    }
    out << "  ";
    if (cols.bar) out << "bars: # used, ! beyond the lease, : peak; ";
    out << "USED, PEAK: use now and at peak (highest device); unknown: not attributable here\n";
  }
  out << "\nQUEUE (" << s.queue.size() << ")\n";
  if (!s.queue.empty()) {
    out << "  " << pad("POS", 5) << pad("JOB", 20) << pad("SIZE", 11, true) << pad("GPUS", 6, true)
        << pad("PRIO", 6, true) << pad("PID", 8, true) << pad("WAITED", 9, true) << "  COMMAND\n";
    for (std::size_t k = 0; k < limit_rows(s.queue.size()); ++k) {
      const auto& w = s.queue[k];
      out << "  " << pad(std::to_string(w.position), 5) << pad(safe(w.job_id), 20)
          << pad(format_bytes(w.bytes), 11, true) << pad(std::to_string(w.gpus), 6, true)
          << pad(std::to_string(w.priority), 6, true) << pad(std::to_string(w.pid), 8, true)
          << pad(format_duration(w.waited_s), 9, true) << "  " << safe(w.command) << "\n";
      if (!w.quota_wait.empty()) out << "      waits for its quota: " << safe(w.quota_wait) << "\n";
    }
    if (limit_rows(s.queue.size()) < s.queue.size()) {
      out << "  ... " << s.queue.size() - limit_rows(s.queue.size()) << " more\n";
    }
  }
  if (!s.users.empty()) {
    // Each user's use against its quota ("-": no limit) and its fair-share use.
    auto use_text = [](double gib_s) {
      char buf[32];
      std::snprintf(buf, sizeof buf, gib_s < 10 ? "%.1f" : "%.0f", gib_s);
      return std::string(buf);
    };
    out << "\nUSERS (" << s.users.size() << ")\n";
    out << "  " << pad("UID", 8) << pad("VRAM LEASED / QUOTA", 24) << pad("JOBS / QUOTA", 14)
        << pad("WAITING", 8, true) << pad("RECENT USE", 14, true) << "\n";
    for (std::size_t k = 0; k < limit_rows(s.users.size()); ++k) {
      const UserUsage& u = s.users[k];
      const std::string vram = format_bytes(u.leased_bytes) + " / " +
                               (u.max_vram_bytes ? format_bytes(*u.max_vram_bytes) : "-");
      const std::string jobs =
          std::to_string(u.jobs) + " / " + (u.max_jobs ? std::to_string(*u.max_jobs) : "-");
      out << "  " << pad(std::to_string(u.uid), 8) << pad(vram, 24) << pad(jobs, 14)
          << pad(std::to_string(u.waiting), 8, true)
          << pad(use_text(u.fair_share_gib_s) + " GiB-s", 14, true) << "\n";
    }
    if (limit_rows(s.users.size()) < s.users.size()) {
      out << "  ... " << s.users.size() - limit_rows(s.users.size()) << " more\n";
    }
    out << "  RECENT USE: GiB-seconds leased, halved every "
        << format_duration(s.config.fair_share_half_life_s) << "; the queue orders users by it "
        << (s.config.fair_share ? "(fair share)" : "only with fair share (off)") << "\n";
  }
  const LedgerStats& st = s.stats;
  out << "\nSTATS  processed " << st.jobs_processed() << " (succeeded " << st.jobs_succeeded
      << ", failed " << st.jobs_failed << "), rejected " << st.jobs_rejected << ", timed out "
      << st.jobs_timed_out << ", cancelled " << st.jobs_cancelled << "; active " << st.active_jobs
      << " (peak " << st.peak_active_jobs << ")\n";
  out << "       overuse events " << st.overuse_events << ", terminations "
      << st.overuse_terminations << "; hold time mean " << format_duration(st.hold_seconds.mean())
      << ", max " << format_duration(st.hold_seconds.max) << "; wait mean "
      << format_duration(st.wait_seconds.mean()) << ", max " << format_duration(st.wait_seconds.max)
      << "\n";
  if (st.revocations_preempted + st.revocations_resident > 0) {
    out << "       revocations: preempted " << st.revocations_preempted << ", resident "
        << st.revocations_resident << ", killed at the grace's end " << st.revocation_kills << "\n";
  }
  return out.str();
}

}  // namespace

std::string render_status(const Snapshot& s, const RenderOptions& o) {
  std::string text = render_unbounded(s, o);
  if (o.height <= 0 || count_lines(text) <= o.height) return text;
  // Fewer lease and queue rows first: the largest row limit whose rendering fits. The line
  // count grows with the limit, so a binary search finds it.
  const int all_rows = static_cast<int>(std::max(s.leases.size(), s.queue.size()));
  int lo = 0;
  int hi = o.max_rows < 0 ? all_rows : std::min(o.max_rows, all_rows);
  RenderOptions fitted = o;
  fitted.height = -1;
  while (lo < hi) {
    fitted.max_rows = (lo + hi + 1) / 2;
    if (count_lines(render_unbounded(s, fitted)) <= o.height) {
      lo = fitted.max_rows;
    } else {
      hi = fitted.max_rows - 1;
    }
  }
  fitted.max_rows = lo;
  text = render_unbounded(s, fitted);
  const int lines = count_lines(text);
  if (lines <= o.height) return text;
  // Still too tall (many devices, a tiny terminal): keep the top, say what was cut.
  std::size_t end = 0;
  for (int i = 0; i < o.height - 1; ++i) end = text.find('\n', end) + 1;
  return text.substr(0, end) + "... " + std::to_string(lines - (o.height - 1)) +
         " more lines: enlarge the terminal\n";
}

}  // namespace gpumgr::cli
