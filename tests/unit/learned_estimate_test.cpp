// Learned estimates through the in-process ledger: a lease of a kind records its measured
// peak and hold time when it ends; a request with bytes = 0 and that kind asks for the
// documented quantile (state/kind_history.h) once enough runs were measured, falls back to
// its default, or fails naming the kind; the history outlives the ledger.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>

#include "core/local_ledger.h"
#include "gpumgr/backends.h"
#include "gpumgr/units.h"
#include "state/kind_history.h"

namespace gpumgr::core {
namespace {

constexpr std::uint32_t kHolder = 5'000'101;  // no such process

class LearnedEstimate : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "gpumgr-estimates-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    sim_ = std::make_shared<SimulatedBackend>(std::vector<std::uint64_t>{80 * kGiB});
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::shared_ptr<LocalLedger> ledger(bool with_history = true) {
    LedgerConfig c;
    c.poll_interval = std::chrono::milliseconds(10);
    if (with_history) c.history_path = dir_ + "/history.db";
    auto l = LocalLedger::create(sim_, c);
    EXPECT_TRUE(l.ok()) << l.status().to_string();
    return l.ok() ? l.value() : nullptr;
  }

  // One run of `kind` whose holder peaks at `peak` (measured at a refresh) and ends.
  void run(LocalLedger& l, const std::string& kind, std::uint64_t lease, std::uint64_t peak) {
    LeaseRequest r;
    r.job_id = "run-" + std::to_string(++runs_);
    r.bytes = lease;
    r.kind = kind;
    ASSERT_TRUE(l.try_acquire_as(r, Holder{kHolder, 1000}).ok());
    ASSERT_TRUE(sim_->set_process_usage(0, kHolder, peak).ok());
    ASSERT_TRUE(l.refresh().ok());
    ASSERT_TRUE(sim_->set_process_usage(0, kHolder, peak / 2).ok());  // past the peak
    ASSERT_TRUE(l.refresh().ok());
    ASSERT_TRUE(l.release_as(r.job_id, JobOutcome::kSucceeded, 1000).ok());
    ASSERT_TRUE(sim_->set_process_usage(0, kHolder, 0).ok());
  }

  static LeaseRequest automatic(const std::string& job, const std::string& kind,
                                std::uint64_t fallback = 0) {
    LeaseRequest r;
    r.job_id = job;
    r.kind = kind;
    r.default_bytes = fallback;
    return r;
  }

  std::string dir_;
  std::shared_ptr<SimulatedBackend> sim_;
  int runs_ = 0;
};

TEST_F(LearnedEstimate, AfterEnoughRunsAKindAsksForItsP95PlusTheMargin) {
  auto l = ledger();
  ASSERT_TRUE(l);
  // Peaks 1..5 GiB (in a shuffled order): p95 of five by nearest rank is the largest, 5 GiB.
  for (const int g : {3, 1, 5, 2}) run(*l, "sdxl", 8 * kGiB, static_cast<std::uint64_t>(g) * kGiB);
  auto early = l->try_acquire_as(automatic("too-early", "sdxl"), Holder{kHolder, 1000});
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(early.status().message().find("'sdxl'"), std::string::npos) << early.status().message();
  EXPECT_NE(early.status().message().find("4 measured runs"), std::string::npos)
      << early.status().message();

  run(*l, "sdxl", 8 * kGiB, 4 * kGiB);
  auto lease = l->try_acquire_as(automatic("auto-1", "sdxl"), Holder{kHolder, 1000});
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  // 5 GiB + 10% = 5632 MiB exactly (a whole MiB already).
  EXPECT_EQ(lease->bytes, 5632 * kMiB);
  EXPECT_EQ(lease->kind, "sdxl");
  EXPECT_NE(lease->estimate.find("learned from 5 runs"), std::string::npos) << lease->estimate;
  // The snapshot shows the same note with the lease.
  const Snapshot s = l->snapshot().value();
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_EQ(s.leases[0].estimate, lease->estimate);
  EXPECT_EQ(s.leases[0].bytes, 5632 * kMiB);

  auto all = l->estimates();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].kind, "sdxl");
  EXPECT_EQ((*all)[0].runs, 5u);
  EXPECT_EQ((*all)[0].peak_max_bytes, 5 * kGiB);
  EXPECT_EQ((*all)[0].peak_p50_bytes, 3 * kGiB);
  EXPECT_EQ((*all)[0].estimate_bytes, 5632 * kMiB);
}

TEST_F(LearnedEstimate, TooFewRunsFallBackToTheDefaultAndSaySo) {
  auto l = ledger();
  ASSERT_TRUE(l);
  run(*l, "tts", 2 * kGiB, kGiB);
  auto lease = l->try_acquire_as(automatic("with-default", "tts", 3 * kGiB), Holder{kHolder, 1000});
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  EXPECT_EQ(lease->bytes, 3 * kGiB);
  EXPECT_EQ(lease->estimate.rfind("default " + format_bytes(3 * kGiB), 0), 0u) << lease->estimate;
  EXPECT_NE(lease->estimate.find("1 measured run"), std::string::npos) << lease->estimate;

  auto unknown = l->try_acquire_as(automatic("never-seen", "nerf"), Holder{kHolder, 1000});
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(unknown.status().message().find("'nerf' has no recorded runs"), std::string::npos)
      << unknown.status().message();
}

TEST_F(LearnedEstimate, TheHistoryOutlivesTheLedger) {
  {
    auto l = ledger();
    ASSERT_TRUE(l);
    for (int i = 1; i <= 6; ++i) run(*l, "shape", 20 * kGiB, static_cast<std::uint64_t>(i) * kGiB);
  }
  auto again = ledger();
  ASSERT_TRUE(again);
  auto lease = again->try_acquire_as(automatic("after", "shape"), Holder{kHolder, 1000});
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  // p95 of 1..6 GiB by nearest rank: rank ceil(5.7) = 6: 6 GiB; + 10%, rounded up to a MiB.
  const std::uint64_t expected = (6 * kGiB * 110 / 100 + kMiB - 1) / kMiB * kMiB;
  EXPECT_EQ(lease->bytes, expected);
  ASSERT_TRUE(again->forget_kind("shape").ok());
  EXPECT_EQ(again->forget_kind("shape").code(), ErrorCode::kNotFound);
}

TEST_F(LearnedEstimate, WithoutAHistoryAKindCanStillBeNamedButNotEstimated) {
  auto l = ledger(false);
  ASSERT_TRUE(l);
  LeaseRequest sized;
  sized.job_id = "sized";
  sized.bytes = kGiB;
  sized.kind = "sdxl";
  EXPECT_TRUE(l->try_acquire_as(sized, Holder{kHolder, 1000}).ok());
  auto lease = l->try_acquire_as(automatic("auto", "sdxl"), Holder{kHolder, 1000});
  ASSERT_FALSE(lease.ok());
  EXPECT_NE(lease.status().message().find("no history"), std::string::npos)
      << lease.status().message();
  EXPECT_TRUE(l->estimates().value().empty());
}

TEST_F(LearnedEstimate, BadKindsAreRefusedBeforeAnyLookUp) {
  auto l = ledger();
  ASSERT_TRUE(l);
  for (const std::string& bad :
       {std::string("a\x1b]0;x\x07"), std::string("tab\there"), std::string(300, 'k')}) {
    auto lease = l->try_acquire_as(automatic("bad", bad), Holder{kHolder, 1000});
    ASSERT_FALSE(lease.ok());
    EXPECT_EQ(lease.status().code(), ErrorCode::kInvalidArgument) << lease.status().to_string();
    LeaseRequest sized;
    sized.job_id = "bad-sized";
    sized.bytes = kGiB;
    sized.kind = bad;
    EXPECT_EQ(l->try_acquire_as(sized, Holder{kHolder, 1000}).status().code(),
              ErrorCode::kInvalidArgument);
  }
  EXPECT_EQ(check_job_kind("").code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(l->snapshot().value().leases.empty());
}

TEST_F(LearnedEstimate, AWaitingRequestKeepsItsNoteUntilGranted) {
  auto l = ledger();
  ASSERT_TRUE(l);
  for (int i = 0; i < 5; ++i) run(*l, "big", 40 * kGiB, 40 * kGiB);
  LeaseRequest blocker;
  blocker.job_id = "blocker";
  blocker.bytes = 40 * kGiB;
  ASSERT_TRUE(l->try_acquire_as(blocker, Holder{kHolder + 1, 1000}).ok());
  std::optional<StatusOr<LeaseInfo>> got;
  std::mutex mu;
  l->acquire_async(automatic("waits", "big"), Holder{kHolder, 1000}, std::nullopt,
                   [&](StatusOr<LeaseInfo> r) {
                     std::lock_guard lock(mu);
                     got.emplace(std::move(r));
                   });
  {
    std::lock_guard lock(mu);
    EXPECT_FALSE(got.has_value());  // 44 GiB does not fit beside 40 GiB in 64 GiB
  }
  ASSERT_TRUE(l->release_as("blocker", JobOutcome::kSucceeded, 1000).ok());
  std::lock_guard lock(mu);
  ASSERT_TRUE(got.has_value());
  ASSERT_TRUE(got->ok()) << got->status().to_string();
  EXPECT_EQ((*got)->bytes, 44 * kGiB);
  EXPECT_NE((*got)->estimate.find("learned from 5 runs"), std::string::npos) << (*got)->estimate;
}

}  // namespace
}  // namespace gpumgr::core
