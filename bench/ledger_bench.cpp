// The in-process ledger's hot path (issue 2, section 7):
//  - acquire+release: Manager::try_acquire then Lease::release, on 8 simulated devices, from 1
//    and 2 threads (each thread reuses its own job id, as a worker does);
//  - the floor: a std::mutex-guarded std::unordered_map insert+erase of the same job id string,
//    the least any thread-safe job table can cost;
//  - a status snapshot of 8 GPUs through the fake libnvidia-ml (GPUMGR_NVML_LIBRARY, else
//    tests/fakes/libfake_nvml.so next to this build), or over 8 simulated devices when the fake
//    is not found (the output says which).
// After the runs, main prints "ratio acquire+release / floor = X" for each thread count,
// from the figures of this same run. Without --benchmark_filter, the pair and its floor run
// alternately in 5 rounds and X is the median of the rounds' ratios: on a shared machine,
// noise comes in bursts of seconds, and each round's ratio compares runs made side by side.
#include <benchmark/benchmark.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "gpumgr/backends.h"
#include "gpumgr/manager.h"
#include "gpumgr/units.h"

namespace {

using gpumgr::kGiB;

gpumgr::Manager& shared_manager() {
  static std::unique_ptr<gpumgr::Manager> manager = [] {
    gpumgr::ManagerOptions o;
    o.in_process_only = true;
    o.max_concurrent_jobs = 64;  // the threads never hit the job limit
    auto backend =
        std::make_shared<gpumgr::SimulatedBackend>(std::vector<std::uint64_t>(8, 80 * kGiB));
    auto m = gpumgr::Manager::create(o, backend);
    if (!m.ok()) {
      std::fprintf(stderr, "%s\n", m.status().to_string().c_str());
      std::abort();
    }
    return std::move(m).value();
  }();
  return *manager;
}

void BM_AcquireRelease(benchmark::State& state) {
  gpumgr::Manager& m = shared_manager();
  gpumgr::LeaseRequest r;
  r.job_id = "bench-worker-" + std::to_string(state.thread_index());
  r.bytes = 4 * kGiB;
  for (auto _ : state) {
    auto lease = m.try_acquire(r);
    if (!lease.ok()) {
      state.SkipWithError(lease.status().to_string().c_str());
      break;
    }
    if (!lease->release().ok()) {
      state.SkipWithError("release failed");
      break;
    }
  }
}
BENCHMARK(BM_AcquireRelease)->Threads(1)->Threads(2)->UseRealTime();

std::mutex floor_mutex;
std::unordered_map<std::string, int> floor_table;

void BM_Floor(benchmark::State& state) {
  const std::string id = "bench-worker-" + std::to_string(state.thread_index());
  for (auto _ : state) {
    {
      std::lock_guard lock(floor_mutex);
      floor_table.emplace(id, 1);
    }
    {
      std::lock_guard lock(floor_mutex);
      floor_table.erase(id);
    }
  }
}
BENCHMARK(BM_Floor)->Threads(1)->Threads(2)->UseRealTime();

// The fake libnvidia-ml's 8-GPU scenario (the same box as tests/nvml/fake_nvml_fixture.h).
std::string eight_gpu_scenario() {
  static const char* const kBus[8] = {"18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"};
  std::string s = "driver_version 550.54.15\nnvml_version 12.550.54.15\ncuda_version 12040\n";
  for (int i = 0; i < 8; ++i) {
    const bool h100 = i < 4;
    s += "device\nuuid GPU-0000000" + std::to_string(i) + "-aaaa-bbbb-cccc-ddddeeeeffff\n";
    s += std::string("name ") + (h100 ? "NVIDIA H100 80GB HBM3" : "NVIDIA A100-SXM4-40GB") + "\n";
    s += std::string("bus_id 00000000:") + kBus[i] + ":00.0\n";
    s += std::string("memory_total_mib ") + (h100 ? "81559" : "40960") + "\n";
    s += "memory_used_mib " + std::to_string(1000 * (i + 1)) + "\nmemory_reserved_mib 256\n";
    s += "utilization " + std::to_string(10 * i) + " " + std::to_string(5 * i) + "\n";
    s += "temperature " + std::to_string(30 + i) + "\n";
    s += "power_usage_mw " + std::to_string(100000 + 1234 * i) + "\n";
    s += std::string("power_limit_mw ") + (h100 ? "700000" : "400000") + "\n";
    s += std::string("compute_capability ") + (h100 ? "9 0" : "8 0") + "\n";
    s += "process " + std::to_string(5000 + i) + " " + std::to_string(500 * (i + 1)) + "\n";
  }
  return s;
}

std::string fake_nvml_path() {
  if (const char* env = std::getenv("GPUMGR_NVML_LIBRARY"); env != nullptr) return env;
  char exe[PATH_MAX] = {};
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return {};
  std::string dir(exe, static_cast<std::size_t>(n));
  dir = dir.substr(0, dir.rfind('/'));  // <build>/bench
  const std::string path = dir + "/../tests/fakes/libfake_nvml.so";
  return ::access(path.c_str(), R_OK) == 0 ? path : std::string();
}

std::string snapshot_source = "not run";

void BM_Snapshot8Gpus(benchmark::State& state) {
  std::unique_ptr<gpumgr::Manager> manager;
  const std::string library = fake_nvml_path();
  if (!library.empty()) {
    const std::string scenario = "/tmp/gpumgr_ledger_bench_" + std::to_string(::getpid()) + ".txt";
    std::ofstream(scenario) << eight_gpu_scenario();
    ::setenv("GPUMGR_NVML_LIBRARY", library.c_str(), 1);
    ::setenv("GPUMGR_FAKE_NVML_SCENARIO", scenario.c_str(), 1);
    auto backend = gpumgr::make_nvml_backend();
    if (backend.ok()) {
      gpumgr::ManagerOptions o;
      o.in_process_only = true;
      auto m = gpumgr::Manager::create(o, std::move(backend).value());
      if (m.ok()) {
        manager = std::move(m).value();
        snapshot_source = "fake NVML " + library;
      }
    }
  }
  if (!manager) {
    gpumgr::ManagerOptions o;
    o.in_process_only = true;
    o.simulate = "8x80GiB";
    manager = std::move(gpumgr::Manager::create(o)).value();
    snapshot_source = "simulated devices (fake NVML not found)";
  }
  // Two leases, so that the snapshot has a job table to copy.
  gpumgr::LeaseRequest r;
  r.job_id = "held-1";
  r.bytes = 10 * kGiB;
  auto a = manager->try_acquire(r);
  r.job_id = "held-2";
  auto b = manager->try_acquire(r);
  for (auto _ : state) {
    auto snap = manager->snapshot();
    benchmark::DoNotOptimize(snap);
    if (!snap.ok() || snap->devices.size() != 8) {
      state.SkipWithError("snapshot failed or not 8 devices");
      break;
    }
  }
  state.SetLabel(snapshot_source);
}
BENCHMARK(BM_Snapshot8Gpus)->Unit(benchmark::kMicrosecond);

// Console output as usual, and the per-operation real time of every run kept for the ratio.
class RecordingReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.run_type == Run::RT_Iteration && !run.error_occurred) {
        const double to_ns = benchmark::GetTimeUnitMultiplier(benchmark::kNanosecond) /
                             benchmark::GetTimeUnitMultiplier(run.time_unit);
        ns_[run.benchmark_name()].push_back(run.GetAdjustedRealTime() * to_ns);
        cpu_ns_[run.benchmark_name()].push_back(run.GetAdjustedCPUTime() * to_ns);
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
  // Every run of each benchmark, in order: wall and CPU time per operation.
  const std::map<std::string, std::vector<double>>& ns() const { return ns_; }
  const std::map<std::string, std::vector<double>>& cpu_ns() const { return cpu_ns_; }

 private:
  std::map<std::string, std::vector<double>> ns_;
  std::map<std::string, std::vector<double>> cpu_ns_;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

constexpr int kRounds = 5;

}  // namespace

int main(int argc, char** argv) {
  bool filtered = false;
  for (int i = 1; i < argc; ++i) {
    filtered = filtered || std::string(argv[i]).rfind("--benchmark_filter", 0) == 0;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RecordingReporter reporter;
  if (filtered) {
    benchmark::RunSpecifiedBenchmarks(&reporter);
  } else {
    for (int round = 0; round < kRounds; ++round) {
      for (const char* threads : {"1", "2"}) {
        for (const char* name : {"BM_AcquireRelease", "BM_Floor"}) {
          benchmark::RunSpecifiedBenchmarks(
              &reporter, std::string("^") + name + "/real_time/threads:" + threads + "$");
        }
      }
    }
    benchmark::RunSpecifiedBenchmarks(&reporter, "^BM_Snapshot8Gpus");
  }
  const auto& ns = reporter.ns();
  const auto& cpu = reporter.cpu_ns();
  for (const char* threads : {"1", "2"}) {
    const std::string pair = std::string("BM_AcquireRelease/real_time/threads:") + threads;
    const std::string floor = std::string("BM_Floor/real_time/threads:") + threads;
    if (ns.count(pair) == 0 || ns.count(floor) == 0) continue;
    const auto& p = ns.at(pair);
    const auto& f = ns.at(floor);
    const std::size_t rounds = std::min(p.size(), f.size());
    std::vector<double> ratios;
    std::vector<double> cpu_ratios;
    for (std::size_t r = 0; r < rounds; ++r) {
      ratios.push_back(p[r] / f[r]);
      cpu_ratios.push_back(cpu.at(pair)[r] / cpu.at(floor)[r]);
    }
    std::printf(
        "threads %s: acquire+release %.1f ns (cpu %.1f), floor %.1f ns (cpu %.1f), "
        "ratio acquire+release / floor = %.2f (cpu time: %.2f; %zu round(s), ratios %.2f to "
        "%.2f)\n",
        threads, median(p), median(cpu.at(pair)), median(f), median(cpu.at(floor)), median(ratios),
        median(cpu_ratios), rounds, *std::min_element(ratios.begin(), ratios.end()),
        *std::max_element(ratios.begin(), ratios.end()));
  }
  if (const auto it = ns.find("BM_Snapshot8Gpus"); it != ns.end()) {
    std::printf("snapshot of 8 devices: %.2f us (%s)\n", median(it->second) / 1000.0,
                snapshot_source.c_str());
  }
  benchmark::Shutdown();
  return 0;
}
