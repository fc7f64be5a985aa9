// RemoteLedger: the Ledger interface served by the host's daemon (`gpumgr serve`) over its
// Unix socket (docs/protocol.md). Its leases belong to its connection: when this process
// exits or is killed, the daemon releases them.
//
// Every method may be called from any thread, concurrently. Calls share one connection; each
// request carries an id and whichever caller is reading hands every reply to the call waiting
// for that id, so a waiting acquire never holds up other calls. When the connection drops, the
// calls in flight fail with kUnavailable and the next call connects again.
//
// A dropped connection usually means the daemon restarted (docs/daemon.md, "Restarts"): the
// next daemon restores the leases and waiters it had and keeps them for a grace period. This
// ledger then reconnects and reattaches on its own: a keeper thread watches the connections
// that leases were granted on and takes each lease back by its token; a waiting acquire takes
// its place in the queue back. What cannot be taken back is reported as "lease lost".
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <unordered_map>

#include "core/snapshot_json.h"
#include "daemon/protocol.h"
#include "gpumgr/ledger.h"
#include "util/thread_annotations.h"

namespace gpumgr {
namespace {
using daemon::Op;
using daemon::Reply;
using daemon::Request;

std::string start_hint(const std::string& path) {
  if (path == daemon::default_server_socket_path() || path == daemon::kSystemSocketPath) {
    return "start it with `gpumgr serve`";
  }
  return "start it with `gpumgr serve --socket " + path + "`";
}

using Clock = std::chrono::steady_clock;
using Deadline = std::optional<Clock::time_point>;

// Seconds from the environment variable `name` (at most a day; 0 only where `zero_ok`), or
// `fallback` when it is unset or not such a number.
double seconds_from_env(const char* name, double fallback, bool zero_ok) {
  const char* env = std::getenv(name);
  if (env == nullptr) return fallback;
  char* end = nullptr;
  const double v = std::strtod(env, &end);
  const bool ok =
      end != env && *end == '\0' && std::isfinite(v) && v <= 86400 && (zero_ok ? v >= 0 : v > 0);
  return ok ? v : fallback;
}

// How long a quick call (hello, status, release, ...) may wait for its reply: 5 s, or
// GPUMGR_CLIENT_TIMEOUT seconds. A waiting acquire may take its own timeout plus this (the
// daemon answers `timed_out` itself at its timeout; the margin is for a daemon that cannot).
// Read at every call (a getenv beside a socket round trip), so that a process may change it.
double quick_call_seconds() { return seconds_from_env("GPUMGR_CLIENT_TIMEOUT", 5.0, false); }

// How long a client keeps trying to reach a restarted daemon to take its leases and waiting
// requests back: 30 s, or GPUMGR_REATTACH_TIMEOUT seconds (0: it does not try).
double reattach_seconds() { return seconds_from_env("GPUMGR_REATTACH_TIMEOUT", 30.0, true); }

Clock::time_point after_seconds(double seconds) {
  return Clock::now() +
         std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

std::string seconds_text(double seconds) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", seconds);
  return buf;
}

// Sends all of `bytes`; never raises SIGPIPE.
bool send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// One connection to the daemon. There is no reader thread: a waiting caller reads for
// everyone (leader/follower). The caller that finds nobody reading becomes the reader, reads
// what the socket has, hands each reply to the call it answers and steps down; the others
// wait on a condition variable. A reply thus wakes its caller directly in the common case
// (one call in flight), without a thread hand-off, which keeps a round trip near the cost of
// a bare socket ping-pong.
class Connection {
 public:
  // Where one call's reply lands; guarded by the connection's mutex.
  struct Pending {
    std::optional<StatusOr<Reply>> reply;
    std::uint64_t id = 0;
    // For an acquire: its job id, so that a grant arriving after the caller gave up (its
    // deadline passed) is released rather than held unknown until the process exits.
    std::string acquire_job;
    Deadline deadline;
    double allowed_s = 0;  // how long it was allowed, for the message
  };

  // `went_away` (if given) is set when the daemon accepted and then closed the connection
  // during hello.
  static StatusOr<std::shared_ptr<Connection>> open(const std::string& path,
                                                    bool* went_away = nullptr) {
    if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
      return InvalidArgument("socket path '" + path + "' is too long for a Unix socket");
    }
    // Never talk to a socket that someone else could have put there (docs/daemon.md): our
    // job ids and commands would go to them.
    if (Status s = daemon::check_socket_folder(path, ::geteuid()); !s.ok()) {
      if (s.code() == ErrorCode::kNotFound) {
        return Unavailable("no daemon at " + path + ": " + start_hint(path));
      }
      return Status(s.code(), "refusing to connect to the daemon at " + path + ": " + s.message());
    }
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Unavailable(std::string("cannot create a socket: ") + std::strerror(errno));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      const int err = errno;
      ::close(fd);
      if (err == ENOENT || err == ECONNREFUSED) {
        // Something that is not a socket is no daemon to start there: `gpumgr serve` would
        // refuse to replace it. Say what it is.
        struct stat st {};
        if (::lstat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode)) {
          const char* what = S_ISDIR(st.st_mode)   ? "a folder"
                             : S_ISREG(st.st_mode) ? "a regular file"
                             : S_ISLNK(st.st_mode) ? "a symbolic link to something else"
                                                   : "not a socket";
          return Unavailable(path + " is " + what +
                             ", not a daemon's socket: point GPUMGR_SOCKET (or --socket) at the "
                             "socket `gpumgr serve` listens on (it prints it when it starts)");
        }
        return Unavailable("no daemon at " + path + ": " + start_hint(path));
      }
      if (err == EACCES || err == EPERM) {
        return Unavailable("cannot connect to the daemon at " + path +
                           ": permission denied; its socket admits the members of its group "
                           "(see docs/daemon.md, --socket-group)");
      }
      return Unavailable("cannot connect to the daemon at " + path + ": " + std::strerror(err));
    }
    auto conn = std::shared_ptr<Connection>(new Connection(fd, path));
    if (Status s = conn->handshake(); !s.ok()) {
      if (went_away != nullptr) *went_away = conn->closed_during_hello_;
      return s;
    }
    return conn;
  }

  // open(), tried again for a few seconds while the daemon closes the connection during
  // hello: it accepted and then went away, which is a daemon stopping for a restart (the
  // next one listens on the same socket within moments, and until then there is none).
  static StatusOr<std::shared_ptr<Connection>> open_through_restart(const std::string& path) {
    const Clock::time_point until = after_seconds(quick_call_seconds());
    bool seen_going = false;
    while (true) {
      bool went_away = false;
      auto conn = open(path, &went_away);
      seen_going = seen_going || went_away;
      // Once one went away, its successor may not listen yet: "no daemon" is worth another
      // try too, until the deadline.
      const bool again = went_away || (seen_going && !conn.ok() &&
                                       conn.status().code() == ErrorCode::kUnavailable);
      if (conn.ok() || !again || Clock::now() >= until) return conn;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  ~Connection() { ::close(fd_); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Events the daemon sends unasked (lease_ended) go here, on the reading thread, without
  // the connection's locks. Set before the first call.
  using EventHandler = std::function<void(const nlohmann::json& event)>;
  void set_event_handler(EventHandler handler) { on_event_ = std::move(handler); }

  // Reads what has arrived when nobody else is reading (the keeper's turn while no call
  // waits), so that events and late replies are handled with no call in flight.
  void read_available() {
    {
      MutexLock lock(mutex_);
      if (reading_ || dead_) return;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0) return;
      reading_ = true;
    }
    read_some(std::nullopt);  // readable: one recv, then every complete line handled
    MutexLock lock(mutex_);
    reading_ = false;
    cv_.notify_all();
  }

  // Whether the connection is known to be gone, or the daemon has closed its end.
  bool dead() {
    {
      MutexLock lock(mutex_);
      if (dead_) return true;
    }
    pollfd p{fd_, POLLRDHUP, 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  }

  // Sends a request; with `pending`, its reply will land there (see wait()).
  Status send(Request& request, const std::shared_ptr<Pending>& pending) {
    {
      MutexLock lock(mutex_);
      if (dead_) return lost_;
      request.id = next_id_++;
      if (pending) {
        pending->id = request.id;
        pending_.emplace(request.id, pending);
      }
    }
    const std::string line = daemon::encode_request(request);
    bool ok = false;
    {
      MutexLock lock(write_mutex_);
      ok = send_all(fd_, line);
    }
    // On failure the reader sees the same end of the stream and fails every pending call,
    // this one included.
    if (!ok) ::shutdown(fd_, SHUT_RDWR);
    return Status::Ok();
  }

  // Waits for `pending`'s reply until its deadline, reading for everyone while nobody else
  // does. At the deadline the call fails with kUnavailable ("did not answer within N s"): the
  // connection stays (other calls may still be answered), and a late grant for a given-up
  // acquire is released when it arrives.
  StatusOr<Reply> wait(const std::shared_ptr<Pending>& pending) {
    MutexLock lock(mutex_);
    while (true) {
      if (pending->reply) return std::move(*pending->reply);
      if (pending->deadline && Clock::now() >= *pending->deadline) {
        pending_.erase(pending->id);
        if (!pending->acquire_job.empty()) abandoned_.emplace(pending->id, pending->acquire_job);
        return Unavailable("the daemon at " + path_ + " did not answer within " +
                           seconds_text(pending->allowed_s) +
                           " s (is it stopped or overloaded? GPUMGR_CLIENT_TIMEOUT sets how long "
                           "quick calls wait)");
      }
      if (!reading_) {
        reading_ = true;
        lock.native().unlock();
        read_some(pending->deadline);
        lock.native().lock();
        reading_ = false;
        cv_.notify_all();  // a reply for someone else, or the reader's seat is free
        continue;
      }
      if (pending->deadline) {
        cv_.wait_until(lock.native(), *pending->deadline);
      } else {
        cv_.wait(lock.native());
      }
    }
  }

  StatusOr<Reply> call(Request request) {
    auto pending = std::make_shared<Pending>();
    pending->allowed_s = quick_call_seconds();
    pending->deadline = after_seconds(pending->allowed_s);
    if (Status s = send(request, pending); !s.ok()) return s;
    return wait(pending);
  }

 private:
  Connection(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

  // Whether the socket has something to read before `deadline` (none: wait as long as it
  // takes). False at the deadline.
  bool readable_before(const Deadline& deadline) {
    while (true) {
      int ms = -1;
      if (deadline) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - Clock::now()).count();
        if (left <= 0) return false;
        ms = static_cast<int>(std::min<long long>(left + 1, 60'000));
      }
      pollfd p{fd_, POLLIN, 0};
      const int n = ::poll(&p, 1, ms);
      if (n > 0) return true;
      if (n < 0 && errno != EINTR) return true;  // let recv report the error
      if (n == 0 && deadline && Clock::now() >= *deadline) return false;
    }
  }

  // Reads exactly one line before the deadline (the handshake, before any call).
  StatusOr<std::string> read_line_before(const Deadline& deadline, double allowed_s) {
    char buf[4096];
    while (true) {
      auto line = splitter_.next();
      if (!line.ok()) return line.status();
      if (line->has_value()) return std::move(**line);
      if (!readable_before(deadline)) {
        return Unavailable("the daemon at " + path_ +
                           " accepted the connection but did not answer hello within " +
                           seconds_text(allowed_s) + " s (is it stopped or overloaded?)");
      }
      const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        closed_during_hello_ = true;
        return Unavailable("the daemon at " + path_ + " closed the connection during hello");
      }
      splitter_.append(std::string_view(buf, static_cast<std::size_t>(n)));
    }
  }

  Status handshake() {
    // A daemon that accepts but never answers (stopped, wedged) must not hang us.
    const double allowed = quick_call_seconds();
    const Deadline deadline = after_seconds(allowed);
    Request hello;
    hello.op = Op::kHello;
    hello.version = daemon::kProtocolVersion;
    hello.client = "libgpumgr pid " + std::to_string(::getpid());
    hello.id = 0;
    if (!send_all(fd_, daemon::encode_request(hello))) {
      const int err = errno;
      if (err == EPIPE || err == ECONNRESET) {  // it accepted, then went away
        closed_during_hello_ = true;
        return Unavailable("the daemon at " + path_ + " closed the connection during hello (" +
                           std::strerror(err) + ")");
      }
      return Unavailable("cannot talk to the daemon at " + path_ + ": " + std::strerror(err));
    }
    auto line = read_line_before(deadline, allowed);
    if (!line.ok()) return Unavailable(line.status().message());
    auto reply = daemon::decode_reply(*line);
    if (!reply.ok()) {
      return Unavailable("the daemon at " + path_ +
                         " answered hello with garbage: " + reply.status().message());
    }
    if (!reply->status.ok()) {
      return Status(reply->status.code(),
                    "the daemon at " + path_ + " refused hello: " + reply->status.message());
    }
    return Status::Ok();
  }

  // The reader's turn: one recv (if something arrives before `deadline`), then every
  // complete reply handed to its call. Only the caller holding the reader's seat (reading_)
  // runs this, so splitter_ needs no lock.
  void read_some(const Deadline& deadline) {
    if (!readable_before(deadline)) return;
    char buf[16 * 1024];
    ssize_t n = 0;
    do {
      n = ::recv(fd_, buf, sizeof(buf), 0);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) {
      fail_all(Unavailable("lost the connection to the daemon at " + path_ +
                           " (the daemon released this connection's leases)"));
      return;
    }
    splitter_.append(std::string_view(buf, static_cast<std::size_t>(n)));
    while (true) {
      auto line = splitter_.next();
      if (!line.ok()) {
        fail_all(
            Unavailable("bad reply from the daemon at " + path_ + ": " + line.status().message()));
        return;
      }
      if (!line->has_value()) return;
      auto reply = daemon::decode_reply(**line);
      if (!reply.ok()) {
        fail_all(
            Unavailable("bad reply from the daemon at " + path_ + ": " + reply.status().message()));
        return;
      }
      if (!reply->id) {
        // An event, or an error about a request we could not have sent (nobody waits).
        if (on_event_ && reply->body.contains("event")) on_event_(reply->body);
        continue;
      }
      std::string release_job;
      {
        MutexLock lock(mutex_);
        const auto it = pending_.find(*reply->id);
        if (it != pending_.end()) {
          it->second->reply.emplace(std::move(reply).value());
          pending_.erase(it);
          continue;
        }
        // A fire-and-forget cancel's reply, or the late answer to an acquire whose caller
        // gave up: a lease granted then is given back.
        const auto gone = abandoned_.find(*reply->id);
        if (gone == abandoned_.end()) continue;
        if (reply->status.ok()) release_job = gone->second;
        abandoned_.erase(gone);
      }
      if (!release_job.empty()) {
        Request release;
        release.op = Op::kRelease;
        release.job_id = release_job;
        release.outcome = JobOutcome::kFailed;
        (void)send(release, nullptr);
      }
    }
  }

  void fail_all(const Status& why) {
    ::shutdown(fd_, SHUT_RDWR);
    MutexLock lock(mutex_);
    if (!dead_) {
      dead_ = true;
      lost_ = why;
    }
    for (auto& [id, pending] : pending_) pending->reply.emplace(why);
    pending_.clear();
  }

  const int fd_;
  const std::string path_;
  EventHandler on_event_;                                  // set before the first call
  daemon::LineSplitter splitter_{daemon::kMaxReplyBytes};  // the reader's alone
  bool closed_during_hello_ = false;  // set by handshake(), before the connection is shared
  Mutex write_mutex_;                 // one request's bytes at a time
  Mutex mutex_;
  std::condition_variable cv_;
  std::uint64_t next_id_ GUARDED_BY(mutex_) = 1;
  std::unordered_map<std::uint64_t, std::shared_ptr<Pending>> pending_ GUARDED_BY(mutex_);
  // Acquires whose callers gave up waiting, by request id: their job ids.
  std::unordered_map<std::uint64_t, std::string> abandoned_ GUARDED_BY(mutex_);
  bool reading_ GUARDED_BY(mutex_) = false;
  bool dead_ GUARDED_BY(mutex_) = false;
  Status lost_ GUARDED_BY(mutex_);
};

class RemoteLedger final : public Ledger {
 public:
  RemoteLedger(std::string path, std::shared_ptr<Connection> conn)
      : path_(std::move(path)), conn_(std::move(conn)) {
    conn_->set_event_handler(event_handler());
  }

  ~RemoteLedger() override {
    {
      MutexLock lock(mutex_);
      stopping_ = true;
    }
    keeper_cv_.notify_all();
    if (keeper_.joinable()) keeper_.join();
  }
  RemoteLedger(const RemoteLedger&) = delete;
  RemoteLedger& operator=(const RemoteLedger&) = delete;

  StatusOr<LeaseInfo> try_acquire(const LeaseRequest& request) override {
    auto conn = connection();
    if (!conn.ok()) return conn.status();
    Request r;
    r.op = Op::kTryAcquire;
    r.lease = request;
    return lease_reply((*conn)->call(std::move(r)), *conn);
  }

  StatusOr<LeaseInfo> acquire(const LeaseRequest& request, const WaitOptions& wait) override {
    if (wait.cancel && wait.cancel->cancelled()) {
      return Status(ErrorCode::kCancelled, "cancelled before it was queued");
    }
    auto conn = connection();
    if (!conn.ok()) return conn.status();
    Request r;
    r.op = Op::kAcquire;
    r.lease = request;
    r.wait = true;
    if (wait.deadline) {
      const auto left = *wait.deadline - std::chrono::steady_clock::now();
      // The protocol carries at most 1e9 s (31 years): a farther deadline is sent as that.
      r.timeout_s = std::clamp(std::chrono::duration<double>(left).count(), 0.0, 1e9);
    }
    std::optional<Clock::time_point> until;  // the whole wait's end, for a reattach
    auto pending = std::make_shared<Connection::Pending>();
    pending->acquire_job = request.job_id;
    if (r.timeout_s) {
      // The daemon answers `timed_out` at the timeout; the margin is for one that cannot.
      pending->allowed_s = *r.timeout_s + quick_call_seconds();
      pending->deadline = after_seconds(pending->allowed_s);
      until = pending->deadline;
    }
    // The connection a cancellation goes to: the one the request waits on now.
    auto waiting_on = std::make_shared<WaitingOn>();
    waiting_on->set(*conn);
    if (Status s = (*conn)->send(r, pending); !s.ok()) return s;
    std::optional<std::uint64_t> subscription;
    if (wait.cancel) {
      CancelToken token = *wait.cancel;
      // The daemon answers the waiting acquire with kCancelled; the cancel's own reply is
      // not awaited (nobody registers for it).
      subscription = token.subscribe([waiting_on, job = request.job_id] {
        if (auto c = waiting_on->get()) {
          Request cancel;
          cancel.op = Op::kCancel;
          cancel.job_id = job;
          (void)c->send(cancel, nullptr);
        }
      });
    }
    std::shared_ptr<Connection> on = *conn;
    auto reply = on->wait(pending);
    // The connection dropped while the request waited: the daemon restarted (or stopped).
    // Take the place in the queue back from the next daemon, as long as the wait may last.
    if (!reply.ok() && on->dead() && !(wait.cancel && wait.cancel->cancelled())) {
      auto again = reattach_waiter(r, until, waiting_on, reply.status());
      if (again.ok()) {
        on = again->first;
        reply = std::move(again->second);
      } else {
        reply = again.status();
      }
    }
    if (subscription) {
      CancelToken token = *wait.cancel;
      token.unsubscribe(*subscription);
    }
    return lease_reply(std::move(reply), on);
  }

  // A lease granted here is released on the connection it was granted on, naming its token.
  // When that connection is gone, so is the lease (the daemon released it when the
  // connection closed, or it restarted): "lease lost", and nothing is sent, so that a lease
  // of the same job id granted since, to anyone, is never released by a stale holder.
  Status release(std::string_view job_id, JobOutcome outcome) override {
    Request r;
    r.op = Op::kRelease;
    r.job_id = std::string(job_id);
    r.outcome = outcome;
    // A lease whose connection dropped is taken back first (the keeper may be doing it).
    reattach_dropped();
    std::shared_ptr<Connection> granted_on;
    {
      MutexLock lock(mutex_);
      const auto it = held_.find(r.job_id);
      if (it != held_.end()) {
        granted_on = it->second.connection.lock();
        r.token = it->second.token;
        const Status lost = it->second.lost;
        held_.erase(it);
        if (!lost.ok()) return lost;
        if (granted_on == nullptr || granted_on->dead()) {
          return Status(ErrorCode::kLeaseLost,
                        "lease lost: the connection to the daemon at " + path_ + " that job '" +
                            r.job_id +
                            "' was granted on closed (the daemon stopped or restarted), and its "
                            "lease ended with it");
        }
      }
    }
    auto reply = granted_on ? granted_on->call(std::move(r)) : call(std::move(r));
    return reply.ok() ? reply->status : reply.status();
  }

  Status cancel(std::string_view job_id) override {
    Request r;
    r.op = Op::kCancel;
    r.job_id = std::string(job_id);
    auto reply = call(std::move(r));
    return reply.ok() ? reply->status : reply.status();
  }

  StatusOr<bool> can_admit(std::uint64_t bytes, int gpus, int device) override {
    Request r;
    r.op = Op::kCanAdmit;
    r.lease.bytes = bytes;
    r.lease.gpus = gpus;
    r.lease.device = device;
    auto reply = call(std::move(r));
    if (!reply.ok()) return reply.status();
    if (!reply->status.ok()) return reply->status;
    const auto it = reply->body.find("admit");
    if (it == reply->body.end() || !it->is_boolean()) {
      return Status(ErrorCode::kInternal, "can_admit reply without a boolean 'admit'");
    }
    return it->get<bool>();
  }

  StatusOr<Snapshot> snapshot() override {
    Request r;
    r.op = Op::kStatus;
    auto reply = call(std::move(r));
    if (!reply.ok()) return reply.status();
    if (!reply->status.ok()) return reply->status;
    const auto it = reply->body.find("snapshot");
    if (it == reply->body.end())
      return Status(ErrorCode::kInternal, "status reply without a snapshot");
    return snapshot_from_json(*it);
  }

  StatusOr<std::vector<KindEstimate>> estimates() override {
    Request r;
    r.op = Op::kEstimates;
    auto reply = call(std::move(r));
    if (!reply.ok()) return reply.status();
    if (!reply->status.ok()) return reply->status;
    const auto it = reply->body.find("estimates");
    if (it == reply->body.end() || !it->is_array()) {
      return Status(ErrorCode::kInternal, "estimates reply without a list of estimates");
    }
    std::vector<KindEstimate> out;
    for (const auto& e : *it) {
      auto one = estimate_from_json(e);
      if (!one.ok()) return one.status();
      out.push_back(std::move(one).value());
    }
    return out;
  }

  Status forget_kind(std::string_view kind) override {
    Request r;
    r.op = Op::kForgetKind;
    r.lease.kind = std::string(kind);
    auto reply = call(std::move(r));
    return reply.ok() ? reply->status : reply.status();
  }

  void set_revoke_handler(std::function<void(const RevokeNotice&)> handler) override {
    MutexLock lock(mutex_);
    on_revoke_ = std::move(handler);
  }

  Status revoke(std::string_view job_id) override { return job_call(Op::kRevoke, job_id); }
  Status touch(std::string_view job_id) override { return job_call(Op::kTouch, job_id); }

 private:
  Status job_call(Op op, std::string_view job_id) {
    Request r;
    r.op = op;
    r.job_id = std::string(job_id);
    auto reply = call(std::move(r));
    return reply.ok() ? reply->status : reply.status();
  }

  // The live connection, connecting again when the last one dropped.
  StatusOr<std::shared_ptr<Connection>> connection() {
    MutexLock lock(mutex_);
    if (conn_ && !conn_->dead()) return conn_;
    auto fresh = Connection::open_through_restart(path_);
    if (!fresh.ok()) return fresh.status();
    conn_ = fresh.value();
    conn_->set_event_handler(event_handler());
    return conn_;
  }

  StatusOr<Reply> call(Request r) {
    auto conn = connection();
    if (!conn.ok()) return conn.status();
    return (*conn)->call(std::move(r));
  }

  // The lease of an acquire's reply, remembered with the connection it was granted on and
  // its token (see release()).
  StatusOr<LeaseInfo> lease_reply(StatusOr<Reply> reply, const std::shared_ptr<Connection>& conn) {
    if (!reply.ok()) return reply.status();
    if (!reply->status.ok()) return reply->status;
    const auto it = reply->body.find("lease");
    if (it == reply->body.end())
      return Status(ErrorCode::kInternal, "acquire reply without a lease");
    auto lease = lease_from_json(*it);
    if (!lease.ok()) return lease;
    std::string token;
    if (const auto t = it->find("token"); t != it->end() && t->is_string()) token = *t;
    MutexLock lock(mutex_);
    held_[lease->job_id] = Held{conn, std::move(token), Status::Ok()};
    if (!keeper_.joinable() && !stopping_) keeper_ = std::thread([this] { keep_leases(); });
    keeper_cv_.notify_all();
    return lease;
  }

  struct Held {
    std::weak_ptr<Connection> connection;
    std::string token;  // empty from a daemon that issues none
    Status lost;        // not OK once it could not be taken back: what release() reports
  };

  // Which connection a waiting acquire waits on (it changes when it reattaches).
  class WaitingOn {
   public:
    void set(const std::shared_ptr<Connection>& c) {
      MutexLock lock(mutex_);
      conn_ = c;
    }
    std::shared_ptr<Connection> get() {
      MutexLock lock(mutex_);
      return conn_.lock();
    }

   private:
    Mutex mutex_;
    std::weak_ptr<Connection> conn_ GUARDED_BY(mutex_);
  };

  // A fresh connection to the (restarted) daemon, trying every 100 ms until `until`.
  StatusOr<std::shared_ptr<Connection>> reconnect(Clock::time_point until) {
    Status last = Unavailable("no daemon at " + path_);
    while (true) {
      {
        MutexLock lock(mutex_);
        if (stopping_) return last;
        if (conn_ && !conn_->dead()) return conn_;
      }
      auto fresh = Connection::open_through_restart(path_);
      if (fresh.ok()) {
        MutexLock lock(mutex_);
        conn_ = fresh.value();
        conn_->set_event_handler(event_handler());
        return conn_;
      }
      last = fresh.status();
      // A daemon that refuses us (permissions, an unsafe folder) will not change its mind.
      if (last.code() != ErrorCode::kUnavailable || Clock::now() >= until) return last;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

  // A waiting acquire whose connection dropped: reconnect and take its place in the queue
  // back; the reply is the acquire's (the lease, or why not), on the new connection.
  // When the new daemon has no record of the request (it went away before the request
  // reached its journal, so nothing was granted), the request queues again, at the end.
  StatusOr<std::pair<std::shared_ptr<Connection>, StatusOr<Reply>>> reattach_waiter(
      const Request& acquire, std::optional<Clock::time_point> until,
      const std::shared_ptr<WaitingOn>& waiting_on, const Status& dropped) {
    const std::string& job = acquire.lease.job_id;
    const double window = reattach_seconds();
    Clock::time_point give_up = after_seconds(window);
    if (until) give_up = std::min(give_up, *until);
    auto conn = reconnect(give_up);
    if (!conn.ok()) {
      return Unavailable(dropped.message() + "; job '" + job +
                         "' waited, and no daemon came back within " + seconds_text(window) +
                         " s to take its place back: " + conn.status().message());
    }
    Request r;
    r.op = Op::kReattach;
    r.job_id = job;
    auto pending = std::make_shared<Connection::Pending>();
    pending->acquire_job = job;
    if (until) {
      pending->deadline = until;
      pending->allowed_s =
          std::max(0.0, std::chrono::duration<double>(*until - Clock::now()).count());
    }
    waiting_on->set(*conn);
    if (Status s = (*conn)->send(r, pending); !s.ok()) return s;
    auto reply = (*conn)->wait(pending);
    if (reply.ok() && !reply->status.ok() && reply->status.code() == ErrorCode::kNotFound) {
      Request again = acquire;
      if (until) {
        again.timeout_s = std::clamp(
            std::chrono::duration<double>(*until - Clock::now()).count() - quick_call_seconds(),
            0.0, 1e9);
      }
      auto queued = std::make_shared<Connection::Pending>();
      queued->acquire_job = job;
      queued->deadline = pending->deadline;
      queued->allowed_s = pending->allowed_s;
      if (Status s = (*conn)->send(again, queued); !s.ok()) return s;
      reply = (*conn)->wait(queued);
    }
    return std::make_pair(conn.value(), std::move(reply));
  }

  // Takes back every held lease whose connection dropped, by its token, on a fresh
  // connection; those that cannot be are marked lost. One caller at a time (the keeper, or a
  // release that found its connection dropped).
  void reattach_dropped() {
    MutexLock serial(reattach_mutex_);
    std::vector<std::pair<std::string, std::string>> dropped;  // job id, token
    {
      MutexLock lock(mutex_);
      for (const auto& [job, held] : held_) {
        if (!held.lost.ok()) continue;
        const auto c = held.connection.lock();
        if (c == nullptr || c->dead()) dropped.emplace_back(job, held.token);
      }
    }
    if (dropped.empty()) return;
    const double window = reattach_seconds();
    auto conn = reconnect(after_seconds(window));
    MutexLock lock(mutex_);
    for (const auto& [job, token] : dropped) {
      const auto it = held_.find(job);
      if (it == held_.end()) continue;
      if (!conn.ok()) {
        it->second.lost =
            Status(ErrorCode::kLeaseLost,
                   "lease lost: the connection to the daemon at " + path_ + " that job '" + job +
                       "' was granted on closed, and no daemon "
                       "came back within " +
                       seconds_text(window) + " s to take it back: " + conn.status().message());
        continue;
      }
      if (token.empty()) {
        it->second.lost =
            Status(ErrorCode::kLeaseLost,
                   "lease lost: the daemon at " + path_ + " restarted, and job '" + job +
                       "' was granted by a daemon that issued no token to take it "
                       "back with");
        continue;
      }
      Request r;
      r.op = Op::kReattach;
      r.job_id = job;
      r.token = token;
      lock.native().unlock();
      auto reply = (*conn)->call(std::move(r));
      lock.native().lock();
      const auto again = held_.find(job);
      if (again == held_.end()) continue;
      if (reply.ok() && reply->status.ok()) {
        again->second.connection = *conn;
      } else {
        again->second.lost = Status(
            ErrorCode::kLeaseLost,
            "lease lost: the daemon at " + path_ + " restarted and did not give job '" + job +
                "' back: " + (reply.ok() ? reply->status.message() : reply.status().message()));
      }
    }
  }

  // What the daemon says unasked: a lease of ours that someone else (root, another
  // process of our uid) released is lost, and release() will say who ended it.
  Connection::EventHandler event_handler() {
    return [this](const nlohmann::json& event) {
      // A lease of ours is being revoked: the holder's handler decides what to do.
      if (event.value("event", "") == "lease_revoked") {
        RevokeNotice notice;
        notice.job_id = event.value("job_id", "");
        notice.cause = event.value("cause", "");
        notice.for_job = event.value("for_job", "");
        notice.grace_s = event.value("grace_s", 0.0);
        notice.message = event.value("reason", "");
        std::function<void(const RevokeNotice&)> handler;
        {
          MutexLock lock(mutex_);
          if (held_.count(notice.job_id) == 0) return;
          handler = on_revoke_;
        }
        if (handler) handler(notice);
        return;
      }
      if (event.value("event", "") != "lease_ended") return;
      const std::string job = event.value("job_id", "");
      const std::string reason = event.value("reason", "it was ended");
      MutexLock lock(mutex_);
      const auto it = held_.find(job);
      if (it == held_.end() || !it->second.lost.ok()) return;
      it->second.lost = Status(ErrorCode::kLeaseLost, "lease lost: job '" + job + "' was " +
                                                          reason + " while this process held it");
    };
  }

  // The keeper thread: while leases are held, reads what the daemon says unasked (events)
  // when no call is reading, and notices within a quarter second that a lease's connection
  // dropped, to take the lease back before the restarted daemon's grace ends.
  void keep_leases() {
    MutexLock lock(mutex_);
    while (!stopping_) {
      keeper_cv_.wait_for(lock.native(), std::chrono::milliseconds(250));
      if (stopping_) break;
      std::vector<std::shared_ptr<Connection>> watched;
      bool any_dropped = false;
      for (const auto& [job, held] : held_) {
        if (!held.lost.ok()) continue;
        const auto c = held.connection.lock();
        if (c == nullptr) {
          any_dropped = true;
        } else if (std::find(watched.begin(), watched.end(), c) == watched.end()) {
          watched.push_back(c);
        }
      }
      lock.native().unlock();
      for (const auto& c : watched) {
        c->read_available();
        any_dropped = any_dropped || c->dead();
      }
      watched.clear();
      if (any_dropped) reattach_dropped();
      lock.native().lock();
    }
  }

  const std::string path_;
  Mutex reattach_mutex_;  // one reattach at a time; taken before mutex_
  Mutex mutex_;
  std::condition_variable keeper_cv_;
  std::shared_ptr<Connection> conn_ GUARDED_BY(mutex_);
  // Leases granted through this ledger, by job id.
  std::unordered_map<std::string, Held> held_ GUARDED_BY(mutex_);
  bool stopping_ GUARDED_BY(mutex_) = false;
  std::function<void(const RevokeNotice&)> on_revoke_ GUARDED_BY(mutex_);
  std::thread keeper_;  // started at the first grant
};

}  // namespace

StatusOr<std::shared_ptr<Ledger>> connect_daemon(const std::string& socket_path) {
  if (socket_path.empty()) return InvalidArgument("no daemon socket path given");
  auto conn = Connection::open_through_restart(socket_path);
  if (!conn.ok()) return conn.status();
  return std::shared_ptr<Ledger>(
      std::make_shared<RemoteLedger>(socket_path, std::move(conn).value()));
}

}  // namespace gpumgr
