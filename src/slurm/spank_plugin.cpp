// gpumgr_spank.so: the Slurm SPANK plugin that gives every task of a step a VRAM lease from
// its node's `gpumgr serve` before the task's program runs (docs/slurm.md).
//
// Which process runs what (Slurm 22.05, remote context):
//   slurmstepd, user_init (once per step, the job's uid as effective uid): one daemon
//     connection per local task, so that the daemon records the job's uid as the leases'
//     owner, and two pipes per task (task -> slurmstepd requests, slurmstepd -> task replies).
//   the task, task_init (after fork, as the user, just before exec; Slurm's GPU variables are
//     set by then): reads which GPUs Slurm gave it and the lease size, sends the request, blocks
//     on the reply and sets CUDA_VISIBLE_DEVICES and GPUMGR_LEASE_* from it, or fails the task
//     with the daemon's message.
//   slurmstepd, task_post_fork (per task, before the tasks are let exec): starts the task's
//     server thread (reads the request, acquires the lease on the task's connection, replies)
//     and its watcher thread (cancels the wait when the task dies: scancel, time limit, kill).
//     The lease names the task's pid as its holder, so that the task's memory (not its
//     siblings') is the lease's use, and may go on any GPU of the task's allocation: it
//     waits for whichever has room first.
//   slurmstepd, task_exit (per task, as it is reaped): stops both threads and releases the
//     lease, failed unless the task exited 0. exit: releases what is left, failed.
// The lease's connection thus lives in slurmstepd exactly as long as the task; if slurmstepd
// dies, the daemon sees the connection close and frees the lease. The task waits for memory
// inside Slurm's allocation and time limit: squeue shows it running, gpumgr status waiting.
//
// Threads: Slurm calls the callbacks on slurmstepd's main thread. The per-task threads are
// started after every task has been forked (post_fork) and joined in task_exit or exit; they
// touch only their own TaskSlot (its lease guarded by its mutex).
#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "gpumgr/ledger.h"
#include "gpumgr/units.h"
#include "slurm/task_env.h"
#include "util/terminal_text.h"

// spank.h declares the callbacks (slurm_spank_init, ...) outside its extern "C" block: include
// it inside one, so that the definitions below have the C names Slurm looks up.
extern "C" {
#include <slurm/spank.h>
}

// What the plugin loader looks up (SPANK_PLUGIN(gpumgr, 1), spelled out: in C++ a const
// object at namespace scope would otherwise have internal linkage, invisible to dlsym).
extern "C" {
extern const char plugin_name[];
extern const char plugin_type[];
extern const unsigned int plugin_version;
extern const unsigned int spank_plugin_version;
const char plugin_name[] = "gpumgr";
const char plugin_type[] = "spank";
const unsigned int plugin_version = SLURM_VERSION_NUMBER;
const unsigned int spank_plugin_version = 1;
}

namespace {

using gpumgr::CancelToken;
using gpumgr::ErrorCode;
using gpumgr::LeaseInfo;
using gpumgr::LeaseRequest;
using gpumgr::Ledger;
using gpumgr::StatusOr;
using gpumgr::slurm::Message;

// The step's options, set by the option callbacks (srun/sbatch parse them; slurmstepd gets
// them again before init_post_opt).
std::optional<std::string> g_vram;
std::string g_kind;
gpumgr::slurm::PluginConfig g_config;

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

bool write_all(int fd, const std::string& text) {
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<std::size_t>(n);
  }
  return true;
}

// Reads one message (up to its empty line) from `fd`; nullopt at end of file or when one of
// `stop_fds` becomes readable first.
std::optional<std::string> read_message(int fd, std::vector<int> stop_fds) {
  std::string text;
  char c = 0;
  while (true) {
    std::vector<pollfd> fds{{fd, POLLIN, 0}};
    for (int s : stop_fds) fds.push_back({s, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return std::nullopt;
    }
    for (std::size_t i = 1; i < fds.size(); ++i) {
      if (fds[i].revents != 0) return std::nullopt;
    }
    const ssize_t n = ::read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    text += c;
    if (text.size() > 64 * 1024) return std::nullopt;
    if (text.size() >= 2 && text.compare(text.size() - 2, 2, "\n\n") == 0) return text;
    if (text == "\n") return text;
  }
}

std::string join(const std::vector<std::string>& parts, const char* sep) {
  std::string out;
  for (const auto& p : parts) {
    if (!out.empty()) out += sep;
    out += p;
  }
  return out;
}

// One local task: its pipes, its daemon connection and, once granted, its lease.
struct TaskSlot {
  int request_fds[2] = {-1, -1};  // the task writes [1], slurmstepd reads [0]
  int reply_fds[2] = {-1, -1};    // slurmstepd writes [1], the task reads [0]
  int stop_fds[2] = {-1, -1};     // task_exit writes [1]: the threads stop
  int pid_fd = -1;                // the task's pidfd (-1: poll its state instead)
  pid_t pid = 0;
  std::shared_ptr<Ledger> ledger;  // connected as the job's user; null when that failed
  std::string connect_error;
  std::string socket;
  CancelToken token;
  std::thread server;
  std::thread watcher;
  std::mutex mu;
  std::optional<std::string> lease_job;  // guarded by mu: the job id of a granted lease
  bool finished = false;
  pid_t threads_owner = 0;  // the process that started server and watcher (slurmstepd)

  ~TaskSlot() {
    // Normally finish_task has joined both threads (task_exit, exit). Otherwise: joined here,
    // in slurmstepd; in a process forked from it after they started (a script whose exec
    // failed), they do not exist, and destroying a joinable std::thread would abort.
    if (server.joinable() || watcher.joinable()) {
      if (::getpid() == threads_owner) {
        if (stop_fds[1] >= 0) (void)write_all(stop_fds[1], "x");
        token.cancel();
        if (server.joinable()) server.join();
        if (watcher.joinable()) watcher.join();
      } else {
        new std::thread(std::move(server));   // never joined, never destroyed: on purpose
        new std::thread(std::move(watcher));  // (the threads are not in this process)
      }
    }
    for (int* fd : {&request_fds[0], &request_fds[1], &reply_fds[0], &reply_fds[1], &stop_fds[0],
                    &stop_fds[1], &pid_fd}) {
      close_fd(*fd);
    }
  }
};
std::vector<std::unique_ptr<TaskSlot>> g_slots;

// The server thread's work: one request, one lease, one reply.
void serve_task_once(TaskSlot* slot);
void serve_task(TaskSlot* slot) {
  serve_task_once(slot);
  // A task still reading learns that no reply comes (end of file) rather than waiting on.
  close_fd(slot->reply_fds[1]);
}

void serve_task_once(TaskSlot* slot) {
  auto text = read_message(slot->request_fds[0], {slot->stop_fds[0]});
  if (!text) return;  // the task died or the step ends before it asked
  auto request = gpumgr::slurm::decode_message(*text);
  Message reply;
  const auto fail = [&](const std::string& why) {
    reply["error"] = why;
    (void)write_all(slot->reply_fds[1], gpumgr::slurm::encode_message(reply));
  };
  if (!request.ok())
    return fail("gpumgr_spank: bad request from the task: " + request.status().message());
  if ((*request)["want"] != "lease") {
    (void)write_all(slot->reply_fds[1], gpumgr::slurm::encode_message({{"status", "none"}}));
    return;
  }
  if (!slot->ledger) {
    if (g_config.optional) {
      reply["warning"] =
          slot->connect_error + "; running without a lease (plugin argument optional)";
      (void)write_all(slot->reply_fds[1], gpumgr::slurm::encode_message(reply));
      return;
    }
    return fail(slot->connect_error);
  }
  LeaseRequest lease;
  lease.job_id = (*request)["job_id"];
  auto bytes = gpumgr::parse_size((*request)["bytes"] + "B");
  if (!bytes.ok()) return fail("gpumgr_spank: bad size in the request");
  lease.bytes = *bytes;
  lease.kind = (*request)["kind"];
  if (lease.bytes == 0) {
    if (auto d = gpumgr::parse_size((*request)["default_bytes"] + "B"); d.ok()) {
      lease.default_bytes = *d;
    }
  }
  lease.command = (*request)["command"];
  std::vector<int> allowed;
  {
    auto parsed =
        gpumgr::slurm::slurm_gpu_indices(std::nullopt, std::nullopt, (*request)["devices"]);
    if (!parsed.ok()) return fail(parsed.status().message());
    allowed = *parsed;
  }
  // Only devices the daemon has, among those Slurm gave the task.
  auto snap = slot->ledger->snapshot();
  if (!snap.ok()) return fail(snap.status().message());
  std::vector<int> usable;
  std::vector<std::string> daemon_devices;
  for (const auto& acct : snap->devices) daemon_devices.push_back(std::to_string(acct.info.index));
  for (int d : allowed) {
    for (const auto& acct : snap->devices) {
      if (acct.info.index == d) usable.push_back(d);
    }
  }
  if (usable.empty()) {
    return fail("Slurm gave this task GPU " + (*request)["devices"] + " but the daemon at " +
                slot->socket + " has devices " + join(daemon_devices, ",") +
                ": gres.conf and the daemon disagree (write gres.conf with `gpumgr slurm conf`)");
  }
  // Whichever of them has room first; the task's processes are the lease's holder, so that
  // their memory is its use (the connection, and so the lease's life, stays slurmstepd's).
  if (usable.size() == 1) {
    lease.device = usable.front();
  } else {
    lease.allowed_devices = usable;
  }
  lease.holder_pid = static_cast<std::uint32_t>(slot->pid);
  gpumgr::WaitOptions wait;
  wait.cancel = slot->token;
  StatusOr<LeaseInfo> granted = slot->ledger->acquire(lease, wait);
  if (!granted.ok()) {
    return fail("no lease for job '" + lease.job_id + "' from the daemon at " + slot->socket +
                ": " + granted.status().to_string());
  }
  for (const int d : granted->devices) {
    if (std::find(usable.begin(), usable.end(), d) != usable.end()) continue;
    // A daemon older than this plugin does not know allowed_devices: never outside Slurm's
    // allocation.
    (void)slot->ledger->release(lease.job_id, gpumgr::JobOutcome::kFailed);
    return fail("the daemon at " + slot->socket + " leased GPU " + std::to_string(d) +
                ", which Slurm did not give this task (" + (*request)["devices"] +
                "): the daemon is older than this plugin; restart it (systemctl restart gpumgr)");
  }
  {
    std::lock_guard<std::mutex> lock(slot->mu);
    slot->lease_job = lease.job_id;
  }
  snap = slot->ledger->snapshot();
  std::string uuid;
  bool cpu = false;
  if (snap.ok()) {
    for (const auto& acct : snap->devices) {
      if (!granted->devices.empty() && acct.info.index == granted->devices.front()) {
        uuid = acct.info.uuid;
        cpu = acct.info.kind == gpumgr::DeviceKind::kCpu;
      }
    }
  }
  if (uuid.empty()) return fail("cannot read the leased device's UUID from the daemon");
  std::vector<std::string> indices;
  for (int d : granted->devices) indices.push_back(std::to_string(d));
  reply["status"] = "leased";
  reply["env_CUDA_VISIBLE_DEVICES"] = cpu ? "" : uuid;
  reply["env_CUDA_DEVICE_ORDER"] = "PCI_BUS_ID";
  reply["env_GPUMGR_LEASE_JOB_ID"] = lease.job_id;
  reply["env_GPUMGR_LEASE_DEVICES"] = join(indices, ",");
  reply["env_GPUMGR_LEASE_BYTES"] = std::to_string(granted->bytes);
  // What Slurm gave (its node-local indices), since CUDA_VISIBLE_DEVICES no longer says it.
  reply["env_GPUMGR_SLURM_GPUS"] = (*request)["devices"];
  // For the steps a batch script starts under its lease (they get Slurm's indices again).
  reply["env_GPUMGR_SLURM_VISIBLE_DEVICES"] = cpu ? "" : uuid;
  // A task that died since is released by task_exit; nothing more to do here.
  (void)write_all(slot->reply_fds[1], gpumgr::slurm::encode_message(reply));
}

// Whether the task has ended (or been reaped), without reaping it.
bool task_ended(pid_t pid) {
  siginfo_t info{};
  if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
    return errno == ECHILD;
  }
  return info.si_pid == pid;
}

// The watcher thread: cancels a waiting acquire when the task dies.
void watch_task(TaskSlot* slot) {
  while (true) {
    std::vector<pollfd> fds{{slot->stop_fds[0], POLLIN, 0}};
    if (slot->pid_fd >= 0) fds.push_back({slot->pid_fd, POLLIN, 0});
    const int n = ::poll(fds.data(), fds.size(), slot->pid_fd >= 0 ? -1 : 50);
    if (n < 0 && errno != EINTR) return;
    if (fds[0].revents != 0) return;
    if ((fds.size() > 1 && fds[1].revents != 0) || (slot->pid_fd < 0 && task_ended(slot->pid))) {
      slot->token.cancel();
      return;
    }
  }
}

// Stops a task's threads and releases its lease. Idempotent.
void finish_task(TaskSlot* slot, bool succeeded) {
  if (slot->finished) return;
  slot->finished = true;
  if (slot->stop_fds[1] >= 0) (void)write_all(slot->stop_fds[1], "x");
  slot->token.cancel();
  if (slot->server.joinable()) slot->server.join();
  if (slot->watcher.joinable()) slot->watcher.join();
  std::optional<std::string> job;
  {
    std::lock_guard<std::mutex> lock(slot->mu);
    job = slot->lease_job;
    slot->lease_job.reset();
  }
  if (job && slot->ledger) {
    const auto s = slot->ledger->release(
        *job, succeeded ? gpumgr::JobOutcome::kSucceeded : gpumgr::JobOutcome::kFailed);
    if (!s.ok()) {
      slurm_error("gpumgr: releasing the lease of %s: %s", job->c_str(),
                  gpumgr::terminal_safe(s.to_string()).c_str());
    }
  }
  slot->ledger.reset();  // closes the connection
}

std::optional<std::string> job_env(spank_t sp, const char* name) {
  std::vector<char> buf(8192);
  if (spank_getenv(sp, name, buf.data(), static_cast<int>(buf.size())) != ESPANK_SUCCESS) {
    return std::nullopt;
  }
  return std::string(buf.data());
}

int vram_option(int /*val*/, const char* optarg, int /*remote*/) {
  const std::string value = optarg != nullptr ? optarg : "";
  auto bytes = gpumgr::slurm::lease_bytes(value, std::nullopt, 1, 1);
  if (!bytes.ok()) {
    slurm_error("gpumgr: %s", gpumgr::terminal_safe(bytes.status().message()).c_str());
    return -1;
  }
  g_vram = value;
  return 0;
}

int kind_option(int /*val*/, const char* optarg, int /*remote*/) {
  const std::string value = optarg != nullptr ? optarg : "";
  if (auto s = gpumgr::check_job_kind(value); !s.ok()) {
    slurm_error("gpumgr: --vram-kind: %s", gpumgr::terminal_safe(s.message()).c_str());
    return -1;
  }
  g_kind = value;
  return 0;
}

struct spank_option g_options[] = {
    {const_cast<char*>("vram"), const_cast<char*>("SIZE"),
     const_cast<char*>("gpumgr: wait for a lease of SIZE (e.g. 12GiB, or auto with --vram-kind) "
                       "on the GPU Slurm gives each task; CUDA_VISIBLE_DEVICES names it"),
     1, 0, vram_option},
    {const_cast<char*>("vram-kind"), const_cast<char*>("KIND"),
     const_cast<char*>("gpumgr: the kind of job, whose measured peaks the daemon learns "
                       "(--vram auto asks for its estimate)"),
     1, 0, kind_option},
};

// The task side: what it asks for, and the environment it gets. Returns -1 to fail the task.
int task_request(spank_t sp) {
  int local = 0;
  if (spank_get_item(sp, S_TASK_ID, &local) != ESPANK_SUCCESS || local < 0 ||
      static_cast<std::size_t>(local) >= g_slots.size()) {
    return 0;  // not a step this plugin prepared (no user_init): nothing to do
  }
  TaskSlot* slot = g_slots[static_cast<std::size_t>(local)].get();
  Message request;
  const auto send = [&]() {
    return write_all(slot->request_fds[1], gpumgr::slurm::encode_message(request));
  };
  std::uint32_t job_id = 0, step_id = 0, task_id = 0;
  (void)spank_get_item(sp, S_JOB_ID, &job_id);
  (void)spank_get_item(sp, S_JOB_STEPID, &step_id);
  (void)spank_get_item(sp, S_TASK_GLOBAL_ID, &task_id);
  // A step started inside a task that holds a lease of this same job (srun in an
  // `sbatch --vram` script, which passes --vram on to it): it runs under that lease. A second
  // lease on the same GPU could wait forever for the first, which waits for this step.
  if (const auto held = job_env(sp, "GPUMGR_LEASE_JOB_ID");
      held && held->rfind("slurm-" + std::to_string(job_id) + ".", 0) == 0) {
    if (const auto visible = job_env(sp, "GPUMGR_SLURM_VISIBLE_DEVICES"); visible) {
      (void)spank_setenv(sp, "CUDA_VISIBLE_DEVICES", visible->c_str(), 1);
    }
    request["want"] = "none";
    (void)send();
    return 0;
  }
  std::uint32_t local_tasks = 1;
  (void)spank_get_item(sp, S_JOB_LOCAL_TASK_COUNT, &local_tasks);
  auto bytes = gpumgr::slurm::lease_bytes(g_vram, job_env(sp, "SLURM_SHARDS_ON_NODE"),
                                          g_config.unit_bytes, local_tasks);
  if (!bytes.ok()) {
    std::fprintf(stderr, "gpumgr: %s\n", gpumgr::terminal_safe(bytes.status().message()).c_str());
    request["want"] = "none";
    (void)send();
    return -1;
  }
  if (!bytes->has_value()) {
    request["want"] = "none";
    (void)send();
    return 0;
  }
  auto devices = gpumgr::slurm::slurm_gpu_indices(job_env(sp, "SLURM_STEP_GPUS"),
                                                  job_env(sp, "SLURM_JOB_GPUS"),
                                                  job_env(sp, "CUDA_VISIBLE_DEVICES"));
  if (!devices.ok()) {
    std::fprintf(stderr, "gpumgr: %s\n", gpumgr::terminal_safe(devices.status().message()).c_str());
    request["want"] = "none";
    (void)send();
    return -1;
  }
  int argc = 0;
  char** argv = nullptr;
  std::vector<std::string> args;
  if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) == ESPANK_SUCCESS) {
    for (int i = 0; i < argc && argv != nullptr; ++i) args.emplace_back(argv[i]);
  }
  std::vector<std::string> indices;
  for (int d : *devices) indices.push_back(std::to_string(d));
  request["want"] = "lease";
  request["job_id"] = gpumgr::slurm::lease_job_id(job_id, step_id, task_id);
  request["bytes"] = std::to_string(**bytes);
  request["kind"] = g_kind;
  request["devices"] = join(indices, ",");
  std::string command = join(args, " ");
  if (command.size() > 1024) command.resize(1024);
  request["command"] = command;
  if (**bytes == 0) {
    // --vram auto: the shards, if any, are the fallback while the kind has too few runs.
    auto shards = gpumgr::slurm::lease_bytes(std::nullopt, job_env(sp, "SLURM_SHARDS_ON_NODE"),
                                             g_config.unit_bytes, local_tasks);
    if (shards.ok() && shards->has_value()) request["default_bytes"] = std::to_string(**shards);
  }
  if (!send()) {
    std::fprintf(stderr, "gpumgr: cannot reach slurmstepd's lease thread\n");
    return -1;
  }
  // Blocks until the lease is granted (the task waits inside its time limit) or refused.
  auto text = read_message(slot->reply_fds[0], {});
  if (!text) {
    std::fprintf(stderr, "gpumgr: slurmstepd ended the wait for a lease for %s\n",
                 request["job_id"].c_str());
    return -1;
  }
  auto reply = gpumgr::slurm::decode_message(*text);
  if (!reply.ok()) {
    std::fprintf(stderr, "gpumgr: bad reply from slurmstepd: %s\n",
                 gpumgr::terminal_safe(reply.status().message()).c_str());
    return -1;
  }
  if (reply->count("error") != 0) {
    std::fprintf(stderr, "gpumgr: %s\n", gpumgr::terminal_safe((*reply)["error"]).c_str());
    return -1;
  }
  if (reply->count("warning") != 0) {
    std::fprintf(stderr, "gpumgr: warning: %s\n",
                 gpumgr::terminal_safe((*reply)["warning"]).c_str());
    return 0;
  }
  for (const auto& [key, value] : *reply) {
    if (key.rfind("env_", 0) != 0) continue;
    if (spank_setenv(sp, key.c_str() + 4, value.c_str(), 1) != ESPANK_SUCCESS) {
      std::fprintf(stderr, "gpumgr: cannot set %s for the task\n", key.c_str() + 4);
      return -1;
    }
  }
  return 0;
}

}  // namespace

extern "C" {

int slurm_spank_init(spank_t sp, int ac, char** av) {
  const spank_context_t ctx = spank_context();
  if (ctx != S_CTX_LOCAL && ctx != S_CTX_REMOTE && ctx != S_CTX_ALLOCATOR) return 0;
  std::vector<std::string> args(av, av + ac);
  auto config = gpumgr::slurm::parse_plugin_args(args);
  if (!config.ok()) {
    slurm_error("%s", gpumgr::terminal_safe(config.status().message()).c_str());
    return -1;
  }
  g_config = *config;
  for (auto& opt : g_options) {
    if (spank_option_register(sp, &opt) != ESPANK_SUCCESS) {
      slurm_error("gpumgr: cannot register --%s", opt.name);
      return -1;
    }
  }
  return 0;
}

// slurmstepd, as the job's user: a connection and pipes per local task.
int slurm_spank_user_init(spank_t sp, int /*ac*/, char** /*av*/) {
  if (!spank_remote(sp)) return 0;
  std::uint32_t tasks = 0;
  if (spank_get_item(sp, S_JOB_LOCAL_TASK_COUNT, &tasks) != ESPANK_SUCCESS || tasks == 0) {
    return 0;
  }
  std::string node = job_env(sp, "SLURMD_NODENAME").value_or("");
  if (node.empty()) {
    if (const char* env = std::getenv("SLURMD_NODENAME"); env != nullptr) node = env;
  }
  if (node.empty()) {
    char host[256] = {};
    (void)::gethostname(host, sizeof host - 1);
    node = host;
  }
  auto socket = gpumgr::slurm::expand_socket_path(g_config.socket, node);
  if (!socket.ok()) {
    slurm_error("gpumgr: %s", socket.status().message().c_str());
    return -1;
  }
  // Without --vram, a task leases only if Slurm gives it shards (seen in the task); connect
  // anyway, and report a missing daemon only to a task that needs it.
  for (std::uint32_t i = 0; i < tasks; ++i) {
    auto slot = std::make_unique<TaskSlot>();
    slot->socket = *socket;
    if (::pipe2(slot->request_fds, O_CLOEXEC) != 0 || ::pipe2(slot->reply_fds, O_CLOEXEC) != 0 ||
        ::pipe2(slot->stop_fds, O_CLOEXEC) != 0) {
      slurm_error("gpumgr: pipe: %s", std::strerror(errno));
      return -1;
    }
    auto ledger = gpumgr::connect_daemon(*socket);
    if (ledger.ok()) {
      slot->ledger = *ledger;
    } else {
      slot->connect_error = "node " + node + ": " + ledger.status().message();
      if (g_vram) slurm_info("gpumgr: %s", slot->connect_error.c_str());
    }
    g_slots.push_back(std::move(slot));
  }
  return 0;
}

// The task, as the user, just before exec.
int slurm_spank_task_init(spank_t sp, int /*ac*/, char** /*av*/) {
  if (!spank_remote(sp)) return 0;
  int local = -1;
  (void)spank_get_item(sp, S_TASK_ID, &local);
  // The other tasks' pipe ends are not this task's business.
  for (std::size_t i = 0; i < g_slots.size(); ++i) {
    if (static_cast<int>(i) == local) continue;
    close_fd(g_slots[i]->request_fds[1]);
    close_fd(g_slots[i]->reply_fds[0]);
  }
  return task_request(sp);
}

// slurmstepd, per task, after every task was forked and before any may exec.
int slurm_spank_task_post_fork(spank_t sp, int /*ac*/, char** /*av*/) {
  if (!spank_remote(sp)) return 0;
  int local = -1;
  pid_t pid = 0;
  if (spank_get_item(sp, S_TASK_ID, &local) != ESPANK_SUCCESS || local < 0 ||
      static_cast<std::size_t>(local) >= g_slots.size() ||
      spank_get_item(sp, S_TASK_PID, &pid) != ESPANK_SUCCESS) {
    return 0;
  }
  TaskSlot* slot = g_slots[static_cast<std::size_t>(local)].get();
  // The task's ends stay with the task alone.
  close_fd(slot->request_fds[1]);
  close_fd(slot->reply_fds[0]);
  slot->pid = pid;
  slot->pid_fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  slot->threads_owner = ::getpid();
  try {
    slot->server = std::thread(serve_task, slot);
    slot->watcher = std::thread(watch_task, slot);
  } catch (const std::exception& e) {
    slurm_error("gpumgr: cannot start the lease threads: %s", e.what());
    return -1;
  }
  return 0;
}

// slurmstepd, per task, as it is reaped.
int slurm_spank_task_exit(spank_t sp, int /*ac*/, char** /*av*/) {
  if (!spank_remote(sp)) return 0;
  int local = -1;
  int status = 0;
  if (spank_get_item(sp, S_TASK_ID, &local) != ESPANK_SUCCESS || local < 0 ||
      static_cast<std::size_t>(local) >= g_slots.size()) {
    return 0;
  }
  (void)spank_get_item(sp, S_TASK_EXIT_STATUS, &status);
  finish_task(g_slots[static_cast<std::size_t>(local)].get(),
              WIFEXITED(status) && WEXITSTATUS(status) == 0);
  return 0;
}

int slurm_spank_exit(spank_t sp, int /*ac*/, char** /*av*/) {
  if (!spank_remote(sp)) return 0;
  for (auto& slot : g_slots) finish_task(slot.get(), false);
  g_slots.clear();
  return 0;
}

}  // extern "C"
