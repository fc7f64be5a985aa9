// LeaseJournal (src/state/lease_journal.h): what a restarted daemon reads back. Round trips
// of leases and waiters with every field, queue and grant order, replacement of a waiter by
// its lease, reopening, a damaged or foreign file moved aside, one file per socket, and a
// writer killed with SIGKILL between records losing nothing it had committed.
#include "state/lease_journal.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "gpumgr/units.h"
#include "state/kind_history.h"
#include "test_util.h"

namespace gpumgr::state {
namespace {

namespace fs = std::filesystem;
using gpumgr::testing::TempDir;

ProcessIdentity holder(std::uint32_t pid) {
  return ProcessIdentity{pid, 1000 + pid, 424242 + pid, "boot-abc"};
}

JournaledLease lease(const std::string& job, std::vector<int> devices, std::uint64_t bytes) {
  JournaledLease l;
  l.request.job_id = job;
  l.request.bytes = bytes;
  l.request.gpus = static_cast<int>(devices.size());
  l.request.priority = 3;
  l.request.command = "python train.py --lr 3e-4";
  l.request.kind = "sdxl-1024";
  l.request.holder_pid = 78;  // taken by pid 77 for its child
  l.devices = std::move(devices);
  l.token = "0123456789abcdef0123456789abcdef";
  l.estimate = "learned from 7 runs: p95 5 GiB + 10%";
  l.holder = holder(77);
  l.requested_at_unix_ns = 1'790'000'000'000'000'001;
  l.granted_at_unix_ns = 1'790'000'002'500'000'000;
  return l;
}

JournaledWaiter waiter(const std::string& job, std::uint64_t bytes,
                       std::optional<std::int64_t> deadline = std::nullopt) {
  JournaledWaiter w;
  w.request.job_id = job;
  w.request.bytes = bytes;
  w.request.gpus = 1;
  w.request.priority = -2;
  w.request.device = 1;
  w.request.kind = "upscale";
  w.request.default_bytes = 6 * kGiB;
  w.token = "fedcba9876543210fedcba9876543210";
  w.holder = holder(88);
  w.requested_at_unix_ns = 1'790'000'010'000'000'000;
  w.deadline_unix_ns = deadline;
  return w;
}

std::unique_ptr<LeaseJournal> open_ok(const std::string& path, std::string* note = nullptr) {
  auto j = LeaseJournal::open(path, note);
  EXPECT_TRUE(j.ok()) << j.status().to_string();
  return j.ok() ? std::move(j).value() : nullptr;
}

TEST(LeaseJournalTest, LeasesAndWaitersComeBackWithEveryField) {
  TempDir dir("gpumgr-journal");
  auto j = open_ok(dir.file("leases.db"));
  ASSERT_NE(j, nullptr);
  ASSERT_TRUE(j->put_lease(lease("train-7", {0, 2}, 5 * kGiB)).ok());
  ASSERT_TRUE(j->put_waiter(waiter("w1", 12 * kGiB, 1'790'000'070'000'000'000)).ok());
  ASSERT_TRUE(j->put_waiter(waiter("w2", 0)).ok());
  JournaledWaiter confined = waiter("w3", kGiB);
  confined.request.device = -1;
  confined.request.allowed_devices = {2, 0};
  ASSERT_TRUE(j->put_waiter(confined).ok());
  auto c = j->load();
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  ASSERT_EQ(c->leases.size(), 1u);
  const JournaledLease& l = c->leases[0];
  EXPECT_EQ(l.request.job_id, "train-7");
  EXPECT_EQ(l.request.bytes, 5 * kGiB);
  EXPECT_EQ(l.request.gpus, 2);
  EXPECT_EQ(l.request.priority, 3);
  EXPECT_EQ(l.request.command, "python train.py --lr 3e-4");
  EXPECT_EQ(l.request.kind, "sdxl-1024");
  EXPECT_EQ(l.request.holder_pid, 78u);
  EXPECT_EQ(l.devices, (std::vector<int>{0, 2}));
  EXPECT_EQ(l.token, "0123456789abcdef0123456789abcdef");
  EXPECT_EQ(l.estimate, "learned from 7 runs: p95 5 GiB + 10%");
  EXPECT_EQ(l.holder.pid, 77u);
  EXPECT_EQ(l.holder.uid, 1077u);
  EXPECT_EQ(l.holder.start_ticks, 424319u);
  EXPECT_EQ(l.holder.boot_id, "boot-abc");
  EXPECT_EQ(l.requested_at_unix_ns, 1'790'000'000'000'000'001);
  EXPECT_EQ(l.granted_at_unix_ns, 1'790'000'002'500'000'000);
  ASSERT_EQ(c->waiters.size(), 3u);
  const JournaledWaiter& w = c->waiters[0];
  EXPECT_EQ(w.request.job_id, "w1");
  EXPECT_EQ(w.request.bytes, 12 * kGiB);
  EXPECT_EQ(w.request.priority, -2);
  EXPECT_EQ(w.request.device, 1);
  EXPECT_EQ(w.request.kind, "upscale");
  EXPECT_EQ(w.request.default_bytes, 6 * kGiB);
  EXPECT_EQ(w.token, "fedcba9876543210fedcba9876543210");
  EXPECT_EQ(w.holder.pid, 88u);
  EXPECT_EQ(w.requested_at_unix_ns, 1'790'000'010'000'000'000);
  ASSERT_TRUE(w.deadline_unix_ns.has_value());
  EXPECT_EQ(*w.deadline_unix_ns, 1'790'000'070'000'000'000);
  EXPECT_EQ(c->waiters[1].request.job_id, "w2");
  EXPECT_EQ(c->waiters[1].request.bytes, 0u);  // asks for its kind's estimate again
  EXPECT_FALSE(c->waiters[1].deadline_unix_ns.has_value());
  EXPECT_TRUE(c->waiters[1].request.allowed_devices.empty());
  EXPECT_EQ(c->waiters[1].request.holder_pid, 0u);
  EXPECT_EQ(c->waiters[2].request.allowed_devices, (std::vector<int>{2, 0}));
}

// Journals written by the older schemas, as an upgraded daemon finds them: version 1 (no
// holder_pid, no allowed_devices) and version 2 (no revocable leases). Each is kept, its jobs
// read back, and written to in the new schema.
class JournalUpgrade : public ::testing::TestWithParam<int> {};

TEST_P(JournalUpgrade, AnOlderFileIsUpgradedInPlace) {
  TempDir dir("gpumgr-journal");
  const std::string path = dir.file("leases.db");
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    std::string sql =
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE,"
        " leased INTEGER NOT NULL, bytes INTEGER NOT NULL, gpus INTEGER NOT NULL,"
        " priority INTEGER NOT NULL, device INTEGER NOT NULL, command TEXT NOT NULL,"
        " kind TEXT NOT NULL, default_bytes INTEGER NOT NULL, devices TEXT NOT NULL,"
        " token TEXT NOT NULL, estimate TEXT NOT NULL, pid INTEGER NOT NULL,"
        " uid INTEGER NOT NULL, start_ticks INTEGER NOT NULL, boot_id TEXT NOT NULL,"
        " requested_at INTEGER NOT NULL, granted_at INTEGER, deadline INTEGER);"
        "INSERT INTO jobs (job_id, leased, bytes, gpus, priority, device, command, kind,"
        " default_bytes, devices, token, estimate, pid, uid, start_ticks, boot_id,"
        " requested_at, granted_at, deadline) VALUES ('old-lease', 1, 1024, 1, 2, -1, 'x', '',"
        " 0, '1', 'tok', '', 55, 1000, 99, 'boot', 1, 2, NULL);"
        "PRAGMA application_id=1735421290;";
    if (GetParam() >= 2) {
      sql +=
          "ALTER TABLE jobs ADD COLUMN holder_pid INTEGER NOT NULL DEFAULT 0;"
          "ALTER TABLE jobs ADD COLUMN allowed_devices TEXT NOT NULL DEFAULT '';"
          "UPDATE jobs SET holder_pid = 56;";
    }
    if (GetParam() >= 3) {
      sql +=
          "ALTER TABLE jobs ADD COLUMN preemptible INTEGER NOT NULL DEFAULT 0;"
          "ALTER TABLE jobs ADD COLUMN resident TEXT NOT NULL DEFAULT '';"
          "ALTER TABLE jobs ADD COLUMN revoke_grace REAL;"
          "UPDATE jobs SET resident = 'llama';";
    }
    sql += "PRAGMA user_version=" + std::to_string(GetParam()) + ";";
    ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK)
        << sqlite3_errmsg(db);
    sqlite3_close(db);
  }
  std::string note;
  auto j = open_ok(path, &note);
  ASSERT_NE(j, nullptr);
  EXPECT_EQ(note, "") << "an older journal must be upgraded, not moved aside";
  EXPECT_FALSE(fs::exists(path + ".corrupt-0"));
  ASSERT_TRUE(j->put_waiter(waiter("new-waiter", kGiB)).ok());
  auto c = j->load();
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  ASSERT_EQ(c->leases.size(), 1u);
  EXPECT_EQ(c->leases[0].request.job_id, "old-lease");
  EXPECT_EQ(c->leases[0].devices, std::vector<int>{1});
  EXPECT_EQ(c->leases[0].holder.pid, 55u);
  EXPECT_EQ(c->leases[0].request.priority, 2);
  EXPECT_EQ(c->leases[0].request.holder_pid, GetParam() >= 2 ? 56u : 0u);
  EXPECT_TRUE(c->leases[0].request.allowed_devices.empty());
  EXPECT_FALSE(c->leases[0].request.preemptible);
  EXPECT_EQ(c->leases[0].request.resident, GetParam() >= 3 ? "llama" : "");
  EXPECT_FALSE(c->leases[0].request.revoke_grace_s.has_value());
  EXPECT_EQ(c->leases[0].request.beside_resident, "");
  ASSERT_EQ(c->waiters.size(), 1u);
  // The new columns are written from now on.
  JournaledLease p = lease("new-lease", {0}, kGiB);
  p.request.preemptible = true;
  p.request.revoke_grace_s = 2.5;
  ASSERT_TRUE(j->put_lease(p).ok());
  JournaledWaiter beside = waiter("beside-waiter", kGiB);
  beside.request.beside_resident = "llama";
  ASSERT_TRUE(j->put_waiter(beside).ok());
  auto again = j->load();
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(again->leases.size(), 2u);
  EXPECT_TRUE(again->leases[1].request.preemptible);
  EXPECT_EQ(again->leases[1].request.revoke_grace_s, 2.5);
  EXPECT_EQ(again->leases[1].request.holder_pid, 78u);
  ASSERT_EQ(again->waiters.size(), 2u);
  EXPECT_EQ(again->waiters[1].request.beside_resident, "llama");
  EXPECT_EQ(again->waiters[0].request.beside_resident, "");
  j.reset();

  // A file from a newer gpumgr cannot be read: moved aside, never misread.
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version=9", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
  }
  auto newer = open_ok(path, &note);
  ASSERT_NE(newer, nullptr);
  EXPECT_NE(note.find("schema version 9, this gpumgr reads version 4"), std::string::npos) << note;
  EXPECT_EQ(newer->size().value(), 0u);
}

INSTANTIATE_TEST_SUITE_P(FromEveryOlderVersion, JournalUpgrade, ::testing::Values(1, 2, 3));

TEST(LeaseJournalTest, AGrantedWaiterBecomesALeaseAndLeasesKeepGrantOrder) {
  TempDir dir("gpumgr-journal");
  auto j = open_ok(dir.file("leases.db"));
  ASSERT_NE(j, nullptr);
  for (const char* job : {"a", "b", "c", "d"}) ASSERT_TRUE(j->put_waiter(waiter(job, kGiB)).ok());
  ASSERT_TRUE(j->put_lease(lease("c", {1}, kGiB)).ok());
  ASSERT_TRUE(j->put_lease(lease("a", {0}, kGiB)).ok());
  ASSERT_TRUE(j->remove("b").ok());
  ASSERT_TRUE(j->remove("never-there").ok());
  auto c = j->load();
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c->leases.size(), 2u);
  EXPECT_EQ(c->leases[0].request.job_id, "c");
  EXPECT_EQ(c->leases[1].request.job_id, "a");
  ASSERT_EQ(c->waiters.size(), 1u);
  EXPECT_EQ(c->waiters[0].request.job_id, "d");
  EXPECT_EQ(j->size().value(), 3u);
  ASSERT_TRUE(j->clear().ok());
  EXPECT_EQ(j->size().value(), 0u);
}

TEST(LeaseJournalTest, ReopeningKeepsEverything) {
  TempDir dir("gpumgr-journal");
  const std::string path = dir.file("leases.db");
  {
    auto j = open_ok(path);
    ASSERT_NE(j, nullptr);
    ASSERT_TRUE(j->put_lease(lease("kept", {3}, 7 * kGiB)).ok());
    ASSERT_TRUE(j->put_waiter(waiter("queued", kGiB)).ok());
  }
  auto j = open_ok(path);
  ASSERT_NE(j, nullptr);
  auto c = j->load();
  ASSERT_TRUE(c.ok());
  ASSERT_EQ(c->leases.size(), 1u);
  EXPECT_EQ(c->leases[0].devices, std::vector<int>{3});
  EXPECT_EQ(c->leases[0].request.bytes, 7 * kGiB);
  ASSERT_EQ(c->waiters.size(), 1u);
  EXPECT_EQ(c->waiters[0].request.job_id, "queued");
  EXPECT_EQ(fs::status(path).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
}

TEST(LeaseJournalTest, ADamagedFileOrAHistoryIsMovedAsideWithANote) {
  TempDir dir("gpumgr-journal");
  const std::string path = dir.file("leases.db");
  {
    std::ofstream out(path, std::ios::binary);
    std::mt19937 rng(5);
    for (int i = 0; i < 4096; ++i) out.put(static_cast<char>(rng() & 0xff));
  }
  std::string note;
  auto j = open_ok(path, &note);
  ASSERT_NE(j, nullptr);
  EXPECT_EQ(note.rfind("the lease journal " + path +
                           " was corrupt (file is not a database); "
                           "moved it to " +
                           path + ".corrupt-",
                       0),
            0u)
      << note;
  EXPECT_EQ(j->size().value(), 0u);

  // The history of job kinds is a database of ours, but not a journal.
  const std::string history = dir.file("history.db");
  ASSERT_TRUE(KindHistory::open(history).ok());
  auto k = open_ok(history, &note);
  ASSERT_NE(k, nullptr);
  EXPECT_NE(note.find("was not a gpumgr lease journal (another program's database: tables runs"),
            std::string::npos)
      << note;
}

TEST(LeaseJournalTest, AMissingFolderIsAClearError) {
  TempDir dir("gpumgr-journal");
  auto j = LeaseJournal::open(dir.file("no/such/leases.db"));
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(j.status().message().find("cannot open the lease journal"), std::string::npos);
  EXPECT_NE(j.status().message().find("does not exist"), std::string::npos);
}

TEST(LeaseJournalTest, EachSocketHasAFileOfItsOwn) {
  const std::string a = journal_path("/var/lib/gpumgr", "/run/gpumgr/gpumgr.sock");
  const std::string b = journal_path("/var/lib/gpumgr", "/run/gpumgr/n2.sock");
  EXPECT_NE(a, b);
  EXPECT_EQ(a, journal_path("/var/lib/gpumgr", "/run/gpumgr/./gpumgr.sock"));
  EXPECT_EQ(a.rfind("/var/lib/gpumgr/leases-", 0), 0u) << a;
  EXPECT_EQ(a.size(), std::string("/var/lib/gpumgr/leases-").size() + 16 + 3) << a;
}

// A writer killed at a random moment: every record it reported as committed is there, and
// the file opens without being moved aside.
TEST(LeaseJournalTest, ASIGKILLedWriterLosesNothingCommitted) {
  TempDir dir("gpumgr-journal");
  const std::string path = dir.file("leases.db");
  ASSERT_NE(open_ok(path), nullptr);
  std::mt19937 rng(9);
  for (int round = 0; round < 5; ++round) {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::close(fds[0]);
      auto j = LeaseJournal::open(path);
      if (!j.ok()) ::_exit(2);
      for (int i = 0;; ++i) {
        const std::string job = "r" + std::to_string(round) + "-" + std::to_string(i);
        if (!(*j)->put_waiter(waiter(job, kGiB)).ok()) ::_exit(3);
        if (!(*j)->put_lease(lease(job, {0}, kGiB)).ok()) ::_exit(3);
        // Committed: tell the parent which.
        if (::write(fds[1], &i, sizeof i) != static_cast<ssize_t>(sizeof i)) ::_exit(4);
      }
    }
    ::close(fds[1]);
    ::usleep(static_cast<useconds_t>(20'000 + rng() % 80'000));
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    EXPECT_TRUE(WIFSIGNALED(status));
    int last = -1, value = 0;
    while (::read(fds[0], &value, sizeof value) == static_cast<ssize_t>(sizeof value)) last = value;
    ::close(fds[0]);
    std::string note;
    auto j = open_ok(path, &note);
    ASSERT_NE(j, nullptr);
    EXPECT_EQ(note, "");
    auto c = j->load();
    ASSERT_TRUE(c.ok());
    int found = 0;
    for (const auto& l : c->leases) {
      if (l.request.job_id.rfind("r" + std::to_string(round) + "-", 0) == 0) ++found;
    }
    // Every committed lease is there; the one in flight may be there too.
    EXPECT_GE(found, last + 1) << "round " << round;
    EXPECT_LE(found, last + 2) << "round " << round;
  }
}

}  // namespace
}  // namespace gpumgr::state
