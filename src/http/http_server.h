// HttpServer: the daemon's read-only HTTP face: Prometheus metrics (/metrics), the JSON API
// (/api/v1/status, /api/v1/leases) and the live dashboard (/), with its assets built into
// the binary. It reads state only through the SnapshotSource it is given, so it can never
// change a lease.
//
// start() and stop() may be called from any thread; requests are served on the server's own
// threads, each of which calls the SnapshotSource (which must therefore be thread-safe).
#pragma once

#include <functional>
#include <memory>
#include <string>

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
};

class HttpServer {
 public:
  virtual ~HttpServer() = default;
  // The port actually bound (useful with port 0).
  virtual int port() const = 0;
  // Stops serving and joins the server threads; idempotent.
  virtual void stop() = 0;
};

// Binds and starts serving in the background. kInvalidArgument for a bad or public address
// without allow_public; kUnavailable when the address cannot be bound (in use).
StatusOr<std::unique_ptr<HttpServer>> start_http_server(const HttpOptions& options,
                                                        SnapshotSource source);

// Whether `host` (a name or a literal address, without brackets or port) is a loopback
// address: localhost, 127.0.0.0/8, ::1. Other names count as public whatever they resolve to.
bool is_loopback_host(const std::string& host);

// Parses "HOST:PORT" ("127.0.0.1:9400", "[::1]:9400", "localhost:0"). kInvalidArgument for
// malformed text, and for a non-loopback host unless allow_public (--http-public).
StatusOr<HttpOptions> parse_http_address(const std::string& text, bool allow_public);

}  // namespace gpumgr::http
