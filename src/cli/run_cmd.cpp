// gpumgr run --vram SIZE [--gpus N] [--priority N] [--timeout SECONDS] [--job-id ID] -- CMD...
// Waits for a lease from the daemon, runs CMD with CUDA_VISIBLE_DEVICES set to the leased
// GPUs, holds the lease while CMD runs, forwards SIGINT/SIGTERM to it, releases the lease
// when it ends and exits with CMD's exit code (128+N when signal N killed it).
//
// Threads: the main thread acquires, forks and waits for CMD; a signal thread (sigwait)
// turns SIGINT/SIGTERM into a cancelled wait before CMD starts and into a forwarded signal
// after. Both signals are blocked in every other thread, the daemon client's reader included.
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "daemon/protocol.h"
#include "gpumgr/ledger.h"
#include "gpumgr/units.h"

namespace gpumgr::cli {

namespace {

std::string join(const std::vector<std::string>& parts, const char* sep) {
  std::string out;
  for (const auto& p : parts) {
    if (!out.empty()) out += sep;
    out += p;
  }
  return out;
}

std::string hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "host";
  return buf;
}

// Forwards SIGINT/SIGTERM: to CMD once it runs, else to the waiting acquire's cancel token.
class SignalForwarder {
 public:
  explicit SignalForwarder(CancelToken token) : token_(std::move(token)) {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGUSR2);  // our own "stop" message
    thread_ = std::thread([this] { loop(); });
  }
  ~SignalForwarder() {
    stop_.store(true);
    ::pthread_kill(thread_.native_handle(), SIGUSR2);
    thread_.join();
  }
  void set_child(pid_t pid) { child_.store(pid); }
  int received() const { return received_.load(); }

  // Blocks the signals in the calling thread and in every thread it starts later.
  static void block_in_this_thread() {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGINT);
    sigaddset(&s, SIGTERM);
    sigaddset(&s, SIGUSR2);
    ::pthread_sigmask(SIG_BLOCK, &s, nullptr);
  }

 private:
  void loop() {
    while (true) {
      int signo = 0;
      if (::sigwait(&set_, &signo) != 0) continue;
      if (signo == SIGUSR2) {
        if (stop_.load()) return;
        continue;
      }
      received_.store(signo);
      const pid_t child = child_.load();
      if (child > 0) {
        ::kill(child, signo);
      } else {
        token_.cancel();
      }
    }
  }

  CancelToken token_;
  sigset_t set_{};
  std::atomic<pid_t> child_{0};
  std::atomic<int> received_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace

Command setup_run(CLI::App& app, const GlobalOptions& /*global*/) {
  struct Options {
    std::string vram;
    int gpus = 1;
    int priority = 0;
    double timeout = -1;
    std::string job_id;
    std::string kind;
    std::string default_vram;
    std::string socket;
    std::vector<std::string> command;
  };
  auto opts = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "run", "Wait for a lease from the daemon, then run a command on the leased GPUs");
  sub->add_option("--vram", opts->vram,
                  "Memory per GPU, e.g. 10GiB (a bare number is MiB), or auto: the --kind's "
                  "learned estimate")
      ->required();
  sub->add_option("--kind", opts->kind,
                  "What kind of job this is (e.g. sdxl-1024): its measured peak is recorded, and "
                  "--vram auto asks for what the kind's past runs needed");
  sub->add_option("--default-vram", opts->default_vram,
                  "With --vram auto: the size to ask for while the kind has too few runs");
  sub->add_option("--gpus", opts->gpus, "Number of GPUs")->capture_default_str();
  sub->add_option("--priority", opts->priority, "Higher is served first")->capture_default_str();
  sub->add_option("--timeout", opts->timeout,
                  "Give up waiting for the lease after this many seconds (default: wait)");
  sub->add_option("--job-id", opts->job_id, "Job id (default: run-<hostname>-<pid>)");
  sub->add_option("--socket", opts->socket,
                  "The daemon's socket (default: GPUMGR_SOCKET, else the default path)");
  sub->add_option("command", opts->command, "The command and its arguments, after --")->required();
  sub->positionals_at_end();
  sub->footer(
      "CMD gets CUDA_VISIBLE_DEVICES (the leased GPUs' UUIDs), CUDA_DEVICE_ORDER=PCI_BUS_ID,\n"
      "GPUMGR_LEASE_JOB_ID, GPUMGR_LEASE_DEVICES (device indices) and GPUMGR_LEASE_BYTES\n"
      "(the lease per device, in bytes: gpu_manager caps torch at it; GPUMGR_ENFORCE=0 opts out).\n"
      "Exit codes: CMD's own; 128+N when signal N killed it; 127 when CMD cannot be run.\n"
      "Before CMD runs: 1 no lease (timed out, cancelled, failed); 2 bad arguments;\n"
      "3 no daemon reachable.");
  return {sub, [opts, sub]() -> int {
            const bool automatic = opts->vram == "auto";
            StatusOr<std::uint64_t> bytes = std::uint64_t{0};
            if (!automatic) bytes = parse_size(opts->vram);
            if (!bytes.ok() || (!automatic && *bytes == 0)) {
              std::fprintf(stderr, "gpumgr run: --vram: %s\n",
                           bytes.ok() ? "must be positive" : bytes.status().message().c_str());
              return kExitUsage;
            }
            if (automatic && opts->kind.empty()) {
              std::fprintf(stderr,
                           "gpumgr run: --vram auto needs --kind: the estimate is learned per "
                           "kind of job\n");
              return kExitUsage;
            }
            if (Status s = check_job_kind(opts->kind); sub->count("--kind") > 0 && !s.ok()) {
              std::fprintf(stderr, "gpumgr run: --kind: %s\n", s.message().c_str());
              return kExitUsage;
            }
            std::uint64_t default_bytes = 0;
            if (!opts->default_vram.empty()) {
              auto parsed = parse_size(opts->default_vram);
              if (!parsed.ok() || *parsed == 0 || !automatic) {
                std::fprintf(stderr, "gpumgr run: --default-vram: %s\n",
                             !automatic    ? "only with --vram auto"
                             : parsed.ok() ? "must be positive"
                                           : parsed.status().message().c_str());
                return kExitUsage;
              }
              default_bytes = *parsed;
            }
            if (opts->gpus < 1) {
              std::fprintf(stderr, "gpumgr run: --gpus must be >= 1, got %d\n", opts->gpus);
              return kExitUsage;
            }
            std::string socket = opts->socket;
            if (socket.empty()) {
              const char* env = std::getenv("GPUMGR_SOCKET");
              socket = env != nullptr && *env != '\0' ? env : daemon::default_client_socket_path();
            }
            LeaseRequest request;
            request.job_id = opts->job_id.empty()
                                 ? "run-" + hostname() + "-" + std::to_string(::getpid())
                                 : opts->job_id;
            request.bytes = *bytes;
            request.kind = opts->kind;
            request.default_bytes = default_bytes;
            request.gpus = opts->gpus;
            request.priority = opts->priority;
            request.command = join(opts->command, " ");
            if (request.command.size() > daemon::kMaxCommandBytes) {
              request.command.resize(daemon::kMaxCommandBytes);
            }

            // Before any thread starts, so that only the forwarder sees the signals.
            SignalForwarder::block_in_this_thread();
            CancelToken token;
            SignalForwarder forwarder(token);

            auto ledger = connect_daemon(socket);
            if (!ledger.ok()) {
              std::fprintf(stderr, "gpumgr run: %s\n", ledger.status().message().c_str());
              return exit_code_for(ledger.status());
            }
            WaitOptions wait;
            if (opts->timeout >= 0) wait = WaitOptions::for_seconds(opts->timeout);
            wait.cancel = token;
            auto lease = ledger.value()->acquire(request, wait);
            if (!lease.ok()) {
              std::fprintf(stderr, "gpumgr run: no lease for job '%s': %s\n",
                           request.job_id.c_str(), lease.status().to_string().c_str());
              if (lease.status().code() == ErrorCode::kCancelled && forwarder.received() != 0) {
                return 128 + forwarder.received();
              }
              return lease.status().code() == ErrorCode::kUnavailable       ? kExitUnavailable
                     : lease.status().code() == ErrorCode::kInvalidArgument ? kExitUsage
                                                                            : kExitError;
            }
            if (automatic) {
              // Say what was asked for on the user's behalf, and why.
              std::fprintf(stderr, "gpumgr run: job '%s' leased %s per GPU (%s)\n",
                           request.job_id.c_str(), format_bytes(lease->bytes).c_str(),
                           lease->estimate.c_str());
            }
            // The leased devices' UUIDs, for CUDA_VISIBLE_DEVICES.
            std::vector<std::string> uuids;
            std::vector<std::string> indices;
            bool cpu = false;
            auto snap = ledger.value()->snapshot();
            for (int d : lease->devices) {
              indices.push_back(std::to_string(d));
              if (!snap.ok()) continue;
              for (const auto& acct : snap->devices) {
                if (acct.info.index != d) continue;
                if (acct.info.kind == DeviceKind::kCpu) cpu = true;
                uuids.push_back(acct.info.uuid);
              }
            }
            if (!snap.ok() || uuids.size() != lease->devices.size()) {
              std::fprintf(
                  stderr, "gpumgr run: cannot read the leased devices' UUIDs: %s\n",
                  snap.ok() ? "device missing from status" : snap.status().message().c_str());
              (void)ledger.value()->release(request.job_id, JobOutcome::kFailed);
              return kExitError;
            }
            const std::string visible = cpu ? "" : join(uuids, ",");
            const std::string devices = join(indices, ",");

            std::vector<char*> argv;
            for (auto& a : opts->command) argv.push_back(a.data());
            argv.push_back(nullptr);
            // CMD's environment, built before fork: the child of a threaded process may only
            // make async-signal-safe calls, which setenv is not.
            const std::vector<std::pair<std::string, std::string>> overrides = {
                {"CUDA_VISIBLE_DEVICES", visible},
                {"CUDA_DEVICE_ORDER", "PCI_BUS_ID"},
                {"GPUMGR_LEASE_JOB_ID", request.job_id},
                {"GPUMGR_LEASE_DEVICES", devices},
                // The lease's size per device, so that gpu_manager (imported by CMD) caps
                // torch's allocator on the leased GPUs at it (GPUMGR_ENFORCE=0: it does not).
                {"GPUMGR_LEASE_BYTES", std::to_string(lease->bytes)}};
            std::vector<std::string> env_storage;
            for (char** e = environ; *e != nullptr; ++e) {
              const std::string entry = *e;
              const std::string name = entry.substr(0, entry.find('='));
              bool replaced = false;
              for (const auto& [k, v] : overrides) replaced = replaced || k == name;
              if (!replaced) env_storage.push_back(entry);
            }
            for (const auto& [k, v] : overrides) env_storage.push_back(k + "=" + v);
            std::vector<char*> envp;
            for (auto& e : env_storage) envp.push_back(e.data());
            envp.push_back(nullptr);
            const pid_t child = ::fork();
            if (child < 0) {
              std::perror("gpumgr run: fork");
              (void)ledger.value()->release(request.job_id, JobOutcome::kFailed);
              return kExitError;
            }
            if (child == 0) {
              // The child: only async-signal-safe calls until exec.
              sigset_t none;
              sigemptyset(&none);
              ::pthread_sigmask(SIG_SETMASK, &none, nullptr);
              ::execvpe(argv[0], argv.data(), envp.data());
              const char msg[] = "gpumgr run: cannot run the command\n";
              (void)!::write(STDERR_FILENO, msg, sizeof(msg) - 1);
              ::_exit(127);
            }
            forwarder.set_child(child);
            int wstatus = 0;
            while (::waitpid(child, &wstatus, 0) < 0 && errno == EINTR) {
            }
            forwarder.set_child(0);
            int code = kExitError;
            if (WIFEXITED(wstatus)) code = WEXITSTATUS(wstatus);
            if (WIFSIGNALED(wstatus)) code = 128 + WTERMSIG(wstatus);
            if (Status s = ledger.value()->release(
                    request.job_id, code == 0 ? JobOutcome::kSucceeded : JobOutcome::kFailed);
                !s.ok()) {
              std::fprintf(stderr, "gpumgr run: releasing job '%s': %s\n", request.job_id.c_str(),
                           s.to_string().c_str());
            }
            return code;
          }};
}

}  // namespace gpumgr::cli
