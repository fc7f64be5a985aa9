// The daemon's state directory (src/state/state_dir.h): where it is by default, and how
// prepare_state_dir creates it or says why it cannot.
#include "state/state_dir.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "test_util.h"

namespace gpumgr::state {
namespace {

namespace fs = std::filesystem;
using gpumgr::testing::TempDir;

unsigned mode_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

TEST(StateDirTest, TheDefaultFollowsRootThenXdgThenHome) {
  EXPECT_EQ(default_state_dir_for(true, "/x/state", "/home/ann"), "/var/lib/gpumgr");
  EXPECT_EQ(default_state_dir_for(false, "/x/state", "/home/ann"), "/x/state/gpumgr");
  EXPECT_EQ(default_state_dir_for(false, "/x/state/", "/home/ann"), "/x/state/gpumgr");
  // XDG_STATE_HOME must be absolute (the XDG rule): a relative one is ignored, as is "".
  EXPECT_EQ(default_state_dir_for(false, "rel/state", "/home/ann"),
            "/home/ann/.local/state/gpumgr");
  EXPECT_EQ(default_state_dir_for(false, "", "/home/ann/"), "/home/ann/.local/state/gpumgr");
  EXPECT_EQ(default_state_dir_for(false, nullptr, "/home/ann"), "/home/ann/.local/state/gpumgr");
  EXPECT_EQ(default_state_dir_for(false, "/", "/home/ann"), "/gpumgr");
  EXPECT_EQ(default_state_dir_for(false, nullptr, "/"), "/.local/state/gpumgr");
  EXPECT_EQ(default_state_dir_for(false, nullptr, ""), "");
}

TEST(StateDirTest, TheDefaultReadsTheEnvironment) {
  testing::EnvGuard xdg("XDG_STATE_HOME", "/srv/xdg-state");
  testing::EnvGuard home("HOME", "/home/someone");
  if (::geteuid() == 0) {
    EXPECT_EQ(default_state_dir(), "/var/lib/gpumgr");
  } else {
    EXPECT_EQ(default_state_dir(), "/srv/xdg-state/gpumgr");
    testing::EnvGuard no_xdg("XDG_STATE_HOME", std::nullopt);
    EXPECT_EQ(default_state_dir(), "/home/someone/.local/state/gpumgr");
  }
}

TEST(StateDirTest, CreatesTheFolderAndItsParentsPrivately) {
  TempDir tmp("gpumgr-state-dir");
  const std::string dir = tmp.file("a/b/gpumgr");
  const mode_t old = ::umask(0);  // 0700 must not depend on the umask being 022
  const Status s = prepare_state_dir(dir);
  ::umask(old);
  ASSERT_TRUE(s.ok()) << s.to_string();
  EXPECT_TRUE(fs::is_directory(dir));
  EXPECT_EQ(mode_of(dir), 0700u);
  EXPECT_EQ(mode_of(tmp.file("a")), 0700u);
  EXPECT_EQ(mode_of(tmp.file("a/b")), 0700u);
  // Again: nothing to do, still fine; a trailing slash is the same folder.
  EXPECT_TRUE(prepare_state_dir(dir).ok());
  EXPECT_TRUE(prepare_state_dir(dir + "/").ok());
}

TEST(StateDirTest, AnExistingFolderKeepsItsMode) {
  TempDir tmp("gpumgr-state-dir");
  const std::string dir = tmp.file("shared");
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(dir.c_str(), 0755), 0);
  EXPECT_TRUE(prepare_state_dir(dir).ok());
  EXPECT_EQ(mode_of(dir), 0755u);
}

TEST(StateDirTest, AFileInTheWayIsAClearError) {
  TempDir tmp("gpumgr-state-dir");
  const std::string file = tmp.file("state");
  std::ofstream(file) << "x";
  Status s = prepare_state_dir(file);
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(s.message().find(file + " is a file, not a folder"), std::string::npos) << s.message();
  // A file as a parent: named as the culprit.
  s = prepare_state_dir(file + "/gpumgr");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(s.message().find(file + "/gpumgr"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(file + " is a file, not a folder"), std::string::npos) << s.message();
}

TEST(StateDirTest, AFolderThatCannotBeCreatedGivesTheErrnoText) {
  // /proc refuses new folders, even to root.
  Status s = prepare_state_dir("/proc/gpumgr-state-dir-test/inner");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("cannot create the state folder /proc/gpumgr-state-dir-test/inner: "
                             "mkdir /proc/gpumgr-state-dir-test: "),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find(std::strerror(ENOENT)), std::string::npos) << s.message();

  TempDir tmp("gpumgr-state-dir");
  const std::string dir = tmp.file(std::string(300, 'n'));  // longer than NAME_MAX
  s = prepare_state_dir(dir);
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(s.message().find(dir), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("File name too long"), std::string::npos) << s.message();

  s = prepare_state_dir("");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("--state-dir"), std::string::npos) << s.message();
}

TEST(StateDirTest, AFolderWeCannotWriteIsAClearError) {
  if (::geteuid() == 0) GTEST_SKIP() << "root may write to any folder";
  TempDir tmp("gpumgr-state-dir");
  const std::string dir = tmp.file("readonly");
  ASSERT_EQ(::mkdir(dir.c_str(), 0500), 0);
  Status s = prepare_state_dir(dir);
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(s.message().find(dir + " is not writable"), std::string::npos) << s.message();
  s = prepare_state_dir(dir + "/inner");
  EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("Permission denied"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace gpumgr::state
