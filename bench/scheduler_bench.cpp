// The scheduler under a deep queue (issue 2, section 7): 10,000 waiting jobs on 64 devices,
// driving core::Scheduler directly (no threads, no clock). Target: <= 10 us for each of
//  - BM_EnqueueMustWait: an acquire that must wait (enqueue, whose scheduling pass grants
//    nothing);
//  - BM_ReleaseSchedules: a release followed by the scheduling pass it triggers, which grants
//    one waiter into the freed device.
// The state is steady: every device holds one lease of more than half its capacity, every
// waiter needs more than half a device, so a device fits one job at a time and nothing else
// fits until a release. At the head waits a high-priority job pinned to device 0, which is
// never released: every pass must skip the head and backfill (the scheduler's slow path).
// The *_Tenants variants run the same with the waiters spread over 16 users, with fair share
// ordering them and a quota for everyone (generous enough that it never binds): the cost of
// ranking users and asking each one's quota in every pass.
#include <benchmark/benchmark.h>
#include <time.h>

#include <chrono>
#include <random>
#include <string>
#include <vector>

#include "core/scheduler.h"
#include "gpumgr/units.h"

namespace {

using gpumgr::kGiB;
using gpumgr::core::Scheduler;

constexpr int kDevices = 64;
constexpr int kWaiting = 10000;
constexpr std::uint64_t kCapacity = 64 * kGiB;

struct Bench {
  Scheduler scheduler{gpumgr::core::SchedulerConfig{1000, gpumgr::PlacementPolicy::kBestFit,
                                                    gpumgr::QueuePolicy::kBackfill},
                      kDevices};
  std::uint32_t users = 1;
  std::mt19937_64 rng{42};
  std::uint64_t next_id = 0;
  gpumgr::core::TimeNs now = 1;
  std::vector<std::string> on_device;  // the job holding each device

  // A waiter: more than half a device, any priority 0..3, one in ten pinned to a device.
  gpumgr::LeaseRequest waiter() {
    gpumgr::LeaseRequest r;
    r.job_id = "job-" + std::to_string(next_id++);
    r.bytes = kCapacity / 2 + 1 + rng() % (kCapacity / 2);
    r.priority = static_cast<int>(rng() % 4);
    if (rng() % 10 == 0) r.device = static_cast<int>(1 + rng() % (kDevices - 1));
    return r;
  }

  // The holder of the next waiter: users in turn.
  gpumgr::core::Holder holder() const {
    return {1, 1 + static_cast<std::uint32_t>(next_id % users)};
  }

  explicit Bench(std::uint32_t user_count = 1) : users(user_count) {
    for (int d = 0; d < kDevices; ++d) scheduler.set_device(d, kCapacity, 0, true);
    if (users > 1) {
      gpumgr::core::QuotaConfig quotas;
      quotas.default_rule = gpumgr::core::QuotaRule{};
      quotas.default_rule->scope = "quota.default";
      quotas.default_rule->limits.max_jobs = 100000;
      quotas.default_rule->limits.max_vram_bytes = 1ULL << 60;
      scheduler.set_quotas(quotas, {});
    }
    for (int d = 0; d < kDevices; ++d) {
      gpumgr::LeaseRequest r;
      r.job_id = "holder-" + std::to_string(d);
      r.bytes = kCapacity;
      r.device = d;
      if (!scheduler.try_start(r, {1, 1}, now).ok()) std::abort();
      on_device.push_back(r.job_id);
    }
    gpumgr::LeaseRequest head;
    head.job_id = "head-pinned-to-0";
    head.bytes = kCapacity;
    head.device = 0;
    head.priority = 10;
    (void)scheduler.enqueue(head, {1, 1}, now, std::nullopt);
    while (scheduler.waiting_count() < kWaiting) {
      const gpumgr::core::Holder h = holder();
      (void)scheduler.enqueue(waiter(), h, ++now, std::nullopt);
    }
    if (scheduler.active_count() != kDevices) std::abort();
  }
};

// This thread's CPU time in seconds: on a shared, loaded machine the wall time of an operation
// includes the time other processes ran; the CPU time is what the operation itself cost.
double thread_cpu_s() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

Bench& bench() {
  static Bench b;
  return b;
}

Bench& tenants_bench() {
  static Bench b(16);
  return b;
}

void enqueue_must_wait(benchmark::State& state, Bench& b) {
  constexpr int kBatch = 64;
  std::vector<gpumgr::LeaseRequest> batch(kBatch);
  std::vector<gpumgr::core::Holder> holders(kBatch);
  double cpu = 0;
  for (auto _ : state) {
    for (int k = 0; k < kBatch; ++k) {  // ids and sizes made outside the timed part
      holders[static_cast<std::size_t>(k)] = b.holder();
      batch[static_cast<std::size_t>(k)] = b.waiter();
    }
    const double cpu_start = thread_cpu_s();
    const auto start = std::chrono::steady_clock::now();
    for (int k = 0; k < kBatch; ++k) {
      const auto& r = batch[static_cast<std::size_t>(k)];
      auto grants =
          b.scheduler.enqueue(r, holders[static_cast<std::size_t>(k)], ++b.now, std::nullopt);
      benchmark::DoNotOptimize(grants);
    }
    const auto stop = std::chrono::steady_clock::now();
    cpu += (thread_cpu_s() - cpu_start) / kBatch;
    state.SetIterationTime(std::chrono::duration<double>(stop - start).count() / kBatch);
    for (const auto& r : batch) (void)b.scheduler.cancel(r.job_id);
    b.scheduler.schedule(b.now);  // cancelling may change the head's reservation
  }
  if (b.scheduler.waiting_count() != kWaiting || b.scheduler.active_count() != kDevices) {
    state.SkipWithError("the state drifted");
  }
  state.counters["waiting"] = static_cast<double>(b.scheduler.waiting_count());
  state.counters["cpu_us"] = 1e6 * cpu / static_cast<double>(state.iterations());
}

void BM_EnqueueMustWait(benchmark::State& state) { enqueue_must_wait(state, bench()); }
BENCHMARK(BM_EnqueueMustWait)->UseManualTime()->Unit(benchmark::kMicrosecond);
void BM_EnqueueMustWait_Tenants(benchmark::State& state) {
  enqueue_must_wait(state, tenants_bench());
}
BENCHMARK(BM_EnqueueMustWait_Tenants)->UseManualTime()->Unit(benchmark::kMicrosecond);

void release_schedules(benchmark::State& state, Bench& b) {
  int device = 1;  // device 0 is the head's and is never released
  std::uint64_t granted = 0;
  double cpu = 0;
  for (auto _ : state) {
    const std::string job = b.on_device[static_cast<std::size_t>(device)];
    const double cpu_start = thread_cpu_s();
    const auto start = std::chrono::steady_clock::now();
    auto released = b.scheduler.release(job, ++b.now);
    auto grants = b.scheduler.schedule(b.now);
    const auto stop = std::chrono::steady_clock::now();
    cpu += thread_cpu_s() - cpu_start;
    state.SetIterationTime(std::chrono::duration<double>(stop - start).count());
    if (!released.ok() || grants.size() != 1 || grants[0].devices.front() != device) {
      state.SkipWithError("expected exactly one grant into the freed device");
      break;
    }
    granted += grants.size();
    b.on_device[static_cast<std::size_t>(device)] = grants[0].job_id;
    // Keep 10,000 waiting: a new waiter replaces the one granted (it fits nowhere now).
    const gpumgr::core::Holder h = b.holder();
    auto none = b.scheduler.enqueue(b.waiter(), h, ++b.now, std::nullopt);
    if (!none.ok() || !none->empty()) {
      state.SkipWithError("the replacement waiter should wait");
      break;
    }
    device = device + 1 == kDevices ? 1 : device + 1;
  }
  state.counters["waiting"] = static_cast<double>(b.scheduler.waiting_count());
  state.counters["granted"] = static_cast<double>(granted);
  state.counters["cpu_us"] = 1e6 * cpu / static_cast<double>(state.iterations());
}

void BM_ReleaseSchedules(benchmark::State& state) { release_schedules(state, bench()); }
BENCHMARK(BM_ReleaseSchedules)->UseManualTime()->Unit(benchmark::kMicrosecond);
void BM_ReleaseSchedules_Tenants(benchmark::State& state) {
  release_schedules(state, tenants_bench());
}
BENCHMARK(BM_ReleaseSchedules_Tenants)->UseManualTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
