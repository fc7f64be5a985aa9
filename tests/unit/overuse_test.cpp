// Leases meet reality: what each lease's holder uses is measured, a holder that outgrows its
// lease takes room from everyone else (admission counts max(leased, used)), overuse is an
// event, and the `terminate` policy ends a holder that stays over. The holders here are pids
// the ledger is told about (try_acquire_as), scripted on simulated devices.
#include "core/overuse.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <future>
#include <mutex>
#include <vector>

#include "core/local_ledger.h"
#include "gpumgr/backends.h"
#include "gpumgr/manager.h"
#include "gpumgr/units.h"
#include "test_util.h"

namespace gpumgr::core {
namespace {

using gpumgr::testing::kGenerous;
using gpumgr::testing::wait_until;

constexpr std::uint64_t k24GiB = 24 * kGiB;
// Pids no process has here (above the kernel's pid_max of 4194304): /proc knows none of
// them, so they have no ancestors and no descendants.
constexpr std::uint32_t kHolderA = 5'000'001;
constexpr std::uint32_t kHolderB = 5'000'002;

LeaseRequest req(std::string job, std::uint64_t bytes) {
  LeaseRequest r;
  r.job_id = std::move(job);
  r.bytes = bytes;
  return r;
}

LedgerConfig fast_config() {
  LedgerConfig c;
  c.max_concurrent_jobs = 8;
  c.poll_interval = std::chrono::milliseconds(10);
  return c;
}

struct Fixture {
  std::shared_ptr<SimulatedBackend> sim;
  std::shared_ptr<LocalLedger> ledger;
};

Fixture make(std::vector<std::uint64_t> sizes, LedgerConfig config = fast_config()) {
  Fixture f;
  f.sim = std::make_shared<SimulatedBackend>(std::move(sizes));
  auto l = LocalLedger::create(f.sim, config);
  EXPECT_TRUE(l.ok()) << l.status().to_string();
  if (l.ok()) f.ledger = l.value();
  return f;
}

const LeaseInfo* find_lease(const Snapshot& s, const std::string& job) {
  for (const auto& l : s.leases) {
    if (l.job_id == job) return &l;
  }
  return nullptr;
}

// The scenario of the issue: one device of 24 GiB at limit 0.8 (capacity 19.2 GiB); job A
// leases 4 GiB and its process uses 14 GiB. Before overuse counted, B's 12 GiB was admitted
// (15.2 GiB admissible): 26 GiB on a 24 GiB card.
TEST(Overuse, AHolderOverItsLeaseTakesRoomFromEveryone) {
  auto f = make({k24GiB});
  ASSERT_TRUE(f.ledger);
  ASSERT_TRUE(f.ledger->try_acquire_as(req("A", 4 * kGiB), Holder{kHolderA, 1000}).ok());
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 14 * kGiB).ok());
  ASSERT_TRUE(f.ledger->refresh().ok());

  const Snapshot s = f.ledger->snapshot().value();
  const std::uint64_t capacity = gpumgr::testing::capacity_of(k24GiB, 4, 5);
  EXPECT_EQ(s.devices[0].leased_bytes, 4 * kGiB);
  EXPECT_EQ(s.devices[0].foreign_bytes, 0u);  // A's memory is A's, not outside use
  EXPECT_EQ(s.devices[0].overuse_bytes, 10 * kGiB);
  EXPECT_EQ(s.devices[0].admissible_bytes, capacity - 14 * kGiB);  // 5.2 GiB

  auto b = f.ledger->try_acquire_as(req("B", 12 * kGiB), Holder{kHolderB, 1000});
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), ErrorCode::kResourceExhausted) << b.status().to_string();
  // What does fit is still granted: 5 GiB of the 5.2 left.
  EXPECT_TRUE(f.ledger->try_acquire_as(req("C", 5 * kGiB), Holder{kHolderB, 1000}).ok());
}

TEST(Overuse, AWaiterStartsByItselfWhenTheOveruseFalls) {
  auto f = make({k24GiB});
  ASSERT_TRUE(f.ledger);
  ASSERT_TRUE(f.ledger->try_acquire_as(req("A", 4 * kGiB), Holder{kHolderA, 1000}).ok());
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 14 * kGiB).ok());
  ASSERT_TRUE(f.ledger->refresh().ok());

  std::promise<StatusOr<LeaseInfo>> granted;
  auto result = granted.get_future();
  f.ledger->acquire_async(req("B", 12 * kGiB), Holder{kHolderB, 1000}, std::nullopt,
                          [&granted](StatusOr<LeaseInfo> r) { granted.set_value(std::move(r)); });
  ASSERT_TRUE(wait_until([&] { return f.ledger->snapshot().value().queue.size() == 1; }));
  // Several polls later it still waits: A still uses 14 GiB.
  ASSERT_TRUE(wait_until([&] { return f.sim->query_count() > 20; }));
  EXPECT_EQ(result.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);

  // A's use drops; nobody calls the ledger: its own polling must grant B.
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 3 * kGiB).ok());
  ASSERT_EQ(result.wait_for(kGenerous), std::future_status::ready);
  auto lease = result.get();
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  EXPECT_EQ(lease->job_id, "B");
}

TEST(Overuse, EachLeaseShowsWhatItsHolderUsesNowAndAtPeak) {
  auto f = make({k24GiB, k24GiB});
  ASSERT_TRUE(f.ledger);
  LeaseRequest two = req("pair", 2 * kGiB);
  two.gpus = 2;
  auto lease = f.ledger->try_acquire_as(two, Holder{kHolderA, 1000});
  ASSERT_TRUE(lease.ok());
  EXPECT_TRUE(lease->usage.empty());  // nothing measured at grant time: not a zero
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 3 * kGiB).ok());
  ASSERT_TRUE(f.sim->set_process_usage(1, kHolderA, 1 * kGiB).ok());
  ASSERT_TRUE(f.ledger->refresh().ok());
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 1 * kGiB).ok());

  const Snapshot s = f.ledger->snapshot().value();
  const LeaseInfo* l = find_lease(s, "pair");
  ASSERT_NE(l, nullptr);
  ASSERT_EQ(l->usage.size(), 2u);
  EXPECT_EQ(l->usage[0].device, l->devices[0]);
  EXPECT_EQ(l->usage[1].device, l->devices[1]);
  for (const DeviceUse& u : l->usage) {
    ASSERT_TRUE(u.used_bytes && u.peak_used_bytes);
    if (u.device == 0) {
      EXPECT_EQ(*u.used_bytes, 1 * kGiB);
      EXPECT_EQ(*u.peak_used_bytes, 3 * kGiB);  // the earlier poll's figure
    } else {
      EXPECT_EQ(*u.used_bytes, 1 * kGiB);
      EXPECT_EQ(*u.peak_used_bytes, 1 * kGiB);
    }
  }
  // 3 GiB on a 2 GiB lease was overuse at that poll (device 0): an episode was counted and
  // it ended when the use fell back to 1 GiB.
  EXPECT_EQ(s.stats.overuse_events, 1u);
  EXPECT_FALSE(l->overused);
  EXPECT_EQ(s.devices[0].overuse_bytes, 0u);
}

TEST(Overuse, AHoldersUseIsSplitBetweenItsLeasesBySize) {
  auto f = make({k24GiB});
  ASSERT_TRUE(f.ledger);
  ASSERT_TRUE(f.ledger->try_acquire_as(req("small", 2 * kGiB), Holder{kHolderA, 1000}).ok());
  ASSERT_TRUE(f.ledger->try_acquire_as(req("large", 6 * kGiB), Holder{kHolderA, 1000}).ok());
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 12 * kGiB).ok());
  const Snapshot s = f.ledger->snapshot().value();
  EXPECT_EQ(find_lease(s, "small")->usage.at(0).used_bytes, 3 * kGiB);
  EXPECT_EQ(find_lease(s, "large")->usage.at(0).used_bytes, 9 * kGiB);
  EXPECT_EQ(s.devices[0].overuse_bytes, 4 * kGiB);  // 12 used on 8 leased
  EXPECT_TRUE(find_lease(s, "small")->overused);
  EXPECT_TRUE(find_lease(s, "large")->overused);
}

// A backend that lists no processes (the CPU device; NVML in some containers): use is
// unknown, never 0.
class NoProcessesBackend final : public DeviceBackend {
 public:
  BackendInfo info() const override { return {"test", "", "", ""}; }
  StatusOr<std::vector<DeviceInfo>> query() override {
    DeviceInfo d;
    d.kind = DeviceKind::kGpu;
    d.uuid = "GPU-test";
    d.total_bytes = k24GiB;
    d.used_bytes = 5 * kGiB;
    d.free_bytes = k24GiB - d.used_bytes;
    d.processes_known = false;
    return std::vector<DeviceInfo>{d};
  }
};

TEST(Overuse, UseIsUnknownWhereTheBackendListsNoProcesses) {
  auto ledger = LocalLedger::create(std::make_shared<NoProcessesBackend>(), fast_config());
  ASSERT_TRUE(ledger.ok());
  ASSERT_TRUE((*ledger)->try_acquire_as(req("job", 4 * kGiB), Holder{kHolderA, 1000}).ok());
  const Snapshot s = (*ledger)->snapshot().value();
  ASSERT_EQ(s.leases.size(), 1u);
  ASSERT_EQ(s.leases[0].usage.size(), 1u);
  EXPECT_FALSE(s.leases[0].usage[0].used_bytes.has_value());
  EXPECT_FALSE(s.leases[0].usage[0].peak_used_bytes.has_value());
  EXPECT_EQ(s.devices[0].foreign_bytes, 5 * kGiB);  // as before: conservative
  EXPECT_EQ(s.devices[0].overuse_bytes, 0u);
}

TEST(Overuse, ADescendantsMemoryCountsForItsHolder) {
  auto f = make({k24GiB});
  ASSERT_TRUE(f.ledger);
  const pid_t child = ::fork();
  if (child == 0) {
    ::pause();
    ::_exit(0);
  }
  ASSERT_GT(child, 0);
  const auto self = static_cast<std::uint32_t>(::getpid());
  ASSERT_TRUE(f.ledger->try_acquire_as(req("parent", 2 * kGiB), Holder{self, 0}).ok());
  ASSERT_TRUE(f.sim->set_process_usage(0, static_cast<std::uint32_t>(child), 5 * kGiB).ok());
  const Snapshot s = f.ledger->snapshot().value();
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  EXPECT_EQ(find_lease(s, "parent")->usage.at(0).used_bytes, 5 * kGiB);
  EXPECT_EQ(s.devices[0].foreign_bytes, 0u);
  EXPECT_EQ(s.devices[0].overuse_bytes, 3 * kGiB);
}

TEST(Overuse, TheToleranceDecidesWhatIsAnEventNotWhatAdmissionCounts) {
  auto f = make({k24GiB});
  ASSERT_TRUE(f.ledger);
  std::mutex mu;
  std::vector<LeaseEvent> events;
  f.ledger->set_event_handler([&](const LeaseEvent& e) {
    std::lock_guard lock(mu);
    events.push_back(e);
  });
  ASSERT_TRUE(f.ledger->try_acquire_as(req("job", 10 * kGiB), Holder{kHolderA, 1000}).ok());
  // 4% over (the default tolerance is 5%): counted for admission, not an event.
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 10 * kGiB + 400 * kMiB).ok());
  ASSERT_TRUE(f.ledger->refresh().ok());
  Snapshot s = f.ledger->snapshot().value();
  EXPECT_EQ(s.devices[0].overuse_bytes, 400 * kMiB);
  EXPECT_FALSE(s.leases[0].overused);
  EXPECT_EQ(s.stats.overuse_events, 0u);
  // 10% over: an event, once however many polls see it.
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 11 * kGiB).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(f.ledger->refresh().ok());
  s = f.ledger->snapshot().value();
  EXPECT_TRUE(s.leases[0].overused);
  EXPECT_EQ(s.stats.overuse_events, 1u);
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 9 * kGiB).ok());
  ASSERT_TRUE(f.ledger->refresh().ok());
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 12 * kGiB).ok());
  ASSERT_TRUE(f.ledger->refresh().ok());
  s = f.ledger->snapshot().value();
  EXPECT_EQ(s.stats.overuse_events, 2u);  // a second episode

  std::lock_guard lock(mu);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events[0].kind, LeaseEvent::Kind::kOveruseStarted);
  EXPECT_EQ(events[0].job_id, "job");
  EXPECT_EQ(events[0].pid, kHolderA);
  EXPECT_EQ(events[0].uid, 1000u);
  EXPECT_EQ(events[0].leased_bytes, 10 * kGiB);
  EXPECT_EQ(events[0].used_bytes, 11 * kGiB);
  EXPECT_NE(events[0].message.find("used " + format_bytes(11 * kGiB) + " of " +
                                   format_bytes(10 * kGiB) + " on device 0"),
            std::string::npos)
      << events[0].message;
  EXPECT_EQ(events[1].kind, LeaseEvent::Kind::kOveruseEnded);
  EXPECT_EQ(events[2].kind, LeaseEvent::Kind::kOveruseStarted);
}

// The signals the overuse policy sends, recorded instead of sent.
struct Signals {
  std::mutex mu;
  std::vector<std::pair<std::uint32_t, int>> sent;
  std::size_t count() {
    std::lock_guard lock(mu);
    return sent.size();
  }
};

std::shared_ptr<Signals> record_signals(LocalLedger& ledger) {
  auto signals = std::make_shared<Signals>();
  ledger.set_signaller([signals](std::uint32_t pid, int sig) {
    std::lock_guard lock(signals->mu);
    signals->sent.emplace_back(pid, sig);
    return 1;
  });
  return signals;
}

TEST(Overuse, TerminateSignalsAfterTheGraceThenKillsAndReleasesAsFailed) {
  LedgerConfig config = fast_config();
  config.overuse = {OverusePolicy::kTerminate, 0.2, 5};
  auto f = make({k24GiB}, config);
  ASSERT_TRUE(f.ledger);
  auto signals = record_signals(*f.ledger);
  ASSERT_TRUE(f.ledger->try_acquire_as(req("greedy", 4 * kGiB), Holder{kHolderA, 1000}).ok());
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 8 * kGiB).ok());
  const auto over_at = std::chrono::steady_clock::now();
  ASSERT_TRUE(f.ledger->refresh().ok());
  EXPECT_EQ(signals->count(), 0u);  // not before the grace

  // The housekeeper's polls do the rest; no call from outside.
  ASSERT_TRUE(wait_until([&] { return f.ledger->snapshot().value().leases.empty(); }));
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - over_at).count();
  {
    std::lock_guard lock(signals->mu);
    ASSERT_EQ(signals->sent.size(), 2u);
    EXPECT_EQ(signals->sent[0], std::make_pair(kHolderA, SIGTERM));
    EXPECT_EQ(signals->sent[1], std::make_pair(kHolderA, SIGKILL));
  }
  // Two grace periods, not much more (polls are 10 ms apart).
  EXPECT_GE(took, 0.4);
  EXPECT_LT(took, 0.4 + 5.0);
  const Snapshot s = f.ledger->snapshot().value();
  EXPECT_EQ(s.stats.jobs_failed, 1u);
  EXPECT_EQ(s.stats.overuse_terminations, 1u);
  EXPECT_EQ(s.devices[0].leased_bytes, 0u);
}

TEST(Overuse, TerminateShowsWhatItDoesOnTheLease) {
  LedgerConfig config = fast_config();
  config.overuse = {OverusePolicy::kTerminate, 1.0, 5};
  auto f = make({k24GiB}, config);
  ASSERT_TRUE(f.ledger);
  auto signals = record_signals(*f.ledger);
  ASSERT_TRUE(f.ledger->try_acquire_as(req("g", 4 * kGiB), Holder{kHolderA, 1000}).ok());
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 8 * kGiB).ok());
  // Between the SIGTERM (after one grace) and the SIGKILL (after another), the lease says
  // what is happening to it.
  ASSERT_TRUE(wait_until([&] { return signals->count() >= 1; }));
  const Snapshot s = f.ledger->snapshot().value();
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_EQ(s.leases[0].enforcement, "terminating: exceeded its lease: used " +
                                         format_bytes(8 * kGiB) + " of " + format_bytes(4 * kGiB) +
                                         " on device 0")
      << s.leases[0].enforcement;
  EXPECT_EQ(s.stats.overuse_terminations, 1u);
  EXPECT_TRUE(s.leases[0].overused);
}

TEST(Overuse, ReportNeverSignals) {
  LedgerConfig config = fast_config();
  config.overuse = {OverusePolicy::kReport, 0, 0};
  auto f = make({k24GiB}, config);
  ASSERT_TRUE(f.ledger);
  auto signals = record_signals(*f.ledger);
  ASSERT_TRUE(f.ledger->try_acquire_as(req("greedy", 4 * kGiB), Holder{kHolderA, 1000}).ok());
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 20 * kGiB).ok());
  ASSERT_TRUE(wait_until([&] { return f.sim->query_count() > 30; }));
  EXPECT_EQ(signals->count(), 0u);
  const Snapshot s = f.ledger->snapshot().value();
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_TRUE(s.leases[0].overused);
  EXPECT_GT(s.leases[0].overused_s, 0.0);
}

TEST(Overuse, HeldLeasesArePolledWithNobodyWaiting) {
  auto f = make({k24GiB});
  ASSERT_TRUE(f.ledger);
  ASSERT_TRUE(f.ledger->try_acquire_as(req("job", 4 * kGiB), Holder{kHolderA, 1000}).ok());
  const std::uint64_t before = f.sim->query_count();
  // The housekeeper reads the backend every poll interval (10 ms) while a lease is held.
  EXPECT_TRUE(wait_until([&] { return f.sim->query_count() >= before + 5; }));
  // ... and so sees a holder go over without any call.
  ASSERT_TRUE(f.sim->set_process_usage(0, kHolderA, 8 * kGiB).ok());
  ASSERT_TRUE(wait_until([&] {
    // Read the figure without a snapshot (which would refresh by itself).
    const std::uint64_t q = f.sim->query_count();
    return q > before + 10;
  }));
  // The episode was counted by those polls; the snapshot below only reads it.
  EXPECT_EQ(f.ledger->snapshot().value().stats.overuse_events, 1u);
}

TEST(Overuse, BadPolicySettingsAreRefusedByName) {
  const struct {
    OveruseConfig config;
    const char* names;
  } cases[] = {
      {{OverusePolicy::kReport, -1, 5}, "grace"},
      {{OverusePolicy::kReport, std::nan(""), 5}, "grace"},
      {{OverusePolicy::kReport, 1e9, 5}, "grace"},
      {{OverusePolicy::kReport, 10, -0.5}, "tolerance"},
      {{OverusePolicy::kReport, 10, std::nan("")}, "tolerance"},
      {{OverusePolicy::kReport, 10, 1e6}, "tolerance"},
  };
  for (const auto& c : cases) {
    LedgerConfig config;
    config.overuse = c.config;
    const Status s = validate_config(config);
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(s.message().find(c.names), std::string::npos) << s.message();
    auto ledger = LocalLedger::create(
        std::make_shared<SimulatedBackend>(std::vector<std::uint64_t>{k24GiB}), config);
    EXPECT_FALSE(ledger.ok());
  }
  EXPECT_EQ(parse_overuse_policy("kill").status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(parse_overuse_policy("terminate").value(), OverusePolicy::kTerminate);
}

TEST(Overuse, TheInProcessManagerRefusesTerminate) {
  ManagerOptions o = gpumgr::testing::local_options();
  o.overuse.policy = OverusePolicy::kTerminate;
  auto m =
      Manager::create(o, std::make_shared<SimulatedBackend>(std::vector<std::uint64_t>{k24GiB}));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("report only"), std::string::npos) << m.status().message();
}

TEST(OveruseRule, EpisodesAndTheGraceOnAVirtualClock) {
  const OveruseConfig config{OverusePolicy::kTerminate, 10, 5};
  constexpr TimeNs kS = 1'000'000'000;
  OveruseEpisode e;
  EXPECT_TRUE(step_overuse(e, true, 0, config).started);
  EXPECT_FALSE(step_overuse(e, true, 10 * kS - 1, config).terminate);
  EXPECT_TRUE(step_overuse(e, true, 10 * kS, config).terminate);
  EXPECT_FALSE(step_overuse(e, true, 20 * kS - 1, config).kill);
  // Back under after SIGTERM: still killed at the end of the second grace.
  const OveruseStep under = step_overuse(e, false, 15 * kS, config);
  EXPECT_TRUE(under.ended);
  EXPECT_TRUE(step_overuse(e, false, 20 * kS, config).kill);
  EXPECT_TRUE(e.ever);

  EXPECT_FALSE(exceeds_lease(105, 100, 5));
  EXPECT_TRUE(exceeds_lease(106, 100, 5));
  EXPECT_FALSE(exceeds_lease(100, 100, 0));
  EXPECT_TRUE(exceeds_lease(101, 100, 0));
  // Sizes near 2^64 are compared without overflow.
  EXPECT_FALSE(exceeds_lease(~std::uint64_t{0}, ~std::uint64_t{0} - 1, 5));
}

}  // namespace
}  // namespace gpumgr::core
