// gpumgr: the command line. Each subcommand lives in its own file; this table lists them.
#include <cstdio>
#include <vector>

#include "cli/commands.h"

namespace {

// The dispatch table: to add a command, write setup_<name> in <name>_cmd.cpp and list it here.
constexpr gpumgr::cli::CommandSetup kCommands[] = {
    gpumgr::cli::setup_status, gpumgr::cli::setup_simulate, gpumgr::cli::setup_serve,
    gpumgr::cli::setup_run,    gpumgr::cli::setup_watch,    gpumgr::cli::setup_estimates,
    gpumgr::cli::setup_slurm,
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gpumgr: GPU leases, admission control and a fair queue for ML services"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "gpumgr " GPUMGR_VERSION);
  gpumgr::cli::GlobalOptions global;
  app.add_option("--simulate", global.simulate,
                 "Use simulated devices instead of hardware, e.g. 2x24GiB (as GPUMGR_SIMULATE)");
  std::vector<gpumgr::cli::Command> commands;
  for (const auto setup : kCommands) {
    commands.push_back(setup(app, global));
    // Global options (--simulate) may also follow the command: gpumgr status --simulate 2x24GiB
    commands.back().subcommand->fallthrough();
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? gpumgr::cli::kExitOk : gpumgr::cli::kExitUsage;
  }
  for (const auto& command : commands) {
    if (command.subcommand->parsed()) return command.run();
  }
  std::fprintf(stderr, "gpumgr: no command given; see gpumgr --help\n");
  return gpumgr::cli::kExitUsage;
}
