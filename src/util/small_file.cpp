#include "util/small_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace gpumgr {

std::optional<std::string> read_open_file(int fd, std::size_t max_bytes) {
  std::string out;
  char buf[4096];
  while (out.size() < max_bytes) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return std::nullopt;
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  if (out.size() > max_bytes) out.resize(max_bytes);
  return out;
}

std::optional<std::string> read_small_file(const std::string& path, std::size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  auto out = read_open_file(fd, max_bytes);
  ::close(fd);
  return out;
}

}  // namespace gpumgr
