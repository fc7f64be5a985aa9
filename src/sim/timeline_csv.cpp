#include "sim/timeline_csv.h"

#include <array>
#include <charconv>

namespace gpumgr::sim {
namespace {

// The shortest text that reads back as the same double.
std::string number(double value) {
  std::array<char, 32> buf{};
  const auto [end, ec] = std::to_chars(buf.data(), buf.data() + buf.size(), value);
  if (ec != std::errc()) return "nan";  // cannot happen: 32 characters hold any double
  return std::string(buf.data(), end);
}

}  // namespace

std::string csv_field(std::string_view field) {
  if (field.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(field);
  std::string quoted = "\"";
  for (const char c : field) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  quoted += '"';
  return quoted;
}

void write_timeline_header(std::ostream& out) {
  out << "policy,residency,job_id,user,kind,gpus,vram_mib,arrival_s,start_s,end_s,wait_s,"
         "devices,loaded_model\n";
}

bool write_timeline_rows(std::ostream& out, const std::vector<TraceJob>& jobs,
                         const SimReport& report) {
  if (report.timeline.size() != jobs.size()) return false;
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    if (report.timeline[i].job_id != jobs[i].job_id) return false;  // before writing any row
  }
  constexpr double kMiB = 1024.0 * 1024.0;
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    const TraceJob& job = jobs[i];
    const SimJob& s = report.timeline[i];
    std::string devices;
    for (const int d : s.devices) {
      if (!devices.empty()) devices += ' ';
      devices += std::to_string(d);
    }
    out << csv_field(report.policy) << ',' << csv_field(report.residency) << ','
        << csv_field(job.job_id) << ',' << csv_field(job.user) << ',' << csv_field(job.kind) << ','
        << job.gpus << ',' << number(static_cast<double>(job.vram_bytes) / kMiB) << ','
        << number(s.arrival_s) << ',' << number(s.start_s) << ',' << number(s.end_s) << ','
        << number(s.start_s - s.arrival_s) << ',' << devices << ',' << (s.loaded_model ? 1 : 0)
        << '\n';
  }
  return true;
}

}  // namespace gpumgr::sim
