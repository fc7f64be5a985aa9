// The scheduler's revocation rule (docs/scheduling.md, "Revocable leases"): which revocable
// leases a waiter that cannot fit otherwise gets, decided after each scheduling pass.
// Members of Scheduler, kept apart from the pass itself; pure like the rest of it.
#include <algorithm>
#include <limits>
#include <map>
#include <tuple>
#include <unordered_set>

#include "core/scheduler.h"
#include "gpumgr/units.h"

namespace gpumgr::core {
namespace {
constexpr std::size_t kMaxResidentNameLength = 256;

bool has_control(std::string_view text) {
  return std::any_of(text.begin(), text.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

// A lease that may be revoked for the waiter at hand.
struct Candidate {
  const ActiveEntry* entry = nullptr;
  bool already_revoking = false;  // revoked for a waiter that left: it frees memory anyway
};

// The order in which candidates are taken: leases already being revoked (free), then idle
// residents, least recently used first, then residents that jobs run beside now (unloading
// one cuts those jobs short), least recently used first, then preemptible jobs, lowest
// priority first and the most recently granted first within a priority (the least work lost).
auto preference(const Candidate& c) {
  const ActiveLease& l = c.entry->second;
  enum Group { kFree, kIdleResident, kBusyResident, kPreemptible };
  const Group group = c.already_revoking                    ? kFree
                      : l.revocable != Revocable::kResident ? kPreemptible
                      : l.users > 0                         ? kBusyResident
                                                            : kIdleResident;
  const TimeNs when = group == kIdleResident || group == kBusyResident ? l.last_used
                      : group == kPreemptible                          ? -l.granted_at
                                                                       : 0;
  return std::make_tuple(group, group == kPreemptible ? l.priority : 0, when, l.lease_id);
}

// What revoking a set costs, compared lexicographically: the preemptible jobs it kills, the
// residents in use it unloads, all the residents it unloads, how recently the most recently
// used of them was used, and the bytes it takes back. Leases already being revoked cost
// nothing.
struct Cost {
  int preempted = 0;
  int busy_residents = 0;
  int residents = 0;
  TimeNs newest_use = std::numeric_limits<TimeNs>::min();
  std::uint64_t bytes = 0;
  friend auto operator<=>(const Cost&, const Cost&) = default;
};

Cost cost_of(const std::vector<const Candidate*>& set) {
  Cost cost;
  for (const Candidate* c : set) {
    if (c->already_revoking) continue;
    const ActiveLease& l = c->entry->second;
    if (l.revocable == Revocable::kResident) {
      ++cost.residents;
      if (l.users > 0) ++cost.busy_residents;
      cost.newest_use = std::max(cost.newest_use, l.last_used);
    } else {
      ++cost.preempted;
    }
    cost.bytes += l.bytes * l.devices.size();
  }
  return cost;
}

bool on_device(const ActiveLease& lease, int device) {
  return std::find(lease.devices.begin(), lease.devices.end(), device) != lease.devices.end();
}

// "device 1" or "devices 0,2".
std::string devices_text(const std::vector<int>& devices) {
  std::string out = devices.size() == 1 ? "device " : "devices ";
  for (std::size_t i = 0; i < devices.size(); ++i) {
    out += (i == 0 ? "" : ",") + std::to_string(devices[i]);
  }
  return out;
}
}  // namespace

std::string_view revoke_cause_name(RevokeCause cause) {
  return cause == RevokeCause::kResident ? "resident" : "preempted";
}

Status check_resident_name(std::string_view name) {
  if (name.empty()) return InvalidArgument("resident name must not be empty");
  if (name.size() > kMaxResidentNameLength) {
    return InvalidArgument("resident name is " + std::to_string(name.size()) +
                           " characters long; the limit is " +
                           std::to_string(kMaxResidentNameLength));
  }
  if (has_control(name)) {
    return InvalidArgument("resident name must not contain control characters");
  }
  return Status::Ok();
}

Status Scheduler::check_revocable(const LeaseRequest& request) const {
  if (request.revoke_grace_s) {
    const double g = *request.revoke_grace_s;
    if (!(g >= 0 && g <= 86400)) {  // NaN fails both
      return InvalidArgument("revoke grace must be a finite number of seconds in [0, 86400], got " +
                             std::to_string(g));
    }
  }
  if (request.resident.empty()) return Status::Ok();
  if (Status s = check_resident_name(request.resident); !s.ok()) return s;
  if (request.preemptible) {
    return InvalidArgument("a lease is either preemptible or resident, not both (resident '" +
                           request.resident + "')");
  }
  const auto taken = residents_.find(request.resident);
  std::string holder = taken != residents_.end() ? taken->second : "";
  for (const auto& [key, w] : queue_) {
    if (w.request.resident == request.resident) holder = w.request.job_id;
  }
  if (!holder.empty()) {
    return Status(ErrorCode::kAlreadyExists,
                  "resident '" + request.resident + "' already exists (job '" + holder + "')");
  }
  return Status::Ok();
}

StatusOr<std::vector<int>> Scheduler::beside_devices(const LeaseRequest& request) const {
  const std::string& name = request.beside_resident;
  if (Status s = check_resident_name(name); !s.ok()) {
    return InvalidArgument("beside: " + s.message());
  }
  if (!request.resident.empty()) {
    return InvalidArgument("resident '" + request.resident + "' cannot run beside resident '" +
                           name + "': a lease is either a resident or beside one");
  }
  const auto holder = residents_.find(name);
  if (holder == residents_.end()) {
    for (const auto& [key, w] : queue_) {
      if (w.request.resident == name) {
        return NotFound("no resident '" + name + "' to run beside: job '" + w.request.job_id +
                        "' waits to load it");
      }
    }
    return NotFound("no resident '" + name + "' to run beside");
  }
  const ActiveLease& model = active_.find(holder->second)->second;
  if (model.revoking) {
    return Status(ErrorCode::kFailedPrecondition,
                  "resident '" + name + "' is being revoked: a job cannot run beside it");
  }
  const std::string where = "resident '" + name + "' is on " + devices_text(model.devices);
  if (request.device >= 0) {
    if (!on_device(model, request.device)) {
      return InvalidArgument("job pinned to device " + std::to_string(request.device) + ", but " +
                             where);
    }
    return std::vector<int>{};
  }
  std::vector<int> confined;
  for (const int d : model.devices) {
    const auto& only = request.allowed_devices;
    if (only.empty() || std::find(only.begin(), only.end(), d) != only.end()) {
      confined.push_back(d);
    }
  }
  if (confined.empty()) {
    return InvalidArgument(where + ", outside the allowed " +
                           devices_text(request.allowed_devices));
  }
  if (confined.size() < static_cast<std::size_t>(request.gpus)) {
    return InvalidArgument("a job on " + std::to_string(request.gpus) +
                           " GPUs cannot run beside resident '" + name + "', which is on " +
                           devices_text(model.devices) +
                           (confined.size() < model.devices.size()
                                ? " (" + std::to_string(confined.size()) + " of them allowed)"
                                : ""));
  }
  return confined;
}

StatusOr<const ActiveEntry*> Scheduler::try_start_beside(const LeaseRequest& request, Holder holder,
                                                         TimeNs now) {
  auto confined = beside_devices(request);
  if (!confined.ok()) return confined.status();
  if (request.device >= 0) return start_now(request, holder, now);
  LeaseRequest within = request;
  within.allowed_devices = std::move(confined).value();
  return start_now(within, holder, now);
}

void Scheduler::use_beside(ActiveLease& lease, std::string_view name, TimeNs now) {
  const auto holder = residents_.find(name);
  if (holder == residents_.end()) return;  // it went while the job waited
  ActiveLease& model = active_.find(holder->second)->second;
  if (!model.revoking) model.last_used = std::max(model.last_used, now);
  ++model.users;
  lease.beside_lease_id = model.lease_id;
}

void Scheduler::leave_beside(const ActiveLease& lease) {
  if (lease.beside_lease_id == 0) return;
  const auto holder = residents_.find(lease.beside);
  if (holder == residents_.end()) return;  // the model went first
  ActiveLease& model = active_.find(holder->second)->second;
  if (model.lease_id == lease.beside_lease_id && model.users > 0) --model.users;
}

void Scheduler::note_revocable(const ActiveEntry& entry, int delta) {
  const ActiveLease& lease = entry.second;
  if (lease.revocable == Revocable::kNo) return;
  revocable_count_ += delta;
  if (lease.revoking) revoking_count_ += delta;  // a release of a lease being revoked
  if (lease.revocable != Revocable::kResident) return;
  if (delta > 0) {
    residents_[lease.resident] = entry.first;
  } else {
    residents_.erase(lease.resident);
  }
}

std::vector<Revocation> Scheduler::take_revocations() {
  std::vector<Revocation> out;
  out.swap(revocations_);
  return out;
}

Status Scheduler::touch(std::string_view job_id, TimeNs now) {
  auto it = active_.find(job_id);
  if (it == active_.end()) return NotFound("no active lease for job '" + std::string(job_id) + "'");
  ActiveLease& lease = it->second;
  if (lease.revocable != Revocable::kResident) {
    return Status(ErrorCode::kFailedPrecondition,
                  "job '" + std::string(job_id) + "' is not a resident");
  }
  if (lease.revoking) {
    return Status(ErrorCode::kFailedPrecondition,
                  "resident '" + lease.resident + "' is being revoked");
  }
  lease.last_used = std::max(lease.last_used, now);
  return Status::Ok();
}

StatusOr<Revocation> Scheduler::revoke(std::string_view job_id,
                                       const std::optional<std::uint32_t>& requester_uid) {
  auto it = active_.find(job_id);
  if (it == active_.end()) return NotFound("no active lease for job '" + std::string(job_id) + "'");
  ActiveLease& lease = it->second;
  if (requester_uid && *requester_uid != 0 && *requester_uid != lease.holder.uid) {
    return Status(ErrorCode::kPermissionDenied,
                  "job '" + std::string(job_id) + "' is held by uid " +
                      std::to_string(lease.holder.uid) + "; uid " + std::to_string(*requester_uid) +
                      " may not revoke it");
  }
  if (lease.revocable == Revocable::kNo) {
    return Status(ErrorCode::kFailedPrecondition,
                  "job '" + std::string(job_id) +
                      "' is neither preemptible nor resident: it cannot be revoked");
  }
  if (lease.revoking) {
    return Status(ErrorCode::kFailedPrecondition,
                  "job '" + std::string(job_id) + "' is already being revoked");
  }
  lease.revoking = true;
  lease.revoked_for.clear();
  ++revoking_count_;
  return Revocation{
      std::string(job_id), lease.lease_id, "",
      lease.revocable == Revocable::kResident ? RevokeCause::kResident : RevokeCause::kPreempted};
}

void Scheduler::plan_revocations() {
  if (revocable_count_ == 0 || queue_.empty()) return;
  const std::size_t n = devices_.size();
  // Waiters with revocations pending get no more. What those revocations free on a device
  // is theirs (pending_free), less what they need there (claimed): a waiter that comes
  // later counts only the rest as room.
  std::unordered_set<std::string_view> claimants;
  std::vector<std::uint64_t> pending_free(n, 0);
  std::vector<std::uint64_t> claimed(n, 0);
  std::map<std::pair<std::string_view, int>, std::uint64_t> claims;  // (waiter, device): bytes
  std::vector<Candidate> orphans;  // being revoked for a waiter that left or started
  std::vector<const ActiveEntry*> revocable;
  for (const ActiveEntry& e : active_) {
    const ActiveLease& l = e.second;
    if (l.revocable == Revocable::kNo) continue;
    if (!l.revoking) {
      revocable.push_back(&e);
    } else if (!l.revoked_for.empty() && is_waiting(l.revoked_for)) {
      claimants.insert(l.revoked_for);
      const std::uint64_t need =
          queue_.find(waiting_index_.find(l.revoked_for)->second)->second.request.bytes;
      for (const int d : l.devices) {
        pending_free[static_cast<std::size_t>(d)] += l.bytes;
        if (claims.emplace(std::make_pair(std::string_view(l.revoked_for), d), need).second) {
          claimed[static_cast<std::size_t>(d)] += need;
        }
      }
    } else {
      orphans.push_back(Candidate{&e, true});
    }
  }
  // The head's reserved devices are its claim too: what is freed there goes to it first.
  const bool reservation = config_.queue != QueuePolicy::kGreedy && !last_pass_greedy_ &&
                           !reserved_for_.empty() && is_waiting(reserved_for_);
  if (reservation) {
    const std::uint64_t need =
        queue_.find(waiting_index_.find(reserved_for_)->second)->second.request.bytes;
    for (const int d : reserved_) {
      if (claims.emplace(std::make_pair(std::string_view(reserved_for_), d), need).second) {
        claimed[static_cast<std::size_t>(d)] += need;
      }
    }
  }
  // The room waiter `job` may count on device i before revoking anything more: what is
  // admissible and what pending revocations free there, less what others claim there.
  auto base_room = [&](std::string_view job, std::size_t i) {
    std::uint64_t others = claimed[i];
    if (const auto own = claims.find({job, static_cast<int>(i)}); own != claims.end()) {
      others -= own->second;
    }
    const std::uint64_t room = devices_[i].admissible() + pending_free[i];
    return room > others ? room - others : 0;
  };
  if (revocable.empty() && orphans.empty()) return;
  // Free slots under the concurrency limit once the pending revocations end, less one for
  // each waiter they are for.
  int slots = config_.max_concurrent_jobs - active_count() + revoking_count_ -
              static_cast<int>(claimants.size());

  bool head = true;
  for (const auto& [key, w] : queue_) {
    const bool is_head = head;
    head = false;
    if (config_.queue == QueuePolicy::kFifo && !is_head) break;
    const LeaseRequest& r = w.request;
    if (claimants.count(r.job_id) != 0) continue;  // its revocations are pending
    // A waiter that its own quota keeps waiting would not start on the room either.
    if (!quotas_.allows(w.holder.uid, lease_total(r.bytes, static_cast<std::size_t>(r.gpus)))) {
      continue;
    }
    // A waiter that fits somewhere now waits for the queue's rules, not for a revocation.
    const bool fits_now = !place(r, all_devices_).empty();
    if (fits_now && slots >= 1) continue;
    const int slot_need = slots >= 1 ? 0 : 1 - slots;

    std::vector<bool> allowed(n, true);
    for (std::size_t i = 0; i < n; ++i) {
      allowed[i] = devices_[i].healthy && may_use(r, i);
    }

    std::vector<Candidate> candidates = orphans;
    for (const ActiveEntry* e : revocable) {
      const ActiveLease& l = e->second;
      // Never the model the waiter runs beside: it would start without it.
      if (!r.beside_resident.empty() && l.resident == r.beside_resident) continue;
      const bool eligible =
          l.revocable == Revocable::kResident ? l.priority <= r.priority : l.priority < r.priority;
      if (eligible) candidates.push_back(Candidate{e, false});
    }
    if (candidates.empty()) continue;
    std::sort(candidates.begin(), candidates.end(),
              [](const Candidate& a, const Candidate& b) { return preference(a) < preference(b); });

    // Per device: the first candidates in preference order that free enough there.
    struct Option {
      int device;
      std::vector<const Candidate*> set;
      Cost cost;
    };
    std::vector<Option> options;
    for (std::size_t i = 0; i < n; ++i) {
      if (!allowed[i]) continue;
      const int d = static_cast<int>(i);
      std::uint64_t room = base_room(r.job_id, i);
      std::vector<const Candidate*> set;
      for (const Candidate& c : candidates) {
        if (room >= r.bytes) break;
        if (!on_device(c.entry->second, d)) continue;
        set.push_back(&c);
        room += c.entry->second.bytes;
      }
      if (room < r.bytes) continue;
      options.push_back(Option{d, set, cost_of(set)});
    }
    if (options.size() < static_cast<std::size_t>(r.gpus)) continue;  // all or nothing
    std::stable_sort(options.begin(), options.end(),
                     [](const Option& a, const Option& b) { return a.cost < b.cost; });
    options.resize(static_cast<std::size_t>(r.gpus));

    std::vector<const Candidate*> chosen;
    std::vector<int> chosen_devices;
    for (const Option& o : options) {
      chosen_devices.push_back(o.device);
      for (const Candidate* c : o.set) {
        if (std::find(chosen.begin(), chosen.end(), c) == chosen.end()) chosen.push_back(c);
      }
    }
    // Slots: the next candidates in order, wherever they are.
    for (const Candidate& c : candidates) {
      if (static_cast<int>(chosen.size()) >= slot_need) break;
      if (std::find(chosen.begin(), chosen.end(), &c) == chosen.end()) chosen.push_back(&c);
    }
    if (static_cast<int>(chosen.size()) < slot_need) continue;

    // Never more than it needs: drop any lease the rest can do without, the most costly
    // (the last in preference order) first.
    auto enough = [&](const std::vector<const Candidate*>& set) {
      if (static_cast<int>(set.size()) < slot_need) return false;
      for (const int d : chosen_devices) {
        std::uint64_t room = base_room(r.job_id, static_cast<std::size_t>(d));
        for (const Candidate* c : set) {
          if (on_device(c->entry->second, d)) room += c->entry->second.bytes;
        }
        if (room < r.bytes) return false;
      }
      return true;
    };
    std::sort(chosen.begin(), chosen.end(), [](const Candidate* a, const Candidate* b) {
      return preference(*a) < preference(*b);
    });
    for (std::size_t k = chosen.size(); k-- > 0;) {
      std::vector<const Candidate*> without = chosen;
      without.erase(without.begin() + static_cast<std::ptrdiff_t>(k));
      if (enough(without)) chosen = std::move(without);
    }
    if (chosen.empty()) continue;

    int fresh = 0;
    for (const Candidate* c : chosen) {
      auto& entry = const_cast<ActiveEntry&>(*c->entry);
      ActiveLease& l = entry.second;
      l.revoked_for = r.job_id;
      for (const int d : l.devices) pending_free[static_cast<std::size_t>(d)] += l.bytes;
      if (c->already_revoking) {
        orphans.erase(std::find_if(orphans.begin(), orphans.end(),
                                   [&](const Candidate& o) { return o.entry == c->entry; }));
        continue;
      }
      l.revoking = true;
      ++revoking_count_;
      ++fresh;
      revocable.erase(std::find(revocable.begin(), revocable.end(), c->entry));
      revocations_.push_back(Revocation{
          entry.first, l.lease_id, r.job_id,
          l.revocable == Revocable::kResident ? RevokeCause::kResident : RevokeCause::kPreempted});
    }
    for (const int d : chosen_devices) {
      if (claims.emplace(std::make_pair(std::string_view(r.job_id), d), r.bytes).second) {
        claimed[static_cast<std::size_t>(d)] += r.bytes;
      }
    }
    claimants.insert(r.job_id);
    slots += fresh - 1;
  }
}

}  // namespace gpumgr::core
