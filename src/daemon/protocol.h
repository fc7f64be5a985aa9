// The daemon's wire protocol (docs/protocol.md), version 1: newline-delimited JSON over a
// Unix stream socket. One JSON object per line in each direction; every request carries an
// "id" that its reply echoes, so that a client may have several requests in flight on one
// connection (a waiting acquire does not hold up the others).
//
// This file is the codec only: pure functions from bytes to typed messages and back, so that
// the server, the client and the fuzz target (fuzz/protocol_fuzz.cpp) run the same checks.
// Every function may be called from any thread.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "gpumgr/ledger.h"
#include "gpumgr/status.h"

namespace gpumgr::daemon {

inline constexpr int kProtocolVersion = 1;
// The largest request line, without its newline. Larger requests are refused and the
// connection closed: nothing legitimate comes near it (a request is a few hundred bytes).
inline constexpr std::size_t kMaxRequestBytes = 64 * 1024;
// Replies can be larger (a status reply lists every lease and waiter); clients refuse more.
inline constexpr std::size_t kMaxReplyBytes = 64 * 1024 * 1024;
// Bounds on free-text fields, so that one client cannot bloat every status reply.
inline constexpr std::size_t kMaxJobIdBytes = 256;
inline constexpr std::size_t kMaxCommandBytes = 4096;
inline constexpr std::size_t kMaxClientNameBytes = 256;
inline constexpr std::size_t kMaxTokenBytes = 64;

enum class Op {
  kHello,
  kAcquire,
  kTryAcquire,
  kRelease,
  kCancel,
  kStatus,
  kCanAdmit,
  kPing,
  kEstimates,   // the history of job kinds
  kForgetKind,  // forget one kind's history
  kReattach,    // after a daemon restart: take back a lease (by its token) or a queue place
  kRevoke,      // revoke a revocable lease now (docs/scheduling.md, "Revocable leases")
  kTouch,       // a resident lease was used now (least recently used ones are revoked first)
};
std::string_view op_name(Op op);

// A decoded request. Only the fields of its operation are meaningful.
struct Request {
  std::uint64_t id = 0;
  Op op = Op::kPing;
  // hello
  int version = 0;
  std::string client;
  // acquire, try_acquire (lease.job_id, bytes, gpus, priority, device, command, kind,
  // default_bytes, preemptible, resident, revoke_grace_s), can_admit (lease.bytes, gpus, device),
  // forget_kind (lease.kind)
  LeaseRequest lease;
  bool wait = true;                 // acquire: false makes it a try_acquire
  std::optional<double> timeout_s;  // acquire: none waits until granted or cancelled
  // release, cancel, reattach, revoke, touch
  std::string job_id;
  JobOutcome outcome = JobOutcome::kSucceeded;
  // release: the token the grant carried; when given, only the lease it names is released
  // (a lease of the same job id granted later, or by a restarted daemon, is not).
  // reattach: the token of the lease taken back; empty to take back a waiting request.
  std::string token;
};

// Decodes one request line (without its newline). On failure the Status names the problem
// (kInvalidArgument) and, when the line carried a usable "id", *id_out is set so that the
// error reply can echo it. Unknown fields are ignored (forward compatibility); unknown
// operations, missing fields and wrong types are errors.
StatusOr<Request> decode_request(std::string_view line,
                                 std::optional<std::uint64_t>* id_out = nullptr);

// Encodes a request as one line with its trailing newline (the client side).
std::string encode_request(const Request& request);

// Replies. `body` holds the operation's fields ({"lease": ...}, {"snapshot": ...}); "id" and
// "ok" are added. An error reply's id is null when the request's id could not be read.
std::string encode_ok(std::uint64_t id, nlohmann::json body = nlohmann::json::object());
std::string encode_error(std::optional<std::uint64_t> id, const Status& status);
// An event the daemon sends unasked (docs/protocol.md, "Events"): a reply-shaped line with a
// null id, {"id": null, "ok": true, "event": NAME, ...body}, which clients that do not know
// it skip as they skip every reply with a null id.
std::string encode_event(std::string_view name, nlohmann::json body);

// A decoded reply (the client side).
struct Reply {
  std::optional<std::uint64_t> id;  // empty: the daemon could not read the request's id
  Status status;                    // OK, or the daemon's error
  nlohmann::json body;              // the whole reply object
};
StatusOr<Reply> decode_reply(std::string_view line);

// Where `gpumgr serve` listens by default: /run/gpumgr/gpumgr.sock as root, else
// $XDG_RUNTIME_DIR/gpumgr.sock (/tmp/gpumgr-<uid>/gpumgr.sock without XDG_RUNTIME_DIR).
std::string default_server_socket_path();
// Where clients look when GPUMGR_SOCKET is unset: this user's default path if a socket is
// there, else the system daemon's /run/gpumgr/gpumgr.sock if one is there, else this
// user's default path (which the "no daemon" error then names).
std::string default_client_socket_path();
inline constexpr const char* kSystemSocketPath = "/run/gpumgr/gpumgr.sock";
// Whether the folder of `socket_path` is safe to listen in or to connect through, for a
// process of uid `owner`: whoever can replace the socket receives every client's job ids and
// commands and answers them (the hijack of the fallback /tmp/gpumgr-<uid>/). The rule, as
// OpenSSH's StrictModes and systemd's: the socket's folder and every folder above it are
// owned by `owner` or root and not writable by their group or others unless sticky (as /tmp:
// then only an entry's owner may remove or rename it); a symbolic link on the way is owned by
// `owner` or root, and the folders it leads to pass the same rule; the socket itself, where
// it exists, is owned by `owner` or root. Relative paths are taken from the current folder.
// Returns OK; kPermissionDenied naming the first thing that fails and why ("/tmp/gpumgr-1000
// is owned by uid 1001, not by you (uid 1000) or root: ..."); kNotFound when the folder (or
// one above it) does not exist (nothing to connect to; the daemon creates it); kInvalidArgument
// for an empty path or a component that is not a folder. Only reads (lstat, realpath).
// The daemon passes its euid; a client passes its own euid before connecting, so that a root
// daemon's /run/gpumgr/ (root's) passes and another user's folder does not.
Status check_socket_folder(const std::string& socket_path, uid_t owner);
// Whether something accepts connections at `path` (a live daemon, not a stale socket).
bool socket_answers(const std::string& path);

// Splits a byte stream into lines, enforcing a maximum line length. Not thread-safe: one
// per connection, used by the connection's reader.
class LineSplitter {
 public:
  explicit LineSplitter(std::size_t max_line) : max_line_(max_line) {}
  void append(std::string_view bytes) { buffer_.append(bytes); }
  // The next complete line (without its newline); empty optional when none is complete.
  // kInvalidArgument, once the buffered partial line is longer than the limit: the stream
  // cannot be resynchronised and the connection should be closed.
  StatusOr<std::optional<std::string>> next();
  std::size_t buffered() const { return buffer_.size() - start_; }

 private:
  std::size_t max_line_;
  std::string buffer_;
  std::size_t start_ = 0;
};

}  // namespace gpumgr::daemon
