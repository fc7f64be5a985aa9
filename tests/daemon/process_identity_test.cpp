// check_descendant (daemon/process_identity.h): which pids a client may name as the holder of
// its lease. Real processes: this test, a child and a grandchild of it, and processes that are
// not its own.
#include "daemon/process_identity.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

namespace gpumgr::daemon {
namespace {

// A child that sleeps (and, with `grandchild`, has a sleeping child of its own); killed with
// its process group on scope exit.
class Sleeper {
 public:
  explicit Sleeper(bool grandchild) {
    int pipe_fds[2];
    EXPECT_EQ(::pipe(pipe_fds), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::setpgid(0, 0);
      ::close(pipe_fds[0]);
      pid_t inner = 0;
      if (grandchild) {
        inner = ::fork();
        if (inner == 0) {
          ::pause();
          ::_exit(0);
        }
      }
      (void)!::write(pipe_fds[1], &inner, sizeof inner);
      ::pause();
      ::_exit(0);
    }
    ::close(pipe_fds[1]);
    EXPECT_EQ(::read(pipe_fds[0], &grandchild_, sizeof grandchild_),
              static_cast<ssize_t>(sizeof grandchild_));
    ::close(pipe_fds[0]);
  }
  ~Sleeper() {
    ::kill(-pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  std::uint32_t pid() const { return static_cast<std::uint32_t>(pid_); }
  std::uint32_t grandchild() const { return static_cast<std::uint32_t>(grandchild_); }

 private:
  pid_t pid_ = 0;
  pid_t grandchild_ = 0;
};

const std::uint32_t kSelf = static_cast<std::uint32_t>(::getpid());
const std::uint32_t kUid = static_cast<std::uint32_t>(::geteuid());

TEST(CheckDescendant, TheClientItsChildrenAndTheirChildrenAreAccepted) {
  Sleeper child(true);
  EXPECT_TRUE(check_descendant(kSelf, kSelf, kUid).ok());
  EXPECT_TRUE(check_descendant(child.pid(), kSelf, kUid).ok());
  EXPECT_TRUE(check_descendant(child.grandchild(), kSelf, kUid).ok());
  EXPECT_TRUE(check_descendant(child.grandchild(), child.pid(), kUid).ok());
}

TEST(CheckDescendant, OthersProcessesAreRefusedWithTheReason) {
  Sleeper a(false);
  Sleeper b(true);
  for (const std::uint32_t pid : {1u, static_cast<std::uint32_t>(::getppid()), b.pid()}) {
    const Status s = check_descendant(pid, a.pid(), kUid);
    EXPECT_EQ(s.code(), ErrorCode::kPermissionDenied) << pid;
    EXPECT_EQ(s.message(), "holder_pid " + std::to_string(pid) + " is neither the client (pid " +
                               std::to_string(a.pid()) + ") nor a process it started");
  }
  // A parent is not its child's descendant.
  EXPECT_EQ(check_descendant(b.pid(), b.grandchild(), kUid).code(), ErrorCode::kPermissionDenied);
}

TEST(CheckDescendant, AProcessOfAnotherUidIsRefusedUnlessTheClientIsRoot) {
  Sleeper child(false);
  // The child runs as this test's uid; for a client of another uid it is not its own.
  const std::uint32_t other = kUid == 0 ? 4242 : kUid + 1;
  const Status s = check_descendant(child.pid(), kSelf, other);
  EXPECT_EQ(s.code(), ErrorCode::kPermissionDenied);
  EXPECT_EQ(s.message(), "holder_pid " + std::to_string(child.pid()) + " runs as uid " +
                             std::to_string(kUid) + ", not as the client's uid " +
                             std::to_string(other));
  EXPECT_TRUE(check_descendant(child.pid(), kSelf, 0).ok());  // root: any of its descendants
}

TEST(CheckDescendant, AProcessThatIsGoneIsRefused) {
  pid_t gone = ::fork();
  if (gone == 0) ::_exit(0);
  ASSERT_EQ(::waitpid(gone, nullptr, 0), gone);
  const Status s = check_descendant(static_cast<std::uint32_t>(gone), kSelf, kUid);
  EXPECT_EQ(s.code(), ErrorCode::kPermissionDenied);
  EXPECT_EQ(s.message(), "holder_pid " + std::to_string(gone) + " is not a running process");
}

}  // namespace
}  // namespace gpumgr::daemon
