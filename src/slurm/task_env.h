// How a Slurm task's lease is described: the plugin's arguments, the GPUs Slurm gave the task
// (from its environment), the lease's size and job id, and the small key=value messages that
// slurmstepd and the task exchange through a pipe (spank_plugin.cpp).
//
// Pure functions of their arguments: any thread (and a freshly forked child) may call them;
// none starts a thread or takes a lock.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gpumgr/status.h"

namespace gpumgr::slurm {

// The plugin's arguments on its plugstack.conf line.
struct PluginConfig {
  // The daemon's socket; "%n" becomes the Slurm node name (several slurmd on one host each
  // reach their own daemon), "%%" a '%'.
  std::string socket = "/run/gpumgr/gpumgr.sock";
  bool optional = false;  // no daemon: run unmanaged with a warning instead of failing
  std::uint64_t unit_bytes = std::uint64_t{1} << 30;  // one shard's VRAM (as `slurm conf`)
};
// Parses `socket=PATH`, `optional`, `unit=GiB`. Errors name the argument.
StatusOr<PluginConfig> parse_plugin_args(const std::vector<std::string>& args);

// The socket pattern with "%n" replaced by `node` and "%%" by '%'. kInvalidArgument for any
// other '%' sequence.
StatusOr<std::string> expand_socket_path(std::string_view pattern, std::string_view node);

// The node-local GPU indices Slurm gave a task, from its environment: SLURM_STEP_GPUS, else
// SLURM_JOB_GPUS, else CUDA_VISIBLE_DEVICES (what gres/shard sets). Each is a comma list of
// indices; empty optionals are unset variables. kFailedPrecondition when none is set (Slurm
// gave the task no GPU) or the list holds anything but indices (UUIDs: the step runs inside a
// task that already holds a lease).
StatusOr<std::vector<int>> slurm_gpu_indices(const std::optional<std::string>& step_gpus,
                                             const std::optional<std::string>& job_gpus,
                                             const std::optional<std::string>& cuda_visible);

// "slurm-JOBID.STEP.TASK", with STEP "batch", "extern" or "interactive" for Slurm's special
// steps.
std::string lease_job_id(std::uint32_t job_id, std::uint32_t step_id, std::uint32_t task_id);

// The size of one task's lease: --vram when given ("12GiB", a bare number is MiB; "auto" is
// 0: the kind's learned estimate), else SLURM_SHARDS_ON_NODE shards of `unit_bytes` shared
// evenly by the node's `local_tasks` tasks. Empty (no lease) when neither is given.
// Errors: a bad or zero --vram, a bad shard count.
StatusOr<std::optional<std::uint64_t>> lease_bytes(const std::optional<std::string>& vram,
                                                   const std::optional<std::string>& shards,
                                                   std::uint64_t unit_bytes,
                                                   std::uint32_t local_tasks);

// The messages between slurmstepd and a task: lines `KEY=VALUE`, an empty line ending the
// message. Keys are [A-Za-z0-9_]; values lose any newline (replaced by a space).
using Message = std::map<std::string, std::string>;
std::string encode_message(const Message& message);
// Parses one whole message (the text up to and including its empty line). Errors for a line
// without '=', a bad key or a missing end.
StatusOr<Message> decode_message(std::string_view text);

}  // namespace gpumgr::slurm
