// The gpumgr subcommands. Each lives in its own file and registers its options on a CLI11
// subcommand; main.cpp holds the dispatch table. Commands run on the main thread.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

#include "gpumgr/manager.h"

namespace gpumgr::cli {

// Options every command accepts.
struct GlobalOptions {
  std::string simulate;  // --simulate SPEC: what GPUMGR_SIMULATE does
};

// A command adds its subcommand to `app` and returns it with the function that runs it once
// parsed; that function returns the process exit code.
struct Command {
  CLI::App* subcommand = nullptr;
  std::function<int()> run;
};
using CommandSetup = Command (*)(CLI::App& app, const GlobalOptions& global);

Command setup_status(CLI::App& app, const GlobalOptions& global);
Command setup_simulate(CLI::App& app, const GlobalOptions& global);
Command setup_serve(CLI::App& app, const GlobalOptions& global);
Command setup_run(CLI::App& app, const GlobalOptions& global);
Command setup_watch(CLI::App& app, const GlobalOptions& global);
Command setup_estimates(CLI::App& app, const GlobalOptions& global);
Command setup_slurm(CLI::App& app, const GlobalOptions& global);

// Points `options` at the host's daemon when one answers at the default socket path, unless
// a socket (option or GPUMGR_SOCKET) or simulated devices were asked for: the views
// (status, watch) then show the daemon's leases and queue rather than an empty in-process
// ledger.
void use_running_daemon(ManagerOptions& options);

// The options of the viewing commands (status, watch).
struct ViewOptions {
  std::string device = "auto";
  std::string socket;
  double memory_limit = 0.8;
  int max_concurrent_jobs = 3;
};
void add_view_options(CLI::App& sub, ViewOptions& view);
// The manager a view reads: the daemon's (an explicit socket, GPUMGR_SOCKET, or one answering
// at the default path), else an in-process look at the devices. On failure prints the error
// as "gpumgr COMMAND: ...", sets `exit_code` and returns null.
std::unique_ptr<Manager> open_view_manager(const ViewOptions& view, const GlobalOptions& global,
                                           const char* command, int* exit_code);
// The exit code for a failed status (kExitUsage for bad input, kExitUnavailable, ...).
int exit_code_for(const Status& status);

// Exit codes shared by every command (docs/cli.md).
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;        // a runtime failure (backend, daemon, I/O)
inline constexpr int kExitUsage = 2;        // bad command line or bad input
inline constexpr int kExitUnavailable = 3;  // no daemon / no driver where one was required

}  // namespace gpumgr::cli
