#include "daemon/process_identity.h"

#include <charconv>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "util/small_file.h"

namespace gpumgr::daemon {

std::optional<ProcessStat> read_process_stat(std::uint32_t pid) {
  const auto text = read_small_file("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!text) return std::nullopt;
  // "pid (comm) state ppid ... starttime ...": comm may hold spaces and parentheses.
  const auto paren = text->rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::vector<std::string_view> fields;
  std::string_view rest(*text);
  rest.remove_prefix(paren + 1);
  while (!rest.empty() && fields.size() < 20) {
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    const auto end = rest.find(' ');
    fields.push_back(rest.substr(0, end));
    if (end == std::string_view::npos) break;
    rest.remove_prefix(end);
  }
  if (fields.size() < 20) return std::nullopt;  // [0] state (field 3) ... [19] starttime (22)
  ProcessStat st;
  const auto number = [](std::string_view f, auto& out) {
    return std::from_chars(f.data(), f.data() + f.size(), out).ec == std::errc();
  };
  if (!number(fields[1], st.ppid) || !number(fields[19], st.start)) return std::nullopt;
  st.running = fields[0] != "Z" && fields[0] != "X" && fields[0] != "x";
  return st;
}

Status check_descendant(std::uint32_t pid, std::uint32_t ancestor, std::uint32_t uid) {
  const std::string who = "holder_pid " + std::to_string(pid);
  if (uid != 0) {
    // "Uid:\treal\teffective\tsaved\tfs": the real and effective ids must both be the client's.
    const auto status = read_small_file("/proc/" + std::to_string(pid) + "/status", 16384);
    const auto at = status ? status->find("\nUid:") : std::string::npos;
    if (at == std::string::npos) {
      return Status(ErrorCode::kPermissionDenied, who + " is not a running process");
    }
    std::uint32_t real = 0, effective = 0;
    const char* p = status->c_str() + at + 5;
    char* end = nullptr;
    real = static_cast<std::uint32_t>(std::strtoul(p, &end, 10));
    effective = static_cast<std::uint32_t>(std::strtoul(end, nullptr, 10));
    if (real != uid || effective != uid) {
      return Status(ErrorCode::kPermissionDenied,
                    who + " runs as uid " + std::to_string(real == uid ? effective : real) +
                        ", not as the client's uid " + std::to_string(uid));
    }
  }
  std::uint32_t at = pid;
  for (int generation = 0; generation < 256; ++generation) {
    if (at == ancestor) return Status::Ok();
    const auto st = read_process_stat(at);
    if (!st && generation == 0) {
      return Status(ErrorCode::kPermissionDenied, who + " is not a running process");
    }
    if (!st) break;
    if (!st->running) {
      return Status(ErrorCode::kPermissionDenied, who + " is not a running process");
    }
    if (st->ppid == 0 || st->ppid == at) break;
    at = st->ppid;
  }
  return Status(ErrorCode::kPermissionDenied, who + " is neither the client (pid " +
                                                  std::to_string(ancestor) +
                                                  ") nor a process it started");
}

const std::string& current_boot_id() {
  static const std::string id = [] {
    std::string text =
        read_small_file("/proc/sys/kernel/random/boot_id", 128).value_or(std::string());
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    return text;
  }();
  return id;
}

state::ProcessIdentity identity_of(std::uint32_t pid, std::uint32_t uid) {
  state::ProcessIdentity who;
  who.pid = pid;
  who.uid = uid;
  who.boot_id = current_boot_id();
  if (const auto st = read_process_stat(pid); st && st->running) who.start_ticks = st->start;
  return who;
}

bool still_runs(const state::ProcessIdentity& who) {
  if (who.start_ticks == 0 || who.pid == 0 || who.boot_id != current_boot_id()) return false;
  const auto st = read_process_stat(who.pid);
  return st && st->running && st->start == who.start_ticks;
}

}  // namespace gpumgr::daemon
