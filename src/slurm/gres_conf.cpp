#include "slurm/gres_conf.h"

#include <string>

#include "gpumgr/units.h"

namespace gpumgr::slurm {

StatusOr<std::uint64_t> parse_shard_unit(std::string_view text) {
  if (text.empty()) return InvalidArgument("empty shard unit: expected e.g. GiB or 512MiB");
  // A bare unit name means one of it ("GiB" = "1GiB").
  const bool starts_with_digit = text.front() >= '0' && text.front() <= '9';
  auto bytes = parse_size(starts_with_digit ? std::string(text) : "1" + std::string(text));
  if (!bytes.ok()) {
    return InvalidArgument("bad shard unit '" + std::string(text) +
                           "': " + bytes.status().message());
  }
  if (*bytes == 0) return InvalidArgument("bad shard unit '" + std::string(text) + "': zero");
  return *bytes;
}

Status check_file_pattern(std::string_view pattern) {
  const std::string quoted = "'" + std::string(pattern) + "'";
  if (pattern.empty() || pattern.front() != '/') {
    return InvalidArgument("device file pattern " + quoted +
                           " must be an absolute path, e.g. /dev/nvidia%d");
  }
  const std::size_t at = pattern.find("%d");
  if (at == std::string_view::npos) {
    return InvalidArgument("device file pattern " + quoted +
                           " has no %d (where the device index goes)");
  }
  if (pattern.find('%', at + 2) != std::string_view::npos ||
      pattern.substr(0, at).find('%') != std::string_view::npos) {
    return InvalidArgument("device file pattern " + quoted + " may hold one %d and no other %");
  }
  for (const char c : pattern) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= ' ' || u == 0x7f || c == '#' || c == ',' || c == '=') {
      return InvalidArgument("device file pattern " + quoted +
                             " holds a character gres.conf cannot take (space, control, '#', ',' "
                             "or '=')");
    }
  }
  return Status::Ok();
}

std::string device_file(std::string_view pattern, int index) {
  const std::size_t at = pattern.find("%d");
  if (at == std::string_view::npos) return std::string(pattern);
  return std::string(pattern.substr(0, at)) + std::to_string(index) +
         std::string(pattern.substr(at + 2));
}

Status check_node_name(std::string_view name) {
  if (name.empty() || name.size() > 64) {
    return InvalidArgument("node name must have 1 to 64 characters");
  }
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    if (!ok) {
      return InvalidArgument("bad node name '" + std::string(name) +
                             "': only letters, digits, '-', '_' and '.'");
    }
  }
  return Status::Ok();
}

StatusOr<GresConf> make_gres_conf(const std::vector<GresDevice>& devices,
                                  const GresOptions& options) {
  if (devices.empty()) return InvalidArgument("no devices: nothing for Slurm to schedule");
  if (options.unit_bytes == 0) return InvalidArgument("the shard unit must be positive");
  if (Status s = check_file_pattern(options.file_pattern); !s.ok()) return s;
  if (!options.node_name.empty()) {
    if (Status s = check_node_name(options.node_name); !s.ok()) return s;
  }
  const std::string prefix =
      options.node_name.empty() ? std::string() : "NodeName=" + options.node_name + " ";
  GresConf out;
  std::string gpu_lines;
  std::string shard_lines;
  std::uint64_t total_shards = 0;
  for (const auto& d : devices) {
    const std::string file = device_file(options.file_pattern, d.index);
    const std::uint64_t shards = d.capacity_bytes / options.unit_bytes;
    out.shards.push_back(shards);
    gpu_lines += prefix + "Name=gpu File=" + file + "\n";
    if (shards == 0) {
      shard_lines += "# device " + std::to_string(d.index) + " (" + file +
                     "): " + format_bytes(d.capacity_bytes) + " leasable, less than one unit of " +
                     format_bytes(options.unit_bytes) + ": no shards\n";
      continue;
    }
    shard_lines += prefix + "Name=shard Count=" + std::to_string(shards) + " File=" + file + "\n";
    total_shards += shards;
  }
  if (total_shards == 0) {
    return InvalidArgument("no device has room for one unit of " +
                           format_bytes(options.unit_bytes) + ": choose a smaller --unit");
  }
  std::string header = "# gres.conf";
  if (!options.node_name.empty()) header += " for node " + options.node_name;
  header += ", from `gpumgr slurm conf`: one shard is " + format_bytes(options.unit_bytes) +
            " of leasable VRAM\n";
  for (std::size_t i = 0; i < devices.size(); ++i) {
    std::string uuid = devices[i].uuid;
    for (char& c : uuid) {
      if (static_cast<unsigned char>(c) < ' ' || c == 0x7f) c = '?';  // one comment line
    }
    header += "# device " + std::to_string(devices[i].index) + " " + uuid + ": " +
              format_bytes(devices[i].capacity_bytes) + " leasable, " +
              std::to_string(out.shards[i]) + " shards\n";
  }
  out.gres_conf = header + gpu_lines + shard_lines;
  out.node_gres = prefix + "Gres=gpu:" + std::to_string(devices.size()) +
                  ",shard:" + std::to_string(total_shards);
  return out;
}

}  // namespace gpumgr::slurm
