// gpumgr serve: the per-host daemon. It owns the host's GPU budget (one LocalLedger) and
// serves it over a Unix socket (docs/protocol.md) to every process on the host, and
// read-only over HTTP (metrics, JSON API, dashboard). Runs the event loop on the main thread
// until SIGINT or SIGTERM; see docs/daemon.md. Its settings are the defaults, then the
// configuration file (src/config, docs/config.md), then the flags given; SIGHUP reloads the
// file on the loop thread.
#include <unistd.h>

#include <array>
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "config/config_file.h"
#include "config/serve_settings.h"
#include "core/local_ledger.h"
#include "core/quota.h"
#include "daemon/protocol.h"
#include "daemon/server.h"
#include "gpumgr/backends.h"
#include "gpumgr/units.h"
#include "http/http_server.h"
#include "state/lease_journal.h"
#include "state/state_dir.h"

namespace gpumgr::cli {

namespace {

// What a reload needs: where the settings come from and what runs now. Touched only on the
// daemon's loop thread (the reload) after the start.
struct ReloadState {
  config::SettingsSources sources;
  config::ServeSettings running;
  std::string history_path;
  std::shared_ptr<core::LocalLedger> ledger;
  std::shared_ptr<std::atomic<bool>> quiet;
  core::QuotaConfig quotas;
  std::uint64_t host_capacity = 0;  // what a quota's share ("50%") is of
};

// The leases' capacity of the host: the sum over its devices (memory_limit applied).
std::uint64_t host_capacity(core::LocalLedger& ledger) {
  auto snap = ledger.snapshot();
  std::uint64_t total = 0;
  if (snap.ok()) {
    for (const auto& d : snap->devices) total += d.capacity_bytes;
  }
  return total;
}

// A quota refusal at admission (a request that can never fit, a priority above the limit).
Status admit(const ReloadState& state, const LeaseRequest& request, const core::Holder& holder) {
  if (state.quotas.empty()) return Status::Ok();
  std::vector<std::uint32_t> gids;
  if (!state.quotas.groups.empty()) gids = core::groups_of(holder.uid);
  return core::check_quota_admission(state.quotas, request, holder.uid, gids, state.host_capacity);
}

daemon::ClientLimits client_limits(const config::ServeSettings& s) {
  daemon::ClientLimits limits;
  limits.hello_timeout_s = s.hello_timeout_s;
  limits.max_connections_per_uid = static_cast<std::size_t>(s.max_connections_per_uid);
  limits.kill_orphans = s.kill_orphans;
  limits.kill_orphans_grace_s = s.kill_orphans_grace_s;
  return limits;
}

void print_line(const std::string& line) {
  std::fprintf(stderr, "gpumgr serve: %s\n", line.c_str());
}

// SIGHUP: reads the file again and applies what may change while the daemon runs. An invalid
// file changes nothing; a changed restart-only key is reported and keeps its value.
std::optional<daemon::ClientLimits> reload(ReloadState& state) {
  const bool quiet = state.quiet->load();
  auto wanted = config::resolve_settings(state.sources);
  if (!wanted.ok()) {
    print_line("reload refused, the running configuration stays: " + wanted.status().message());
    return std::nullopt;
  }
  config::ReloadPlan plan = config::plan_reload(state.running, wanted->settings);
  for (const std::string& line : plan.kept) print_line("reload: " + line);
  LedgerConfig ledger_config = config::to_ledger_config(plan.apply);
  ledger_config.history_path = state.history_path;
  if (Status s = state.ledger->reconfigure(ledger_config); !s.ok()) {
    print_line("reload refused, the running configuration stays: " + s.message());
    return std::nullopt;
  }
  state.running = plan.apply;
  state.quiet->store(plan.apply.quiet);
  state.host_capacity = host_capacity(*state.ledger);
  if (!(wanted->quotas == state.quotas)) {
    plan.changed.push_back("quotas: " + std::to_string(wanted->quotas.users.size()) + " user, " +
                           std::to_string(wanted->quotas.groups.size()) + " group table(s)" +
                           (wanted->quotas.default_rule ? " and a default" : ", no default"));
    state.quotas = wanted->quotas;
  }
  // Always, so that group members the system's database changed since are counted anew.
  (void)state.ledger->set_quotas(state.quotas);
  if (!quiet || !plan.apply.quiet) {
    std::string changes;
    for (const std::string& c : plan.changed) changes += (changes.empty() ? "" : "; ") + c;
    const std::string from = wanted->from_file ? state.sources.config_path
                                               : "defaults (no " + state.sources.config_path + ")";
    print_line("reloaded " + from + ": " + (changes.empty() ? "no changes" : changes));
  }
  return client_limits(plan.apply);
}

}  // namespace

Command setup_serve(CLI::App& app, const GlobalOptions& global) {
  using config::Field;
  struct Options {
    config::ServeSettings flags;  // what the command line says (defaults where not given)
    std::array<CLI::Option*, config::kFieldCount> given{};
    CLI::Option* no_http = nullptr;
    std::string config_path;
    bool check_config = false;
  };
  auto opts = std::make_shared<Options>();
  config::ServeSettings& f = opts->flags;
  auto bind = [&](Field field, CLI::Option* option) {
    opts->given[config::index_of(field)] = option;
    return option;
  };
  CLI::App* sub =
      app.add_subcommand("serve", "Run the daemon: one GPU budget for every process on this host");
  sub->add_option("--config", opts->config_path,
                  "Configuration file (default: " + std::string(config::kDefaultConfigPath) +
                      ", if it exists); the options given here override it. See docs/config.md");
  sub->add_flag("--check-config", opts->check_config,
                "Check the configuration file (and these options) and exit: 0 valid, 2 invalid");
  bind(Field::kSocket, sub->add_option("--socket", f.socket,
                                       "Unix socket to listen on (default: " +
                                           daemon::default_server_socket_path() + ")"));
  bind(Field::kSocketGroup,
       sub->add_option("--socket-group", f.socket_group,
                       "Group that owns the socket (mode 0660): its members may take leases"));
  bind(Field::kHttp,
       sub->add_option("--http", f.http, "HTTP address for metrics, JSON API and dashboard")
           ->capture_default_str());
  bind(
      Field::kHttpPublic,
      sub->add_flag("--http-public", f.http_public,
                    "Allow --http to bind a non-loopback address (exposes job names and holders)"));
  opts->no_http = sub->add_flag("--no-http", f.no_http, "Serve no HTTP");
  bind(Field::kMaxConcurrentJobs, sub->add_option("--max-concurrent-jobs", f.max_concurrent_jobs,
                                                  "Leases active at once, host-wide")
                                      ->capture_default_str());
  bind(Field::kMemoryLimit, sub->add_option("--memory-limit", f.memory_limit,
                                            "Share of each device leases may hold (0 < F <= 1)")
                                ->capture_default_str());
  bind(Field::kDevice,
       sub->add_option("--device", f.device, "Device selector: auto, cuda, cuda:N or cpu")
           ->capture_default_str());
  bind(Field::kSimulate,
       sub->add_option("--simulate", f.simulate,
                       "Simulated devices instead of hardware, e.g. 2x24GiB (as GPUMGR_SIMULATE)"));
  bind(Field::kStateDir,
       sub->add_option("--state-dir", f.state_dir,
                       "Folder for what survives a restart: the lease journal (leases and "
                       "waiters) and the history of job kinds (default: " +
                           state::default_state_dir() + ")"));
  bind(Field::kReattachGrace,
       sub->add_option("--reattach-grace", f.reattach_grace_s,
                       "Seconds that leases and waiters restored after a restart wait for their "
                       "clients to reattach before they are released or cancelled")
           ->capture_default_str());
  bind(Field::kOnOveruse,
       sub->add_option("--on-overuse", f.on_overuse,
                       "When a holder uses more than its lease: report (log, count, flag) or "
                       "terminate (also SIGTERM its processes after the grace, SIGKILL after "
                       "another)")
           ->capture_default_str());
  bind(Field::kOveruseGrace, sub->add_option("--overuse-grace", f.overuse_grace_s,
                                             "Seconds overuse may last before terminate acts")
                                 ->capture_default_str());
  bind(Field::kRevokeGrace,
       sub->add_option("--revoke-grace", f.revoke_grace_s,
                       "Seconds a revoked lease's holder has to release it before its processes "
                       "are killed (a request may give its own)")
           ->capture_default_str());
  bind(Field::kOveruseTolerance,
       sub->add_option("--overuse-tolerance", f.overuse_tolerance_percent,
                       "Percent over its lease a holder may use before it counts as overuse")
           ->capture_default_str());
  bind(Field::kPollInterval,
       sub->add_option("--poll-interval", f.poll_interval_s,
                       "Seconds between readings of the devices while leases are held or jobs "
                       "wait")
           ->capture_default_str());
  bind(Field::kHelloTimeout,
       sub->add_option("--hello-timeout", f.hello_timeout_s,
                       "Seconds a new connection has to send hello before it is closed (0: no "
                       "limit)")
           ->capture_default_str());
  bind(Field::kMaxConnectionsPerUid,
       sub->add_option("--max-connections-per-uid", f.max_connections_per_uid,
                       "Connections one uid may hold open at once; root is not limited (0: no "
                       "limit)")
           ->capture_default_str());
  bind(Field::kKillOrphans,
       sub->add_flag("--kill-orphans", f.kill_orphans,
                     "When a holder's connection closes while it holds leases (it exited or was "
                     "killed), SIGTERM its process tree, SIGKILL after --kill-orphans-grace"));
  bind(Field::kKillOrphansGrace,
       sub->add_option("--kill-orphans-grace", f.kill_orphans_grace_s,
                       "Seconds between SIGTERM and SIGKILL for --kill-orphans")
           ->capture_default_str());
  bind(Field::kFairShare,
       sub->add_flag("--fair-share,!--no-fair-share", f.fair_share,
                     "Within a priority, serve the users with the least recent use first "
                     "(default); --no-fair-share: first come, first served"));
  bind(Field::kFairShareHalfLife,
       sub->add_option("--fair-share-half-life", f.fair_share_half_life_s,
                       "Half-life of the recent use fair share weighs: seconds, or 90s, 30m, "
                       "1h, 2d")
           ->transform(CLI::Validator(
               [](std::string& text) {
                 auto seconds = config::parse_duration(text);
                 if (!seconds.ok()) return seconds.status().message();
                 text = std::to_string(seconds.value());
                 return std::string();
               },
               "DURATION"))
           ->capture_default_str());
  bind(Field::kQuiet, sub->add_flag("--quiet", f.quiet,
                                    "Print only errors, warnings (clients dropped, refused or "
                                    "signalled) and overuse events"));
  sub->footer(
      "Stops on SIGINT/SIGTERM, exit code 0: leases and waiters stay in the lease journal for\n"
      "the next start, whose clients reattach within --reattach-grace. SIGHUP reloads the\n"
      "configuration file (docs/config.md says which keys a reload changes).\n"
      "Exit codes: 0 stopped by a signal; 1 runtime failure (socket, HTTP port, backend);\n"
      "2 bad arguments or configuration; 3 no driver where one was required. See docs/daemon.md.");
  return {
      sub, [opts, &global]() -> int {
        config::SettingsSources sources;
        sources.config_given = !opts->config_path.empty();
        sources.config_path =
            sources.config_given ? opts->config_path : std::string(config::kDefaultConfigPath);
        sources.flags = opts->flags;
        for (std::size_t i = 0; i < config::kFieldCount; ++i) {
          if (opts->given[i] != nullptr && opts->given[i]->count() > 0) sources.given.set(i);
        }
        if (opts->no_http->count() > 0) sources.given.set(config::index_of(Field::kHttp));
        // The global --simulate is a command-line option too, under serve's own.
        if (!sources.given.test(config::index_of(Field::kSimulate)) && !global.simulate.empty()) {
          sources.flags.simulate = global.simulate;
          sources.given.set(config::index_of(Field::kSimulate));
        }
        auto resolved = config::resolve_settings(sources);
        if (!resolved.ok()) {
          print_line(resolved.status().message());
          return kExitUsage;
        }
        if (opts->check_config) {
          std::printf("%s: valid\n", resolved->from_file
                                         ? sources.config_path.c_str()
                                         : ("no " + sources.config_path + ", defaults").c_str());
          return kExitOk;
        }
        const config::ServeSettings& settings = resolved->settings;
        const std::string socket =
            settings.socket.empty() ? daemon::default_server_socket_path() : settings.socket;
        std::signal(SIGPIPE, SIG_IGN);
        const std::size_t files = daemon::raise_open_file_limit();

        std::optional<http::HttpOptions> http_options;
        if (!settings.no_http) {
          auto parsed = http::parse_http_address(settings.http, settings.http_public);
          if (!parsed.ok()) {  // validated above; kept for the options it returns
            print_line("--http: " + parsed.status().message());
            return kExitUsage;
          }
          http_options = parsed.value();
        }
        LedgerConfig config = config::to_ledger_config(settings);
        if (Status s = validate_config(config); !s.ok()) {
          print_line(s.message());
          return kExitUsage;
        }
        const std::string state_dir =
            settings.state_dir.empty() ? state::default_state_dir() : settings.state_dir;
        if (state_dir.empty()) {
          print_line(
              "no state directory: no home folder found; give --state-dir (or daemon.state_dir)");
          return kExitUsage;
        }
        if (Status s = state::prepare_state_dir(state_dir); !s.ok()) {
          std::fprintf(stderr, "gpumgr serve: --state-dir: %s\n", s.message().c_str());
          return kExitUsage;
        }
        config.history_path = state_dir + "/history.db";
        std::string journal_note;
        auto journal =
            state::LeaseJournal::open(state::journal_path(state_dir, socket), &journal_note);
        if (!journal.ok()) {
          std::fprintf(stderr, "gpumgr serve: %s\n", journal.status().message().c_str());
          return kExitError;
        }
        if (!journal_note.empty()) std::fprintf(stderr, "gpumgr serve: %s\n", journal_note.c_str());
        auto selection = open_backend(settings.device, settings.simulate);
        if (!selection.ok()) {
          std::fprintf(stderr, "gpumgr serve: %s\n", selection.status().message().c_str());
          return exit_code_for(selection.status());
        }
        auto ledger =
            core::LocalLedger::create(selection->backend, config, selection->pinned_device);
        if (!ledger.ok()) {
          std::fprintf(stderr, "gpumgr serve: %s\n", ledger.status().message().c_str());
          return exit_code_for(ledger.status());
        }
        if (!ledger.value()->history_note().empty()) {
          std::fprintf(stderr, "gpumgr serve: %s\n", ledger.value()->history_note().c_str());
        }
        // Overuse is an event worth a line even with --quiet: it is what admission guards.
        // Job ids have no control characters (validated); the rest is the ledger's text.
        ledger.value()->set_event_handler([](const core::LeaseEvent& e) {
          std::fprintf(stderr, "gpumgr serve: %s: job '%s' (pid %u, uid %u) %s\n",
                       std::string(core::lease_event_name(e.kind)).c_str(), e.job_id.c_str(), e.pid,
                       e.uid, e.message.c_str());
        });
        daemon::ServerOptions so;
        so.socket_path = socket;
        so.socket_group = settings.socket_group;
        so.handle_signals = true;
        const daemon::ClientLimits limits = client_limits(settings);
        so.hello_timeout_s = limits.hello_timeout_s;
        so.max_connections_per_uid = limits.max_connections_per_uid;
        so.kill_orphans = limits.kill_orphans;
        so.kill_orphans_grace_s = limits.kill_orphans_grace_s;
        so.journal = std::move(journal).value();
        so.reattach_grace_s = settings.reattach_grace_s;
        // --quiet: the ordinary course (who left, shutting down) is not printed; what the
        // daemon did to a client, and what failed, is. A reload may change it.
        auto quiet = std::make_shared<std::atomic<bool>>(settings.quiet);
        so.log = [quiet](daemon::LogLevel level, const std::string& line) {
          if (quiet->load() && level == daemon::LogLevel::kInfo) return;
          print_line(line);
        };
        auto reload_state = std::make_shared<ReloadState>();
        reload_state->sources = sources;
        reload_state->running = settings;
        reload_state->history_path = config.history_path;
        reload_state->ledger = ledger.value();
        reload_state->quiet = quiet;
        reload_state->quotas = resolved->quotas;
        // Waiting for quota and the figures of status: the ledger's scheduler counts them.
        (void)ledger.value()->set_quotas(resolved->quotas);
        reload_state->host_capacity = host_capacity(*ledger.value());
        so.on_reload = [reload_state] { return reload(*reload_state); };
        so.admit = [reload_state](const LeaseRequest& r, const core::Holder& h) {
          return admit(*reload_state, r, h);
        };
        auto server = daemon::Server::create(so, ledger.value());
        if (!server.ok()) {
          std::fprintf(stderr, "gpumgr serve: %s\n", server.status().message().c_str());
          return server.status().code() == ErrorCode::kInvalidArgument ? kExitUsage : kExitError;
        }
        std::unique_ptr<http::HttpServer> http_server;
        if (http_options) {
          std::weak_ptr<core::LocalLedger> weak = ledger.value();
          auto started = http::start_http_server(*http_options, [weak]() -> StatusOr<Snapshot> {
            auto l = weak.lock();
            if (!l) return Unavailable("the daemon is shutting down");
            return l->snapshot();
          });
          if (!started.ok()) {
            std::fprintf(stderr, "gpumgr serve: HTTP %s: %s (use --http HOST:PORT or --no-http)\n",
                         settings.http.c_str(), started.status().message().c_str());
            return kExitError;
          }
          http_server = std::move(started).value();
        }
        if (!settings.quiet) {
          if (resolved->from_file) print_line("configuration from " + sources.config_path);
          auto snap = ledger.value()->snapshot();
          std::string devices;
          if (snap.ok()) {
            for (const auto& d : snap->devices) {
              if (!devices.empty()) devices += ", ";
              devices += std::to_string(d.info.index) + ": " + d.info.name + " " +
                         format_bytes(d.info.total_bytes);
            }
          }
          std::fprintf(stderr,
                       "gpumgr serve: listening on %s (pid %d, %zu open files allowed)\n"
                       "gpumgr serve: %s; devices: %s\n",
                       socket.c_str(), static_cast<int>(::getpid()), files,
                       http_server ? ("HTTP on " + http_options->host + ":" +
                                      std::to_string(http_server->port()))
                                         .c_str()
                                   : "no HTTP",
                       devices.c_str());
        }
        server.value()->run();
        if (http_server) http_server->stop();
        server.value().reset();
        if (!quiet->load()) print_line("stopped");
        return kExitOk;
      }};
}

}  // namespace gpumgr::cli
