// What `gpumgr status` and `gpumgr watch` show of a lease's use against its size: the USED
// and PEAK columns, unknown use, overuse and what the policy did, kinds and estimates, the
// device line's overuse and the bars; and that no client-chosen text reaches the terminal
// raw.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <sstream>
#include <string>
#include <vector>

#include "cli/render.h"
#include "gpumgr/units.h"

namespace gpumgr::cli {
namespace {

using std::chrono::seconds;

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The line that starts with `prefix`, or "" when there is none.
std::string line_starting(const std::string& text, const std::string& prefix) {
  for (const auto& line : lines_of(text)) {
    if (line.rfind(prefix, 0) == 0) return line;
  }
  return "";
}

// Two 24 GiB devices; on device 0 a 4 GiB lease whose holder uses 6 GiB (overused for 12.5 s,
// being terminated), a 2 GiB lease whose use cannot be attributed (unknown), and a lease on
// both devices with different use on each, sized by its kind's estimate.
Snapshot sample() {
  Snapshot s;
  s.source = "daemon at /run/gpumgr/gpumgr.sock";
  s.backend.name = "simulated";
  s.config.overuse.policy = OverusePolicy::kTerminate;
  s.config.overuse.grace_s = 10;
  s.config.overuse.tolerance_percent = 5;
  s.taken_at = std::chrono::system_clock::now();
  for (int i = 0; i < 2; ++i) {
    DeviceAccount d;
    d.info.index = i;
    d.info.name = "Simulated GPU (24 GiB)";
    d.info.total_bytes = 24 * kGiB;
    d.capacity_bytes = 24 * kGiB / 5 * 4;
    s.devices.push_back(d);
  }
  DeviceAccount& d0 = s.devices[0];
  d0.leased_bytes = 6 * kGiB + 6 * kGiB;
  d0.overuse_bytes = 2 * kGiB;
  d0.foreign_bytes = 1 * kGiB;
  d0.admissible_bytes = d0.capacity_bytes - d0.leased_bytes - d0.overuse_bytes - d0.foreign_bytes;
  d0.active_leases = 3;
  s.devices[1].leased_bytes = 6 * kGiB;
  s.devices[1].admissible_bytes = s.devices[1].capacity_bytes - 6 * kGiB;
  s.devices[1].active_leases = 1;

  LeaseInfo over;
  over.job_id = "over-job";
  over.kind = "sdxl-1024";
  over.devices = {0};
  over.bytes = 4 * kGiB;
  over.pid = 4242;
  over.uid = 1000;
  over.command = "python render.py";
  over.granted_at = s.taken_at - seconds(100);
  over.waited_s = 2.5;
  over.usage = {{0, 6 * kGiB, 6 * kGiB + kGiB / 2}};
  over.overused = true;
  over.overused_s = 12.5;
  over.enforcement = "terminating: exceeded its lease: used 6 GiB of 4 GiB on device 0";

  LeaseInfo unknown;
  unknown.job_id = "blind-job";
  unknown.devices = {0};
  unknown.bytes = 2 * kGiB;
  unknown.pid = 4300;
  unknown.uid = 1001;
  unknown.command = "python asr.py";
  unknown.granted_at = s.taken_at - seconds(5);
  unknown.usage = {{0, std::nullopt, std::nullopt}};

  LeaseInfo multi;
  multi.job_id = "multi-job";
  multi.kind = "llm-70b";
  multi.devices = {0, 1};
  multi.bytes = 6 * kGiB;
  multi.pid = 4400;
  multi.uid = 1000;
  multi.command = "vllm serve";
  multi.granted_at = s.taken_at - seconds(3725);
  multi.usage = {{0, 3 * kGiB, 3 * kGiB}, {1, 5 * kGiB, 5 * kGiB + kGiB / 2}};
  multi.estimate = "learned from 37 runs: p95 5.5 GiB + 10%";
  s.leases = {over, unknown, multi};

  s.stats.overuse_events = 3;
  s.stats.overuse_terminations = 1;
  s.stats.active_jobs = 3;
  s.stats.peak_active_jobs = 3;
  return s;
}

TEST(RenderUsageTest, LeaseRowsShowSizeUsedAndPeak) {
  const std::string text = render_status(sample(), {});
  EXPECT_EQ(line_starting(text, "  JOB "),
            "  JOB                 KIND        GPUS        SIZE      USED      PEAK     PID   UID"
            "     AGE  WAITED  COMMAND");
  EXPECT_EQ(line_starting(text, "  over-job"),
            "  over-job            sdxl-1024   0          4 GiB     6 GiB   6.5 GiB    4242  1000"
            "   1m40s    2.5s  python render.py");
  // Unknown is said, never shown as 0.
  EXPECT_EQ(line_starting(text, "  blind-job"),
            "  blind-job           -           0          2 GiB   unknown   unknown    4300  1001"
            "    5.0s    0.0s  python asr.py");
  // Several devices: the highest use and the highest peak of them.
  EXPECT_EQ(line_starting(text, "  multi-job"),
            "  multi-job           llm-70b     0,1        6 GiB     5 GiB   5.5 GiB    4400  1000"
            "   1h02m    0.0s  vllm serve");
  EXPECT_EQ(text.find(" 0 B "), std::string::npos) << text;
}

TEST(RenderUsageTest, OveruseEnforcementAndEstimateHaveLinesOfTheirOwn) {
  const std::string text = render_status(sample(), {});
  const auto lines = lines_of(text);
  const auto row = std::find_if(lines.begin(), lines.end(),
                                [](const std::string& l) { return l.rfind("  over-job", 0) == 0; });
  ASSERT_NE(row, lines.end());
  EXPECT_EQ(*(row + 1),
            "      OVER its lease for 12.5s: uses 6 GiB of 4 GiB; terminating: exceeded its lease: "
            "used 6 GiB of 4 GiB on device 0");
  EXPECT_EQ(*(row + 2),
            "  blind-job           -           0          2 GiB   unknown   unknown"
            "    4300  1001    5.0s    0.0s  python asr.py");
  EXPECT_EQ(line_starting(text, "      size "),
            "      size learned from 37 runs: p95 5.5 GiB + 10%");
  // A note of the policy's action stays after the holder is back under its lease.
  Snapshot s = sample();
  s.leases[0].overused = false;
  s.leases[0].overused_s = 0;
  const std::string after = render_status(s, {});
  EXPECT_EQ(line_starting(after, "      terminating"),
            "      terminating: exceeded its lease: used 6 GiB of 4 GiB on device 0");
  EXPECT_EQ(after.find("OVER"), std::string::npos) << after;
}

TEST(RenderUsageTest, DeviceLineConfigAndStatsCountOveruse) {
  const std::string text = render_status(sample(), {});
  EXPECT_EQ(line_starting(text, "    leased 12 GiB"),
            "    leased 12 GiB in 3 lease(s), overuse 2 GiB, outside 1 GiB, admissible 4.2 GiB");
  EXPECT_EQ(line_starting(text, "    memory bars:"),
            "    memory bars: # leased, ! overuse, % outside use, . free, | the capacity line");
  EXPECT_NE(text.find(", queue backfill, overuse policy terminate after 10.0s (tolerance 5%)\n"),
            std::string::npos)
      << text;
  EXPECT_EQ(line_starting(text, "       overuse"),
            "       overuse events 3, terminations 1; hold time mean 0.0s, max 0.0s; wait mean "
            "0.0s, max 0.0s");
}

TEST(RenderUsageTest, MemoryBarHasAGlyphForOveruse) {
  DeviceAccount d;
  d.info.total_bytes = 24 * kGiB;
  d.capacity_bytes = 19 * kGiB + kGiB / 5;  // cell 19 of 24
  d.leased_bytes = 6 * kGiB;
  d.overuse_bytes = 2 * kGiB;
  d.foreign_bytes = 3 * kGiB;
  EXPECT_EQ(memory_bar(d, 24, false), "[######!!%%%........|....]");
  EXPECT_EQ(memory_bar(d, 24, true).find("\033[35m!\033[0m"), 6 * 10 + 1u)
      << "overuse in magenta, after six leased cells of 10 bytes each";
}

TEST(RenderUsageTest, LeaseBarsShowUseAgainstTheLease) {
  LeaseInfo l;
  l.devices = {0};
  l.bytes = 10 * kGiB;
  l.usage = {{0, 4 * kGiB, 7 * kGiB}};
  EXPECT_EQ(lease_bar(l, 10, false), "[####:::...]");
  // Over: the bar spans the peak, '!' past the lease's end.
  l.bytes = 4 * kGiB;
  l.usage = {{0, 6 * kGiB, 6 * kGiB + kGiB / 2}};
  EXPECT_EQ(lease_bar(l, 10, false), "[######!!!:]");
  // Back under after a peak beyond the lease: '|' marks where the lease ends.
  l.usage = {{0, 2 * kGiB, 6 * kGiB}};
  EXPECT_EQ(lease_bar(l, 10, false), "[###::::|::]");
  l.usage = {{0, 0, 0}};
  EXPECT_EQ(lease_bar(l, 10, false), "[..........]");
  l.usage = {{0, std::nullopt, std::nullopt}};
  EXPECT_EQ(lease_bar(l, 10, false), "[ unknown  ]");
  l.usage.clear();  // nothing measured yet
  EXPECT_EQ(lease_bar(l, 10, false), "[ unknown  ]");
  // Colours: used green, beyond the lease magenta.
  l.usage = {{0, 6 * kGiB, 6 * kGiB}};
  const std::string coloured = lease_bar(l, 3, true);
  EXPECT_EQ(coloured, "[\033[32m#\033[0m\033[32m#\033[0m\033[35m!\033[0m]");
}

TEST(RenderUsageTest, LeaseUseTakesTheHighestDeviceAndFlagsPartialKnowledge) {
  LeaseInfo l;
  l.devices = {0, 1};
  l.usage = {{0, 3 * kGiB, 7 * kGiB}, {1, 5 * kGiB, 5 * kGiB}};
  LeaseUse use = lease_use(l);
  EXPECT_EQ(use.used_bytes, 5 * kGiB);
  EXPECT_EQ(use.peak_used_bytes, 7 * kGiB);
  EXPECT_FALSE(use.partial);
  l.usage[1] = {1, std::nullopt, std::nullopt};
  use = lease_use(l);
  EXPECT_EQ(use.used_bytes, 3 * kGiB);
  EXPECT_TRUE(use.partial);
  Snapshot s = sample();
  s.leases = {l};
  s.leases[0].job_id = "half-known";
  EXPECT_NE(line_starting(render_status(s, {}), "  half-known").find("   3 GiB+?   7 GiB+?"),
            std::string::npos)
      << render_status(s, {});
}

TEST(RenderUsageTest, WatchRowsGetBarsAndDropColumnsThatDoNotFit) {
  RenderOptions o;
  o.lease_bars = true;
  o.width = 150;
  std::string text = render_status(sample(), o);
  EXPECT_EQ(line_starting(text, "  over-job"),
            "  over-job            sdxl-1024   0          4 GiB     6 GiB   6.5 GiB  [######!!!:]"
            "    4242  1000   1m40s    2.5s  python render.py");
  EXPECT_EQ(line_starting(text, "  blind-job").substr(0, 84),
            "  blind-job           -           0          2 GiB   unknown   unknown  [ unknown  ]");
  EXPECT_NE(line_starting(text, "  bars: # used, ! beyond the lease, : peak; USED, PEAK"), "");
  // 120 columns: no room for UID and WAITED beside a useful piece of the command.
  o.width = 120;
  text = render_status(sample(), o);
  EXPECT_EQ(line_starting(text, "  JOB "),
            "  JOB                 KIND        GPUS        SIZE      USED      PEAK  USE OF LEASE"
            "     PID     AGE  COMMAND");
  EXPECT_EQ(line_starting(text, "  over-job"),
            "  over-job            sdxl-1024   0          4 GiB     6 GiB   6.5 GiB  [######!!!:]"
            "    4242   1m40s  python render.py");
  // `gpumgr status` keeps every column at any width.
  o.lease_bars = false;
  EXPECT_NE(line_starting(render_status(sample(), o), "  JOB ").find(" UID  "), std::string::npos);
}

TEST(RenderUsageTest, OveruseIsColouredWhenColoursAreOn) {
  RenderOptions o;
  o.color = true;
  const std::string text = render_status(sample(), o);
  EXPECT_NE(line_starting(text, "  over-job").find("\033[1;31m     6 GiB\033[0m"),
            std::string::npos);
  EXPECT_NE(text.find("\033[1;31mOVER its lease for 12.5s"), std::string::npos);
  EXPECT_NE(text.find("\033[35moveruse 2 GiB\033[0m"), std::string::npos);
  EXPECT_NE(line_starting(text, "  blind-job").find("\033[2m   unknown\033[0m"), std::string::npos);
}

TEST(RenderUsageTest, ContinuationLinesStillFitTheHeight) {
  Snapshot s = sample();
  std::vector<LeaseInfo> many;
  for (int i = 0; i < 20; ++i) {
    LeaseInfo l = s.leases[i % 3];
    l.job_id = "job-" + std::to_string(i);
    many.push_back(l);
  }
  s.leases = many;
  // 19 lines are the least that keeps every section (no lease rows, "... 20 more").
  for (const int height : {19, 20, 25, 31, 40}) {
    RenderOptions o;
    o.height = height;
    o.lease_bars = true;
    const std::string text = render_status(s, o);
    EXPECT_LE(static_cast<int>(std::count(text.begin(), text.end(), '\n')), height) << text;
    EXPECT_NE(text.find("STATS"), std::string::npos) << height;
    EXPECT_NE(text.find(" more\n"), std::string::npos) << height;
  }
  RenderOptions tiny;
  tiny.height = 12;
  const std::string text = render_status(s, tiny);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 12) << text;
  EXPECT_NE(text.find("more lines: enlarge the terminal\n"), std::string::npos) << text;
}

// Client-chosen text: job ids, kinds, commands. The daemon refuses control characters in job
// ids and kinds, but commands are any bytes, and an older or hostile daemon may send anything.
TEST(RenderUsageTest, AResidentSaysHowManyJobsUseItAndAJobBesideItNamesIt) {
  Snapshot s = sample();
  s.leases[1].revocable = "resident";
  s.leases[1].resident = "llama";
  s.leases[1].in_use_by = 2;
  s.leases[2].beside_resident = "llama";
  std::string text = render_status(s, {});
  EXPECT_NE(text.find("\n      revocable: resident 'llama', in use by 2 jobs\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("\n      beside resident 'llama'\n"), std::string::npos) << text;
  s.leases[1].in_use_by = 1;
  text = render_status(s, {});
  EXPECT_NE(text.find("\n      revocable: resident 'llama', in use by 1 job\n"), std::string::npos)
      << text;
  s.leases[1].in_use_by = 0;  // idle: nothing said of use
  text = render_status(s, {});
  EXPECT_NE(text.find("\n      revocable: resident 'llama'\n"), std::string::npos) << text;
}

Snapshot hostile() {
  Snapshot s = sample();
  s.source = "daemon at /tmp/\x1b[31mred.sock";
  s.devices[0].info.name = "GPU\r\nFAKE LINE";
  s.devices[1].info.healthy = false;
  s.devices[1].info.health_reason = "lost\x07\x07";
  s.leases[0].job_id = "job\x1b[2Jid";
  s.leases[0].kind =
      "kind\xc2\x9b"
      "31m";
  s.leases[0].command = "\x1b]0;owned\x07\x1b[2J";
  s.leases[0].enforcement = "terminating \x1b[5m";
  s.leases[2].estimate = "learned\x1b[8m";
  s.leases[1].command = "name\xff\xfe\x7f";
  s.leases[2].beside_resident = "m\x1b[2J";
  WaiterInfo w;
  w.job_id = "queued\x1b(0";
  w.command = "tab\there\x1b[?1049h";
  s.queue = {w};
  return s;
}

TEST(RenderUsageTest, NoClientTextReachesTheTerminalRaw) {
  for (const bool lease_bars : {false, true}) {
    RenderOptions o;
    o.lease_bars = lease_bars;
    o.width = 200;
    const std::string text = render_status(hostile(), o);
    for (std::size_t i = 0; i < text.size(); ++i) {
      const auto c = static_cast<unsigned char>(text[i]);
      ASSERT_TRUE(c == '\n' || (c >= 0x20 && c != 0x7f)) << "byte " << int(c) << " at " << i;
      ASSERT_FALSE(c == 0xc2 && i + 1 < text.size() &&
                   (static_cast<unsigned char>(text[i + 1]) & 0xe0) == 0x80)
          << "a C1 control at " << i;
      ASSERT_FALSE(c >= 0xfe) << "an invalid byte at " << i;
    }
    EXPECT_NE(text.find(R"(  \x1b]0;owned\x07\x1b[2J)"), std::string::npos) << text;
    EXPECT_NE(text.find(R"(job\x1b[2Jid)"), std::string::npos) << text;
    EXPECT_NE(text.find(R"(kind\u009b3~)"), std::string::npos) << text;  // cut at 12 columns
    EXPECT_NE(text.find(R"(GPU\r\nFAKE LINE)"), std::string::npos) << text;
    EXPECT_NE(text.find(R"(UNHEALTHY: lost\x07\x07)"), std::string::npos) << text;
    EXPECT_NE(text.find(R"(name\xff\xfe\x7f)"), std::string::npos) << text;
    EXPECT_NE(text.find(R"(tab\there\x1b[?1049h)"), std::string::npos) << text;
    EXPECT_NE(text.find(R"(terminating \x1b[5m)"), std::string::npos) << text;
    EXPECT_NE(text.find(R"(size learned\x1b[8m)"), std::string::npos) << text;
    EXPECT_NE(text.find(R"(beside resident 'm\x1b[2J')"), std::string::npos) << text;
    EXPECT_NE(text.find(R"(daemon at /tmp/\x1b[31mred.sock)"), std::string::npos) << text;
  }
}

TEST(RenderUsageTest, WithColoursTheOnlyEscapesAreOurColours) {
  RenderOptions o;
  o.color = true;
  o.lease_bars = true;
  o.width = 200;
  const std::string text = render_status(hostile(), o);
  std::size_t escapes = 0;
  for (std::size_t i = text.find('\033'); i != std::string::npos; i = text.find('\033', i + 1)) {
    ++escapes;
    // ESC [ digits and semicolons m: select graphic rendition, nothing else.
    std::size_t j = i + 1;
    ASSERT_LT(j, text.size());
    ASSERT_EQ(text[j], '[') << text.substr(i, 12);
    ++j;
    while (j < text.size() && (std::isdigit(static_cast<unsigned char>(text[j])) || text[j] == ';'))
      ++j;
    ASSERT_LT(j, text.size());
    ASSERT_EQ(text[j], 'm') << text.substr(i, 12);
  }
  EXPECT_GT(escapes, 0u);
  EXPECT_EQ(text.find('\a'), std::string::npos);
}

TEST(RenderUsageTest, WideCharactersArePaddedByColumns) {
  Snapshot s = sample();
  s.leases.resize(1);
  s.leases[0].job_id = "模型-1";          // six columns in eight bytes
  s.leases[0].kind = "扩散模型超大尺寸";  // 16 columns: cut to fit 12, between characters
  const std::string row = line_starting(render_status(s, {}), "  模型-1");
  const std::string want = "  模型-1" + std::string(14, ' ') + "扩散模型超~ 0     ";
  EXPECT_EQ(row.substr(0, want.size()), want);
}

TEST(RenderUsers, EachUsersUseAgainstItsQuotaAndWhatAWaiterWaitsFor) {
  Snapshot s;
  WaiterInfo w;
  w.job_id = "train-2";
  w.bytes = 2 * kGiB;
  w.uid = 1000;
  w.quota_wait = "uid 1000 holds 6 GiB of its 8 GiB (quota.user.1000.max_vram)\x1b[2J";
  s.queue = {w};
  s.users = {UserUsage{1000, 6 * kGiB, 2, 1, 8 * kGiB, 3, 5400.4},
             UserUsage{1001, 512 * kMiB, 1, 0, std::nullopt, std::nullopt, 0.25}};
  const std::string text = render_status(s, {});
  EXPECT_EQ(line_starting(text, "      waits for its quota: "),
            "      waits for its quota: uid 1000 holds 6 GiB of its 8 GiB "
            "(quota.user.1000.max_vram)\\x1b[2J")
      << text;
  EXPECT_NE(text.find("USERS (2)"), std::string::npos) << text;
  const std::string a = line_starting(text, "  1000 ");
  EXPECT_EQ(a, "  1000    6 GiB / 8 GiB           2 / 3                1    5400 GiB-s") << text;
  const std::string b = line_starting(text, "  1001 ");
  EXPECT_EQ(b, "  1001    512 MiB / -             1 / -                0     0.2 GiB-s") << text;
  // No users (an older daemon): no section.
  s.users.clear();
  EXPECT_EQ(render_status(s, {}).find("USERS"), std::string::npos);
}

}  // namespace
}  // namespace gpumgr::cli
