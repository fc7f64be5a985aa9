// gpumgr slurm conf [--unit GiB] [--node NAME] [--file-pattern P]: the gres.conf lines and the
// slurm.conf Gres= fragment that make Slurm schedule this node's VRAM (one shard per unit of
// what leases may hold on each GPU), read from the daemon when one answers, else from the
// devices (NVML, --simulate) as the views do.
// gpumgr slurm plugstack [--socket PATH] [--unit GiB] [--optional]: the plugstack.conf line
// that loads gpumgr_spank.so, with its path and arguments. See docs/slurm.md.
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <iostream>
#include <string>

#include "cli/commands.h"
#include "daemon/protocol.h"
#include "slurm/gres_conf.h"
#include "slurm/task_env.h"
#include "util/terminal_text.h"

namespace gpumgr::cli {
namespace {

bool exists(const std::string& path) { return ::access(path.c_str(), R_OK) == 0; }

// Where gpumgr_spank.so is: beside an installed gpumgr (BINDIR/../LIBDIR/gpumgr), else in
// this build tree, else where `cmake --install` puts it. `found` says whether it is there.
std::string plugin_path(bool* found) {
  std::vector<std::string> candidates;
  char exe[PATH_MAX] = {};
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    std::string dir(exe, static_cast<std::size_t>(n));
    dir = dir.substr(0, dir.rfind('/'));
    candidates.push_back(dir + "/../" GPUMGR_INSTALL_LIBDIR "/gpumgr/gpumgr_spank.so");
  }
#ifdef GPUMGR_SPANK_BUILD_PATH
  candidates.emplace_back(GPUMGR_SPANK_BUILD_PATH);
#endif
  candidates.emplace_back(GPUMGR_SPANK_INSTALL_PATH);
  for (const auto& c : candidates) {
    if (!exists(c)) continue;
    *found = true;
    char resolved[PATH_MAX];
    return ::realpath(c.c_str(), resolved) != nullptr ? std::string(resolved) : c;
  }
  *found = false;
  return GPUMGR_SPANK_INSTALL_PATH;
}

}  // namespace

Command setup_slurm(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    ViewOptions view;
    std::string unit = "GiB";
    std::string node;
    std::string file_pattern = "/dev/nvidia%d";
    std::string socket = daemon::kSystemSocketPath;
    bool optional = false;
  };
  auto opts = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand("slurm", "Configuration for Slurm clusters (docs/slurm.md)");
  sub->require_subcommand(1);
  CLI::App* conf = sub->add_subcommand(
      "conf",
      "Print this node's gres.conf lines and slurm.conf Gres= fragment: one shard per "
      "unit of leasable VRAM");
  add_view_options(*conf, opts->view);
  conf->add_option("--unit", opts->unit, "VRAM per shard, e.g. GiB or 512MiB")
      ->capture_default_str();
  conf->add_option("--node", opts->node, "Slurm node name: prefixes every line with NodeName=");
  conf->add_option("--file-pattern", opts->file_pattern,
                   "Each GPU's device file; %d is the device index")
      ->capture_default_str();
  CLI::App* plug = sub->add_subcommand(
      "plugstack", "Print the plugstack.conf line that loads the gpumgr SPANK plugin (--vram)");
  plug->add_option("--socket", opts->socket,
                   "The node daemon's socket; %n is replaced by the Slurm node name")
      ->capture_default_str();
  plug->add_option("--unit", opts->unit, "VRAM per shard, as for `gpumgr slurm conf`")
      ->capture_default_str();
  plug->add_flag("--optional", opts->optional,
                 "Where no daemon answers, run tasks unmanaged with a warning instead of failing");
  for (CLI::App* s : {conf, plug}) s->fallthrough();

  return {sub, [opts, conf, plug, &global]() -> int {
            auto unit = slurm::parse_shard_unit(opts->unit);
            if (!unit.ok()) {
              std::fprintf(stderr, "gpumgr slurm: --unit: %s\n",
                           terminal_safe(unit.status().message()).c_str());
              return kExitUsage;
            }
            if (plug->parsed()) {
              std::vector<std::string> args{"socket=" + opts->socket, "unit=" + opts->unit};
              if (opts->optional) args.emplace_back("optional");
              if (auto config = slurm::parse_plugin_args(args); !config.ok()) {
                std::fprintf(stderr, "gpumgr slurm plugstack: %s\n",
                             terminal_safe(config.status().message()).c_str());
                return kExitUsage;
              }
              for (const auto& a : args) {
                if (a.find_first_of(" \t\n") != std::string::npos) {
                  std::fprintf(stderr,
                               "gpumgr slurm plugstack: '%s': plugstack.conf arguments cannot "
                               "hold spaces\n",
                               terminal_safe(a).c_str());
                  return kExitUsage;
                }
              }
              bool found = false;
              const std::string path = plugin_path(&found);
              if (!found) {
                std::fprintf(stderr,
                             "gpumgr slurm plugstack: %s is not there: this gpumgr was built "
                             "without Slurm's headers (install libslurm-dev and rebuild)\n",
                             path.c_str());
              }
              std::cout << (opts->optional ? "optional " : "required ") << path;
              for (const auto& a : args) std::cout << " " << a;
              std::cout << "\n";
              return found ? kExitOk : kExitUnavailable;
            }
            (void)conf;
            slurm::GresOptions gres;
            gres.unit_bytes = *unit;
            gres.node_name = opts->node;
            gres.file_pattern = opts->file_pattern;
            int code = kExitOk;
            auto manager = open_view_manager(opts->view, global, "slurm conf", &code);
            if (!manager) return code;
            auto snap = manager->snapshot();
            if (!snap.ok()) {
              std::fprintf(stderr, "gpumgr slurm conf: %s\n",
                           terminal_safe(snap.status().message()).c_str());
              return exit_code_for(snap.status());
            }
            std::vector<slurm::GresDevice> devices;
            for (const auto& acct : snap->devices) {
              if (acct.info.kind == DeviceKind::kCpu) continue;  // Slurm's gpu gres is GPUs
              devices.push_back({acct.info.index, acct.info.uuid, acct.capacity_bytes});
            }
            if (devices.empty()) {
              std::fprintf(stderr,
                           "gpumgr slurm conf: no GPUs here (%s): nothing for Slurm to "
                           "schedule\n",
                           terminal_safe(manager->selection_note()).c_str());
              return kExitUnavailable;
            }
            auto out = slurm::make_gres_conf(devices, gres);
            if (!out.ok()) {
              std::fprintf(stderr, "gpumgr slurm conf: %s\n",
                           terminal_safe(out.status().message()).c_str());
              return kExitUsage;
            }
            std::cout << out->gres_conf << "# slurm.conf: add to this node's NodeName= line:\n# "
                      << out->node_gres << "\n";
            return kExitOk;
          }};
}

}  // namespace gpumgr::cli
