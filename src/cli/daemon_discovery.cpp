#include <cstdlib>

#include "cli/commands.h"
#include "daemon/protocol.h"

namespace gpumgr::cli {

void use_running_daemon(ManagerOptions& options) {
  const bool simulating = !options.simulate.empty() || std::getenv("GPUMGR_SIMULATE") != nullptr;
  if (!options.socket.empty() || std::getenv("GPUMGR_SOCKET") != nullptr || simulating) return;
  const std::string path = daemon::default_client_socket_path();
  if (daemon::socket_answers(path)) options.socket = path;
}

}  // namespace gpumgr::cli
