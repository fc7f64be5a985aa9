// GPUMGR_SIMULATE_PROCESSES (SimulatedBackend::set_processes_file): per-process use on
// simulated devices scripted by a file that is re-read at every query.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "test_util.h"

namespace gpumgr {
namespace {

namespace fs = std::filesystem;
using testing::EnvGuard;

class SimulatedProcessesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "gpumgr-sim-procs-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    path_ = (dir_ / "processes").string();
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  void write(const std::string& text) {
    // Written to a temporary name and renamed, as a demo script would: never half a file.
    const std::string tmp = path_ + ".tmp";
    std::ofstream(tmp, std::ios::trunc) << text;
    fs::rename(tmp, path_);
  }

  // pid -> bytes on one device, from a query.
  static std::vector<std::pair<std::uint32_t, std::uint64_t>> procs(const DeviceInfo& d) {
    std::vector<std::pair<std::uint32_t, std::uint64_t>> out;
    for (const auto& p : d.processes) out.emplace_back(p.pid, p.used_bytes);
    std::sort(out.begin(), out.end());
    return out;
  }
  static std::vector<DeviceInfo> query(SimulatedBackend& sim) {
    auto q = sim.query();
    EXPECT_TRUE(q.ok()) << q.status().to_string();
    return q.ok() ? std::move(q).value() : std::vector<DeviceInfo>{};
  }

  using Procs = std::vector<std::pair<std::uint32_t, std::uint64_t>>;
  fs::path dir_;
  std::string path_;
};

TEST_F(SimulatedProcessesTest, AGoodFileWithCommentsAndUnitsShowsPerDeviceAndPid) {
  write(
      "# the demo's workers\n"
      "0 100 6GiB   # sdxl worker\n"
      "\n"
      "   \n"
      "1 200 512MiB\n"
      "0 300 1000\n"  // a bare integer: MiB
      "\t1\t201\t3GB\r\n"
      "1 202 0\n"  // 0: listed, uses nothing
      "# the end");
  SimulatedBackend sim({24 * kGiB, 80 * kGiB});
  ASSERT_TRUE(sim.set_processes_file(path_).ok()) << sim.processes_file_error();
  const auto devices = query(sim);
  ASSERT_EQ(devices.size(), 2u);
  EXPECT_EQ(procs(devices[0]), (Procs{{100, 6 * kGiB}, {300, 1000 * kMiB}}));
  EXPECT_EQ(procs(devices[1]), (Procs{{200, 512 * kMiB}, {201, 3'000'000'000ULL}}));
  EXPECT_TRUE(devices[0].processes_known);
  EXPECT_EQ(devices[0].used_bytes, 6 * kGiB + 1000 * kMiB);
  EXPECT_EQ(devices[0].free_bytes, 24 * kGiB - (6 * kGiB + 1000 * kMiB));
  EXPECT_EQ(devices[1].used_bytes, 512 * kMiB + 3'000'000'000ULL);
  EXPECT_EQ(devices[1].free_bytes, 80 * kGiB - (512 * kMiB + 3'000'000'000ULL));
  EXPECT_EQ(sim.processes_file_error(), "");
}

TEST_F(SimulatedProcessesTest, ScriptedUseAddsToSetProcessUsageAndOutsideUse) {
  write("0 100 6GiB\n0 101 1GiB\n");
  SimulatedBackend sim({24 * kGiB});
  ASSERT_TRUE(sim.set_process_usage(0, 100, 2 * kGiB).ok());
  ASSERT_TRUE(sim.set_process_usage(0, 50, 3 * kGiB).ok());
  ASSERT_TRUE(sim.set_foreign_usage(0, kGiB).ok());
  ASSERT_TRUE(sim.set_processes_file(path_).ok());
  const auto devices = query(sim);
  ASSERT_EQ(devices.size(), 1u);
  EXPECT_EQ(procs(devices[0]), (Procs{{0, kGiB}, {50, 3 * kGiB}, {100, 8 * kGiB}, {101, kGiB}}));
  EXPECT_EQ(devices[0].used_bytes, 13 * kGiB);
  // More than the device holds: used is capped at the total, never more.
  write("0 100 30GiB\n");
  EXPECT_EQ(query(sim)[0].used_bytes, 24 * kGiB);
  EXPECT_EQ(query(sim)[0].free_bytes, 0u);
}

TEST_F(SimulatedProcessesTest, TheFileIsReReadAtEveryQuery) {
  write("0 100 1GiB\n");
  SimulatedBackend sim({24 * kGiB, 24 * kGiB});
  ASSERT_TRUE(sim.set_processes_file(path_).ok());
  EXPECT_EQ(procs(query(sim)[0]), (Procs{{100, kGiB}}));
  write("0 100 2GiB\n1 7 5GiB\n");
  auto devices = query(sim);
  EXPECT_EQ(procs(devices[0]), (Procs{{100, 2 * kGiB}}));
  EXPECT_EQ(procs(devices[1]), (Procs{{7, 5 * kGiB}}));
  write("# nothing now\n");
  devices = query(sim);
  EXPECT_TRUE(devices[0].processes.empty());
  EXPECT_EQ(devices[1].used_bytes, 0u);
  write("1 8 1GiB\n");
  fs::remove(path_);  // removed: nothing is listed any more, and that is not an error
  devices = query(sim);
  EXPECT_TRUE(devices[1].processes.empty());
  EXPECT_EQ(sim.processes_file_error(), "");
  // Scripting stops with an empty path.
  write("0 100 1GiB\n");
  ASSERT_TRUE(sim.set_processes_file("").ok());
  EXPECT_TRUE(query(sim)[0].processes.empty());
}

TEST_F(SimulatedProcessesTest, AMissingFileListsNothingUntilItAppears) {
  SimulatedBackend sim({24 * kGiB});
  EXPECT_TRUE(sim.set_processes_file(path_).ok());
  EXPECT_TRUE(query(sim)[0].processes.empty());
  EXPECT_EQ(sim.processes_file_error(), "");
  write("0 4242 3GiB\n");
  EXPECT_EQ(procs(query(sim)[0]), (Procs{{4242, 3 * kGiB}}));
}

TEST_F(SimulatedProcessesTest, EachBadLineKeepsThePreviousContentsAndNamesTheLine) {
  struct Case {
    const char* line;
    const char* problem;
  };
  const std::vector<Case> cases = {
      {"2 100 1GiB", "device 2 does not exist (there are 2 simulated devices, 0..1)"},
      {"x 100 1GiB", "device 'x' is not a device index"},
      {"-1 100 1GiB", "device '-1' is not a device index"},
      {"0 0 1GiB", "pid '0' is not a positive integer"},
      {"0 abc 1GiB", "pid 'abc' is not a positive integer"},
      {"0 4294967296 1GiB", "pid '4294967296' is not a positive integer"},
      {"0 100 1e3GiB", "bad size '1e3GiB': exponents are not accepted"},
      {"0 100 -1GiB", "bad size '-1GiB'"},
      {"0 100 10gib", "unknown unit 'gib'"},
      {"0 100", "missing field SIZE"},
      {"0", "missing field PID"},
      {"0 100 1GiB extra", "extra field 'extra'"},
      {"0 100 1GiB", "device 0 pid 100 is already listed on line 1"},
  };
  SimulatedBackend sim({24 * kGiB, 24 * kGiB});
  const std::string good = "0 100 6GiB\n1 300 2GiB\n";
  for (const Case& c : cases) {
    SCOPED_TRACE(c.line);
    write(good);
    ASSERT_TRUE(sim.set_processes_file(path_).ok());
    ASSERT_EQ(procs(query(sim)[0]), (Procs{{100, 6 * kGiB}}));
    // The bad line is line 3, after a comment: the good lines before it do not count either.
    write("0 100 9GiB\n# a comment\n" + std::string(c.line) + "\n");
    ::testing::internal::CaptureStderr();
    const auto devices = query(sim);  // still succeeds
    const std::string printed = ::testing::internal::GetCapturedStderr();
    ASSERT_EQ(devices.size(), 2u);
    EXPECT_EQ(procs(devices[0]), (Procs{{100, 6 * kGiB}}));  // the previous contents
    EXPECT_EQ(procs(devices[1]), (Procs{{300, 2 * kGiB}}));
    EXPECT_EQ(devices[0].used_bytes, 6 * kGiB);
    const std::string error = sim.processes_file_error();
    EXPECT_NE(error.find("processes file " + path_ + ", line 3: "), std::string::npos) << error;
    EXPECT_NE(error.find(c.problem), std::string::npos) << error;
    EXPECT_NE(printed.find(error), std::string::npos) << printed;
    // And set_processes_file on the bad file says so too.
    const Status s = sim.set_processes_file(path_);
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(s.message(), error);
  }
}

TEST_F(SimulatedProcessesTest, AnErrorIsPrintedOncePerDistinctText) {
  SimulatedBackend sim({24 * kGiB});
  ASSERT_TRUE(sim.set_processes_file(path_).ok());
  write("0 0 1GiB\n");
  ::testing::internal::CaptureStderr();
  for (int i = 0; i < 5; ++i) (void)query(sim);
  write("0 1 1XB\n");
  for (int i = 0; i < 5; ++i) (void)query(sim);
  write("0 1 1GiB\n");  // fixed: the error clears
  (void)query(sim);
  const std::string clean = sim.processes_file_error();
  write("0 1 1XB\n");  // broken again: printed again
  (void)query(sim);
  const std::string printed = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(clean, "");
  const auto count = [&](const std::string& needle) {
    std::size_t n = 0;
    for (std::size_t at = printed.find(needle); at != std::string::npos;
         at = printed.find(needle, at + 1)) {
      ++n;
    }
    return n;
  };
  EXPECT_EQ(count("pid '0' is not a positive integer"), 1u) << printed;
  EXPECT_EQ(count("unknown unit 'XB'"), 2u) << printed;
  EXPECT_EQ(procs(query(sim)[0]), (Procs{{1, kGiB}}));
}

TEST_F(SimulatedProcessesTest, AnUnreadableFileIsAnErrorThatKeepsThePreviousContents) {
  write("0 100 1GiB\n");
  SimulatedBackend sim({24 * kGiB});
  ASSERT_TRUE(sim.set_processes_file(path_).ok());
  ASSERT_EQ(procs(query(sim)[0]), (Procs{{100, kGiB}}));
  fs::remove(path_);
  fs::create_directory(path_);  // a folder where the file was
  ::testing::internal::CaptureStderr();
  const auto devices = query(sim);
  (void)::testing::internal::GetCapturedStderr();
  ASSERT_EQ(devices.size(), 1u);
  EXPECT_EQ(procs(devices[0]), (Procs{{100, kGiB}}));
  EXPECT_NE(sim.processes_file_error().find("cannot read processes file " + path_ +
                                            ": not a regular file"),
            std::string::npos)
      << sim.processes_file_error();
}

TEST_F(SimulatedProcessesTest, TheEnvironmentVariableReachesTheBackendThroughTheFactory) {
  write("1 4242 5GiB\n");
  EnvGuard sim_env("GPUMGR_SIMULATE", std::nullopt);
  EnvGuard procs_env("GPUMGR_SIMULATE_PROCESSES", path_);
  auto selection = open_backend("auto", "2x24GiB");
  ASSERT_TRUE(selection.ok()) << selection.status().to_string();
  EXPECT_NE(selection->note.find("processes from " + path_), std::string::npos) << selection->note;
  auto devices = selection->backend->query();
  ASSERT_TRUE(devices.ok());
  EXPECT_TRUE((*devices)[0].processes.empty());
  EXPECT_EQ(procs((*devices)[1]), (Procs{{4242, 5 * kGiB}}));

  // Through a Manager: a pid that holds no lease is outside use, and it follows the file.
  ManagerOptions o = testing::local_options();
  o.simulate = "2x24GiB";
  auto m = Manager::create(o);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ(testing::snap(**m).devices[1].foreign_bytes, 5 * kGiB);
  write("1 4242 7GiB\n");
  EXPECT_TRUE(
      testing::wait_until([&] { return testing::snap(**m).devices[1].foreign_bytes == 7 * kGiB; }));

  // A bad file at start is an error naming the variable, the file and the line.
  write("# header\n0 4242\n");
  auto bad = open_backend("auto", "2x24GiB");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("GPUMGR_SIMULATE_PROCESSES: processes file " + path_ +
                                        ", line 2: missing field SIZE"),
            std::string::npos)
      << bad.status().message();

  // Without simulated devices it does not apply (the CPU device here).
  auto cpu = open_backend("cpu", "2x24GiB");
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ(cpu->note.find("processes from"), std::string::npos);
}

}  // namespace
}  // namespace gpumgr
