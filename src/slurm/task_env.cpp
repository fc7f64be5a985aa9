#include "slurm/task_env.h"

#include <charconv>

#include "gpumgr/units.h"
#include "slurm/gres_conf.h"

namespace gpumgr::slurm {

namespace {

// Slurm's special step ids (slurm.h: SLURM_BATCH_SCRIPT, SLURM_EXTERN_CONT,
// SLURM_INTERACTIVE_STEP), kept here so that this file needs no Slurm header.
constexpr std::uint32_t kBatchStep = 0xfffffffb;
constexpr std::uint32_t kExternStep = 0xfffffffc;
constexpr std::uint32_t kInteractiveStep = 0xfffffffa;

std::optional<std::uint64_t> parse_uint(std::string_view text) {
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

bool good_key(std::string_view key) {
  if (key.empty()) return false;
  for (const char c : key) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

StatusOr<PluginConfig> parse_plugin_args(const std::vector<std::string>& args) {
  PluginConfig config;
  for (const auto& arg : args) {
    if (arg == "optional") {
      config.optional = true;
    } else if (arg.rfind("socket=", 0) == 0) {
      config.socket = arg.substr(7);
      if (config.socket.empty() || config.socket.front() != '/') {
        return InvalidArgument("gpumgr_spank: socket= needs an absolute path, got '" +
                               config.socket + "'");
      }
      if (auto s = expand_socket_path(config.socket, "node"); !s.ok()) return s.status();
    } else if (arg.rfind("unit=", 0) == 0) {
      auto unit = parse_shard_unit(arg.substr(5));
      if (!unit.ok()) return InvalidArgument("gpumgr_spank: unit=: " + unit.status().message());
      config.unit_bytes = *unit;
    } else {
      return InvalidArgument("gpumgr_spank: unknown argument '" + arg +
                             "' (expected socket=PATH, unit=SIZE or optional)");
    }
  }
  return config;
}

StatusOr<std::string> expand_socket_path(std::string_view pattern, std::string_view node) {
  std::string out;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] != '%') {
      out += pattern[i];
      continue;
    }
    const char next = i + 1 < pattern.size() ? pattern[i + 1] : '\0';
    if (next == 'n') {
      out += node;
    } else if (next == '%') {
      out += '%';
    } else {
      return InvalidArgument("socket path '" + std::string(pattern) +
                             "': only %n (the node name) and %% may follow a %");
    }
    ++i;
  }
  return out;
}

StatusOr<std::vector<int>> slurm_gpu_indices(const std::optional<std::string>& step_gpus,
                                             const std::optional<std::string>& job_gpus,
                                             const std::optional<std::string>& cuda_visible) {
  const char* name = "SLURM_STEP_GPUS";
  const std::optional<std::string>* list = &step_gpus;
  if (!step_gpus || step_gpus->empty()) {
    name = "SLURM_JOB_GPUS";
    list = &job_gpus;
  }
  if (!*list || (*list)->empty()) {
    name = "CUDA_VISIBLE_DEVICES";
    list = &cuda_visible;
  }
  if (!*list || (*list)->empty()) {
    return Status(ErrorCode::kFailedPrecondition,
                  "Slurm gave this task no GPU: ask for --gres=shard:N (or --gres=gpu:N) with "
                  "--vram");
  }
  std::vector<int> out;
  std::string_view rest = **list;
  while (true) {
    const std::size_t comma = rest.find(',');
    const std::string_view item = rest.substr(0, comma);
    const auto v = parse_uint(item);
    if (!v || *v > 1023) {
      return Status(ErrorCode::kFailedPrecondition,
                    std::string(name) + "='" + **list +
                        "' is not a list of node-local GPU indices (a step inside a task that "
                        "already holds a lease sees UUIDs: run it without --vram)");
    }
    bool seen = false;
    for (int d : out) seen = seen || d == static_cast<int>(*v);
    if (!seen) out.push_back(static_cast<int>(*v));
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return out;
}

std::string lease_job_id(std::uint32_t job_id, std::uint32_t step_id, std::uint32_t task_id) {
  std::string step = step_id == kBatchStep         ? "batch"
                     : step_id == kExternStep      ? "extern"
                     : step_id == kInteractiveStep ? "interactive"
                                                   : std::to_string(step_id);
  return "slurm-" + std::to_string(job_id) + "." + step + "." + std::to_string(task_id);
}

StatusOr<std::optional<std::uint64_t>> lease_bytes(const std::optional<std::string>& vram,
                                                   const std::optional<std::string>& shards,
                                                   std::uint64_t unit_bytes,
                                                   std::uint32_t local_tasks) {
  if (vram) {
    if (*vram == "auto") return std::optional<std::uint64_t>(0);
    auto bytes = parse_size(*vram);
    if (!bytes.ok()) return InvalidArgument("--vram: " + bytes.status().message());
    if (*bytes == 0) return InvalidArgument("--vram: must be positive");
    return std::optional<std::uint64_t>(*bytes);
  }
  if (!shards || shards->empty()) return std::optional<std::uint64_t>();
  const auto count = parse_uint(*shards);
  if (!count) {
    return InvalidArgument("SLURM_SHARDS_ON_NODE='" + *shards + "' is not a number of shards");
  }
  const std::uint64_t tasks = local_tasks == 0 ? 1 : local_tasks;
  if (*count == 0 || unit_bytes == 0) return std::optional<std::uint64_t>();
  if (*count > UINT64_MAX / unit_bytes) {
    return InvalidArgument("SLURM_SHARDS_ON_NODE='" + *shards + "' is too many shards");
  }
  const std::uint64_t each = *count * unit_bytes / tasks;
  if (each == 0) return std::optional<std::uint64_t>();
  return std::optional<std::uint64_t>(each);
}

std::string encode_message(const Message& message) {
  std::string out;
  for (const auto& [key, value] : message) {
    std::string v = value;
    for (char& c : v) {
      if (c == '\n' || c == '\r') c = ' ';
    }
    out += key + "=" + v + "\n";
  }
  out += "\n";
  return out;
}

StatusOr<Message> decode_message(std::string_view text) {
  Message out;
  while (true) {
    const std::size_t nl = text.find('\n');
    if (nl == std::string_view::npos) return InvalidArgument("message without its end");
    const std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    if (line.empty()) {
      if (!text.empty()) return InvalidArgument("text after the end of the message");
      return out;
    }
    const std::size_t eq = line.find('=');
    if (eq == std::string_view::npos || !good_key(line.substr(0, eq))) {
      return InvalidArgument("bad message line '" + std::string(line) + "'");
    }
    out[std::string(line.substr(0, eq))] = std::string(line.substr(eq + 1));
  }
}

}  // namespace gpumgr::slurm
