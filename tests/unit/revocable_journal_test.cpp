// The lease journal keeps which leases are revocable (the upgrade of older journals:
// lease_journal_test.cpp).
#include <gtest/gtest.h>

#include <string>

#include "gpumgr/units.h"
#include "state/lease_journal.h"
#include "test_util.h"

namespace gpumgr::state {
namespace {

using gpumgr::testing::TempDir;

JournaledLease lease(const std::string& job) {
  JournaledLease l;
  l.request.job_id = job;
  l.request.bytes = 4 * kGiB;
  l.request.gpus = 1;
  l.devices = {0};
  l.token = "0123456789abcdef0123456789abcdef";
  l.holder = ProcessIdentity{77, 1000, 424242, "boot-abc"};
  l.requested_at_unix_ns = 1'790'000'000'000'000'000;
  l.granted_at_unix_ns = 1'790'000'001'000'000'000;
  return l;
}

TEST(RevocableJournal, PreemptibleResidentAndGraceComeBack) {
  TempDir dir("gpumgr-journal");
  {
    auto j = LeaseJournal::open(dir.file("leases.db"));
    ASSERT_TRUE(j.ok()) << j.status().to_string();
    JournaledLease p = lease("batch");
    p.request.preemptible = true;
    p.request.revoke_grace_s = 12.5;
    ASSERT_TRUE((*j)->put_lease(p).ok());
    JournaledLease r = lease("model");
    r.request.resident = "llama";
    ASSERT_TRUE((*j)->put_lease(r).ok());
    ASSERT_TRUE((*j)->put_lease(lease("plain")).ok());
    JournaledWaiter w;
    w.request.job_id = "waiter";
    w.request.bytes = kGiB;
    w.request.preemptible = true;
    w.holder = ProcessIdentity{88, 1000, 1, "boot-abc"};
    ASSERT_TRUE((*j)->put_waiter(w).ok());
  }
  auto j = LeaseJournal::open(dir.file("leases.db"));
  ASSERT_TRUE(j.ok()) << j.status().to_string();
  auto c = (*j)->load();
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  ASSERT_EQ(c->leases.size(), 3u);
  EXPECT_TRUE(c->leases[0].request.preemptible);
  EXPECT_EQ(c->leases[0].request.revoke_grace_s, 12.5);
  EXPECT_FALSE(c->leases[1].request.preemptible);
  EXPECT_EQ(c->leases[1].request.resident, "llama");
  EXPECT_FALSE(c->leases[1].request.revoke_grace_s.has_value());
  EXPECT_FALSE(c->leases[2].request.preemptible);
  EXPECT_EQ(c->leases[2].request.resident, "");
  ASSERT_EQ(c->waiters.size(), 1u);
  EXPECT_TRUE(c->waiters[0].request.preemptible);
}

}  // namespace
}  // namespace gpumgr::state
