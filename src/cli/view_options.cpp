// What the viewing commands (status, watch) share: their options and how they open a manager.
#include <cstdio>
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

void add_view_options(CLI::App& sub, ViewOptions& view) {
  sub.add_option("--device", view.device, "Device selector: auto, cuda, cuda:N or cpu");
  sub.add_option("--socket", view.socket, "Ask the daemon at this socket (as GPUMGR_SOCKET)");
  sub.add_option("--memory-limit", view.memory_limit,
                 "Share of each device leases may hold, for an in-process look (0 < F <= 1)");
  sub.add_option("--max-concurrent-jobs", view.max_concurrent_jobs,
                 "Concurrency limit, for an in-process look");
}

std::unique_ptr<Manager> open_view_manager(const ViewOptions& view, const GlobalOptions& global,
                                           const char* command, int* exit_code) {
  ManagerOptions mo;
  mo.device = view.device;
  mo.simulate = global.simulate;
  mo.socket = view.socket;
  mo.memory_limit = view.memory_limit;
  mo.max_concurrent_jobs = view.max_concurrent_jobs;
  use_running_daemon(mo);
  auto manager = Manager::create(mo);
  if (!manager.ok()) {
    std::fprintf(stderr, "gpumgr %s: %s\n", command, manager.status().message().c_str());
    *exit_code = exit_code_for(manager.status());
    return nullptr;
  }
  return std::move(manager).value();
}

}  // namespace gpumgr::cli
