// Helpers shared by the core library's unit tests: a Manager over scripted simulated devices,
// condition waits with generous deadlines (the suite also runs under TSan on a loaded 2-core
// machine, so no test relies on a fixed sleep), and environment-variable guards.
// Used from the gtest main thread unless a helper says otherwise.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "gpumgr/backends.h"
#include "gpumgr/manager.h"
#include "gpumgr/units.h"

namespace gpumgr::testing {

// Generous: only a broken implementation waits this long.
inline constexpr std::chrono::seconds kGenerous{20};

// Polls `pred` until it holds or `timeout` passes; returns whether it held. Any thread.
inline bool wait_until(const std::function<bool()>& pred,
                       std::chrono::milliseconds timeout = kGenerous) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// Sets (or unsets, with nullopt) an environment variable for the guard's life.
class EnvGuard {
 public:
  EnvGuard(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = ::getenv(name); old != nullptr) old_ = old;
    if (value) {
      ::setenv(name, value->c_str(), 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~EnvGuard() {
    if (old_) {
      ::setenv(name_, old_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  EnvGuard(const EnvGuard&) = delete;
  EnvGuard& operator=(const EnvGuard&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// Options that never reach a daemon, whatever GPUMGR_SOCKET says.
inline ManagerOptions local_options(int max_jobs = 3, double limit = 0.8) {
  ManagerOptions o;
  o.max_concurrent_jobs = max_jobs;
  o.memory_limit = limit;
  o.in_process_only = true;
  o.poll_interval = std::chrono::milliseconds(10);
  return o;
}

// A Manager over simulated devices the test keeps a handle on.
struct SimManager {
  std::shared_ptr<SimulatedBackend> sim;
  std::unique_ptr<Manager> manager;

  Manager* operator->() const { return manager.get(); }
};

inline SimManager make_sim_manager(std::vector<std::uint64_t> sizes,
                                   const ManagerOptions& options = local_options()) {
  SimManager out;
  out.sim = std::make_shared<SimulatedBackend>(std::move(sizes));
  auto m = Manager::create(options, out.sim);
  EXPECT_TRUE(m.ok()) << m.status().to_string();
  if (m.ok()) out.manager = std::move(m).value();
  return out;
}

inline LeaseRequest request(std::string job_id, std::uint64_t bytes, int priority = 0) {
  LeaseRequest r;
  r.job_id = std::move(job_id);
  r.bytes = bytes;
  r.priority = priority;
  return r;
}

// The snapshot, asserting that taking it worked.
inline Snapshot snap(Manager& m) {
  auto s = m.snapshot();
  EXPECT_TRUE(s.ok()) << s.status().to_string();
  return s.ok() ? std::move(s).value() : Snapshot{};
}

// floor(limit * total) for the limits the tests use, computed independently of the library.
inline std::uint64_t capacity_of(std::uint64_t total, std::uint64_t num, std::uint64_t den) {
  return total / den * num + total % den * num / den;
}

}  // namespace gpumgr::testing
