// gpumgr run --vram SIZE [--gpus N] [--priority N] [--timeout SECONDS] [--job-id ID] -- CMD...
// Waits for a lease from the daemon, runs CMD with CUDA_VISIBLE_DEVICES set to the leased
// GPUs, holds the lease while CMD runs, forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and
// SIGUSR2 to it, releases the lease when it ends and exits with CMD's exit code (128+N when
// signal N killed it).
//
// --beside NAME: the lease runs beside resident NAME (docs/scheduling.md, "A job beside a
// resident"): on its devices, never revoking it.
//
// --preemptible / --resident NAME: the lease is revocable (docs/scheduling.md, "Revocable
// leases"). When the daemon revokes it, CMD gets --preempt-signal (SIGTERM), and the lease is
// released when CMD exits; a CMD that outlives the grace is killed by the daemon, with this
// process.
//
// Threads: the main thread acquires, forks and waits for CMD; a signal thread (a signalfd)
// turns the six signals into a cancelled wait before CMD starts and into a forwarded signal
// after. They are blocked in every other thread, the daemon client's reader included.
//
// CMD does not outlive `gpumgr run`: the child asks the kernel for SIGKILL when its parent
// dies (PR_SET_PDEATHSIG), so that a `gpumgr run` killed with SIGKILL (whose lease the daemon
// then frees) leaves no command running on a lease nobody holds.
//
// Process groups and terminals: without a controlling terminal (a service, cron, CI, a
// script's subprocess) CMD gets a process group of its own, and forwarded signals go to the
// whole group, so that what CMD started gets them too. With a controlling terminal (started
// from a shell) CMD stays in `gpumgr run`'s process group, the shell's job: the terminal's
// Ctrl-C, Ctrl-\ and Ctrl-Z reach both as the shell expects, CMD may read the terminal (a
// process group of its own would not be the terminal's foreground group, and handing the
// terminal over with tcsetpgrp would leave the shell unaware of a CMD stopped by Ctrl-Z), and
// fg/bg act on both. Signals sent to `gpumgr run` alone are then forwarded to CMD's pid, and a
// Ctrl-C or Ctrl-\ from the terminal is not forwarded again: CMD got it already.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "core/scheduler.h"
#include "daemon/protocol.h"
#include "gpumgr/ledger.h"
#include "gpumgr/units.h"
#include "util/terminal_text.h"

namespace gpumgr::cli {

namespace {

// The longest --timeout: what the daemon's protocol accepts (docs/protocol.md).
constexpr double kMaxTimeoutSeconds = 1e9;

// The signals `gpumgr run` forwards to CMD (before CMD runs: that cancel the wait).
constexpr std::array<int, 6> kForwarded = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

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

// Whether this process has a controlling terminal (opening /dev/tty fails with ENXIO when
// it has none).
bool has_controlling_terminal() {
  const int fd = ::open("/dev/tty", O_RDONLY | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}

// Why CMD could not be run, from the errno its exec failed with.
std::string exec_failure(const std::string& command, int err) {
  const bool searched = command.find('/') == std::string::npos;
  if (err == ENOENT && searched) return "not found in PATH";
  struct stat st {};
  if (err == EACCES && !searched && ::stat(command.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return std::strerror(EISDIR);
  }
  return std::strerror(err);
}

// Forwards the signals in kForwarded: to CMD once it runs, else to the waiting acquire's
// cancel token. Reads them from a signalfd, and a pipe tells it to stop, so that every one of
// them, SIGUSR2 included, can be forwarded.
class SignalForwarder {
 public:
  explicit SignalForwarder(CancelToken token) : token_(std::move(token)) {
    sigset_t set = forwarded_set();
    signal_fd_ = ::signalfd(-1, &set, SFD_CLOEXEC);
    if (signal_fd_ < 0 || ::pipe2(stop_fds_.data(), O_CLOEXEC) != 0) {
      error_ = errno;
      return;
    }
    thread_ = std::thread([this] { loop(); });
  }
  ~SignalForwarder() {
    if (thread_.joinable()) {
      const char byte = 0;
      (void)!::write(stop_fds_[1], &byte, 1);
      thread_.join();
    }
    for (int fd : {signal_fd_, stop_fds_[0], stop_fds_[1]}) {
      if (fd >= 0) ::close(fd);
    }
  }
  SignalForwarder(const SignalForwarder&) = delete;
  SignalForwarder& operator=(const SignalForwarder&) = delete;

  // 0 when it runs, else the errno that stopped it from starting.
  int error() const { return error_; }
  int received() const { return received_.load(); }
  // The signal that came before CMD ran, or 0.
  int pending() {
    std::lock_guard<std::mutex> lock(mu_);
    return pending_;
  }

  // From now on, signals go to CMD: its process group when `group`, else its pid. A signal
  // that came after the lease was granted and before this call is forwarded now.
  void set_child(pid_t pid, bool group) {
    std::lock_guard<std::mutex> lock(mu_);
    child_ = pid;
    group_ = group;
    if (pending_ != 0) send(pending_);
    pending_ = 0;
    if (revoke_signal_ != 0) send(revoke_signal_);
  }
  // The lease is being revoked: CMD gets `signo` now, or as soon as it runs.
  void revoke(int signo) {
    std::lock_guard<std::mutex> lock(mu_);
    revoke_signal_ = signo;
    if (child_ > 0) send(signo);
  }
  bool revoked() {
    std::lock_guard<std::mutex> lock(mu_);
    return revoke_signal_ != 0;
  }
  // CMD has ended (not reaped yet, so its pid cannot have been reused): nothing is forwarded
  // after this returns.
  void clear_child() {
    std::lock_guard<std::mutex> lock(mu_);
    child_ = 0;
  }

  // Blocks the signals in the calling thread and in every thread it starts later.
  static void block_in_this_thread() {
    sigset_t s = forwarded_set();
    ::pthread_sigmask(SIG_BLOCK, &s, nullptr);
  }

 private:
  static sigset_t forwarded_set() {
    sigset_t s;
    sigemptyset(&s);
    for (int signo : kForwarded) sigaddset(&s, signo);
    return s;
  }

  void send(int signo) { ::kill(group_ ? -child_ : child_, signo); }

  void loop() {
    std::array<pollfd, 2> fds{{{signal_fd_, POLLIN, 0}, {stop_fds_[0], POLLIN, 0}}};
    while (true) {
      if (::poll(fds.data(), fds.size(), -1) < 0) continue;  // EINTR
      if (fds[1].revents != 0) return;
      signalfd_siginfo info{};
      if (::read(signal_fd_, &info, sizeof info) != static_cast<ssize_t>(sizeof info)) continue;
      const int signo = static_cast<int>(info.ssi_signo);
      received_.store(signo);
      std::lock_guard<std::mutex> lock(mu_);
      if (child_ > 0) {
        // Ctrl-C and Ctrl-\ on our terminal went to the whole foreground process group, CMD
        // (which shares ours) included: sending it again would deliver it twice.
        const bool from_terminal =
            info.ssi_code == SI_KERNEL && (signo == SIGINT || signo == SIGQUIT);
        if (group_ || !from_terminal) send(signo);
      } else {
        pending_ = signo;
        token_.cancel();
      }
    }
  }

  CancelToken token_;
  int signal_fd_ = -1;
  std::array<int, 2> stop_fds_{-1, -1};
  int error_ = 0;
  std::mutex mu_;
  pid_t child_ = 0;        // guarded by mu_
  bool group_ = false;     // guarded by mu_
  int pending_ = 0;        // guarded by mu_
  int revoke_signal_ = 0;  // guarded by mu_; the lease is being revoked
  std::atomic<int> received_{0};
  std::thread thread_;
};

// Runs CMD (argv, envp: built before fork, since the child of a threaded process may only
// make async-signal-safe calls) with signals forwarded to it, and returns what
// `gpumgr run` exits with: CMD's exit code, 128+N when signal N killed it, 127 when it could
// not be run (the reason printed), 1 when it could not be started at all.
int run_command(const std::vector<std::string>& command, std::vector<char*>& argv,
                std::vector<char*>& envp, SignalForwarder& forwarder) {
  // Without a terminal CMD gets a process group of its own (see the top of the file).
  const bool own_group = !has_controlling_terminal();
  // The child reports the errno of a failed exec through this pipe; a successful exec
  // closes it (O_CLOEXEC), which the parent reads as end of file.
  std::array<int, 2> exec_fds{-1, -1};
  if (::pipe2(exec_fds.data(), O_CLOEXEC) != 0) {
    std::perror("gpumgr run: pipe");
    return kExitError;
  }
  const pid_t parent = ::getpid();
  const pid_t child = ::fork();
  if (child < 0) {
    std::perror("gpumgr run: fork");
    ::close(exec_fds[0]);
    ::close(exec_fds[1]);
    return kExitError;
  }
  if (child == 0) {
    // The child: only async-signal-safe calls until exec.
    ::close(exec_fds[0]);
    // Killed when `gpumgr run` dies. The death signal follows the thread that forked,
    // the main thread, which lives as long as the process. If the parent died before
    // the prctl, it never comes: we have been re-parented, so stop here.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) ::_exit(127);
    if (own_group) (void)::setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    ::pthread_sigmask(SIG_SETMASK, &none, nullptr);
    ::execvpe(argv[0], argv.data(), envp.data());
    const int err = errno;
    (void)!::write(exec_fds[1], &err, sizeof err);
    ::_exit(127);
  }
  ::close(exec_fds[1]);
  // Also here, so that the group exists before any signal is forwarded to it
  // (EACCES once the child has exec'd: it did it itself by then).
  if (own_group) (void)::setpgid(child, child);
  forwarder.set_child(child, own_group);
  int exec_errno = 0;
  ssize_t got = 0;
  while ((got = ::read(exec_fds[0], &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR) {
  }
  ::close(exec_fds[0]);
  if (got == static_cast<ssize_t>(sizeof exec_errno)) {
    std::fprintf(stderr, "gpumgr run: cannot run '%s': %s\n",
                 terminal_safe(command.front()).c_str(),
                 exec_failure(command.front(), exec_errno).c_str());
  }
  // Wait for CMD to end without reaping it, so that its pid cannot be reused by an
  // unrelated process while the forwarder may still signal it; then reap it.
  siginfo_t ended{};
  while (::waitid(P_PID, static_cast<id_t>(child), &ended, WEXITED | WNOWAIT) < 0 &&
         errno == EINTR) {
  }
  forwarder.clear_child();
  int wstatus = 0;
  while (::waitpid(child, &wstatus, 0) < 0 && errno == EINTR) {
  }
  int code = kExitError;
  if (WIFEXITED(wstatus)) code = WEXITSTATUS(wstatus);
  if (got == static_cast<ssize_t>(sizeof exec_errno)) code = 127;
  if (WIFSIGNALED(wstatus)) code = 128 + WTERMSIG(wstatus);
  return code;
}

// --preempt-signal: a signal's name (TERM, SIGTERM) or number, or nothing.
std::optional<int> parse_signal(std::string text) {
  if (text.rfind("SIG", 0) == 0) text = text.substr(3);
  static constexpr std::pair<const char*, int> kNames[] = {
      {"TERM", SIGTERM}, {"INT", SIGINT},   {"HUP", SIGHUP},   {"QUIT", SIGQUIT},
      {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"KILL", SIGKILL}, {"ALRM", SIGALRM}};
  for (const auto& [name, signo] : kNames) {
    if (text == name) return signo;
  }
  int signo = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), signo);
  if (ec != std::errc() || end != text.data() + text.size() || signo < 1 || signo >= NSIG) {
    return std::nullopt;
  }
  return signo;
}

// --timeout: a finite number of seconds from 0 to kMaxTimeoutSeconds, else nothing.
std::optional<double> parse_timeout(const std::string& text) {
  double seconds = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), seconds);
  if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(seconds) ||
      seconds < 0 || seconds > kMaxTimeoutSeconds) {
    return std::nullopt;
  }
  return seconds;
}

}  // namespace

Command setup_run(CLI::App& app, const GlobalOptions& /*global*/) {
  struct Options {
    std::string vram;
    int gpus = 1;
    int priority = 0;
    std::string timeout;
    std::string job_id;
    std::string kind;
    std::string default_vram;
    std::string socket;
    bool preemptible = false;
    std::string resident;
    std::string beside;
    std::string preempt_signal = "TERM";
    double revoke_grace = -1;
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
                  "Give up waiting for the lease after this many seconds, 0 to 1e9 (default: "
                  "wait)");
  sub->add_option("--job-id", opts->job_id, "Job id (default: run-<hostname>-<pid>)");
  sub->add_flag("--preemptible", opts->preemptible,
                "The lease may be revoked for a waiter of higher priority: CMD then gets "
                "--preempt-signal and has the grace period to exit");
  sub->add_option("--resident", opts->resident,
                  "Hold the lease as a resident model of this name (an idle model kept loaded "
                  "while nobody needs its memory; revoked before preemptible jobs)");
  sub->add_option("--beside", opts->beside,
                  "Run beside the resident model of this name: the lease goes on its device(s), "
                  "and that model is never revoked for this job while it waits");
  sub->add_option("--preempt-signal", opts->preempt_signal,
                  "The signal CMD gets when the lease is revoked (name or number)")
      ->capture_default_str();
  sub->add_option("--revoke-grace", opts->revoke_grace,
                  "Seconds CMD has to exit once revoked before it is killed (default: the "
                  "daemon's --revoke-grace)");
  sub->add_option("--socket", opts->socket,
                  "The daemon's socket (default: GPUMGR_SOCKET, else the default path)");
  sub->add_option("command", opts->command, "The command and its arguments, after --")->required();
  sub->positionals_at_end();
  sub->footer(
      "CMD gets CUDA_VISIBLE_DEVICES (the leased GPUs' UUIDs), CUDA_DEVICE_ORDER=PCI_BUS_ID,\n"
      "GPUMGR_LEASE_JOB_ID, GPUMGR_LEASE_DEVICES (device indices) and GPUMGR_LEASE_BYTES\n"
      "(the lease per device, in bytes: gpu_manager caps torch at it; GPUMGR_ENFORCE=0 opts out).\n"
      "SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to CMD (before it\n"
      "runs, they cancel the wait); CMD is killed if gpumgr run dies.\n"
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
            std::optional<double> timeout;
            if (sub->count("--timeout") > 0) {
              timeout = parse_timeout(opts->timeout);
              if (!timeout) {
                std::fprintf(stderr,
                             "gpumgr run: --timeout must be a number of seconds from 0 to 1e9, got "
                             "%s\n",
                             terminal_safe(opts->timeout).c_str());
                return kExitUsage;
              }
            }
            if (opts->gpus < 1) {
              std::fprintf(stderr, "gpumgr run: --gpus must be >= 1, got %d\n", opts->gpus);
              return kExitUsage;
            }
            const std::optional<int> preempt_signal = parse_signal(opts->preempt_signal);
            if (!preempt_signal) {
              std::fprintf(stderr,
                           "gpumgr run: --preempt-signal must be a signal name (TERM, USR1) or "
                           "number, got %s\n",
                           terminal_safe(opts->preempt_signal).c_str());
              return kExitUsage;
            }
            const bool revocable = opts->preemptible || sub->count("--resident") > 0;
            if (sub->count("--resident") > 0 && opts->preemptible) {
              std::fprintf(stderr,
                           "gpumgr run: --preemptible and --resident exclude each other: a "
                           "lease is one or the other\n");
              return kExitUsage;
            }
            if (sub->count("--resident") > 0) {
              bool control = false;
              for (const char c : opts->resident) {
                control = control || static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
              }
              if (opts->resident.empty() || control) {
                std::fprintf(stderr,
                             "gpumgr run: --resident: the name must not be empty or contain "
                             "control characters\n");
                return kExitUsage;
              }
            }
            // The daemon checks the rest (that such a resident exists, where it is).
            const Status beside = core::check_resident_name(opts->beside);
            if (sub->count("--beside") > 0 && !beside.ok()) {
              std::fprintf(stderr, "gpumgr run: --beside: %s\n",
                           terminal_safe(beside.message()).c_str());
              return kExitUsage;
            }
            if (sub->count("--beside") > 0 && sub->count("--resident") > 0) {
              std::fprintf(stderr,
                           "gpumgr run: --beside and --resident exclude each other: a lease "
                           "is a resident or runs beside one\n");
              return kExitUsage;
            }
            if (sub->count("--revoke-grace") > 0 &&
                (!revocable || !(opts->revoke_grace >= 0 && opts->revoke_grace <= 86400))) {
              std::fprintf(stderr, "gpumgr run: --revoke-grace: %s\n",
                           !revocable ? "only with --preemptible or --resident"
                                      : "must be a number of seconds from 0 to 86400");
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
            request.preemptible = opts->preemptible;
            request.resident = opts->resident;
            request.beside_resident = opts->beside;
            if (sub->count("--revoke-grace") > 0) request.revoke_grace_s = opts->revoke_grace;
            request.command = join(opts->command, " ");
            if (request.command.size() > daemon::kMaxCommandBytes) {
              request.command.resize(daemon::kMaxCommandBytes);
            }

            // Before any thread starts, so that only the forwarder sees the signals.
            SignalForwarder::block_in_this_thread();
            CancelToken token;
            SignalForwarder forwarder(token);
            if (forwarder.error() != 0) {
              std::fprintf(stderr, "gpumgr run: cannot watch for signals: %s\n",
                           std::strerror(forwarder.error()));
              return kExitError;
            }

            auto ledger = connect_daemon(socket);
            if (!ledger.ok()) {
              std::fprintf(stderr, "gpumgr run: %s\n", ledger.status().message().c_str());
              return exit_code_for(ledger.status());
            }
            if (revocable) {
              // On the client's reading thread: a line and a signal, nothing that blocks.
              ledger.value()->set_revoke_handler(
                  [&forwarder, job = request.job_id, signo = *preempt_signal,
                   name = opts->preempt_signal](const RevokeNotice& notice) {
                    if (notice.job_id != job) return;
                    std::fprintf(stderr, "gpumgr run: job '%s': %s; sending %s to the command\n",
                                 terminal_safe(job).c_str(), terminal_safe(notice.message).c_str(),
                                 terminal_safe(name).c_str());
                    forwarder.revoke(signo);
                  });
            }
            WaitOptions wait;
            if (timeout) wait = WaitOptions::for_seconds(*timeout);
            wait.cancel = token;
            auto lease = ledger.value()->acquire(request, wait);
            if (!lease.ok()) {
              std::fprintf(stderr, "gpumgr run: no lease for job '%s': %s\n",
                           terminal_safe(request.job_id).c_str(),
                           terminal_safe(lease.status().to_string()).c_str());
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
                           terminal_safe(request.job_id).c_str(),
                           format_bytes(lease->bytes).c_str(),
                           terminal_safe(lease->estimate).c_str());
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
              std::fprintf(stderr, "gpumgr run: cannot read the leased devices' UUIDs: %s\n",
                           snap.ok() ? "device missing from status"
                                     : terminal_safe(snap.status().message()).c_str());
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
            // A signal that came while waiting, even one that lost the race with the grant:
            // the user asked for the job to stop before CMD started.
            if (const int signo = forwarder.pending(); signo != 0) {
              std::fprintf(stderr, "gpumgr run: job '%s': signal %d before the command started\n",
                           terminal_safe(request.job_id).c_str(), signo);
              (void)ledger.value()->release(request.job_id, JobOutcome::kFailed);
              return 128 + signo;
            }
            const int code = run_command(opts->command, argv, envp, forwarder);
            if (Status s = ledger.value()->release(
                    request.job_id, code == 0 ? JobOutcome::kSucceeded : JobOutcome::kFailed);
                !s.ok()) {
              // The lease ended before the command did (the daemon restarted, or its
              // connection closed): the command ran part of its time unprotected. Say so,
              // and do not report success.
              const std::string why = terminal_safe(s.to_string());
              std::fprintf(stderr, "gpumgr run: releasing job '%s': %s\n",
                           terminal_safe(request.job_id).c_str(), why.c_str());
              return code != 0 ? code : kExitError;
            }
            return code;
          }};
}

}  // namespace gpumgr::cli
