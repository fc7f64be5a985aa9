// gpumgr estimates [--json] [--socket PATH | --state-dir DIR]: what the history of job kinds
// says (runs, peaks, hold times, how often a kind exceeded its lease, the estimate that
// `--vram auto` asks for); `gpumgr estimates forget KIND` erases one kind's history. Asks
// the daemon, or reads a state directory's history itself with --state-dir.
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "cli/render.h"
#include "core/snapshot_json.h"
#include "daemon/protocol.h"
#include "gpumgr/units.h"
#include "state/kind_history.h"
#include "util/terminal_text.h"

namespace gpumgr::cli {
namespace {

struct Source {
  std::shared_ptr<Ledger> ledger;               // the daemon's
  std::unique_ptr<state::KindHistory> history;  // or a history file read directly
};

// The daemon (--socket, GPUMGR_SOCKET, the default path), or the history in --state-dir.
StatusOr<Source> open_source(const std::string& socket_option, const std::string& state_dir) {
  Source source;
  if (!state_dir.empty()) {
    std::string note;
    auto history = state::KindHistory::open(state_dir + "/history.db", &note);
    if (!history.ok()) return history.status();
    if (!note.empty()) std::fprintf(stderr, "gpumgr estimates: %s\n", note.c_str());
    source.history = std::move(history).value();
    return source;
  }
  std::string socket = socket_option;
  if (socket.empty()) {
    const char* env = std::getenv("GPUMGR_SOCKET");
    socket = env != nullptr && *env != '\0' ? env : daemon::default_client_socket_path();
  }
  auto ledger = connect_daemon(socket);
  if (!ledger.ok()) {
    return Status(ledger.status().code(),
                  ledger.status().message() +
                      "; the history is the daemon's (or read one with --state-dir DIR)");
  }
  source.ledger = std::move(ledger).value();
  return source;
}

// `text` padded with spaces to `width` columns (left-aligned, or right with `right`).
std::string pad(const std::string& text, std::size_t width, bool right = false) {
  if (text.size() >= width) return text;
  const std::string fill(width - text.size(), ' ');
  return right ? fill + text : text + fill;
}

std::string bytes_or_dash(const std::optional<std::uint64_t>& b) {
  return b ? format_bytes(*b) : "-";
}

std::string seconds_or_dash(const std::optional<double>& s) {
  return s ? format_duration(*s) : "-";
}

std::string render_estimates(const std::vector<KindEstimate>& all) {
  std::ostringstream out;
  if (all.empty()) {
    out << "no job kinds recorded yet: run jobs with --kind (gpumgr run --kind KIND ...)\n";
    return out.str();
  }
  out << pad("KIND", 24) << pad("RUNS", 6, true) << pad("PEAK p50", 11, true)
      << pad("p95", 11, true) << pad("max", 11, true) << pad("HOLD p50", 10, true)
      << pad("p95", 9, true) << pad("OVER", 6, true) << pad("ESTIMATE", 11, true)
      << "  LAST SEEN\n";
  const auto now = std::chrono::system_clock::now();
  for (const auto& e : all) {
    const double ago = std::chrono::duration<double>(now - e.last_seen).count();
    out << pad(terminal_safe(e.kind), 23) << " " << pad(std::to_string(e.runs), 6, true)
        << pad(bytes_or_dash(e.peak_p50_bytes), 11, true)
        << pad(bytes_or_dash(e.peak_p95_bytes), 11, true)
        << pad(bytes_or_dash(e.peak_max_bytes), 11, true)
        << pad(seconds_or_dash(e.hold_p50_s), 10, true)
        << pad(seconds_or_dash(e.hold_p95_s), 9, true)
        << pad(std::to_string(e.overused_runs), 6, true)
        << pad(bytes_or_dash(e.estimate_bytes), 11, true) << "  "
        << format_duration(std::max(0.0, ago)) << " ago\n";
    out << "    " << terminal_safe(e.estimate_note) << "\n";
  }
  out << "OVER: runs whose holder used more than its lease. ESTIMATE: what --vram auto asks for\n";
  return out.str();
}

}  // namespace

Command setup_estimates(CLI::App& app, const GlobalOptions& /*global*/) {
  struct Options {
    bool json = false;
    std::string socket;
    std::string state_dir;
    std::string forget;
  };
  auto opts = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "estimates", "What each kind of job needed in its past runs, and what --vram auto asks for");
  sub->add_flag("--json", opts->json, "Print JSON: a list of kinds (docs/cli.md)");
  sub->add_option("--socket", opts->socket, "Ask the daemon at this socket (as GPUMGR_SOCKET)");
  sub->add_option("--state-dir", opts->state_dir,
                  "Read the history in this state directory instead of asking the daemon");
  CLI::App* forget = sub->add_subcommand("forget", "Erase one kind's history");
  forget->add_option("kind", opts->forget, "The job kind")->required();
  sub->footer(
      "Estimate: the p95 of the kind's last 50 measured peaks + 10%, rounded up to a MiB, once "
      "5 runs were measured (docs/accounting.md).\n"
      "Exit codes: 0 ok; 1 failure; 2 bad arguments or unknown kind; 3 no daemon reachable.");
  return {sub, [opts, forget]() -> int {
            auto source = open_source(opts->socket, opts->state_dir);
            if (!source.ok()) {
              std::fprintf(stderr, "gpumgr estimates: %s\n", source.status().message().c_str());
              return exit_code_for(source.status());
            }
            if (forget->parsed()) {
              Status s = check_job_kind(opts->forget);
              if (s.ok()) {
                s = source->ledger ? source->ledger->forget_kind(opts->forget)
                                   : source->history->forget(opts->forget);
              }
              if (!s.ok()) {
                std::fprintf(stderr, "gpumgr estimates forget: %s\n", s.message().c_str());
                return exit_code_for(s);
              }
              std::printf("forgot the history of job kind '%s'\n",
                          terminal_safe(opts->forget).c_str());
              return kExitOk;
            }
            auto all = source->ledger ? source->ledger->estimates() : source->history->all();
            if (!all.ok()) {
              std::fprintf(stderr, "gpumgr estimates: %s\n", all.status().message().c_str());
              return exit_code_for(all.status());
            }
            if (opts->json) {
              nlohmann::json list = nlohmann::json::array();
              for (const auto& e : *all) list.push_back(to_json(e));
              std::cout << list.dump(2) << "\n";
              return kExitOk;
            }
            std::cout << render_estimates(*all);
            return kExitOk;
          }};
}

}  // namespace gpumgr::cli
