// What Slurm is told about a node's GPUs so that it schedules VRAM: the gres.conf lines (a
// `Name=gpu` line and a `Name=shard` line per GPU, one shard per unit of the memory leases may
// hold there) and the `Gres=` fragment of the node's slurm.conf line (docs/slurm.md).
//
// Pure functions of their arguments: any thread may call them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gpumgr/status.h"

namespace gpumgr::slurm {

// One device of the node, as `gpumgr slurm conf` reads it from the ledger.
struct GresDevice {
  int index = 0;                     // the daemon's device index
  std::string uuid;                  // for the comment that names it
  std::uint64_t capacity_bytes = 0;  // what leases may hold there (memory limit applied)
};

struct GresOptions {
  std::uint64_t unit_bytes = std::uint64_t{1} << 30;  // one shard stands for this much VRAM
  // The device file of each GPU; "%d" becomes the device index (exactly once).
  std::string file_pattern = "/dev/nvidia%d";
  std::string node_name;  // non-empty: every line starts with NodeName=...
};

struct GresConf {
  std::string gres_conf;  // the gres.conf lines, each ending in a newline
  std::string node_gres;  // "Gres=gpu:2,shard:38" (with "NodeName=n1 " in front when named)
  std::vector<std::uint64_t> shards;  // per device, in the order given
};

// The shard unit: a unit name ("GiB", "MiB", "GB", ...) meaning one of it, or a size as
// parse_size reads it ("512MiB", "2GiB"). Errors (zero, garbage) name the text.
StatusOr<std::uint64_t> parse_shard_unit(std::string_view text);

// Checks a device file pattern: an absolute path with exactly one "%d" and no other '%',
// nothing that would split a gres.conf line (spaces, '#', control characters, ',').
Status check_file_pattern(std::string_view pattern);
// The pattern with "%d" replaced by `index` (the pattern must have passed the check).
std::string device_file(std::string_view pattern, int index);

// Checks a Slurm node name: letters, digits, '-', '_', '.', at most 64 bytes.
Status check_node_name(std::string_view name);

// The gres.conf lines and the node's Gres= fragment for `devices`. Each device gets
// floor(capacity / unit) shards; a device with room for less than one unit gets its gpu line
// but no shard line (Slurm refuses Count=0), and a comment says why. Errors: no devices, a
// bad pattern or node name, a unit that no device has room for.
StatusOr<GresConf> make_gres_conf(const std::vector<GresDevice>& devices,
                                  const GresOptions& options);

}  // namespace gpumgr::slurm
