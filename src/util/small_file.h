// Reading small files (under /proc and /sys) whole, with read(2) rather than iostreams.
//
// Why not std::ifstream: a /proc file of a process that exits while it is being read fails
// with ESRCH, and libstdc++'s filebuf reports that by throwing std::ios_failure through
// istreambuf_iterator, which a status display must never do. Inside a Python process,
// libraries loaded with torch can also interpose their own copies of the C++ stream symbols.
// Callable from any thread.
#pragma once

#include <cstddef>
#include <optional>
#include <string>

namespace gpumgr {

// The file's bytes, at most max_bytes of them; nullopt when it cannot be opened or a read
// fails (the file vanished, the process behind it exited, permission was refused).
std::optional<std::string> read_small_file(const std::string& path,
                                           std::size_t max_bytes = std::size_t{1} << 20);

// The same, from a descriptor already open, read to its end (or max_bytes); the caller keeps
// and closes fd. Separate so that tests can open a /proc file before its process exits.
std::optional<std::string> read_open_file(int fd, std::size_t max_bytes = std::size_t{1} << 20);

}  // namespace gpumgr
