#include "sim/replay.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <optional>
#include <queue>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "core/accounting.h"
#include "core/scheduler.h"

namespace gpumgr::sim {
namespace {

using core::TimeNs;

// Seconds to virtual nanoseconds. Beyond ~290 years an int64 of nanoseconds overflows.
constexpr double kMaxSeconds = 9.0e9;

TimeNs to_ns(double seconds) { return static_cast<TimeNs>(std::llround(seconds * 1e9)); }
double to_s(TimeNs ns) { return static_cast<double>(ns) / 1e9; }

// Nearest-rank percentile of sorted values: the smallest value with at least q of the
// values at or below it. Actual observations only, never interpolated.
double percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace

std::string policy_name(PlacementPolicy placement, QueuePolicy queue) {
  if (queue != QueuePolicy::kBackfill) {
    const std::string queue_name(queue_policy_name(queue));
    return placement == PlacementPolicy::kBestFit
               ? queue_name
               : queue_name + "/" + std::string(placement_policy_name(placement));
  }
  return std::string(placement_policy_name(placement));
}

StatusOr<SimReport> replay(const std::vector<TraceJob>& jobs,
                           const std::vector<std::uint64_t>& device_sizes, double memory_limit,
                           PlacementPolicy placement, QueuePolicy queue, int max_concurrent_jobs,
                           double reserve_after_holds, bool duration_backfill, bool fair_share,
                           double fair_share_half_life_s, Residency residency) {
  if (device_sizes.empty()) return InvalidArgument("a simulation needs at least one device");
  if (!(memory_limit > 0 && memory_limit <= 1)) {
    return InvalidArgument("memory_limit must be in (0, 1], got " + std::to_string(memory_limit));
  }
  if (!(reserve_after_holds >= 0) || !std::isfinite(reserve_after_holds)) {
    return InvalidArgument("reserve_after_holds must be a number >= 0, got " +
                           std::to_string(reserve_after_holds));
  }
  if (!(fair_share_half_life_s > 0) || !std::isfinite(fair_share_half_life_s)) {
    return InvalidArgument("fair_share_half_life must be a number of seconds > 0, got " +
                           std::to_string(fair_share_half_life_s));
  }
  if (max_concurrent_jobs < 1) {
    return InvalidArgument("max_concurrent_jobs must be at least 1, got " +
                           std::to_string(max_concurrent_jobs));
  }

  core::SchedulerConfig config;
  config.max_concurrent_jobs = max_concurrent_jobs;
  config.placement = placement;
  config.queue = queue;
  config.reserve_after_holds = reserve_after_holds;
  config.duration_backfill = duration_backfill;
  config.fair_share = fair_share;
  config.fair_share_half_life = to_ns(fair_share_half_life_s);
  core::Scheduler scheduler(config, device_sizes.size());
  std::vector<std::uint64_t> capacities;
  for (std::size_t d = 0; d < device_sizes.size(); ++d) {
    capacities.push_back(core::capacity_bytes(device_sizes[d], memory_limit));
    scheduler.set_device(static_cast<int>(d), capacities.back(), /*foreign=*/0, /*healthy=*/true);
  }

  // The times the replay actually uses, rounded to whole nanoseconds; the lower bound is
  // computed on the same figures so that rounding can never put it above the makespan.
  const std::size_t n = jobs.size();
  std::vector<TimeNs> arrival(n), duration(n);
  std::vector<TraceJob> rounded = jobs;
  std::unordered_map<std::string, std::size_t> index_of;
  index_of.reserve(n);
  bool any_model = false;
  int lowest_priority = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (jobs[i].arrival_s + jobs[i].load_s + jobs[i].duration_s > kMaxSeconds) {
      return InvalidArgument("job '" + jobs[i].job_id + "': arrival + duration beyond " +
                             std::to_string(kMaxSeconds) + " s cannot be simulated");
    }
    arrival[i] = to_ns(jobs[i].arrival_s);
    duration[i] = to_ns(jobs[i].duration_s);
    rounded[i].arrival_s = to_s(arrival[i]);
    rounded[i].duration_s = to_s(duration[i]);
    if (!index_of.emplace(jobs[i].job_id, i).second) {
      return InvalidArgument("job id '" + jobs[i].job_id + "' appears twice in the trace");
    }
    any_model = any_model || !jobs[i].model.empty();
    lowest_priority = i == 0 ? jobs[i].priority : std::min(lowest_priority, jobs[i].priority);
  }
  // Users as uids, in order of first appearance (the anonymous user "" is one too).
  std::unordered_map<std::string, std::uint32_t> uid_of;
  std::vector<std::uint32_t> uid(n);
  for (std::size_t i = 0; i < n; ++i) {
    uid[i] = uid_of.emplace(jobs[i].user, static_cast<std::uint32_t>(uid_of.size())).first->second;
  }
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return arrival[a] < arrival[b]; });
  // Resident copies of models are held by a uid of no user (a serving worker's), at the
  // trace's lowest priority: every job may have them revoked.
  ModelResidency models(jobs, duration, residency, scheduler,
                        core::Holder{0, static_cast<std::uint32_t>(uid_of.size())}, lowest_priority,
                        index_of);

  SimReport report;
  report.policy = policy_name(placement, queue);
  report.jobs = n;
  report.timeline.resize(n);
  std::vector<TimeNs> start(n, -1);
  // Revocable jobs: the end of a resident revoked before its duration (-1: none), and how
  // many times each grant of a job was taken back (a completion of an older grant is stale).
  std::vector<TimeNs> cut(n, -1);
  std::vector<std::uint64_t> attempt(n, 0);
  std::vector<TimeNs> held(n, 0);  // lease time over every grant, lost work included
  // The last grant's hold (its duration, plus its model's load when it loads one) and bytes.
  std::vector<TimeNs> hold(n, 0);
  std::vector<std::uint64_t> lease_bytes(n, 0);

  // Completions, earliest first (ties: lowest trace index, so the order is deterministic);
  // each names the grant it ends.
  using Completion = std::tuple<TimeNs, std::size_t, std::uint64_t>;
  std::priority_queue<Completion, std::vector<Completion>, std::greater<>> completions;
  // Work the grants leave: jobs to queue again (the copy they waited for is gone), and a pass
  // when a grant freed memory (a job took over a resident copy).
  std::vector<std::size_t> requeue;
  bool pass_due = false;
  auto record = [&](const std::vector<core::Grant>& grants, TimeNs now) -> Status {
    for (const core::Grant& g : grants) {
      const std::size_t i = index_of.at(g.job_id);
      bool again = false, freed = false;
      StatusOr<TimeNs> h = models.granted(i, g.devices.front(), now, &again, &freed);
      if (!h.ok()) return h.status();
      pass_due = pass_due || freed;
      if (again) {
        requeue.push_back(i);
        continue;
      }
      start[i] = now;
      report.timeline[i].devices = g.devices;
      hold[i] = *h;
      lease_bytes[i] = g.bytes;
      completions.emplace(now + *h, i, attempt[i]);
    }
    return Status::Ok();
  };
  auto request_of = [&](const TraceJob& job) {
    LeaseRequest request;
    request.job_id = job.job_id;
    request.bytes = job.vram_bytes;
    request.gpus = job.gpus;
    request.priority = job.priority;
    request.kind = job.kind;
    request.preemptible = job.preemptible;
    request.resident = job.resident;
    return request;
  };
  // Job i asks for its lease at `now` (first asked for at `requested_at`): at once beside a
  // resident copy of its model, or in the queue.
  auto submit = [&](std::size_t i, TimeNs now, std::optional<TimeNs> requested_at) -> Status {
    const core::Holder holder{0, uid[i]};
    StatusOr<ModelResidency::Ask> ask = models.ask(i, request_of(jobs[i]), holder, now);
    StatusOr<std::vector<core::Grant>> grants = std::vector<core::Grant>{};
    if (ask.ok() && ask->started) {
      core::Grant g;
      g.job_id = jobs[i].job_id;
      g.devices = {ask->device};
      g.bytes = jobs[i].vram_bytes;
      grants->push_back(std::move(g));
    } else if (ask.ok()) {
      grants = scheduler.enqueue(ask->request, holder, now, std::nullopt, requested_at);
    } else {
      grants = ask.status();
    }
    if (!grants.ok()) {
      return Status(grants.status().code(),
                    "job '" + jobs[i].job_id + "': " + grants.status().message());
    }
    return record(*grants, now);
  };
  // What an instant's grants and revocations leave to do. Revocations take effect at once
  // (no grace in a replay): a resident ends there, a preemptible job queues again from the
  // start, keeping its first arrival, and a resident copy of a model is unloaded (once the
  // jobs running on it end); then the pass that the freed memory allows.
  auto settle = [&](TimeNs now) -> Status {
    while (true) {
      if (pass_due) {
        pass_due = false;
        if (Status s = record(scheduler.schedule(now), now); !s.ok()) return s;
      }
      if (!requeue.empty()) {
        std::vector<std::size_t> again;
        again.swap(requeue);
        for (const std::size_t i : again) {
          if (StatusOr<core::Released> r = scheduler.release(jobs[i].job_id, now); !r.ok()) {
            return Status(ErrorCode::kInternal,
                          "requeueing '" + jobs[i].job_id + "': " + r.status().to_string());
          }
          if (Status s = submit(i, now, arrival[i]); !s.ok()) return s;
        }
        pass_due = true;
        continue;
      }
      const std::vector<core::Revocation> revocations = scheduler.take_revocations();
      if (revocations.empty()) return Status::Ok();
      for (const core::Revocation& r : revocations) {
        if (models.is_copy(r.job_id)) {
          ++report.residents_unloaded;
          if (StatusOr<bool> gone = models.revoked(r.job_id, now); !gone.ok()) {
            return gone.status();
          }
          continue;
        }
        const auto found = index_of.find(r.job_id);
        if (found == index_of.end()) {
          return Status(ErrorCode::kInternal, "revoked an unknown lease '" + r.job_id + "'");
        }
        const std::size_t i = found->second;
        if (StatusOr<core::Released> rel = scheduler.release(r.job_id, now); !rel.ok()) {
          return Status(ErrorCode::kInternal,
                        "revoking '" + r.job_id + "': " + rel.status().to_string());
        }
        ++attempt[i];
        held[i] += now - start[i];
        if (jobs[i].preemptible) {
          ++report.preemptions;
          if (Status s = submit(i, now, arrival[i]); !s.ok()) return s;
        } else {
          ++report.residents_unloaded;
          cut[i] = now;
        }
      }
      pass_due = true;
    }
  };

  std::size_t next = 0;  // the next arrival, in `order`
  std::vector<std::size_t> to_keep;
  while (next < n || !completions.empty()) {
    TimeNs now = next < n ? arrival[order[next]] : std::get<0>(completions.top());
    if (!completions.empty()) now = std::min(now, std::get<0>(completions.top()));

    to_keep.clear();
    while (!completions.empty() && std::get<0>(completions.top()) == now) {
      const auto [at, i, grant] = completions.top();
      completions.pop();
      if (grant != attempt[i]) continue;  // that grant was revoked
      held[i] += hold[i];
      if (StatusOr<core::Released> r = scheduler.release(models.lease_name(i), now); !r.ok()) {
        return Status(ErrorCode::kInternal,
                      "releasing '" + jobs[i].job_id + "': " + r.status().to_string());
      }
      bool freed = false;
      StatusOr<bool> keep = models.finished(i, now, &freed);
      if (!keep.ok()) return keep.status();
      if (*keep) to_keep.push_back(i);
      pass_due = true;
    }
    // Waiters first get what the releases freed, before this instant's arrivals compete;
    // then the models of the jobs that ended stay resident in what is left.
    if (Status s = settle(now); !s.ok()) return s;
    for (const std::size_t i : to_keep) {
      if (Status s = models.keep(i, now); !s.ok()) return s;
    }
    // Jobs queued to load a model that can now run beside a copy of it do so.
    while (true) {
      StatusOr<std::vector<std::pair<std::size_t, int>>> warm = models.start_waiting(now);
      if (!warm.ok()) return warm.status();
      if (warm->empty()) break;
      for (const auto& [i, d] : *warm) {
        core::Grant g;
        g.job_id = jobs[i].job_id;
        g.devices = {d};
        g.bytes = jobs[i].vram_bytes;
        if (Status s = record({g}, now); !s.ok()) return s;
      }
      pass_due = true;  // the queue changed
      if (Status s = settle(now); !s.ok()) return s;
    }

    while (next < n && arrival[order[next]] == now) {
      if (Status s = submit(order[next], now, std::nullopt); !s.ok()) return s;
      if (Status s = settle(now); !s.ok()) return s;
      ++next;
    }

    if (next == n && completions.empty() && scheduler.waiting_count() > 0) {
      // Every job fits an empty pool (enqueue checked), so this would be a scheduler bug.
      return Status(ErrorCode::kInternal,
                    std::to_string(scheduler.waiting_count()) +
                        " job(s) still wait with nothing running and nothing left to arrive");
    }
  }

  // The report.
  std::vector<double> waits;
  waits.reserve(n);
  double leased_byte_seconds = 0;
  double turnaround = 0;
  TimeNs makespan = 0;
  for (std::size_t i = 0; i < n; ++i) {
    SimJob& s = report.timeline[i];
    s.job_id = jobs[i].job_id;
    s.arrival_s = rounded[i].arrival_s;
    s.start_s = to_s(start[i]);
    const TimeNs end = cut[i] >= 0 ? cut[i] : start[i] + hold[i];
    s.end_s = to_s(end);
    s.loaded_model = models.loaded(i);
    makespan = std::max(makespan, end);
    waits.push_back(to_s(start[i] - arrival[i]));
    turnaround += to_s(end - arrival[i]);
    // A resident revoked early held its memory only until then: the bound counts what it
    // held (it can only fall), as the utilization does, lost work of preempted jobs included.
    if (cut[i] >= 0) rounded[i].duration_s = to_s(cut[i] - start[i]);
    leased_byte_seconds += static_cast<double>(lease_bytes[i]) * jobs[i].gpus * to_s(held[i]);
  }
  report.makespan_s = to_s(makespan);
  // Resident copies of models lease memory too, until they are unloaded or the replay ends.
  leased_byte_seconds += models.copy_byte_seconds(makespan);
  if (any_model) {
    report.residency = std::string(residency_name(residency));
    report.models = models.figures();
    if (n > 0) report.mean_turnaround_s = turnaround / static_cast<double>(n);
  }
  // The bound's jobs: in unload mode each holds its model beside its working memory for the
  // load and its duration; in resident mode a job may find its model loaded, so only its
  // working memory and its duration are certain.
  std::vector<TraceJob> bound_jobs = rounded;
  if (residency == Residency::kUnload) {
    for (std::size_t i = 0; i < n; ++i) {
      if (jobs[i].model.empty()) continue;
      bound_jobs[i].vram_bytes += jobs[i].model_bytes;
      bound_jobs[i].duration_s = to_s(duration[i] + to_ns(jobs[i].load_s));
    }
  }
  // The bound's terms, snapped down to the nanosecond grid the replay's times lie on. The
  // makespan is a whole number of nanoseconds, so it is at least the exact bound rounded up;
  // the computed terms are within a fraction of a nanosecond of the exact ones (long double),
  // so floor(term + 1/4 ns) never exceeds that, where the raw double could by one ulp.
  report.lower_bound = makespan_lower_bound(bound_jobs, capacities);
  auto snap = [](double& s) {
    s = to_s(static_cast<TimeNs>(std::floor(static_cast<long double>(s) * 1e9L + 0.25L)));
  };
  snap(report.lower_bound.release_s);
  snap(report.lower_bound.area_s);
  snap(report.lower_bound.exclusive_s);
  snap(report.lower_bound.value_s);
  report.lower_bound_s = report.lower_bound.value_s;
  report.makespan_over_lb =
      report.lower_bound_s > 0 ? report.makespan_s / report.lower_bound_s : 1.0;
  if (n > 0) {
    report.mean_wait_s = std::accumulate(waits.begin(), waits.end(), 0.0) / static_cast<double>(n);
    std::sort(waits.begin(), waits.end());
    report.p50_wait_s = percentile(waits, 0.50);
    report.p99_wait_s = percentile(waits, 0.99);
    report.max_wait_s = waits.back();
  }
  // Per user.
  report.users.resize(uid_of.size());
  for (const auto& [name, u] : uid_of) report.users[u].name = name;
  for (std::size_t i = 0; i < n; ++i) {
    SimReport::User& u = report.users[uid[i]];
    const double wait = to_s(start[i] - arrival[i]);
    const double length = std::max(rounded[i].duration_s, kSlowdownMinDurationS);
    // A model's load delays the job's result as a wait does.
    const double load = cut[i] >= 0 ? 0 : to_s(hold[i] - duration[i]);
    ++u.jobs;
    u.mean_wait_s += wait;
    u.max_wait_s = std::max(u.max_wait_s, wait);
    u.mean_slowdown += (wait + load + length) / length;
  }
  double slowdowns = 0, sum_squares = 0;
  for (SimReport::User& u : report.users) {
    u.mean_wait_s /= static_cast<double>(u.jobs);
    u.mean_slowdown /= static_cast<double>(u.jobs);
    slowdowns += u.mean_slowdown;
    sum_squares += u.mean_slowdown * u.mean_slowdown;
  }
  if (!report.users.empty() && sum_squares > 0) {
    report.jain_fairness =
        slowdowns * slowdowns / (static_cast<double>(report.users.size()) * sum_squares);
  }
  const double total_capacity =
      std::accumulate(capacities.begin(), capacities.end(), 0.0,
                      [](double sum, std::uint64_t c) { return sum + static_cast<double>(c); });
  if (report.makespan_s > 0 && total_capacity > 0) {
    report.utilization = leased_byte_seconds / (total_capacity * report.makespan_s);
  }
  return report;
}

}  // namespace gpumgr::sim
