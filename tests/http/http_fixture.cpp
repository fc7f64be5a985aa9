// http_fixture: the HTTP server over a manager on simulated devices, scripted from stdin, so
// that the Python metrics tests, the browser test and people trying the dashboard need no
// daemon and no GPU.
//
//   http_fixture [--devices SPEC] [--memory-limit F] [--max-concurrent-jobs N] [--port P]
//                [--animate] [--history FILE]
//
// Prints "port N" once listening, then answers each command line with one line, "ok ..." or
// "error ...":
//   acquire JOB MIB [DEVICE|-] [COMMAND...]  take a lease now (try_acquire)
//   resident-acquire JOB NAME MIB [DEVICE|-] [COMMAND...]
//                                            the same as a resident (an idle model kept
//                                            loaded: a waiter that needs the room revokes it)
//   preemptible-acquire JOB MIB [DEVICE|-] [COMMAND...]
//                                            the same as a preemptible job
//   beside-acquire JOB NAME MIB [DEVICE|-] [COMMAND...]
//                                            the same beside resident NAME (a job that runs
//                                            on that loaded model)
//   kind-acquire JOB KIND MIB DEFAULT_MIB [DEVICE|-] [COMMAND...]
//                                            the same with a job kind; MIB 0 asks for the
//                                            kind's estimate (--history), DEFAULT_MIB while
//                                            it has too few runs
//   wait JOB MIB [PRIORITY] [COMMAND...]     queue a request in the background; it is granted
//                                            when it fits (see `status`)
//   release JOB [failed]                     release a lease (as succeeded, or failed)
//   reject JOB MIB                           a try_acquire that must fail (counts as rejected)
//   foreign DEVICE MIB                       memory used outside leases on a device
//   use DEVICE MIB                           what the fixture itself, the holder of every lease
//                                            it takes, uses on a device (shared by its leases
//                                            there in proportion to their sizes)
//   hide-usage JOB                           serve JOB's use as unknown from now on (as where
//                                            the backend cannot attribute memory to processes)
//   util DEVICE PERCENT | temp DEVICE C | health DEVICE 0|1 [REASON...]
//   status                                   "ok leases=N queue=M"
//   quit                                     cancel waiters, stop the server, exit 0
// --animate moves utilisation and temperature about, so that the dashboard's charts move.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gpumgr/backends.h"
#include "gpumgr/manager.h"
#include "gpumgr/units.h"
#include "http/http_server.h"

namespace {

using gpumgr::kMiB;

std::mutex g_out_mutex;

void reply(const std::string& line) {
  std::lock_guard<std::mutex> lock(g_out_mutex);
  std::cout << line << std::endl;  // flushed: the driver waits for each line
}

std::string rest_of(std::istringstream& in) {
  std::string rest;
  std::getline(in, rest);
  const auto start = rest.find_first_not_of(' ');
  return start == std::string::npos ? "" : rest.substr(start);
}

int usage(const char* message) {
  std::fprintf(stderr, "http_fixture: %s\n", message);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string devices = "2x24GiB";
  gpumgr::ManagerOptions options;
  gpumgr::http::HttpOptions http;
  http.port = 0;
  bool animate = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--devices" && has_value) {
      devices = argv[++i];
    } else if (arg == "--memory-limit" && has_value) {
      options.memory_limit = std::stod(argv[++i]);
    } else if (arg == "--max-concurrent-jobs" && has_value) {
      options.max_concurrent_jobs = std::stoi(argv[++i]);
    } else if (arg == "--port" && has_value) {
      http.port = std::stoi(argv[++i]);
    } else if (arg == "--animate") {
      animate = true;
    } else if (arg == "--history" && has_value) {
      options.history_path = argv[++i];
    } else {
      return usage(("unknown argument " + arg).c_str());
    }
  }
  auto backend = gpumgr::SimulatedBackend::from_spec(devices);
  if (!backend.ok()) return usage(backend.status().message().c_str());
  const std::shared_ptr<gpumgr::SimulatedBackend> sim = backend.value();
  options.in_process_only = true;
  auto created = gpumgr::Manager::create(options, sim);
  if (!created.ok()) return usage(created.status().message().c_str());
  std::shared_ptr<gpumgr::Manager> manager = std::move(created).value();

  // Jobs whose use is served as unknown (hide-usage).
  auto hidden_mutex = std::make_shared<std::mutex>();
  auto hidden = std::make_shared<std::set<std::string>>();  // guarded by *hidden_mutex
  auto server = gpumgr::http::start_http_server(
      http, [manager, hidden, hidden_mutex]() -> gpumgr::StatusOr<gpumgr::Snapshot> {
        auto snap = manager->snapshot();
        if (!snap.ok()) return snap;
        std::lock_guard<std::mutex> lock(*hidden_mutex);
        for (auto& lease : snap->leases) {
          if (hidden->count(lease.job_id) == 0) continue;
          for (auto& use : lease.usage) use = {use.device, std::nullopt, std::nullopt};
        }
        return snap;
      });
  if (!server.ok()) {
    std::fprintf(stderr, "http_fixture: %s\n", server.status().to_string().c_str());
    return 1;
  }
  reply("port " + std::to_string(server.value()->port()));

  std::mutex leases_mutex;
  std::map<std::string, gpumgr::Lease> leases;  // guarded by leases_mutex
  std::vector<std::thread> waiters;
  std::vector<std::string> waiting_jobs;

  std::atomic<bool> stop{false};
  std::thread animator;
  if (animate) {
    animator = std::thread([&] {
      const auto start = std::chrono::steady_clock::now();
      while (!stop.load()) {
        const double t =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        for (int d = 0; d < sim->device_count(); ++d) {
          const double wave =
              0.5 + 0.35 * std::sin(t * 0.9 + d * 1.7) + 0.1 * std::sin(t * 3.1 + d);
          (void)sim->set_utilization(
              d, static_cast<unsigned>(std::lround(100 * std::clamp(wave, 0.0, 1.0))));
          (void)sim->set_temperature(d, static_cast<unsigned>(std::lround(45 + 25 * wave)));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
  }

  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string cmd;
    in >> cmd;
    if (cmd.empty()) continue;
    if (cmd == "quit") break;
    if (cmd == "acquire" || cmd == "reject" || cmd == "kind-acquire" || cmd == "resident-acquire" ||
        cmd == "preemptible-acquire" || cmd == "beside-acquire") {
      gpumgr::LeaseRequest request;
      std::uint64_t mib = 0;
      std::uint64_t default_mib = 0;
      std::string device = "-";
      in >> request.job_id;
      if (cmd == "kind-acquire") in >> request.kind;
      if (cmd == "resident-acquire") in >> request.resident;
      if (cmd == "beside-acquire") in >> request.beside_resident;
      request.preemptible = cmd == "preemptible-acquire";
      in >> mib;
      if (cmd == "kind-acquire") in >> default_mib;
      const bool ok = static_cast<bool>(in);
      if (cmd != "reject" && !(in >> device)) device = "-";  // optional
      if (!ok) {
        reply("error usage: " + cmd + " JOB " +
              (cmd == "kind-acquire"                                  ? "KIND MIB DEFAULT_MIB"
               : cmd == "resident-acquire" || cmd == "beside-acquire" ? "NAME MIB"
                                                                      : "MIB") +
              (cmd != "reject" ? " [DEVICE|-] [COMMAND...]" : ""));
        continue;
      }
      request.bytes = mib * kMiB;
      request.default_bytes = default_mib * kMiB;
      request.device = device == "-" ? -1 : std::stoi(device);
      request.command = rest_of(in);
      auto lease = manager->try_acquire(request);
      if (cmd == "reject") {
        reply(lease.ok() ? "error granted " + request.job_id : "ok rejected " + request.job_id);
        continue;
      }
      if (!lease.ok()) {
        reply("error " + lease.status().to_string());
        continue;
      }
      const int on = lease->device();
      std::lock_guard<std::mutex> lock(leases_mutex);
      leases[request.job_id] = std::move(lease).value();
      reply("ok acquired " + request.job_id + " on " + std::to_string(on));
    } else if (cmd == "wait") {
      gpumgr::LeaseRequest request;
      std::uint64_t mib = 0;
      in >> request.job_id >> mib;
      if (!in) {
        reply("error usage: wait JOB MIB [PRIORITY] [COMMAND...]");
        continue;
      }
      if (!(in >> request.priority)) request.priority = 0;  // optional
      request.bytes = mib * kMiB;
      request.command = rest_of(in);
      waiting_jobs.push_back(request.job_id);
      waiters.emplace_back([&, request] {
        auto lease = manager->acquire(request);
        if (lease.ok()) {
          std::lock_guard<std::mutex> lock(leases_mutex);
          leases[request.job_id] = std::move(lease).value();
        }
      });
      reply("ok waiting " + request.job_id);
    } else if (cmd == "release") {
      std::string job;
      std::string outcome;
      in >> job >> outcome;
      gpumgr::Lease lease;
      // A queued job's lease reaches the map from its waiter thread a moment after the
      // ledger grants it (and after snapshots show it): give that thread a few seconds.
      const bool queued =
          std::find(waiting_jobs.begin(), waiting_jobs.end(), job) != waiting_jobs.end();
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(queued ? 5 : 0);
      for (;;) {
        {
          std::lock_guard<std::mutex> lock(leases_mutex);
          auto it = leases.find(job);
          if (it != leases.end()) {
            lease = std::move(it->second);
            leases.erase(it);
            break;
          }
        }
        if (std::chrono::steady_clock::now() >= deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      if (!lease.held()) {
        reply("error no lease " + job);
        continue;
      }
      const gpumgr::Status s = lease.release(outcome == "failed" ? gpumgr::JobOutcome::kFailed
                                                                 : gpumgr::JobOutcome::kSucceeded);
      reply(s.ok() ? "ok released " + job : "error " + s.to_string());
    } else if (cmd == "hide-usage") {
      std::string job;
      in >> job;
      {
        std::lock_guard<std::mutex> lock(*hidden_mutex);
        hidden->insert(job);
      }
      reply("ok hidden " + job);
    } else if (cmd == "foreign" || cmd == "use" || cmd == "util" || cmd == "temp" ||
               cmd == "health") {
      int device = -1;
      long long value = -1;
      in >> device >> value;
      if (!in) {
        reply("error usage: " + cmd + " DEVICE VALUE");
        continue;
      }
      gpumgr::Status s;
      if (cmd == "foreign") {
        s = sim->set_foreign_usage(device, static_cast<std::uint64_t>(value) * kMiB);
      } else if (cmd == "use") {
        s = sim->set_process_usage(device, static_cast<std::uint32_t>(::getpid()),
                                   static_cast<std::uint64_t>(value) * kMiB);
      } else if (cmd == "util") {
        s = sim->set_utilization(device, static_cast<unsigned>(value));
      } else if (cmd == "temp") {
        s = sim->set_temperature(device, static_cast<unsigned>(value));
      } else {
        s = sim->set_healthy(device, value != 0, rest_of(in));
      }
      reply(s.ok() ? "ok " + cmd : "error " + s.to_string());
    } else if (cmd == "status") {
      auto snap = manager->snapshot();
      if (!snap.ok()) {
        reply("error " + snap.status().to_string());
        continue;
      }
      reply("ok leases=" + std::to_string(snap->leases.size()) +
            " queue=" + std::to_string(snap->queue.size()));
    } else {
      reply("error unknown command " + cmd);
    }
  }

  stop.store(true);
  if (animator.joinable()) animator.join();
  for (const auto& job : waiting_jobs) (void)manager->cancel(job);
  for (auto& t : waiters) t.join();
  server.value()->stop();
  {
    std::lock_guard<std::mutex> lock(leases_mutex);
    leases.clear();
  }
  return 0;
}
