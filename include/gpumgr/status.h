// Status and StatusOr<T>: how every fallible gpumgr call reports an error.
//
// A Status is a code plus a human-readable message that names the problem
// ("memory_limit must be in (0, 1], got 1.5"). StatusOr<T> is a value or a
// non-OK Status. Both are plain values: any thread may create, copy and read
// them.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace gpumgr {

enum class ErrorCode {
  kOk = 0,
  kInvalidArgument,     // the caller passed something malformed or out of range
  kNotFound,            // unknown job id, device, ...
  kAlreadyExists,       // duplicate active job id
  kNeverFits,           // larger than every device's capacity: waiting cannot help
  kResourceExhausted,   // does not fit right now (non-blocking acquire)
  kTimedOut,            // a waiting acquire's deadline passed
  kCancelled,           // a waiting acquire was cancelled
  kUnavailable,         // a backend, driver or daemon cannot be reached
  kPermissionDenied,    // not the holder of the lease
  kFailedPrecondition,  // the operation does not apply in the current state
  kInternal,            // a bug
  // A lease ended without its holder releasing it: someone else released it, or its
  // daemon restarted and did not give it back (docs/daemon.md, "Restarts"). What ran under
  // it ran part of its time without the lease's protection.
  kLeaseLost,
  kQuotaExceeded,  // beyond the requester's quota for good: waiting cannot help
};

// Stable lower-case name of a code ("invalid_argument"), used in JSON and the wire protocol.
std::string_view error_code_name(ErrorCode code);
// The inverse of error_code_name; kInternal for unknown names.
ErrorCode error_code_from_name(std::string_view name);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }

  bool ok() const { return code_ == ErrorCode::kOk; }
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "invalid_argument: memory_limit must be in (0, 1], got 1.5"
  std::string to_string() const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  ErrorCode code_ = ErrorCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {ErrorCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {ErrorCode::kNotFound, std::move(m)}; }
inline Status Unavailable(std::string m) { return {ErrorCode::kUnavailable, std::move(m)}; }

template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(T&& value) : value_(std::move(value)) {}       // NOLINT(google-explicit-constructor)
  StatusOr(const T& value) : value_(value) {}             // NOLINT(google-explicit-constructor)
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    assert(!status_.ok() && "StatusOr needs a value or a non-OK status");
    if (status_.ok()) status_ = Status(ErrorCode::kInternal, "StatusOr built from an OK status");
  }

  // Holds a default-constructed value, for callers that fill it in place.
  explicit StatusOr(std::in_place_t) : value_(std::in_place) {}

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }

  T& value() & {
    assert(ok());
    return *value_;
  }
  const T& value() const& {
    assert(ok());
    return *value_;
  }
  T&& value() && {
    assert(ok());
    return std::move(*value_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace gpumgr
