// Server: the daemon behind `gpumgr serve`. It owns the host's one LocalLedger and serves it
// to every process on the host over a Unix stream socket (docs/protocol.md). Leases belong to
// the connection that took them: when a client closes, exits or is killed, its leases are
// released (counted as failed) and its waiting requests cancelled at once. Who a client is
// comes from the kernel (SO_PEERCRED), never from the client.
//
// With a lease journal (ServerOptions::journal), a restart of the daemon loses nothing: every
// grant and every waiter is written to the journal before it is answered; a daemon that stops
// leaves them there, and the next one re-adopts the leases whose holders still run and
// restores the waiters in their order, for a grace period in which their clients reconnect
// and reattach (docs/daemon.md, "Restarts").
//
// Threads: one Asio event-loop thread does all the socket work (run(), or the thread of
// start_background()). Grants decided on other threads (a releasing client, the ledger's
// housekeeper) are posted onto that loop. create(), stop(), socket_path() and
// connection_count() may be called from any thread. Asio stays inside server.cpp.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "core/local_ledger.h"
#include "gpumgr/status.h"
#include "state/lease_journal.h"

namespace gpumgr::daemon {

// How much a diagnostic line matters: `gpumgr serve --quiet` prints only kWarning and kError.
enum class LogLevel {
  kInfo,     // the ordinary course: a client left, shutting down
  kWarning,  // the daemon acted against a client: dropped it, refused it, signalled its processes
  kError,    // something failed: accepting, a request handler
};

// The options a reload (SIGHUP) may change while the server runs; the other options of
// ServerOptions need a restart. New values apply to what happens next: connections accepted
// after, holders that leave after. A connection already waiting for its hello keeps its timer.
struct ClientLimits {
  double hello_timeout_s = 5.0;
  std::size_t max_connections_per_uid = 256;
  bool kill_orphans = false;
  double kill_orphans_grace_s = 5.0;
};

struct ServerOptions {
  std::string socket_path;
  // Group that owns the socket (--socket-group): its members may use the GPUs. Empty: the
  // daemon's own group.
  std::string socket_group;
  unsigned socket_mode = 0660;
  // Stop on SIGINT/SIGTERM (the daemon process). Tests leave it off.
  bool handle_signals = false;
  // A client that stops reading its replies is disconnected (and its leases released) once
  // this many reply bytes are queued for it.
  std::size_t max_reply_backlog = 16 * 1024 * 1024;
  // How long shutdown waits for replies to drain before closing connections anyway.
  double shutdown_grace_s = 2.0;
  // A connection that has not completed hello this many seconds after connecting gets an
  // error line (timed_out) and is closed: idle connections must not hold descriptors. 0: none.
  double hello_timeout_s = 5.0;
  // Connections one uid may hold open at once (root's are not limited); the next one gets an
  // error line (resource_exhausted, naming the limit) and is closed. 0: no limit.
  std::size_t max_connections_per_uid = 256;
  // When a holder's connection closes (the client exited or was killed) while it still holds
  // leases, SIGTERM the holder's process tree (the holder and its descendants of the
  // holder's uid, never pid 1 or the daemon), and SIGKILL what is left after the grace.
  bool kill_orphans = false;
  double kill_orphans_grace_s = 5.0;
  // How often the process trees of the holders are read (--kill-orphans needs them from
  // before the holder died: its children are then no longer its children).
  double orphan_scan_interval_s = 0.5;
  // Where grants and waiters are kept across restarts; null: a restart ends every lease.
  // The server is its only user while it runs.
  std::shared_ptr<state::LeaseJournal> journal;
  // How long leases and waiters restored from the journal are kept for their clients to
  // reattach; then those not taken back are released (as failed) or cancelled.
  double reattach_grace_s = 30.0;
  // Diagnostics (one line each, no newline); empty: none.
  std::function<void(LogLevel, const std::string&)> log;
  // SIGHUP (`systemctl reload`), with handle_signals: runs on the loop thread at each one and
  // returns the new client limits, or nullopt to keep the running ones (a refused file).
  // Empty: SIGHUP is not handled.
  std::function<std::optional<ClientLimits>()> on_reload;
  // Admission beyond the ledger's rules (quotas): runs on the loop thread for each acquire
  // and try_acquire before the ledger sees it; a non-OK status is the reply. Empty: none.
  std::function<Status(const LeaseRequest&, const core::Holder&)> admit;
};

class Server {
 public:
  // Checks the socket path (refusing a path that is not a socket, a live daemon's socket, and
  // a folder that is not safe: check_socket_folder in protocol.h; removing a stale socket),
  // creates its folder if missing (one level), binds it, sets its mode and group.
  // kFailedPrecondition when a daemon already answers there; kInvalidArgument for a bad path
  // or group; kPermissionDenied for an unsafe folder or another user's socket; kUnavailable
  // when it cannot be bound.
  static StatusOr<std::unique_ptr<Server>> create(ServerOptions options,
                                                  std::shared_ptr<core::LocalLedger> ledger);
  // Stops (if running), releases every lease still held through it and removes the socket.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Runs the event loop on the calling thread until stop() or a handled signal; waiters are
  // answered with kUnavailable ("the daemon is shutting down") before it returns.
  void run();
  // Runs the loop on a thread of its own (tests, benchmarks); ~Server joins it.
  void start_background();
  // Stops accepting and begins shutdown; idempotent; any thread.
  void stop();

  const std::string& socket_path() const;
  // Open client connections (for tests and diagnostics).
  std::size_t connection_count() const;
  // How many times the process trees of lease holders were read for --kill-orphans (a scan
  // runs only while someone holds a lease): tests wait for one instead of sleeping. Any thread.
  std::uint64_t holder_tree_scans() const;

 private:
  struct Impl;
  explicit Server(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// Raises the soft limit on open files to the hard limit (a daemon serves one descriptor per
// client); returns the new soft limit.
std::size_t raise_open_file_limit();

}  // namespace gpumgr::daemon
