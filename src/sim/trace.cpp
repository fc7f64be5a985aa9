#include "sim/trace.h"

#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "core/scheduler.h"
#include "gpumgr/units.h"

namespace gpumgr::sim {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

std::string at_line(std::size_t line) { return "line " + std::to_string(line) + ": "; }

// Splits one CSV line. Quoted fields may contain commas and doubled quotes ("" for ").
// Fields are trimmed of surrounding blanks, as spreadsheets often pad them.
StatusOr<std::vector<std::string>> split_csv(std::string_view line, std::size_t line_no) {
  std::vector<std::string> fields;
  std::string field;
  std::size_t i = 0;
  while (true) {
    field.clear();
    // Skip blanks before a possible opening quote.
    std::size_t j = i;
    while (j < line.size() && (line[j] == ' ' || line[j] == '\t')) ++j;
    if (j < line.size() && line[j] == '"') {
      i = j + 1;
      bool closed = false;
      while (i < line.size()) {
        if (line[i] == '"') {
          if (i + 1 < line.size() && line[i + 1] == '"') {
            field += '"';
            i += 2;
            continue;
          }
          closed = true;
          ++i;
          break;
        }
        field += line[i++];
      }
      if (!closed) return InvalidArgument(at_line(line_no) + "unterminated quoted field");
      while (i < line.size() && line[i] != ',') {
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r') {
          return InvalidArgument(at_line(line_no) + "text after a closing quote");
        }
        ++i;
      }
      fields.push_back(field);
    } else {
      const std::size_t end = std::min(line.find(',', i), line.size());
      fields.emplace_back(trim(line.substr(i, end - i)));
      i = end;
    }
    if (i >= line.size()) break;
    ++i;  // past the comma; a trailing comma yields one more (empty) field
  }
  return fields;
}

enum Column {
  kArrival,
  kVram,
  kDuration,
  kGpus,
  kPriority,
  kJobId,
  kKind,
  kPreemptible,
  kResident,
  kUser,
  kModel,
  kModelVram,
  kLoad,
  kColumnCount
};
constexpr std::array<const char*, kColumnCount> kColumnNames = {
    "arrival_s",   "vram_mib", "duration_s", "gpus",  "priority",       "job_id", "kind",
    "preemptible", "resident", "user",       "model", "model_vram_mib", "load_s"};
constexpr int kRequiredColumns = 3;  // the first three of kColumnNames

struct Cell {
  std::size_t line;
  const char* column;
  std::string_view text;
  std::string error(std::string_view what) const {
    return at_line(line) + column + ": '" + std::string(text) + "' " + std::string(what);
  }
};

StatusOr<double> parse_real(const Cell& cell) {
  double value = 0;
  const char* first = cell.text.data();
  const char* last = first + cell.text.size();
  const auto [ptr, ec] = std::from_chars(first, last, value);
  if (cell.text.empty() || ec == std::errc::invalid_argument || ptr != last) {
    return InvalidArgument(cell.error("is not a number"));
  }
  if (ec == std::errc::result_out_of_range || !std::isfinite(value)) {
    return InvalidArgument(cell.error("is not a finite number"));
  }
  return value;
}

StatusOr<double> parse_non_negative(const Cell& cell) {
  StatusOr<double> value = parse_real(cell);
  if (!value.ok()) return value;
  if (*value < 0) return InvalidArgument(cell.error("is negative"));
  return value;
}

StatusOr<int> parse_int(const Cell& cell) {
  int value = 0;
  const char* first = cell.text.data();
  const char* last = first + cell.text.size();
  const auto [ptr, ec] = std::from_chars(first, last, value);
  if (cell.text.empty() || ec == std::errc::invalid_argument || ptr != last) {
    return InvalidArgument(cell.error("is not an integer"));
  }
  if (ec == std::errc::result_out_of_range) return InvalidArgument(cell.error("is out of range"));
  return value;
}

// A model's name is printed in reports and becomes part of a resident's name: checked as
// resident names are, with room left for the "@<device>" suffix.
Status check_model_name(std::string_view name) {
  if (name.size() > kMaxModelNameLength) {
    return InvalidArgument("model name is " + std::to_string(name.size()) +
                           " characters long; the limit is " + std::to_string(kMaxModelNameLength));
  }
  if (Status s = core::check_resident_name(name); !s.ok()) {
    std::string why = s.message();
    if (why.rfind("resident name", 0) == 0) why = "model name" + why.substr(13);
    return InvalidArgument(why);
  }
  return Status::Ok();
}

// Lease sizes beyond 2^53 bytes (8 PiB) are surely mistakes, and beyond it a double no longer
// holds every integer, so that the conversion below could not be exact.
constexpr double kMaxVramBytes = 9007199254740992.0;

}  // namespace

StatusOr<std::vector<TraceJob>> parse_trace(std::istream& in) {
  std::string line;
  std::size_t line_no = 0;

  // The header: the first non-blank line.
  std::vector<std::string> header;
  while (std::getline(in, line)) {
    ++line_no;
    std::string_view view = line;
    if (line_no == 1 && view.starts_with("\xEF\xBB\xBF")) view.remove_prefix(3);  // UTF-8 BOM
    if (trim(view).empty()) continue;
    StatusOr<std::vector<std::string>> fields = split_csv(view, line_no);
    if (!fields.ok()) return fields.status();
    header = std::move(fields).value();
    break;
  }
  if (header.empty()) {
    return InvalidArgument("empty trace: no header line (need arrival_s,vram_mib,duration_s)");
  }

  std::array<std::optional<std::size_t>, kColumnCount> index;
  for (std::size_t i = 0; i < header.size(); ++i) {
    for (int c = 0; c < kColumnCount; ++c) {
      if (header[i] != kColumnNames[c]) continue;
      if (index[c]) {
        return InvalidArgument(at_line(line_no) + "column " + kColumnNames[c] +
                               " appears twice in the header");
      }
      index[c] = i;
    }
  }
  for (int c = 0; c < kRequiredColumns; ++c) {
    if (!index[c]) {
      return InvalidArgument(at_line(line_no) + "missing required column " + kColumnNames[c] +
                             " (a trace needs arrival_s,vram_mib,duration_s)");
    }
  }

  std::vector<TraceJob> jobs;
  std::unordered_map<std::string, std::size_t> id_lines;  // job id -> line that used it
  // Each model's figures and the line that first gave them: every job on it must agree.
  struct ModelSeen {
    std::size_t line;
    std::uint64_t bytes;
    double load_s;
    std::string vram_text, load_text;
  };
  std::unordered_map<std::string, ModelSeen> models;
  while (std::getline(in, line)) {
    ++line_no;
    if (trim(line).empty()) continue;
    StatusOr<std::vector<std::string>> split = split_csv(line, line_no);
    if (!split.ok()) return split.status();
    const std::vector<std::string>& fields = *split;
    if (fields.size() != header.size()) {
      return InvalidArgument(at_line(line_no) + "expected " + std::to_string(header.size()) +
                             " fields as in the header, got " + std::to_string(fields.size()));
    }
    auto cell = [&](Column c) { return Cell{line_no, kColumnNames[c], fields[*index[c]]}; };

    TraceJob job;
    StatusOr<double> arrival = parse_non_negative(cell(kArrival));
    if (!arrival.ok()) return arrival.status();
    job.arrival_s = *arrival;

    StatusOr<double> vram = parse_non_negative(cell(kVram));
    if (!vram.ok()) return vram.status();
    const double bytes = std::round(*vram * static_cast<double>(kMiB));
    if (bytes < 1) return InvalidArgument(cell(kVram).error("must be positive"));
    if (bytes > kMaxVramBytes) return InvalidArgument(cell(kVram).error("is too large"));
    job.vram_bytes = static_cast<std::uint64_t>(bytes);

    StatusOr<double> duration = parse_non_negative(cell(kDuration));
    if (!duration.ok()) return duration.status();
    job.duration_s = *duration;

    // Optional columns: an absent column or an empty cell takes the default.
    if (index[kGpus] && !fields[*index[kGpus]].empty()) {
      StatusOr<int> gpus = parse_int(cell(kGpus));
      if (!gpus.ok()) return gpus.status();
      if (*gpus < 1) return InvalidArgument(cell(kGpus).error("must be at least 1"));
      job.gpus = *gpus;
    }
    if (index[kPriority] && !fields[*index[kPriority]].empty()) {
      StatusOr<int> priority = parse_int(cell(kPriority));
      if (!priority.ok()) return priority.status();
      job.priority = *priority;
    }
    if (index[kJobId] && !fields[*index[kJobId]].empty()) {
      job.job_id = fields[*index[kJobId]];
    } else {
      job.job_id = std::to_string(jobs.size() + 1);
    }
    if (index[kKind] && !fields[*index[kKind]].empty()) {
      job.kind = fields[*index[kKind]];
      if (Status s = core::check_kind(job.kind); !s.ok()) {
        return InvalidArgument(at_line(line_no) + "kind: " + s.message());
      }
    }
    if (index[kPreemptible] && !fields[*index[kPreemptible]].empty()) {
      const std::string& flag = fields[*index[kPreemptible]];
      if (flag != "0" && flag != "1") {
        return InvalidArgument(cell(kPreemptible).error("must be 0 or 1"));
      }
      job.preemptible = flag == "1";
    }
    if (index[kResident] && !fields[*index[kResident]].empty()) {
      job.resident = fields[*index[kResident]];
      if (Status s = core::check_resident_name(job.resident); !s.ok()) {
        return InvalidArgument(at_line(line_no) + "resident: " + s.message());
      }
      if (job.preemptible) {
        return InvalidArgument(at_line(line_no) +
                               "a job is either preemptible or resident, not both");
      }
    }
    if (index[kUser] && !fields[*index[kUser]].empty()) {
      job.user = fields[*index[kUser]];
      // A user's name is checked as a kind is: it is printed in the per-user report.
      if (Status s = core::check_kind(job.user); !s.ok()) {
        std::string why = s.message();
        if (why.rfind("job kind", 0) == 0) why = "user" + why.substr(8);
        return InvalidArgument(at_line(line_no) + "user: " + why);
      }
    }
    auto given = [&](Column c) { return index[c] && !fields[*index[c]].empty(); };
    if (given(kModel)) {
      job.model = fields[*index[kModel]];
      if (Status s = check_model_name(job.model); !s.ok()) {
        return InvalidArgument(at_line(line_no) + "model: " + s.message());
      }
      if (job.preemptible || !job.resident.empty()) {
        return InvalidArgument(at_line(line_no) + "a job on a model is neither preemptible nor " +
                               "resident: the replay keeps its model resident itself");
      }
      if (job.gpus != 1) {
        return InvalidArgument(at_line(line_no) + "a job on a model takes one GPU, not " +
                               std::to_string(job.gpus));
      }
      for (const Column c : {kModelVram, kLoad}) {
        if (!given(c)) {
          return InvalidArgument(at_line(line_no) + kColumnNames[c] + ": a job on model '" +
                                 job.model + "' needs its " + kColumnNames[c]);
        }
      }
      StatusOr<double> model_vram = parse_non_negative(cell(kModelVram));
      if (!model_vram.ok()) return model_vram.status();
      const double model_bytes = std::round(*model_vram * static_cast<double>(kMiB));
      if (model_bytes < 1) return InvalidArgument(cell(kModelVram).error("must be positive"));
      if (model_bytes + bytes > kMaxVramBytes) {
        return InvalidArgument(cell(kModelVram).error("is too large"));
      }
      job.model_bytes = static_cast<std::uint64_t>(model_bytes);
      StatusOr<double> load = parse_non_negative(cell(kLoad));
      if (!load.ok()) return load.status();
      job.load_s = *load;
      const auto [seen, first] =
          models.emplace(job.model, ModelSeen{line_no, job.model_bytes, job.load_s,
                                              fields[*index[kModelVram]], fields[*index[kLoad]]});
      if (!first && seen->second.bytes != job.model_bytes) {
        return InvalidArgument(cell(kModelVram)
                                   .error("differs from the " + seen->second.vram_text +
                                          " that line " + std::to_string(seen->second.line) +
                                          " gives model '" + job.model + "'"));
      }
      if (!first && seen->second.load_s != job.load_s) {
        return InvalidArgument(cell(kLoad).error("differs from the " + seen->second.load_text +
                                                 " that line " + std::to_string(seen->second.line) +
                                                 " gives model '" + job.model + "'"));
      }
    } else {
      for (const Column c : {kModelVram, kLoad}) {
        if (given(c)) {
          return InvalidArgument(at_line(line_no) + kColumnNames[c] +
                                 ": a job without a model (model column) has no " +
                                 kColumnNames[c]);
        }
      }
    }
    const auto [it, inserted] = id_lines.emplace(job.job_id, line_no);
    if (!inserted) {
      return InvalidArgument(at_line(line_no) + "job_id: '" + job.job_id +
                             "' duplicates the job of line " + std::to_string(it->second));
    }
    jobs.push_back(std::move(job));
  }
  if (in.bad()) return InvalidArgument(at_line(line_no + 1) + "read error");
  return jobs;
}

StatusOr<std::vector<TraceJob>> load_trace(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return NotFound("cannot open trace '" + path + "': " + std::strerror(errno));
  }
  StatusOr<std::vector<TraceJob>> jobs = parse_trace(in);
  if (!jobs.ok()) return Status(jobs.status().code(), path + ": " + jobs.status().message());
  return jobs;
}

}  // namespace gpumgr::sim
