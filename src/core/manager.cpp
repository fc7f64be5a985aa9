#include "gpumgr/manager.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <unordered_map>

#include "core/local_ledger.h"
#include "cuda/cuda_driver.h"
#include "util/thread_annotations.h"

namespace gpumgr {
namespace detail {

// The shared state behind a Manager and its Leases. Leases hold it by shared_ptr, so a
// lease that outlives its Manager can still be returned. Any thread may call it.
class ManagerCore : public std::enable_shared_from_this<ManagerCore> {
 public:
  ManagerCore(ManagerOptions options, std::shared_ptr<Ledger> ledger, std::string device_string,
              bool uses_gpu, std::string note, int pinned_device)
      : options_(std::move(options)),
        ledger_(std::move(ledger)),
        device_string_(std::move(device_string)),
        uses_gpu_(uses_gpu),
        note_(std::move(note)),
        pinned_device_(pinned_device),
        local_(dynamic_cast<core::LocalLedger*>(ledger_.get())) {}

  const ManagerOptions& options() const { return options_; }
  const std::shared_ptr<Ledger>& ledger() const { return ledger_; }
  const std::string& device_string() const { return device_string_; }
  bool uses_gpu() const { return uses_gpu_; }
  const std::string& note() const { return note_; }

  bool needs_pin(const LeaseRequest& request) const {
    return pinned_device_ >= 0 && request.device == -1;
  }
  LeaseRequest pin(LeaseRequest request) const {
    if (pinned_device_ >= 0 && request.device == -1) request.device = pinned_device_;
    return request;
  }

  bool is_local() const { return local_ != nullptr; }

  // The hot path, with the in-process ledger: the lease's LeaseInfo is filled where the
  // returned Lease holds it, not built, returned and moved twice (hence the one return
  // statement, for the named return value optimisation). `self` is this core, as the
  // Manager holds it: copying it is cheaper than shared_from_this().
  StatusOr<Lease> try_acquire_local(const std::shared_ptr<ManagerCore>& self,
                                    const LeaseRequest& request) {
    StatusOr<Lease> out(std::in_place);
    Lease& lease = *out;
    Status s = needs_pin(request) ? local_->try_acquire_into(pin(request), lease.info_)
                                  : local_->try_acquire_into(request, lease.info_);
    if (s.ok()) {
      note_used(lease.info_.devices);
      lease.core_ = self;
      lease.grant_ = lease.info_.lease_id;
    } else {
      out = std::move(s);
    }
    return out;
  }

  StatusOr<Lease> make_lease(StatusOr<LeaseInfo> info) {
    if (!info.ok()) return info.status();
    note_used(info->devices);
    // A handle releases only its own grant, not a later lease of the same job id: the
    // in-process ledger numbers its grants; for another ledger this manager does.
    std::uint64_t grant = info->lease_id;
    if (local_ == nullptr) {
      // The in-process ledger also reports a released lease's devices itself; for another
      // ledger remember them, so that a release by job id can still run the cleanup hook.
      MutexLock lock(mutex_);
      grant = ++last_remote_grant_;
      remote_leases_[info->job_id] = RemoteLease{info->devices, grant};
    }
    return Lease(shared_from_this(), std::move(info).value(), grant);
  }

  // Releases the job's lease; with `grant` other than 0, only if it is still that grant
  // (kNotFound otherwise).
  Status release(std::string_view job_id, JobOutcome outcome, std::uint64_t grant = 0) {
    std::vector<int> devices;
    Status s;
    if (local_ != nullptr) {
      // Ask for the devices only when a hook will use them.
      const bool want = has_cleanup_hook_.load(std::memory_order_acquire);
      s = local_->release_as(job_id, outcome, std::nullopt, want ? &devices : nullptr, grant);
    } else {
      std::uint64_t known = 0;  // the grant this manager knows for the job, if any
      {
        MutexLock lock(mutex_);
        const auto it = remote_leases_.find(std::string(job_id));
        if (it != remote_leases_.end()) known = it->second.grant;
      }
      if (grant != 0 && known != grant) {
        return NotFound("lease of job '" + std::string(job_id) + "' was already released");
      }
      s = ledger_->release(job_id, outcome);
      MutexLock lock(mutex_);
      // Forget the grant released here, not one made for the same id since.
      auto it = remote_leases_.find(std::string(job_id));
      if (it != remote_leases_.end() && it->second.grant == known) {
        if (s.ok() || s.code() == ErrorCode::kNotFound) devices = std::move(it->second.devices);
        remote_leases_.erase(it);
      }
    }
    for (const int d : devices) cleanup(d);
    return s;
  }

  void cleanup(int device) {
    // Most C++ users set no hook: then a release takes no lock here.
    if (!has_cleanup_hook_.load(std::memory_order_acquire)) return;
    std::function<void(int)> hook;
    {
      MutexLock lock(mutex_);
      hook = cleanup_hook_;
    }
    if (hook) hook(device);
  }

  void run_cleanup(int device) {
    if (device >= 0) return cleanup(device);
    std::set<int> devices;
    {
      MutexLock lock(mutex_);
      devices = used_devices_high_;
    }
    const std::uint64_t low = used_devices_low_.load(std::memory_order_relaxed);
    for (int d = 0; d < 64; ++d) {
      if ((low >> d) & 1U) devices.insert(d);
    }
    if (devices.empty()) devices.insert(pinned_device_ >= 0 ? pinned_device_ : 0);
    for (const int d : devices) cleanup(d);
  }

  void set_cleanup_hook(std::function<void(int)> hook) {
    MutexLock lock(mutex_);
    has_cleanup_hook_.store(static_cast<bool>(hook), std::memory_order_release);
    cleanup_hook_ = std::move(hook);
  }

  void set_provider(std::function<std::optional<FrameworkMemory>(int)> provider) {
    {
      MutexLock lock(mutex_);
      provider_ = provider;
    }
    // Where the backend cannot list processes, this process's framework memory is what its
    // own leases use: tell the in-process ledger so it is not counted as outside use.
    if (local_ != nullptr) {
      if (!provider) {
        local_->set_own_usage_provider(nullptr);
      } else {
        local_->set_own_usage_provider([provider](int d) -> std::optional<std::uint64_t> {
          auto mem = provider(d);
          if (!mem) return std::nullopt;
          return mem->reserved_bytes;
        });
      }
    }
  }

  std::optional<FrameworkMemory> framework_memory(int device) const {
    std::function<std::optional<FrameworkMemory>(int)> provider;
    {
      MutexLock lock(mutex_);
      provider = provider_;
    }
    if (!provider) return std::nullopt;
    return provider(device);
  }

 private:
  // Remembers the devices this manager has leased, for run_cleanup() without a device: the
  // first 64 in a lock-free bit set, since this runs on every acquire.
  void note_used(const std::vector<int>& devices) {
    for (const int d : devices) {
      if (d >= 0 && d < 64) {
        const std::uint64_t bit = std::uint64_t{1} << d;
        if ((used_devices_low_.load(std::memory_order_relaxed) & bit) == 0) {
          used_devices_low_.fetch_or(bit, std::memory_order_relaxed);
        }
      } else {
        MutexLock lock(mutex_);
        used_devices_high_.insert(d);
      }
    }
  }

  const ManagerOptions options_;
  const std::shared_ptr<Ledger> ledger_;
  const std::string device_string_;
  const bool uses_gpu_;
  const std::string note_;
  const int pinned_device_;
  core::LocalLedger* const local_;  // ledger_ when it is in-process, else null

  mutable Mutex mutex_;
  // The leases taken through a ledger other than the in-process one, by job id.
  struct RemoteLease {
    std::vector<int> devices;
    std::uint64_t grant = 0;  // numbered by this manager
  };
  std::unordered_map<std::string, RemoteLease> remote_leases_ GUARDED_BY(mutex_);
  std::uint64_t last_remote_grant_ GUARDED_BY(mutex_) = 0;
  std::atomic<std::uint64_t> used_devices_low_{0};      // bit d: device d < 64 was leased
  std::set<int> used_devices_high_ GUARDED_BY(mutex_);  // devices from 64 on
  std::function<void(int)> cleanup_hook_ GUARDED_BY(mutex_);
  std::atomic<bool> has_cleanup_hook_{false};  // whether cleanup_hook_ is set
  std::function<std::optional<FrameworkMemory>(int)> provider_ GUARDED_BY(mutex_);
};

}  // namespace detail

// ---- Lease ----

// Defined here, not defaulted in the class: a user-provided constructor spares the
// value-initialisation that StatusOr<Lease>(std::in_place) would otherwise begin with, a
// zero-fill of the whole Lease on every acquire.
Lease::Lease() noexcept = default;

Lease::Lease(std::shared_ptr<detail::ManagerCore> core, LeaseInfo&& info, std::uint64_t grant)
    : core_(std::move(core)), info_(std::move(info)), grant_(grant) {}

Lease::Lease(Lease&& other) noexcept
    : core_(std::move(other.core_)),
      info_(std::move(other.info_)),
      grant_(other.grant_),
      outcome_(other.outcome_),
      released_(other.released_) {
  other.core_.reset();
  other.released_ = true;
}

Lease& Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    if (held()) (void)release();
    core_ = std::move(other.core_);
    info_ = std::move(other.info_);
    grant_ = other.grant_;
    outcome_ = other.outcome_;
    released_ = other.released_;
    other.core_.reset();
    other.released_ = true;
  }
  return *this;
}

Lease::~Lease() {
  if (held()) (void)release();
}

Status Lease::release() { return release(outcome_); }

Status Lease::release(JobOutcome outcome) {
  if (!held()) return Status::Ok();
  released_ = true;
  outcome_ = outcome;
  Status s = core_->release(info_.job_id, outcome, grant_);
  // Released elsewhere already (by job id): still released, which is what was asked.
  return s.code() == ErrorCode::kNotFound ? Status::Ok() : s;
}

// ---- Manager ----

namespace {
// Plain formatting without iostreams (see cpu_backend.cpp for why Python-reachable code
// avoids them).
std::string text_of(const std::string& v) { return v.empty() ? "''" : v; }
std::string text_of(std::string_view v) { return text_of(std::string(v)); }
std::string text_of(int v) { return std::to_string(v); }
std::string text_of(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}
}  // namespace

std::string describe_option_difference(const ManagerOptions& a, const ManagerOptions& b) {
  std::string out;
  auto field = [&](const char* name, const auto& x, const auto& y) {
    if (x == y) return;
    if (!out.empty()) out += "; ";
    out += std::string(name) + ": " + text_of(x) + " in use, " + text_of(y) + " requested";
  };
  field("device", a.device, b.device);
  field("max_concurrent_jobs", a.max_concurrent_jobs, b.max_concurrent_jobs);
  field("memory_limit", a.memory_limit, b.memory_limit);
  field("placement", placement_policy_name(a.placement), placement_policy_name(b.placement));
  field("queue", queue_policy_name(a.queue), queue_policy_name(b.queue));
  field("simulate", a.simulate, b.simulate);
  field("socket", a.socket, b.socket);
  return out;
}

namespace {

LedgerConfig ledger_config(const ManagerOptions& o) {
  LedgerConfig c;
  c.max_concurrent_jobs = o.max_concurrent_jobs;
  c.memory_limit = o.memory_limit;
  c.placement = o.placement;
  c.queue = o.queue;
  c.poll_interval = o.poll_interval;
  c.overuse = o.overuse;
  c.history_path = o.history_path;
  return c;
}

// The in-process manager reports overuse but does not terminate: it would be signalling
// process trees of its own process (the holder is this process). The daemon does.
Status validate_in_process(const ManagerOptions& o) {
  if (o.overuse.policy == OverusePolicy::kTerminate) {
    return InvalidArgument(
        "the in-process manager supports --on-overuse report only: terminate needs the daemon "
        "(gpumgr serve --on-overuse terminate), which can end a holder's processes");
  }
  return Status::Ok();
}

std::string socket_path(const ManagerOptions& o) {
  if (o.in_process_only) return {};
  if (!o.socket.empty()) return o.socket;
  const char* env = std::getenv("GPUMGR_SOCKET");
  return env != nullptr ? env : "";
}

}  // namespace

Manager::Manager(std::shared_ptr<detail::ManagerCore> core) : core_(std::move(core)) {}
Manager::~Manager() = default;

StatusOr<std::unique_ptr<Manager>> Manager::create(const ManagerOptions& options) {
  if (Status s = validate_config(ledger_config(options)); !s.ok()) return s;
  auto selector = parse_device_selector(options.device);
  if (!selector.ok()) return selector.status();
  std::string cpu_note;  // set when 'cpu' asked a daemon that shares GPUs, not host memory
  if (const std::string socket = socket_path(options); !socket.empty()) {
    auto ledger = connect_daemon(socket);
    if (!ledger.ok()) return ledger.status();
    auto snap = ledger.value()->snapshot();
    if (!snap.ok()) return snap.status();
    // A selector means with the daemon what it means in-process: 'cuda:N' names one of the
    // daemon's GPUs, 'cuda' needs GPUs, and 'cpu' is host memory, never a GPU.
    const bool daemon_cpu = snap->backend.name == "cpu";
    const std::string where = "daemon at " + socket;
    const int count = static_cast<int>(snap->devices.size());
    if (selector->kind == DeviceSelector::Kind::kCuda && daemon_cpu) {
      return Unavailable("device '" + options.device +
                         "' asked for a GPU but none is usable: the " + where +
                         " has no GPU (it shares host memory)");
    }
    if (selector->kind == DeviceSelector::Kind::kCuda && selector->index >= count) {
      return NotFound("device '" + options.device + "' does not exist: there " +
                      (count == 1 ? "is 1 GPU" : "are " + std::to_string(count) + " GPUs") +
                      " (cuda:0..cuda:" + std::to_string(count - 1) + ")");
    }
    if (selector->kind != DeviceSelector::Kind::kCpu || daemon_cpu) {
      std::string device = daemon_cpu ? "cpu" : "cuda";
      if (selector->index >= 0) device = "cuda:" + std::to_string(selector->index);
      const std::string note =
          daemon_cpu && selector->kind == DeviceSelector::Kind::kAuto
              ? "auto: the " + where + " has no usable GPU; using its host memory"
              : where;
      auto core = std::make_shared<detail::ManagerCore>(options, std::move(ledger).value(), device,
                                                        !daemon_cpu, note, selector->index);
      return std::unique_ptr<Manager>(new Manager(std::move(core)));
    }
    // 'cpu' with a daemon that shares GPUs: this process's own host memory, in-process.
    cpu_note = "the " + where + " shares GPUs, not host memory";
  }
  auto selection = open_backend(options.device, options.simulate);
  if (!selection.ok()) return selection.status();
  const bool cpu = selection->backend->info().name == "cpu";
  if (Status s = validate_in_process(options); !s.ok()) return s;
  auto ledger = core::LocalLedger::create(selection->backend, ledger_config(options),
                                          selection->pinned_device);
  if (!ledger.ok()) return ledger.status();
  std::string device = cpu ? "cpu" : "cuda";
  if (selection->pinned_device >= 0) device = "cuda:" + std::to_string(selection->pinned_device);
  const std::string note =
      cpu_note.empty() ? selection->note : selection->note + ", in this process: " + cpu_note;
  auto core = std::make_shared<detail::ManagerCore>(options, std::move(ledger).value(), device,
                                                    !cpu, note, selection->pinned_device);
  return std::unique_ptr<Manager>(new Manager(std::move(core)));
}

StatusOr<std::unique_ptr<Manager>> Manager::create(const ManagerOptions& options,
                                                   std::shared_ptr<DeviceBackend> backend) {
  if (Status s = validate_config(ledger_config(options)); !s.ok()) return s;
  auto selector = parse_device_selector(options.device);
  if (!selector.ok()) return selector.status();
  if (!backend) return InvalidArgument("no device backend given");
  const bool cpu = backend->info().name == "cpu";
  if (selector->kind == DeviceSelector::Kind::kCuda && cpu) {
    return Unavailable("device '" + options.device +
                       "' asked for a GPU but the backend is the CPU");
  }
  if (Status s = validate_in_process(options); !s.ok()) return s;
  auto ledger = core::LocalLedger::create(backend, ledger_config(options), selector->index);
  if (!ledger.ok()) return ledger.status();
  std::string device = cpu ? "cpu" : "cuda";
  if (selector->index >= 0) device = "cuda:" + std::to_string(selector->index);
  auto core =
      std::make_shared<detail::ManagerCore>(options, std::move(ledger).value(), device, !cpu,
                                            backend->info().name + " backend", selector->index);
  return std::unique_ptr<Manager>(new Manager(std::move(core)));
}

StatusOr<std::unique_ptr<Manager>> Manager::create_with_ledger(const ManagerOptions& options,
                                                               std::shared_ptr<Ledger> ledger,
                                                               std::string device_string) {
  if (!ledger) return InvalidArgument("no ledger given");
  auto selector = parse_device_selector(device_string == "cpu" ? "cpu" : device_string);
  if (!selector.ok()) return selector.status();
  const bool gpu = device_string != "cpu";
  auto core = std::make_shared<detail::ManagerCore>(options, std::move(ledger), device_string, gpu,
                                                    "custom ledger", selector->index);
  return std::unique_ptr<Manager>(new Manager(std::move(core)));
}

const ManagerOptions& Manager::options() const { return core_->options(); }
const std::string& Manager::device_string() const { return core_->device_string(); }
bool Manager::uses_gpu() const { return core_->uses_gpu(); }
const std::string& Manager::selection_note() const { return core_->note(); }

StatusOr<bool> Manager::can_admit(std::uint64_t bytes, int gpus) {
  LeaseRequest probe = core_->pin(LeaseRequest{});
  return core_->ledger()->can_admit(bytes, gpus, probe.device);
}

StatusOr<Lease> Manager::try_acquire(const LeaseRequest& request) {
  if (core_->is_local()) return core_->try_acquire_local(core_, request);
  return core_->make_lease(core_->ledger()->try_acquire(core_->pin(request)));
}

StatusOr<Lease> Manager::acquire(const LeaseRequest& request, const WaitOptions& wait) {
  return core_->make_lease(core_->ledger()->acquire(core_->pin(request), wait));
}

Status Manager::release(std::string_view job_id, JobOutcome outcome) {
  return core_->release(job_id, outcome);
}

Status Manager::cancel(std::string_view job_id) { return core_->ledger()->cancel(job_id); }

StatusOr<Snapshot> Manager::snapshot() { return core_->ledger()->snapshot(); }

void Manager::set_cleanup_hook(std::function<void(int)> hook) {
  core_->set_cleanup_hook(std::move(hook));
}

void Manager::run_cleanup(int device) { core_->run_cleanup(device); }

void Manager::set_framework_memory_provider(
    std::function<std::optional<FrameworkMemory>(int device)> provider) {
  core_->set_provider(std::move(provider));
}

std::optional<FrameworkMemory> Manager::framework_memory(int device) const {
  return core_->framework_memory(device);
}

Status Manager::synchronize(int device) {
  if (!uses_gpu()) {
    return Unavailable("device synchronisation needs a GPU; this manager runs on the CPU");
  }
  auto snap = snapshot();
  if (!snap.ok()) return snap.status();
  if (device < 0 || static_cast<std::size_t>(device) >= snap->devices.size()) {
    return NotFound("device " + std::to_string(device) + " does not exist");
  }
  const DeviceInfo& info = snap->devices[static_cast<std::size_t>(device)].info;
  if (info.kind == DeviceKind::kSimulated) return Status::Ok();  // nothing runs there
  if (Status s = cuda::driver_status(); !s.ok()) return s;
  return cuda::synchronize_device(info.pci_bus_id);
}

std::shared_ptr<Ledger> Manager::ledger() const { return core_->ledger(); }

StatusOr<Manager*> default_manager(const ManagerOptions& options, std::string* difference) {
  static Mutex mutex;
  static std::unique_ptr<Manager> instance;
  MutexLock lock(mutex);
  if (!instance) {
    auto created = Manager::create(options);
    if (!created.ok()) return created.status();
    instance = std::move(created).value();
  }
  if (difference != nullptr) *difference = describe_option_difference(instance->options(), options);
  return instance.get();
}

}  // namespace gpumgr
