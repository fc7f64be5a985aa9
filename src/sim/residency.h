// Models in a replay (docs/simulate.md, "Models and residency"): the cost of loading the
// model a job runs on, and what keeping models resident between jobs saves. A job on a model
// (TraceJob::model) needs the model's weights on its device beside its working memory, and
// loading them takes the model's load time. Two ways to run such jobs:
//
// - Unload after every job (Residency::kUnload): each job loads its model, holding
//   weights + working memory for load + duration, and unloads it at its end.
// - Keep resident (Residency::kResident): at a job's end its model stays loaded on that
//   device as a resident lease of the weights' size (LeaseRequest::resident), which the
//   scheduler revokes, least recently used first, for a waiter that cannot fit otherwise.
//   A later job on the model that can start at once beside a resident copy runs there with its
//   working memory for its duration alone, a load avoided (the copy is touched: most recently
//   used). Otherwise it loads the model on a device that has no copy, or, when every device
//   able to hold it has one, waits for working memory beside one of them (beside the only
//   copy, its request names it, LeaseRequest::beside_resident, so that copy is never revoked
//   for it). A job's working lease and the copy it runs on are two leases: the scheduler may
//   revoke a copy that a job is using, and then, as a serving worker does, the copy is
//   unloaded (released) when the last job on it ends.
//
// Not thread-safe: the replay that owns it calls it, with the scheduler it was given.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/scheduler.h"
#include "gpumgr/ledger.h"
#include "gpumgr/status.h"
#include "sim/trace.h"

namespace gpumgr::sim {

enum class Residency { kUnload, kResident };
std::string_view residency_name(Residency residency);  // "unload", "resident"

// What models cost in one replay (SimReport::models).
struct ModelFigures {
  std::uint64_t jobs = 0;           // jobs on a model
  std::uint64_t loads = 0;          // model loads
  std::uint64_t loads_avoided = 0;  // jobs that ran on a model already loaded
  double load_s = 0;                // seconds spent loading, summed over loads
  // Models unloaded at a job's end instead of staying resident: the device had no room for
  // them without delaying a waiter, or another copy of the model was resident there already.
  std::uint64_t dropped = 0;
  // Resident copies revoked by the scheduler (also counted in SimReport::residents_unloaded).
  std::uint64_t unloaded = 0;
  // Of those, copies revoked while jobs ran beside them: each went when its last job ended.
  // In service their holders would have had to finish those jobs within the grace.
  std::uint64_t unloaded_in_use = 0;
};

class ModelResidency {
 public:
  // `duration`: each job's duration in the replay's nanoseconds. Resident copies are held by
  // `worker` (a uid of no trace user) at `resident_priority` (the lowest of the trace, so that
  // every job may revoke them). `trace_ids`: the trace's job ids, which copies' ids avoid. Keeps
  // references to `jobs`, `duration`, `scheduler` and `trace_ids`.
  ModelResidency(const std::vector<TraceJob>& jobs, const std::vector<core::TimeNs>& duration,
                 Residency mode, core::Scheduler& scheduler, core::Holder worker,
                 int resident_priority,
                 const std::unordered_map<std::string, std::size_t>& trace_ids);

  // What job `i` does when it arrives (or is queued again) at `now`, given the request it
  // would make without a model. In resident mode it starts at once beside a resident copy of
  // its model where the scheduler lets it (try_start): then `started` is set, its lease is
  // active on `device` and nothing is to be queued. Otherwise `request` is to be queued.
  struct Ask {
    bool started = false;
    int device = -1;
    LeaseRequest request;
  };
  StatusOr<Ask> ask(std::size_t i, LeaseRequest request, core::Holder holder, core::TimeNs now);

  // Job `i` was granted on `device` at `now`: returns how long it holds its lease. Sets
  // `*requeue` when it waited for a resident copy that is gone: the caller releases its
  // lease and asks again. Sets `*freed` when it took over an idle copy on that device (its
  // lease holds the model: the copy's lease was released), so that a pass is due.
  StatusOr<core::TimeNs> granted(std::size_t i, int device, core::TimeNs now, bool* requeue,
                                 bool* freed);

  // Job `i`'s lease was released at `now`. A job that ran beside a copy leaves it (releasing
  // it if it was revoked meanwhile: `*freed`). Returns whether the job's own model may stay
  // resident: then call keep() after the pass that follows. Until then the model is still on
  // the device: a waiter on the same model granted there in that pass runs on it (a load
  // avoided, the model passing from one job's lease to the next's), and the others get the
  // freed memory first.
  StatusOr<bool> finished(std::size_t i, core::TimeNs now, bool* freed);
  // Keeps job `i`'s model resident on its device, unless a job granted since its end runs on
  // it, if a lease for it starts now (try_start: without delaying any waiter), else drops it.
  Status keep(std::size_t i, core::TimeNs now);

  // Jobs queued to load their model that can now start beside a resident copy of it (one
  // kept since they were queued, or one with room now): as a serving worker takes whichever
  // comes first, each starts there (try_start, under a lease name of its own: its queued
  // request still holds its job id) and its queued request is cancelled. Returns them with
  // their devices, in queue order; a pass is due after any.
  StatusOr<std::vector<std::pair<std::size_t, int>>> start_waiting(core::TimeNs now);
  // The job id of job `i`'s lease in the scheduler (its own unless start_waiting renamed it).
  const std::string& lease_name(std::size_t i) const {
    return lease_names_[i].empty() ? jobs_[i].job_id : lease_names_[i];
  }

  // Whether `job_id` is a resident copy's lease.
  bool is_copy(std::string_view job_id) const { return copy_ids_.count(job_id) != 0; }
  // The scheduler revoked copy `job_id`: it is released now (returns true: a pass is due)
  // or when the last job running on it ends.
  StatusOr<bool> revoked(std::string_view job_id, core::TimeNs now);

  const ModelFigures& figures() const { return figures_; }
  // Whether job `i` loaded its model (false: it ran on one already loaded, or has none).
  bool loaded(std::size_t i) const { return jobs_use_[i] == Use::kLoad; }
  // Byte-seconds leased by resident copies up to `end` (those still held count until then).
  double copy_byte_seconds(core::TimeNs end) const;

 private:
  enum class Use { kNone, kLoad, kWarm, kTakeover, kWaitWarm };
  struct Copy {
    std::string job_id;
    int users = 0;  // jobs running beside it
    bool revoking = false;
    core::TimeNs granted_at = 0;
  };
  using Copies = std::vector<std::optional<Copy>>;  // by device

  Copies& copies_of(std::size_t i) { return copies_.at(jobs_[i].model); }
  // A copy a job may use: there, and not being revoked.
  bool usable(const std::optional<Copy>& copy) const;
  Status release_copy(const std::string& model, int device, core::TimeNs now);

  const std::vector<TraceJob>& jobs_;
  const std::vector<core::TimeNs>& duration_;
  Residency mode_;
  core::Scheduler& scheduler_;
  core::Holder worker_;
  int resident_priority_;
  const std::unordered_map<std::string, std::size_t>& trace_ids_;
  std::unordered_map<std::string, Copies> copies_;              // by model
  std::unordered_map<std::string, std::uint64_t> model_bytes_;  // by model
  // Copy job id -> (model, device).
  std::unordered_map<std::string, std::pair<std::string, int>, core::JobIdHash, std::equal_to<>>
      copy_ids_;
  // Starts job `i` beside its model's usable copy on `device` under lease name `name`: true
  // when it started, false when the scheduler says not now.
  StatusOr<bool> start_beside(std::size_t i, int device, const std::string& name,
                              core::Holder holder, core::TimeNs now);
  // The copies of job `i`'s model it could start beside now, the least room first.
  std::vector<int> warm_room(std::size_t i) const;
  // A job id no trace job has: `base`, else `base` with "+" appended until it is free.
  std::string free_id(std::string base) const;

  std::vector<Use> jobs_use_;
  // Models of jobs that ended at this instant, not yet kept: (model, device) -> the job.
  std::map<std::pair<std::string, int>, std::size_t> ended_;
  std::vector<std::string> lease_names_;  // empty: the job's own id
  std::vector<int> jobs_device_;
  ModelFigures figures_;
  core::TimeNs load_ns_ = 0;          // figures_.load_s in the replay's nanoseconds
  double released_byte_seconds_ = 0;  // of copies already released
};

}  // namespace gpumgr::sim
