#include "core/scheduler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "gpumgr/units.h"

namespace gpumgr::core {
namespace {
constexpr std::size_t kMaxJobIdLength = 256;
// How many released table entries are kept for reuse: enough for the leases of a busy
// host, bounded so that a burst does not pin its memory for good.
constexpr std::size_t kMaxSpare = 64;
// The mean hold time weighs the last this many releases most (an exponential average once
// more have been seen), so that it follows a workload that changes.
constexpr double kHoldWindow = 256;
// A kind's expected hold: its last this many releases weigh most, and it is known once this
// many were seen. At most kMaxKinds kinds are learned (later ones are treated as unknown), so
// that clients that invent kinds cannot grow the table without bound.
constexpr double kKindWindow = 32;
constexpr std::uint64_t kMinKindHolds = 3;
constexpr std::size_t kMaxKinds = 4096;
// A kind's expected hold is its mean plus this many mean absolute deviations, and a kind has
// none while its deviation exceeds this share of its mean (bench/sched_matrix.py chose both).
constexpr double kEstimateMargin = 1;
constexpr double kMaxHoldSpread = 0.4;

// Whether `text` holds an ASCII control character (below 0x20, or 0x7f), eight bytes at a
// time: job ids are checked on every acquire. (w - 0x20 in every byte) & ~w & 0x80 in every
// byte is non-zero exactly when some byte of w is below 0x20; the same with w ^ 0x7f..7f and
// 0x01 finds a byte equal to 0x7f.
bool has_control_character(std::string_view text) {
  constexpr std::uint64_t kOnes = 0x0101010101010101;
  constexpr std::uint64_t kHighBits = 0x8080808080808080;
  const auto word_has = [](const char* at) {
    std::uint64_t w;
    std::memcpy(&w, at, 8);
    const std::uint64_t del = w ^ (kOnes * 0x7f);
    return ((((w - kOnes * 0x20) & ~w) | ((del - kOnes) & ~del)) & kHighBits) != 0;
  };
  const std::size_t n = text.size();
  if (n < 8) {
    return std::any_of(text.begin(), text.end(),
                       [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
  }
  for (std::size_t i = 0; i + 8 <= n; i += 8) {
    if (word_has(text.data() + i)) return true;
  }
  // The last eight bytes, overlapping some already checked: no partial word to assemble.
  return n % 8 != 0 && word_has(text.data() + n - 8);
}

std::string device_list_text(std::span<const int> devices) {
  std::string out;
  for (const int d : devices) out += (out.empty() ? "" : ",") + std::to_string(d);
  return out;
}

Status duplicate_error(std::string_view job_id) {
  return Status(ErrorCode::kAlreadyExists, "job id '" + std::string(job_id) +
                                               "' is already in use by an active or waiting job");
}
}  // namespace

std::size_t JobIdHash::operator()(std::string_view id) const {
  return static_cast<std::size_t>(XXH3_64bits(id.data(), id.size()));
}

Scheduler::Scheduler(SchedulerConfig config, std::size_t device_count)
    : config_(config),
      devices_(device_count),
      fit_bytes_(device_count, 0),
      allowed_(device_count, true),
      reserved_mark_(device_count, 0),
      reserved_extra_(device_count, 0),
      all_devices_(device_count, true),
      capacities_desc_(device_count, 0),
      usage_(config.fair_share_half_life) {}

void Scheduler::set_device(int device, std::uint64_t capacity, std::uint64_t foreign,
                           bool healthy) {
  DeviceState& d = devices_.at(static_cast<std::size_t>(device));
  if (d.capacity != capacity) {
    d.capacity = capacity;
    for (std::size_t i = 0; i < devices_.size(); ++i) capacities_desc_[i] = devices_[i].capacity;
    std::sort(capacities_desc_.begin(), capacities_desc_.end(), std::greater<>());
    // What a quota's share ("50%") is of.
    quotas_.set_host_capacity(
        std::accumulate(capacities_desc_.begin(), capacities_desc_.end(), std::uint64_t{0}));
  }
  d.foreign = foreign;
  d.healthy = healthy;
  update_fit(static_cast<std::size_t>(device));
}

void Scheduler::set_overuse(int device, std::uint64_t overuse) {
  DeviceState& d = devices_.at(static_cast<std::size_t>(device));
  d.overuse = overuse;
  update_fit(static_cast<std::size_t>(device));
}

std::uint64_t Scheduler::capacity_rank(int gpus) const {
  if (gpus < 1 || static_cast<std::size_t>(gpus) > capacities_desc_.size()) return 0;
  return capacities_desc_[static_cast<std::size_t>(gpus - 1)];
}

Status Scheduler::check(const LeaseRequest& request) const {
  if (Status s = check_fields(request); !s.ok()) return s;
  return duplicate_or(request.job_id, Status::Ok());
}

namespace {
// The job id and the kind, checked as every request's are.
Status check_names(const LeaseRequest& request) {
  if (request.job_id.empty()) return InvalidArgument("job id must not be empty");
  if (request.job_id.size() > kMaxJobIdLength) {
    return InvalidArgument("job id is " + std::to_string(request.job_id.size()) +
                           " characters long; the limit is " + std::to_string(kMaxJobIdLength));
  }
  if (has_control_character(request.job_id)) {
    return InvalidArgument("job id must not contain control characters");
  }
  if (!request.kind.empty()) {
    if (Status s = check_kind(request.kind); !s.ok()) return s;
  }
  return Status::Ok();
}
}  // namespace

Status Scheduler::check_fields(const LeaseRequest& request) const {
  if (Status s = check_names(request); !s.ok()) return s;
  if (Status s = check_revocable(request); !s.ok()) return s;
  if (!request.beside_resident.empty()) {  // rare: a serving worker's job beside its model
    auto confined = beside_devices(request);
    if (!confined.ok()) return confined.status();
    return check_shape(request.bytes, request.gpus, request.device, *confined);
  }
  return check_shape(request.bytes, request.gpus, request.device, request.allowed_devices);
}

Status check_kind(std::string_view kind) {
  if (kind.empty()) return InvalidArgument("job kind must not be empty");
  if (kind.size() > kMaxJobIdLength) {
    return InvalidArgument("job kind is " + std::to_string(kind.size()) +
                           " characters long; the limit is " + std::to_string(kMaxJobIdLength));
  }
  if (has_control_character(kind)) {
    return InvalidArgument("job kind must not contain control characters");
  }
  return Status::Ok();
}

Status Scheduler::duplicate_or(std::string_view job_id, Status failure) const {
  if (is_waiting(job_id) || active_.find(job_id) != active_.end()) return duplicate_error(job_id);
  return failure;
}

Status Scheduler::check_shape(std::uint64_t bytes, int gpus, int device,
                              std::span<const int> allowed) const {
  if (bytes == 0) return InvalidArgument("requested VRAM must be positive, got 0");
  const int count = static_cast<int>(devices_.size());
  if (gpus < 1 || gpus > count) {
    return InvalidArgument("gpus must be between 1 and " + std::to_string(count) +
                           " (the number of devices), got " + std::to_string(gpus));
  }
  if (device < -1 || device >= count) {
    return NotFound("device " + std::to_string(device) + " does not exist; devices are 0.." +
                    std::to_string(count - 1));
  }
  if (device >= 0 && gpus != 1) {
    return InvalidArgument("a job pinned to one device cannot ask for " + std::to_string(gpus) +
                           " GPUs");
  }
  std::uint64_t limit =
      device >= 0 ? devices_[static_cast<std::size_t>(device)].capacity : capacity_rank(gpus);
  if (!allowed.empty()) {
    if (device >= 0) {
      return InvalidArgument("a job is either pinned to device " + std::to_string(device) +
                             " or given the devices it may use, not both");
    }
    std::vector<std::uint64_t> capacities;
    std::vector<bool> seen(devices_.size(), false);
    for (const int d : allowed) {
      if (d < 0 || d >= count) {
        return NotFound("allowed device " + std::to_string(d) + " does not exist; devices are 0.." +
                        std::to_string(count - 1));
      }
      if (seen[static_cast<std::size_t>(d)]) {
        return InvalidArgument("allowed device " + std::to_string(d) + " is named twice");
      }
      seen[static_cast<std::size_t>(d)] = true;
      capacities.push_back(devices_[static_cast<std::size_t>(d)].capacity);
    }
    if (capacities.size() < static_cast<std::size_t>(gpus)) {
      return InvalidArgument("a job on " + std::to_string(gpus) + " GPUs needs at least as many " +
                             "allowed devices, got " + std::to_string(capacities.size()) + " (" +
                             device_list_text(allowed) + ")");
    }
    std::sort(capacities.begin(), capacities.end(), std::greater<>());
    limit = capacities[static_cast<std::size_t>(gpus - 1)];
  }
  if (bytes > limit) {
    std::string where =
        device >= 0 ? "device " + std::to_string(device) + "'s capacity"
        : !allowed.empty()
            ? (gpus == 1 ? "the largest capacity among devices " + device_list_text(allowed)
                         : "the capacity of the " + std::to_string(gpus) + " largest of devices " +
                               device_list_text(allowed))
            : (gpus == 1 ? "the largest device capacity"
                         : "the capacity of the " + std::to_string(gpus) + " largest devices");
    // Near the limit both sizes may print alike ("19.2 GiB"): then give the exact bytes.
    std::string asked = format_bytes(bytes);
    std::string have = format_bytes(limit);
    if (asked == have) {
      asked += " (" + std::to_string(bytes) + " B)";
      have += " (" + std::to_string(limit) + " B)";
    }
    return Status(ErrorCode::kNeverFits,
                  "request of " + asked + " per device can never fit: " + where + " is " + have);
  }
  return Status::Ok();
}

int Scheduler::place_one(const LeaseRequest& request, const std::vector<bool>& allowed) const {
  if (!request.allowed_devices.empty() && request.device < 0) {
    // Rare (a job confined to a Slurm allocation): the devices it may use and that are
    // allowed now, as one mask, so that the scan below stays as it is for everyone else.
    std::vector<bool> both(allowed.size(), false);
    for (const int d : request.allowed_devices) {
      both[static_cast<std::size_t>(d)] = allowed[static_cast<std::size_t>(d)];
    }
    LeaseRequest anywhere;
    anywhere.bytes = request.bytes;
    return place_one(anywhere, both);
  }
  // A single scan of fit_bytes_, with the same ties (lowest index) as the sort in place().
  // This runs on every acquire: a pinned request looks at its device only, first-fit stops
  // at the first fit, and the bit set is read only where a waiter may have reserved devices.
  std::size_t begin = 0;
  std::size_t end = fit_bytes_.size();
  if (request.device >= 0) {
    begin = static_cast<std::size_t>(request.device);
    end = std::min(end, begin + 1);
  }
  const bool every_device_allowed = &allowed == &all_devices_;
  const std::uint64_t bytes = request.bytes;
  int best = -1;
  switch (config_.placement) {
    case PlacementPolicy::kFirstFit:
      for (std::size_t i = begin; i < end; ++i) {
        if (fit_bytes_[i] >= bytes && (every_device_allowed || allowed[i])) {
          return static_cast<int>(i);
        }
      }
      break;
    case PlacementPolicy::kBestFit: {
      std::uint64_t best_fit = std::numeric_limits<std::uint64_t>::max();
      for (std::size_t i = begin; i < end; ++i) {
        const std::uint64_t fit = fit_bytes_[i];
        if (fit >= bytes && fit < best_fit && (every_device_allowed || allowed[i])) {
          best = static_cast<int>(i);
          best_fit = fit;
        }
      }
      break;
    }
    case PlacementPolicy::kSpread: {
      std::uint64_t best_fit = 0;
      for (std::size_t i = begin; i < end; ++i) {
        const std::uint64_t fit = fit_bytes_[i];
        if (fit >= bytes && (best < 0 || fit > best_fit) && (every_device_allowed || allowed[i])) {
          best = static_cast<int>(i);
          best_fit = fit;
        }
      }
      break;
    }
  }
  return best;
}

std::vector<int> Scheduler::place(const LeaseRequest& request,
                                  const std::vector<bool>& allowed) const {
  if (request.gpus == 1) {
    const int best = place_one(request, allowed);
    if (best < 0) return {};
    return {best};
  }
  std::vector<int> candidates;
  for (std::size_t i = 0; i < devices_.size(); ++i) {
    const int index = static_cast<int>(i);
    if (!allowed[i] || !devices_[i].healthy || !may_use(request, i)) continue;
    if (devices_[i].admissible() >= request.bytes) candidates.push_back(index);
  }
  if (candidates.size() < static_cast<std::size_t>(request.gpus)) return {};
  auto adm = [this](int d) { return devices_[static_cast<std::size_t>(d)].admissible(); };
  switch (config_.placement) {
    case PlacementPolicy::kBestFit:
      std::stable_sort(candidates.begin(), candidates.end(),
                       [&](int a, int b) { return adm(a) < adm(b); });
      break;
    case PlacementPolicy::kSpread:
      std::stable_sort(candidates.begin(), candidates.end(),
                       [&](int a, int b) { return adm(a) > adm(b); });
      break;
    case PlacementPolicy::kFirstFit:
      break;  // already in index order
  }
  candidates.resize(static_cast<std::size_t>(request.gpus));
  std::sort(candidates.begin(), candidates.end());
  return candidates;
}

std::uint64_t Scheduler::threshold(const ClassKey& cls, const std::vector<bool>& allowed) const {
  if (cls.device >= 0) {
    const auto i = static_cast<std::size_t>(cls.device);
    return allowed[i] && devices_[i].healthy ? devices_[i].admissible() : 0;
  }
  std::vector<std::uint64_t> adm;
  adm.reserve(devices_.size());
  for (std::size_t i = 0; i < devices_.size(); ++i) {
    if (!allowed[i] || !devices_[i].healthy) continue;
    if (!cls.allowed.empty() && std::find(cls.allowed.begin(), cls.allowed.end(),
                                          static_cast<int>(i)) == cls.allowed.end()) {
      continue;
    }
    adm.push_back(devices_[i].admissible());
  }
  const auto k = static_cast<std::size_t>(cls.gpus);
  if (adm.size() < k) return 0;
  std::nth_element(adm.begin(), adm.begin() + static_cast<std::ptrdiff_t>(k - 1), adm.end(),
                   std::greater<>());
  return adm[k - 1];
}

ActiveEntry* Scheduler::insert_active(std::string_view job_id) {
  if (spare_entries_.empty()) {
    auto [it, inserted] = active_.try_emplace(std::string(job_id));
    return inserted ? &*it : nullptr;
  }
  ActiveMap::node_type& spare = spare_entries_.back();
  spare.key().assign(job_id.data(), job_id.size());
  auto result = active_.insert(std::move(spare));
  if (!result.inserted) {
    spare = std::move(result.node);  // a duplicate: keep the entry for the next grant
    return nullptr;
  }
  spare_entries_.pop_back();
  return &*result.position;
}

ActiveEntry& Scheduler::grant(ActiveEntry& entry, const LeaseRequest& request, Holder holder,
                              TimeNs requested_at, TimeNs now) {
  ActiveLease& lease = entry.second;
  for (const int d : lease.devices) {
    DeviceState& dev = devices_[static_cast<std::size_t>(d)];
    if (!allowed_[static_cast<std::size_t>(d)]) {
      reserved_extra_[static_cast<std::size_t>(d)] += request.bytes;
    }
    dev.leased += request.bytes;
    dev.peak_leased = std::max(dev.peak_leased, dev.leased);
    ++dev.leases;
    update_fit(static_cast<std::size_t>(d));
  }
  // Every other field is set: a reused entry still holds its last lease's values.
  lease.lease_id = ++last_lease_id_;
  lease.bytes = request.bytes;
  lease.priority = request.priority;
  lease.holder = holder;
  lease.command.assign(request.command);
  lease.kind.assign(request.kind);
  lease.requested_at = requested_at;
  lease.granted_at = now;
  lease.kind_id = intern_kind(request.kind);
  const std::optional<TimeNs> hold = expected_hold(lease.kind_id);
  lease.expected_end = hold ? now + *hold : kUnknownEnd;
  lease.revocable = !request.resident.empty() ? Revocable::kResident
                    : request.preemptible     ? Revocable::kPreemptible
                                              : Revocable::kNo;
  lease.resident.assign(request.resident);
  lease.last_used = now;
  lease.users = 0;
  lease.beside.assign(request.beside_resident);
  lease.beside_lease_id = 0;
  lease.revoke_grace_s = request.revoke_grace_s;
  lease.revoking = false;
  lease.revoked_for.clear();
  note_revocable(entry, 1);
  if (!request.beside_resident.empty()) use_beside(lease, request.beside_resident, now);
  charge(lease, now);
  return entry;
}

void Scheduler::update_reservation() {
  if (queue_.empty()) {
    reserved_for_.clear();
    reserved_.clear();
    std::fill(allowed_.begin(), allowed_.end(), true);
    return;
  }
  const auto head_it = head();
  if (head_it == queue_.end()) {  // every waiter waits for its quota: nothing to reserve for
    reserved_for_.clear();
    reserved_.clear();
    std::fill(allowed_.begin(), allowed_.end(), true);
    return;
  }
  const LeaseRequest& r = head_it->second.request;
  bool keep = reserved_for_ == r.job_id && !reserved_.empty();
  for (const int d : reserved_) {
    if (!devices_[static_cast<std::size_t>(d)].healthy) keep = false;
  }
  if (keep) {
    // The reservation only ever improves: an unreserved device where the head already fits
    // replaces the reserved device with the largest shortfall. Without this a multi-GPU
    // head waits for its slowest reserved device while backfill refills devices that
    // drained sooner (durations are unknown, so the first choice is a guess).
    bool changed = false;
    for (std::size_t i = 0; i < devices_.size(); ++i) {
      const int u = static_cast<int>(i);
      if (!allowed_[i] || !devices_[i].healthy || devices_[i].admissible() < r.bytes) continue;
      if (!may_use(r, i)) continue;
      auto worst = std::max_element(reserved_.begin(), reserved_.end(), [&](int a, int b) {
        return devices_[static_cast<std::size_t>(a)].admissible() >
               devices_[static_cast<std::size_t>(b)].admissible();
      });
      if (devices_[static_cast<std::size_t>(*worst)].admissible() >= r.bytes) break;
      allowed_[static_cast<std::size_t>(*worst)] = true;
      allowed_[i] = false;
      reserved_mark_[i] = last_lease_id_;
      reserved_extra_[i] = 0;
      *worst = u;
      changed = true;
    }
    if (changed) std::sort(reserved_.begin(), reserved_.end());
    return;
  }

  // Reserve the devices where the head will fit soonest: the smallest shortfall between
  // what it needs and what is admissible there now. Sticky until the head changes or a
  // reserved device fails, so that memory released there accumulates for the head.
  std::vector<int> candidates;
  for (std::size_t i = 0; i < devices_.size(); ++i) {
    const int index = static_cast<int>(i);
    if (!devices_[i].healthy || devices_[i].capacity < r.bytes || !may_use(r, i)) continue;
    candidates.push_back(index);
  }
  auto shortfall = [&](int d) {
    const std::uint64_t adm = devices_[static_cast<std::size_t>(d)].admissible();
    return adm >= r.bytes ? 0 : r.bytes - adm;
  };
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](int a, int b) { return shortfall(a) < shortfall(b); });
  reserved_for_ = r.job_id;
  reserved_.clear();
  if (candidates.size() >= static_cast<std::size_t>(r.gpus)) {
    reserved_.assign(candidates.begin(), candidates.begin() + r.gpus);
    std::sort(reserved_.begin(), reserved_.end());
  }
  std::fill(allowed_.begin(), allowed_.end(), true);
  for (const int d : reserved_) {
    allowed_[static_cast<std::size_t>(d)] = false;
    reserved_mark_[static_cast<std::size_t>(d)] = last_lease_id_;
    reserved_extra_[static_cast<std::size_t>(d)] = 0;
  }
}

StatusOr<const ActiveEntry*> Scheduler::try_start(const LeaseRequest& request, Holder holder,
                                                  TimeNs now) {
  if (!request.beside_resident.empty()) return try_start_beside(request, holder, now);
  return start_now(request, holder, now);
}

StatusOr<const ActiveEntry*> Scheduler::start_now(const LeaseRequest& request, Holder holder,
                                                  TimeNs now) {
  // The look-up for a duplicate job id is the insertion at the end (one hash, not two); the
  // paths that fail before it look it up themselves, so that a duplicate is reported first.
  if (Status s = check_fields(request); !s.ok()) return s;
  if (is_waiting(request.job_id)) return duplicate_error(request.job_id);
  if (limit_reached()) {
    return duplicate_or(
        request.job_id,
        Status(ErrorCode::kResourceExhausted,
               "concurrency limit reached: " + std::to_string(active_count()) + " of " +
                   std::to_string(config_.max_concurrent_jobs) + " jobs are active"));
  }
  if (quotas_.limited()) {
    // Beyond the user's quota beside its running leases: it may wait (enqueue) until they end.
    const std::uint64_t total = lease_total(request.bytes, static_cast<std::size_t>(request.gpus));
    if (!quotas_.allows(holder.uid, total)) {
      return duplicate_or(request.job_id,
                          Status(ErrorCode::kResourceExhausted,
                                 "quota reached: " + quotas_.why_waiting(holder.uid, total)));
    }
  }
  // Nobody waits: any device will do. Otherwise the request may use only what no waiter
  // has reserved, unless it outranks the head (then it would be the head itself).
  const std::vector<bool>* allowed = &all_devices_;
  if (!queue_.empty()) {
    rank_users(now);
    if (config_.queue == QueuePolicy::kFifo) {
      return duplicate_or(request.job_id, Status(ErrorCode::kResourceExhausted,
                                                 std::to_string(queue_.size()) +
                                                     " earlier job(s) wait and the queue is FIFO"));
    }
    find_held();
    if (!greedy_now(now)) {
      update_reservation();
      const auto h = head();
      if (h != queue_.end() && request.priority <= h->second.request.priority) {
        allowed = &allowed_;
      }
    }
  }
  // A single-GPU request (the common case) allocates nothing here once table entries are
  // reused: its device goes into the entry's own list.
  int single = -1;
  std::vector<int> several;
  if (request.gpus == 1) {
    single = place_one(request, *allowed);
    // What the head will never need on its reserved devices is open to backfill too.
    if (single < 0 && allowed == &allowed_) single = place_in_headroom(request);
  } else {
    several = place(request, *allowed);
  }
  if (single < 0 && several.empty()) {
    std::uint64_t best = 0;
    for (const auto& d : devices_) {
      if (d.healthy) best = std::max(best, d.admissible());
    }
    std::string msg = "request of " + format_bytes(request.bytes) + " on " +
                      std::to_string(request.gpus) + " GPU(s) does not fit now: the most " +
                      "admissible memory on a healthy device is " + format_bytes(best);
    if (!queue_.empty()) msg += ", and " + std::to_string(queue_.size()) + " job(s) wait";
    return duplicate_or(request.job_id, Status(ErrorCode::kResourceExhausted, msg));
  }
  ActiveEntry* entry = insert_active(request.job_id);
  if (entry == nullptr) return duplicate_error(request.job_id);
  std::vector<int>& devices = entry->second.devices;
  if (single >= 0) {
    devices.clear();
    devices.push_back(single);
  } else {
    devices = std::move(several);
  }
  return &grant(*entry, request, holder, now, now);
}

StatusOr<std::vector<Grant>> Scheduler::enqueue(const LeaseRequest& request, Holder holder,
                                                TimeNs now, std::optional<TimeNs> deadline,
                                                std::optional<TimeNs> requested_at) {
  if (Status s = check(request); !s.ok()) return s;
  // A request its quota can never fit would wait for good.
  if (Status s = quotas_.check_admission(request, holder.uid); !s.ok()) return s;
  const Key key{-request.priority, next_seq_++};
  const int kind_id = intern_kind(request.kind);
  Waiter waiter{request,  holder,  std::min(now, requested_at.value_or(now)),
                deadline, key.seq, kind_id};
  if (!request.beside_resident.empty()) {
    // It waits confined to the resident's devices, there even if the resident goes.
    waiter.request.allowed_devices = beside_devices(request).value();
  }
  Level& level = fit_[key.neg_priority];
  const ClassKey cls{request.gpus, request.device, kind_id, waiter.request.allowed_devices};
  level.classes[cls].push_back(key.seq, request.bytes);
  UserBucket& bucket = level.users[holder.uid];
  if (bucket.indexed) bucket.classes[cls].push_back(key.seq, request.bytes);
  bucket.seqs.emplace_hint(
      bucket.seqs.end(), key.seq,
      UserBucket::Entry{waiter.requested_at,
                        lease_total(request.bytes, static_cast<std::size_t>(request.gpus)),
                        request.bytes, cls});
  waiting_index_.emplace(request.job_id, key);
  if (deadline) deadlines_.emplace(*deadline, key);
  if (request.gpus > 1) gang_waiters_.insert(key);
  queue_.emplace(key, std::move(waiter));
  return schedule(now);
}

void Scheduler::remove_waiter(std::map<Key, Waiter>::iterator it) {
  const Key key = it->first;
  const Waiter& w = it->second;
  auto level = fit_.find(key.neg_priority);
  const ClassKey class_key{w.request.gpus, w.request.device, w.kind_id, w.request.allowed_devices};
  auto all = level->second.classes.find(class_key);
  all->second.erase(key.seq);
  if (all->second.empty()) level->second.classes.erase(all);
  auto user = level->second.users.find(w.holder.uid);
  UserBucket& bucket = user->second;
  if (bucket.indexed) {
    auto cls = bucket.classes.find(class_key);
    cls->second.erase(key.seq);
    if (cls->second.empty()) bucket.classes.erase(cls);
  }
  bucket.seqs.erase(key.seq);
  if (bucket.seqs.empty()) level->second.users.erase(user);
  if (level->second.users.empty()) fit_.erase(level);
  if (w.deadline) deadlines_.erase({*w.deadline, key});
  gang_waiters_.erase(key);
  waiting_index_.erase(w.request.job_id);
  if (reserved_for_ == w.request.job_id) {
    reserved_for_.clear();
    reserved_.clear();
    std::fill(allowed_.begin(), allowed_.end(), true);
  }
  queue_.erase(it);
}

StatusOr<Released> Scheduler::release(std::string_view job_id, TimeNs now,
                                      const std::optional<std::uint32_t>& requester_uid,
                                      std::uint64_t lease_id) {
  auto it = active_.find(job_id);
  if (it == active_.end()) {
    return NotFound("no active lease for job '" + std::string(job_id) + "'");
  }
  ActiveLease& lease = it->second;
  if (lease_id != 0 && lease.lease_id != lease_id) {
    return NotFound("lease " + std::to_string(lease_id) + " of job '" + std::string(job_id) +
                    "' was already released; the job id now holds lease " +
                    std::to_string(lease.lease_id));
  }
  if (requester_uid && *requester_uid != 0 && *requester_uid != lease.holder.uid) {
    return Status(ErrorCode::kPermissionDenied,
                  "job '" + std::string(job_id) + "' is held by uid " +
                      std::to_string(lease.holder.uid) + "; uid " + std::to_string(*requester_uid) +
                      " may not release it");
  }
  for (const int d : lease.devices) {
    DeviceState& dev = devices_[static_cast<std::size_t>(d)];
    const auto i = static_cast<std::size_t>(d);
    if (!allowed_[i] && lease.lease_id > reserved_mark_[i]) {
      reserved_extra_[i] -= std::min(reserved_extra_[i], lease.bytes);
    }
    dev.leased -= lease.bytes;
    --dev.leases;
    update_fit(static_cast<std::size_t>(d));
  }
  discharge(lease, now);
  observe_hold(lease.kind_id, static_cast<double>(elapsed_ns(lease.granted_at, now)));
  note_revocable(*it, -1);
  if (!lease.beside.empty()) leave_beside(lease);
  // The entry is kept, device list and all, for a later grant; once kMaxSpare are kept, it
  // replaces one of them (each in turn).
  ActiveMap::node_type* kept;
  if (spare_entries_.size() < kMaxSpare) {
    kept = &spare_entries_.emplace_back(active_.extract(it));
  } else {
    kept = &spare_entries_[next_replaced_spare_];
    *kept = active_.extract(it);
    next_replaced_spare_ = (next_replaced_spare_ + 1) % kMaxSpare;
  }
  const ActiveLease& kept_lease = kept->mapped();
  return Released{kept_lease.devices, kept_lease.bytes, elapsed_ns(kept_lease.granted_at, now),
                  kept_lease.holder,  kept_lease.kind,  kept_lease.lease_id};
}

Status Scheduler::cancel(std::string_view job_id) {
  auto idx = waiting_index_.find(job_id);
  if (idx == waiting_index_.end()) {
    return NotFound("no waiting request for job '" + std::string(job_id) + "'");
  }
  remove_waiter(queue_.find(idx->second));
  return Status::Ok();
}

std::vector<Dropped> Scheduler::expire(TimeNs now) {
  std::vector<Dropped> out;
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    const Key key = deadlines_.begin()->second;
    auto it = queue_.find(key);
    const double waited_s = static_cast<double>(elapsed_ns(it->second.requested_at, now)) / 1e9;
    out.push_back(
        {it->second.request.job_id,
         Status(ErrorCode::kTimedOut, "timed out after waiting " + std::to_string(waited_s) +
                                          " s for " + format_bytes(it->second.request.bytes))});
    remove_waiter(it);
  }
  return out;
}

std::optional<TimeNs> Scheduler::next_deadline() const {
  if (deadlines_.empty()) return std::nullopt;
  return deadlines_.begin()->first;
}

std::optional<Scheduler::Key> Scheduler::reserve_for_gangs(const Key& head,
                                                           std::vector<bool>& allowed,
                                                           std::vector<bool>* gang_allowed) const {
  // Fair share ranks users: the gangs are walked in the queue's order.
  std::vector<Key> order(gang_waiters_.begin(), gang_waiters_.end());
  if (ranked_) {
    std::stable_sort(order.begin(), order.end(),
                     [this](const Key& a, const Key& b) { return rank_of(a) < rank_of(b); });
  }
  for (const Key& key : order) {
    if (key == head) continue;
    const Waiter& w = queue_.at(key);
    // A gang its quota keeps waiting reserves nothing: it could not use what it held back.
    if (quotas_.limited() &&
        (held(w.holder.uid) ||
         !quotas_.allows(w.holder.uid,
                         lease_total(w.request.bytes, static_cast<std::size_t>(w.request.gpus))))) {
      continue;
    }
    int free_devices = 0;
    for (std::size_t i = 0; i < devices_.size(); ++i) {
      if (allowed[i] && devices_[i].healthy) ++free_devices;
    }
    if (free_devices < 2) break;  // no multi-GPU job can use what is left
    const LeaseRequest& r = w.request;
    if (!place(r, allowed).empty()) {
      // It may start now on devices no earlier job reserved; schedule() weighs it against
      // the earliest backfill candidate.
      if (gang_allowed != nullptr) *gang_allowed = allowed;
      return key;
    }
    std::vector<int> candidates;
    for (std::size_t i = 0; i < devices_.size(); ++i) {
      if (allowed[i] && devices_[i].healthy && devices_[i].capacity >= r.bytes && may_use(r, i)) {
        candidates.push_back(static_cast<int>(i));
      }
    }
    if (candidates.size() < static_cast<std::size_t>(r.gpus)) continue;
    auto admissible = [&](int d) { return devices_[static_cast<std::size_t>(d)].admissible(); };
    std::stable_sort(candidates.begin(), candidates.end(),
                     [&](int a, int b) { return admissible(a) > admissible(b); });
    for (int k = 0; k < r.gpus; ++k) allowed[static_cast<std::size_t>(candidates[k])] = false;
  }
  return std::nullopt;
}

std::vector<Grant> Scheduler::schedule(TimeNs now) {
  std::vector<Grant> grants;
  rank_users(now);
  while (!queue_.empty() && !limit_reached()) {
    find_held();  // each grant changes what its user holds
    const auto head_it = this->head();
    if (head_it == queue_.end()) break;          // every waiter waits for its own quota
    auto head = queue_.erase(head_it, head_it);  // the same place, as a mutable iterator
    std::vector<int> devices = place(head->second.request, all_devices_);
    auto chosen = head;
    if (devices.empty()) {
      if (config_.queue == QueuePolicy::kFifo) break;
      // Greedy: no reservations; the earliest waiter that fits anywhere starts.
      const bool greedy = greedy_now(now);
      last_pass_greedy_ = greedy;
      if (!greedy) {
        update_reservation();
      } else if (!reserved_for_.empty()) {
        // A reservation of an earlier head (now overtaken by a higher priority) lapses.
        reserved_for_.clear();
        reserved_.clear();
        std::fill(allowed_.begin(), allowed_.end(), true);
      }
      // Gang reservations, then backfill on what no one has reserved.
      std::vector<bool> allowed = greedy ? all_devices_ : allowed_;
      std::vector<bool> gang_allowed;
      std::optional<Key> gang =
          greedy ? std::nullopt : reserve_for_gangs(head->first, allowed, &gang_allowed);
      // Duration backfill: the unreserved devices and the head's reserved ones, open to
      // jobs expected to end before the head is expected to start (computed when needed).
      std::optional<TimeNs> shadow;
      std::vector<bool> with_reserved;
      auto ends_in_time = [&](int kind_id) {
        if (greedy || !config_.duration_backfill || reserved_.empty()) return false;
        const std::optional<TimeNs> hold = expected_hold(kind_id);
        if (!hold) return false;
        if (!shadow) {
          shadow = head_shadow(now);
          // Only reserved devices where the head does not fit yet: one where it fits must
          // stay so, or the reservation, which swaps in devices where the head fits, could
          // chase devices that duration backfills keep filling (measured: a head late by
          // one hold).
          with_reserved = allowed;
          const std::uint64_t need = head->second.request.bytes;
          for (const int d : reserved_) {
            const auto i = static_cast<std::size_t>(d);
            if (devices_[i].admissible() < need) with_reserved[i] = true;
          }
        }
        return *shadow > now && *hold <= *shadow - now;  // no expected start: none
      };
      // The first waiter in order that fits. Every user's waiters of a class together say
      // whether any fits, and the earliest (arrival order); where users are ranked or have
      // quotas, the users' own indexes then pick in their order, within their quotas.
      std::optional<Rank> found;
      for (const auto& [neg_priority, level] : fit_) {
        fitting_.clear();
        std::optional<std::uint64_t> earliest;
        for (const auto& [cls, index] : level.classes) {
          std::uint64_t limit =
              std::max(threshold(cls, allowed), greedy ? 0 : headroom_threshold(cls));
          if (ends_in_time(cls.kind_id)) limit = std::max(limit, threshold(cls, with_reserved));
          const auto seq = index.first_at_most(limit);
          if (!seq) continue;
          fitting_.emplace_back(&cls, limit);
          if (!earliest || *seq < *earliest) earliest = seq;
        }
        if (!earliest) continue;
        if (!quotas_.limited() && level.order.size() < 2) {
          found = Rank{neg_priority, 0, *earliest};
        } else {
          found = first_fitting_by_user(neg_priority, level);
        }
        if (found) break;
      }
      if (gang && (!found || rank_of(*gang) < *found)) {
        chosen = queue_.find(*gang);
        devices = place(chosen->second.request, gang_allowed);
      } else if (found) {
        chosen = queue_.find(Key{found->neg_priority, found->seq});
        devices = place(chosen->second.request, allowed);
        if (devices.empty() && !greedy) {
          const int d = place_in_headroom(chosen->second.request);
          if (d >= 0) devices.push_back(d);
        }
        if (devices.empty() && ends_in_time(chosen->second.kind_id)) {
          devices = place(chosen->second.request, with_reserved);
        }
      } else {
        break;
      }
      if (devices.empty()) break;  // cannot happen: the index and place() agree
    }
    const Waiter& w = chosen->second;
    grants.push_back(Grant{w.request.job_id, devices, w.request.bytes, w.requested_at, now});
    // A waiter's id is unique among active jobs: enqueue() and try_start() check both ways.
    ActiveEntry& entry = *insert_active(w.request.job_id);
    entry.second.devices = std::move(devices);
    grant(entry, w.request, w.holder, w.requested_at, now);
    remove_waiter(chosen);
  }
  if (queue_.empty()) update_reservation();
  plan_revocations();
  return grants;
}

bool Scheduler::greedy_now(TimeNs now) const {
  if (config_.queue == QueuePolicy::kGreedy) return true;
  if (config_.queue != QueuePolicy::kBackfill || !(config_.reserve_after_holds > 0)) return false;
  if (queue_.empty() || holds_seen_ == 0) return false;  // no hold seen yet: reserve at once
  const auto head_it = this->head();
  if (head_it == queue_.end()) return false;
  const Waiter& head = head_it->second;
  // Once the head has reserved it keeps its reservation (the mean may grow meanwhile).
  if (!reserved_.empty() && reserved_for_ == head.request.job_id) return false;
  const TimeNs waited = elapsed_ns(head.requested_at, now);
  return static_cast<double>(waited) < config_.reserve_after_holds * mean_hold_ns_;
}

void Scheduler::observe_hold(int kind_id, double held_ns) {
  if (kind_id >= 0) {
    KindStats& k = kind_stats_[static_cast<std::size_t>(kind_id)];
    const double weight = 1.0 / std::min(static_cast<double>(++k.holds), kKindWindow);
    k.deviation_ns +=
        (std::abs(held_ns - k.mean_ns) - k.deviation_ns) * (k.holds == 1 ? 0 : weight);
    k.mean_ns += (held_ns - k.mean_ns) * weight;
  }
  ++holds_seen_;
  mean_hold_ns_ +=
      (held_ns - mean_hold_ns_) / std::min(static_cast<double>(holds_seen_), kHoldWindow);
}

int Scheduler::intern_kind(std::string_view kind) {
  if (kind.empty()) return -1;
  if (const auto it = kind_ids_.find(kind); it != kind_ids_.end()) return it->second;
  if (kind_ids_.size() >= kMaxKinds) return -1;
  const int id = static_cast<int>(kind_stats_.size());
  kind_ids_.emplace(std::string(kind), id);
  kind_stats_.emplace_back();
  return id;
}

std::optional<TimeNs> Scheduler::expected_hold(int kind_id) const {
  if (kind_id < 0) return std::nullopt;
  const KindStats& k = kind_stats_[static_cast<std::size_t>(kind_id)];
  if (k.holds < kMinKindHolds) return std::nullopt;
  // A kind whose holds vary widely has no useful estimate: its backfills would overrun and
  // delay the head (on the matrix, allowing any spread lost 4 of its max-wait cells).
  if (k.deviation_ns > kMaxHoldSpread * k.mean_ns) return std::nullopt;
  return static_cast<TimeNs>(k.mean_ns + kEstimateMargin * k.deviation_ns);
}

TimeNs Scheduler::head_shadow(TimeNs now) const {
  if (reserved_.empty() || reserved_for_.empty()) return now;
  const std::uint64_t need =
      queue_.find(waiting_index_.find(reserved_for_)->second)->second.request.bytes;
  // (expected end, bytes) of the leases on each reserved device.
  std::vector<std::vector<std::pair<TimeNs, std::uint64_t>>> ends(reserved_.size());
  for (const auto& [id, lease] : active_) {
    for (const int d : lease.devices) {
      const auto at = std::lower_bound(reserved_.begin(), reserved_.end(), d);
      if (at == reserved_.end() || *at != d) continue;
      ends[static_cast<std::size_t>(at - reserved_.begin())].emplace_back(
          std::max(lease.expected_end, now), lease.bytes);
    }
  }
  TimeNs shadow = now;
  for (std::size_t k = 0; k < reserved_.size(); ++k) {
    std::uint64_t free = devices_[static_cast<std::size_t>(reserved_[k])].admissible();
    if (free >= need) continue;
    std::sort(ends[k].begin(), ends[k].end());
    bool fits = false;
    for (const auto& [end, bytes] : ends[k]) {
      free += bytes;
      if (free >= need) {
        shadow = std::max(shadow, end);
        fits = true;
        break;
      }
    }
    if (!fits) return now;  // memory outside leases must go too: no expected start
  }
  return shadow;
}

std::uint64_t Scheduler::headroom(int device) const {
  const auto i = static_cast<std::size_t>(device);
  if (allowed_[i] || reserved_for_.empty() || !devices_[i].healthy) return 0;
  const DeviceState& d = devices_[i];
  const std::uint64_t need =
      queue_.find(waiting_index_.find(reserved_for_)->second)->second.request.bytes;
  // Where the head already fits (a device swapped into its reservation), it must keep
  // fitting: only what is beyond its request now.
  const std::uint64_t admissible = d.admissible();
  if (admissible >= need) return admissible - need;
  // Elsewhere, what the head will never need once the leases it waits for are gone: the
  // capacity less outside use, the head's request and what backfill already took here.
  const std::uint64_t taken = d.overuse + d.foreign + need + reserved_extra_[i];
  const std::uint64_t room = taken >= d.capacity ? 0 : d.capacity - taken;
  return std::min(room, admissible);
}

std::uint64_t Scheduler::headroom_threshold(const ClassKey& cls) const {
  if (cls.gpus != 1 || reserved_.empty()) return 0;
  if (cls.device >= 0) return headroom(cls.device);
  std::uint64_t best = 0;
  for (const int d : reserved_) {
    if (cls.allowed.empty() ||
        std::find(cls.allowed.begin(), cls.allowed.end(), d) != cls.allowed.end()) {
      best = std::max(best, headroom(d));
    }
  }
  return best;
}

int Scheduler::place_in_headroom(const LeaseRequest& request) const {
  if (request.gpus != 1) return -1;
  int best = -1;
  std::uint64_t best_room = 0;
  for (const int d : reserved_) {
    if (!may_use(request, static_cast<std::size_t>(d))) continue;
    const std::uint64_t room = headroom(d);
    // Best fit among the reserved devices: the least headroom that fits.
    if (room >= request.bytes && (best < 0 || room < best_room)) {
      best = d;
      best_room = room;
    }
  }
  return best;
}

std::vector<bool> Scheduler::backfill_devices(bool* gang_can_start) const {
  if (config_.queue == QueuePolicy::kGreedy || last_pass_greedy_) {
    if (gang_can_start != nullptr) *gang_can_start = false;
    return all_devices_;  // nobody reserves anything
  }
  std::vector<bool> allowed = allowed_;
  find_held();
  const auto head_it = head();
  const bool startable =
      head_it != queue_.end() && reserve_for_gangs(head_it->first, allowed, nullptr).has_value();
  if (gang_can_start != nullptr) *gang_can_start = startable;
  return allowed;
}

std::vector<const Scheduler::Waiter*> Scheduler::waiters() const {
  std::vector<const Waiter*> out;
  out.reserve(queue_.size());
  for (const auto& [key, waiter] : queue_) out.push_back(&waiter);
  if (ranked_) {  // fair share: users by their rank at the last pass
    std::stable_sort(out.begin(), out.end(), [this](const Waiter* a, const Waiter* b) {
      return rank_of(Key{-a->request.priority, a->seq}) <
             rank_of(Key{-b->request.priority, b->seq});
    });
  }
  return out;
}

bool Scheduler::is_waiting(std::string_view job_id) const {
  // An empty table is the common case; its find() would still hash the id.
  return !waiting_index_.empty() && waiting_index_.find(job_id) != waiting_index_.end();
}

StatusOr<const ActiveEntry*> Scheduler::adopt(const LeaseRequest& request,
                                              std::span<const int> devices, Holder holder,
                                              TimeNs requested_at, TimeNs granted_at) {
  if (Status s = check_names(request); !s.ok()) return s;
  if (Status s = check_revocable(request); !s.ok()) return s;
  if (request.bytes == 0) return InvalidArgument("an adopted lease must hold some bytes, got 0");
  if (devices.empty()) return InvalidArgument("an adopted lease must name its devices");
  std::vector<bool> seen(devices_.size(), false);
  for (const int d : devices) {
    if (d < 0 || static_cast<std::size_t>(d) >= devices_.size()) {
      return NotFound("device " + std::to_string(d) + " of job '" + request.job_id +
                      "' does not exist; devices are 0.." + std::to_string(devices_.size() - 1));
    }
    if (seen[static_cast<std::size_t>(d)]) {
      return InvalidArgument("job '" + request.job_id + "' names device " + std::to_string(d) +
                             " twice");
    }
    seen[static_cast<std::size_t>(d)] = true;
  }
  if (is_waiting(request.job_id)) return duplicate_error(request.job_id);
  ActiveEntry* entry = insert_active(request.job_id);
  if (entry == nullptr) return duplicate_error(request.job_id);
  entry->second.devices.assign(devices.begin(), devices.end());
  ActiveEntry& granted = grant(*entry, request, holder, requested_at, granted_at);
  // The room it takes may end the head's reservation: choose it again at the next pass.
  reserved_for_.clear();
  return &granted;
}

void Scheduler::set_max_concurrent_jobs(int n) { config_.max_concurrent_jobs = std::max(n, 1); }

void Scheduler::learn_holds(std::string_view kind, std::span<const double> hold_seconds) {
  const int kind_id = intern_kind(kind);
  for (const double s : hold_seconds) {
    if (std::isfinite(s) && s >= 0) observe_hold(kind_id, s * 1e9);
  }
}

}  // namespace gpumgr::core
