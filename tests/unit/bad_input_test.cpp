// Bad input (issue 2, section 4), as one table: every row is a call with a malformed or
// impossible argument, the ErrorCode it must give, a substring of the message that names the
// problem, and a check that the manager it was aimed at did not change (its leases, queue,
// devices and statistics are the same before and after; only a refused request's rejection is
// counted, where the ledger's statistics document it).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>

#include "test_util.h"

namespace gpumgr {
namespace {

using testing::local_options;
using testing::request;

// What a row's call returns, reduced to a status.
using Call = std::function<Status(Manager& m)>;

template <typename T>
Status status_of(const StatusOr<T>& s) {
  return s.ok() ? Status::Ok() : s.status();
}

Status create_with(const std::function<void(ManagerOptions&)>& edit) {
  ManagerOptions o = local_options();
  o.simulate = "2x24GiB";
  edit(o);
  return status_of(Manager::create(o));
}

Status simulate_spec(const std::string& spec) {
  // Through the option of the same name, which does what GPUMGR_SIMULATE does...
  const Status via_option = create_with([&](ManagerOptions& o) { o.simulate = spec; });
  // ...and through the parser itself, which must agree.
  const Status via_parser = status_of(parse_simulate_spec(spec));
  if (via_option.code() != via_parser.code()) {
    return Status(ErrorCode::kInternal, "option and parser disagree: " + via_option.to_string() +
                                            " vs " + via_parser.to_string());
  }
  return via_parser;
}

// Manager::create over 2x24GiB with GPUMGR_SIMULATE_PROCESSES naming a file of `contents`.
Status simulate_processes(const std::string& contents) {
  const std::string path =
      ::testing::TempDir() + "gpumgr-bad-processes-" + std::to_string(::getpid());
  std::ofstream(path, std::ios::trunc) << contents;
  testing::EnvGuard env("GPUMGR_SIMULATE_PROCESSES", path);
  const Status s = create_with([](ManagerOptions&) {});
  std::remove(path.c_str());
  return s;
}

struct Row {
  const char* name;
  Call call;
  ErrorCode code;
  const char* message_contains;
  std::uint64_t rejected_delta = 0;  // a refused request is counted in jobs_rejected
};

// The manager's state as far as a bad call could change it.
struct State {
  std::vector<std::pair<std::string, std::uint64_t>> leases;
  std::vector<std::string> queue;
  std::vector<std::uint64_t> leased;
  std::uint64_t succeeded, failed, rejected, timed_out, cancelled;
  int active, peak;
  std::uint64_t holds;
  friend bool operator==(const State&, const State&) = default;
};

State state_of(Manager& m) {
  const Snapshot s = testing::snap(m);
  State st{};
  for (const auto& l : s.leases) st.leases.emplace_back(l.job_id, l.bytes);
  for (const auto& w : s.queue) st.queue.push_back(w.job_id);
  for (const auto& d : s.devices) st.leased.push_back(d.leased_bytes);
  st.succeeded = s.stats.jobs_succeeded;
  st.failed = s.stats.jobs_failed;
  st.rejected = s.stats.jobs_rejected;
  st.timed_out = s.stats.jobs_timed_out;
  st.cancelled = s.stats.jobs_cancelled;
  st.active = s.stats.active_jobs;
  st.peak = s.stats.peak_active_jobs;
  st.holds = s.stats.hold_seconds.count;
  return st;
}

TEST(BadInputTest, EveryBadInputIsRefusedWithANamedProblemAndChangesNothing) {
  // One manager with history: a held lease, a finished job, so that "unchanged" is not the
  // trivial empty state.
  auto sim = testing::make_sim_manager({24 * kGiB, 24 * kGiB}, local_options(5, 0.8));
  ASSERT_NE(sim.manager, nullptr);
  Manager& target = *sim.manager;
  auto held = target.try_acquire(request("held", 2 * kGiB));
  ASSERT_TRUE(held.ok());
  ASSERT_TRUE(target.try_acquire(request("done", kGiB)).ok());  // released at once
  // A resident model, and one being revoked (its grace is long: it stays so).
  LeaseRequest model = request("model", kGiB);
  model.resident = "llama";
  auto resident = target.try_acquire(model);
  ASSERT_TRUE(resident.ok()) << resident.status().to_string();
  LeaseRequest gone = request("gone", kGiB);
  gone.resident = "gone";
  gone.revoke_grace_s = 3600;
  auto revoked = target.try_acquire(gone);
  ASSERT_TRUE(revoked.ok()) << revoked.status().to_string();
  ASSERT_TRUE(target.ledger()->revoke("gone").ok());

  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<Row> rows = {
      // VRAM
      {"zero VRAM", [](Manager& m) { return status_of(m.try_acquire(request("z", 0))); },
       ErrorCode::kInvalidArgument, "must be positive, got 0"},
      {"zero VRAM, blocking",
       [](Manager& m) {
         return status_of(m.acquire(request("z", 0), WaitOptions::for_seconds(5)));
       },
       ErrorCode::kInvalidArgument, "must be positive, got 0"},
      {"zero VRAM, can_admit", [](Manager& m) { return status_of(m.can_admit(0)); },
       ErrorCode::kInvalidArgument, "must be positive"},
      {"VRAM beyond every device's capacity",
       [](Manager& m) { return status_of(m.try_acquire(request("huge", 20 * kGiB))); },
       ErrorCode::kNeverFits, "can never fit: the largest device capacity is 19.2 GiB", 1},
      {"VRAM beyond every device, blocking: fails at once, not a wait",
       [](Manager& m) { return status_of(m.acquire(request("huge", 20 * kGiB), WaitOptions{})); },
       ErrorCode::kNeverFits, "can never fit", 1},
      {"more GPUs than devices",
       [](Manager& m) {
         LeaseRequest r = request("three", kGiB);
         r.gpus = 3;
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument, "gpus must be between 1 and 2"},
      {"pinned to a device that does not exist",
       [](Manager& m) {
         LeaseRequest r = request("pin", kGiB);
         r.device = 7;
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kNotFound, "device 7 does not exist"},
      {"allowed a device that does not exist",
       [](Manager& m) {
         LeaseRequest r = request("confined", kGiB);
         r.allowed_devices = {1, 5};
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kNotFound, "allowed device 5 does not exist; devices are 0..1"},
      {"allowed a device twice",
       [](Manager& m) {
         LeaseRequest r = request("confined", kGiB);
         r.allowed_devices = {0, 0};
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument, "allowed device 0 is named twice"},
      {"allowed devices and a pinned device",
       [](Manager& m) {
         LeaseRequest r = request("confined", kGiB);
         r.allowed_devices = {0, 1};
         r.device = 1;
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument, "either pinned to device 1 or given the devices it may use"},
      {"fewer allowed devices than GPUs",
       [](Manager& m) {
         LeaseRequest r = request("confined", kGiB);
         r.allowed_devices = {1};
         r.gpus = 2;
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument, "needs at least as many allowed devices, got 1 (1)"},
      {"a holder other than this process, in process",
       [](Manager& m) {
         LeaseRequest r = request("other", kGiB);
         r.holder_pid = 1;
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument, "holder_pid 1 names another process"},
      // Device selectors
      {"device cuda:99",
       [](Manager&) { return create_with([](ManagerOptions& o) { o.device = "cuda:99"; }); },
       ErrorCode::kNotFound, "'cuda:99' does not exist"},
      {"device gpu",
       [](Manager&) { return create_with([](ManagerOptions& o) { o.device = "gpu"; }); },
       ErrorCode::kInvalidArgument, "unknown device 'gpu'"},
      {"device empty",
       [](Manager&) { return create_with([](ManagerOptions& o) { o.device = ""; }); },
       ErrorCode::kInvalidArgument, "empty device"},
      {"device cuda:-1",
       [](Manager&) { return create_with([](ManagerOptions& o) { o.device = "cuda:-1"; }); },
       ErrorCode::kInvalidArgument, "'cuda:-1'"},
      {"device cuda:x",
       [](Manager&) { return create_with([](ManagerOptions& o) { o.device = "cuda:x"; }); },
       ErrorCode::kInvalidArgument, "non-negative integer"},
      // Options
      {"memory_limit 0",
       [](Manager&) { return create_with([](ManagerOptions& o) { o.memory_limit = 0; }); },
       ErrorCode::kInvalidArgument, "memory_limit must be in (0, 1], got 0"},
      {"memory_limit 1.5",
       [](Manager&) { return create_with([](ManagerOptions& o) { o.memory_limit = 1.5; }); },
       ErrorCode::kInvalidArgument, "memory_limit must be in (0, 1], got 1.5"},
      {"memory_limit NaN",
       [nan](Manager&) { return create_with([nan](ManagerOptions& o) { o.memory_limit = nan; }); },
       ErrorCode::kInvalidArgument, "memory_limit must be in (0, 1], got nan"},
      {"memory_limit negative",
       [](Manager&) { return create_with([](ManagerOptions& o) { o.memory_limit = -0.5; }); },
       ErrorCode::kInvalidArgument, "memory_limit"},
      {"max_concurrent_jobs 0",
       [](Manager&) { return create_with([](ManagerOptions& o) { o.max_concurrent_jobs = 0; }); },
       ErrorCode::kInvalidArgument, "max_concurrent_jobs must be at least 1, got 0"},
      {"max_concurrent_jobs negative",
       [](Manager&) { return create_with([](ManagerOptions& o) { o.max_concurrent_jobs = -3; }); },
       ErrorCode::kInvalidArgument, "max_concurrent_jobs must be at least 1, got -3"},
      {"config validated by make_local_ledger too",
       [](Manager&) {
         LedgerConfig c;
         c.memory_limit = 1.5;
         return status_of(make_local_ledger(
             std::make_shared<SimulatedBackend>(std::vector<std::uint64_t>{kGiB}), c));
       },
       ErrorCode::kInvalidArgument, "memory_limit must be in (0, 1], got 1.5"},
      // Job ids
      {"empty job id", [](Manager& m) { return status_of(m.try_acquire(request("", kGiB))); },
       ErrorCode::kInvalidArgument, "job id must not be empty"},
      {"empty job id, blocking",
       [](Manager& m) {
         return status_of(m.acquire(request("", kGiB), WaitOptions::for_seconds(5)));
       },
       ErrorCode::kInvalidArgument, "job id must not be empty"},
      {"duplicate job id",
       [](Manager& m) { return status_of(m.try_acquire(request("held", kGiB))); },
       ErrorCode::kAlreadyExists, "'held' is already in use"},
      {"duplicate job id, blocking",
       [](Manager& m) {
         return status_of(m.acquire(request("held", kGiB), WaitOptions::for_seconds(5)));
       },
       ErrorCode::kAlreadyExists, "'held' is already in use"},
      {"job id with a control character",
       [](Manager& m) { return status_of(m.try_acquire(request("a\nb", kGiB))); },
       ErrorCode::kInvalidArgument, "control characters"},
      {"release of an unknown job", [](Manager& m) { return m.release("ghost"); },
       ErrorCode::kNotFound, "no active lease for job 'ghost'"},
      {"cancel of a job that does not wait", [](Manager& m) { return m.cancel("held"); },
       ErrorCode::kNotFound, "no waiting request for job 'held'"},
      // GPUMGR_SIMULATE specs
      {"simulate ''", [](Manager&) { return status_of(parse_simulate_spec("")); },
       ErrorCode::kInvalidArgument, "empty device spec"},
      {"simulate 2x", [](Manager&) { return simulate_spec("2x"); }, ErrorCode::kInvalidArgument,
       "bad device spec '2x': empty size"},
      {"simulate x24GiB", [](Manager&) { return simulate_spec("x24GiB"); },
       ErrorCode::kInvalidArgument, "device count must be between 1 and 1024"},
      {"simulate 0x24GiB", [](Manager&) { return simulate_spec("0x24GiB"); },
       ErrorCode::kInvalidArgument, "device count must be between 1 and 1024"},
      {"simulate 2000x1GiB", [](Manager&) { return simulate_spec("2000x1GiB"); },
       ErrorCode::kInvalidArgument, "'2000x1GiB'"},
      {"simulate 24XB", [](Manager&) { return simulate_spec("24XB"); }, ErrorCode::kInvalidArgument,
       "unknown unit 'XB'"},
      {"simulate 24GiB,,8GiB", [](Manager&) { return simulate_spec("24GiB,,8GiB"); },
       ErrorCode::kInvalidArgument, "empty entry"},
      {"simulate 24GiB,", [](Manager&) { return simulate_spec("24GiB,"); },
       ErrorCode::kInvalidArgument, "empty entry"},
      {"simulate -1GiB", [](Manager&) { return simulate_spec("-1GiB"); },
       ErrorCode::kInvalidArgument, "bad size '-1GiB'"},
      {"simulate 0GiB", [](Manager&) { return simulate_spec("0GiB"); }, ErrorCode::kInvalidArgument,
       "cannot have 0 bytes"},
      {"simulate ax24GiB", [](Manager&) { return simulate_spec("ax24GiB"); },
       ErrorCode::kInvalidArgument, "'a' is not a device count"},
      {"GPUMGR_SIMULATE=2x in the environment",
       [](Manager&) {
         testing::EnvGuard env("GPUMGR_SIMULATE", "2x");
         ManagerOptions o = local_options();
         return status_of(Manager::create(o));
       },
       ErrorCode::kInvalidArgument, "bad device spec '2x'"},
      // Sizes
      {"size ''", [](Manager&) { return status_of(parse_size("")); }, ErrorCode::kInvalidArgument,
       "empty size"},
      {"size GiB", [](Manager&) { return status_of(parse_size("GiB")); },
       ErrorCode::kInvalidArgument, "bad size 'GiB'"},
      {"size 1e3GiB (no exponents)", [](Manager&) { return status_of(parse_size("1e3GiB")); },
       ErrorCode::kInvalidArgument, "exponents are not accepted"},
      {"size '12 GiB' (no space before the unit)",
       [](Manager&) { return status_of(parse_size("12 GiB")); }, ErrorCode::kInvalidArgument,
       "unknown unit ' GiB'"},
      {"size 99999999999999TiB overflows",
       [](Manager&) { return status_of(parse_size("99999999999999TiB")); },
       ErrorCode::kInvalidArgument, "too large"},
      {"size 2^64 overflows the integer",
       [](Manager&) { return status_of(parse_size("18446744073709551616")); },
       ErrorCode::kInvalidArgument, "too large"},
      {"size 10Mb (megabits are not bytes)", [](Manager&) { return status_of(parse_size("10Mb")); },
       ErrorCode::kInvalidArgument, "unknown unit 'Mb'"},
      {"size 10gib (units are case-sensitive)",
       [](Manager&) { return status_of(parse_size("10gib")); }, ErrorCode::kInvalidArgument,
       "unknown unit 'gib'"},
      {"size -5", [](Manager&) { return status_of(parse_size("-5")); }, ErrorCode::kInvalidArgument,
       "non-negative integer"},
      // Policies
      {"placement policy name",
       [](Manager&) { return status_of(parse_placement_policy("worst-fit")); },
       ErrorCode::kInvalidArgument, "unknown placement policy 'worst-fit'"},
      // Job kinds and learned estimates
      {"job kind with an escape sequence",
       [](Manager& m) {
         LeaseRequest r = request("k", kGiB);
         r.kind = "sdxl\x1b]0;owned\x07";
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument, "job kind must not contain control characters"},
      {"job kind too long",
       [](Manager& m) {
         LeaseRequest r = request("k", kGiB);
         r.kind = std::string(257, 'k');
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument, "job kind is 257 characters long"},
      {"empty job kind", [](Manager&) { return check_job_kind(""); }, ErrorCode::kInvalidArgument,
       "job kind must not be empty"},
      // Revocable leases
      {"resident name with control characters",
       [](Manager& m) {
         LeaseRequest r = request("r", kGiB);
         r.resident = "llama\x1b[2J";
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument, "resident name must not contain control characters"},
      {"resident name in use",
       [](Manager& m) {
         LeaseRequest r = request("another", kGiB);
         r.resident = "llama";
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kAlreadyExists, "resident 'llama' already exists"},
      {"resident name in use, blocking",
       [](Manager& m) {
         LeaseRequest r = request("another", kGiB);
         r.resident = "llama";
         return status_of(m.acquire(r, WaitOptions::for_seconds(5)));
       },
       ErrorCode::kAlreadyExists, "resident 'llama' already exists"},
      {"both preemptible and resident",
       [](Manager& m) {
         LeaseRequest r = request("both", kGiB);
         r.resident = "x";
         r.preemptible = true;
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument, "either preemptible or resident"},
      // A job beside a resident ("llama" is on device 0, "gone" is being revoked)
      {"beside no resident",
       [](Manager& m) {
         LeaseRequest r = request("b", kGiB);
         r.beside_resident = "nobody";
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kNotFound, "no resident 'nobody' to run beside"},
      {"beside no resident, blocking",
       [](Manager& m) {
         LeaseRequest r = request("b", kGiB);
         r.beside_resident = "nobody";
         return status_of(m.acquire(r, WaitOptions::for_seconds(5)));
       },
       ErrorCode::kNotFound, "no resident 'nobody' to run beside"},
      {"beside a resident being revoked",
       [](Manager& m) {
         LeaseRequest r = request("b", kGiB);
         r.beside_resident = "gone";
         return status_of(m.acquire(r, WaitOptions::for_seconds(5)));
       },
       ErrorCode::kFailedPrecondition, "resident 'gone' is being revoked"},
      {"beside name with control characters",
       [](Manager& m) {
         LeaseRequest r = request("b", kGiB);
         r.beside_resident = "llama\x1b[2J";
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument, "beside: resident name must not contain control characters"},
      {"a resident beside a resident",
       [](Manager& m) {
         LeaseRequest r = request("b", kGiB);
         r.resident = "new";
         r.beside_resident = "llama";
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument, "resident 'new' cannot run beside resident 'llama'"},
      {"beside, pinned elsewhere",
       [](Manager& m) {
         LeaseRequest r = request("b", kGiB);
         r.beside_resident = "llama";
         r.device = 1;
         return status_of(m.acquire(r, WaitOptions::for_seconds(5)));
       },
       ErrorCode::kInvalidArgument, "job pinned to device 1, but resident 'llama' is on device 0"},
      {"beside, allowed devices elsewhere",
       [](Manager& m) {
         LeaseRequest r = request("b", kGiB);
         r.beside_resident = "llama";
         r.allowed_devices = {1};
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument,
       "resident 'llama' is on device 0, outside the allowed device 1"},
      {"beside, more GPUs than the resident has",
       [](Manager& m) {
         LeaseRequest r = request("b", kGiB);
         r.beside_resident = "llama";
         r.gpus = 2;
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument, "a job on 2 GPUs cannot run beside resident 'llama'"},
      {"revoke grace NaN",
       [nan](Manager& m) {
         LeaseRequest r = request("g", kGiB);
         r.preemptible = true;
         r.revoke_grace_s = nan;
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kInvalidArgument, "revoke grace must be a finite number"},
      {"revoke grace negative",
       [](Manager& m) {
         LeaseRequest r = request("g", kGiB);
         r.preemptible = true;
         r.revoke_grace_s = -1;
         return status_of(m.acquire(r, WaitOptions::for_seconds(5)));
       },
       ErrorCode::kInvalidArgument, "revoke grace must be a finite number"},
      {"ledger revoke grace negative",
       [](Manager&) {
         LedgerConfig c;
         c.revoke_grace_s = -1;
         return validate_config(c);
       },
       ErrorCode::kInvalidArgument, "revoke grace must be a finite number"},
      {"use of a revoked resident", [](Manager& m) { return m.ledger()->touch("gone"); },
       ErrorCode::kFailedPrecondition, "resident 'gone' is being revoked"},
      {"use of a plain lease as a resident", [](Manager& m) { return m.ledger()->touch("held"); },
       ErrorCode::kFailedPrecondition, "is not a resident"},
      {"revoke of a plain lease", [](Manager& m) { return m.ledger()->revoke("held"); },
       ErrorCode::kFailedPrecondition, "cannot be revoked"},
      {"revoke twice", [](Manager& m) { return m.ledger()->revoke("gone"); },
       ErrorCode::kFailedPrecondition, "already being revoked"},
      {"revoke of an unknown job", [](Manager& m) { return m.ledger()->revoke("ghost"); },
       ErrorCode::kNotFound, "no active lease for job 'ghost'"},
      {"an estimate with no history kept",
       [](Manager& m) {
         LeaseRequest r = request("auto", 0);
         r.kind = "sdxl";
         return status_of(m.try_acquire(r));
       },
       ErrorCode::kFailedPrecondition, "no learned estimate for job kind 'sdxl'", 1},
      {"an estimate with no history kept, blocking",
       [](Manager& m) {
         LeaseRequest r = request("auto", 0);
         r.kind = "sdxl";
         return status_of(m.acquire(r, WaitOptions::for_seconds(5)));
       },
       ErrorCode::kFailedPrecondition, "give a size, or a default", 1},
      // The overuse policy
      {"overuse grace NaN",
       [nan](Manager&) {
         return create_with([nan](ManagerOptions& o) { o.overuse.grace_s = nan; });
       },
       ErrorCode::kInvalidArgument, "overuse grace must be between 0 and 86400 seconds, got nan"},
      {"overuse grace negative",
       [](Manager&) { return create_with([](ManagerOptions& o) { o.overuse.grace_s = -1; }); },
       ErrorCode::kInvalidArgument, "overuse grace must be between 0 and 86400 seconds, got -1"},
      {"overuse tolerance absurd",
       [](Manager&) {
         return create_with([](ManagerOptions& o) { o.overuse.tolerance_percent = 1e6; });
       },
       ErrorCode::kInvalidArgument, "overuse tolerance must be between 0 and 1000 percent"},
      {"terminate in-process",
       [](Manager&) {
         return create_with(
             [](ManagerOptions& o) { o.overuse.policy = OverusePolicy::kTerminate; });
       },
       ErrorCode::kInvalidArgument, "supports --on-overuse report only"},
      {"overuse policy name", [](Manager&) { return status_of(parse_overuse_policy("kill")); },
       ErrorCode::kInvalidArgument, "unknown overuse policy 'kill': use report or terminate"},
      {"history in a folder that does not exist",
       [](Manager&) {
         return create_with([](ManagerOptions& o) { o.history_path = "/nonexistent/gpumgr/h.db"; });
       },
       ErrorCode::kFailedPrecondition, "/nonexistent/gpumgr"},
      // GPUMGR_SIMULATE_PROCESSES files
      {"processes file: device index out of range",
       [](Manager&) { return simulate_processes("0 100 1GiB\n5 100 1GiB\n"); },
       ErrorCode::kInvalidArgument, "line 2: device 5 does not exist"},
      {"processes file: device not a number",
       [](Manager&) { return simulate_processes("gpu0 100 1GiB\n"); }, ErrorCode::kInvalidArgument,
       "line 1: device 'gpu0' is not a device index"},
      {"processes file: pid 0", [](Manager&) { return simulate_processes("# x\n0 0 1GiB\n"); },
       ErrorCode::kInvalidArgument, "line 2: pid '0' is not a positive integer"},
      {"processes file: pid not a number",
       [](Manager&) { return simulate_processes("0 worker 1GiB\n"); }, ErrorCode::kInvalidArgument,
       "line 1: pid 'worker' is not a positive integer"},
      {"processes file: bad size", [](Manager&) { return simulate_processes("0 100 1e3GiB\n"); },
       ErrorCode::kInvalidArgument, "line 1: bad size '1e3GiB'"},
      {"processes file: missing field", [](Manager&) { return simulate_processes("0 100\n"); },
       ErrorCode::kInvalidArgument, "line 1: missing field SIZE"},
      {"processes file: extra field",
       [](Manager&) { return simulate_processes("0 100 1GiB 2GiB\n"); },
       ErrorCode::kInvalidArgument, "line 1: extra field '2GiB'"},
      {"processes file: the same device and pid twice",
       [](Manager&) { return simulate_processes("0 100 1GiB\n0 100 2GiB\n"); },
       ErrorCode::kInvalidArgument, "line 2: device 0 pid 100 is already listed on line 1"},
  };

  for (const Row& row : rows) {
    SCOPED_TRACE(row.name);
    const State before = state_of(target);
    const Status s = row.call(target);
    EXPECT_EQ(s.code(), row.code) << s.to_string();
    EXPECT_NE(s.message().find(row.message_contains), std::string::npos)
        << "message: " << s.message() << "\nexpected to contain: " << row.message_contains;
    State after = state_of(target);
    EXPECT_EQ(after.rejected, before.rejected + row.rejected_delta);
    after.rejected = before.rejected;
    EXPECT_TRUE(after == before) << "state changed";
  }
  EXPECT_TRUE(held->held());
}

TEST(SizeTest, ValidSizesParseExactly) {
  // The positive side of the table above: each unit's factor, and a bare integer in MiB.
  const std::vector<std::pair<std::string, std::uint64_t>> cases = {
      {"6000", 6000 * kMiB},
      {"0", 0},
      {"100B", 100},
      {"3KiB", 3 * kKiB},
      {"512MiB", 512 * kMiB},
      {"24GiB", 24 * kGiB},
      {"2TiB", 2 * kTiB},
      {"7KB", 7000},
      {"512MB", 512000000},
      {"40GB", 40000000000ULL},
      {"1TB", 1000000000000ULL},
      {"16777215TiB", 16777215ULL * kTiB},
  };
  for (const auto& [text, bytes] : cases) {
    auto parsed = parse_size(text);
    ASSERT_TRUE(parsed.ok()) << text << ": " << parsed.status().to_string();
    EXPECT_EQ(*parsed, bytes) << text;
  }
  EXPECT_EQ(parse_size("16777216TiB").status().code(), ErrorCode::kInvalidArgument);  // 2^64
}

TEST(SizeTest, SimulateSpecsParseInOrder) {
  auto two = parse_simulate_spec("2x24GiB");
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(*two, (std::vector<std::uint64_t>{24 * kGiB, 24 * kGiB}));
  auto mixed = parse_simulate_spec("24GiB,80GiB,3x8000");
  ASSERT_TRUE(mixed.ok());
  EXPECT_EQ(*mixed, (std::vector<std::uint64_t>{24 * kGiB, 80 * kGiB, 8000 * kMiB, 8000 * kMiB,
                                                8000 * kMiB}));
}

TEST(SizeTest, FormatBytesUsesBinaryUnits) {
  EXPECT_EQ(format_bytes(100), "100 B");
  EXPECT_EQ(format_bytes(512 * kMiB), "512 MiB");
  EXPECT_EQ(format_bytes(20615843020ULL), "19.2 GiB");
  EXPECT_EQ(format_bytes(24 * kGiB), "24 GiB");
}

}  // namespace
}  // namespace gpumgr
