// gpu_manager._core: the pybind11 layer over gpumgr::Manager. The public Python API lives in
// the pure-Python package (python/gpu_manager); this module only exposes the C++ core with
// Python types: a Manager, its Leases, a CancelToken, snapshots as dicts, and errors as the
// exception classes of gpu_manager.errors.
//
// Threads and the GIL. Every call that may block or do I/O (acquiring, releasing, snapshots,
// the daemon's socket) runs with the GIL released, so Python threads waiting for a lease do not
// block each other or the interpreter. Nothing in the C++ core waits for the GIL while it holds
// one of its locks: the cleanup hook (which calls into Python) runs outside every lock, and the
// framework-memory provider reads a cache that Python fills, never Python itself.
//
// The torch cap. Every lease granted with cap=True adds its size, on each of its devices'
// torch index (cuda:N), to a process-wide registry; its release takes it off. After either,
// the registry calls gpu_manager._torch's callback (GIL held, outside every lock here), which
// sets torch's per-process memory fraction. While torch is not imported and the Python side
// has armed its import hook, nothing is called: a lease costs no Python call then.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "gpumgr/backends.h"
#include "gpumgr/lease.h"
#include "gpumgr/ledger.h"
#include "gpumgr/manager.h"
#include "gpumgr/status.h"
#include "gpumgr/units.h"
#include "util/thread_annotations.h"

namespace py = pybind11;

namespace gpumgr::python {
namespace {

// ---- the interpreter's life ----

bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

// Whether this thread may take the GIL: never while the interpreter shuts down (a thread that
// tries is terminated by CPython 3.11), nor before it starts.
bool python_usable() { return Py_IsInitialized() != 0 && !interpreter_finalizing(); }

// ---- errors ----

// The exception classes of gpu_manager.errors, set once at import. Strong references that are
// never dropped: the classes live as long as the interpreter.
struct ErrorClasses {
  PyObject* base = nullptr;         // GPUManagerError
  PyObject* capacity = nullptr;     // GPUCapacityError
  PyObject* timeout = nullptr;      // QueueTimeoutError
  PyObject* cancelled = nullptr;    // JobCancelledError
  PyObject* duplicate = nullptr;    // DuplicateJobError (also a ValueError)
  PyObject* unavailable = nullptr;  // DeviceUnavailableError
  PyObject* lost = nullptr;         // LeaseLostError
};
ErrorClasses errors;

PyObject* error_class(ErrorCode code) {
  switch (code) {
    case ErrorCode::kResourceExhausted:
    case ErrorCode::kNeverFits:
      return errors.capacity;
    case ErrorCode::kTimedOut:
      return errors.timeout;
    case ErrorCode::kCancelled:
      return errors.cancelled;
    case ErrorCode::kAlreadyExists:
      return errors.duplicate;
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kNotFound:  // callers handle an unknown job themselves; this is a device
      return PyExc_ValueError;
    case ErrorCode::kUnavailable:
      return errors.unavailable;
    case ErrorCode::kLeaseLost:
      return errors.lost;
    default:
      return errors.base;
  }
}

// Raises the Python exception for a non-OK status, with `code` ("never_fits", ...) set on the
// exception object. Requires the GIL.
[[noreturn]] void raise_status(const Status& status) {
  PyObject* cls = error_class(status.code());
  py::object exc = py::reinterpret_borrow<py::object>(cls)(status.message());
  if (cls != PyExc_ValueError) {
    exc.attr("code") = std::string(error_code_name(status.code()));
  }
  PyErr_SetObject(cls, exc.ptr());
  throw py::error_already_set();
}

void check(const Status& status) {
  if (!status.ok()) raise_status(status);
}

template <typename T>
T take(StatusOr<T> result) {
  if (!result.ok()) raise_status(result.status());
  return std::move(result).value();
}

// ---- hooks shared between a Manager and the core ----

// The Python callable run after a release (torch's cache cleanup), reached from any thread.
// `enabled` lets the hook skip the GIL entirely while no callable is set.
struct CleanupCallback {
  std::atomic<bool> enabled{false};
  PyObject* callable = nullptr;  // owned; read and written only with the GIL held

  ~CleanupCallback() {
    // The last reference may go on a thread without the GIL (the core outlives the Manager
    // while leases live); during shutdown the object is leaked rather than touched.
    if (callable == nullptr || !python_usable()) return;
    py::gil_scoped_acquire gil;
    Py_CLEAR(callable);
  }

  void run(int device) {
    if (!enabled.load(std::memory_order_acquire) || !python_usable()) return;
    py::gil_scoped_acquire gil;
    if (callable == nullptr) return;
    py::object fn = py::reinterpret_borrow<py::object>(callable);
    try {
      fn(device);
    } catch (py::error_already_set& e) {
      // A failing cleanup must not turn a release into an error: report it as unraisable.
      e.discard_as_unraisable("gpu_manager cleanup hook");
    }
  }
};

// This process's framework figures per device (torch's allocated / reserved / peak), filled
// by Python where it holds the GIL and read by the core under its own locks.
class FrameworkCache {
 public:
  void set(int device, FrameworkMemory memory) {
    MutexLock lock(mutex_);
    figures_[device] = memory;
  }
  void clear() {
    MutexLock lock(mutex_);
    figures_.clear();
  }
  std::optional<FrameworkMemory> get(int device) const {
    MutexLock lock(mutex_);
    auto it = figures_.find(device);
    if (it == figures_.end()) return std::nullopt;
    return it->second;
  }

 private:
  mutable Mutex mutex_;
  std::unordered_map<int, FrameworkMemory> figures_ GUARDED_BY(mutex_);
};

// ---- the torch cap ----

// What this process's capped leases hold on each torch device (cuda:N), summed. A version per
// device, bumped at every change, lets the Python applier tell whether the sum moved while it
// was calling torch. Process-wide, as torch's memory fraction is; any thread may call it.
class CapRegistry {
 public:
  void add(const std::vector<int>& devices, std::uint64_t bytes) {
    MutexLock lock(mutex_);
    for (int d : devices) {
      Entry& e = entries_[d];
      e.bytes += bytes;
      ++e.version;
    }
  }
  void remove(const std::vector<int>& devices, std::uint64_t bytes) {
    MutexLock lock(mutex_);
    for (int d : devices) {
      Entry& e = entries_[d];
      e.bytes = e.bytes >= bytes ? e.bytes - bytes : 0;
      ++e.version;
    }
  }
  // (bytes, version) of one device; (0, 0) for a device no lease ever capped.
  std::pair<std::uint64_t, std::uint64_t> get(int device) const {
    MutexLock lock(mutex_);
    auto it = entries_.find(device);
    if (it == entries_.end()) return {0, 0};
    return {it->second.bytes, it->second.version};
  }
  // Every device a lease ever capped, with its sum now.
  std::vector<std::pair<int, std::uint64_t>> all() const {
    MutexLock lock(mutex_);
    std::vector<std::pair<int, std::uint64_t>> out;
    out.reserve(entries_.size());
    for (const auto& [device, e] : entries_) out.emplace_back(device, e.bytes);
    return out;
  }

 private:
  struct Entry {
    std::uint64_t bytes = 0;
    std::uint64_t version = 0;
  };
  mutable Mutex mutex_;
  std::unordered_map<int, Entry> entries_ GUARDED_BY(mutex_);
};

// Never destroyed: leases released during interpreter shutdown still reach it.
CapRegistry& cap_registry() {
  static CapRegistry* registry = new CapRegistry;
  return *registry;
}

// gpu_manager._torch.caps_changed(devices), set at import; owned, touched only with the GIL.
PyObject* cap_callback = nullptr;
// Set by the Python side while its import hook waits for torch: no call is needed until then.
std::atomic<bool> torch_import_hook_armed{false};

bool torch_loaded() {
  PyObject* modules = PyImport_GetModuleDict();                   // borrowed
  if (modules == nullptr || !PyDict_Check(modules)) return true;  // let Python decide
  static PyObject* name = PyUnicode_InternFromString("torch");
  return name == nullptr || PyDict_GetItemWithError(modules, name) != nullptr ||
         PyErr_Occurred() != nullptr;
}

// Tells the Python side that the sums of `devices` changed. Requires the GIL; never raises.
void notify_caps(const std::vector<int>& devices) {
  if (cap_callback == nullptr || devices.empty() || !python_usable()) return;
  // A lease may be released from a deallocation while an exception propagates: keep it.
  py::error_scope keep_error;
  const bool loaded = torch_loaded();
  PyErr_Clear();
  if (!loaded && torch_import_hook_armed.load(std::memory_order_acquire)) return;
  py::object fn = py::reinterpret_borrow<py::object>(cap_callback);
  try {
    fn(py::cast(devices));
  } catch (py::error_already_set& e) {
    e.discard_as_unraisable("gpu_manager torch memory cap");
  }
}

// ---- Lease ----

std::string outcome_name(JobOutcome outcome) {
  return outcome == JobOutcome::kFailed ? "failed" : "succeeded";
}

// A granted lease, for Python: the RAII gpumgr::Lease plus the device string torch accepts.
// Used from one thread at a time, as the C++ Lease.
class PyLease {
 public:
  PyLease(Lease lease, std::string device, std::shared_ptr<Ledger> ledger)
      : lease_(std::move(lease)), device_(std::move(device)), ledger_(std::move(ledger)) {}
  PyLease(const PyLease&) = delete;
  PyLease& operator=(const PyLease&) = delete;

  ~PyLease() {
    // Dropped without release(): release now, without the GIL (the cleanup hook takes it).
    if (lease_.held()) {
      if (PyGILState_Check() != 0 && python_usable()) {
        py::gil_scoped_release nogil;
        (void)lease_.release();
      } else {
        (void)lease_.release();
      }
    }
    uncap(PyGILState_Check() != 0);
  }

  const Lease& lease() const { return lease_; }
  const std::string& device() const { return device_; }
  void mark_failed() { lease_.mark_failed(); }

  // Counts this lease toward the torch cap of `torch_devices` (cuda:N). Requires the GIL.
  void cap(std::vector<int> torch_devices) {
    if (torch_devices.empty() || !lease_.held()) return;
    cap_registry().add(torch_devices, lease_.bytes());
    capped_ = std::move(torch_devices);
    was_capped_ = true;
    notify_caps(capped_);
  }
  bool capped() const { return was_capped_; }

  // Releases (idempotent), then runs the release callback once, with `exc` (the exception
  // that ended a `with` block, or None).
  void release(std::optional<bool> failed, py::handle exc) {
    if (lease_.held()) {
      Status s;
      {
        py::gil_scoped_release nogil;
        if (failed.has_value()) {
          s = lease_.release(*failed ? JobOutcome::kFailed : JobOutcome::kSucceeded);
        } else {
          s = lease_.release();
        }
      }
      uncap(true);
      if (!on_release_.is_none()) {
        py::object callback = std::move(on_release_);
        on_release_ = py::none();
        callback(lease_.job_id(), exc);
      }
      check(s);
    }
  }

  void set_on_release(py::object callback) { on_release_ = std::move(callback); }

  // Refreshes the measured use from a snapshot while the lease is held (afterwards the last
  // figures read stay). Requires the GIL.
  void measure() {
    if (!lease_.held() || ledger_ == nullptr) return;
    StatusOr<Snapshot> snap = Status(ErrorCode::kInternal, "");
    {
      py::gil_scoped_release nogil;
      snap = ledger_->snapshot();
    }
    if (!snap.ok()) return;
    const LeaseInfo& mine = lease_.info();
    for (const LeaseInfo& l : snap->leases) {
      if (l.job_id != mine.job_id) continue;
      if (l.lease_id != 0 && mine.lease_id != 0 && l.lease_id != mine.lease_id) continue;
      usage_ = l.usage;
      overused_ = l.overused;
      overused_s_ = l.overused_s;
      enforcement_ = l.enforcement;
      return;
    }
  }
  const std::vector<DeviceUse>& usage() const { return usage_; }
  bool overused() const { return overused_; }
  double overused_s() const { return overused_s_; }
  const std::string& enforcement() const { return enforcement_; }

 private:
  // Takes this lease off the torch cap (once); tells Python where `gil` says it may.
  void uncap(bool gil) {
    if (capped_.empty()) return;
    std::vector<int> devices = std::move(capped_);
    capped_.clear();
    cap_registry().remove(devices, lease_.bytes());
    if (gil) notify_caps(devices);
  }

  Lease lease_;
  std::string device_;
  std::shared_ptr<Ledger> ledger_;  // for measure(); null where unknown
  py::object on_release_ = py::none();
  std::vector<int> capped_;  // torch devices this lease counts toward while held
  bool was_capped_ = false;
  std::vector<DeviceUse> usage_;  // the last figures measure() read
  bool overused_ = false;
  double overused_s_ = 0;
  std::string enforcement_;
};

// ---- snapshots as dicts ----

template <typename T>
py::object opt(const std::optional<T>& v) {
  return v ? py::cast(*v) : py::none();
}

py::dict device_dict(const DeviceAccount& a) {
  const DeviceInfo& i = a.info;
  py::dict d;
  d["index"] = i.index;
  d["kind"] = std::string(device_kind_name(i.kind));
  d["uuid"] = i.uuid;
  d["name"] = i.name;
  d["pci_bus_id"] = i.pci_bus_id;
  d["total_bytes"] = i.total_bytes;
  d["used_bytes"] = i.used_bytes;
  d["free_bytes"] = i.free_bytes;
  d["gpu_utilization"] = opt(i.gpu_utilization_percent);
  d["memory_utilization"] = opt(i.memory_utilization_percent);
  d["temperature_c"] = opt(i.temperature_c);
  d["power_draw_w"] = opt(i.power_draw_w);
  d["power_limit_w"] = opt(i.power_limit_w);
  if (i.compute_capability_major && i.compute_capability_minor) {
    d["compute_capability"] =
        py::make_tuple(*i.compute_capability_major, *i.compute_capability_minor);
  } else {
    d["compute_capability"] = py::none();
  }
  d["processes_known"] = i.processes_known;
  py::list processes;
  for (const ProcessUsage& p : i.processes) processes.append(py::make_tuple(p.pid, p.used_bytes));
  d["processes"] = processes;
  d["healthy"] = i.healthy;
  d["health_reason"] = i.health_reason;
  d["capacity_bytes"] = a.capacity_bytes;
  d["leased_bytes"] = a.leased_bytes;
  d["foreign_bytes"] = a.foreign_bytes;
  d["overuse_bytes"] = a.overuse_bytes;
  d["admissible_bytes"] = a.admissible_bytes;
  d["peak_leased_bytes"] = a.peak_leased_bytes;
  d["active_leases"] = a.active_leases;
  d["reserved_for_head"] = a.reserved_for_head;
  return d;
}

py::dict histogram_dict(const Histogram& h) {
  py::dict d;
  d["bounds"] = h.bounds;
  d["counts"] = h.counts;
  d["count"] = h.count;
  d["sum"] = h.sum;
  d["min"] = h.min;
  d["max"] = h.max;
  d["mean"] = h.mean();
  return d;
}

double seconds_since(std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

// Empty strings (no kind, an explicit size) as None, for Python.
py::object str_or_none(const std::string& s) {
  return s.empty() ? py::object(py::none()) : py::object(py::str(s));
}

// One dict per leased device, parallel to `devices`: what the holder uses there and its peak,
// None where unknown (never 0 for unknown). `usage` may be shorter (nothing measured yet).
py::list usage_list(const std::vector<int>& devices, const std::vector<DeviceUse>& usage) {
  py::list out;
  for (std::size_t i = 0; i < devices.size(); ++i) {
    py::dict u;
    u["device"] = devices[i];
    if (i < usage.size()) {
      u["used_bytes"] = opt(usage[i].used_bytes);
      u["peak_used_bytes"] = opt(usage[i].peak_used_bytes);
    } else {
      u["used_bytes"] = py::none();
      u["peak_used_bytes"] = py::none();
    }
    out.append(u);
  }
  return out;
}

py::dict lease_info_dict(const LeaseInfo& l) {
  py::dict d;
  d["job_id"] = l.job_id;
  d["kind"] = str_or_none(l.kind);
  d["devices"] = l.devices;
  d["bytes"] = l.bytes;
  d["priority"] = l.priority;
  d["pid"] = l.pid;
  d["uid"] = l.uid;
  d["command"] = l.command;
  d["granted_at"] = seconds_since(l.granted_at);
  d["waited_s"] = l.waited_s;
  d["lease_id"] = l.lease_id;
  d["usage"] = usage_list(l.devices, l.usage);
  d["overused"] = l.overused;
  d["overused_s"] = l.overused_s;
  d["estimate"] = l.estimate;
  d["enforcement"] = l.enforcement;
  d["revocable"] = str_or_none(l.revocable);
  d["resident"] = str_or_none(l.resident);
  d["in_use_by"] = l.in_use_by;
  d["beside_resident"] = str_or_none(l.beside_resident);
  d["revoking"] = l.revoking;
  d["revoke_in_s"] = l.revoke_in_s;
  d["revoked_for"] = str_or_none(l.revoked_for);
  return d;
}

py::dict estimate_dict(const KindEstimate& e) {
  py::dict d;
  d["kind"] = e.kind;
  d["runs"] = e.runs;
  d["measured_runs"] = e.measured_runs;
  d["peak_p50_bytes"] = opt(e.peak_p50_bytes);
  d["peak_p95_bytes"] = opt(e.peak_p95_bytes);
  d["peak_max_bytes"] = opt(e.peak_max_bytes);
  d["hold_p50_s"] = opt(e.hold_p50_s);
  d["hold_p95_s"] = opt(e.hold_p95_s);
  d["overused_runs"] = e.overused_runs;
  d["last_seen"] = e.last_seen.time_since_epoch().count() == 0
                       ? py::object(py::none())
                       : py::object(py::float_(seconds_since(e.last_seen)));
  d["estimate_bytes"] = opt(e.estimate_bytes);
  d["estimate_note"] = e.estimate_note;
  return d;
}

py::dict snapshot_dict(const Snapshot& s) {
  py::dict d;
  py::dict backend;
  backend["name"] = s.backend.name;
  backend["driver_version"] = s.backend.driver_version;
  backend["cuda_driver_version"] = s.backend.cuda_driver_version;
  backend["nvml_version"] = s.backend.nvml_version;
  d["backend"] = backend;
  py::dict config;
  config["max_concurrent_jobs"] = s.config.max_concurrent_jobs;
  config["memory_limit"] = s.config.memory_limit;
  config["placement"] = std::string(placement_policy_name(s.config.placement));
  config["queue"] = std::string(queue_policy_name(s.config.queue));
  d["config"] = config;
  py::list devices;
  for (const DeviceAccount& a : s.devices) devices.append(device_dict(a));
  d["devices"] = devices;
  py::list leases;
  for (const LeaseInfo& l : s.leases) leases.append(lease_info_dict(l));
  d["leases"] = leases;
  py::list queue;
  for (const WaiterInfo& w : s.queue) {
    py::dict q;
    q["job_id"] = w.job_id;
    q["bytes"] = w.bytes;
    q["gpus"] = w.gpus;
    q["priority"] = w.priority;
    q["device"] = w.device;
    q["allowed_devices"] = w.allowed_devices;
    q["beside_resident"] = str_or_none(w.beside_resident);
    q["position"] = w.position;
    q["pid"] = w.pid;
    q["uid"] = w.uid;
    q["command"] = w.command;
    q["waited_s"] = w.waited_s;
    queue.append(q);
  }
  d["queue"] = queue;
  py::dict stats;
  stats["jobs_succeeded"] = s.stats.jobs_succeeded;
  stats["jobs_failed"] = s.stats.jobs_failed;
  stats["jobs_rejected"] = s.stats.jobs_rejected;
  stats["jobs_timed_out"] = s.stats.jobs_timed_out;
  stats["jobs_cancelled"] = s.stats.jobs_cancelled;
  stats["overuse_events"] = s.stats.overuse_events;
  stats["overuse_terminations"] = s.stats.overuse_terminations;
  stats["revocations_preempted"] = s.stats.revocations_preempted;
  stats["revocations_resident"] = s.stats.revocations_resident;
  stats["revocation_kills"] = s.stats.revocation_kills;
  stats["jobs_processed"] = s.stats.jobs_processed();
  stats["active_jobs"] = s.stats.active_jobs;
  stats["peak_active_jobs"] = s.stats.peak_active_jobs;
  stats["hold_seconds"] = histogram_dict(s.stats.hold_seconds);
  stats["wait_seconds"] = histogram_dict(s.stats.wait_seconds);
  d["stats"] = stats;
  d["taken_at"] = seconds_since(s.taken_at);
  d["source"] = s.source;
  return d;
}

// ---- Manager ----

class PyManager {
 public:
  explicit PyManager(const ManagerOptions& options)
      : cleanup_(std::make_shared<CleanupCallback>()),
        framework_(std::make_shared<FrameworkCache>()) {
    StatusOr<std::unique_ptr<Manager>> created = Status(ErrorCode::kInternal, "not created");
    {
      py::gil_scoped_release nogil;  // probing NVML or connecting to the daemon takes time
      created = Manager::create(options);
    }
    manager_ = take(std::move(created));
    ledger_ = manager_->ledger();
    manager_->set_cleanup_hook([cleanup = cleanup_](int device) { cleanup->run(device); });
  }

  ~PyManager() {
    // Destroying the core joins its housekeeper thread; waiters (if any) are woken with an
    // error and then need the GIL, so give it up while we wait.
    if (PyGILState_Check() != 0 && python_usable()) {
      py::gil_scoped_release nogil;
      manager_.reset();
    } else {
      manager_.reset();
    }
  }

  Manager& manager() { return *manager_; }

  std::string device_for(int device) const {
    if (!manager_->uses_gpu()) return "cpu";
    int torch_index = device;
    if (device >= 0 && static_cast<std::size_t>(device) < torch_index_.size()) {
      torch_index = torch_index_[static_cast<std::size_t>(device)];
    }
    if (torch_index < 0) return "cuda:" + std::to_string(device);
    return "cuda:" + std::to_string(torch_index);
  }

  void set_torch_index(std::vector<int> map) { torch_index_ = std::move(map); }

  // The torch devices (cuda:N) of gpumgr's `devices`; none for the CPU device, and none
  // for a device CUDA_VISIBLE_DEVICES hides.
  std::vector<int> torch_devices(const std::vector<int>& devices) const {
    std::vector<int> out;
    if (!manager_->uses_gpu()) return out;
    for (int d : devices) {
      int t = d;
      if (d >= 0 && static_cast<std::size_t>(d) < torch_index_.size()) {
        t = torch_index_[static_cast<std::size_t>(d)];
      }
      if (t >= 0) out.push_back(t);
    }
    return out;
  }

  // `cap`: count the lease toward this process's torch cap on its devices. Requires the GIL.
  std::unique_ptr<PyLease> wrap(Lease lease, bool cap) {
    std::string device = device_for(lease.device());
    auto wrapped = std::make_unique<PyLease>(std::move(lease), std::move(device), ledger_);
    if (cap) wrapped->cap(torch_devices(wrapped->lease().devices()));
    return wrapped;
  }

  void set_cleanup_callback(py::object callable) {
    PyObject* old = cleanup_->callable;
    if (callable.is_none()) {
      cleanup_->enabled.store(false, std::memory_order_release);
      cleanup_->callable = nullptr;
    } else {
      cleanup_->callable = callable.release().ptr();
      cleanup_->enabled.store(true, std::memory_order_release);
    }
    Py_XDECREF(old);
  }

  void set_framework_memory(int device, std::uint64_t allocated, std::uint64_t reserved,
                            std::uint64_t peak) {
    framework_->set(device, FrameworkMemory{allocated, reserved, peak});
    if (!provider_installed_) {
      provider_installed_ = true;
      manager_->set_framework_memory_provider(
          [cache = framework_](int d) { return cache->get(d); });
    }
  }

  void clear_framework_memory() { framework_->clear(); }

  // Called with the exception that ended a managed_generation block and its lease (before
  // the release).
  void set_error_callback(py::object callback) { on_error_ = std::move(callback); }
  const py::object& error_callback() const { return on_error_; }

  // callback(notice: dict) runs when a revocable lease of this process is revoked, on a
  // thread of the ledger with the GIL taken (docs/scheduling.md, "Revocable leases"). The
  // ledger holds only a weak reference to it: the callback is this object's, dropped with
  // the GIL held.
  void set_revoke_callback(py::object callback) {
    revoke_callback_ = std::make_shared<py::object>(std::move(callback));
    std::weak_ptr<py::object> weak = revoke_callback_;
    ledger_->set_revoke_handler([weak](const RevokeNotice& n) {
      if (!python_usable()) return;
      py::gil_scoped_acquire gil;
      const std::shared_ptr<py::object> fn = weak.lock();
      if (fn == nullptr || fn->is_none()) return;
      py::dict d;
      d["job_id"] = n.job_id;
      d["cause"] = n.cause;
      d["for_job"] = n.for_job;
      d["grace_s"] = n.grace_s;
      d["message"] = n.message;
      d["ended"] = n.ended;
      try {
        (*fn)(d);
      } catch (py::error_already_set& e) {
        e.discard_as_unraisable("gpu_manager revocation callback");
      }
    });
  }

 private:
  std::unique_ptr<Manager> manager_;
  std::shared_ptr<Ledger> ledger_;  // manager_'s, for the leases' measure()
  std::shared_ptr<CleanupCallback> cleanup_;
  std::shared_ptr<FrameworkCache> framework_;
  bool provider_installed_ = false;  // changed with the GIL held
  py::object on_error_ = py::none();
  std::shared_ptr<py::object> revoke_callback_;
  // gpumgr's device index (PCI bus order) -> torch's cuda:N; -1 where not visible to CUDA.
  std::vector<int> torch_index_;
};

// bytes = 0 with a kind: the kind's learned estimate, else default_bytes (0: none).
LeaseRequest make_request(std::string job_id, std::uint64_t bytes, int gpus, int priority,
                          int device, std::string command, std::string kind = {},
                          std::uint64_t default_bytes = 0) {
  LeaseRequest r;
  r.job_id = std::move(job_id);
  r.bytes = bytes;
  r.gpus = gpus;
  r.priority = priority;
  r.device = device;
  r.command = std::move(command);
  r.kind = std::move(kind);
  r.default_bytes = default_bytes;
  return r;
}

WaitOptions wait_options(std::optional<double> timeout, std::optional<CancelToken> cancel);

// The main thread's ident, where Python delivers signals (set at import).
std::atomic<unsigned long> main_thread_ident{0};

// Manager::acquire, without the GIL, so that Ctrl-C still works in the main thread.
//
// Python runs signal handlers only in the main thread, between bytecodes: a main thread
// blocked in C++ would ignore Ctrl-C until its lease came. So where the main thread may have
// to wait (the lease does not fit now), the wait runs on a helper thread while the main thread
// checks for signals every 100 ms; a signal whose handler raises (KeyboardInterrupt) cancels
// the wait and propagates. Other threads, and a lease that fits now, wait directly: no thread
// is started on the fast path. Requires the GIL; returns with it.
StatusOr<Lease> acquire_interruptibly(Manager& manager, const LeaseRequest& request,
                                      WaitOptions wait) {
  const bool main = PyThread_get_thread_ident() == main_thread_ident.load();
  bool fits_now = true;
  if (main) {
    py::gil_scoped_release nogil;
    StatusOr<bool> admit = manager.can_admit(request.bytes, request.gpus);
    fits_now = !admit.ok() || *admit;  // errors: let acquire() report them
  }
  if (!main || fits_now || (wait.deadline && *wait.deadline <= std::chrono::steady_clock::now())) {
    py::gil_scoped_release nogil;
    return manager.acquire(request, wait);
  }
  struct Slot {
    std::mutex mutex;
    std::condition_variable cv;
    std::optional<StatusOr<Lease>> result;
  };
  auto slot = std::make_shared<Slot>();
  CancelToken token = wait.cancel.value_or(CancelToken());
  wait.cancel = token;
  std::thread helper;
  {
    py::gil_scoped_release nogil;
    helper = std::thread([&manager, request, wait, slot] {
      StatusOr<Lease> lease = manager.acquire(request, wait);
      std::lock_guard lock(slot->mutex);
      slot->result.emplace(std::move(lease));
      slot->cv.notify_all();
    });
  }
  while (true) {
    bool done = false;
    {
      py::gil_scoped_release nogil;
      std::unique_lock lock(slot->mutex);
      done = slot->cv.wait_for(lock, std::chrono::milliseconds(100),
                               [&] { return slot->result.has_value(); });
    }
    if (done) break;
    if (PyErr_CheckSignals() != 0) {
      // A handler raised: give up the wait, return nothing we were granted meanwhile.
      py::error_already_set interrupted;
      {
        py::gil_scoped_release nogil;
        token.cancel();
        helper.join();
        if (slot->result && slot->result->ok()) (void)slot->result->value().release();
      }
      throw interrupted;
    }
  }
  {
    py::gil_scoped_release nogil;
    helper.join();
  }
  return std::move(*slot->result);
}

// managed_generation()'s context manager, in C++ so that entering and leaving it costs little
// more than the acquire and release themselves. Used from one thread at a time.
class PyGeneration {
 public:
  PyGeneration(py::object manager, LeaseRequest request, std::optional<double> timeout, bool cap)
      : manager_(std::move(manager)),
        core_(&manager_.cast<PyManager&>()),
        request_(std::move(request)),
        timeout_(timeout),
        cap_(cap) {}

  py::object enter() {
    if (lease_ != nullptr) throw py::value_error("managed_generation() block entered twice");
    WaitOptions wait = wait_options(timeout_, std::nullopt);
    StatusOr<Lease> lease = acquire_interruptibly(core_->manager(), request_, wait);
    std::unique_ptr<PyLease> wrapped = core_->wrap(take(std::move(lease)), cap_);
    lease_ = wrapped.get();
    lease_object_ = py::cast(std::move(wrapped));
    thread_ = PyThread_get_thread_ident();
    return lease_object_;
  }

  // A preemptible block's lease was revoked: LeasePreempted is raised in the block's thread
  // at its next check. False when the block is not running (not entered yet, or ended).
  // Every call here holds the GIL, as exit() does: no race between the two.
  bool preempt() {
    if (lease_ == nullptr || preempted_) return false;
    py::object cls = py::module_::import("gpu_manager.errors").attr("LeasePreempted");
    preempted_ = PyThreadState_SetAsyncExc(thread_, cls.ptr()) == 1;
    return preempted_;
  }

  bool exit(py::handle type, py::handle value) {
    // First, before any Python code can run in this thread again: a LeasePreempted not yet
    // delivered must not fire after the block (in the release below, or in the caller).
    if (preempted_) {
      PyThreadState_SetAsyncExc(thread_, nullptr);
      preempted_ = false;
    }
    if (lease_ == nullptr) return false;
    PyLease* lease = lease_;
    py::object keep = std::move(lease_object_);  // alive until this returns
    lease_ = nullptr;
    lease_object_ = py::object();
    if (type.is_none()) {
      lease->release(std::nullopt, py::none());
      return false;
    }
    lease->mark_failed();
    py::object on_error = core_->error_callback();
    if (!on_error.is_none()) {
      try {
        on_error(value, keep);
      } catch (py::error_already_set& e) {
        // The block's own exception is what propagates; the lease is released regardless.
        e.discard_as_unraisable("gpu_manager managed_generation error callback");
      }
    }
    lease->release(true, value);
    return false;
  }

 private:
  py::object manager_;  // keeps core_ alive
  PyManager* core_;
  LeaseRequest request_;
  std::optional<double> timeout_;
  bool cap_;
  PyLease* lease_ = nullptr;  // owned by lease_object_ while entered
  py::object lease_object_;
  unsigned long thread_ = 0;  // the thread that entered the block
  bool preempted_ = false;    // preempt() asked for LeasePreempted in it
};

WaitOptions wait_options(std::optional<double> timeout, std::optional<CancelToken> cancel) {
  WaitOptions wait;
  if (timeout) {
    if (std::isnan(*timeout) || *timeout < 0) {
      throw py::value_error("timeout must be a non-negative number of seconds or None, got " +
                            py::repr(py::float_(*timeout)).cast<std::string>());
    }
    wait = WaitOptions::for_seconds(*timeout);
  }
  wait.cancel = std::move(cancel);
  return wait;
}

}  // namespace
}  // namespace gpumgr::python

using namespace gpumgr;          // NOLINT(google-build-using-namespace)
using namespace gpumgr::python;  // NOLINT(google-build-using-namespace)

PYBIND11_MODULE(_core, mod) {
  mod.doc() =
      "The C++ core of gpu_manager (libgpumgr), for the pure-Python package. Use the names "
      "that gpu_manager exports; this module's API may change.";

  main_thread_ident =
      py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  py::module_ err = py::module_::import("gpu_manager.errors");
  auto keep = [&err](const char* name) {
    py::object cls = err.attr(name);
    return cls.release().ptr();
  };
  errors.base = keep("GPUManagerError");
  errors.capacity = keep("GPUCapacityError");
  errors.timeout = keep("QueueTimeoutError");
  errors.cancelled = keep("JobCancelledError");
  errors.duplicate = keep("DuplicateJobError");
  errors.unavailable = keep("DeviceUnavailableError");
  errors.lost = keep("LeaseLostError");

  py::class_<CancelToken>(mod, "CancelToken",
                          "Lets another thread give up a waiting acquire(). Copies share one "
                          "state.")
      .def(py::init<>())
      .def("cancel", &CancelToken::cancel, "Cancels the wait (idempotent).")
      .def_property_readonly("cancelled", &CancelToken::cancelled);

  py::class_<PyLease>(mod, "Lease",
                      "A granted VRAM lease. Release it with release() or a `with` block; a "
                      "lease that is garbage-collected unreleased is released then.")
      .def_property_readonly(
          "job_id", [](const PyLease& l) { return l.lease().job_id(); }, "The job's id.")
      .def_property_readonly(
          "device", [](const PyLease& l) { return l.device(); },
          "What torch.device accepts for the leased device: 'cuda:N' (torch's numbering) or "
          "'cpu'.")
      .def_property_readonly(
          "device_index", [](const PyLease& l) { return l.lease().device(); },
          "gpumgr's index of the (first) leased device, in PCI bus order as nvidia-smi; 0 "
          "for the CPU device.")
      .def_property_readonly(
          "devices", [](const PyLease& l) { return l.lease().devices(); },
          "gpumgr's indices of every leased device.")
      .def_property_readonly(
          "bytes", [](const PyLease& l) { return l.lease().bytes(); },
          "Leased memory per device, in bytes.")
      .def_property_readonly(
          "memory_mb", [](const PyLease& l) { return l.lease().bytes() / kMiB; },
          "Leased memory per device, in MiB.")
      .def_property_readonly("priority", [](const PyLease& l) { return l.lease().info().priority; })
      .def_property_readonly(
          "waited_s", [](const PyLease& l) { return l.lease().info().waited_s; },
          "Seconds the request waited in the queue.")
      .def_property_readonly(
          "held", [](const PyLease& l) { return l.lease().held(); },
          "True until the lease is released.")
      .def_property_readonly(
          "outcome", [](const PyLease& l) { return outcome_name(l.lease().outcome()); },
          "'succeeded' or 'failed': how the release counts the job.")
      .def_property_readonly(
          "kind", [](const PyLease& l) { return str_or_none(l.lease().info().kind); },
          "The job kind the lease was asked for, or None.")
      .def_property_readonly(
          "estimate", [](const PyLease& l) { return l.lease().info().estimate; },
          "Where the size came from when the request asked for its kind's estimate ('learned "
          "from 37 runs: ...', 'default: ...'); '' for an explicit size.")
      .def_property_readonly(
          "capped", &PyLease::capped,
          "Whether the lease counts toward this process's torch memory cap on its devices.")
      .def_property_readonly(
          "usage",
          [](PyLease& l) {
            l.measure();
            return usage_list(l.lease().devices(), l.usage());
          },
          "What the holder uses on each leased device, measured (a snapshot while held; the "
          "last figures read once released): dicts with device, used_bytes, peak_used_bytes, "
          "None where unknown.")
      .def_property_readonly(
          "overused",
          [](PyLease& l) {
            l.measure();
            return l.overused();
          },
          "Whether the holder uses more than its lease (beyond the tolerance), measured.")
      .def_property_readonly(
          "overused_s",
          [](PyLease& l) {
            l.measure();
            return l.overused_s();
          },
          "How long the holder has used more than its lease (0 while it does not).")
      .def_property_readonly(
          "enforcement",
          [](PyLease& l) {
            l.measure();
            return l.enforcement();
          },
          "What the overuse policy did to the lease ('' where nothing).")
      .def("mark_failed", &PyLease::mark_failed,
           "Records that the job failed; the release counts it so.")
      .def(
          "release", [](PyLease& l, std::optional<bool> failed) { l.release(failed, py::none()); },
          py::arg("failed") = py::none(),
          "Releases the lease (idempotent) and empties the framework's cache on its devices. "
          "failed=True counts the job as failed.")
      .def("_set_on_release", &PyLease::set_on_release)
      .def("__enter__", [](py::object self) { return self; })
      .def(
          "__exit__",
          [](PyLease& l, py::handle type, py::handle value, py::handle) {
            if (!type.is_none()) l.mark_failed();
            l.release(std::nullopt, value);
            return false;
          },
          "Releases the lease; a block that raised counts the job as failed.")
      .def("__repr__", [](const PyLease& l) {
        const Lease& x = l.lease();
        return "<gpu_manager.Lease job_id=" + py::repr(py::str(x.job_id())).cast<std::string>() +
               " device='" + l.device() + "' memory_mb=" + std::to_string(x.bytes() / kMiB) +
               (x.held() ? " held>" : " released>");
      });

  py::class_<PyGeneration>(mod, "Generation",
                           "The context manager of GPUManager.managed_generation(): waits for "
                           "the lease on entry, releases it on exit.")
      .def("__enter__", &PyGeneration::enter)
      .def("_preempt", &PyGeneration::preempt,
           "Raises LeasePreempted in the running block's thread; False when none runs.")
      .def("__exit__", [](PyGeneration& g, py::handle type, py::handle value, py::handle) {
        return g.exit(type, value);
      });

  py::class_<PyManager>(mod, "Manager", "gpumgr::Manager: the ledger and its hooks.")
      .def(py::init([](const std::string& device, int max_concurrent_jobs, double memory_limit,
                       const std::string& simulate, const std::string& socket, bool in_process_only,
                       double poll_interval_s, const std::string& placement,
                       const std::string& queue, const std::string& history_path) {
             ManagerOptions o;
             o.history_path = history_path;
             o.device = device;
             o.max_concurrent_jobs = max_concurrent_jobs;
             o.memory_limit = memory_limit;
             o.simulate = simulate;
             o.socket = socket;
             o.in_process_only = in_process_only;
             if (!(poll_interval_s > 0) || !std::isfinite(poll_interval_s)) {
               throw py::value_error("poll_interval must be a positive number of seconds");
             }
             o.poll_interval = std::chrono::milliseconds(
                 std::max<std::int64_t>(1, std::llround(poll_interval_s * 1000)));
             o.placement = take(parse_placement_policy(placement));
             o.queue = take(parse_queue_policy(queue));
             return std::make_unique<PyManager>(o);
           }),
           py::arg("device") = "auto", py::arg("max_concurrent_jobs") = 3,
           py::arg("memory_limit") = 0.8, py::kw_only(), py::arg("simulate") = "",
           py::arg("socket") = "", py::arg("in_process_only") = false,
           py::arg("poll_interval") = 0.25, py::arg("placement") = "best-fit",
           py::arg("queue") = "backfill", py::arg("history_path") = "")
      .def_property_readonly("device", [](PyManager& m) { return m.manager().device_string(); })
      .def_property_readonly("uses_gpu", [](PyManager& m) { return m.manager().uses_gpu(); })
      .def_property_readonly("selection_note",
                             [](PyManager& m) { return m.manager().selection_note(); })
      .def("_set_torch_index", &PyManager::set_torch_index)
      .def("torch_device", &PyManager::device_for, py::arg("device"),
           "The torch device string for gpumgr's device index.")
      .def(
          "can_admit",
          [](PyManager& m, std::uint64_t bytes, int gpus) {
            StatusOr<bool> r = Status(ErrorCode::kInternal, "");
            {
              py::gil_scoped_release nogil;
              r = m.manager().can_admit(bytes, gpus);
            }
            return take(std::move(r));
          },
          py::arg("bytes"), py::arg("gpus") = 1)
      .def(
          "try_acquire",
          [](PyManager& m, std::string job_id, std::uint64_t bytes, int gpus, int priority,
             int device, std::string command, std::string kind, std::uint64_t default_bytes,
             bool cap, std::string resident, bool preemptible, std::optional<double> revoke_grace,
             std::string beside_resident) {
            LeaseRequest r = make_request(std::move(job_id), bytes, gpus, priority, device,
                                          std::move(command), std::move(kind), default_bytes);
            r.resident = std::move(resident);
            r.beside_resident = std::move(beside_resident);
            r.preemptible = preemptible;
            r.revoke_grace_s = revoke_grace;
            StatusOr<Lease> lease = Status(ErrorCode::kInternal, "");
            {
              py::gil_scoped_release nogil;
              lease = m.manager().try_acquire(r);
            }
            return m.wrap(take(std::move(lease)), cap);
          },
          py::arg("job_id"), py::arg("bytes"), py::arg("gpus") = 1, py::arg("priority") = 0,
          py::arg("device") = -1, py::arg("command") = "", py::arg("kind") = "",
          py::arg("default_bytes") = 0, py::arg("cap") = false, py::arg("resident") = "",
          py::arg("preemptible") = false, py::arg("revoke_grace") = py::none(),
          py::arg("beside_resident") = "",
          "bytes = 0 with a kind asks for the kind's learned estimate (else default_bytes). "
          "cap: count the lease toward this process's torch memory cap. resident, "
          "preemptible, revoke_grace: a revocable lease; beside_resident: the resident the "
          "job runs beside (docs/scheduling.md).")
      .def(
          "acquire",
          [](PyManager& m, std::string job_id, std::uint64_t bytes, std::optional<double> timeout,
             int gpus, int priority, int device, std::string command,
             std::optional<CancelToken> cancel, std::string kind, std::uint64_t default_bytes,
             bool cap) {
            LeaseRequest r = make_request(std::move(job_id), bytes, gpus, priority, device,
                                          std::move(command), std::move(kind), default_bytes);
            WaitOptions wait = wait_options(timeout, std::move(cancel));
            return m.wrap(take(acquire_interruptibly(m.manager(), r, wait)), cap);
          },
          py::arg("job_id"), py::arg("bytes"), py::arg("timeout") = py::none(), py::arg("gpus") = 1,
          py::arg("priority") = 0, py::arg("device") = -1, py::arg("command") = "",
          py::arg("cancel") = py::none(), py::arg("kind") = "", py::arg("default_bytes") = 0,
          py::arg("cap") = false,
          "Waits (without the GIL) until the lease is granted; timeout in seconds, None: "
          "no deadline, 0: do not wait.")
      .def(
          "release",
          [](PyManager& m, const std::string& job_id, bool failed) {
            Status s;
            {
              py::gil_scoped_release nogil;
              s = m.manager().release(job_id,
                                      failed ? JobOutcome::kFailed : JobOutcome::kSucceeded);
            }
            if (s.code() == ErrorCode::kNotFound) return false;
            check(s);
            return true;
          },
          py::arg("job_id"), py::arg("failed") = false,
          "Releases a job's lease by id; False when no such lease is held.")
      .def(
          "cancel",
          [](PyManager& m, const std::string& job_id) {
            Status s;
            {
              py::gil_scoped_release nogil;
              s = m.manager().cancel(job_id);
            }
            if (s.code() == ErrorCode::kNotFound) return false;
            check(s);
            return true;
          },
          py::arg("job_id"), "Cancels a waiting request; False when no such job waits.")
      .def("snapshot",
           [](PyManager& m) {
             StatusOr<Snapshot> snap = Status(ErrorCode::kInternal, "");
             {
               py::gil_scoped_release nogil;
               snap = m.manager().snapshot();
             }
             return snapshot_dict(take(std::move(snap)));
           })
      .def(
          "generation",
          [](py::object self, std::string job_id, std::uint64_t bytes,
             std::optional<double> timeout, int priority, std::string kind,
             std::uint64_t default_bytes, bool cap, bool preemptible,
             std::optional<double> revoke_grace, std::string beside_resident) {
            if (timeout && (std::isnan(*timeout) || *timeout < 0)) {
              throw py::value_error("timeout must be a non-negative number of seconds or None");
            }
            LeaseRequest r = make_request(std::move(job_id), bytes, 1, priority, -1, "",
                                          std::move(kind), default_bytes);
            r.preemptible = preemptible;
            r.revoke_grace_s = revoke_grace;
            r.beside_resident = std::move(beside_resident);
            return PyGeneration(std::move(self), std::move(r), timeout, cap);
          },
          py::arg("job_id"), py::arg("bytes"), py::arg("timeout") = py::none(),
          py::arg("priority") = 0, py::arg("kind") = "", py::arg("default_bytes") = 0,
          py::arg("cap") = false, py::arg("preemptible") = false,
          py::arg("revoke_grace") = py::none(), py::arg("beside_resident") = "",
          "beside_resident: the name of the resident the job runs beside (docs/scheduling.md).")
      .def("set_revoke_callback", &PyManager::set_revoke_callback, py::arg("callback"),
           "callback(notice) runs when a revocable lease of this process is revoked.")
      .def(
          "touch",
          [](PyManager& m, const std::string& job_id) {
            Status s;
            {
              py::gil_scoped_release nogil;
              s = m.manager().ledger()->touch(job_id);
            }
            check(s);
          },
          py::arg("job_id"), "A resident lease was used now (revoked last among residents).")
      .def(
          "revoke",
          [](PyManager& m, const std::string& job_id) {
            Status s;
            {
              py::gil_scoped_release nogil;
              s = m.manager().ledger()->revoke(job_id);
            }
            check(s);
          },
          py::arg("job_id"), "Revokes a revocable lease now, as a waiter would.")
      .def("set_error_callback", &PyManager::set_error_callback, py::arg("callback"),
           "callback(exception, lease) runs when a generation() block raises, before the "
           "release.")
      .def(
          "estimates",
          [](PyManager& m) {
            StatusOr<std::vector<KindEstimate>> r = Status(ErrorCode::kInternal, "");
            {
              py::gil_scoped_release nogil;
              r = m.manager().ledger()->estimates();
            }
            py::list out;
            for (const KindEstimate& e : take(std::move(r))) out.append(estimate_dict(e));
            return out;
          },
          "The history of job kinds, in name order: one dict per kind.")
      .def(
          "forget_kind",
          [](PyManager& m, const std::string& kind) {
            Status s;
            {
              py::gil_scoped_release nogil;
              s = m.manager().ledger()->forget_kind(kind);
            }
            if (s.code() == ErrorCode::kNotFound) return false;
            check(s);
            return true;
          },
          py::arg("kind"), "Forgets a kind's history; False when it has none.")
      .def("set_cleanup_callback", &PyManager::set_cleanup_callback, py::arg("callback"),
           "callback(device: int) runs after every release (None: nothing runs).")
      .def(
          "run_cleanup",
          [](PyManager& m, int device) {
            py::gil_scoped_release nogil;
            m.manager().run_cleanup(device);
          },
          py::arg("device") = -1)
      .def("set_framework_memory", &PyManager::set_framework_memory, py::arg("device"),
           py::arg("allocated"), py::arg("reserved"), py::arg("max_allocated"))
      .def("clear_framework_memory", &PyManager::clear_framework_memory)
      .def(
          "framework_memory",
          [](PyManager& m, int device) -> py::object {
            auto mem = m.manager().framework_memory(device);
            if (!mem) return py::none();
            return py::make_tuple(mem->allocated_bytes, mem->reserved_bytes,
                                  mem->peak_allocated_bytes);
          },
          py::arg("device"))
      .def(
          "synchronize",
          [](PyManager& m, int device) {
            Status s;
            {
              py::gil_scoped_release nogil;
              s = m.manager().synchronize(device);
            }
            check(s);
          },
          py::arg("device"));

  mod.def(
      "parse_size", [](const std::string& text) { return take(parse_size(text)); }, py::arg("text"),
      "'24GiB' -> bytes; a bare integer means MiB.");
  mod.def("format_bytes", &format_bytes, py::arg("bytes"), "bytes -> '19.2 GiB'.");
  mod.def(
      "parse_simulate_spec",
      [](const std::string& spec) { return take(parse_simulate_spec(spec)); }, py::arg("spec"),
      "A GPUMGR_SIMULATE spec -> the size of each device in bytes.");
  mod.def(
      "parse_device_selector",
      [](const std::string& text) {
        DeviceSelector s = take(parse_device_selector(text));
        const char* kind = s.kind == DeviceSelector::Kind::kAuto   ? "auto"
                           : s.kind == DeviceSelector::Kind::kCuda ? "cuda"
                                                                   : "cpu";
        return py::make_tuple(kind, s.index);
      },
      py::arg("text"), "'cuda:1' -> ('cuda', 1); raises ValueError for a bad selector.");
  mod.attr("MiB") = kMiB;

  // The torch cap's registry, for gpu_manager._torch.
  mod.def(
      "_set_cap_callback",
      [](py::object callback) {
        PyObject* old = cap_callback;
        cap_callback = callback.is_none() ? nullptr : callback.release().ptr();
        Py_XDECREF(old);
      },
      py::arg("callback"), "callback(devices: list[int]) runs after the capped sums change.");
  mod.def(
      "_set_torch_import_hook_armed",
      [](bool armed) { torch_import_hook_armed.store(armed, std::memory_order_release); },
      py::arg("armed"));
  mod.def(
      "_cap_state", [](int device) { return cap_registry().get(device); }, py::arg("device"),
      "(bytes, version): what capped leases hold on torch's cuda:N, and its change count.");
  mod.def(
      "_cap_devices", [] { return cap_registry().all(); },
      "[(device, bytes)] for every torch device a lease ever capped.");
}
