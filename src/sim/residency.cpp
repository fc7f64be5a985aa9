#include "sim/residency.h"

#include <algorithm>
#include <cmath>

namespace gpumgr::sim {
namespace {

using core::TimeNs;

TimeNs to_ns(double seconds) { return static_cast<TimeNs>(std::llround(seconds * 1e9)); }
double to_s(TimeNs ns) { return static_cast<double>(ns) / 1e9; }

// A refusal that only says "not now": the copy is not kept, or the job does not start there.
bool not_now(const Status& s) {
  return s.code() == ErrorCode::kResourceExhausted || s.code() == ErrorCode::kAlreadyExists;
}

// The resident name of model `model`'s copy on `device` (LeaseRequest::resident).
std::string resident_name(const std::string& model, int device) {
  return model + "@" + std::to_string(device);
}

}  // namespace

std::string_view residency_name(Residency residency) {
  return residency == Residency::kResident ? "resident" : "unload";
}

ModelResidency::ModelResidency(const std::vector<TraceJob>& jobs,
                               const std::vector<core::TimeNs>& duration, Residency mode,
                               core::Scheduler& scheduler, core::Holder worker,
                               int resident_priority,
                               const std::unordered_map<std::string, std::size_t>& trace_ids)
    : jobs_(jobs),
      duration_(duration),
      mode_(mode),
      scheduler_(scheduler),
      worker_(worker),
      resident_priority_(resident_priority),
      trace_ids_(trace_ids),
      jobs_use_(jobs.size(), Use::kNone),
      lease_names_(jobs.size()),
      jobs_device_(jobs.size(), -1) {
  for (const TraceJob& job : jobs) {
    if (job.model.empty()) continue;
    ++figures_.jobs;
    model_bytes_.emplace(job.model, job.model_bytes);
    copies_.try_emplace(job.model, Copies(scheduler.device_count()));
  }
}

StatusOr<ModelResidency::Ask> ModelResidency::ask(std::size_t i, LeaseRequest request,
                                                  core::Holder holder, TimeNs now) {
  const TraceJob& job = jobs_[i];
  Ask ask;
  if (job.model.empty()) {
    ask.request = std::move(request);
    return ask;
  }
  const std::uint64_t with_model = job.vram_bytes + job.model_bytes;
  request.bytes = with_model;
  jobs_use_[i] = Use::kLoad;
  if (mode_ == Residency::kUnload) {
    ask.request = std::move(request);
    return ask;
  }

  // Beside a copy that can take the working memory now.
  for (const int d : warm_room(i)) {
    StatusOr<bool> started = start_beside(i, d, job.job_id, holder, now);
    if (!started.ok()) return started.status();
    if (!*started) continue;
    ask.started = true;
    ask.device = d;
    return ask;
  }
  Copies& copies = copies_of(i);
  std::vector<int> warm, cold;
  for (std::size_t d = 0; d < copies.size(); ++d) {
    if (scheduler_.device(static_cast<int>(d)).capacity < with_model) continue;
    (usable(copies[d]) ? warm : cold).push_back(static_cast<int>(d));
  }
  // Otherwise a load on a device without a copy (any device when there is no copy at all);
  // when every device that can hold it has one, the working memory beside one of them.
  if (!cold.empty()) {
    if (!warm.empty()) request.allowed_devices = cold;
  } else if (!warm.empty()) {
    request.bytes = job.vram_bytes;
    jobs_use_[i] = Use::kWaitWarm;
    if (warm.size() == 1) {
      // As a serving worker's request names its model: never revoked for this waiter.
      request.beside_resident = resident_name(job.model, warm.front());
    } else {
      // A request names one resident; with several copies the waiter takes whichever has
      // room first, and may have one of them revoked for it.
      request.allowed_devices = warm;
    }
  }
  // (No device can hold it at all: the scheduler refuses the request, naming the job.)
  ask.request = std::move(request);
  return ask;
}

std::vector<int> ModelResidency::warm_room(std::size_t i) const {
  const TraceJob& job = jobs_[i];
  const Copies& copies = copies_.at(job.model);
  std::vector<int> room;
  for (std::size_t d = 0; d < copies.size(); ++d) {
    const int device = static_cast<int>(d);
    if (usable(copies[d]) && scheduler_.device(device).admissible() >= job.vram_bytes) {
      room.push_back(device);
    }
  }
  // Best fit, as the scheduler places: the least room left, the lowest device among equals.
  std::stable_sort(room.begin(), room.end(), [&](int a, int b) {
    return scheduler_.device(a).admissible() < scheduler_.device(b).admissible();
  });
  return room;
}

StatusOr<bool> ModelResidency::start_beside(std::size_t i, int device, const std::string& name,
                                            core::Holder holder, TimeNs now) {
  const TraceJob& job = jobs_[i];
  LeaseRequest beside;
  beside.job_id = name;
  beside.bytes = job.vram_bytes;
  beside.device = device;
  // Named, as a serving worker's request is: the copy is in use while the job runs.
  beside.beside_resident = resident_name(job.model, device);
  beside.priority = job.priority;
  beside.kind = job.kind;
  StatusOr<const core::ActiveEntry*> started = scheduler_.try_start(beside, holder, now);
  if (!started.ok()) {
    if (not_now(started.status())) return false;
    return started.status();
  }
  Copy& copy = *copies_of(i)[static_cast<std::size_t>(device)];
  ++copy.users;
  if (Status s = scheduler_.touch(copy.job_id, now); !s.ok()) return s;
  jobs_use_[i] = Use::kWarm;
  jobs_device_[i] = device;
  if (name != job.job_id) lease_names_[i] = name;
  ++figures_.loads_avoided;
  return true;
}

std::string ModelResidency::free_id(std::string base) const {
  while (trace_ids_.count(base) != 0) base += "+";
  return base;
}

StatusOr<std::vector<std::pair<std::size_t, int>>> ModelResidency::start_waiting(TimeNs now) {
  std::vector<std::pair<std::size_t, int>> started;
  if (mode_ != Residency::kResident || copy_ids_.empty()) return started;
  for (const core::Scheduler::Waiter* w : scheduler_.waiters()) {
    const auto it = trace_ids_.find(w->request.job_id);
    if (it == trace_ids_.end()) continue;
    const std::size_t i = it->second;
    if (jobs_[i].model.empty() || jobs_use_[i] != Use::kLoad) continue;
    for (const int d : warm_room(i)) {
      const std::string name = free_id(jobs_[i].job_id + "@" + std::to_string(d));
      StatusOr<bool> ok = start_beside(i, d, name, w->holder, now);
      if (!ok.ok()) return ok.status();
      if (!*ok) continue;
      started.emplace_back(i, d);
      break;
    }
  }
  // Cancelled after the walk: waiters() points into the queue.
  for (const auto& [i, d] : started) {
    if (Status s = scheduler_.cancel(jobs_[i].job_id); !s.ok()) return s;
  }
  return started;
}

bool ModelResidency::usable(const std::optional<Copy>& copy) const {
  if (!copy || copy->revoking) return false;
  // The scheduler may have revoked it in the pass whose grants are being recorded, before
  // the replay took that revocation.
  const core::ActiveEntry* lease = scheduler_.find_active(copy->job_id);
  return lease != nullptr && !lease->second.revoking;
}

StatusOr<TimeNs> ModelResidency::granted(std::size_t i, int device, TimeNs now, bool* requeue,
                                         bool* freed) {
  const TraceJob& job = jobs_[i];
  if (job.model.empty()) return duration_[i];
  jobs_device_[i] = device;
  const TimeNs load = to_ns(job.load_s);
  auto load_here = [&]() -> TimeNs {
    ++figures_.loads;
    load_ns_ += load;
    figures_.load_s = to_s(load_ns_);
    return load + duration_[i];
  };
  if (mode_ == Residency::kUnload) return load_here();

  std::optional<Copy>& copy = copies_of(i)[static_cast<std::size_t>(device)];
  switch (jobs_use_[i]) {
    case Use::kWarm:
      return duration_[i];  // started by ask(), which counted it
    case Use::kWaitWarm:
      if (!usable(copy)) {
        *requeue = true;  // the copy it waited for was revoked meanwhile
        return 0;
      }
      ++copy->users;
      if (Status s = scheduler_.touch(copy->job_id, now); !s.ok()) return s;
      jobs_use_[i] = Use::kWarm;
      ++figures_.loads_avoided;
      return duration_[i];
    case Use::kLoad:
      if (usable(copy) && copy->users == 0) {
        // A copy came to this device while the job waited: the job's lease holds the model
        // already, so the copy's goes, and the job runs on the model loaded there.
        if (Status s = release_copy(job.model, device, now); !s.ok()) return s;
        *freed = true;
        jobs_use_[i] = Use::kTakeover;
        ++figures_.loads_avoided;
        return duration_[i];
      }
      if (const auto ended = ended_.find({job.model, device}); ended != ended_.end()) {
        // A job on the model ended here at this instant: its model is this job's now.
        ended_.erase(ended);
        jobs_use_[i] = Use::kTakeover;
        ++figures_.loads_avoided;
        return duration_[i];
      }
      return load_here();
    default:
      return Status(ErrorCode::kInternal, "job '" + job.job_id + "' granted twice");
  }
}

StatusOr<bool> ModelResidency::finished(std::size_t i, TimeNs now, bool* freed) {
  const TraceJob& job = jobs_[i];
  if (job.model.empty() || mode_ == Residency::kUnload) return false;
  if (jobs_use_[i] != Use::kWarm) {
    // Two jobs that loaded the model on one device end together: one copy is enough.
    if (!ended_.emplace(std::make_pair(job.model, jobs_device_[i]), i).second) ++figures_.dropped;
    return true;
  }
  const int device = jobs_device_[i];
  std::optional<Copy>& copy = copies_of(i)[static_cast<std::size_t>(device)];
  if (!copy || copy->users < 1) {
    return Status(ErrorCode::kInternal,
                  "job '" + job.job_id + "' ran beside no copy of '" + job.model + "'");
  }
  --copy->users;
  if (!copy->revoking) {
    // Its last use was the end of its last job.
    if (Status s = scheduler_.touch(copy->job_id, now); !s.ok()) return s;
  } else if (copy->users == 0) {
    if (Status s = release_copy(job.model, device, now); !s.ok()) return s;
    *freed = true;
  }
  return false;
}

Status ModelResidency::keep(std::size_t i, TimeNs now) {
  const TraceJob& job = jobs_[i];
  const int device = jobs_device_[i];
  const auto ended = ended_.find({job.model, device});
  if (ended == ended_.end() || ended->second != i) return Status::Ok();  // passed on
  ended_.erase(ended);
  std::optional<Copy>& copy = copies_of(i)[static_cast<std::size_t>(device)];
  if (copy) {
    ++figures_.dropped;  // one copy of a model per device is enough
    return Status::Ok();
  }
  LeaseRequest request;
  request.resident = resident_name(job.model, device);
  request.job_id = free_id("resident:" + request.resident);
  request.bytes = job.model_bytes;
  request.device = device;
  request.priority = resident_priority_;
  StatusOr<const core::ActiveEntry*> started = scheduler_.try_start(request, worker_, now);
  if (!started.ok()) {
    if (!not_now(started.status())) return started.status();
    ++figures_.dropped;
    return Status::Ok();
  }
  copy = Copy{request.job_id, 0, false, now};
  copy_ids_.emplace(request.job_id, std::make_pair(job.model, device));
  return Status::Ok();
}

StatusOr<bool> ModelResidency::revoked(std::string_view job_id, TimeNs now) {
  const auto it = copy_ids_.find(job_id);
  if (it == copy_ids_.end()) {
    return Status(ErrorCode::kInternal, "no resident copy '" + std::string(job_id) + "'");
  }
  const auto [model, device] = it->second;
  Copy& copy = *copies_.at(model)[static_cast<std::size_t>(device)];
  ++figures_.unloaded;
  copy.revoking = true;
  if (copy.users > 0) {
    ++figures_.unloaded_in_use;
    return false;  // unloaded when the jobs running on it end
  }
  if (Status s = release_copy(model, device, now); !s.ok()) return s;
  return true;
}

Status ModelResidency::release_copy(const std::string& model, int device, TimeNs now) {
  std::optional<Copy>& copy = copies_.at(model)[static_cast<std::size_t>(device)];
  if (StatusOr<core::Released> r = scheduler_.release(copy->job_id, now); !r.ok()) {
    return Status(ErrorCode::kInternal,
                  "releasing '" + copy->job_id + "': " + r.status().to_string());
  }
  released_byte_seconds_ +=
      static_cast<double>(model_bytes_.at(model)) * to_s(now - copy->granted_at);
  copy_ids_.erase(copy->job_id);
  copy.reset();
  return Status::Ok();
}

double ModelResidency::copy_byte_seconds(TimeNs end) const {
  double sum = released_byte_seconds_;
  for (const auto& [model, copies] : copies_) {
    for (const std::optional<Copy>& copy : copies) {
      if (copy && end > copy->granted_at) {
        sum += static_cast<double>(model_bytes_.at(model)) * to_s(end - copy->granted_at);
      }
    }
  }
  return sum;
}

}  // namespace gpumgr::sim
