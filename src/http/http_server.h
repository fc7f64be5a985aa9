// HttpServer: the daemon's read-only HTTP face: Prometheus metrics (/metrics), the JSON API
// (/api/v1/status, /api/v1/leases) and the live dashboard (/), with its assets built into
// the binary. It reads state only through the SnapshotSource it is given, so it can never
// change a lease.
//
// start() and stop() may be called from any thread; requests are served on the server's own
// threads, each of which calls the SnapshotSource (which must therefore be thread-safe).
//
// One thread accepts connections and receives requests and sends answers for all of them
// (poll); a request goes to a worker thread only once its head is complete, and the worker
// renders the answer into memory. A slow or silent client therefore holds a file descriptor
// and a few bytes, never a thread: health checks and scrapes are answered while hundreds of
// slow clients are connected (docs/http.md, "Limits").
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gpumgr/ledger.h"
#include "gpumgr/status.h"

namespace gpumgr::http {

using SnapshotSource = std::function<StatusOr<Snapshot>()>;

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 9400;  // 0: any free port (tests)
  // Binding an address other than loopback exposes job names and holders to the network:
  // refused unless this is set (--http-public).
  bool allow_public = false;
  // A connection has this long to send a whole request head: from when it connects, and
  // again after each answer on a kept-alive connection; then it is closed (with 408 Request
  // Timeout when it had begun a request).
  std::chrono::milliseconds request_timeout{5000};
  // Connections held at once. At the limit a new connection closes the one that has waited
  // longest for its request (or, if every one is being answered, is itself closed).
  std::size_t max_connections = 512;
  // Worker threads: each renders one complete request's answer at a time.
  std::size_t workers = 8;
  // Resolves a host name to numeric addresses; empty means getaddrinfo. Tests pass their own.
  std::function<StatusOr<std::vector<std::string>>(const std::string& host)> resolve;
};

class HttpServer {
 public:
  virtual ~HttpServer() = default;
  // The port actually bound (useful with port 0).
  virtual int port() const = 0;
  // Stops serving and joins the server threads; idempotent.
  virtual void stop() = 0;
};

// Resolves the host, binds and starts serving in the background. kInvalidArgument for a bad
// address, or one that is (or whose name resolves to) not loopback without allow_public;
// kUnavailable when the name cannot be resolved or the address cannot be bound (the message
// says which: the port is in use, the address is not this host's, permission).
StatusOr<std::unique_ptr<HttpServer>> start_http_server(const HttpOptions& options,
                                                        SnapshotSource source);

// Whether `host` (a name or a literal address, without brackets or port) is a loopback
// address: localhost, *.localhost, 127.0.0.0/8, ::1. Other names count as public whatever
// they resolve to; start_http_server also checks what localhost names resolve to.
bool is_loopback_host(const std::string& host);

// Parses "HOST:PORT" ("127.0.0.1:9400", "[::1]:9400", "localhost:0"). kInvalidArgument for
// malformed text, and for a non-loopback host unless allow_public (--http-public).
StatusOr<HttpOptions> parse_http_address(const std::string& text, bool allow_public);

}  // namespace gpumgr::http
