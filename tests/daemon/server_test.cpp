// The daemon end to end: a Server on a simulated device, clients in this process (the
// remote ledger, raw sockets) and in helper processes (killed, other uids, contenders).
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <stdexcept>

#include "daemon_fixture.h"
#include "gpumgr/manager.h"
#include "shared_counters.h"
#include "util/thread_annotations.h"

namespace gpumgr::testing {
namespace {

constexpr std::uint64_t kGiB = 1024ull * 1024 * 1024;

LeaseRequest req(const std::string& job, std::uint64_t bytes) {
  LeaseRequest r;
  r.job_id = job;
  r.bytes = bytes;
  return r;
}

TEST(Daemon, RemoteLedgerServesTheLedgerInterface) {
  TestDaemon d;
  auto ledger = connect_daemon(d.socket);
  ASSERT_TRUE(ledger.ok()) << ledger.status().to_string();
  auto lease = ledger.value()->try_acquire(req("a", 4 * kGiB));
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  EXPECT_EQ(lease->devices, std::vector<int>{0});
  EXPECT_EQ(lease->pid, static_cast<std::uint32_t>(::getpid()));  // from SO_PEERCRED
  EXPECT_EQ(lease->uid, static_cast<std::uint32_t>(::getuid()));
  EXPECT_FALSE(lease->command.empty());  // read from /proc when the client sends none
  EXPECT_EQ(ledger.value()->try_acquire(req("a", kGiB)).status().code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(ledger.value()->try_acquire(req("b", 7 * kGiB)).status().code(),
            ErrorCode::kResourceExhausted);
  EXPECT_EQ(ledger.value()->try_acquire(req("c", 11 * kGiB)).status().code(),
            ErrorCode::kNeverFits);
  EXPECT_EQ(ledger.value()->can_admit(6 * kGiB, 1, -1).value(), true);
  EXPECT_EQ(ledger.value()->can_admit(7 * kGiB, 1, -1).value(), false);
  auto snap = ledger.value()->snapshot();
  ASSERT_TRUE(snap.ok()) << snap.status().to_string();
  EXPECT_EQ(snap->source, "daemon at " + d.socket);
  ASSERT_EQ(snap->leases.size(), 1u);
  EXPECT_EQ(snap->devices.at(0).leased_bytes, 4 * kGiB);
  EXPECT_TRUE(ledger.value()->release("a", JobOutcome::kSucceeded).ok());
  EXPECT_EQ(ledger.value()->release("a", JobOutcome::kSucceeded).code(), ErrorCode::kNotFound);
  EXPECT_EQ(ledger.value()->cancel("zz").code(), ErrorCode::kNotFound);
  EXPECT_EQ(d.snapshot().stats.jobs_succeeded, 1u);
}

// Through the daemon too, a lease handle released after a release by job id and a new
// lease of the same id leaves the new lease alone.
TEST(Daemon, AnOldHandleDoesNotReleaseANewerLeaseOfTheSameJobId) {
  TestDaemon d;
  ManagerOptions options;
  options.socket = d.socket;
  auto manager = Manager::create(options);
  ASSERT_TRUE(manager.ok()) << manager.status().to_string();
  Manager& m = *manager.value();
  auto old_lease = m.try_acquire(req("reused", kGiB));
  ASSERT_TRUE(old_lease.ok()) << old_lease.status().to_string();
  ASSERT_TRUE(m.release("reused").ok());
  auto new_lease = m.try_acquire(req("reused", 2 * kGiB));
  ASSERT_TRUE(new_lease.ok()) << new_lease.status().to_string();
  EXPECT_TRUE(old_lease->release().ok());  // already released: nothing to do
  Snapshot s = d.snapshot();
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_EQ(s.leases[0].bytes, 2 * kGiB);
  EXPECT_EQ(s.stats.jobs_succeeded, 1u);
  ASSERT_TRUE(new_lease->release().ok());
  EXPECT_TRUE(d.snapshot().leases.empty());
}

// A device selector means through the daemon what it means in-process: 'cuda:N' must name
// one of the daemon's GPUs (before, the manager was created and every call failed), and
// 'cpu' is host memory, never a lease on the daemon's GPU 0 (before, it leased GPU 0 and
// called it 'cpu').
TEST(Daemon, SelectorsMeanWhatTheyMeanInProcess) {
  TestDaemon d("2x10GiB");
  ManagerOptions options;
  options.socket = d.socket;
  options.device = "cuda:2";
  auto missing = Manager::create(options);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(missing.status().message(),
            "device 'cuda:2' does not exist: there are 2 GPUs (cuda:0..cuda:1)");
  options.device = "cuda:1";
  auto pinned = Manager::create(options);
  ASSERT_TRUE(pinned.ok()) << pinned.status().to_string();
  EXPECT_EQ(pinned.value()->device_string(), "cuda:1");
  options.device = "cpu";
  auto cpu = Manager::create(options);
  ASSERT_TRUE(cpu.ok()) << cpu.status().to_string();
  EXPECT_EQ(cpu.value()->device_string(), "cpu");
  EXPECT_FALSE(cpu.value()->uses_gpu());
  EXPECT_NE(cpu.value()->selection_note().find("shares GPUs, not host memory"), std::string::npos)
      << cpu.value()->selection_note();
  auto lease = cpu.value()->try_acquire(req("host", kGiB));
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  EXPECT_TRUE(d.snapshot().leases.empty());  // host memory here, nothing on the daemon's GPUs
  ASSERT_TRUE(lease->release().ok());
}

// A request handler that throws is logged, and the daemon goes on serving. The throw here
// comes from the log callback itself, on the line a departing holder produces.
TEST(Daemon, AHandlerThatThrowsDoesNotStopTheDaemon) {
  TempDir dir;
  const std::string socket = dir.path() + "/gpumgr.sock";
  LedgerConfig config;
  config.memory_limit = 1.0;
  auto ledger = core::LocalLedger::create(SimulatedBackend::from_spec("1x10GiB").value(), config);
  ASSERT_TRUE(ledger.ok());
  Mutex mutex;
  std::vector<std::string> lines;
  daemon::ServerOptions options;
  options.socket_path = socket;
  options.log = [&](daemon::LogLevel, const std::string& line) {
    {
      MutexLock lock(mutex);
      lines.push_back(line);
    }
    if (line.find(" left: ") != std::string::npos) throw std::runtime_error("logger failed");
  };
  auto server = daemon::Server::create(options, ledger.value());
  ASSERT_TRUE(server.ok()) << server.status().to_string();
  server.value()->start_background();
  {
    auto holder = connect_daemon(socket).value();
    ASSERT_TRUE(holder->try_acquire(req("gone", 10 * kGiB)).ok());
  }  // the holder leaves: its lease is released, then the log line throws
  auto logged = [&](const std::string& text) {
    MutexLock lock(mutex);
    return std::any_of(lines.begin(), lines.end(),
                       [&](const std::string& l) { return l.find(text) != std::string::npos; });
  };
  ASSERT_TRUE(eventually([&] { return logged("internal error in a request handler"); }));
  EXPECT_TRUE(logged("logger failed"));
  // Still serving, and the departed holder's memory is free again.
  auto next = connect_daemon(socket);
  ASSERT_TRUE(next.ok()) << next.status().to_string();
  EXPECT_TRUE(next.value()->try_acquire(req("next", 10 * kGiB)).ok());
  EXPECT_TRUE(next.value()->release("next", JobOutcome::kSucceeded).ok());
  server.value()->stop();
}

TEST(Daemon, UnreachableDaemonSaysWhereItLookedAndHowToStartIt) {
  TempDir tmp;
  const std::string path = tmp.path() + "/none.sock";
  auto ledger = connect_daemon(path);
  ASSERT_FALSE(ledger.ok());
  EXPECT_EQ(ledger.status().code(), ErrorCode::kUnavailable);
  EXPECT_EQ(ledger.status().message(),
            "no daemon at " + path + ": start it with `gpumgr serve --socket " + path + "`");
}

TEST(Daemon, ManyThreadsShareOneConnectionAndAWaiterBlocksNobody) {
  TestDaemon d("1x10GiB", 2);
  auto ledger = connect_daemon(d.socket).value();
  ASSERT_TRUE(ledger->try_acquire(req("big", 10 * kGiB)).ok());
  // A waiting acquire on the shared connection...
  std::atomic<bool> granted{false};
  std::thread waiter([&] {
    auto l = ledger->acquire(req("waiter", 6 * kGiB), WaitOptions::for_seconds(20));
    granted = l.ok();
    if (l.ok()) (void)ledger->release("waiter", JobOutcome::kSucceeded);
  });
  ASSERT_TRUE(eventually([&] { return d.snapshot().queue.size() == 1; }));
  // ...does not hold up the others.
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(ledger->snapshot().ok());
  EXPECT_FALSE(granted.load());
  ASSERT_TRUE(ledger->release("big", JobOutcome::kSucceeded).ok());
  waiter.join();
  EXPECT_TRUE(granted.load());

  // Eight threads, 2 GiB each, at most 2 at once: everyone finishes, the limit holds.
  std::atomic<int> holding{0}, peak{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        const std::string job = "t" + std::to_string(t) + "-" + std::to_string(i);
        auto l = ledger->acquire(req(job, 2 * kGiB), WaitOptions::for_seconds(30));
        if (!l.ok()) {
          ++failures;
          continue;
        }
        const int now = ++holding;
        int p = peak.load();
        while (now > p && !peak.compare_exchange_weak(p, now)) {
        }
        --holding;
        if (!ledger->release(job, JobOutcome::kSucceeded).ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_LE(peak.load(), 2);
  const Snapshot s = d.snapshot();
  EXPECT_EQ(s.stats.jobs_succeeded, 82u);
  EXPECT_LE(s.stats.peak_active_jobs, 2);
  EXPECT_TRUE(s.leases.empty());
}

TEST(Daemon, CancelTokenAndDeadlineEndARemoteWait) {
  TestDaemon d;
  auto ledger = connect_daemon(d.socket).value();
  ASSERT_TRUE(ledger->try_acquire(req("big", 10 * kGiB)).ok());
  auto timed = ledger->acquire(req("late", kGiB), WaitOptions::for_seconds(0.05));
  EXPECT_EQ(timed.status().code(), ErrorCode::kTimedOut);

  CancelToken token;
  WaitOptions wait;
  wait.cancel = token;
  StatusOr<LeaseInfo> result = Status(ErrorCode::kInternal, "not run");
  std::thread waiter([&] { result = ledger->acquire(req("w", kGiB), wait); });
  ASSERT_TRUE(eventually([&] { return d.snapshot().queue.size() == 1; }));
  token.cancel();
  waiter.join();
  EXPECT_EQ(result.status().code(), ErrorCode::kCancelled);
  EXPECT_TRUE(d.snapshot().queue.empty());
  // Cancelled by another call on the same connection: the waiter's reply says so too.
  std::thread waiter2([&] { result = ledger->acquire(req("w2", kGiB), {}); });
  ASSERT_TRUE(eventually([&] { return d.snapshot().queue.size() == 1; }));
  EXPECT_TRUE(ledger->cancel("w2").ok());
  waiter2.join();
  EXPECT_EQ(result.status().code(), ErrorCode::kCancelled);
}

TEST(Daemon, ClosingTheClientReleasesItsLeasesAndDropsItsWaiters) {
  TestDaemon d("1x10GiB", 3);
  RawClient holder(d.socket);
  ASSERT_TRUE(holder.hello());
  auto other = connect_daemon(d.socket).value();
  auto take = [&](int id, const char* job, std::uint64_t bytes) {
    return holder.call({{"id", id}, {"op", "try_acquire"}, {"job_id", job}, {"bytes", bytes}});
  };
  ASSERT_EQ(take(1, "h1", 6 * kGiB).value("ok", false), true);
  ASSERT_EQ(take(2, "h2", 3 * kGiB).value("ok", false), true);
  ASSERT_TRUE(holder.send(R"({"id":3,"op":"acquire","job_id":"h3","bytes":5368709120})"
                          "\n"));
  ASSERT_TRUE(eventually([&] { return d.snapshot().queue.size() == 1; }));
  StatusOr<LeaseInfo> next = Status(ErrorCode::kInternal, "not run");
  std::thread other_waiter(
      [&] { next = other->acquire(req("o", 9 * kGiB), WaitOptions::for_seconds(20)); });
  ASSERT_TRUE(eventually([&] { return d.snapshot().queue.size() == 2; }));
  holder.close();  // the client goes away with two leases and a waiting request
  other_waiter.join();
  ASSERT_TRUE(next.ok()) << next.status().to_string();
  const Snapshot s = d.snapshot();
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_EQ(s.leases[0].job_id, "o");
  EXPECT_TRUE(s.queue.empty());
  EXPECT_EQ(s.stats.jobs_failed, 2u);  // leases dropped with their holder count as failed
  EXPECT_EQ(s.stats.jobs_cancelled, 1u);
}

TEST(Daemon, LostConnectionFailsPendingCallsAndTheNextCallReconnects) {
  TempDir tmp;
  auto d = std::make_unique<TestDaemon>("1x10GiB", 3, "", tmp.path());
  auto ledger = connect_daemon(d->socket).value();
  ASSERT_TRUE(ledger->try_acquire(req("big", 10 * kGiB)).ok());
  StatusOr<LeaseInfo> waited = Status(ErrorCode::kInternal, "not run");
  std::thread waiter([&] { waited = ledger->acquire(req("w", kGiB), {}); });
  ASSERT_TRUE(eventually([&] { return d->snapshot().queue.size() == 1; }));
  d.reset();  // the daemon stops: the waiter is answered, the connection closes
  waiter.join();
  EXPECT_EQ(waited.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(waited.status().message().find("shutting down"), std::string::npos)
      << waited.status().message();
  auto gone = ledger->snapshot();
  EXPECT_EQ(gone.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(gone.status().message().find("no daemon at"), std::string::npos);
  d = std::make_unique<TestDaemon>("1x10GiB", 3, "", tmp.path());  // same path again
  auto back = ledger->snapshot();
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_TRUE(back->leases.empty());
}

TEST(Daemon, RefusesALiveDaemonsSocketAndReplacesAStaleOne) {
  TestDaemon d;
  daemon::ServerOptions options;
  options.socket_path = d.socket;
  auto second = daemon::Server::create(options, d.ledger);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("already listening at " + d.socket), std::string::npos);
  // A stale socket: bound, then its owner vanished without removing it.
  TempDir tmp;
  const std::string stale = tmp.path() + "/stale.sock";
  {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, stale.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ::close(fd);
  }
  options.socket_path = stale;
  auto replaced = daemon::Server::create(options, d.ledger);
  ASSERT_TRUE(replaced.ok()) << replaced.status().to_string();
  struct stat st {};
  ASSERT_EQ(::stat(stale.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  // Not a socket: never replaced.
  const std::string file = tmp.path() + "/file";
  ::close(::open(file.c_str(), O_CREAT | O_WRONLY, 0600));
  options.socket_path = file;
  EXPECT_EQ(daemon::Server::create(options, d.ledger).status().code(), ErrorCode::kInvalidArgument);
}

// Several processes contend for one device: each holder checks, while it holds its lease,
// that the bytes and the number of leases held at that moment are within the limits; a
// probe process checks the daemon's own view at the same time.
TEST(DaemonProcesses, ContendingClientsKeepTheBudgetAndTheLimit) {
  TestDaemon d("1x10GiB", 2);
  TempDir tmp;
  const std::string counters_path = tmp.path() + "/counters";
  const int fd = ::open(counters_path.c_str(), O_CREAT | O_RDWR, 0600);
  ASSERT_EQ(::ftruncate(fd, sizeof(SharedCounters)), 0);
  void* mem = ::mmap(nullptr, sizeof(SharedCounters), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  ASSERT_NE(mem, MAP_FAILED);
  auto* counters = new (mem) SharedCounters();
  const std::string stop = tmp.path() + "/stop";
  const std::uint64_t capacity = 10 * kGiB;
  Child probe = spawn({helper(), "probe", d.socket, std::to_string(capacity), "2", stop});
  std::vector<Child> clients;
  const int kClients = 6, kRounds = 15;
  for (int c = 0; c < kClients; ++c) {
    // 4 GiB each: the memory allows two at once, the limit allows two at once.
    clients.push_back(
        spawn({helper(), "contend", d.socket, counters_path, "c" + std::to_string(c),
               std::to_string(kRounds), std::to_string(4 * kGiB), std::to_string(capacity), "2"}));
  }
  for (auto& c : clients) EXPECT_EQ(c.wait(), 0);
  ::close(::open(stop.c_str(), O_CREAT | O_WRONLY, 0600));
  EXPECT_EQ(probe.wait(), 0);
  EXPECT_EQ(counters->violations.load(), 0);
  EXPECT_EQ(counters->grants.load(), kClients * kRounds);
  const Snapshot s = d.snapshot();
  EXPECT_EQ(s.stats.jobs_succeeded, static_cast<std::uint64_t>(kClients * kRounds));
  EXPECT_EQ(s.stats.peak_active_jobs, 2);
  EXPECT_LE(s.devices[0].peak_leased_bytes, capacity);
  EXPECT_TRUE(s.leases.empty());
  ::munmap(mem, sizeof(SharedCounters));
}

// 100 rounds: a client process takes (or waits for) a lease and is killed with SIGKILL at a
// random moment; the next waiter must get the memory and nothing may be left behind.
TEST(DaemonProcesses, KilledHoldersLeakNothing) {
  TestDaemon d("1x10GiB", 3);
  auto ledger = connect_daemon(d.socket).value();
  std::mt19937 rng(12345);
  int killed_holding = 0, killed_waiting = 0;
  for (int round = 0; round < 100; ++round) {
    const std::string job = "victim-" + std::to_string(round);
    const std::string mine = "next-" + std::to_string(round);
    const int kind = round % 3;
    if (kind == 2) {
      // The victim waits in the queue behind us when it dies.
      ASSERT_TRUE(ledger->try_acquire(req(mine + "-first", 8 * kGiB)).ok());
    }
    Child victim = spawn({helper(), "hold", d.socket, job, std::to_string(8 * kGiB)});
    ASSERT_GT(victim.pid, 0);
    if (kind == 0) {
      // Killed while it holds the lease, at a random moment after the grant.
      ASSERT_EQ(victim.read_line().rfind("granted", 0), 0u) << "round " << round;
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
      ++killed_holding;
    } else if (kind == 1) {
      // Killed at any moment: before connecting, during hello, waiting or holding.
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 10000));
    } else {
      ASSERT_TRUE(eventually([&] { return d.snapshot().queue.size() == 1; })) << round;
      std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
      ++killed_waiting;
    }
    victim.kill(SIGKILL);
    EXPECT_EQ(victim.wait(), 128 + SIGKILL);
    if (kind == 2) {
      ASSERT_TRUE(eventually([&] { return d.snapshot().queue.empty(); })) << round;
      ASSERT_TRUE(ledger->release(mine + "-first", JobOutcome::kSucceeded).ok());
    }
    auto lease = ledger->acquire(req(mine, 8 * kGiB), WaitOptions::for_seconds(10));
    ASSERT_TRUE(lease.ok()) << "round " << round << ": " << lease.status().to_string();
    const Snapshot s = d.snapshot();
    ASSERT_EQ(s.leases.size(), 1u) << "round " << round;
    EXPECT_EQ(s.leases[0].job_id, mine);
    EXPECT_TRUE(s.queue.empty()) << "round " << round;
    EXPECT_EQ(s.devices[0].leased_bytes, 8 * kGiB);
    ASSERT_TRUE(ledger->release(mine, JobOutcome::kSucceeded).ok());
  }
  EXPECT_EQ(killed_holding, 34);
  EXPECT_EQ(killed_waiting, 33);
  const Snapshot s = d.snapshot();
  EXPECT_TRUE(s.leases.empty());
  EXPECT_TRUE(s.queue.empty());
  EXPECT_EQ(s.devices[0].leased_bytes, 0u);
  EXPECT_TRUE(eventually([&] { return d.server->connection_count() == 1; }));
}

// Another uid may not release or cancel what it does not hold; root may.
TEST(DaemonProcesses, AnotherUidCannotReleaseOrCancel) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a client as nobody";
  if (::access("/usr/bin/setpriv", X_OK) != 0) GTEST_SKIP() << "needs /usr/bin/setpriv";
  TempDir tmp;
  ASSERT_EQ(::chmod(tmp.path().c_str(), 0755), 0);
  TestDaemon d("1x10GiB", 3, "nogroup", tmp.path());
  auto as_nobody = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {"/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup",
                                     "--clear-groups", helper()};
    argv.insert(argv.end(), args.begin(), args.end());
    return spawn(argv);
  };
  auto root = connect_daemon(d.socket).value();
  ASSERT_TRUE(root->try_acquire(req("root-held", 6 * kGiB)).ok());
  std::thread waiter([&] { (void)root->acquire(req("root-waiting", 6 * kGiB), {}); });
  ASSERT_TRUE(eventually([&] { return d.snapshot().queue.size() == 1; }));

  Child release = as_nobody({"release", d.socket, "root-held"});
  EXPECT_EQ(release.read_line(), "permission_denied");
  EXPECT_EQ(release.wait(), 10);
  Child cancel = as_nobody({"cancel", d.socket, "root-waiting"});
  EXPECT_EQ(cancel.read_line(), "permission_denied");
  EXPECT_EQ(cancel.wait(), 10);
  Snapshot s = d.snapshot();
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_EQ(s.leases[0].job_id, "root-held");
  ASSERT_EQ(s.queue.size(), 1u);

  ASSERT_TRUE(root->release("root-held", JobOutcome::kSucceeded).ok());
  waiter.join();
  EXPECT_TRUE(root->release("root-waiting", JobOutcome::kSucceeded).ok());

  // nobody's own lease carries nobody's uid, and root may release it.
  Child holder = as_nobody({"hold", d.socket, "nobody-job", std::to_string(kGiB)});
  EXPECT_EQ(holder.read_line(), "granted uid=65534 pid=" + std::to_string(holder.pid));
  EXPECT_TRUE(root->release("nobody-job", JobOutcome::kSucceeded).ok());
  holder.kill();
  holder.wait();
  // And nobody may release its own.
  Child own = as_nobody({"acquire_release", d.socket, "nobody-2", std::to_string(kGiB)});
  EXPECT_EQ(own.read_line(), "uid=65534");
  EXPECT_EQ(own.read_line(), "ok");
  EXPECT_EQ(own.wait(), 0);
  EXPECT_TRUE(d.snapshot().leases.empty());
}

// Bad input against a live daemon: each gets an error reply or a closed connection, and a
// well-behaved client holding a lease is served throughout.
TEST(DaemonProtocol, MalformedMessagesDisturbNoOtherClient) {
  TestDaemon d;
  auto good = connect_daemon(d.socket).value();
  ASSERT_TRUE(good->try_acquire(req("good", 2 * kGiB)).ok());
  struct Case {
    const char* name;
    bool hello_first;
    std::string bytes;
    const char* code;  // expected error code; nullptr: the connection must be closed
    bool closes;       // the daemon closes the connection after replying
  };
  const std::string big_line(daemon::kMaxRequestBytes + 10, 'x');
  std::string nested(60000, '[');
  const std::vector<Case> cases = {
      {"not JSON", true, "hello there\n", "invalid_argument", false},
      {"binary", true, std::string("\x00\x01\xff\xfe\n", 5), "invalid_argument", false},
      {"invalid UTF-8", true, "{\"id\":1,\"op\":\"cancel\",\"job_id\":\"\xc3\x28\"}\n",
       "invalid_argument", false},
      {"array", true, "[1,2,3]\n", "invalid_argument", false},
      {"deep nesting", true, nested + "\n", "invalid_argument", false},
      {"no id", true, "{\"op\":\"ping\"}\n", "invalid_argument", false},
      {"unknown op", true, "{\"id\":5,\"op\":\"format_disk\"}\n", "invalid_argument", false},
      {"missing job_id", true, "{\"id\":5,\"op\":\"acquire\",\"bytes\":1}\n", "invalid_argument",
       false},
      {"wrong type", true, "{\"id\":5,\"op\":\"acquire\",\"job_id\":\"j\",\"bytes\":\"1GiB\"}\n",
       "invalid_argument", false},
      {"gpus 0", true, "{\"id\":5,\"op\":\"acquire\",\"job_id\":\"j\",\"bytes\":1,\"gpus\":0}\n",
       "invalid_argument", false},
      {"too many gpus", true,
       "{\"id\":5,\"op\":\"acquire\",\"job_id\":\"j\",\"bytes\":1,\"gpus\":9}\n",
       "invalid_argument", false},
      {"someone else's job id", true,
       "{\"id\":5,\"op\":\"try_acquire\",\"job_id\":\"good\",\"bytes\":1}\n", "already_exists",
       false},
      {"release unknown", true, "{\"id\":5,\"op\":\"release\",\"job_id\":\"nope\"}\n", "not_found",
       false},
      {"before hello", false, "{\"id\":1,\"op\":\"ping\"}\n", "failed_precondition", false},
      {"second hello", true, "{\"id\":1,\"op\":\"hello\",\"version\":1}\n", "failed_precondition",
       false},
      {"wrong version", false, "{\"id\":1,\"op\":\"hello\",\"version\":99}\n",
       "failed_precondition", true},
      {"huge line", true, big_line + "\n", "invalid_argument", true},
      {"huge without newline", true, big_line, "invalid_argument", true},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    RawClient raw(d.socket);
    ASSERT_TRUE(raw.connected());
    if (c.hello_first) {
      ASSERT_TRUE(raw.hello());
    }
    raw.send(c.bytes);
    auto reply = raw.reply();
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ(reply->value("ok", true), false);
    EXPECT_EQ((*reply)["error"]["code"], c.code) << reply->dump();
    EXPECT_FALSE((*reply)["error"]["message"].get<std::string>().empty());
    if (c.closes) {
      EXPECT_TRUE(raw.closed_by_peer());
    } else {
      // The connection still works after the error.
      if (!c.hello_first) {
        ASSERT_TRUE(raw.hello());
      }
      auto pong = raw.call({{"id", 77}, {"op", "ping"}});
      EXPECT_EQ(pong.value("ok", false), true) << pong.dump();
      EXPECT_EQ(pong.value("id", 0), 77);
    }
    ASSERT_TRUE(good->snapshot().ok());
  }
  {
    // Half a message, then the client goes away.
    RawClient raw(d.socket);
    ASSERT_TRUE(raw.hello());
    raw.send("{\"id\":9,\"op\":\"acq");
  }
  {
    // A waiting acquire, half a message, then disconnect: its request is dropped.
    ASSERT_TRUE(good->try_acquire(req("filler", 8 * kGiB)).ok());
    RawClient raw(d.socket);
    ASSERT_TRUE(raw.hello());
    raw.send("{\"id\":1,\"op\":\"acquire\",\"job_id\":\"raw-wait\",\"bytes\":5}\n{\"id\":2,");
    ASSERT_TRUE(eventually([&] { return d.snapshot().queue.size() == 1; }));
  }
  ASSERT_TRUE(eventually([&] { return d.snapshot().queue.empty(); }));
  ASSERT_TRUE(good->release("filler", JobOutcome::kSucceeded).ok());
  {
    // Pipelined requests in one write: every one is answered, in order.
    RawClient raw(d.socket);
    ASSERT_TRUE(raw.hello());
    std::string batch;
    for (int i = 1; i <= 500; ++i) batch += "{\"id\":" + std::to_string(i) + ",\"op\":\"ping\"}\n";
    raw.send(batch);
    for (int i = 1; i <= 500; ++i) {
      auto r = raw.reply();
      ASSERT_TRUE(r.has_value());
      ASSERT_EQ(r->value("id", 0), i);
    }
  }
  ASSERT_TRUE(eventually([&] { return d.server->connection_count() == 1; }));
  const Snapshot s = d.snapshot();
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_EQ(s.leases[0].job_id, "good");
  EXPECT_TRUE(good->release("good", JobOutcome::kSucceeded).ok());
}

// ---- hardening: idle connections, connections per uid, the socket folder, orphans ----

// Connections that never complete hello are closed after the hello timeout, each with an
// error line saying why; a client that did hello is served throughout and stays connected.
TEST(DaemonProtocol, ConnectionsWithoutHelloAreClosedWhileOthersAreServed) {
  (void)daemon::raise_open_file_limit();
  TestDaemon d("1x10GiB", 3, {}, {}, [](daemon::ServerOptions& o) {
    o.hello_timeout_s = 0.5;
    o.max_connections_per_uid = 0;  // no per-uid limit here: this is about the timeout
  });
  auto good = connect_daemon(d.socket).value();
  ASSERT_TRUE(good->try_acquire(req("good", 2 * kGiB)).ok());
  RawClient greeted(d.socket);
  ASSERT_TRUE(greeted.hello());
  constexpr int kIdle = 300;
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < kIdle; ++i) {
    idle.push_back(std::make_unique<RawClient>(d.socket));
    ASSERT_TRUE(idle.back()->connected()) << i;
  }
  idle[0]->send("{\"id\":1,\"op\":\"pi");         // half a request, never finished
  idle[1]->send("{\"id\":1,\"op\":\"ping\"}\n");  // a request, but no hello
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(eventually([&] { return d.server->connection_count() == kIdle + 2; }));
  // The established client keeps working while the idle ones are there and are closed.
  int rounds = 0;
  while (d.server->connection_count() > 2 &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(10)) {
    const std::string job = "round-" + std::to_string(rounds++);
    ASSERT_TRUE(good->try_acquire(req(job, kGiB)).ok());
    ASSERT_TRUE(good->release(job, JobOutcome::kSucceeded).ok());
  }
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(d.server->connection_count(), 2u) << "idle connections were not closed";
  EXPECT_GE(took, 0.4);  // not before the timeout
  EXPECT_GT(rounds, 0);
  EXPECT_EQ(idle[1]->reply().value()["error"]["code"], "failed_precondition");
  for (int i = 0; i < kIdle; ++i) {
    SCOPED_TRACE(i);
    auto r = idle[static_cast<std::size_t>(i)]->reply(2);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ((*r)["id"], nullptr);
    EXPECT_EQ((*r)["error"]["code"], "timed_out");
    const std::string message = (*r)["error"]["message"];
    EXPECT_NE(message.find("no hello within 0.5 s"), std::string::npos) << message;
    EXPECT_TRUE(idle[static_cast<std::size_t>(i)]->closed_by_peer(2));
  }
  auto pong = greeted.call({{"id", 5}, {"op", "ping"}});
  EXPECT_EQ(pong.value("ok", false), true) << pong.dump();
  ASSERT_EQ(d.snapshot().leases.size(), 1u);
  EXPECT_TRUE(good->release("good", JobOutcome::kSucceeded).ok());
}

// One uid's N+1-th connection is refused with a line naming the limit, while another uid
// still connects and established clients are served; root is exempt.
TEST(DaemonProcesses, ConnectionsPerUidAreLimited) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run clients as other uids";
  if (::access("/usr/bin/setpriv", X_OK) != 0) GTEST_SKIP() << "needs /usr/bin/setpriv";
  TempDir tmp;
  ASSERT_EQ(::chmod(tmp.path().c_str(), 0755), 0);
  TestDaemon d("1x10GiB", 3, "nogroup", tmp.path(),
               [](daemon::ServerOptions& o) { o.max_connections_per_uid = 4; });
  auto as_uid = [&](const std::string& uid, std::vector<std::string> args) {
    std::vector<std::string> argv = {"/usr/bin/setpriv", "--reuid=" + uid, "--regid=nogroup",
                                     "--clear-groups", helper()};
    argv.insert(argv.end(), args.begin(), args.end());
    return spawn(argv);
  };
  auto root = connect_daemon(d.socket).value();
  ASSERT_TRUE(root->try_acquire(req("root-held", kGiB)).ok());
  Child nobody = as_uid("65534", {"connect_many", d.socket, "5"});
  for (int i = 0; i < 4; ++i) EXPECT_EQ(nobody.read_line(), "ok") << i;
  const std::string refused = nobody.read_line();
  EXPECT_NE(refused.find("resource_exhausted: "), std::string::npos) << refused;
  EXPECT_NE(refused.find("uid 65534 already has 4 connections"), std::string::npos) << refused;
  EXPECT_NE(refused.find("--max-connections-per-uid"), std::string::npos) << refused;
  EXPECT_EQ(nobody.read_line(), "done");
  // nobody holds 4 connections, its limit: another uid, and root, still connect.
  Child other = as_uid("12345", {"connect_many", d.socket, "2"});
  EXPECT_EQ(other.read_line(), "ok");
  EXPECT_EQ(other.read_line(), "ok");
  EXPECT_EQ(other.read_line(), "done");
  std::vector<std::unique_ptr<RawClient>> roots;
  for (int i = 0; i < 6; ++i) {
    roots.push_back(std::make_unique<RawClient>(d.socket));
    EXPECT_TRUE(roots.back()->hello()) << "root is exempt: " << i;
  }
  ASSERT_TRUE(root->try_acquire(req("root-2", kGiB)).ok());
  ASSERT_TRUE(root->release("root-2", JobOutcome::kSucceeded).ok());
  // Once nobody's connections close, it may connect again.
  nobody.kill();
  nobody.wait();
  Child again = as_uid("65534", {"connect_many", d.socket, "1"});
  EXPECT_EQ(again.read_line(), "ok");
  EXPECT_EQ(again.read_line(), "done");
  again.kill();
  again.wait();
  other.kill();
  other.wait();
  EXPECT_TRUE(root->release("root-held", JobOutcome::kSucceeded).ok());
}

// A socket folder that someone else could replace the socket in is refused, saying which
// folder and why; a sticky shared folder (like /tmp) is fine.
TEST(Daemon, RefusesASocketFolderThatAnotherUserCouldReplace) {
  TempDir tmp;
  auto ledger = core::LocalLedger::create(SimulatedBackend::from_spec("1x1GiB").value(), {});
  ASSERT_TRUE(ledger.ok());
  auto create_at = [&](const std::string& folder) {
    daemon::ServerOptions o;
    o.socket_path = folder + "/gpumgr.sock";
    return daemon::Server::create(o, ledger.value());
  };
  const std::string open = tmp.path() + "/open";
  ASSERT_EQ(::mkdir(open.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(open.c_str(), 0777), 0);
  auto refused = create_at(open);
  ASSERT_FALSE(refused.ok()) << "a folder writable by everyone was accepted";
  EXPECT_EQ(refused.status().code(), ErrorCode::kPermissionDenied);
  EXPECT_NE(refused.status().message().find(open + " is writable by others (mode 0777)"),
            std::string::npos)
      << refused.status().message();
  const std::string sticky = tmp.path() + "/sticky";
  ASSERT_EQ(::mkdir(sticky.c_str(), 0700), 0);
  ASSERT_EQ(::chmod(sticky.c_str(), 01777), 0);
  {
    auto ok = create_at(sticky);
    EXPECT_TRUE(ok.ok()) << ok.status().to_string();
  }
  if (::geteuid() == 0) {
    // Another user's folder, the hijack of the fallback /tmp/gpumgr-<uid>/.
    const std::string theirs = tmp.path() + "/theirs";
    ASSERT_EQ(::mkdir(theirs.c_str(), 0755), 0);
    ASSERT_EQ(::chown(theirs.c_str(), 65534, 65534), 0);
    auto r = create_at(theirs);
    ASSERT_FALSE(r.ok()) << "a folder of uid 65534 was accepted";
    EXPECT_NE(r.status().message().find(theirs + " is owned by uid 65534"), std::string::npos)
        << r.status().message();
    // ... also behind a symbolic link of ours.
    const std::string link = tmp.path() + "/link";
    ASSERT_EQ(::symlink(theirs.c_str(), link.c_str()), 0);
    auto via = create_at(link);
    ASSERT_FALSE(via.ok());
    EXPECT_NE(via.status().message().find("is owned by uid 65534"), std::string::npos)
        << via.status().message();
  }
}

// --kill-orphans: when a holder's connection closes while it holds a lease, its process tree
// gets SIGTERM, and SIGKILL after the grace; processes of other uids are left alone.
TEST(DaemonProcesses, KillOrphansEndsTheProcessTreeOfAHolderThatDied) {
  TestDaemon d("1x10GiB", 3, {}, {}, [](daemon::ServerOptions& o) {
    o.kill_orphans = true;
    o.kill_orphans_grace_s = 0.5;
    o.orphan_scan_interval_s = 0.05;
  });
  Child holder = spawn({helper(), "hold_tree", d.socket, "orphans", std::to_string(kGiB)});
  const std::string line = holder.read_line();
  int a = 0, b = 0, c = 0, other_uid = 0;
  ASSERT_EQ(std::sscanf(line.c_str(), "tree %d %d %d %d", &a, &b, &c, &other_uid), 4) << line;
  ASSERT_TRUE(alive(a) && alive(b) && alive(c));
  ASSERT_EQ(d.snapshot().leases.size(), 1u);
  // Two scans after the whole tree is up: the second read it all, however slow the machine.
  const std::uint64_t scans = d.server->holder_tree_scans();
  ASSERT_TRUE(eventually([&] { return d.server->holder_tree_scans() >= scans + 2; }, 20));
  const auto killed_at = std::chrono::steady_clock::now();
  holder.kill();  // SIGKILL: it cannot end its children itself
  holder.wait();
  EXPECT_TRUE(eventually([&] { return !alive(a) && !alive(c); }, 5)) << "SIGTERM did not come";
  EXPECT_TRUE(eventually([&] { return !alive(b); }, 5)) << "SIGKILL did not come";
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count();
  EXPECT_GE(took, 0.4) << "the SIGTERM-ignoring child was killed before the grace";
  EXPECT_TRUE(eventually([&] { return d.snapshot().leases.empty(); }));
  if (other_uid > 0) {
    EXPECT_TRUE(alive(other_uid)) << "a process of another uid was signalled";
    ::kill(other_uid, SIGKILL);
  }
  for (const int p : {a, b, c}) ::kill(p, SIGKILL);  // whatever is left, on failure
}

// Off by default: the daemon releases the lease and signals nothing.
TEST(DaemonProcesses, OrphansAreLeftAloneByDefault) {
  TestDaemon d("1x10GiB", 3, {}, {},
               [](daemon::ServerOptions& o) { o.orphan_scan_interval_s = 0.05; });
  Child holder = spawn({helper(), "hold_tree", d.socket, "orphans", std::to_string(kGiB)});
  const std::string line = holder.read_line();
  int a = 0, b = 0, c = 0, other_uid = 0;
  ASSERT_EQ(std::sscanf(line.c_str(), "tree %d %d %d %d", &a, &b, &c, &other_uid), 4) << line;
  holder.kill();
  holder.wait();
  EXPECT_TRUE(eventually([&] { return d.snapshot().leases.empty(); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_TRUE(alive(a) && alive(b) && alive(c));
  for (const int p : {a, b, c, other_uid}) {
    if (p > 0) ::kill(p, SIGKILL);
  }
}

}  // namespace
}  // namespace gpumgr::testing
