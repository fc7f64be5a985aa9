// gpumgr status [--json]: devices, leases, queue and statistics, from the daemon when one is
// configured (GPUMGR_SOCKET or --socket), else from an in-process look at the devices.
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "cli/render.h"
#include "core/snapshot_json.h"
#include "gpumgr/manager.h"
#include "util/terminal_text.h"

namespace gpumgr::cli {

int exit_code_for(const Status& status) {
  switch (status.code()) {
    case ErrorCode::kOk:
      return kExitOk;
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kNotFound:
      return kExitUsage;
    case ErrorCode::kUnavailable:
      return kExitUnavailable;
    default:
      return kExitError;
  }
}

Command setup_status(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    bool json = false;
    ViewOptions view;
  };
  auto opts = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("status", "Show devices, leases, the queue and statistics");
  sub->add_flag("--json", opts->json, "Print the documented JSON (docs/status-json.md)");
  add_view_options(*sub, opts->view);
  sub->footer(
      "Exit codes: 0 ok; 1 backend failure; 2 bad arguments; 3 no driver or daemon reachable.");
  return {sub, [opts, &global]() -> int {
            int code = kExitOk;
            auto manager = open_view_manager(opts->view, global, "status", &code);
            if (!manager) return code;
            auto snap = manager->snapshot();
            if (!snap.ok()) {
              // The message may quote what a daemon sent: no raw control characters from it.
              std::fprintf(stderr, "gpumgr status: %s\n",
                           terminal_safe(snap.status().message()).c_str());
              return exit_code_for(snap.status());
            }
            if (opts->json) {
              std::cout << to_json(snap.value()).dump(2) << "\n";
              return kExitOk;
            }
            RenderOptions ro;
            ro.color = ::isatty(STDOUT_FILENO) != 0;
            if (const char* cols = std::getenv("COLUMNS"); cols != nullptr)
              ro.width = std::atoi(cols);
            std::cout << render_status(snap.value(), ro);
            return kExitOk;
          }};
}

}  // namespace gpumgr::cli
