// Lease: the move-only RAII handle of a granted VRAM lease.
//
// Destroying a Lease releases it (as succeeded unless mark_failed() was called); release()
// is idempotent. A Lease keeps the manager's core alive, so a lease that outlives its
// Manager is still returned to the ledger when it is released. A Lease object itself is not
// synchronised: use one from one thread at a time (moving it to another thread is fine).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gpumgr/ledger.h"
#include "gpumgr/status.h"

namespace gpumgr {

namespace detail {
class ManagerCore;
}

class Lease {
 public:
  Lease() noexcept;  // an empty lease, holding nothing
  Lease(Lease&& other) noexcept;
  Lease& operator=(Lease&& other) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease();

  bool held() const { return core_ != nullptr && !released_; }
  const std::string& job_id() const { return info_.job_id; }
  // The first leased device; see devices() for multi-GPU leases.
  int device() const { return info_.devices.empty() ? -1 : info_.devices.front(); }
  const std::vector<int>& devices() const { return info_.devices; }
  std::uint64_t bytes() const { return info_.bytes; }  // per device
  const LeaseInfo& info() const { return info_; }

  // Records that the job failed; the release (explicit or by the destructor) counts it so.
  void mark_failed() { outcome_ = JobOutcome::kFailed; }
  JobOutcome outcome() const { return outcome_; }

  // Releases the lease and runs the manager's cleanup hook on its devices. Idempotent: a
  // second call returns OK and does nothing. kLeaseLost when the lease had already ended
  // without this holder (released by someone else, or its daemon restarted and did not
  // give it back): the job ran part of its time without the lease.
  Status release();
  Status release(JobOutcome outcome);

 private:
  friend class detail::ManagerCore;
  Lease(std::shared_ptr<detail::ManagerCore> core, LeaseInfo&& info, std::uint64_t grant);

  std::shared_ptr<detail::ManagerCore> core_;
  LeaseInfo info_;
  // Which grant this handle holds, so that releasing it late (after a release by job id and
  // a new lease of the same id) leaves the newer lease alone.
  std::uint64_t grant_ = 0;
  JobOutcome outcome_ = JobOutcome::kSucceeded;
  bool released_ = false;
};

}  // namespace gpumgr
