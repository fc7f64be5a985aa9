// Server: the daemon behind `gpumgr serve`. It owns the host's one LocalLedger and serves it
// to every process on the host over a Unix stream socket (docs/protocol.md). Leases belong to
// the connection that took them: when a client closes, exits or is killed, its leases are
// released (counted as failed) and its waiting requests cancelled at once. Who a client is
// comes from the kernel (SO_PEERCRED), never from the client.
//
// Threads: one Asio event-loop thread does all the socket work (run(), or the thread of
// start_background()). Grants decided on other threads (a releasing client, the ledger's
// housekeeper) are posted onto that loop. create(), stop(), socket_path() and
// connection_count() may be called from any thread. Asio stays inside server.cpp.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "core/local_ledger.h"
#include "gpumgr/status.h"

namespace gpumgr::daemon {

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
  // Diagnostics (one line each, no newline); empty: none.
  std::function<void(const std::string&)> log;
};

class Server {
 public:
  // Checks the socket path (refusing a live daemon's socket, removing a stale one), binds
  // it, sets its mode and group. kFailedPrecondition when a daemon already answers there;
  // kInvalidArgument for a bad path or group; kUnavailable when it cannot be bound.
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

 private:
  struct Impl;
  explicit Server(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// Raises the soft limit on open files to the hard limit (a daemon serves one descriptor per
// client); returns the new soft limit.
std::size_t raise_open_file_limit();

}  // namespace gpumgr::daemon
