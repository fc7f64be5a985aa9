// The lease journal keeps which leases are revocable (schema 2), and a journal written by a
// daemon before revocable leases (schema 1) is upgraded in place with its records kept.
#include <gtest/gtest.h>
#include <sqlite3.h>

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

TEST(RevocableJournal, ASchemaOneJournalIsUpgradedWithItsLeasesKept) {
  TempDir dir("gpumgr-journal");
  const std::string path = dir.file("leases.db");
  {
    // The file a daemon of schema 1 wrote: its table, id and version, and one lease.
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    const char* sql =
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE,"
        " leased INTEGER NOT NULL, bytes INTEGER NOT NULL, gpus INTEGER NOT NULL,"
        " priority INTEGER NOT NULL, device INTEGER NOT NULL, command TEXT NOT NULL,"
        " kind TEXT NOT NULL, default_bytes INTEGER NOT NULL, devices TEXT NOT NULL,"
        " token TEXT NOT NULL, estimate TEXT NOT NULL, pid INTEGER NOT NULL,"
        " uid INTEGER NOT NULL, start_ticks INTEGER NOT NULL, boot_id TEXT NOT NULL,"
        " requested_at INTEGER NOT NULL, granted_at INTEGER, deadline INTEGER);"
        "INSERT INTO jobs (job_id, leased, bytes, gpus, priority, device, command, kind,"
        " default_bytes, devices, token, estimate, pid, uid, start_ticks, boot_id, requested_at,"
        " granted_at, deadline) VALUES ('old', 1, 1024, 1, 2, -1, 'cmd', '', 0, '0', 'tok', '',"
        " 77, 1000, 5, 'boot', 10, 20, NULL);"
        "PRAGMA application_id=1735421290; PRAGMA user_version=1;";
    char* error = nullptr;
    ASSERT_EQ(sqlite3_exec(db, sql, nullptr, nullptr, &error), SQLITE_OK) << error;
    sqlite3_close(db);
  }
  std::string note;
  auto j = LeaseJournal::open(path, &note);
  ASSERT_TRUE(j.ok()) << j.status().to_string();
  EXPECT_EQ(note, "");  // upgraded, not moved aside
  auto c = (*j)->load();
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  ASSERT_EQ(c->leases.size(), 1u);
  EXPECT_EQ(c->leases[0].request.job_id, "old");
  EXPECT_EQ(c->leases[0].request.priority, 2);
  EXPECT_FALSE(c->leases[0].request.preemptible);
  EXPECT_EQ(c->leases[0].request.resident, "");
  // And it takes revocable leases from now on.
  JournaledLease p = lease("new");
  p.request.preemptible = true;
  ASSERT_TRUE((*j)->put_lease(p).ok());
  auto again = (*j)->load();
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(again->leases.size(), 2u);
  EXPECT_TRUE(again->leases[1].request.preemptible);
}

}  // namespace
}  // namespace gpumgr::state
