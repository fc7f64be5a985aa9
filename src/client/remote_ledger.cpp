// Placeholder until the daemon client lands: connecting always fails, naming the socket.
#include "gpumgr/ledger.h"

namespace gpumgr {
StatusOr<std::shared_ptr<Ledger>> connect_daemon(const std::string& socket_path) {
  return Unavailable("no daemon client in this build (socket " + socket_path + ")");
}
}  // namespace gpumgr
