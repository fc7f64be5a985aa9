// gpumgr serve: the per-host daemon. It owns the host's GPU budget (one LocalLedger) and
// serves it over a Unix socket (docs/protocol.md) to every process on the host, and
// read-only over HTTP (metrics, JSON API, dashboard). Runs the event loop on the main thread
// until SIGINT or SIGTERM; see docs/daemon.md.
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "core/local_ledger.h"
#include "daemon/protocol.h"
#include "daemon/server.h"
#include "gpumgr/backends.h"
#include "gpumgr/units.h"
#include "http/http_server.h"
#include "state/lease_journal.h"
#include "state/state_dir.h"

namespace gpumgr::cli {

Command setup_serve(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    std::string socket;
    std::string socket_group;
    std::string http = "127.0.0.1:9400";
    bool http_public = false;
    bool no_http = false;
    int max_concurrent_jobs = 3;
    double memory_limit = 0.8;
    std::string device = "auto";
    std::string simulate;
    std::string state_dir;
    std::string on_overuse = "report";
    double overuse_grace_s = 10;
    double overuse_tolerance_percent = 5;
    double poll_interval_s = 0.25;
    double hello_timeout_s = 5;
    long long max_connections_per_uid = 256;
    bool kill_orphans = false;
    double kill_orphans_grace_s = 5;
    double reattach_grace_s = 30;
    bool quiet = false;
  };
  auto opts = std::make_shared<Options>();
  CLI::App* sub =
      app.add_subcommand("serve", "Run the daemon: one GPU budget for every process on this host");
  sub->add_option(
      "--socket", opts->socket,
      "Unix socket to listen on (default: " + daemon::default_server_socket_path() + ")");
  sub->add_option("--socket-group", opts->socket_group,
                  "Group that owns the socket (mode 0660): its members may take leases");
  sub->add_option("--http", opts->http, "HTTP address for metrics, JSON API and dashboard")
      ->capture_default_str();
  sub->add_flag("--http-public", opts->http_public,
                "Allow --http to bind a non-loopback address (exposes job names and holders)");
  sub->add_flag("--no-http", opts->no_http, "Serve no HTTP");
  sub->add_option("--max-concurrent-jobs", opts->max_concurrent_jobs,
                  "Leases active at once, host-wide")
      ->capture_default_str();
  sub->add_option("--memory-limit", opts->memory_limit,
                  "Share of each device leases may hold (0 < F <= 1)")
      ->capture_default_str();
  sub->add_option("--device", opts->device, "Device selector: auto, cuda, cuda:N or cpu")
      ->capture_default_str();
  sub->add_option("--simulate", opts->simulate,
                  "Simulated devices instead of hardware, e.g. 2x24GiB (as GPUMGR_SIMULATE)");
  sub->add_option("--state-dir", opts->state_dir,
                  "Folder for what survives a restart: the lease journal (leases and waiters) "
                  "and the history of job kinds (default: " +
                      state::default_state_dir() + ")");
  sub->add_option("--reattach-grace", opts->reattach_grace_s,
                  "Seconds that leases and waiters restored after a restart wait for their "
                  "clients to reattach before they are released or cancelled")
      ->capture_default_str();
  sub->add_option("--on-overuse", opts->on_overuse,
                  "When a holder uses more than its lease: report (log, count, flag) or "
                  "terminate (also SIGTERM its processes after the grace, SIGKILL after another)")
      ->capture_default_str();
  sub->add_option("--overuse-grace", opts->overuse_grace_s,
                  "Seconds overuse may last before terminate acts")
      ->capture_default_str();
  sub->add_option("--overuse-tolerance", opts->overuse_tolerance_percent,
                  "Percent over its lease a holder may use before it counts as overuse")
      ->capture_default_str();
  sub->add_option("--poll-interval", opts->poll_interval_s,
                  "Seconds between readings of the devices while leases are held or jobs wait")
      ->capture_default_str();
  sub->add_option("--hello-timeout", opts->hello_timeout_s,
                  "Seconds a new connection has to send hello before it is closed (0: no limit)")
      ->capture_default_str();
  sub->add_option("--max-connections-per-uid", opts->max_connections_per_uid,
                  "Connections one uid may hold open at once; root is not limited (0: no limit)")
      ->capture_default_str();
  sub->add_flag("--kill-orphans", opts->kill_orphans,
                "When a holder's connection closes while it holds leases (it exited or was "
                "killed), SIGTERM its process tree, SIGKILL after --kill-orphans-grace");
  sub->add_option("--kill-orphans-grace", opts->kill_orphans_grace_s,
                  "Seconds between SIGTERM and SIGKILL for --kill-orphans")
      ->capture_default_str();
  sub->add_flag("--quiet", opts->quiet,
                "Print only errors, warnings (clients dropped, refused or signalled) and overuse "
                "events");
  sub->footer(
      "Stops on SIGINT/SIGTERM, exit code 0: leases and waiters stay in the lease journal for\n"
      "the next start, whose clients reattach within --reattach-grace.\n"
      "Exit codes: 0 stopped by a signal; 1 runtime failure (socket, HTTP port, backend);\n"
      "2 bad arguments; 3 no driver where one was required. See docs/daemon.md.");
  return {
      sub, [opts, &global]() -> int {
        const std::string socket =
            opts->socket.empty() ? daemon::default_server_socket_path() : opts->socket;
        const std::string simulate = opts->simulate.empty() ? global.simulate : opts->simulate;
        std::signal(SIGPIPE, SIG_IGN);
        const std::size_t files = daemon::raise_open_file_limit();

        std::optional<http::HttpOptions> http_options;
        if (!opts->no_http) {
          auto parsed = http::parse_http_address(opts->http, opts->http_public);
          if (!parsed.ok()) {
            std::fprintf(stderr, "gpumgr serve: --http: %s\n", parsed.status().message().c_str());
            return kExitUsage;
          }
          http_options = parsed.value();
        }
        LedgerConfig config;
        config.max_concurrent_jobs = opts->max_concurrent_jobs;
        config.memory_limit = opts->memory_limit;
        auto policy = parse_overuse_policy(opts->on_overuse);
        if (!policy.ok()) {
          std::fprintf(stderr, "gpumgr serve: --on-overuse: %s\n",
                       policy.status().message().c_str());
          return kExitUsage;
        }
        config.overuse = {policy.value(), opts->overuse_grace_s, opts->overuse_tolerance_percent};
        if (!(opts->poll_interval_s >= 0.001 && opts->poll_interval_s <= 3600)) {
          std::fprintf(stderr,
                       "gpumgr serve: --poll-interval must be between 0.001 and 3600 seconds\n");
          return kExitUsage;
        }
        if (!(opts->hello_timeout_s >= 0 && opts->hello_timeout_s <= 86400)) {
          std::fprintf(stderr,
                       "gpumgr serve: --hello-timeout must be between 0 (no limit) and 86400 "
                       "seconds\n");
          return kExitUsage;
        }
        if (opts->max_connections_per_uid < 0 || opts->max_connections_per_uid > 100000000) {
          std::fprintf(stderr,
                       "gpumgr serve: --max-connections-per-uid must be between 0 (no limit) and "
                       "100000000\n");
          return kExitUsage;
        }
        if (!(opts->kill_orphans_grace_s >= 0 && opts->kill_orphans_grace_s <= 3600)) {
          std::fprintf(stderr,
                       "gpumgr serve: --kill-orphans-grace must be between 0 and 3600 seconds\n");
          return kExitUsage;
        }
        if (!(opts->reattach_grace_s >= 0 && opts->reattach_grace_s <= 3600)) {
          std::fprintf(stderr,
                       "gpumgr serve: --reattach-grace must be between 0 and 3600 seconds\n");
          return kExitUsage;
        }
        config.poll_interval = std::chrono::milliseconds(
            static_cast<std::int64_t>(std::llround(opts->poll_interval_s * 1000)));
        if (Status s = validate_config(config); !s.ok()) {
          std::fprintf(stderr, "gpumgr serve: %s\n", s.message().c_str());
          return kExitUsage;
        }
        const std::string state_dir =
            opts->state_dir.empty() ? state::default_state_dir() : opts->state_dir;
        if (state_dir.empty()) {
          std::fprintf(
              stderr, "gpumgr serve: no state directory: no home folder found; give --state-dir\n");
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
        auto selection = open_backend(opts->device, simulate);
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
        so.socket_group = opts->socket_group;
        so.handle_signals = true;
        so.hello_timeout_s = opts->hello_timeout_s;
        so.max_connections_per_uid = static_cast<std::size_t>(opts->max_connections_per_uid);
        so.kill_orphans = opts->kill_orphans;
        so.kill_orphans_grace_s = opts->kill_orphans_grace_s;
        so.journal = std::move(journal).value();
        so.reattach_grace_s = opts->reattach_grace_s;
        // --quiet: the ordinary course (who left, shutting down) is not printed; what the
        // daemon did to a client, and what failed, is.
        so.log = [quiet = opts->quiet](daemon::LogLevel level, const std::string& line) {
          if (quiet && level == daemon::LogLevel::kInfo) return;
          std::fprintf(stderr, "gpumgr serve: %s\n", line.c_str());
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
                         opts->http.c_str(), started.status().message().c_str());
            return kExitError;
          }
          http_server = std::move(started).value();
        }
        if (!opts->quiet) {
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
        if (!opts->quiet) std::fprintf(stderr, "gpumgr serve: stopped\n");
        return kExitOk;
      }};
}

}  // namespace gpumgr::cli
