#include "daemon/process_identity.h"

#include <charconv>
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

std::optional<std::array<std::uint32_t, 4>> read_process_uids(std::uint32_t pid) {
  const auto text = read_small_file("/proc/" + std::to_string(pid) + "/status", 64 * 1024);
  if (!text) return std::nullopt;
  const auto at = text->find("\nUid:");
  if (at == std::string::npos) return std::nullopt;
  std::string_view line(*text);
  line.remove_prefix(at + 5);
  line = line.substr(0, line.find('\n'));
  std::array<std::uint32_t, 4> uids{};
  std::size_t seen = 0;
  while (!line.empty()) {
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    if (line.empty()) break;
    if (seen == uids.size()) return std::nullopt;
    const auto [ptr, ec] = std::from_chars(line.data(), line.data() + line.size(), uids[seen]);
    if (ec != std::errc()) return std::nullopt;
    line.remove_prefix(static_cast<std::size_t>(ptr - line.data()));
    ++seen;
  }
  if (seen != uids.size()) return std::nullopt;
  return uids;
}

Status check_descendant(std::uint32_t pid, std::uint32_t ancestor, std::uint32_t uid) {
  const std::string who = "holder_pid " + std::to_string(pid);
  if (uid != 0) {
    // The real and effective ids must both be the client's.
    const auto uids = read_process_uids(pid);
    if (!uids) return Status(ErrorCode::kPermissionDenied, who + " is not a running process");
    const std::uint32_t real = (*uids)[0], effective = (*uids)[1];
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
