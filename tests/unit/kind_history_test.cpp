// KindHistory (src/state/kind_history.h): the estimate rule as pure functions, then the
// SQLite store: round trips, persistence, corrupt and foreign files moved aside, bad folders,
// and crash safety against a writer killed with SIGKILL at random moments.
#include "state/kind_history.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <thread>

#include "gpumgr/units.h"
#include "test_util.h"

namespace gpumgr::state {
namespace {

namespace fs = std::filesystem;
using gpumgr::testing::TempDir;
using std::chrono::seconds;
using std::chrono::system_clock;

// A fresh folder under the system temp dir, removed with everything in it.

KindRun run(std::string kind, std::optional<std::uint64_t> peak, double hold_s = 1,
            std::int64_t ended_unix = 1'790'000'000, bool overused = false) {
  KindRun r;
  r.kind = std::move(kind);
  r.peak_bytes = peak;
  r.leased_bytes = 8 * kGiB;
  r.hold_s = hold_s;
  r.overused = overused;
  r.ended_at = system_clock::time_point(seconds(ended_unix));
  return r;
}

std::vector<KindRun> runs_with_peaks(const std::string& kind,
                                     const std::vector<std::uint64_t>& peaks) {
  std::vector<KindRun> out;
  for (std::size_t i = 0; i < peaks.size(); ++i) {
    out.push_back(run(kind, peaks[i], static_cast<double>(i + 1),
                      1'790'000'000 + static_cast<std::int64_t>(i)));
  }
  return out;
}

std::unique_ptr<KindHistory> open_ok(const std::string& path, std::string* note = nullptr) {
  auto h = KindHistory::open(path, note);
  EXPECT_TRUE(h.ok()) << h.status().to_string();
  return h.ok() ? std::move(h).value() : nullptr;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// The files next to `path` named `path.corrupt-*` (not their side files).
std::vector<std::string> moved_aside(const std::string& path) {
  std::vector<std::string> out;
  const std::string prefix = fs::path(path).filename().string() + ".corrupt-";
  for (const auto& entry : fs::directory_iterator(fs::path(path).parent_path())) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && name.find('-', prefix.size()) == std::string::npos) {
      out.push_back(entry.path().string());
    }
  }
  return out;
}

// Runs SQL on a database with SQLite directly (another program's view of the file).
void sql(const std::string& path, const std::string& statements) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  const int rc = sqlite3_exec(db, statements.c_str(), nullptr, nullptr, &err);
  EXPECT_EQ(rc, SQLITE_OK) << (err != nullptr ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
}

std::string sql_text(const std::string& path, const std::string& query) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  std::string out;
  if (sqlite3_prepare_v2(db, query.c_str(), -1, &st, nullptr) == SQLITE_OK) {
    while (sqlite3_step(st) == SQLITE_ROW) {
      const auto* t = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
      out += (out.empty() ? "" : ",") + std::string(t != nullptr ? t : "NULL");
    }
  } else {
    out = std::string("error: ") + sqlite3_errmsg(db);
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}

// ---- The pure functions ----

TEST(KindHistoryRuleTest, NearestRankIsTheRankCeilQTimesN) {
  std::vector<double> one_to_twenty(20);
  std::iota(one_to_twenty.begin(), one_to_twenty.end(), 1.0);
  std::shuffle(one_to_twenty.begin(), one_to_twenty.end(), std::mt19937(7));
  EXPECT_EQ(nearest_rank(one_to_twenty, 0.95), 19.0);  // not 19.05 (interpolation)
  EXPECT_EQ(nearest_rank(one_to_twenty, 0.5), 10.0);   // not 10.5
  EXPECT_EQ(nearest_rank(one_to_twenty, 1.0), 20.0);
  EXPECT_EQ(nearest_rank(one_to_twenty, 0.01), 1.0);

  std::vector<double> hundred(100);
  std::iota(hundred.begin(), hundred.end(), 1.0);
  EXPECT_EQ(nearest_rank(hundred, 0.95), 95.0);
  EXPECT_EQ(nearest_rank(hundred, 0.07), 7.0);  // 0.07 * 100 is 7.000000000000001 in doubles
  std::vector<double> ten(10);
  std::iota(ten.begin(), ten.end(), 1.0);
  EXPECT_EQ(nearest_rank(ten, 0.95), 10.0);  // ceil(9.5) = 10
  EXPECT_EQ(nearest_rank(ten, 0.5), 5.0);

  EXPECT_EQ(nearest_rank({42.5}, 0.95), 42.5);
  EXPECT_EQ(nearest_rank({42.5}, 0.5), 42.5);
  EXPECT_EQ(nearest_rank({}, 0.95), std::nullopt);
}

TEST(KindHistoryRuleTest, FewerThanMinRunsGiveNoEstimateAndSayHowMany) {
  const auto runs = runs_with_peaks("sdxl", {2 * kGiB, 3 * kGiB, 1 * kGiB});
  const KindEstimate e = summarize_kind("sdxl", runs);
  EXPECT_EQ(e.kind, "sdxl");
  EXPECT_EQ(e.runs, 3u);
  EXPECT_EQ(e.measured_runs, 3u);
  EXPECT_FALSE(e.estimate_bytes.has_value());
  EXPECT_EQ(e.estimate_note, "kind 'sdxl' has 3 measured runs; 5 are needed for an estimate");
  EXPECT_EQ(e.peak_p50_bytes, 2 * kGiB);
  EXPECT_EQ(e.peak_max_bytes, 3 * kGiB);
  EXPECT_EQ(e.last_seen, system_clock::time_point(seconds(1'790'000'002)));

  const KindEstimate none = summarize_kind("empty", {});
  EXPECT_EQ(none.runs, 0u);
  EXPECT_FALSE(none.peak_p95_bytes.has_value());
  EXPECT_FALSE(none.hold_p50_s.has_value());
  EXPECT_EQ(none.estimate_note, "kind 'empty' has 0 measured runs; 5 are needed for an estimate");
  EXPECT_EQ(summarize_kind("one", runs_with_peaks("one", {kGiB})).estimate_note,
            "kind 'one' has 1 measured run; 5 are needed for an estimate");
}

TEST(KindHistoryRuleTest, ExactlyMinRunsGiveTheP95PlusMarginInWholeMiB) {
  // p95 of 5 values: rank ceil(4.75) = 5, the largest: 5 GiB; + 10% = 5632 MiB exactly.
  const auto runs = runs_with_peaks("flux", {3 * kGiB, 1 * kGiB, 5 * kGiB, 2 * kGiB, 4 * kGiB});
  const KindEstimate e = summarize_kind("flux", runs);
  EXPECT_EQ(e.measured_runs, 5u);
  EXPECT_EQ(e.peak_p95_bytes, 5 * kGiB);
  EXPECT_EQ(e.peak_p50_bytes, 3 * kGiB);
  ASSERT_TRUE(e.estimate_bytes.has_value());
  EXPECT_EQ(*e.estimate_bytes, 5632 * kMiB);
  EXPECT_EQ(e.estimate_note, "learned from 5 runs: p95 5 GiB + 10%");
  EXPECT_EQ(e.hold_p50_s, 3.0);  // holds are 1..5 s
  EXPECT_EQ(e.hold_p95_s, 5.0);
}

TEST(KindHistoryRuleTest, OnlyTheLastFiftyRunsCount) {
  std::vector<KindRun> runs;
  // 30 old runs, huge and overused: they must not move any quantile or the estimate.
  for (int i = 0; i < 30; ++i) runs.push_back(run("llm", kTiB, 1000, 1'700'000'000 + i, true));
  // The last 50: peaks 1..50 GiB, holds 1..50 s.
  for (int i = 1; i <= 50; ++i) {
    runs.push_back(run("llm", static_cast<std::uint64_t>(i) * kGiB, i, 1'790'000'000 + i));
  }
  std::shuffle(runs.end() - 50, runs.end(), std::mt19937(3));
  runs.back().ended_at = system_clock::time_point(seconds(1'799'999'999));
  const KindEstimate e = summarize_kind("llm", runs);
  EXPECT_EQ(e.runs, 80u);
  EXPECT_EQ(e.measured_runs, 50u);
  EXPECT_EQ(e.overused_runs, 30u);         // over the whole history
  EXPECT_EQ(e.peak_p95_bytes, 48 * kGiB);  // rank ceil(47.5) = 48
  EXPECT_EQ(e.peak_p50_bytes, 25 * kGiB);  // rank 25
  EXPECT_EQ(e.peak_max_bytes, 50 * kGiB);
  EXPECT_EQ(e.hold_p50_s, 25.0);
  EXPECT_EQ(e.hold_p95_s, 48.0);
  // ceil(48 GiB * 1.1) = 56693568308 bytes, up to a MiB: 54068 MiB.
  EXPECT_EQ(e.estimate_bytes, 54068 * kMiB);
  EXPECT_EQ(e.estimate_note, "learned from 50 runs: p95 48 GiB + 10%");
  EXPECT_EQ(e.last_seen, system_clock::time_point(seconds(1'799'999'999)));  // the newest
}

TEST(KindHistoryRuleTest, UnmeasuredPeaksAreSkipped) {
  std::vector<KindRun> runs;
  for (int i = 0; i < 6; ++i) runs.push_back(run("tts", std::nullopt, 2));
  for (int i = 1; i <= 4; ++i) runs.push_back(run("tts", static_cast<std::uint64_t>(i) * kGiB, 4));
  KindEstimate e = summarize_kind("tts", runs);
  EXPECT_EQ(e.runs, 10u);
  EXPECT_EQ(e.measured_runs, 4u);
  EXPECT_FALSE(e.estimate_bytes.has_value());
  EXPECT_EQ(e.estimate_note,
            "kind 'tts' has 4 measured runs; 5 are needed for an estimate (6 recent runs had no "
            "measured peak)");
  EXPECT_EQ(e.peak_p95_bytes, 4 * kGiB);
  EXPECT_EQ(e.hold_p50_s, 2.0);  // the hold times of unmeasured runs still count

  // A fifth measured run makes an estimate from the five measured peaks alone (not 0 for the
  // unmeasured ones: that would give the same p95 but p50 0).
  runs.push_back(run("tts", 10 * kGiB, 4));
  e = summarize_kind("tts", runs);
  EXPECT_EQ(e.measured_runs, 5u);
  EXPECT_EQ(e.peak_p50_bytes, 3 * kGiB);
  EXPECT_EQ(e.peak_p95_bytes, 10 * kGiB);
  EXPECT_EQ(e.estimate_bytes, 11264 * kMiB);
  EXPECT_EQ(e.estimate_note, "learned from 5 runs: p95 10 GiB + 10%");
}

TEST(KindHistoryRuleTest, MarginAndMiBRoundingAreExact) {
  const auto estimate_of = [](std::uint64_t peak) {
    return summarize_kind("k", runs_with_peaks("k", std::vector<std::uint64_t>(5, peak)))
        .estimate_bytes.value_or(0);
  };
  EXPECT_EQ(estimate_of(100 * kMiB), 110 * kMiB);  // exact: no rounding
  // 104857601 B * 1.1 = 115343361.1 -> 115343362 B -> up to 111 MiB.
  EXPECT_EQ(estimate_of(100 * kMiB + 1), 111 * kMiB);
  EXPECT_EQ(estimate_of(10), kMiB);  // 11 B -> 1 MiB
  EXPECT_EQ(estimate_of(0), kMiB);   // never a lease of 0 bytes
  // 2^60 * 110 overflows 64 bits: 1268213655067531673.6 -> 1209462790554 MiB.
  EXPECT_EQ(estimate_of(std::uint64_t{1} << 60), 1209462790554ULL * kMiB);
  // Beyond what 64 bits can hold: the largest whole MiB.
  EXPECT_EQ(estimate_of(std::numeric_limits<std::uint64_t>::max() - 5),
            std::numeric_limits<std::uint64_t>::max() / kMiB * kMiB);
  EXPECT_EQ(summarize_kind("k", runs_with_peaks("k", std::vector<std::uint64_t>(5, 11811160064)))
                .estimate_note,
            "learned from 5 runs: p95 11 GiB + 10%");
  EXPECT_EQ(summarize_kind("k", runs_with_peaks("k", std::vector<std::uint64_t>(5, 12025908428)))
                .estimate_note,
            "learned from 5 runs: p95 11.2 GiB + 10%");
}

// ---- The database ----

TEST(KindHistoryDbTest, RecordEstimateAllForgetRoundTrip) {
  TempDir dir("gpumgr-kind-history");
  const std::string path = dir.file("history.db");
  std::string note = "stale";
  auto h = open_ok(path, &note);
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(note, "");
  EXPECT_EQ(h->path(), path);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  std::vector<KindRun> sdxl = runs_with_peaks("sdxl", {5 * kGiB, 6 * kGiB, 7 * kGiB});
  sdxl.push_back(run("sdxl", std::nullopt, 9, 1'790'000'100));
  sdxl.push_back(run("sdxl", 8 * kGiB, 10, 1'790'000'200, true));
  sdxl.push_back(run("sdxl", 4 * kGiB, 11, 1'790'000'300));
  for (const auto& r : sdxl) ASSERT_TRUE(h->record(r).ok());
  ASSERT_TRUE(h->record(run("audio", 300 * kMiB, 2.5, 1'790'000'050)).ok());

  auto e = h->estimate("sdxl");
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  EXPECT_EQ(e->runs, 6u);
  EXPECT_EQ(e->measured_runs, 5u);
  EXPECT_EQ(e->overused_runs, 1u);
  EXPECT_EQ(e->peak_p95_bytes, 8 * kGiB);
  EXPECT_EQ(e->peak_p50_bytes, 6 * kGiB);
  EXPECT_EQ(e->estimate_bytes, 9012 * kMiB);  // ceil(8 GiB * 1.1) = 9011.2 MiB -> 9012
  EXPECT_EQ(e->last_seen, system_clock::time_point(seconds(1'790'000'300)));
  // The same as the pure function over the same runs.
  const KindEstimate expected = summarize_kind("sdxl", sdxl);
  EXPECT_EQ(e->estimate_note, expected.estimate_note);
  EXPECT_EQ(e->hold_p50_s, expected.hold_p50_s);
  EXPECT_EQ(e->hold_p95_s, expected.hold_p95_s);

  auto holds = h->recent_hold_times("sdxl");
  ASSERT_TRUE(holds.ok());
  EXPECT_EQ(*holds, (std::vector<double>{1, 2, 3, 9, 10, 11}));  // oldest first
  EXPECT_TRUE(h->recent_hold_times("nobody")->empty());

  auto all = h->all();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].kind, "audio");  // name order
  EXPECT_EQ((*all)[0].runs, 1u);
  EXPECT_EQ((*all)[0].peak_max_bytes, 300 * kMiB);
  EXPECT_EQ((*all)[0].hold_p50_s, 2.5);
  EXPECT_EQ((*all)[1].kind, "sdxl");
  EXPECT_EQ((*all)[1].runs, 6u);
  EXPECT_EQ((*all)[1].estimate_bytes, 9012 * kMiB);

  EXPECT_TRUE(h->forget("sdxl").ok());
  EXPECT_EQ(h->estimate("sdxl").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(h->forget("sdxl").code(), ErrorCode::kNotFound);
  const Status unknown = h->forget("ghost");
  EXPECT_EQ(unknown.code(), ErrorCode::kNotFound);
  EXPECT_NE(unknown.message().find("'ghost'"), std::string::npos) << unknown.message();
  all = h->all();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].kind, "audio");

  EXPECT_EQ(h->record(run("", kGiB)).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(h->record(run("x", kGiB, -1)).code(), ErrorCode::kInvalidArgument);
}

TEST(KindHistoryDbTest, TheWindowOfFiftyComesFromTheDatabaseToo) {
  TempDir dir("gpumgr-kind-history");
  auto h = open_ok(dir.file("history.db"));
  ASSERT_NE(h, nullptr);
  for (int i = 0; i < 30; ++i) ASSERT_TRUE(h->record(run("llm", kTiB, 1000, 1, true)).ok());
  for (int i = 1; i <= 50; ++i) {
    ASSERT_TRUE(h->record(run("llm", static_cast<std::uint64_t>(i) * kGiB, i, 100 + i)).ok());
  }
  auto e = h->estimate("llm");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->runs, 80u);
  EXPECT_EQ(e->overused_runs, 30u);
  EXPECT_EQ(e->measured_runs, 50u);
  EXPECT_EQ(e->peak_max_bytes, 50 * kGiB);
  EXPECT_EQ(e->estimate_bytes, 54068 * kMiB);
  EXPECT_EQ(e->last_seen, system_clock::time_point(seconds(150)));
  auto holds = h->recent_hold_times("llm");
  ASSERT_TRUE(holds.ok());
  ASSERT_EQ(holds->size(), 50u);
  EXPECT_EQ(holds->front(), 1.0);
  EXPECT_EQ(holds->back(), 50.0);
}

TEST(KindHistoryDbTest, ReopeningKeepsTheRuns) {
  TempDir dir("gpumgr-kind-history");
  const std::string path = dir.file("history.db");
  {
    auto h = open_ok(path);
    ASSERT_NE(h, nullptr);
    for (const auto& r : runs_with_peaks("vae", {1 * kGiB, 2 * kGiB, 3 * kGiB, 4 * kGiB})) {
      ASSERT_TRUE(h->record(r).ok());
    }
  }
  std::string note;
  auto h = open_ok(path, &note);
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(note, "");
  EXPECT_TRUE(moved_aside(path).empty());
  ASSERT_TRUE(h->record(run("vae", 5 * kGiB, 5)).ok());
  auto e = h->estimate("vae");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->runs, 5u);
  EXPECT_EQ(e->estimate_bytes, 5632 * kMiB);
  EXPECT_EQ(sql_text(path, "PRAGMA journal_mode"), "wal");
}

TEST(KindHistoryDbTest, ACorruptFileIsMovedAsideAndANewOneStarted) {
  TempDir dir("gpumgr-kind-history");
  const std::string path = dir.file("history.db");
  std::string garbage;
  std::mt19937 rng(11);
  for (int i = 0; i < 8192; ++i) garbage.push_back(static_cast<char>(rng() & 0xff));
  write_file(path, garbage);
  write_file(path + "-wal", "stale write-ahead log");

  std::string note;
  auto h = open_ok(path, &note);
  ASSERT_NE(h, nullptr);
  const auto moved = moved_aside(path);
  ASSERT_EQ(moved.size(), 1u);
  EXPECT_EQ(read_file(moved[0]), garbage);  // kept, untouched
  EXPECT_EQ(read_file(moved[0] + "-wal"), "stale write-ahead log");
  EXPECT_EQ(note, "the history database " + path +
                      " was corrupt (file is not a database); moved it to " + moved[0] +
                      " and started a new one");
  const std::string stamp = moved[0].substr((path + ".corrupt-").size());
  const auto now = std::chrono::duration_cast<seconds>(system_clock::now().time_since_epoch());
  EXPECT_LE(std::abs(std::stoll(stamp) - now.count()), 60);

  ASSERT_TRUE(h->record(run("after", kGiB)).ok());
  auto all = h->all();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].kind, "after");
}

TEST(KindHistoryDbTest, AnotherProgramsDatabaseIsMovedAside) {
  TempDir dir("gpumgr-kind-history");
  const std::string path = dir.file("history.db");
  sql(path, "CREATE TABLE photos (id INTEGER, name TEXT); INSERT INTO photos VALUES (1, 'cat');");

  std::string note;
  auto h = open_ok(path, &note);
  ASSERT_NE(h, nullptr);
  const auto moved = moved_aside(path);
  ASSERT_EQ(moved.size(), 1u);
  EXPECT_EQ(sql_text(moved[0], "SELECT name FROM photos"), "cat");  // intact
  EXPECT_NE(note.find("the history database " + path + " was not a gpumgr history"),
            std::string::npos)
      << note;
  EXPECT_NE(note.find("photos"), std::string::npos) << note;
  EXPECT_NE(note.find("moved it to " + moved[0] + " and started a new one"), std::string::npos)
      << note;
  ASSERT_TRUE(h->record(run("k", kGiB)).ok());
  EXPECT_EQ(h->estimate("k")->runs, 1u);
}

TEST(KindHistoryDbTest, AnotherSchemaVersionIsMovedAside) {
  TempDir dir("gpumgr-kind-history");
  const std::string path = dir.file("history.db");
  {
    auto h = open_ok(path);
    ASSERT_NE(h, nullptr);
    ASSERT_TRUE(h->record(run("old", kGiB)).ok());
  }
  sql(path, "PRAGMA user_version = 7");
  std::string note;
  auto h = open_ok(path, &note);
  ASSERT_NE(h, nullptr);
  EXPECT_NE(note.find("was not a gpumgr history (schema version 7"), std::string::npos) << note;
  EXPECT_EQ(moved_aside(path).size(), 1u);
  EXPECT_EQ(h->estimate("old").status().code(), ErrorCode::kNotFound);  // a new database
}

TEST(KindHistoryDbTest, OurTablesWithoutOurMarkAreNotOurs) {
  // A SQLite file with a table called runs, but from someone else: not ours to append to.
  TempDir dir("gpumgr-kind-history");
  const std::string path = dir.file("history.db");
  sql(path, "CREATE TABLE runs (x TEXT)");
  std::string note;
  auto h = open_ok(path, &note);
  ASSERT_NE(h, nullptr);
  EXPECT_NE(note.find("not a gpumgr history"), std::string::npos) << note;
  ASSERT_TRUE(h->record(run("k", kGiB)).ok());
}

TEST(KindHistoryDbTest, AnEmptyFileIsANewDatabase) {
  TempDir dir("gpumgr-kind-history");
  const std::string path = dir.file("history.db");
  write_file(path, "");
  std::string note;
  auto h = open_ok(path, &note);
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(note, "");
  EXPECT_TRUE(moved_aside(path).empty());
  EXPECT_TRUE(h->record(run("k", kGiB)).ok());
}

TEST(KindHistoryDbTest, AMissingOrBadFolderIsAClearError) {
  TempDir dir("gpumgr-kind-history");
  const std::string missing = dir.file("no/such/folder/history.db");
  auto h = KindHistory::open(missing);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(h.status().message().find(dir.file("no/such/folder") + " does not exist"),
            std::string::npos)
      << h.status().message();
  EXPECT_NE(h.status().message().find(missing), std::string::npos);

  write_file(dir.file("plain"), "x");
  h = KindHistory::open(dir.file("plain/history.db"));
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(h.status().message().find(dir.file("plain") + " is a file, not a folder"),
            std::string::npos)
      << h.status().message();

  // A folder where the file should be: an error, and the folder is left alone.
  ASSERT_EQ(::mkdir(dir.file("isdir.db").c_str(), 0700), 0);
  h = KindHistory::open(dir.file("isdir.db"));
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(h.status().message().find("not a regular file"), std::string::npos);
  EXPECT_TRUE(fs::is_directory(dir.file("isdir.db")));
  EXPECT_TRUE(moved_aside(dir.file("isdir.db")).empty());

  if (::geteuid() != 0) {  // root may write anywhere
    const std::string ro = dir.file("ro");
    ASSERT_EQ(::mkdir(ro.c_str(), 0500), 0);
    h = KindHistory::open(ro + "/history.db");
    ASSERT_FALSE(h.ok());
    EXPECT_EQ(h.status().code(), ErrorCode::kFailedPrecondition);
    EXPECT_NE(h.status().message().find("not writable"), std::string::npos);
    ::chmod(ro.c_str(), 0700);
  }
}

TEST(KindHistoryDbTest, ConcurrentWritersFromThreadsLoseNothing) {
  TempDir dir("gpumgr-kind-history");
  auto h = open_ok(dir.file("history.db"));
  ASSERT_NE(h, nullptr);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&h, t] {
      for (int i = 0; i < 50; ++i) {
        EXPECT_TRUE(h->record(run("t" + std::to_string(t % 2), kGiB, i)).ok());
        EXPECT_TRUE(h->estimate("t" + std::to_string(t % 2)).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(h->estimate("t0")->runs, 100u);
  EXPECT_EQ(h->estimate("t1")->runs, 100u);
}

// A child records runs in a loop (hold_s = its sequence number) and writes one byte to the
// pipe after each record() returned; the parent SIGKILLs it at a random moment, then reopens.
[[noreturn]] void crash_child(const std::string& path, int fd, std::int64_t first_seq) {
  auto h = KindHistory::open(path);
  if (!h.ok()) ::_exit(3);
  const char opened = 'o';
  if (::write(fd, &opened, 1) != 1) ::_exit(4);
  for (std::int64_t seq = first_seq;; ++seq) {
    KindRun r = run("crash", static_cast<std::uint64_t>(seq) * kMiB, static_cast<double>(seq),
                    1'790'000'000 + seq);
    if (!(*h)->record(r).ok()) ::_exit(5);
    const char done = 'r';
    if (::write(fd, &done, 1) != 1) ::_exit(6);
  }
}

TEST(KindHistoryDbTest, ASIGKILLedWriterNeverCorruptsTheHistory) {
  TempDir dir("gpumgr-kind-history");
  const std::string path = dir.file("history.db");
  std::random_device seed_source;
  const unsigned seed = seed_source();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::uint64_t count = 0;
  for (int round = 0; round < 20; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      ::close(fds[0]);
      crash_child(path, fds[1], static_cast<std::int64_t>(count));
    }
    ::close(fds[1]);
    // Even rounds: kill at a random moment from the start (opening and creating included);
    // odd rounds: once the child has opened the database, so that runs are surely written.
    if (round % 2 == 1) {
      pollfd p{fds[0], POLLIN, 0};
      ASSERT_EQ(::poll(&p, 1, 20000), 1);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(
        std::uniform_int_distribution<int>(round % 2 == 1 ? 1000 : 0, 8000)(rng)));
    ::kill(child, SIGKILL);
    int wstatus = 0;
    ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
    ASSERT_TRUE(WIFSIGNALED(wstatus))
        << "the child exited by itself, code " << WEXITSTATUS(wstatus);
    std::uint64_t confirmed = 0;
    char buf[4096];
    for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) {
      confirmed += static_cast<std::uint64_t>(std::count(buf, buf + n, 'r'));
    }
    ::close(fds[0]);

    std::string note;
    auto h = open_ok(path, &note);
    ASSERT_NE(h, nullptr);
    EXPECT_EQ(note, "");  // never moved aside
    ASSERT_TRUE(moved_aside(path).empty());
    auto e = h->estimate("crash");
    const std::uint64_t now = e.ok() ? e->runs : 0;
    if (!e.ok()) {
      EXPECT_EQ(e.status().code(), ErrorCode::kNotFound);
    }
    // Every confirmed run is there; at most one more (committed, killed before the byte).
    EXPECT_GE(now, count + confirmed);
    EXPECT_LE(now, count + confirmed + 1);
    // And intact: the recent runs are the consecutive sequence numbers up to now - 1.
    auto holds = h->recent_hold_times("crash");
    ASSERT_TRUE(holds.ok());
    ASSERT_EQ(holds->size(), std::min<std::uint64_t>(now, kEstimateWindow));
    for (std::size_t i = 0; i < holds->size(); ++i) {
      EXPECT_EQ((*holds)[i], static_cast<double>(now - holds->size() + i));
    }
    if (e.ok()) {
      EXPECT_EQ(e->peak_max_bytes, (now - 1) * kMiB);
      EXPECT_EQ(e->last_seen, system_clock::time_point(
                                  seconds(1'790'000'000 + static_cast<std::int64_t>(now) - 1)));
    }
    h.reset();
    EXPECT_EQ(sql_text(path, "PRAGMA integrity_check"), "ok");
    count = now;
  }
  ::testing::Test::RecordProperty("runs_recorded", std::to_string(count));
  EXPECT_GT(count, 0u) << "no run was ever recorded: the test checked nothing";
}

}  // namespace
}  // namespace gpumgr::state
