// The cost of measuring leases (issue 10, section 6): one backend poll of the in-process
// ledger (LocalLedger::refresh: the backend's reading, the /proc ancestry of every listed
// process, attribution of each device's memory to holders and outside use, every lease's use,
// peak and overuse episode) on 8 simulated devices listing 200 processes,
//  - with 64 leases held by 64 of those processes (8 per device), and
//  - with no lease at all, the floor: the same reading with nothing to attribute;
// measured alternately in 5 rounds. main prints "ratio poll with 64 leases / poll without =
// X", the median of the rounds' ratios, from the figures of this same run.
// The pids are above the kernel's pid_max, so /proc has none of them: the ancestry walk
// costs one failed open per process, as for processes that already exited; a host whose
// processes all live pays a few reads more each, for both runs alike.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/local_ledger.h"
#include "gpumgr/backends.h"
#include "gpumgr/units.h"

namespace {

using gpumgr::kGiB;
using gpumgr::kMiB;

constexpr int kDevices = 8;
constexpr int kProcesses = 200;
constexpr int kLeases = 64;
constexpr std::uint32_t kFirstPid = 5'000'000;

std::shared_ptr<gpumgr::core::LocalLedger> make_ledger(int leases) {
  auto sim =
      std::make_shared<gpumgr::SimulatedBackend>(std::vector<std::uint64_t>(kDevices, 80 * kGiB));
  for (int p = 0; p < kProcesses; ++p) {
    // 200 processes spread over the devices, 100 to 300 MiB each.
    (void)sim->set_process_usage(p % kDevices, kFirstPid + static_cast<std::uint32_t>(p),
                                 static_cast<std::uint64_t>(100 + p) * kMiB);
  }
  gpumgr::LedgerConfig config;
  config.max_concurrent_jobs = kLeases;
  config.poll_interval = std::chrono::hours(1);  // no background polls during the runs
  auto ledger = gpumgr::core::LocalLedger::create(sim, config);
  if (!ledger.ok()) {
    std::fprintf(stderr, "%s\n", ledger.status().to_string().c_str());
    std::abort();
  }
  for (int l = 0; l < leases; ++l) {
    gpumgr::LeaseRequest r;
    r.job_id = "lease-" + std::to_string(l);
    r.bytes = 200 * kMiB;  // some holders are over their lease, some under
    r.device = l % kDevices;
    // Process l runs on device l % 8: the holder's own memory is on its lease's device.
    auto granted = (*ledger)->try_acquire_as(
        r, gpumgr::core::Holder{kFirstPid + static_cast<std::uint32_t>(l), 0});
    if (!granted.ok()) {
      std::fprintf(stderr, "%s\n", granted.status().to_string().c_str());
      std::abort();
    }
  }
  return ledger.value();
}

void poll(benchmark::State& state, int leases) {
  static std::map<int, std::shared_ptr<gpumgr::core::LocalLedger>> ledgers;
  auto& ledger = ledgers[leases];
  if (!ledger) ledger = make_ledger(leases);
  for (auto _ : state) {
    if (!ledger->refresh().ok()) {
      state.SkipWithError("refresh failed");
      break;
    }
  }
}

void BM_PollWith64Leases(benchmark::State& state) { poll(state, kLeases); }
void BM_PollWithoutLeases(benchmark::State& state) { poll(state, 0); }

struct Collector : benchmark::ConsoleReporter {
  std::map<std::string, std::vector<double>> ns;
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs) {
      if (r.run_type == Run::RT_Iteration)
        ns[r.benchmark_name()].push_back(r.GetAdjustedRealTime());
    }
    ConsoleReporter::ReportRuns(runs);
  }
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  constexpr int kRounds = 5;
  for (int round = 0; round < kRounds; ++round) {
    benchmark::RegisterBenchmark("BM_PollWith64Leases", BM_PollWith64Leases)
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark("BM_PollWithoutLeases", BM_PollWithoutLeases)
        ->Unit(benchmark::kMicrosecond);
  }
  Collector reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  const auto& with = reporter.ns["BM_PollWith64Leases"];
  const auto& without = reporter.ns["BM_PollWithoutLeases"];
  std::vector<double> ratios;
  for (std::size_t i = 0; i < std::min(with.size(), without.size()); ++i) {
    if (without[i] > 0) ratios.push_back(with[i] / without[i]);
  }
  if (ratios.empty()) return 0;
  std::sort(ratios.begin(), ratios.end());
  std::printf("ratio poll with 64 leases / poll without = %.2f (rounds %.2f to %.2f)\n",
              ratios[ratios.size() / 2], ratios.front(), ratios.back());
  return 0;
}
