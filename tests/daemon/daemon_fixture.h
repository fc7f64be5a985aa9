// Test support for the daemon tests: a Server on a simulated device in a temporary folder,
// helper processes, raw protocol connections, and waiting for a condition with a deadline.
// Used from the test's main thread only.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/local_ledger.h"
#include "daemon/protocol.h"
#include "daemon/server.h"
#include "gpumgr/backends.h"
#include "gpumgr/ledger.h"
#include "gpumgr/units.h"

extern char** environ;

namespace gpumgr::testing {

// Polls `cond` until it holds or `seconds` pass.
inline bool eventually(const std::function<bool()>& cond, double seconds = 10) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(seconds));
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return cond();
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/gpumgr-daemon-test-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A daemon on `spec` simulated devices, serving in the background.
struct TestDaemon {
  // `configure`, when given, adjusts the server's options (timeouts, limits) before it starts.
  explicit TestDaemon(const std::string& spec = "1x10GiB", int max_jobs = 3, std::string group = {},
                      std::string dir = {},
                      const std::function<void(daemon::ServerOptions&)>& configure = {}) {
    if (dir.empty()) {
      tmp = std::make_unique<TempDir>();
      dir = tmp->path();
    }
    socket = dir + "/gpumgr.sock";
    backend = SimulatedBackend::from_spec(spec).value();
    LedgerConfig config;
    config.max_concurrent_jobs = max_jobs;
    config.memory_limit = 1.0;
    config.poll_interval = std::chrono::milliseconds(50);
    ledger = core::LocalLedger::create(backend, config).value();
    daemon::ServerOptions options;
    options.socket_path = socket;
    options.socket_group = std::move(group);
    if (configure) configure(options);
    auto created = daemon::Server::create(options, ledger);
    if (!created.ok()) {
      ADD_FAILURE() << created.status().to_string();
      return;
    }
    server = std::move(created).value();
    server->start_background();
  }
  Snapshot snapshot() { return ledger->snapshot().value(); }

  std::unique_ptr<TempDir> tmp;
  std::string socket;
  std::shared_ptr<SimulatedBackend> backend;
  std::shared_ptr<core::LocalLedger> ledger;
  std::unique_ptr<daemon::Server> server;
};

// A child process with its stdout on a pipe.
struct Child {
  pid_t pid = -1;
  int out = -1;

  // Reads one line of the child's stdout, waiting up to `seconds`; empty on EOF or timeout.
  std::string read_line(double seconds = 10) {
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(static_cast<int>(seconds * 1000));
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{out, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      char c = 0;
      if (::read(out, &c, 1) != 1) return line;
      if (c == '\n') return line;
      line.push_back(c);
    }
    return line;
  }
  // Waits for the exit; returns the exit code, or 128+signal.
  int wait() {
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (out >= 0) ::close(out);
    out = -1;
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  void kill(int sig = SIGKILL) const { ::kill(pid, sig); }
};

// posix_spawn: safe in a threaded test process, unlike fork with work in the child.
inline Child spawn(const std::vector<std::string>& args) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return {};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  std::vector<char*> argv;
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  Child child;
  if (::posix_spawn(&child.pid, argv[0], &actions, nullptr, argv.data(), environ) != 0) {
    child.pid = -1;
  }
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  child.out = fds[0];
  return child;
}

// A raw protocol connection, for sending exactly the bytes a test wants.
class RawClient {
 public:
  explicit RawClient(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawClient() { close(); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  bool send(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }
  // The next line, or nullopt when the daemon closed the connection or `seconds` passed.
  std::optional<std::string> line(double seconds = 10) {
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(static_cast<int>(seconds * 1000));
    while (true) {
      if (const auto nl = buffer_.find('\n'); nl != std::string::npos) {
        std::string l = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return l;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) {
        eof_ = true;
        return std::nullopt;
      }
      buffer_.append(buf, static_cast<std::size_t>(n));
    }
  }
  std::optional<nlohmann::json> reply(double seconds = 10) {
    auto l = line(seconds);
    if (!l) return std::nullopt;
    return nlohmann::json::parse(*l);
  }
  nlohmann::json call(const nlohmann::json& request) {
    send(request.dump() + "\n");
    auto r = reply();
    return r ? *r : nlohmann::json();
  }
  bool hello() {
    auto r = call({{"id", 0}, {"op", "hello"}, {"version", daemon::kProtocolVersion}});
    return r.is_object() && r.value("ok", false);
  }
  // True once the daemon has closed the connection (EOF), within `seconds`.
  bool closed_by_peer(double seconds = 10) {
    while (line(seconds)) {
      // Drain replies until EOF.
    }
    return eof_;
  }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool eof_ = false;
  std::string buffer_;
};

inline std::string helper() { return GPUMGR_DAEMON_TEST_HELPER; }

// Whether `pid` runs: a zombie that waits for its reaper (an orphan's reaper may be slow, or
// absent in a container) does not count.
inline bool alive(pid_t pid) {
  if (pid <= 0) return false;
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/%d/stat", static_cast<int>(pid));
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[1024];
  const ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return false;
  const std::string stat(buf, static_cast<std::size_t>(n));
  const auto paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size()) return false;
  const char state = stat[paren + 2];
  return state != 'Z' && state != 'X';
}

}  // namespace gpumgr::testing
