// Memory used by a process that holds a lease is covered by the lease, not counted as
// outside use; it becomes outside use again when the lease is released.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/local_ledger.h"
#include "gpumgr/backends.h"
#include "gpumgr/units.h"

namespace gpumgr::core {
namespace {

TEST(HolderAttribution, AHoldersOwnUsageIsNotForeignWhileItHoldsALease) {
  auto backend = std::make_shared<SimulatedBackend>(std::vector<std::uint64_t>{24 * kGiB});
  const auto self = static_cast<std::uint32_t>(::getpid());
  ASSERT_TRUE(backend->set_process_usage(0, self, 2 * kGiB).ok());      // our CUDA context
  ASSERT_TRUE(backend->set_process_usage(0, self + 1, 1 * kGiB).ok());  // someone else
  LedgerConfig config;
  auto ledger = LocalLedger::create(backend, config);
  ASSERT_TRUE(ledger.ok()) << ledger.status().to_string();

  auto foreign = [&] { return (*ledger)->snapshot().value().devices[0].foreign_bytes; };
  EXPECT_EQ(foreign(), 3 * kGiB);  // no lease yet: both processes are outside use

  LeaseRequest r;
  r.job_id = "job";
  r.bytes = 4 * kGiB;
  ASSERT_TRUE((*ledger)->try_acquire(r).ok());
  EXPECT_EQ(foreign(), 1 * kGiB);  // our 2 GiB now belong to the lease
  const auto snap = (*ledger)->snapshot().value();
  EXPECT_EQ(snap.devices[0].admissible_bytes, snap.devices[0].capacity_bytes - 4 * kGiB - 1 * kGiB);

  ASSERT_TRUE((*ledger)->release("job", JobOutcome::kSucceeded).ok());
  EXPECT_EQ(foreign(), 3 * kGiB);
}

}  // namespace
}  // namespace gpumgr::core

namespace gpumgr::core {
namespace {

// The command `gpumgr run` starts (or a worker a Python holder forks) is a child of the lease
// holder: its memory belongs to the lease too.
TEST(HolderAttribution, AHoldersChildrenAreCoveredByItsLease) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::pause();
    ::_exit(0);
  }
  const auto child_pid = static_cast<std::uint32_t>(child);
  const auto ancestors = process_ancestors(child_pid);
  ASSERT_FALSE(ancestors.empty());
  EXPECT_EQ(ancestors.front(), static_cast<std::uint32_t>(::getpid()));

  auto backend = std::make_shared<SimulatedBackend>(std::vector<std::uint64_t>{24 * kGiB});
  ASSERT_TRUE(backend->set_process_usage(0, child_pid, 3 * kGiB).ok());
  auto ledger = LocalLedger::create(backend, LedgerConfig{});
  ASSERT_TRUE(ledger.ok()) << ledger.status().to_string();
  auto foreign = [&] { return (*ledger)->snapshot().value().devices[0].foreign_bytes; };
  EXPECT_EQ(foreign(), 3 * kGiB);
  LeaseRequest r;
  r.job_id = "parent";
  r.bytes = 4 * kGiB;
  ASSERT_TRUE((*ledger)->try_acquire(r).ok());
  EXPECT_EQ(foreign(), 0u);
  ASSERT_TRUE((*ledger)->release("parent", JobOutcome::kSucceeded).ok());
  EXPECT_EQ(foreign(), 3 * kGiB);

  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
}

TEST(HolderAttribution, AncestorsOfAGoneProcessAreEmpty) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);
  EXPECT_TRUE(process_ancestors(static_cast<std::uint32_t>(child)).empty());
}

}  // namespace
}  // namespace gpumgr::core
