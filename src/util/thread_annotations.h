// Clang thread-safety annotations (checked with -Wthread-safety), and a std::mutex wrapper
// that carries them, since libstdc++'s std::mutex is not annotated. Under other compilers
// the macros expand to nothing. Mutex and MutexLock may be used from any thread.
#pragma once

#include <condition_variable>
#include <mutex>

#if defined(__clang__)
#define GPUMGR_TSA(x) __attribute__((x))
#else
#define GPUMGR_TSA(x)
#endif

#define GUARDED_BY(x) GPUMGR_TSA(guarded_by(x))
#define REQUIRES(...) GPUMGR_TSA(requires_capability(__VA_ARGS__))
#define EXCLUDES(...) GPUMGR_TSA(locks_excluded(__VA_ARGS__))
#define ACQUIRE(...) GPUMGR_TSA(acquire_capability(__VA_ARGS__))
#define RELEASE(...) GPUMGR_TSA(release_capability(__VA_ARGS__))
#define CAPABILITY(x) GPUMGR_TSA(capability(x))
#define SCOPED_CAPABILITY GPUMGR_TSA(scoped_lockable)
#define NO_THREAD_SAFETY_ANALYSIS GPUMGR_TSA(no_thread_safety_analysis)

namespace gpumgr {

class CAPABILITY("mutex") Mutex {
 public:
  void lock() ACQUIRE() { m_.lock(); }
  void unlock() RELEASE() { m_.unlock(); }
  // For condition variables: the underlying mutex.
  std::mutex& native() { return m_; }

 private:
  std::mutex m_;
};

// Scoped lock of a Mutex; also usable with CondVar::wait.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& m) ACQUIRE(m) : lock_(m.native()) {}
  ~MutexLock() RELEASE() = default;
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;
  std::unique_lock<std::mutex>& native() { return lock_; }

 private:
  std::unique_lock<std::mutex> lock_;
};

}  // namespace gpumgr
