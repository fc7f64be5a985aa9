// The three device backends, and how a device selector picks between them.
//
// SimulatedBackend is public so that tests, demos and users' own CI can script what the
// devices do (outside processes taking memory, utilisation, failures). All functions here
// may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "gpumgr/device.h"
#include "gpumgr/status.h"

namespace gpumgr {

// Parses a GPUMGR_SIMULATE spec: `DEV(,DEV)*` with `DEV := [Nx]SIZE`, e.g. "2x24GiB" or
// "24GiB,80GiB". Returns the memory size of each device, in order.
StatusOr<std::vector<std::uint64_t>> parse_simulate_spec(std::string_view spec);

// Simulated devices whose state tests script. Memory "used" is what the manager's leases are
// told to use (set_process_usage), plus what a processes file lists (set_processes_file),
// plus outside use (set_foreign_usage).
class SimulatedBackend final : public DeviceBackend {
 public:
  explicit SimulatedBackend(std::vector<std::uint64_t> sizes);
  static StatusOr<std::shared_ptr<SimulatedBackend>> from_spec(std::string_view spec);

  BackendInfo info() const override;
  StatusOr<std::vector<DeviceInfo>> query() override;

  int device_count() const;
  // Memory used on `device` by processes that hold no lease (another team's notebook).
  Status set_foreign_usage(int device, std::uint64_t bytes);
  // Memory a given pid uses on `device` (0 removes it); lets tests model lease holders.
  Status set_process_usage(int device, std::uint32_t pid, std::uint64_t bytes);
  // Scripts per-process use from outside the process (GPUMGR_SIMULATE_PROCESSES, see
  // docs/cli.md): the file at `path` is re-read at every query(). Its lines are
  // `DEVICE PID SIZE` (a device index, a pid > 0, a size as parse_size reads it, e.g. 6GiB);
  // `#` starts a comment, blank lines are ignored; a device+pid pair may appear once (a
  // second line for it is an error); a size of 0 lists nothing. What it lists adds to
  // set_process_usage's figures for the same pid. A missing file lists nothing (a demo may
  // create it later). A bad file (a malformed line, unreadable, over 1 MiB) changes nothing:
  // the last good contents stay in use, the error (naming the file, the line and the
  // problem) is kept for processes_file_error() and printed to stderr once per distinct
  // text. Returns the error of the first read, if any (the path is kept either way); an
  // empty path stops the scripting.
  Status set_processes_file(std::string path);
  // The error of the latest read of the processes file; empty when it was good (or missing).
  std::string processes_file_error() const;
  Status set_utilization(int device, unsigned gpu_percent);
  Status set_temperature(int device, unsigned celsius);
  // Marks a device lost (healthy=false, with the reason) or recovered.
  Status set_healthy(int device, bool healthy, std::string reason = {});
  // Makes the whole backend fail its next queries (driver gone) until cleared.
  void set_backend_failure(bool failing);
  // How many times query() has been called; lets tests see polling happen.
  std::uint64_t query_count() const;

 private:
  struct Device {
    std::uint64_t total = 0;
    std::uint64_t foreign = 0;
    std::vector<ProcessUsage> processes;
    unsigned utilization = 0;
    unsigned temperature = 35;
    bool healthy = true;
    std::string reason;
  };
  // One read of the processes file: per device, or the error.
  struct ProcessesFile {
    std::vector<std::vector<ProcessUsage>> devices;
    std::string error;
  };
  static ProcessesFile read_processes_file(const std::string& path, std::size_t device_count);
  Status check_index(int device) const;  // requires mutex_
  // Takes in a read: the contents when good, else the error (printed once). Requires mutex_.
  Status apply_processes_file(ProcessesFile file, bool print);

  mutable std::mutex mutex_;
  std::vector<Device> devices_;  // guarded by mutex_
  bool failing_ = false;         // guarded by mutex_
  std::uint64_t queries_ = 0;    // guarded by mutex_
  std::string processes_path_;   // guarded by mutex_
  // The last good contents of the processes file, per device.
  std::vector<std::vector<ProcessUsage>> scripted_;  // guarded by mutex_
  std::string processes_error_;                      // guarded by mutex_
  std::string reported_error_;                       // the last error printed; guarded by mutex_
};

// Host memory as one device (MemTotal, MemAvailable from /proc/meminfo), so that CPU
// fallback still has admission control. `meminfo_path` is for tests.
std::shared_ptr<DeviceBackend> make_cpu_backend(std::string meminfo_path = "/proc/meminfo");

// NVML GPUs, loaded at run time from GPUMGR_NVML_LIBRARY, else libnvidia-ml.so.1, else
// libnvidia-ml.so. kUnavailable (with the loader's dlerror text) when there is no usable
// driver; a backend with zero devices is also kUnavailable.
StatusOr<std::shared_ptr<DeviceBackend>> make_nvml_backend();

// How a device selector ("auto", "cuda", "cuda:N", "cpu") was resolved.
struct DeviceSelection {
  std::shared_ptr<DeviceBackend> backend;
  // The device index a selector like "cuda:1" pins jobs to; -1 when any device may be used.
  int pinned_device = -1;
  // Why auto chose what it chose ("no NVIDIA driver: libnvidia-ml.so.1: cannot open...").
  std::string note;
};

// Parses a device selector without touching any hardware: kind "auto"/"cuda"/"cpu" and the
// index for "cuda:N" (-1 otherwise). Rejects "gpu", "", "cuda:-1", "cuda:x".
struct DeviceSelector {
  enum class Kind { kAuto, kCuda, kCpu } kind = Kind::kAuto;
  int index = -1;
};
StatusOr<DeviceSelector> parse_device_selector(std::string_view text);

// Opens the backend a selector asks for. A non-empty `simulate` spec (or, when it is empty,
// the GPUMGR_SIMULATE environment variable) replaces NVML by simulated devices, whose
// per-process use then comes from the file GPUMGR_SIMULATE_PROCESSES names, if set (a bad
// file at this point is an error; GPUMGR_SIMULATE_PROCESSES is ignored without simulated
// devices); "cpu" always
// gives the CPU device; "auto" gives NVML GPUs if any are usable, else the CPU device;
// "cuda" and "cuda:N" fail with kUnavailable when there is no GPU, and "cuda:N" with
// kNotFound when N is not a device.
StatusOr<DeviceSelection> open_backend(std::string_view selector, std::string_view simulate = {});

}  // namespace gpumgr
