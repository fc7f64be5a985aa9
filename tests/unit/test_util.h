// Helpers shared by the core library's unit tests: a Manager over scripted simulated devices,
// condition waits with generous deadlines (the suite also runs under TSan on a loaded 2-core
// machine, so no test relies on a fixed sleep), and environment-variable guards.
// Used from the gtest main thread unless a helper says otherwise.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

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

// Waits up to `timeout` for `future`; a failure says what was waited for, so that a broken
// implementation is reported by its assertion instead of a hang:
//   ASSERT_TRUE(ready_within(f, "the grant of 'second' after the release"));
template <typename T>
::testing::AssertionResult ready_within(std::future<T>& future, std::string_view what,
                                        std::chrono::milliseconds timeout = kGenerous) {
  if (!future.valid()) return ::testing::AssertionFailure() << "no future for " << what;
  if (future.wait_for(timeout) == std::future_status::ready) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "waited " << timeout.count() << " ms for " << what << "; it did not happen";
}

// Threads joined on every path out of a scope: a failed ASSERT returns early, and a joinable
// std::thread destroyed there would end the run with `terminate called` instead of the
// assertion's message. Declare it after what the threads use, so that they end first. The
// threads must end by themselves (a deadline on every wait in them).
class JoiningThreads {
 public:
  JoiningThreads() = default;
  ~JoiningThreads() { join(); }
  JoiningThreads(const JoiningThreads&) = delete;
  JoiningThreads& operator=(const JoiningThreads&) = delete;

  template <typename F>
  void spawn(F&& fn) {
    threads_.emplace_back(std::forward<F>(fn));
  }
  void join() {
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
  std::size_t size() const { return threads_.size(); }

 private:
  std::vector<std::thread> threads_;
};

// A blocking Manager::acquire on a thread of its own. On every path out of the test (a failed
// ASSERT returns early) it cancels the acquire and then waits for its thread: otherwise the
// thread would wait for a lease that nobody releases, and the test would hang in the
// future's destructor with no message. Declare it after the Manager it uses. Cancelling
// after the grant changes nothing: the lease stays with the result.
class AsyncAcquire {
 public:
  AsyncAcquire(Manager& manager, LeaseRequest request, WaitOptions wait = {})
      : job_id_(request.job_id) {
    if (!wait.cancel) wait.cancel = CancelToken();
    token_ = *wait.cancel;
    future_ = std::async(std::launch::async, [&manager, r = std::move(request), wait] {
      return manager.acquire(r, wait);
    });
  }
  ~AsyncAcquire() {
    token_.cancel();
    if (future_.valid() && future_.wait_for(kGenerous) != std::future_status::ready) {
      ADD_FAILURE() << "the acquire of '" << job_id_ << "' did not end within " << kGenerous.count()
                    << " s of being cancelled; waiting for it";
    }
  }
  AsyncAcquire(const AsyncAcquire&) = delete;
  AsyncAcquire& operator=(const AsyncAcquire&) = delete;

  // Whether the acquire ended (granted or not) within `timeout`; a failure names the job.
  ::testing::AssertionResult ended(std::chrono::milliseconds timeout = kGenerous) {
    return ready_within(future_, "the acquire of '" + job_id_ + "' to end", timeout);
  }
  // Whether it is still waiting after `wait` (at once by default).
  bool still_waiting(std::chrono::milliseconds wait = std::chrono::milliseconds(0)) {
    return future_.valid() && future_.wait_for(wait) == std::future_status::timeout;
  }
  // The result, once ended() said so; never blocks for longer than kGenerous (an error
  // that says so instead).
  StatusOr<Lease> get() {
    if (!future_.valid()) return Status(ErrorCode::kInternal, "the result was taken already");
    if (future_.wait_for(kGenerous) != std::future_status::ready) {
      return Status(ErrorCode::kInternal,
                    "the acquire of '" + job_id_ + "' did not end within the test's deadline");
    }
    return future_.get();
  }

 private:
  std::string job_id_;
  CancelToken token_;
  std::future<StatusOr<Lease>> future_;
};

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

// A fresh folder under the system's temporary folder, removed with everything in it (its
// mode restored first, for tests that take permissions away). `prefix` names it.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "gpumgr-test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  // A path inside the folder.
  std::string file(const std::string& rel) const { return (path_ / rel).string(); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
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
