#include "state/state_dir.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace gpumgr::state {
namespace {

bool absolute(const char* path) { return path != nullptr && path[0] == '/'; }

std::string without_trailing_slashes(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  return path;
}

// "/a/" + "b" = "/a/b"; "/" + "b" = "/b".
std::string join(const std::string& base, const char* rel) {
  const std::string trimmed = without_trailing_slashes(base);
  return (trimmed == "/" ? "" : trimmed) + "/" + rel;
}

std::string home_dir() {
  if (const char* home = std::getenv("HOME"); absolute(home)) return home;
  // HOME unset or relative: the password database's entry.
  std::vector<char> buf(16384);
  struct passwd pw {};
  struct passwd* found = nullptr;
  if (::getpwuid_r(::geteuid(), &pw, buf.data(), buf.size(), &found) == 0 && found != nullptr &&
      absolute(found->pw_dir)) {
    return found->pw_dir;
  }
  return {};
}

Status precondition(std::string message) {
  return Status(ErrorCode::kFailedPrecondition, std::move(message));
}

}  // namespace

std::string default_state_dir_for(bool root, const char* xdg_state_home, const std::string& home) {
  if (root) return "/var/lib/gpumgr";
  if (absolute(xdg_state_home)) return join(xdg_state_home, "gpumgr");
  if (!absolute(home.c_str())) return {};
  return join(home, ".local/state/gpumgr");
}

std::string default_state_dir() {
  const bool root = ::geteuid() == 0;
  return default_state_dir_for(root, std::getenv("XDG_STATE_HOME"), root ? "" : home_dir());
}

Status prepare_state_dir(const std::string& dir) {
  if (dir.empty()) {
    return precondition("no state folder: give one with --state-dir (no home folder was found)");
  }
  const std::string target = without_trailing_slashes(dir);
  // Every prefix ending before a '/', then the folder itself: "/a", "/a/b", "/a/b/c".
  for (std::size_t pos = 1;; ++pos) {
    pos = target.find('/', pos);
    const std::string prefix = target.substr(0, pos);
    struct stat st {};
    if (::stat(prefix.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) {
        return precondition("cannot use the state folder " + target + ": " + prefix +
                            " is a file, not a folder");
      }
    } else if (errno != ENOENT) {
      return precondition("cannot use the state folder " + target + ": " + prefix + ": " +
                          std::strerror(errno));
    } else if (::mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) {
      return precondition("cannot create the state folder " + target + ": mkdir " + prefix + ": " +
                          std::strerror(errno));
    }
    if (pos == std::string::npos) break;
  }
  // A race with another creator leaves EEXIST above: check what is there now.
  struct stat st {};
  if (::stat(target.c_str(), &st) != 0) {
    return precondition("cannot use the state folder " + target + ": " + std::strerror(errno));
  }
  if (!S_ISDIR(st.st_mode)) {
    return precondition("cannot use the state folder " + target + ": " + target +
                        " is a file, not a folder");
  }
  if (::faccessat(AT_FDCWD, target.c_str(), W_OK | X_OK, AT_EACCESS) != 0) {
    return precondition("the state folder " + target + " is not writable by uid " +
                        std::to_string(::geteuid()) + " (" + std::strerror(errno) + ")");
  }
  return Status::Ok();
}

}  // namespace gpumgr::state
