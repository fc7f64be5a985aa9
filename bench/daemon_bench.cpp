// The daemon's cost per call, against a floor measured in the same run.
//
// - BM_Floor_UnixPingPong: a bare Unix-socket ping-pong (an echo thread), two exchanges of
//   the same sizes as a try_acquire and a release request and reply: the least any daemon
//   on a Unix socket can cost.
// - BM_Daemon_AcquireRelease: try_acquire + release through connect_daemon against an
//   in-process Server (its own loop thread), i.e. the whole client and server path;
//   _Journaled: the same with the lease journal that `gpumgr serve` writes.
// - BM_Daemon_AcquireRelease_1000Clients / BM_Daemon_CanAdmit_1000Clients: the same against
//   a daemon in a child process that serves 1,000 other connections, 500 holding a lease and
//   500 waiting; the counters report the daemon's RSS before and with the 1,000 clients.
#include <benchmark/benchmark.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "core/local_ledger.h"
#include "daemon/protocol.h"
#include "daemon/server.h"
#include "gpumgr/backends.h"
#include "gpumgr/ledger.h"
#include "gpumgr/units.h"
#include "state/lease_journal.h"

namespace {
using namespace gpumgr;

// The command a benchmark lease reports; it sizes the messages, the floor's included.
constexpr const char* kBenchCommand = "build/bench/daemon_bench --benchmark_filter=x";

// The lease every daemon benchmark takes: 1 GiB, on `device` (-1: any).
LeaseRequest bench_request(int device) {
  LeaseRequest r;
  r.job_id = "bench";
  r.bytes = kGiB;
  r.device = device;
  r.command = kBenchCommand;
  return r;
}

// One try_acquire + release round trip per iteration, over `client`'s connection.
void acquire_release_loop(benchmark::State& state, Ledger& client, const LeaseRequest& r) {
  for (auto _ : state) {
    auto lease = client.try_acquire(r);
    if (!lease.ok()) state.SkipWithError(lease.status().to_string().c_str());
    (void)client.release(r.job_id, JobOutcome::kSucceeded);
  }
}

std::string temp_dir() {
  char tmpl[] = "/tmp/gpumgr-bench-XXXXXX";
  return ::mkdtemp(tmpl);
}

int connect_unix(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void write_all(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<std::size_t>(n);
  }
}

// Reads up to and including the next newline (byte by byte into a buffer kept per fd).
bool read_line(int fd, std::string& buffer, std::string& line) {
  char buf[4096];
  while (true) {
    if (const auto nl = buffer.find('\n'); nl != std::string::npos) {
      line = buffer.substr(0, nl);
      buffer.erase(0, nl + 1);
      return true;
    }
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return false;
    buffer.append(buf, static_cast<std::size_t>(n));
  }
}

// The sizes of real messages, so that the floor moves the same bytes.
struct Sizes {
  std::size_t acquire_request, acquire_reply, release_request, release_reply;
};
Sizes message_sizes() {
  daemon::Request acquire;
  acquire.id = 12;
  acquire.op = daemon::Op::kTryAcquire;
  acquire.lease.job_id = "bench";
  acquire.lease.bytes = kGiB;
  daemon::Request release;
  release.id = 13;
  release.op = daemon::Op::kRelease;
  release.job_id = "bench";
  LeaseInfo lease;
  lease.job_id = "bench";
  lease.devices = {0};
  lease.bytes = kGiB;
  lease.pid = 12345;
  lease.command = kBenchCommand;
  lease.granted_at = std::chrono::system_clock::now();
  nlohmann::json lj = {{"job_id", lease.job_id},
                       {"devices", lease.devices},
                       {"bytes", lease.bytes},
                       {"priority", 0},
                       {"pid", lease.pid},
                       {"uid", 0},
                       {"command", lease.command},
                       {"granted_at", 1718000000.123456},
                       {"age_s", 0.0},
                       {"waited_s", 0.0}};
  return {daemon::encode_request(acquire).size(), daemon::encode_ok(12, {{"lease", lj}}).size(),
          daemon::encode_request(release).size(), daemon::encode_ok(13).size()};
}

void BM_Floor_UnixPingPong(benchmark::State& state) {
  const Sizes sizes = message_sizes();
  const std::string dir = temp_dir();
  const std::string path = dir + "/echo.sock";
  const int listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  ::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::listen(listener, 1);
  std::thread echo([&] {
    const int fd = ::accept(listener, nullptr, nullptr);
    std::string buffer, line;
    bool first = true;
    // Answers each request line with a reply line of the matching real size.
    while (read_line(fd, buffer, line)) {
      const std::size_t size = first ? sizes.acquire_reply : sizes.release_reply;
      first = !first;
      write_all(fd, std::string(size - 1, 'r') + "\n");
    }
    ::close(fd);
  });
  const int fd = connect_unix(path);
  const std::string acquire(sizes.acquire_request - 1, 'a');
  const std::string release(sizes.release_request - 1, 'b');
  std::string buffer, line;
  for (auto _ : state) {
    write_all(fd, acquire + "\n");
    read_line(fd, buffer, line);
    write_all(fd, release + "\n");
    read_line(fd, buffer, line);
  }
  ::close(fd);
  echo.join();
  ::close(listener);
  ::unlink(path.c_str());
  ::rmdir(dir.c_str());
  state.counters["acquire_request_B"] = static_cast<double>(sizes.acquire_request);
  state.counters["acquire_reply_B"] = static_cast<double>(sizes.acquire_reply);
}
BENCHMARK(BM_Floor_UnixPingPong)->UseRealTime();

// `journaled`: with the lease journal `gpumgr serve` keeps (a SQLite transaction written
// before each grant is answered, and one at each release), so that its cost shows against
// the same path without it, in the same run.
void daemon_acquire_release(benchmark::State& state, bool journaled) {
  const std::string dir = temp_dir();
  auto backend = SimulatedBackend::from_spec("1x80GiB").value();
  LedgerConfig config;
  config.memory_limit = 1.0;
  auto ledger = core::LocalLedger::create(backend, config).value();
  daemon::ServerOptions options;
  options.socket_path = dir + "/gpumgr.sock";
  const std::string journal_file = dir + "/leases.db";
  if (journaled) options.journal = state::LeaseJournal::open(journal_file).value();
  auto server = daemon::Server::create(options, ledger).value();
  server->start_background();
  {
    auto client = connect_daemon(options.socket_path).value();
    acquire_release_loop(state, *client, bench_request(-1));
  }
  server.reset();
  for (const char* suffix : {"", "-wal", "-shm"}) ::unlink((journal_file + suffix).c_str());
  ::rmdir(dir.c_str());
}

void BM_Daemon_AcquireRelease(benchmark::State& state) { daemon_acquire_release(state, false); }
BENCHMARK(BM_Daemon_AcquireRelease)->UseRealTime();

void BM_Daemon_AcquireRelease_Journaled(benchmark::State& state) {
  daemon_acquire_release(state, true);
}
BENCHMARK(BM_Daemon_AcquireRelease_Journaled)->UseRealTime();

// ---- 1,000 clients: a daemon in a child process ----

struct LoadDaemon {
  pid_t pid = -1;
  std::string dir;
  std::string socket;
  std::vector<int> clients;
  double rss_idle_kib = 0;
  double rss_loaded_kib = 0;
  int holding = 0;
  int waiting = 0;
};
LoadDaemon g_load;

double rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (in >> key) {
    if (key == "VmRSS:") {
      double kib = 0;
      in >> kib;
      return kib;
    }
  }
  return 0;
}

// Forks the daemon before any thread exists (fork in a threaded process is unsafe).
void fork_load_daemon() {
  g_load.dir = temp_dir();
  g_load.socket = g_load.dir + "/gpumgr.sock";
  const pid_t pid = ::fork();
  if (pid == 0) {
    daemon::raise_open_file_limit();
    // Device 0 holds 500 one-GiB leases; device 1 is free for the measuring client.
    auto backend = SimulatedBackend::from_spec("500GiB,80GiB").value();
    LedgerConfig config;
    config.memory_limit = 1.0;
    config.max_concurrent_jobs = 100000;
    auto ledger = core::LocalLedger::create(backend, config).value();
    daemon::ServerOptions options;
    options.socket_path = g_load.socket;
    options.handle_signals = true;
    // The load opens 1,000 connections from one uid: more than the per-uid default allows
    // anyone but root.
    options.max_connections_per_uid = 0;
    auto server = daemon::Server::create(options, ledger);
    if (!server.ok()) _exit(1);
    server.value()->run();
    _exit(0);
  }
  g_load.pid = pid;
}

void wait_for_load_daemon() {
  for (int tries = 0; tries < 500; ++tries) {
    const int fd = connect_unix(g_load.socket);
    if (fd >= 0) {
      ::close(fd);
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

bool connect_load_clients(int n) {
  wait_for_load_daemon();
  g_load.rss_idle_kib = rss_kib(g_load.pid);
  for (int i = 0; i < n; ++i) {
    const int fd = connect_unix(g_load.socket);
    if (fd < 0) return false;
    write_all(
        fd,
        "{\"id\":0,\"op\":\"hello\",\"version\":1}\n{\"id\":1,\"op\":\"acquire\",\"job_id\":\"c" +
            std::to_string(i) + "\",\"bytes\":" + std::to_string(kGiB) + ",\"device\":0}\n");
    g_load.clients.push_back(fd);
  }
  auto probe = connect_daemon(g_load.socket);
  if (!probe.ok()) return false;
  for (int tries = 0; tries < 1000; ++tries) {
    auto snap = probe.value()->snapshot();
    if (snap.ok() && snap->leases.size() + snap->queue.size() == static_cast<std::size_t>(n)) {
      g_load.holding = static_cast<int>(snap->leases.size());
      g_load.waiting = static_cast<int>(snap->queue.size());
      g_load.rss_loaded_kib = rss_kib(g_load.pid);
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

void add_load_counters(benchmark::State& state) {
  state.counters["clients"] = static_cast<double>(g_load.clients.size());
  state.counters["holding"] = g_load.holding;
  state.counters["waiting"] = g_load.waiting;
  state.counters["daemon_rss_idle_MiB"] = g_load.rss_idle_kib / 1024;
  state.counters["daemon_rss_1000_MiB"] = g_load.rss_loaded_kib / 1024;
}

// The daemon in its own process, as deployed, before the 1,000 clients connect.
void BM_Daemon_AcquireRelease_OtherProcess(benchmark::State& state) {
  wait_for_load_daemon();
  auto client = connect_daemon(g_load.socket).value();
  acquire_release_loop(state, *client, bench_request(1));
}
BENCHMARK(BM_Daemon_AcquireRelease_OtherProcess)->UseRealTime();

// Connects the 1,000 background clients once, for the benchmarks that measure under load.
bool ensure_load_clients(benchmark::State& state) {
  if (!g_load.clients.empty() || connect_load_clients(1000)) return true;
  state.SkipWithError("could not connect 1000 clients");
  return false;
}

void BM_Daemon_AcquireRelease_1000Clients(benchmark::State& state) {
  if (!ensure_load_clients(state)) return;
  auto client = connect_daemon(g_load.socket).value();
  acquire_release_loop(state, *client, bench_request(1));
  add_load_counters(state);
}
BENCHMARK(BM_Daemon_AcquireRelease_1000Clients)->UseRealTime();

void BM_Daemon_CanAdmit_1000Clients(benchmark::State& state) {
  if (!ensure_load_clients(state)) return;
  auto client = connect_daemon(g_load.socket).value();
  for (auto _ : state) benchmark::DoNotOptimize(client->can_admit(kGiB, 1, 1));
  add_load_counters(state);
}
BENCHMARK(BM_Daemon_CanAdmit_1000Clients)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  ::signal(SIGPIPE, SIG_IGN);
  gpumgr::daemon::raise_open_file_limit();
  fork_load_daemon();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  for (int fd : g_load.clients) ::close(fd);
  ::kill(g_load.pid, SIGTERM);
  int status = 0;
  ::waitpid(g_load.pid, &status, 0);
  ::rmdir(g_load.dir.c_str());
  return 0;
}
