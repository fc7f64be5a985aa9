// gpumgr simulate --trace FILE --devices SPEC [--policy NAME] [--memory-limit F]
//                 [--max-concurrent-jobs N] [--residency unload|resident|both]
//                 [--timeline FILE] [--json]
// Replays a job trace on simulated devices through the library's own scheduler on a virtual
// clock and reports the makespan against a lower bound, waits and utilisation
// (docs/simulate.md). Runs on the main thread; a replay of thousands of jobs takes
// milliseconds, so nothing here is asynchronous.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/scheduler.h"
#include "gpumgr/backends.h"
#include "gpumgr/units.h"
#include "sim/replay.h"
#include "sim/timeline_csv.h"
#include "sim/trace.h"
#include "util/terminal_text.h"

namespace gpumgr::cli {
namespace {

// Traces model cluster jobs, which nothing but memory limits: by default the concurrency
// limit is out of the way (the library's default of 3 is for one service's workers).
constexpr int kUnlimitedJobs = 1 << 30;

struct PolicyChoice {
  const char* name;
  PlacementPolicy placement;
  QueuePolicy queue;
};
// FIFO and greedy first: they are the baselines the others are compared with (FIFO for the
// worst wait, greedy for makespan and mean wait).
constexpr PolicyChoice kPolicies[] = {
    {"fifo", PlacementPolicy::kBestFit, QueuePolicy::kFifo},
    {"greedy", PlacementPolicy::kBestFit, QueuePolicy::kGreedy},
    {"best-fit", PlacementPolicy::kBestFit, QueuePolicy::kBackfill},
    {"spread", PlacementPolicy::kSpread, QueuePolicy::kBackfill},
    {"first-fit", PlacementPolicy::kFirstFit, QueuePolicy::kBackfill},
};

int exit_code(const Status& status) {
  switch (status.code()) {
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kNotFound:
    case ErrorCode::kNeverFits:
      return kExitUsage;  // a bad trace, spec or option: the input is at fault
    default:
      return kExitError;
  }
}

nlohmann::json users_json(const sim::SimReport& r) {
  nlohmann::json users = nlohmann::json::array();
  for (const auto& u : r.users) {
    users.push_back({{"user", u.name},
                     {"jobs", u.jobs},
                     {"mean_wait_s", u.mean_wait_s},
                     {"max_wait_s", u.max_wait_s},
                     {"mean_slowdown", u.mean_slowdown}});
  }
  return users;
}

nlohmann::json to_json(const sim::SimReport& r) {
  nlohmann::json j = {
      {"policy", r.policy},
      {"jobs", r.jobs},
      {"makespan_s", r.makespan_s},
      {"lower_bound_s", r.lower_bound_s},
      {"makespan_over_lb", r.makespan_over_lb},
      {"mean_wait_s", r.mean_wait_s},
      {"p50_wait_s", r.p50_wait_s},
      {"p99_wait_s", r.p99_wait_s},
      {"max_wait_s", r.max_wait_s},
      {"utilization", r.utilization},
      {"users", users_json(r)},
      {"jain_fairness", r.jain_fairness},
      {"lower_bound",
       {{"release_s", r.lower_bound.release_s},
        {"area_s", r.lower_bound.area_s},
        {"exclusive_s", r.lower_bound.exclusive_s},
        {"binding", std::string(r.lower_bound.binding())}}},
  };
  // Only for traces with revocable jobs or models: other reports stay as they were.
  if (r.preemptions + r.residents_unloaded > 0 || !r.residency.empty()) {
    j["preemptions"] = r.preemptions;
    j["residents_unloaded"] = r.residents_unloaded;
  }
  if (!r.residency.empty()) {
    j["residency"] = r.residency;
    j["mean_turnaround_s"] = r.mean_turnaround_s;
    j["models"] = {{"jobs", r.models.jobs},
                   {"loads", r.models.loads},
                   {"loads_avoided", r.models.loads_avoided},
                   {"load_s", r.models.load_s},
                   {"residents_unloaded", r.models.unloaded},
                   {"residents_unloaded_in_use", r.models.unloaded_in_use},
                   {"dropped", r.models.dropped}};
  }
  return j;
}

std::string fmt(const char* format, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, value);
  return buf;
}

// A report's row label: its policy, and its residency for a trace with models.
std::string label(const sim::SimReport& r) {
  return r.residency.empty() ? r.policy : r.policy + " " + r.residency;
}

// Per user, when the trace names users: each policy's waits and slowdowns, and Jain's index.
void print_users(const std::vector<sim::SimReport>& reports) {
  if (reports.empty() || reports.front().users.size() < 2) return;
  int width = 10;
  for (const sim::SimReport& r : reports)
    width = std::max(width, static_cast<int>(label(r).size()));
  std::printf("\n%-16s %-*s %6s %10s %10s %9s\n", "user", width, "policy", "jobs", "mean wait",
              "max wait", "slowdown");
  for (std::size_t k = 0; k < reports.front().users.size(); ++k) {
    for (const sim::SimReport& r : reports) {
      const auto& u = r.users[k];
      // Names come from the trace: printed as safe text.
      std::printf("%-16s %-*s %6zu %10s %10s %9.2f\n", terminal_safe(u.name).c_str(), width,
                  label(r).c_str(), u.jobs, fmt("%.1fs", u.mean_wait_s).c_str(),
                  fmt("%.1fs", u.max_wait_s).c_str(), u.mean_slowdown);
    }
  }
  std::printf("Jain's fairness index of the users' mean slowdowns:");
  for (const sim::SimReport& r : reports)
    std::printf(" %s %.3f", label(r).c_str(), r.jain_fairness);
  std::printf("\n");
}

void print_table(const std::vector<sim::SimReport>& reports) {
  int width = 10;
  for (const sim::SimReport& r : reports)
    width = std::max(width, static_cast<int>(label(r).size()));
  std::printf("%-*s %12s %12s %-9s %7s %10s %10s %10s %10s %6s\n", width, "policy", "makespan",
              "lower bound", "(binding)", "ratio", "mean wait", "p50 wait", "p99 wait", "max wait",
              "util");
  for (const sim::SimReport& r : reports) {
    std::printf("%-*s %12s %12s %-9s %7.3f %10s %10s %10s %10s %5.1f%%\n", width, label(r).c_str(),
                fmt("%.1fs", r.makespan_s).c_str(), fmt("%.1fs", r.lower_bound_s).c_str(),
                std::string(r.lower_bound.binding()).c_str(), r.makespan_over_lb,
                fmt("%.1fs", r.mean_wait_s).c_str(), fmt("%.1fs", r.p50_wait_s).c_str(),
                fmt("%.1fs", r.p99_wait_s).c_str(), fmt("%.1fs", r.max_wait_s).c_str(),
                100 * r.utilization);
  }
  for (const sim::SimReport& r : reports) {
    // Models' copies revoked are in the models table.
    if (r.preemptions + r.residents_unloaded - r.models.unloaded == 0) continue;
    std::printf("%s: %llu preemption(s) (work started over), %llu resident(s) unloaded\n",
                label(r).c_str(), static_cast<unsigned long long>(r.preemptions),
                static_cast<unsigned long long>(r.residents_unloaded));
  }
}

// For a trace with models: what loading them cost under each residency.
void print_models(const std::vector<sim::SimReport>& reports) {
  if (reports.empty() || reports.front().residency.empty()) return;
  int width = 10;
  for (const sim::SimReport& r : reports)
    width = std::max(width, static_cast<int>(label(r).size()));
  std::printf("\n%-*s %10s %8s %8s %10s %9s %7s %8s %11s\n", width, "policy", "model jobs", "loads",
              "avoided", "loading", "unloaded", "in use", "dropped", "turnaround");
  for (const sim::SimReport& r : reports) {
    std::printf("%-*s %10llu %8llu %8llu %10s %9llu %7llu %8llu %11s\n", width, label(r).c_str(),
                static_cast<unsigned long long>(r.models.jobs),
                static_cast<unsigned long long>(r.models.loads),
                static_cast<unsigned long long>(r.models.loads_avoided),
                fmt("%.1fs", r.models.load_s).c_str(),
                static_cast<unsigned long long>(r.models.unloaded),
                static_cast<unsigned long long>(r.models.unloaded_in_use),
                static_cast<unsigned long long>(r.models.dropped),
                fmt("%.1fs", r.mean_turnaround_s).c_str());
  }
  std::printf(
      "(loading: seconds spent loading models; unloaded: resident models revoked for a job; "
      "in use: of those, revoked while jobs ran on them; "
      "dropped: not kept at a job's end; turnaround: mean arrival-to-end)\n");
}

}  // namespace

Command setup_simulate(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    std::string trace;
    std::string devices;
    std::string policy = "best-fit";
    double memory_limit = 0.8;
    int max_concurrent_jobs = kUnlimitedJobs;
    double reserve_after_holds = core::SchedulerConfig{}.reserve_after_holds;
    bool no_duration_backfill = false;
    bool no_fair_share = false;
    double fair_share_half_life_s = 3600;
    std::string residency;  // empty: both for a trace with models
    std::string timeline;
    bool json = false;
  };
  auto opts = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "simulate", "Replay a job trace on simulated devices and judge the scheduling policies");
  sub->add_option("--trace", opts->trace,
                  "CSV trace: arrival_s,vram_mib,duration_s[,gpus,priority,job_id,kind,user,"
                  "preemptible,resident,model,model_vram_mib,load_s]")
      ->required();
  sub->add_option("--devices", opts->devices,
                  "Simulated devices, e.g. 4x40GiB or 24GiB,80GiB (default: --simulate, then "
                  "GPUMGR_SIMULATE)");
  sub->add_option("--policy", opts->policy,
                  "fifo (strict FCFS), greedy (every waiter that fits starts, no "
                  "reservation), best-fit (default), spread, first-fit (each with backfill), "
                  "or all (side by side)");
  sub->add_option("--memory-limit", opts->memory_limit,
                  "Share of each device leases may hold (0 < F <= 1; default 0.8)");
  sub->add_option("--max-concurrent-jobs", opts->max_concurrent_jobs,
                  "Concurrency limit (default: unlimited, 2^30; traces model cluster jobs)");
  sub->add_option("--reserve-after-holds", opts->reserve_after_holds,
                  "Backfill: the head reserves devices once it has waited this many mean hold "
                  "times (default 2; 0: at once)");
  sub->add_flag("--no-duration-backfill", opts->no_duration_backfill,
                "Backfill: never start a job on the head's reserved devices because it is "
                "expected to end in time (expected holds are learned per trace kind)");
  sub->add_flag("--no-fair-share", opts->no_fair_share,
                "Serve each priority first come, first served instead of by each user's "
                "recent use (the trace's user column)");
  sub->add_option("--fair-share-half-life", opts->fair_share_half_life_s,
                  "Seconds over which a user's use counts half as much (default 3600)");
  sub->add_option("--residency", opts->residency,
                  "For a trace with models (model column): unload (load the model for every "
                  "job), resident (keep models loaded between jobs) or both (the default)");
  sub->add_option("--timeline", opts->timeline,
                  "Also write every job's arrival, start and end under each policy to this "
                  "CSV file (docs/simulate.md)");
  sub->add_flag("--json", opts->json,
                "Print JSON: an object per policy (an array of them with --policy all)");
  sub->footer(
      "Makespan is measured from time 0 to the last release; the lower bound is what no "
      "scheduler can beat (docs/simulate.md).\nExit codes: 0 ok; 1 internal failure; 2 bad "
      "arguments, trace or devices.");

  return {sub, [opts, &global]() -> int {
            std::string spec = opts->devices;
            if (spec.empty()) spec = global.simulate;
            if (spec.empty()) {
              if (const char* env = std::getenv("GPUMGR_SIMULATE"); env != nullptr) spec = env;
            }
            if (spec.empty()) {
              std::fprintf(stderr,
                           "gpumgr simulate: no devices: pass --devices SPEC, e.g. 4x40GiB\n");
              return kExitUsage;
            }
            StatusOr<std::vector<std::uint64_t>> sizes = parse_simulate_spec(spec);
            if (!sizes.ok()) {
              std::fprintf(stderr, "gpumgr simulate: --devices: %s\n",
                           sizes.status().message().c_str());
              return kExitUsage;
            }

            if (!(opts->reserve_after_holds >= 0) || !std::isfinite(opts->reserve_after_holds)) {
              std::fprintf(stderr,
                           "gpumgr simulate: --reserve-after-holds must be a number >= 0, got %g\n",
                           opts->reserve_after_holds);
              return kExitUsage;
            }
            std::vector<PolicyChoice> chosen;
            for (const PolicyChoice& p : kPolicies) {
              if (opts->policy == "all" || opts->policy == p.name) chosen.push_back(p);
            }
            if (chosen.empty()) {
              std::fprintf(stderr,
                           "gpumgr simulate: unknown policy '%s': use fifo, greedy, best-fit, "
                           "spread, first-fit or all\n",
                           opts->policy.c_str());
              return kExitUsage;
            }

            StatusOr<std::vector<sim::TraceJob>> jobs = sim::load_trace(opts->trace);
            if (!jobs.ok()) {
              std::fprintf(stderr, "gpumgr simulate: %s\n", jobs.status().message().c_str());
              return exit_code(jobs.status());
            }

            bool has_models = false;
            for (const sim::TraceJob& j : *jobs) has_models = has_models || !j.model.empty();
            std::vector<sim::Residency> residencies;
            if (opts->residency == "unload" || opts->residency == "both" ||
                (opts->residency.empty() && has_models)) {
              residencies.push_back(sim::Residency::kUnload);
            }
            if (opts->residency == "resident" || opts->residency == "both" ||
                (opts->residency.empty() && has_models)) {
              residencies.push_back(sim::Residency::kResident);
            }
            if (!opts->residency.empty() && residencies.empty()) {
              std::fprintf(stderr,
                           "gpumgr simulate: unknown residency '%s': use unload, resident or "
                           "both\n",
                           opts->residency.c_str());
              return kExitUsage;
            }
            if (!opts->residency.empty() && !has_models) {
              std::fprintf(stderr,
                           "gpumgr simulate: --residency: %s names no model (no job has a "
                           "`model` cell)\n",
                           opts->trace.c_str());
              return kExitUsage;
            }
            if (residencies.empty()) residencies.push_back(sim::Residency::kUnload);

            std::ofstream timeline;
            if (!opts->timeline.empty()) {
              timeline.open(opts->timeline, std::ios::out | std::ios::trunc);
              if (!timeline) {
                std::fprintf(stderr, "gpumgr simulate: --timeline: cannot write '%s': %s\n",
                             terminal_safe(opts->timeline).c_str(), std::strerror(errno));
                return kExitUsage;
              }
              sim::write_timeline_header(timeline);
            }

            std::vector<sim::SimReport> reports;
            const int limit = opts->max_concurrent_jobs;
            const double aging = opts->reserve_after_holds;
            const double mem = opts->memory_limit;
            const bool by = !opts->no_duration_backfill;  // duration backfill
            for (const PolicyChoice& p : chosen) {
              for (const sim::Residency residency : residencies) {
                StatusOr<sim::SimReport> report =
                    sim::replay(*jobs, *sizes, mem, p.placement, p.queue, limit, aging, by,
                                !opts->no_fair_share, opts->fair_share_half_life_s, residency);
                if (!report.ok()) {
                  std::fprintf(stderr, "gpumgr simulate: %s\n", report.status().message().c_str());
                  return exit_code(report.status());
                }
                if (timeline.is_open() && !sim::write_timeline_rows(timeline, *jobs, *report)) {
                  std::fprintf(stderr,
                               "gpumgr simulate: internal error: the %s replay's "
                               "timeline does not match the trace\n",
                               report->policy.c_str());
                  return kExitError;
                }
                report->timeline.clear();  // written or not wanted; frees memory
                reports.push_back(std::move(report).value());
              }
            }

            if (timeline.is_open()) {
              timeline.close();
              if (!timeline) {
                std::fprintf(stderr, "gpumgr simulate: --timeline: writing '%s' failed\n",
                             terminal_safe(opts->timeline).c_str());
                return kExitError;
              }
            }
            if (opts->json) {
              if (reports.size() == 1 && opts->policy != "all") {
                std::cout << to_json(reports.front()).dump(2) << "\n";
              } else {
                nlohmann::json all = nlohmann::json::array();
                for (const sim::SimReport& r : reports) all.push_back(to_json(r));
                std::cout << all.dump(2) << "\n";
              }
              return kExitOk;
            }
            // "4 x 40 GiB, 80 GiB": runs of equal sizes grouped, as a spec groups them.
            std::string pool;
            for (std::size_t i = 0; i < sizes->size();) {
              std::size_t j = i;
              while (j < sizes->size() && (*sizes)[j] == (*sizes)[i]) ++j;
              if (!pool.empty()) pool += ", ";
              if (j - i > 1) pool += std::to_string(j - i) + " x ";
              pool += format_bytes((*sizes)[i]);
              i = j;
            }
            std::printf(
                "%s: %zu jobs on %s, memory limit %g, %s\n", opts->trace.c_str(), jobs->size(),
                pool.c_str(), opts->memory_limit,
                opts->max_concurrent_jobs == kUnlimitedJobs
                    ? "no concurrency limit"
                    : ("at most " + std::to_string(opts->max_concurrent_jobs) + " concurrent jobs")
                          .c_str());
            print_table(reports);
            print_models(reports);
            print_users(reports);
            return kExitOk;
          }};
}

}  // namespace gpumgr::cli
