// Manager: the facade users hold. It joins a ledger (what has been promised: in-process, or
// the host's daemon) with the framework hooks of this process (cache cleanup after a job,
// framework memory figures) and the CUDA driver (device synchronisation).
//
// Every method may be called from any thread, concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "gpumgr/backends.h"
#include "gpumgr/lease.h"
#include "gpumgr/ledger.h"
#include "gpumgr/status.h"
#include "gpumgr/units.h"

namespace gpumgr {

struct ManagerOptions {
  std::string device = "auto";  // "auto", "cuda", "cuda:N", "cpu"
  int max_concurrent_jobs = 3;
  double memory_limit = 0.8;  // 0 < x <= 1: the share of each device leases may hold
  PlacementPolicy placement = PlacementPolicy::kBestFit;
  QueuePolicy queue = QueuePolicy::kBackfill;
  std::chrono::milliseconds poll_interval{250};
  // Simulated devices instead of hardware; empty: the GPUMGR_SIMULATE variable, if set.
  std::string simulate;
  // The daemon's socket; empty: the GPUMGR_SOCKET variable, if set; else in-process.
  std::string socket;
  // Never use the daemon, even when GPUMGR_SOCKET is set (the daemon itself uses this).
  bool in_process_only = false;
  // In-process only: what to do when a holder uses more than its lease. The in-process
  // manager supports OverusePolicy::kReport only (it cannot signal other processes' trees
  // safely); kTerminate is refused with an error that says to use the daemon.
  OveruseConfig overuse;
  // In-process only: the SQLite file that keeps the job-kind history (learned estimates);
  // empty: no history (the daemon keeps one in its state directory).
  std::string history_path;
};

// Describes how two option sets differ ("max_concurrent_jobs: 3 vs 5"); empty when equal.
std::string describe_option_difference(const ManagerOptions& a, const ManagerOptions& b);

// Framework-level memory of this process on one device (torch's allocated / reserved /
// max allocated), from the provider a framework binding installs.
struct FrameworkMemory {
  std::uint64_t allocated_bytes = 0;
  std::uint64_t reserved_bytes = 0;
  std::uint64_t peak_allocated_bytes = 0;
};

class Manager {
 public:
  // Validates the options, resolves the device selector and opens the backend (or connects
  // to the daemon). Errors name the bad option.
  static StatusOr<std::unique_ptr<Manager>> create(const ManagerOptions& options = {});
  // In-process over a given backend (tests, embedding): options.device may still pin.
  static StatusOr<std::unique_ptr<Manager>> create(const ManagerOptions& options,
                                                   std::shared_ptr<DeviceBackend> backend);
  // Over any ledger (e.g. a daemon client).
  static StatusOr<std::unique_ptr<Manager>> create_with_ledger(const ManagerOptions& options,
                                                               std::shared_ptr<Ledger> ledger,
                                                               std::string device_string);
  ~Manager();
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;

  const ManagerOptions& options() const;
  // What torch.device accepts for this manager: "cuda", "cuda:N" or "cpu".
  const std::string& device_string() const;
  // Whether jobs run on GPUs (false for the CPU fallback; true for simulated GPUs).
  bool uses_gpu() const;
  // How the device selector was resolved ("auto: no NVIDIA driver (...); using the CPU").
  const std::string& selection_note() const;

  StatusOr<bool> can_admit(std::uint64_t bytes, int gpus = 1);
  StatusOr<Lease> try_acquire(const LeaseRequest& request);
  StatusOr<Lease> acquire(const LeaseRequest& request, const WaitOptions& wait = {});
  // Releases by job id (for callers that keep ids rather than Lease objects), then runs the
  // cleanup hook on the lease's devices.
  Status release(std::string_view job_id, JobOutcome outcome = JobOutcome::kSucceeded);
  Status cancel(std::string_view job_id);
  StatusOr<Snapshot> snapshot();

  // Runs after every released lease, once per leased device, outside every lock (the Python
  // module empties torch's cache here). Exceptions must not escape it.
  void set_cleanup_hook(std::function<void(int device)> hook);
  // Runs the cleanup hook on `device` now (-1: every device this manager has used).
  void run_cleanup(int device = -1);
  void set_framework_memory_provider(std::function<std::optional<FrameworkMemory>(int device)> p);
  // The provider's figures for `device`, or empty when no provider is set or it has none.
  std::optional<FrameworkMemory> framework_memory(int device) const;

  // Waits for all work on `device` to finish, through the CUDA driver. kUnavailable where
  // there is no driver or the manager runs on the CPU.
  Status synchronize(int device);

  std::shared_ptr<Ledger> ledger() const;

 private:
  Manager(std::shared_ptr<detail::ManagerCore> core);
  std::shared_ptr<detail::ManagerCore> core_;
};

// The process-wide default manager. The first call creates it with its options; later calls
// return the same manager. When a later call's options differ, `difference` (if given) is
// set to describe how, so that callers can report it rather than ignore it silently.
StatusOr<Manager*> default_manager(const ManagerOptions& options = {},
                                   std::string* difference = nullptr);

}  // namespace gpumgr
