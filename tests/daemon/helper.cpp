// daemon_test_helper: a client process for the multi-process daemon tests. Each mode is one
// kind of client (a holder to be killed, a contender, a probe, another uid's release, a
// holder with a process tree, many raw connections).
// Exit codes: 0 ok; 10 permission_denied; 11 another error; 12 an invariant was broken;
// 2 bad arguments.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gpumgr/ledger.h"
#include "shared_counters.h"

using namespace gpumgr;

namespace {

std::shared_ptr<Ledger> connect_or_die(const char* socket) {
  auto ledger = connect_daemon(socket);
  if (!ledger.ok()) {
    std::fprintf(stderr, "helper: %s\n", ledger.status().to_string().c_str());
    std::exit(11);
  }
  return ledger.value();
}

int code_of(const Status& s) {
  std::printf("%s\n", std::string(error_code_name(s.code())).c_str());
  std::fflush(stdout);
  if (s.ok()) return 0;
  return s.code() == ErrorCode::kPermissionDenied ? 10 : 11;
}

SharedCounters* map_counters(const char* path) {
  const int fd = ::open(path, O_RDWR);
  if (fd < 0) return nullptr;
  void* p = ::mmap(nullptr, sizeof(SharedCounters), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  return p == MAP_FAILED ? nullptr : static_cast<SharedCounters*>(p);
}

[[noreturn]] void sleep_forever() {
  for (;;) ::pause();
}

// A child that runs sleep_forever(); `setup` runs in it first (async-signal-safe calls only).
template <typename Setup>
pid_t fork_sleeper(Setup setup) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    setup();
    sleep_forever();
  }
  return pid;
}

// One raw connection: connect, hello, read the first line. "ok", the daemon's error message,
// "closed" (EOF before any line) or "connect failed: ...".
std::string hello_once(const char* path, int* fd_out) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path, sizeof(addr.sun_path) - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const std::string err = std::strerror(errno);
    ::close(fd);
    return "connect failed: " + err;
  }
  *fd_out = fd;
  const std::string hello = "{\"id\":0,\"op\":\"hello\",\"version\":1}\n";
  (void)::send(fd, hello.data(), hello.size(), MSG_NOSIGNAL);
  std::string line;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char c = 0;
    if (::recv(fd, &c, 1, 0) != 1) return line.empty() ? "closed" : line;
    if (c == '\n') break;
    line.push_back(c);
  }
  // The daemon's replies are compact JSON ({"error":{"code":"...","message":"..."},...}).
  if (line.find("\"ok\":true") != std::string::npos) return "ok";
  const auto field = [&](const std::string& name) {
    const std::string key = "\"" + name + "\":\"";
    const auto at = line.find(key);
    if (at == std::string::npos) return std::string();
    std::string out;
    for (std::size_t i = at + key.size(); i < line.size() && line[i] != '"'; ++i) {
      if (line[i] == '\\' && i + 1 < line.size()) ++i;
      out.push_back(line[i]);
    }
    return out;
  };
  return field("code") + ": " + field("message");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  const std::string mode = argv[1];
  const char* socket = argv[2];
  if (mode == "hold" && argc == 5) {
    // hold SOCKET JOB BYTES: take a lease, say so, hold it until killed.
    auto ledger = connect_or_die(socket);
    LeaseRequest r;
    r.job_id = argv[3];
    r.bytes = std::strtoull(argv[4], nullptr, 10);
    auto lease = ledger->acquire(r, {});
    if (!lease.ok()) return code_of(lease.status());
    std::printf("granted uid=%u pid=%u\n", lease->uid, lease->pid);
    std::fflush(stdout);
    while (true) std::this_thread::sleep_for(std::chrono::seconds(60));
  }
  if (mode == "hold_tree" && argc == 5) {
    // hold_tree SOCKET JOB BYTES: start a process tree (before connecting, so that no child
    // holds the connection), take a lease, print "tree A B C D" and hold until killed:
    // A sleeps, B ignores SIGTERM, C is A's child, D runs as nobody (0 unless root).
    int fds[2];
    if (::pipe(fds) != 0) return 2;
    const pid_t a = fork_sleeper([&] {
      const pid_t c = fork_sleeper([] {});
      (void)::write(fds[1], &c, sizeof(c));
    });
    pid_t c = 0;
    if (::read(fds[0], &c, sizeof(c)) != static_cast<ssize_t>(sizeof(c))) return 2;
    const pid_t b = fork_sleeper([] { ::signal(SIGTERM, SIG_IGN); });
    pid_t d = 0;
    if (::geteuid() == 0) {
      d = fork_sleeper([] {
        if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0) {
          ::_exit(3);
        }
      });
    }
    auto ledger = connect_or_die(socket);
    LeaseRequest r;
    r.job_id = argv[3];
    r.bytes = std::strtoull(argv[4], nullptr, 10);
    auto lease = ledger->acquire(r, {});
    if (!lease.ok()) return code_of(lease.status());
    std::printf("tree %d %d %d %d\n", static_cast<int>(a), static_cast<int>(b), static_cast<int>(c),
                static_cast<int>(d));
    std::fflush(stdout);
    while (true) std::this_thread::sleep_for(std::chrono::seconds(60));
  }
  if (mode == "connect_many" && argc == 4) {
    // connect_many SOCKET N: N connections, each with hello; one line per connection (see
    // hello_once), then "done"; keeps them open until killed.
    const int n = std::atoi(argv[3]);
    std::vector<int> open;
    for (int i = 0; i < n; ++i) {
      int fd = -1;
      std::printf("%s\n", hello_once(socket, &fd).c_str());
      std::fflush(stdout);
      if (fd >= 0) open.push_back(fd);
    }
    std::printf("done\n");
    std::fflush(stdout);
    while (true) std::this_thread::sleep_for(std::chrono::seconds(60));
  }
  if ((mode == "release" || mode == "cancel") && argc == 4) {
    auto ledger = connect_or_die(socket);
    return code_of(mode == "release" ? ledger->release(argv[3], JobOutcome::kSucceeded)
                                     : ledger->cancel(argv[3]));
  }
  if (mode == "acquire_release" && argc == 5) {
    auto ledger = connect_or_die(socket);
    LeaseRequest r;
    r.job_id = argv[3];
    r.bytes = std::strtoull(argv[4], nullptr, 10);
    auto lease = ledger->acquire(r, WaitOptions::for_seconds(10));
    if (!lease.ok()) return code_of(lease.status());
    std::printf("uid=%u\n", lease->uid);
    return code_of(ledger->release(r.job_id, JobOutcome::kSucceeded));
  }
  if (mode == "contend" && argc == 9) {
    // contend SOCKET COUNTERS PREFIX ROUNDS BYTES CAPACITY MAX_JOBS: take and release leases;
    // while each is held, count it in shared memory and check the limits.
    auto ledger = connect_or_die(socket);
    SharedCounters* c = map_counters(argv[3]);
    if (c == nullptr) return 2;
    const int rounds = std::atoi(argv[5]);
    const std::int64_t bytes = std::atoll(argv[6]);
    const std::int64_t capacity = std::atoll(argv[7]);
    const std::int64_t max_jobs = std::atoll(argv[8]);
    for (int i = 0; i < rounds; ++i) {
      LeaseRequest r;
      r.job_id = std::string(argv[4]) + "-" + std::to_string(i);
      r.bytes = static_cast<std::uint64_t>(bytes);
      auto lease = ledger->acquire(r, WaitOptions::for_seconds(30));
      if (!lease.ok()) return code_of(lease.status());
      const std::int64_t jobs = c->holders.fetch_add(1) + 1;
      const std::int64_t held = c->bytes.fetch_add(bytes) + bytes;
      if (jobs > max_jobs || held > capacity) c->violations.fetch_add(1);
      c->grants.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::microseconds(500 + (i * 37) % 1500));  // work
      c->holders.fetch_sub(1);
      c->bytes.fetch_sub(bytes);
      if (Status s = ledger->release(r.job_id, JobOutcome::kSucceeded); !s.ok()) return code_of(s);
    }
    return 0;
  }
  if (mode == "probe" && argc == 6) {
    // probe SOCKET CAPACITY MAX_JOBS STOPFILE: watch the daemon's view until STOPFILE exists.
    auto ledger = connect_or_die(socket);
    const std::uint64_t capacity = std::strtoull(argv[3], nullptr, 10);
    const std::size_t max_jobs = std::strtoull(argv[4], nullptr, 10);
    long checks = 0;
    while (::access(argv[5], F_OK) != 0) {
      auto snap = ledger->snapshot();
      if (!snap.ok()) return code_of(snap.status());
      std::uint64_t leased = 0;
      for (const auto& l : snap->leases) leased += l.bytes;
      if (leased > capacity || snap->leases.size() > max_jobs ||
          snap->devices.at(0).leased_bytes != leased) {
        std::printf("violation: %zu leases, %llu bytes\n", snap->leases.size(),
                    static_cast<unsigned long long>(leased));
        return 12;
      }
      ++checks;
    }
    std::printf("checks=%ld\n", checks);
    return 0;
  }
  return 2;
}
