#include "daemon/server.h"

#include <dirent.h>
#include <grp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <asio.hpp>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/snapshot_json.h"
#include "daemon/process_identity.h"
#include "daemon/protocol.h"
#include "util/small_file.h"
#include "util/terminal_text.h"
#include "util/thread_annotations.h"

namespace gpumgr::daemon {
namespace {
using nlohmann::json;
using Socket = asio::local::stream_protocol::socket;

std::string errno_text(int err) { return std::strerror(err); }

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", s);
  return buf;
}

// Seconds as a timer duration; clamped to [0, 1e9] so that no option can overflow it.
std::chrono::steady_clock::duration seconds(double s) {
  s = s > 0 ? std::min(s, 1e9) : 0.0;
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(s));
}

// ---- processes, for --kill-orphans ----

// Whether every uid of the process (real, effective, saved, filesystem) is `uid`: a setuid
// program that a holder started is not the holder's to have killed.
bool process_uid_is(std::uint32_t pid, std::uint32_t uid) {
  const auto uids = read_process_uids(pid);
  return uids &&
         std::all_of(uids->begin(), uids->end(), [uid](std::uint32_t u) { return u == uid; });
}

// Every process's parent, from one pass over /proc.
struct ProcessTable {
  std::unordered_map<std::uint32_t, ProcessStat> stat;
  std::unordered_map<std::uint32_t, std::vector<std::uint32_t>> children;

  static ProcessTable read() {
    ProcessTable t;
    DIR* dir = ::opendir("/proc");
    if (dir == nullptr) return t;
    while (const dirent* entry = ::readdir(dir)) {
      std::uint32_t pid = 0;
      const std::string_view name(entry->d_name);
      const auto [ptr, ec] = std::from_chars(name.data(), name.data() + name.size(), pid);
      if (ec != std::errc() || ptr != name.data() + name.size() || pid == 0) continue;
      if (const auto st = read_process_stat(pid)) {
        t.stat[pid] = *st;
        t.children[st->ppid].push_back(pid);
      }
    }
    ::closedir(dir);
    return t;
  }

  // `root` (when it runs) and its running descendants.
  std::vector<ProcessId> tree(std::uint32_t root) const {
    std::vector<ProcessId> out;
    const auto it = stat.find(root);
    if (it == stat.end()) return out;
    out.push_back({root, it->second.start});
    for (std::size_t i = 0; i < out.size() && out.size() < 100000; ++i) {
      const auto c = children.find(out[i].pid);
      if (c == children.end()) continue;
      for (const std::uint32_t child : c->second) out.push_back({child, stat.at(child).start});
    }
    return out;
  }
};

// Whether `p` is still the process that was read (same start time) and still runs.
bool still_running(const ProcessId& p) {
  const auto st = read_process_stat(p.pid);
  return st && st->running && st->start == p.start;
}

std::string pid_list(const std::vector<ProcessId>& procs) {
  std::string out;
  for (const auto& p : procs) {
    if (!out.empty()) out += ", ";
    out += std::to_string(p.pid);
  }
  return out;
}

// What the holder runs, for status displays, when the client did not say: its command line
// from /proc, arguments separated by spaces, cut at the protocol's limit.
std::string command_of(std::uint32_t pid) {
  // The holder may be exiting right now; its cmdline then reads as an error, shown as "".
  std::string raw =
      read_small_file("/proc/" + std::to_string(pid) + "/cmdline", kMaxCommandBytes + 1)
          .value_or(std::string());
  while (!raw.empty() && raw.back() == '\0') raw.pop_back();
  for (char& c : raw) {
    if (c == '\0') c = ' ';
  }
  if (raw.size() > kMaxCommandBytes) raw.resize(kMaxCommandBytes);
  return raw;
}

// What a socket path that is not a socket is, and what to do about it.
std::string not_a_socket(std::string path, const struct stat& st) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const std::string advice = "; the daemon never replaces it: remove it (rm " + path +
                             ") if nothing needs it, or choose another --socket";
  if (S_ISDIR(st.st_mode)) {
    return path + " is a folder, not a socket: give the socket's own path, e.g. --socket " + path +
           "/gpumgr.sock";
  }
  if (S_ISREG(st.st_mode)) {
    return path + " is a regular file (" + std::to_string(st.st_size) + " bytes), not a socket" +
           advice;
  }
  if (S_ISLNK(st.st_mode)) {
    std::array<char, 4096> target{};
    const ssize_t n = ::readlink(path.c_str(), target.data(), target.size() - 1);
    return path + " is a symbolic link" +
           (n > 0 ? " (to " + std::string(target.data(), static_cast<std::size_t>(n)) + ")"
                  : std::string()) +
           ", not a socket" + advice;
  }
  const char* kind = S_ISFIFO(st.st_mode)  ? "a named pipe (FIFO)"
                     : S_ISCHR(st.st_mode) ? "a character device"
                     : S_ISBLK(st.st_mode) ? "a block device"
                                           : nullptr;
  return path +
         (kind != nullptr ? std::string(" is ") + kind + ", not a socket" : " is not a socket") +
         advice;
}

}  // namespace

// Grants decided on other threads come here to be posted onto the loop; once the loop has
// gone, the lease is given straight back, since nobody is left to hand it to.
struct Mailbox {
  Mutex mutex;
  asio::io_context* io GUARDED_BY(mutex) = nullptr;
};

struct Server::Impl : std::enable_shared_from_this<Server::Impl> {
  // One client connection. Touched only on the loop thread.
  struct Connection {
    explicit Connection(asio::io_context& io) : socket(io), hello_timer(io) {}
    std::uint64_t cid = 0;
    Socket socket;
    asio::steady_timer hello_timer;  // closes the connection when hello does not come
    core::Holder peer;
    std::string peer_command;
    bool command_read = false;
    bool hello = false;
    bool closing = false;  // no more requests are read
    bool close_after_flush = false;
    bool writing = false;
    LineSplitter splitter{kMaxRequestBytes};
    std::array<char, 16 * 1024> read_buffer{};
    std::deque<std::string> out;
    std::size_t out_bytes = 0;
    std::unordered_map<std::string, std::uint64_t> waiting;  // job id -> request id
    std::unordered_set<std::string> held;
    std::vector<ProcessId> tree;  // --kill-orphans: the holder's processes at the last scan
    // The peer as the journal records it (read at its first request that needs it).
    std::optional<state::ProcessIdentity> identity;
  };

  // A lease or waiter restored from the journal whose client has not reattached yet. Its
  // owner entry names kNoConnection.
  struct Detached {
    state::ProcessIdentity holder;
    std::string token;
    bool leased = false;            // a lease (adopted, or restored waiter granted since)
    LeaseInfo lease;                // when leased
    state::JournaledWaiter waiter;  // when restored as a waiter: its record
  };
  static constexpr std::uint64_t kNoConnection = 0;
  using ConnPtr = std::shared_ptr<Connection>;

  ServerOptions options;
  std::shared_ptr<core::LocalLedger> ledger;
  asio::io_context io{1};
  asio::local::stream_protocol::acceptor acceptor{io};
  asio::signal_set signals{io};
  asio::signal_set reload_signals{io};  // SIGHUP, with ServerOptions::on_reload
  asio::steady_timer retry_accept{io};
  asio::steady_timer grace{io};
  asio::steady_timer orphan_scan{io};
  asio::steady_timer reattach_tick{io};  // while restored jobs wait for their clients
  std::shared_ptr<Mailbox> mailbox = std::make_shared<Mailbox>();
  dev_t socket_dev = 0;
  ino_t socket_ino = 0;

  // Loop-thread state.
  std::unordered_map<std::uint64_t, ConnPtr> connections;
  std::unordered_map<std::string, std::uint64_t> owner;  // job id -> connection, held or waiting
  // job id -> the token its lease was granted with (held leases only): a release that names
  // a token releases only that grant.
  std::unordered_map<std::string, std::string> tokens;
  std::random_device random_;  // the kernel's entropy, for tokens
  // Restored from the journal, not reattached yet (see Detached).
  std::unordered_map<std::string, Detached> detached;
  std::chrono::steady_clock::time_point reattach_deadline;
  bool journal_failed_logged = false;  // a failing journal is said once, not per request
  std::unordered_map<std::uint32_t, std::size_t> connections_of_uid;
  std::unordered_set<std::uint32_t> uids_at_limit;  // said so in the log once per episode
  std::uint64_t next_cid = 1;
  bool stopping = false;
  std::string stop_reason = "the daemon is shutting down";

  std::atomic<std::size_t> connection_total{0};
  std::atomic<std::uint64_t> tree_scans{0};  // Server::holder_tree_scans
  std::atomic<bool> stop_requested{false};
  std::thread background;
  std::atomic<bool> ran{false};

  void log(LogLevel level, const std::string& line) const {
    if (options.log) options.log(level, line);
  }

  // ---- accepting ----

  void start_accept() {
    if (stopping) return;
    auto conn = std::make_shared<Connection>(io);
    acceptor.async_accept(conn->socket, [self = shared_from_this(), conn](std::error_code ec) {
      self->on_accept(conn, ec);
    });
  }

  void on_accept(const ConnPtr& conn, std::error_code ec) {
    if (stopping) return;
    if (ec) {
      // Out of descriptors (EMFILE) and the like: keep the daemon up and try again shortly
      // rather than spinning.
      log(LogLevel::kError, "accept failed: " + ec.message());
      retry_accept.expires_after(std::chrono::milliseconds(100));
      retry_accept.async_wait([self = shared_from_this()](std::error_code e) {
        if (!e) self->start_accept();
      });
      return;
    }
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(conn->socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      log(LogLevel::kError, "SO_PEERCRED failed: " + errno_text(errno) + "; connection refused");
      std::error_code ignored;
      conn->socket.close(ignored);
      start_accept();
      return;
    }
    conn->peer =
        core::Holder{static_cast<std::uint32_t>(cred.pid), static_cast<std::uint32_t>(cred.uid)};
    std::size_t& of_uid = connections_of_uid[conn->peer.uid];
    if (options.max_connections_per_uid > 0 && conn->peer.uid != 0 &&
        of_uid >= options.max_connections_per_uid) {
      refuse_over_limit(conn);
      start_accept();
      return;
    }
    ++of_uid;
    conn->cid = next_cid++;
    connections.emplace(conn->cid, conn);
    connection_total.store(connections.size());
    if (options.hello_timeout_s > 0) {
      conn->hello_timer.expires_after(seconds(options.hello_timeout_s));
      conn->hello_timer.async_wait([self = shared_from_this(), conn](std::error_code e) {
        if (!e) self->on_hello_timeout(conn);
      });
    }
    start_read(conn);
    start_accept();
  }

  // One uid at its limit: this connection gets one error line and is closed at once, never
  // registered, so that it costs nothing while every other connection is served.
  void refuse_over_limit(const ConnPtr& conn) {
    const std::uint32_t uid = conn->peer.uid;
    const std::string limit = std::to_string(options.max_connections_per_uid);
    const std::string line =
        encode_error(std::nullopt,
                     Status(ErrorCode::kResourceExhausted,
                            "uid " + std::to_string(uid) + " already has " + limit +
                                " connections to the daemon, the most one uid may have "
                                "(--max-connections-per-uid " +
                                limit +
                                "); closing this one: close connections you do not use, or ask the "
                                "daemon's administrator to raise the limit"));
    // A new connection's send buffer is empty: one short line goes out without blocking.
    (void)::send(conn->socket.native_handle(), line.data(), line.size(),
                 MSG_NOSIGNAL | MSG_DONTWAIT);
    std::error_code ignored;
    conn->socket.shutdown(Socket::shutdown_both, ignored);
    conn->socket.close(ignored);
    if (uids_at_limit.insert(uid).second) {
      log(LogLevel::kWarning, "uid " + std::to_string(uid) + " has " + limit +
                                  " connections, its limit (--max-connections-per-uid); "
                                  "refusing its new connections until some close");
    }
  }

  // No hello within the timeout: an idle connection must not hold a descriptor for ever.
  void on_hello_timeout(const ConnPtr& conn) {
    if (conn->hello || conn->closing || connections.count(conn->cid) == 0) return;
    send(conn, encode_error(std::nullopt,
                            Status(ErrorCode::kTimedOut,
                                   "no hello within " + seconds_text(options.hello_timeout_s) +
                                       " s of connecting; closing the connection (the first "
                                       "request must be hello: docs/protocol.md)")));
    close_after_flush(conn);
  }

  // ---- reading ----

  void start_read(const ConnPtr& conn) {
    if (conn->closing) return;
    conn->socket.async_read_some(
        asio::buffer(conn->read_buffer),
        [self = shared_from_this(), conn](std::error_code ec, std::size_t n) {
          self->on_read(conn, ec, n);
        });
  }

  void on_read(const ConnPtr& conn, std::error_code ec, std::size_t n) {
    if (conn->closing) return;
    if (ec) {
      // EOF, reset, or our own close: the client is gone, and so are its leases.
      drop(conn, /*client_left=*/true);
      return;
    }
    conn->splitter.append(std::string_view(conn->read_buffer.data(), n));
    while (!conn->closing) {
      auto line = conn->splitter.next();
      if (!line.ok()) {
        // An oversized message: the stream cannot be resynchronised.
        send(conn, encode_error(std::nullopt, line.status()));
        close_after_flush(conn);
        return;
      }
      if (!line->has_value()) break;
      if ((*line)->empty()) continue;  // blank lines are ignored (interactive use)
      handle_line(conn, **line);
    }
    start_read(conn);
  }

  // ---- writing ----

  void send(const ConnPtr& conn, std::string bytes) {
    if (!conn->socket.is_open() || conn->close_after_flush) return;
    conn->out_bytes += bytes.size();
    conn->out.push_back(std::move(bytes));
    if (conn->out_bytes > options.max_reply_backlog) {
      log(LogLevel::kWarning, "client pid " + std::to_string(conn->peer.pid) +
                                  " does not read its replies; disconnecting it");
      drop(conn);
      return;
    }
    if (!conn->writing) write_next(conn);
  }

  void write_next(const ConnPtr& conn) {
    if (conn->out.empty()) {
      conn->writing = false;
      if (conn->close_after_flush) drop(conn);
      return;
    }
    conn->writing = true;
    asio::async_write(conn->socket, asio::buffer(conn->out.front()),
                      [self = shared_from_this(), conn](std::error_code ec, std::size_t) {
                        self->on_written(conn, ec);
                      });
  }

  void on_written(const ConnPtr& conn, std::error_code ec) {
    if (!conn->out.empty()) {
      conn->out_bytes -= conn->out.front().size();
      conn->out.pop_front();
    }
    if (ec) {
      conn->writing = false;
      drop(conn, /*client_left=*/true);  // EPIPE, reset: the client went away
      return;
    }
    write_next(conn);
  }

  void close_after_flush(const ConnPtr& conn) {
    conn->closing = true;
    if (!conn->writing && conn->out.empty()) {
      drop(conn);
    } else {
      conn->close_after_flush = true;
    }
  }

  // ---- disconnect: the holder is gone, so are its leases ----

  // `client_left`: the client closed the connection (exited, was killed), as opposed to the
  // daemon dropping it (shutdown, a protocol error, a client that stopped reading).
  void drop(const ConnPtr& conn, bool client_left = false) {
    if (connections.erase(conn->cid) == 0) return;  // already dropped
    connection_total.store(connections.size());
    if (const auto it = connections_of_uid.find(conn->peer.uid); it != connections_of_uid.end()) {
      if (--it->second == 0) connections_of_uid.erase(it);
      uids_at_limit.erase(conn->peer.uid);
    }
    conn->closing = true;
    std::error_code ignored;
    conn->hello_timer.cancel();
    conn->socket.shutdown(Socket::shutdown_both, ignored);
    conn->socket.close(ignored);
    if (client_left && options.kill_orphans && !stopping && !conn->held.empty()) {
      terminate_orphans(conn);
    }
    // Waiting requests: cancelled. A grant already on its way here finds the connection gone
    // and releases the lease (on_waited).
    std::vector<std::string> waiting;
    for (const auto& [job, id] : conn->waiting) waiting.push_back(job);
    for (const auto& job : waiting) (void)ledger->cancel_as(job, 0);
    // Held leases: released, counted as failed (their holder died or quit holding them).
    for (const auto& job : conn->held) {
      (void)ledger->release_as(job, JobOutcome::kFailed, 0);
      erase_owner(job, conn->cid);
    }
    if (!conn->held.empty() || !waiting.empty()) {
      log(LogLevel::kInfo, "client pid " + std::to_string(conn->peer.pid) + " left: released " +
                               std::to_string(conn->held.size()) + " lease(s), cancelled " +
                               std::to_string(waiting.size()) + " waiting request(s)");
    }
    conn->held.clear();
    conn->tree.clear();
    maybe_finish_shutdown();
  }

  // ---- --kill-orphans ----

  // Reads the process tree of every connection that holds a lease, so that it is known when
  // the holder dies (its children are then re-parented and no longer look like its own).
  void schedule_orphan_scan() {
    orphan_scan.expires_after(seconds(options.orphan_scan_interval_s));
    orphan_scan.async_wait([self = shared_from_this()](std::error_code ec) {
      if (ec || self->stopping) return;
      self->scan_holder_trees();
      self->schedule_orphan_scan();
    });
  }

  void scan_holder_trees() {
    bool any = false;
    for (const auto& [cid, conn] : connections) any = any || !conn->held.empty();
    if (!any) return;  // nothing to read while nobody holds a lease
    const ProcessTable table = ProcessTable::read();
    for (const auto& [cid, conn] : connections) {
      if (conn->held.empty()) {
        conn->tree.clear();
      } else {
        conn->tree = table.tree(conn->peer.pid);
      }
    }
    tree_scans.fetch_add(1);
  }

  // The holder's connection closed while it held leases: SIGTERM its process tree (as read
  // at the last scan, plus what descends from the holder now, if it still runs), then
  // SIGKILL what is left after the grace. Only processes that are still the ones read (same
  // start time), all of whose uids are the holder's; never pid 1 or the daemon.
  void terminate_orphans(const ConnPtr& conn) {
    std::vector<ProcessId> candidates = conn->tree;
    const ProcessTable now = ProcessTable::read();
    const bool holder_known = !candidates.empty() && candidates.front().pid == conn->peer.pid;
    for (const ProcessId& p : now.tree(conn->peer.pid)) {
      // The holder's pid now: the same process as at the scan, or (no scan yet) it just left.
      if (p.pid == conn->peer.pid && holder_known && p.start != candidates.front().start) break;
      const bool seen = std::any_of(candidates.begin(), candidates.end(),
                                    [&](const ProcessId& c) { return c.pid == p.pid; });
      if (!seen) candidates.push_back(p);
    }
    const auto self_pid = static_cast<std::uint32_t>(::getpid());
    const std::uint32_t uid = conn->peer.uid;
    std::vector<ProcessId> signalled;
    for (const ProcessId& p : candidates) {
      if (p.pid <= 1 || p.pid == self_pid) continue;
      if (!still_running(p) || !process_uid_is(p.pid, uid)) continue;
      if (::kill(static_cast<pid_t>(p.pid), SIGTERM) == 0) signalled.push_back(p);
    }
    if (signalled.empty()) return;
    std::string jobs;
    for (const auto& job : conn->held) jobs += (jobs.empty() ? "'" : ", '") + job + "'";
    const std::string who =
        "client pid " + std::to_string(conn->peer.pid) + " (uid " + std::to_string(uid) + ")";
    log(LogLevel::kWarning, who + " left holding " + jobs + ": --kill-orphans: SIGTERM to " +
                                std::to_string(signalled.size()) +
                                " process(es) of its tree: " + pid_list(signalled));
    auto timer = std::make_shared<asio::steady_timer>(io);
    timer->expires_after(seconds(options.kill_orphans_grace_s));
    timer->async_wait([self = shared_from_this(), timer, signalled, uid, who](std::error_code) {
      std::vector<ProcessId> killed;
      for (const ProcessId& p : signalled) {
        if (!still_running(p) || !process_uid_is(p.pid, uid)) continue;
        if (::kill(static_cast<pid_t>(p.pid), SIGKILL) == 0) killed.push_back(p);
      }
      if (!killed.empty()) {
        self->log(LogLevel::kWarning, "--kill-orphans: SIGKILL to " +
                                          std::to_string(killed.size()) + " process(es) of " + who +
                                          " still running " +
                                          seconds_text(self->options.kill_orphans_grace_s) +
                                          " s after SIGTERM: " + pid_list(killed));
      }
    });
  }

  void erase_owner(const std::string& job, std::uint64_t cid) {
    const auto it = owner.find(job);
    if (it != owner.end() && it->second == cid) {
      owner.erase(it);
      tokens.erase(job);
      forget_in_journal(job);
    }
  }

  // A new request's token: 128 random bits, in hex. Unguessable, so that only the connection
  // that was granted a lease (and whoever it tells) can name that grant. Issued when the
  // request arrives, so that a waiter's record in the journal holds the token its lease will
  // carry.
  std::string new_token() {
    std::string token;
    static constexpr char kHex[] = "0123456789abcdef";
    for (int i = 0; i < 4; ++i) {
      const std::uint32_t word = random_();
      for (int k = 0; k < 8; ++k) token.push_back(kHex[(word >> (4 * k)) & 0xf]);
    }
    return token;
  }

  nlohmann::json lease_json(const LeaseInfo& lease) {
    nlohmann::json j = to_json(lease);
    const auto t = tokens.find(lease.job_id);
    if (t != tokens.end()) j["token"] = t->second;
    return j;
  }

  // ---- the journal: what survives a restart ----

  const state::ProcessIdentity& identity(const ConnPtr& conn) {
    if (!conn->identity) conn->identity = identity_of(conn->peer.pid, conn->peer.uid);
    return *conn->identity;
  }

  // Who holds a journaled job for the ledger: the process its client named, else the client.
  static core::Holder lease_holder(const LeaseRequest& request,
                                   const state::ProcessIdentity& client) {
    return core::Holder{request.holder_pid != 0 ? request.holder_pid : client.pid, client.uid};
  }

  static std::int64_t unix_ns(std::chrono::system_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  }

  // A failing journal (disk full, I/O error) does not stop the daemon: the lease still
  // works, it only would not survive a restart. Said once, and again after it recovers.
  void journal_result(const Status& s) {
    if (s.ok()) {
      journal_failed_logged = false;
      return;
    }
    if (!journal_failed_logged) {
      log(LogLevel::kError,
          "cannot write the lease journal (leases granted now would not survive a restart of "
          "the daemon): " +
              s.message());
      journal_failed_logged = true;
    }
  }

  void journal_lease(const LeaseInfo& lease, const state::ProcessIdentity& holder) {
    if (!options.journal) return;
    state::JournaledLease record;
    record.request.job_id = lease.job_id;
    record.request.bytes = lease.bytes;
    record.request.gpus = static_cast<int>(lease.devices.size());
    record.request.priority = lease.priority;
    record.request.command = lease.command;
    record.request.kind = lease.kind;
    record.request.preemptible = lease.revocable == "preemptible";
    record.request.resident = lease.resident;
    record.request.beside_resident = lease.beside_resident;  // its model is in use after a restart
    if (!lease.revocable.empty()) record.request.revoke_grace_s = lease.revoke_grace_s;
    record.devices = lease.devices;
    record.estimate = lease.estimate;
    record.holder = holder;
    if (lease.pid != holder.pid) record.request.holder_pid = lease.pid;
    const auto t = tokens.find(lease.job_id);
    if (t != tokens.end()) record.token = t->second;
    record.granted_at_unix_ns = unix_ns(lease.granted_at);
    record.requested_at_unix_ns =
        record.granted_at_unix_ns - static_cast<std::int64_t>(lease.waited_s * 1e9);
    journal_result(options.journal->put_lease(record));
  }

  // A job that ended (released, cancelled, expired, its client gone) leaves the journal,
  // except while the daemon stops: what it held or waited for then is for the next daemon.
  void forget_in_journal(const std::string& job) {
    if (options.journal && !stopping) journal_result(options.journal->remove(job));
  }

  // ---- requests ----

  void handle_line(const ConnPtr& conn, const std::string& line) {
    std::optional<std::uint64_t> id;
    auto request = decode_request(line, &id);
    if (!request.ok()) {
      send(conn, encode_error(id, request.status()));
      return;
    }
    Request& r = request.value();
    if (r.op == Op::kHello) {
      handle_hello(conn, r);
      return;
    }
    if (!conn->hello) {
      send(conn, encode_error(r.id, Status(ErrorCode::kFailedPrecondition,
                                           "send hello (protocol version " +
                                               std::to_string(kProtocolVersion) + ") before '" +
                                               std::string(op_name(r.op)) + "'")));
      return;
    }
    switch (r.op) {
      case Op::kAcquire:
      case Op::kTryAcquire:
        handle_acquire(conn, r);
        return;
      case Op::kRelease: {
        if (!r.token.empty()) {
          const auto t = tokens.find(r.job_id);
          if (t == tokens.end() || t->second != r.token) {
            send(conn, encode_error(r.id, Status(ErrorCode::kLeaseLost,
                                                 "lease lost: job '" + r.job_id +
                                                     "' holds no lease with that token here (it "
                                                     "ended: its connection closed, the daemon "
                                                     "restarted, or it was released)")));
            return;
          }
        }
        Status s = ledger->release_as(r.job_id, r.outcome, conn->peer.uid);
        if (s.ok()) forget_held(r.job_id, conn);
        send(conn, s.ok() ? encode_ok(r.id) : encode_error(r.id, s));
        return;
      }
      case Op::kCancel: {
        // On success the waiter's own reply (kCancelled) is already posted to the loop.
        Status s = ledger->cancel_as(r.job_id, conn->peer.uid);
        send(conn, s.ok() ? encode_ok(r.id) : encode_error(r.id, s));
        return;
      }
      case Op::kStatus: {
        auto snap = ledger->snapshot();
        if (!snap.ok()) {
          send(conn, encode_error(r.id, snap.status()));
          return;
        }
        snap->source = "daemon at " + options.socket_path;
        send(conn, encode_ok(r.id, {{"snapshot", to_json(snap.value())}}));
        return;
      }
      case Op::kCanAdmit: {
        auto admit = ledger->can_admit(r.lease.bytes, r.lease.gpus, r.lease.device);
        send(conn, admit.ok() ? encode_ok(r.id, {{"admit", *admit}})
                              : encode_error(r.id, admit.status()));
        return;
      }
      case Op::kPing:
        send(conn, encode_ok(r.id));
        return;
      case Op::kEstimates: {
        auto all = ledger->estimates();
        if (!all.ok()) {
          send(conn, encode_error(r.id, all.status()));
          return;
        }
        nlohmann::json list = nlohmann::json::array();
        for (const auto& e : *all) list.push_back(to_json(e));
        send(conn, encode_ok(r.id, {{"estimates", list}}));
        return;
      }
      case Op::kForgetKind: {
        // The history is the host's: only root (or the daemon's own uid) may erase a kind.
        Status s = Status::Ok();
        if (conn->peer.uid != 0 && conn->peer.uid != ::getuid()) {
          s = Status(ErrorCode::kPermissionDenied,
                     "only root or the daemon's user may forget a job kind's history; uid " +
                         std::to_string(conn->peer.uid) + " asked");
        } else {
          s = ledger->forget_kind(r.lease.kind);
        }
        send(conn, s.ok() ? encode_ok(r.id) : encode_error(r.id, s));
        return;
      }
      case Op::kReattach:
        handle_reattach(conn, r);
        return;
      case Op::kRevoke:
      case Op::kTouch: {
        // Only the holder's uid (or root) may revoke a lease or mark it used.
        Status s = r.op == Op::kRevoke ? ledger->revoke_as(r.job_id, conn->peer.uid)
                                       : ledger->touch_as(r.job_id, conn->peer.uid);
        send(conn, s.ok() ? encode_ok(r.id) : encode_error(r.id, s));
        return;
      }
      case Op::kHello:
        return;
    }
  }

  // ---- restarts: restoring the journal, reattaching, the grace period ----

  // A client takes back what a restored job was: a lease (naming its token; the holder's
  // uid or root), or a place in the queue (the holder process itself, by pid and start
  // time, since a waiter's token was never told). Answered at once for a lease; for a
  // waiter, like the acquire it was: when it is granted or fails.
  void handle_reattach(const ConnPtr& conn, const Request& r) {
    const auto d = detached.find(r.job_id);
    if (d == detached.end()) {
      const bool ours = owner.count(r.job_id) != 0 && tokens.count(r.job_id) != 0 &&
                        !r.token.empty() && tokens[r.job_id] == r.token;
      send(conn,
           encode_error(r.id,
                        NotFound(ours ? "job '" + r.job_id + "' is already attached to a connection"
                                      : "job '" + r.job_id +
                                            "' has no lease or waiting request here to take "
                                            "back: it ended, or it was not restored after a "
                                            "restart (no lease journal, or the grace period "
                                            "for reattaching had passed)")));
      return;
    }
    const Detached& job = d->second;
    const state::ProcessIdentity& me = identity(conn);
    const bool same_process = me.pid == job.holder.pid && me.start_ticks == job.holder.start_ticks;
    // The process that made the request may always take it back (a restored waiter may
    // have been granted before it reconnected, and it never learnt that lease's token);
    // anyone else needs the token and the holder's uid (or root's).
    const bool token_ok = !r.token.empty() && r.token == job.token;
    const bool uid_ok = conn->peer.uid == job.holder.uid || conn->peer.uid == 0;
    const bool allowed =
        (same_process && (r.token.empty() || token_ok)) || (job.leased && token_ok && uid_ok);
    std::string why;
    if (!job.leased) {
      why = "a waiting request is taken back only by the process that made it (pid " +
            std::to_string(job.holder.pid) + ")";
    } else if (r.token.empty()) {
      why = "a lease is taken back by its holder process (pid " + std::to_string(job.holder.pid) +
            ") or by naming its token";
    } else if (!token_ok) {
      why = "that is not its lease's token";
    } else {
      why = "it belongs to uid " + std::to_string(job.holder.uid);
    }
    if (!allowed) {
      send(conn, encode_error(r.id, Status(ErrorCode::kPermissionDenied,
                                           "cannot reattach job '" + r.job_id + "': " + why)));
      return;
    }
    owner[r.job_id] = conn->cid;
    if (job.leased) {
      conn->held.insert(r.job_id);
      const nlohmann::json lease = lease_json(job.lease);
      detached.erase(d);
      send(conn, encode_ok(r.id, {{"lease", lease}}));
    } else {
      conn->waiting[r.job_id] = r.id;
      detached.erase(d);
    }
    log(LogLevel::kInfo, "client pid " + std::to_string(conn->peer.pid) + " reattached job '" +
                             terminal_safe(r.job_id) + "'" +
                             (detached.empty() ? "; every restored job is taken back" : ""));
  }

  // Before the first connection is served: what the last daemon left in the journal. Leases
  // whose holders still run are adopted on their devices; waiters whose holders still run
  // queue again in their old order, ahead of every new request. Both wait for their clients
  // for the grace period.
  void restore() {
    if (!options.journal) return;
    auto contents = options.journal->load();
    if (!contents.ok()) {
      log(LogLevel::kError,
          "cannot read the lease journal; starting without the leases it "
          "holds: " +
              contents.status().message());
      return;
    }
    std::size_t adopted = 0, queued = 0, gone = 0;
    const auto to_time = [](std::int64_t ns) {
      return std::chrono::system_clock::time_point(
          std::chrono::duration_cast<std::chrono::system_clock::duration>(
              std::chrono::nanoseconds(ns)));
    };
    for (state::JournaledLease& l : contents->leases) {
      const std::string job = l.request.job_id;
      core::LocalLedger::AdoptedLease a;
      a.request = l.request;
      a.devices = l.devices;
      a.estimate = l.estimate;
      a.requested_at = to_time(l.requested_at_unix_ns);
      a.granted_at = to_time(l.granted_at_unix_ns);
      if (!still_runs(l.holder)) {
        ++gone;
        log(LogLevel::kInfo, "restart: job '" + terminal_safe(job) + "' of pid " +
                                 std::to_string(l.holder.pid) +
                                 ": its holder is gone; its lease is released (failed)");
        // Taken back and released at once, so that it counts as a failed job (and its kind's
        // history records the run) as if its holder had died with this daemon up.
        if (ledger->adopt_as(a, lease_holder(l.request, l.holder)).ok()) {
          (void)ledger->release_as(job, JobOutcome::kFailed, std::nullopt, nullptr);
        }
        journal_result(options.journal->remove(job));
        continue;
      }
      auto info = ledger->adopt_as(a, lease_holder(l.request, l.holder));
      if (!info.ok()) {
        log(LogLevel::kWarning, "restart: cannot restore the lease of job '" + terminal_safe(job) +
                                    "': " + info.status().message());
        journal_result(options.journal->remove(job));
        continue;
      }
      ++adopted;
      Detached& d = detach(job, l.holder, l.token);
      d.leased = true;
      d.lease = std::move(info).value();
    }
    const auto steady_now = std::chrono::steady_clock::now();
    const std::int64_t wall_now = unix_ns(std::chrono::system_clock::now());
    for (state::JournaledWaiter& w : contents->waiters) {
      const std::string job = w.request.job_id;
      if (!still_runs(w.holder) || owner.count(job) != 0) {
        ++gone;
        journal_result(options.journal->remove(job));
        continue;
      }
      std::optional<core::LocalLedger::SteadyTime> deadline;
      if (w.deadline_unix_ns) {
        deadline = steady_now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                    std::chrono::nanoseconds(
                                        std::max<std::int64_t>(0, *w.deadline_unix_ns - wall_now)));
      }
      ++queued;
      detach(job, w.holder, w.token).waiter = w;
      start_waiting(w.request, lease_holder(w.request, w.holder), deadline,
                    to_time(w.requested_at_unix_ns));
    }
    if (adopted + queued + gone == 0) return;
    log(LogLevel::kInfo, "restart: restored " + std::to_string(adopted) + " lease(s) and " +
                             std::to_string(queued) + " waiting request(s) from " +
                             options.journal->path() + " (" + std::to_string(gone) +
                             " whose holders are gone were let go); their clients have " +
                             seconds_text(options.reattach_grace_s) + " s to reattach");
    if (detached.empty()) return;
    reattach_deadline = steady_now + seconds(options.reattach_grace_s);
    schedule_reattach_tick();
  }

  // A restored job, owned by no connection until its client reattaches.
  Detached& detach(const std::string& job, const state::ProcessIdentity& holder,
                   const std::string& token) {
    owner[job] = kNoConnection;
    tokens[job] = token;
    Detached& d = detached[job];
    d.holder = holder;
    d.token = token;
    return d;
  }

  // While restored jobs wait for their clients: every quarter second, those whose holder
  // died are let go at once; at the deadline, every one still not taken back.
  void schedule_reattach_tick() {
    reattach_tick.expires_after(std::chrono::milliseconds(250));
    reattach_tick.async_wait([self = shared_from_this()](std::error_code ec) {
      if (ec || self->stopping) return;
      self->check_detached();
      if (!self->detached.empty()) self->schedule_reattach_tick();
    });
  }

  void check_detached() {
    const bool at_deadline = std::chrono::steady_clock::now() >= reattach_deadline;
    std::vector<std::pair<std::string, bool>> ending;  // job id, whether its holder runs
    for (const auto& [job, d] : detached) {
      const bool alive = still_runs(d.holder);  // one read of /proc per job and tick
      if (at_deadline || !alive) ending.emplace_back(job, alive);
    }
    for (const auto& [job, alive] : ending) {
      const auto d = detached.find(job);
      if (d == detached.end()) continue;  // a cancellation's answer already came
      const bool leased = d->second.leased;
      const std::uint64_t lease_id = d->second.lease.lease_id;
      log(LogLevel::kWarning,
          "restart: job '" + terminal_safe(job) + "' of pid " +
              std::to_string(d->second.holder.pid) + (leased ? ": lease" : ": waiting request") +
              (alive ? " not reattached within " + seconds_text(options.reattach_grace_s) + " s"
                     : ": its holder is gone") +
              (leased ? "; released (failed)" : "; cancelled"));
      if (leased) {
        detached.erase(d);
        (void)ledger->release_as(job, JobOutcome::kFailed, std::nullopt, nullptr, lease_id);
        erase_owner(job, kNoConnection);
      } else {
        // Its answer (kCancelled) comes back through on_waited, which forgets it.
        detached.erase(d);
        (void)ledger->cancel_as(job, 0);
      }
    }
  }

  void handle_hello(const ConnPtr& conn, const Request& r) {
    if (conn->hello) {
      send(conn, encode_error(r.id, Status(ErrorCode::kFailedPrecondition,
                                           "hello was already done on this connection")));
      return;
    }
    if (r.version != kProtocolVersion) {
      send(conn, encode_error(r.id, Status(ErrorCode::kFailedPrecondition,
                                           "protocol version " + std::to_string(r.version) +
                                               " is not supported; this daemon speaks version " +
                                               std::to_string(kProtocolVersion))));
      close_after_flush(conn);
      return;
    }
    conn->hello = true;
    conn->hello_timer.cancel();
    send(conn, encode_ok(r.id, {{"version", kProtocolVersion},
                                {"server", "gpumgr"},
                                {"daemon_pid", ::getpid()},
                                {"peer", {{"pid", conn->peer.pid}, {"uid", conn->peer.uid}}},
                                {"max_request_bytes", kMaxRequestBytes}}));
  }

  // ---- revocable leases ----

  // The ledger's revocations come to the loop; each goes to its holder's connection as a
  // lease_revoked event (docs/protocol.md). At the grace's end the ledger has released the
  // lease: its ownership ends as at a release by someone else (lease_ended).
  void watch_revocations() {
    std::weak_ptr<Impl> weak = shared_from_this();
    ledger->set_revoke_handler([weak, mailbox = mailbox](const RevokeNotice& notice) {
      MutexLock lock(mailbox->mutex);
      if (mailbox->io == nullptr) return;
      asio::post(*mailbox->io, [weak, notice] {
        if (auto self = weak.lock()) self->on_revoked(notice);
      });
    });
  }

  void on_revoked(const RevokeNotice& notice) {
    const auto o = owner.find(notice.job_id);
    if (o == owner.end()) return;
    const auto c = connections.find(o->second);
    const ConnPtr conn = c == connections.end() ? nullptr : c->second;
    if (notice.ended) {
      log(LogLevel::kWarning, "job '" + notice.job_id + "' " + notice.message);
      if (conn != nullptr) {
        conn->held.erase(notice.job_id);
        send(conn, encode_event("lease_ended",
                                {{"job_id", notice.job_id},
                                 {"reason", "revoked and not released within its grace period"}}));
      }
      owner.erase(o);
      tokens.erase(notice.job_id);
      detached.erase(notice.job_id);
      forget_in_journal(notice.job_id);
      return;
    }
    log(LogLevel::kInfo, "job '" + notice.job_id + "' " + notice.message);
    if (conn == nullptr) return;  // restored, not reattached: the grace runs all the same
    send(conn, encode_event("lease_revoked", {{"job_id", notice.job_id},
                                              {"cause", notice.cause},
                                              {"for_job", notice.for_job},
                                              {"grace_s", notice.grace_s},
                                              {"reason", notice.message}}));
  }

  // A release by another connection of the same uid (or root) also ends this ownership,
  // and the holder's connection is told at once (a lease_ended event), so that its client
  // knows its command now runs without a lease and says who ended it.
  void forget_held(const std::string& job, const ConnPtr& by) {
    const auto it = owner.find(job);
    if (it == owner.end()) return;
    if (const auto c = connections.find(it->second); c != connections.end()) {
      c->second->held.erase(job);
      if (c->second != by) {
        const std::string who = by->peer.uid == 0
                                    ? "root (uid 0, pid " + std::to_string(by->peer.pid) + ")"
                                    : "uid " + std::to_string(by->peer.uid) + " (pid " +
                                          std::to_string(by->peer.pid) + ")";
        send(c->second,
             encode_event("lease_ended", {{"job_id", job}, {"reason", "released by " + who}}));
      }
    }
    owner.erase(it);
    tokens.erase(job);
    detached.erase(job);
    forget_in_journal(job);
  }

  void handle_acquire(const ConnPtr& conn, Request& r) {
    if (owner.count(r.lease.job_id) != 0) {
      send(conn,
           encode_error(r.id, Status(ErrorCode::kAlreadyExists,
                                     "job '" + r.lease.job_id + "' is already active or waiting")));
      return;
    }
    for (const auto& [job, id] : conn->waiting) {
      if (id == r.id) {
        send(conn, encode_error(r.id, InvalidArgument("request id " + std::to_string(r.id) +
                                                      " is still in use by a waiting acquire")));
        return;
      }
    }
    if (r.lease.command.empty()) {
      if (!conn->command_read) {
        conn->peer_command = command_of(conn->peer.pid);
        conn->command_read = true;
      }
      r.lease.command = conn->peer_command;
    }
    // The process whose memory is the lease's use: the client, or one it started and names
    // (the Slurm plugin's task). The lease still lives as long as this connection.
    core::Holder holder = conn->peer;
    if (r.lease.holder_pid == conn->peer.pid) r.lease.holder_pid = 0;
    if (r.lease.holder_pid != 0) {
      if (Status s = check_descendant(r.lease.holder_pid, conn->peer.pid, conn->peer.uid);
          !s.ok()) {
        send(conn, encode_error(r.id, s));
        return;
      }
      holder.pid = r.lease.holder_pid;
    }
    if (options.admit) {  // quotas: refused before anything is recorded
      if (Status s = options.admit(r.lease, conn->peer); !s.ok()) {
        send(conn, encode_error(r.id, s));
        return;
      }
    }
    if (!r.wait) {
      auto lease = ledger->try_acquire_as(r.lease, holder);
      if (!lease.ok()) {
        send(conn, encode_error(r.id, lease.status()));
        return;
      }
      owner[r.lease.job_id] = conn->cid;
      tokens[r.lease.job_id] = new_token();
      conn->held.insert(r.lease.job_id);
      journal_lease(lease.value(), identity(conn));  // before the grant is answered
      send(conn, encode_ok(r.id, {{"lease", lease_json(lease.value())}}));
      return;
    }
    std::optional<core::LocalLedger::SteadyTime> deadline;
    if (r.timeout_s) {
      deadline = std::chrono::steady_clock::now() +
                 std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                     std::chrono::duration<double>(*r.timeout_s));
    }
    owner[r.lease.job_id] = conn->cid;
    tokens[r.lease.job_id] = new_token();
    conn->waiting[r.lease.job_id] = r.id;
    if (options.journal) {
      state::JournaledWaiter record;
      record.request = r.lease;
      record.token = tokens[r.lease.job_id];
      record.holder = identity(conn);
      const auto now = std::chrono::system_clock::now();
      record.requested_at_unix_ns = unix_ns(now);
      if (r.timeout_s) {
        record.deadline_unix_ns = record.requested_at_unix_ns +
                                  static_cast<std::int64_t>(std::min(*r.timeout_s, 1e9) * 1e9);
      }
      journal_result(options.journal->put_waiter(record));
    }
    start_waiting(r.lease, holder, deadline);
  }

  // Queues a request in the ledger; its answer comes back on the loop (on_waited).
  // `requested_at`: a restored waiter's first request time (its waiting time goes on).
  void start_waiting(const LeaseRequest& request, core::Holder holder,
                     std::optional<core::LocalLedger::SteadyTime> deadline,
                     std::optional<std::chrono::system_clock::time_point> requested_at = {}) {
    std::weak_ptr<Impl> weak = shared_from_this();
    std::weak_ptr<core::LocalLedger> weak_ledger = ledger;
    ledger->acquire_async(
        request, holder, deadline,
        [weak, weak_ledger, mailbox = mailbox, job = request.job_id](StatusOr<LeaseInfo> result) {
          {
            MutexLock lock(mailbox->mutex);
            if (mailbox->io != nullptr) {
              asio::post(*mailbox->io, [weak, job, result = std::move(result)] {
                if (auto self = weak.lock()) self->on_waited(job, result);
              });
              return;
            }
          }
          // The loop is gone: nobody is left to hand the lease to.
          if (result.ok()) {
            if (auto l = weak_ledger.lock())
              (void)l->release_as(job, JobOutcome::kFailed, std::nullopt, nullptr,
                                  result->lease_id);
          }
        },
        requested_at);
  }

  // A waiter's answer from the ledger, on the loop: to its connection, or, for a restored
  // waiter whose client has not reattached yet, kept for it.
  void on_waited(const std::string& job, const StatusOr<LeaseInfo>& result) {
    const auto o = owner.find(job);
    const std::uint64_t cid = o == owner.end() ? kNoConnection : o->second;
    if (cid == kNoConnection) {
      const auto d = detached.find(job);
      if (d != detached.end() && !d->second.leased && !stopping) {
        if (result.ok()) {
          d->second.leased = true;
          d->second.lease = result.value();
          journal_lease(d->second.lease, d->second.holder);
        } else {
          detached.erase(d);
          erase_owner(job, kNoConnection);
        }
        return;
      }
      // Nobody waits for it any more (cancelled at the grace's end, or the daemon stops).
      if (result.ok()) {
        (void)ledger->release_as(job, JobOutcome::kFailed, std::nullopt, nullptr, result->lease_id);
      }
      if (d != detached.end()) detached.erase(d);
      erase_owner(job, kNoConnection);
      maybe_finish_shutdown();
      return;
    }
    const auto it = connections.find(cid);
    ConnPtr conn = it == connections.end() ? nullptr : it->second;
    std::uint64_t id = 0;
    bool answered = true;
    if (conn != nullptr) {
      if (const auto w = conn->waiting.find(job); w != conn->waiting.end()) {
        id = w->second;
        answered = false;
        conn->waiting.erase(w);
      }
    }
    if (result.ok()) {
      if (answered || conn->closing) {
        // Its holder left (or shutdown already answered it): give it straight back.
        // This grant, not a later lease of the same id.
        (void)ledger->release_as(job, JobOutcome::kFailed, std::nullopt, nullptr, result->lease_id);
        erase_owner(job, cid);
        maybe_finish_shutdown();
        return;
      }
      conn->held.insert(job);
      journal_lease(result.value(), identity(conn));  // before the grant is answered
      send(conn, encode_ok(id, {{"lease", lease_json(result.value())}}));
      return;
    }
    erase_owner(job, cid);
    if (!answered) send(conn, encode_error(id, result.status()));
    maybe_finish_shutdown();
  }

  // ---- reload (SIGHUP) ----

  void wait_for_reload() {
    reload_signals.async_wait([weak = weak_from_this()](std::error_code e, int) {
      auto self = weak.lock();
      if (e || !self || self->stopping) return;
      if (auto limits = self->options.on_reload()) self->apply_client_limits(*limits);
      self->wait_for_reload();
    });
  }

  void apply_client_limits(const ClientLimits& limits) {
    const bool scan_was_on = options.kill_orphans;
    options.hello_timeout_s = limits.hello_timeout_s;
    options.max_connections_per_uid = limits.max_connections_per_uid;
    options.kill_orphans = limits.kill_orphans;
    options.kill_orphans_grace_s = limits.kill_orphans_grace_s;
    // The scan keeps running once started (it reads nothing while nobody holds a lease).
    if (limits.kill_orphans && !scan_was_on) schedule_orphan_scan();
  }

  // ---- shutdown ----

  void begin_shutdown() {
    if (stopping) return;
    stopping = true;
    log(LogLevel::kInfo, "shutting down: " + stop_reason);
    std::error_code ignored;
    acceptor.close(ignored);
    signals.cancel(ignored);
    reload_signals.cancel(ignored);
    retry_accept.cancel();
    orphan_scan.cancel();
    const Status bye(ErrorCode::kUnavailable, stop_reason);
    std::vector<ConnPtr> all;
    for (const auto& [cid, conn] : connections) all.push_back(conn);
    reattach_tick.cancel();
    for (const auto& conn : all) {
      // Answer every waiter now; the ledger's cancellation then finds them answered. With a
      // journal they are not answered: their connections close, and their clients reattach
      // to the next daemon, which restores them in their places.
      std::vector<std::string> jobs;
      for (const auto& [job, id] : conn->waiting) {
        if (!options.journal) send(conn, encode_error(id, bye));
        jobs.push_back(job);
      }
      conn->waiting.clear();
      for (const auto& job : jobs) (void)ledger->cancel_as(job, 0);
      close_after_flush(conn);
    }
    grace.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(options.shutdown_grace_s)));
    grace.async_wait([self = shared_from_this()](std::error_code ec) {
      if (ec) return;
      std::vector<ConnPtr> left;
      for (const auto& [cid, conn] : self->connections) left.push_back(conn);
      for (const auto& conn : left) self->drop(conn);
    });
    maybe_finish_shutdown();
  }

  void maybe_finish_shutdown() {
    if (stopping && connections.empty()) grace.cancel();
  }

  void run_loop() {
    {
      MutexLock lock(mailbox->mutex);
      mailbox->io = &io;
    }
    // The journal is restored before the first connection is accepted, so that restored
    // waiters queue ahead of every new request.
    asio::post(io, [this] {
      restore();
      start_accept();
    });
    if (stop_requested.load()) {
      asio::post(io, [this] { begin_shutdown(); });
    }
    guarded([this] { io.run(); });
    {
      MutexLock lock(mailbox->mutex);
      mailbox->io = nullptr;
    }
    // Grants posted just before the mailbox closed: run them so that they are released.
    io.restart();
    guarded([this] { io.poll(); });
    // Whatever is still held through a connection (a loop stopped without a shutdown).
    std::vector<ConnPtr> left;
    for (const auto& [cid, conn] : connections) left.push_back(conn);
    for (const auto& conn : left) drop(conn);
    guarded([this] { io.poll(); });
  }

  // Runs the loop (run or poll) to its end. A handler that throws (a bug, memory exhausted)
  // is logged and the loop goes on with the other handlers: one failed request must not take
  // the daemon, and with it every client's leases and queue, down. Asio leaves the
  // io_context usable after an exception leaves run().
  template <typename Loop>
  void guarded(Loop loop) {
    for (;;) {
      try {
        loop();
        return;
      } catch (const std::exception& e) {
        log_quietly(std::string("internal error in a request handler; going on: ") + e.what());
      } catch (...) {
        log_quietly("internal error in a request handler (not a std::exception); going on");
      }
    }
  }

  // log(), for the error path: a logger that throws too is not allowed to stop the loop.
  void log_quietly(const std::string& line) const noexcept {
    try {
      log(LogLevel::kError, line);
    } catch (...) {  // NOLINT(bugprone-empty-catch): nothing is left to report it to
    }
  }

  void remove_socket() const {
    struct stat st {};
    if (::lstat(options.socket_path.c_str(), &st) == 0 && st.st_dev == socket_dev &&
        st.st_ino == socket_ino) {
      ::unlink(options.socket_path.c_str());
    }
  }
};

Server::Server(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

StatusOr<std::unique_ptr<Server>> Server::create(ServerOptions options,
                                                 std::shared_ptr<core::LocalLedger> ledger) {
  if (!ledger) return InvalidArgument("no ledger given");
  const std::string path = options.socket_path;  // a copy: options is moved below
  if (path.empty()) return InvalidArgument("no socket path given");
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return InvalidArgument("socket path '" + path + "' is " + std::to_string(path.size()) +
                           " bytes; Unix sockets allow at most " +
                           std::to_string(sizeof(sockaddr_un{}.sun_path) - 1));
  }
  gid_t gid = static_cast<gid_t>(-1);
  if (!options.socket_group.empty()) {
    const group* g = ::getgrnam(options.socket_group.c_str());
    if (g == nullptr) return InvalidArgument("no group named '" + options.socket_group + "'");
    gid = g->gr_gid;
  }
  struct stat st {};
  const bool exists = ::lstat(path.c_str(), &st) == 0;
  if (exists && !S_ISSOCK(st.st_mode)) return InvalidArgument(not_a_socket(path, st));
  // The socket's folder: created if missing (one level), then it must be safe to listen in.
  const auto slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  Status folder = check_socket_folder(path, ::geteuid());
  if (folder.code() == ErrorCode::kNotFound) {
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      return Unavailable("cannot create the socket's folder " + dir + ": " + errno_text(errno));
    }
    folder = check_socket_folder(path, ::geteuid());
  }
  if (!folder.ok()) {
    const char* xdg = std::getenv("XDG_RUNTIME_DIR");
    const bool fallback = ::geteuid() != 0 && (xdg == nullptr || *xdg == '\0') &&
                          path == default_server_socket_path();
    return Status(folder.code() == ErrorCode::kNotFound ? ErrorCode::kUnavailable : folder.code(),
                  "refusing to listen at " + path + ": " + folder.message() +
                      (fallback ? " (this is the fallback path, used when XDG_RUNTIME_DIR is "
                                  "unset: set XDG_RUNTIME_DIR, or give --socket in a folder of "
                                  "your own)"
                                : ""));
  }
  if (exists) {
    if (socket_answers(path)) {
      return Status(ErrorCode::kFailedPrecondition,
                    "a daemon is already listening at " + path +
                        "; stop it first (systemctl stop gpumgr) or choose another --socket");
    }
    // Left behind by a daemon that died: nobody answers, so it is safe to replace.
    if (::unlink(path.c_str()) != 0) {
      return Unavailable("cannot remove the stale socket " + path + ": " + errno_text(errno));
    }
  }
  auto impl = std::make_shared<Impl>();
  impl->options = std::move(options);
  impl->ledger = std::move(ledger);
  impl->watch_revocations();
  std::error_code ec;
  asio::local::stream_protocol::endpoint endpoint(path);
  impl->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl->acceptor.bind(endpoint, ec);
  if (!ec) impl->acceptor.listen(4096, ec);
  if (ec) return Unavailable("cannot listen at " + path + ": " + ec.message());
  if (::chmod(path.c_str(), impl->options.socket_mode) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return Unavailable("cannot set the mode of " + path + ": " + errno_text(err));
  }
  if (gid != static_cast<gid_t>(-1) && ::chown(path.c_str(), static_cast<uid_t>(-1), gid) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return Unavailable("cannot give " + path + " to group '" + impl->options.socket_group +
                       "': " + errno_text(err));
  }
  if (::lstat(path.c_str(), &st) == 0) {
    impl->socket_dev = st.st_dev;
    impl->socket_ino = st.st_ino;
  }
  if (impl->options.handle_signals) {
    impl->signals.add(SIGINT);
    impl->signals.add(SIGTERM);
    impl->signals.async_wait([weak = std::weak_ptr<Impl>(impl)](std::error_code e, int signo) {
      auto self = weak.lock();
      if (e || !self) return;
      self->stop_reason = std::string("the daemon is shutting down (") +
                          (signo == SIGINT ? "SIGINT" : "SIGTERM") + ")";
      self->begin_shutdown();
    });
  }
  if (impl->options.handle_signals && impl->options.on_reload) {
    impl->reload_signals.add(SIGHUP);
    impl->wait_for_reload();
  }
  if (impl->options.kill_orphans) impl->schedule_orphan_scan();
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::~Server() {
  stop();
  if (impl_->background.joinable()) {
    impl_->background.join();
  } else if (!impl_->ran.load()) {
    impl_->run_loop();  // never run: still release and close in order
  }
  impl_->remove_socket();
  // Handlers that kept the Impl alive are gone with the loop; break the accept chain.
  std::error_code ignored;
  impl_->acceptor.close(ignored);
}

void Server::run() {
  impl_->ran.store(true);
  impl_->run_loop();
}

void Server::start_background() {
  impl_->ran.store(true);
  impl_->background = std::thread([impl = impl_.get()] { impl->run_loop(); });
}

void Server::stop() {
  impl_->stop_requested.store(true);
  MutexLock lock(impl_->mailbox->mutex);
  if (impl_->mailbox->io != nullptr) {
    asio::post(*impl_->mailbox->io, [impl = impl_.get()] { impl->begin_shutdown(); });
  }
}

const std::string& Server::socket_path() const { return impl_->options.socket_path; }

std::size_t Server::connection_count() const { return impl_->connection_total.load(); }

std::uint64_t Server::holder_tree_scans() const { return impl_->tree_scans.load(); }

std::size_t raise_open_file_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &rl);
    (void)::getrlimit(RLIMIT_NOFILE, &rl);
  }
  return static_cast<std::size_t>(rl.rlim_cur);
}

}  // namespace gpumgr::daemon
