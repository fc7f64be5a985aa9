#include "daemon/protocol.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace gpumgr::daemon {
namespace {
using nlohmann::json;

constexpr std::pair<Op, std::string_view> kOps[] = {
    {Op::kHello, "hello"},
    {Op::kAcquire, "acquire"},
    {Op::kTryAcquire, "try_acquire"},
    {Op::kRelease, "release"},
    {Op::kCancel, "cancel"},
    {Op::kStatus, "status"},
    {Op::kCanAdmit, "can_admit"},
    {Op::kPing, "ping"},
    {Op::kEstimates, "estimates"},
    {Op::kForgetKind, "forget_kind"},
    {Op::kReattach, "reattach"},
    {Op::kRevoke, "revoke"},
    {Op::kTouch, "touch"},
};

// Never throws: invalid UTF-8 (which the parser already refuses) is replaced, not fatal.
std::string dump_line(const json& j) {
  std::string out = j.dump(-1, ' ', false, json::error_handler_t::replace);
  out.push_back('\n');
  return out;
}

std::string type_of(const json& j) { return j.type_name(); }

// Field readers: each returns the value, its default when absent (and optional), or an
// error naming the field and what was wrong with it.
StatusOr<std::string> get_string(const json& obj, const char* key, bool required,
                                 std::size_t max_len, std::string fallback = {}) {
  const auto it = obj.find(key);
  if (it == obj.end() || (!required && it->is_null())) {
    if (required) return InvalidArgument(std::string("missing field '") + key + "'");
    return fallback;
  }
  if (!it->is_string()) {
    return InvalidArgument(std::string("field '") + key + "' must be a string, got " +
                           type_of(*it));
  }
  const auto& s = it->get_ref<const std::string&>();
  if (s.size() > max_len) {
    return InvalidArgument(std::string("field '") + key + "' is " + std::to_string(s.size()) +
                           " bytes; the limit is " + std::to_string(max_len));
  }
  return s;
}

StatusOr<std::int64_t> get_int(const json& obj, const char* key, bool required,
                               std::int64_t fallback, std::int64_t lo, std::int64_t hi) {
  const auto it = obj.find(key);
  if (it == obj.end() || (!required && it->is_null())) {
    if (required) return InvalidArgument(std::string("missing field '") + key + "'");
    return fallback;
  }
  std::int64_t v = 0;
  if (it->is_number_unsigned()) {
    const auto u = it->get<std::uint64_t>();
    if (u > static_cast<std::uint64_t>(hi)) {
      return InvalidArgument(std::string("field '") + key + "' is out of range [" +
                             std::to_string(lo) + ", " + std::to_string(hi) + "]: " + it->dump());
    }
    v = static_cast<std::int64_t>(u);
  } else if (it->is_number_integer()) {
    v = it->get<std::int64_t>();
  } else {
    return InvalidArgument(std::string("field '") + key + "' must be an integer, got " +
                           type_of(*it) + " " + it->dump());
  }
  if (v < lo || v > hi) {
    return InvalidArgument(std::string("field '") + key + "' is out of range [" +
                           std::to_string(lo) + ", " + std::to_string(hi) + "]: " + it->dump());
  }
  return v;
}

// A list of device indices ([0, 2]); absent or null: empty. At most 1024 entries, each in
// [0, 1024] (the device field's range); the scheduler checks that they exist.
StatusOr<std::vector<int>> get_device_list(const json& obj, const char* key) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::vector<int>{};
  if (!it->is_array()) {
    return InvalidArgument(std::string("field '") + key +
                           "' must be a list of device indices, got " + type_of(*it));
  }
  if (it->size() > 1024) {
    return InvalidArgument(std::string("field '") + key + "' has " + std::to_string(it->size()) +
                           " entries; at most 1024 are allowed");
  }
  std::vector<int> out;
  for (const json& e : *it) {
    auto d = get_int(json{{key, e}}, key, true, 0, 0, 1024);
    if (!d.ok()) return d.status();
    out.push_back(static_cast<int>(*d));
  }
  return out;
}

StatusOr<std::uint64_t> get_bytes(const json& obj, const char* key = "bytes",
                                  bool required = true) {
  const auto it = obj.find(key);
  if (it == obj.end() || (!required && it->is_null())) {
    if (required) return InvalidArgument(std::string("missing field '") + key + "'");
    return std::uint64_t{0};
  }
  if (it->is_number_unsigned()) return it->get<std::uint64_t>();
  if (it->is_number_integer()) {
    return InvalidArgument(std::string("field '") + key + "' must be a positive integer, got " +
                           it->dump());
  }
  return InvalidArgument(std::string("field '") + key + "' must be an integer, got " +
                         type_of(*it) + " " + it->dump());
}

// A job kind: a non-empty string of at most kMaxJobIdBytes without control characters.
StatusOr<std::string> get_kind(const json& obj, bool required) {
  auto kind = get_string(obj, "kind", required, kMaxJobIdBytes);
  if (!kind.ok()) return kind.status();
  if (obj.contains("kind") && !obj.at("kind").is_null() && kind->empty()) {
    return InvalidArgument("field 'kind' must not be empty");
  }
  for (const char c : *kind) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return InvalidArgument("field 'kind' must not contain control characters");
    }
  }
  return kind;
}

StatusOr<bool> get_bool(const json& obj, const char* key, bool fallback) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return InvalidArgument(std::string("field '") + key + "' must be true or false, got " +
                           type_of(*it));
  }
  return it->get<bool>();
}

constexpr std::int64_t kIntMax = std::numeric_limits<int>::max();
constexpr std::int64_t kIntMin = std::numeric_limits<int>::min();

Status decode_fields(const json& j, Request& r) {
  switch (r.op) {
    case Op::kHello: {
      auto version = get_int(j, "version", true, 0, 0, kIntMax);
      if (!version.ok()) return version.status();
      r.version = static_cast<int>(*version);
      auto client = get_string(j, "client", false, kMaxClientNameBytes);
      if (!client.ok()) return client.status();
      r.client = std::move(client).value();
      return Status::Ok();
    }
    case Op::kAcquire:
    case Op::kTryAcquire: {
      auto job = get_string(j, "job_id", true, kMaxJobIdBytes);
      if (!job.ok()) return job.status();
      if (job->empty()) return InvalidArgument("field 'job_id' must not be empty");
      r.lease.job_id = std::move(job).value();
      auto kind = get_kind(j, false);
      if (!kind.ok()) return kind.status();
      r.lease.kind = std::move(kind).value();
      // Without a kind a size is required; with one, 0 or none asks for its estimate.
      auto bytes = get_bytes(j, "bytes", r.lease.kind.empty());
      if (!bytes.ok()) return bytes.status();
      if (*bytes == 0 && r.lease.kind.empty()) {
        return InvalidArgument("field 'bytes' must be positive, got 0");
      }
      r.lease.bytes = *bytes;
      auto default_bytes = get_bytes(j, "default_bytes", false);
      if (!default_bytes.ok()) return default_bytes.status();
      r.lease.default_bytes = *default_bytes;
      auto gpus = get_int(j, "gpus", false, 1, 1, 1024);
      if (!gpus.ok()) return gpus.status();
      r.lease.gpus = static_cast<int>(*gpus);
      auto priority = get_int(j, "priority", false, 0, kIntMin, kIntMax);
      if (!priority.ok()) return priority.status();
      r.lease.priority = static_cast<int>(*priority);
      auto device = get_int(j, "device", false, -1, -1, 1024);
      if (!device.ok()) return device.status();
      r.lease.device = static_cast<int>(*device);
      auto allowed = get_device_list(j, "allowed_devices");
      if (!allowed.ok()) return allowed.status();
      r.lease.allowed_devices = std::move(allowed).value();
      auto holder = get_int(j, "holder_pid", false, 0, 0, kIntMax);
      if (!holder.ok()) return holder.status();
      r.lease.holder_pid = static_cast<std::uint32_t>(*holder);
      auto command = get_string(j, "command", false, kMaxCommandBytes);
      if (!command.ok()) return command.status();
      r.lease.command = std::move(command).value();
      auto preemptible = get_bool(j, "preemptible", false);
      if (!preemptible.ok()) return preemptible.status();
      r.lease.preemptible = *preemptible;
      auto resident = get_string(j, "resident", false, kMaxJobIdBytes);
      if (!resident.ok()) return resident.status();
      if (j.contains("resident") && !j.at("resident").is_null() && resident->empty()) {
        return InvalidArgument("field 'resident' must not be empty");
      }
      r.lease.resident = std::move(resident).value();
      auto beside = get_string(j, "beside_resident", false, kMaxJobIdBytes);
      if (!beside.ok()) return beside.status();
      if (j.contains("beside_resident") && !j.at("beside_resident").is_null() && beside->empty()) {
        return InvalidArgument("field 'beside_resident' must not be empty");
      }
      r.lease.beside_resident = std::move(beside).value();
      if (const auto it = j.find("revoke_grace_s"); it != j.end() && !it->is_null()) {
        if (!it->is_number()) {
          return InvalidArgument("field 'revoke_grace_s' must be a number of seconds, got " +
                                 type_of(*it));
        }
        const double g = it->get<double>();
        if (!std::isfinite(g) || g < 0 || g > 86400) {
          return InvalidArgument("field 'revoke_grace_s' must be in [0, 86400] seconds, got " +
                                 it->dump());
        }
        r.lease.revoke_grace_s = g;
      }
      auto wait = get_bool(j, "wait", r.op == Op::kAcquire);
      if (!wait.ok()) return wait.status();
      r.wait = *wait && r.op == Op::kAcquire;
      if (const auto it = j.find("timeout_s"); it != j.end() && !it->is_null()) {
        if (!it->is_number()) {
          return InvalidArgument("field 'timeout_s' must be a number of seconds, got " +
                                 type_of(*it));
        }
        const double t = it->get<double>();
        if (!std::isfinite(t) || t < 0 || t > 1e9) {
          return InvalidArgument("field 'timeout_s' must be in [0, 1e9] seconds, got " +
                                 it->dump());
        }
        r.timeout_s = t;
      }
      return Status::Ok();
    }
    case Op::kRelease:
    case Op::kCancel:
    case Op::kReattach:
    case Op::kRevoke:
    case Op::kTouch: {
      auto job = get_string(j, "job_id", true, kMaxJobIdBytes);
      if (!job.ok()) return job.status();
      if (job->empty()) return InvalidArgument("field 'job_id' must not be empty");
      r.job_id = std::move(job).value();
      if (r.op == Op::kReattach) {
        auto token = get_string(j, "token", false, kMaxTokenBytes);
        if (!token.ok()) return token.status();
        r.token = std::move(token).value();
      }
      if (r.op == Op::kRelease) {
        auto token = get_string(j, "token", false, kMaxTokenBytes);
        if (!token.ok()) return token.status();
        r.token = std::move(token).value();
        auto outcome = get_string(j, "outcome", false, 32, "succeeded");
        if (!outcome.ok()) return outcome.status();
        if (*outcome == "succeeded") {
          r.outcome = JobOutcome::kSucceeded;
        } else if (*outcome == "failed") {
          r.outcome = JobOutcome::kFailed;
        } else {
          return InvalidArgument("field 'outcome' must be \"succeeded\" or \"failed\", got \"" +
                                 *outcome + "\"");
        }
      }
      return Status::Ok();
    }
    case Op::kCanAdmit: {
      auto bytes = get_bytes(j);
      if (!bytes.ok()) return bytes.status();
      r.lease.bytes = *bytes;
      auto gpus = get_int(j, "gpus", false, 1, 1, 1024);
      if (!gpus.ok()) return gpus.status();
      r.lease.gpus = static_cast<int>(*gpus);
      auto device = get_int(j, "device", false, -1, -1, 1024);
      if (!device.ok()) return device.status();
      r.lease.device = static_cast<int>(*device);
      return Status::Ok();
    }
    case Op::kForgetKind: {
      auto kind = get_kind(j, true);
      if (!kind.ok()) return kind.status();
      r.lease.kind = std::move(kind).value();
      return Status::Ok();
    }
    case Op::kStatus:
    case Op::kPing:
    case Op::kEstimates:
      return Status::Ok();
  }
  return Status(ErrorCode::kInternal, "unhandled operation");
}

}  // namespace

std::string_view op_name(Op op) {
  for (const auto& [o, name] : kOps) {
    if (o == op) return name;
  }
  return "?";
}

StatusOr<Request> decode_request(std::string_view line, std::optional<std::uint64_t>* id_out) {
  if (id_out != nullptr) id_out->reset();
  if (line.size() > kMaxRequestBytes) {
    return InvalidArgument("request is " + std::to_string(line.size()) + " bytes; the limit is " +
                           std::to_string(kMaxRequestBytes));
  }
  json j = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument("request is not valid JSON");
  if (!j.is_object()) {
    return InvalidArgument(std::string("request must be a JSON object, got ") + j.type_name());
  }
  Request r;
  const auto id = j.find("id");
  if (id == j.end()) return InvalidArgument("missing field 'id'");
  if (!id->is_number_unsigned()) {
    return InvalidArgument("field 'id' must be a non-negative integer, got " + id->dump());
  }
  r.id = id->get<std::uint64_t>();
  if (id_out != nullptr) *id_out = r.id;
  const auto op = j.find("op");
  if (op == j.end()) return InvalidArgument("missing field 'op'");
  if (!op->is_string()) {
    return InvalidArgument(std::string("field 'op' must be a string, got ") + op->type_name());
  }
  const auto& name = op->get_ref<const std::string&>();
  bool known = false;
  for (const auto& [o, n] : kOps) {
    if (n == name) {
      r.op = o;
      known = true;
    }
  }
  if (!known) {
    return InvalidArgument("unknown operation '" + name.substr(0, 64) +
                           "'; known: hello, acquire, try_acquire, release, cancel, status, "
                           "can_admit, ping, estimates, forget_kind, reattach, revoke, touch");
  }
  if (Status s = decode_fields(j, r); !s.ok()) {
    return Status(s.code(), std::string(op_name(r.op)) + ": " + s.message());
  }
  return r;
}

std::string encode_request(const Request& r) {
  json j = {{"id", r.id}, {"op", std::string(op_name(r.op))}};
  switch (r.op) {
    case Op::kHello:
      j["version"] = r.version;
      if (!r.client.empty()) j["client"] = r.client;
      break;
    case Op::kAcquire:
    case Op::kTryAcquire:
      j["job_id"] = r.lease.job_id;
      j["bytes"] = r.lease.bytes;
      j["gpus"] = r.lease.gpus;
      j["priority"] = r.lease.priority;
      j["device"] = r.lease.device;
      if (!r.lease.command.empty()) j["command"] = r.lease.command;
      if (!r.lease.kind.empty()) j["kind"] = r.lease.kind;
      if (r.lease.default_bytes != 0) j["default_bytes"] = r.lease.default_bytes;
      if (!r.lease.allowed_devices.empty()) j["allowed_devices"] = r.lease.allowed_devices;
      if (r.lease.holder_pid != 0) j["holder_pid"] = r.lease.holder_pid;
      if (r.lease.preemptible) j["preemptible"] = true;
      if (!r.lease.resident.empty()) j["resident"] = r.lease.resident;
      if (!r.lease.beside_resident.empty()) j["beside_resident"] = r.lease.beside_resident;
      if (r.lease.revoke_grace_s) j["revoke_grace_s"] = *r.lease.revoke_grace_s;
      if (r.op == Op::kAcquire) {
        j["wait"] = r.wait;
        if (r.timeout_s) j["timeout_s"] = *r.timeout_s;
      }
      break;
    case Op::kRelease:
      j["job_id"] = r.job_id;
      j["outcome"] = r.outcome == JobOutcome::kSucceeded ? "succeeded" : "failed";
      if (!r.token.empty()) j["token"] = r.token;
      break;
    case Op::kCancel:
    case Op::kRevoke:
    case Op::kTouch:
      j["job_id"] = r.job_id;
      break;
    case Op::kReattach:
      j["job_id"] = r.job_id;
      if (!r.token.empty()) j["token"] = r.token;
      break;
    case Op::kCanAdmit:
      j["bytes"] = r.lease.bytes;
      j["gpus"] = r.lease.gpus;
      j["device"] = r.lease.device;
      break;
    case Op::kForgetKind:
      j["kind"] = r.lease.kind;
      break;
    case Op::kStatus:
    case Op::kPing:
    case Op::kEstimates:
      break;
  }
  return dump_line(j);
}

std::string encode_ok(std::uint64_t id, json body) {
  if (!body.is_object()) body = json::object();
  body["id"] = id;
  body["ok"] = true;
  return dump_line(body);
}

std::string encode_error(std::optional<std::uint64_t> id, const Status& status) {
  json j = {
      {"id", id ? json(*id) : json(nullptr)},
      {"ok", false},
      {"error",
       {{"code", std::string(error_code_name(status.code()))}, {"message", status.message()}}}};
  return dump_line(j);
}

std::string encode_event(std::string_view name, json body) {
  body["id"] = nullptr;
  body["ok"] = true;
  body["event"] = std::string(name);
  return dump_line(body);
}

StatusOr<Reply> decode_reply(std::string_view line) {
  if (line.size() > kMaxReplyBytes) {
    return InvalidArgument("reply is " + std::to_string(line.size()) + " bytes; the limit is " +
                           std::to_string(kMaxReplyBytes));
  }
  json j = json::parse(line.begin(), line.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgument("reply is not a JSON object");
  Reply r;
  const auto id = j.find("id");
  if (id == j.end()) return InvalidArgument("reply has no 'id'");
  if (id->is_number_unsigned()) {
    r.id = id->get<std::uint64_t>();
  } else if (!id->is_null()) {
    return InvalidArgument("reply 'id' must be an integer or null");
  }
  const auto ok = j.find("ok");
  if (ok == j.end() || !ok->is_boolean()) return InvalidArgument("reply has no boolean 'ok'");
  if (!ok->get<bool>()) {
    const auto err = j.find("error");
    if (err == j.end() || !err->is_object()) return InvalidArgument("error reply has no 'error'");
    auto code = get_string(*err, "code", true, 64);
    auto message = get_string(*err, "message", true, kMaxReplyBytes);
    if (!code.ok()) return code.status();
    if (!message.ok()) return message.status();
    ErrorCode c = error_code_from_name(*code);
    if (c == ErrorCode::kOk) c = ErrorCode::kInternal;
    r.status = Status(c, std::move(message).value());
  }
  r.body = std::move(j);
  return r;
}

std::string default_server_socket_path() {
  if (::geteuid() == 0) return kSystemSocketPath;
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    return std::string(xdg) + "/gpumgr.sock";
  }
  return "/tmp/gpumgr-" + std::to_string(::geteuid()) + "/gpumgr.sock";
}

namespace {

std::string octal_mode(mode_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

std::string not_by(uid_t owner) {
  return owner == 0 ? "not by root" : "not by you (uid " + std::to_string(owner) + ") or root";
}

// One component of the socket's path (a folder, or a symbolic link on the way to one).
Status check_path_component(const std::string& path, uid_t owner, bool* is_link) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return Status(ErrorCode::kNotFound, path + " does not exist");
    return Status(ErrorCode::kPermissionDenied,
                  "cannot check " + path + ": " + std::string(std::strerror(err)));
  }
  const bool trusted = st.st_uid == owner || st.st_uid == 0;
  const std::string uid = std::to_string(st.st_uid);
  if (S_ISLNK(st.st_mode)) {
    *is_link = true;
    if (trusted) return Status::Ok();
    return Status(ErrorCode::kPermissionDenied,
                  path + " is a symbolic link owned by uid " + uid + ", " + not_by(owner) +
                      ": that user could point it at a folder of theirs and receive every "
                      "request meant for the daemon; use a path without it");
  }
  if (!S_ISDIR(st.st_mode)) return InvalidArgument(path + " is not a folder");
  if (!trusted) {
    return Status(ErrorCode::kPermissionDenied,
                  path + " is owned by uid " + uid + ", " + not_by(owner) +
                      ": that user could replace the socket and receive every request meant "
                      "for the daemon (job ids, commands); remove it (as root or uid " +
                      uid + ") or use a folder of your own");
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0) {
    const char* who = (st.st_mode & S_IWOTH) != 0 ? "others" : "its group";
    return Status(ErrorCode::kPermissionDenied,
                  path + " is writable by " + who + " (mode " + octal_mode(st.st_mode) +
                      ") and not sticky: they could replace the socket and receive every "
                      "request meant for the daemon; chmod go-w " +
                      path + " (or chmod +t), or use a folder of your own");
  }
  return Status::Ok();
}

// `folder` (absolute) and every folder above it, from the root down.
Status check_folder_chain(const std::string& folder, uid_t owner, bool* saw_link) {
  bool is_link = false;
  if (Status s = check_path_component("/", owner, &is_link); !s.ok()) return s;
  std::string prefix;
  std::size_t pos = 0;
  while (pos < folder.size()) {
    const std::size_t next = folder.find('/', pos);
    const std::size_t end = next == std::string::npos ? folder.size() : next;
    if (end > pos) {
      prefix += "/" + folder.substr(pos, end - pos);
      is_link = false;
      if (Status s = check_path_component(prefix, owner, &is_link); !s.ok()) return s;
      if (is_link) *saw_link = true;
    }
    pos = end + 1;
  }
  return Status::Ok();
}

}  // namespace

Status check_socket_folder(const std::string& socket_path, uid_t owner) {
  if (socket_path.empty()) return InvalidArgument("no socket path given");
  std::string path = socket_path;
  if (path.front() != '/') {
    char cwd[4096];
    if (::getcwd(cwd, sizeof(cwd)) == nullptr) {
      return Status(ErrorCode::kPermissionDenied,
                    "cannot check the folder of the relative socket path " + socket_path +
                        ": the current folder is unknown (" + std::strerror(errno) + ")");
    }
    path = std::string(cwd) + "/" + path;
  }
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const std::size_t slash = path.rfind('/');
  const std::string folder = slash == 0 ? "/" : path.substr(0, slash);
  bool saw_link = false;
  if (Status s = check_folder_chain(folder, owner, &saw_link); !s.ok()) return s;
  if (saw_link) {
    // Where the links lead must pass too (the folders above the target included).
    char resolved[PATH_MAX];
    if (::realpath(folder.c_str(), resolved) == nullptr) {
      const int err = errno;
      if (err == ENOENT) return Status(ErrorCode::kNotFound, folder + " does not exist");
      return Status(ErrorCode::kPermissionDenied,
                    "cannot resolve " + folder + ": " + std::string(std::strerror(err)));
    }
    bool ignored = false;
    if (Status s = check_folder_chain(resolved, owner, &ignored); !s.ok()) return s;
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && st.st_uid != owner && st.st_uid != 0) {
    const std::string uid = std::to_string(st.st_uid);
    return Status(ErrorCode::kPermissionDenied,
                  path + " is owned by uid " + uid + ", " + not_by(owner) +
                      ": another user put it there, and would receive every request meant for "
                      "the daemon; remove it (as root or uid " +
                      uid + ") or use another path");
  }
  return Status::Ok();
}

bool socket_answers(const std::string& path) {
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) return false;
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

std::string default_client_socket_path() {
  const auto is_socket = [](const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
  };
  const std::string own = default_server_socket_path();
  if (is_socket(own)) return own;
  if (is_socket(kSystemSocketPath)) return kSystemSocketPath;
  return own;
}

StatusOr<std::optional<std::string>> LineSplitter::next() {
  const std::size_t nl = buffer_.find('\n', start_);
  if (nl == std::string::npos) {
    if (buffered() > max_line_) {
      return InvalidArgument("message longer than " + std::to_string(max_line_) +
                             " bytes without a newline");
    }
    // Compact so that the buffer never holds much more than one partial line.
    if (start_ > 0) {
      buffer_.erase(0, start_);
      start_ = 0;
    }
    return std::optional<std::string>();
  }
  if (nl - start_ > max_line_) {
    return InvalidArgument("message of " + std::to_string(nl - start_) + " bytes; the limit is " +
                           std::to_string(max_line_));
  }
  std::string line = buffer_.substr(start_, nl - start_);
  start_ = nl + 1;
  if (start_ == buffer_.size()) {
    buffer_.clear();
    start_ = 0;
  }
  return std::optional<std::string>(std::move(line));
}

}  // namespace gpumgr::daemon
