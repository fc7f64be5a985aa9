#include "gpumgr/status.h"

#include <array>

namespace gpumgr {
namespace {
struct CodeName {
  ErrorCode code;
  std::string_view name;
};
constexpr std::array<CodeName, 14> kNames{{
    {ErrorCode::kOk, "ok"},
    {ErrorCode::kInvalidArgument, "invalid_argument"},
    {ErrorCode::kNotFound, "not_found"},
    {ErrorCode::kAlreadyExists, "already_exists"},
    {ErrorCode::kNeverFits, "never_fits"},
    {ErrorCode::kResourceExhausted, "resource_exhausted"},
    {ErrorCode::kTimedOut, "timed_out"},
    {ErrorCode::kCancelled, "cancelled"},
    {ErrorCode::kUnavailable, "unavailable"},
    {ErrorCode::kPermissionDenied, "permission_denied"},
    {ErrorCode::kFailedPrecondition, "failed_precondition"},
    {ErrorCode::kInternal, "internal"},
    {ErrorCode::kLeaseLost, "lease_lost"},
    {ErrorCode::kQuotaExceeded, "quota_exceeded"},
}};
}  // namespace

std::string_view error_code_name(ErrorCode code) {
  for (const auto& entry : kNames) {
    if (entry.code == code) return entry.name;
  }
  return "internal";
}

ErrorCode error_code_from_name(std::string_view name) {
  for (const auto& entry : kNames) {
    if (entry.name == name) return entry.code;
  }
  return ErrorCode::kInternal;
}

std::string Status::to_string() const {
  if (ok()) return "ok";
  std::string out(error_code_name(code_));
  out += ": ";
  out += message_;
  return out;
}

}  // namespace gpumgr
