// read_small_file: whole small files, a cut at the limit, and no exception for files that
// vanish or cannot be read (a /proc entry of a process that has exited).
#include "util/small_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <string>

namespace gpumgr {
namespace {

class SmallFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "small_file_test_" + std::to_string(::getpid());
  }
  void TearDown() override { std::remove(path_.c_str()); }
  void write(const std::string& bytes) {
    std::ofstream out(path_, std::ios::binary);
    out << bytes;
  }
  std::string path_;
};

TEST_F(SmallFileTest, ReadsTheWholeFileAcrossSeveralReads) {
  std::string bytes(10000, 'x');  // more than one 4 KiB read
  bytes[0] = 'a';
  bytes[9999] = 'z';
  bytes[5000] = '\0';
  write(bytes);
  EXPECT_EQ(read_small_file(path_), bytes);
}

TEST_F(SmallFileTest, AnEmptyFileIsAnEmptyString) {
  write("");
  const auto text = read_small_file(path_);
  ASSERT_TRUE(text.has_value());
  EXPECT_EQ(*text, "");
}

TEST_F(SmallFileTest, StopsAtTheLimit) {
  write("0123456789");
  EXPECT_EQ(read_small_file(path_, 4), "0123");
  EXPECT_EQ(read_small_file(path_, 10), "0123456789");
  EXPECT_EQ(read_small_file(path_, 11), "0123456789");
}

TEST_F(SmallFileTest, AMissingFileOrADirectoryIsNothing) {
  EXPECT_EQ(read_small_file(path_ + ".missing"), std::nullopt);
  EXPECT_EQ(read_small_file("/"), std::nullopt);  // read(2) on a directory fails
}

// The daemon reads a lease holder's command line while the holder may be dying: opened
// before the exit, the read fails with ESRCH (std::ifstream throws there).
TEST(SmallFileProcTest, AProcessExitingBetweenOpenAndReadIsNothingNotAnException) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::pause();
    ::_exit(0);
  }
  const std::string path = "/proc/" + std::to_string(child) + "/cmdline";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_EQ(read_open_file(fd), std::nullopt);
  ::close(fd);
}

TEST(SmallFileProcTest, TheCommandLineOfAnExitedProcessIsNothingNotAnException) {
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  const std::string path = "/proc/" + std::to_string(child) + "/cmdline";
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_EQ(read_small_file(path), std::nullopt);
  // This process's own command line is there and starts with the test binary's path.
  const auto self = read_small_file("/proc/self/cmdline");
  ASSERT_TRUE(self.has_value());
  EXPECT_NE(self->find("unit_tests"), std::string::npos);
}

}  // namespace
}  // namespace gpumgr
