#include "daemon/server.h"

#include <grp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <asio.hpp>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <deque>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "core/snapshot_json.h"
#include "daemon/protocol.h"
#include "util/small_file.h"
#include "util/thread_annotations.h"

namespace gpumgr::daemon {
namespace {
using nlohmann::json;
using Socket = asio::local::stream_protocol::socket;

std::string errno_text(int err) { return std::strerror(err); }

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
    explicit Connection(asio::io_context& io) : socket(io) {}
    std::uint64_t cid = 0;
    Socket socket;
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
  };
  using ConnPtr = std::shared_ptr<Connection>;

  ServerOptions options;
  std::shared_ptr<core::LocalLedger> ledger;
  asio::io_context io{1};
  asio::local::stream_protocol::acceptor acceptor{io};
  asio::signal_set signals{io};
  asio::steady_timer retry_accept{io};
  asio::steady_timer grace{io};
  std::shared_ptr<Mailbox> mailbox = std::make_shared<Mailbox>();
  dev_t socket_dev = 0;
  ino_t socket_ino = 0;

  // Loop-thread state.
  std::unordered_map<std::uint64_t, ConnPtr> connections;
  std::unordered_map<std::string, std::uint64_t> owner;  // job id -> connection, held or waiting
  std::uint64_t next_cid = 1;
  bool stopping = false;
  std::string stop_reason = "the daemon is shutting down";

  std::atomic<std::size_t> connection_total{0};
  std::atomic<bool> stop_requested{false};
  std::thread background;
  std::atomic<bool> ran{false};

  void log(const std::string& line) const {
    if (options.log) options.log(line);
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
      log("accept failed: " + ec.message());
      retry_accept.expires_after(std::chrono::milliseconds(100));
      retry_accept.async_wait([self = shared_from_this()](std::error_code e) {
        if (!e) self->start_accept();
      });
      return;
    }
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(conn->socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      log("SO_PEERCRED failed: " + errno_text(errno) + "; connection refused");
      std::error_code ignored;
      conn->socket.close(ignored);
      start_accept();
      return;
    }
    conn->peer =
        core::Holder{static_cast<std::uint32_t>(cred.pid), static_cast<std::uint32_t>(cred.uid)};
    conn->cid = next_cid++;
    connections.emplace(conn->cid, conn);
    connection_total.store(connections.size());
    start_read(conn);
    start_accept();
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
      drop(conn);
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
      log("client pid " + std::to_string(conn->peer.pid) +
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
      drop(conn);
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

  void drop(const ConnPtr& conn) {
    if (connections.erase(conn->cid) == 0) return;  // already dropped
    connection_total.store(connections.size());
    conn->closing = true;
    std::error_code ignored;
    conn->socket.shutdown(Socket::shutdown_both, ignored);
    conn->socket.close(ignored);
    // Waiting requests: cancelled. A grant already on its way here finds the connection gone
    // and releases the lease (on_acquire_done).
    std::vector<std::string> waiting;
    for (const auto& [job, id] : conn->waiting) waiting.push_back(job);
    for (const auto& job : waiting) (void)ledger->cancel_as(job, 0);
    // Held leases: released, counted as failed (their holder died or quit holding them).
    for (const auto& job : conn->held) {
      (void)ledger->release_as(job, JobOutcome::kFailed, 0);
      erase_owner(job, conn->cid);
    }
    if (!conn->held.empty() || !waiting.empty()) {
      log("client pid " + std::to_string(conn->peer.pid) + " left: released " +
          std::to_string(conn->held.size()) + " lease(s), cancelled " +
          std::to_string(waiting.size()) + " waiting request(s)");
    }
    conn->held.clear();
    maybe_finish_shutdown();
  }

  void erase_owner(const std::string& job, std::uint64_t cid) {
    const auto it = owner.find(job);
    if (it != owner.end() && it->second == cid) owner.erase(it);
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
        Status s = ledger->release_as(r.job_id, r.outcome, conn->peer.uid);
        if (s.ok()) forget_held(r.job_id);
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
      case Op::kHello:
        return;
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
    send(conn, encode_ok(r.id, {{"version", kProtocolVersion},
                                {"server", "gpumgr"},
                                {"daemon_pid", ::getpid()},
                                {"peer", {{"pid", conn->peer.pid}, {"uid", conn->peer.uid}}},
                                {"max_request_bytes", kMaxRequestBytes}}));
  }

  // A release by another connection of the same uid (or root) also ends this ownership.
  void forget_held(const std::string& job) {
    const auto it = owner.find(job);
    if (it == owner.end()) return;
    if (const auto c = connections.find(it->second); c != connections.end()) {
      c->second->held.erase(job);
    }
    owner.erase(it);
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
    if (!r.wait) {
      auto lease = ledger->try_acquire_as(r.lease, conn->peer);
      if (!lease.ok()) {
        send(conn, encode_error(r.id, lease.status()));
        return;
      }
      owner[r.lease.job_id] = conn->cid;
      conn->held.insert(r.lease.job_id);
      send(conn, encode_ok(r.id, {{"lease", to_json(lease.value())}}));
      return;
    }
    std::optional<core::LocalLedger::SteadyTime> deadline;
    if (r.timeout_s) {
      deadline = std::chrono::steady_clock::now() +
                 std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                     std::chrono::duration<double>(*r.timeout_s));
    }
    owner[r.lease.job_id] = conn->cid;
    conn->waiting[r.lease.job_id] = r.id;
    std::weak_ptr<Impl> weak = shared_from_this();
    std::weak_ptr<core::LocalLedger> weak_ledger = ledger;
    ledger->acquire_async(r.lease, conn->peer, deadline,
                          [weak, weak_ledger, mailbox = mailbox, cid = conn->cid, id = r.id,
                           job = r.lease.job_id](StatusOr<LeaseInfo> result) {
                            {
                              MutexLock lock(mailbox->mutex);
                              if (mailbox->io != nullptr) {
                                asio::post(*mailbox->io,
                                           [weak, cid, id, job, result = std::move(result)] {
                                             if (auto self = weak.lock())
                                               self->on_acquire_done(cid, id, job, result);
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
                          });
  }

  void on_acquire_done(std::uint64_t cid, std::uint64_t id, const std::string& job,
                       const StatusOr<LeaseInfo>& result) {
    const auto it = connections.find(cid);
    ConnPtr conn = it == connections.end() ? nullptr : it->second;
    const bool answered = conn == nullptr || conn->waiting.erase(job) == 0;
    if (result.ok()) {
      if (answered || conn->closing) {
        // Its holder left (or shutdown already answered it): give it straight back.
        // This grant, not a later lease of the same id.
        (void)ledger->release_as(job, JobOutcome::kFailed, std::nullopt, nullptr, result->lease_id);
        erase_owner(job, cid);
        return;
      }
      conn->held.insert(job);
      send(conn, encode_ok(id, {{"lease", to_json(result.value())}}));
      return;
    }
    erase_owner(job, cid);
    if (!answered) send(conn, encode_error(id, result.status()));
    maybe_finish_shutdown();
  }

  // ---- shutdown ----

  void begin_shutdown() {
    if (stopping) return;
    stopping = true;
    log("shutting down: " + stop_reason);
    std::error_code ignored;
    acceptor.close(ignored);
    signals.cancel(ignored);
    retry_accept.cancel();
    const Status bye(ErrorCode::kUnavailable, stop_reason);
    std::vector<ConnPtr> all;
    for (const auto& [cid, conn] : connections) all.push_back(conn);
    for (const auto& conn : all) {
      // Answer every waiter now; the ledger's cancellation then finds them answered.
      std::vector<std::string> jobs;
      for (const auto& [job, id] : conn->waiting) {
        send(conn, encode_error(id, bye));
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
      log(line);
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
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return InvalidArgument(path + " exists and is not a socket; refusing to replace it");
    }
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
  if (const auto slash = path.rfind('/'); slash != std::string::npos && slash > 0) {
    const std::string dir = path.substr(0, slash);
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      return Unavailable("cannot create the socket's folder " + dir + ": " + errno_text(errno));
    }
  }
  auto impl = std::make_shared<Impl>();
  impl->options = std::move(options);
  impl->ledger = std::move(ledger);
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
  impl->start_accept();
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
