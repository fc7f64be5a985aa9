// The daemon's configuration file (src/config, docs/config.md): every key read into its
// setting, the defaults, the command line over the file, each class of error with the
// file:line:column it names, and what a reload applies and keeps.
#include "config/config_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "config/serve_settings.h"

namespace gpumgr::config {
namespace {

// A file that sets every key to a value other than its default.
constexpr const char* kEveryKey = R"(# every key, none at its default
[daemon]
socket = "/run/test/gpumgr.sock"
socket_group = "gpu"
state_dir = "/var/lib/test"
reattach_grace = 12
quiet = true

[http]
listen = "127.0.0.1:9500"
public = true

[devices]
device = "cpu"
simulate = "2x24GiB"
poll_interval = 0.5

[limits]
memory_limit = 0.6
max_concurrent_jobs = 7
revoke_grace = 45

[overuse]
policy = "terminate"
grace = 3.5
tolerance_percent = 20

[clients]
hello_timeout = 9
max_connections_per_uid = 17
kill_orphans = true
kill_orphans_grace = 2

[scheduling]
fair_share = false
fair_share_half_life = "30m"
)";

StatusOr<ConfigFile> parse(const std::string& text) {
  return parse_config_text(text, "/etc/gpumgr/gpumgr.toml");
}

// The message of a refused file (the test fails if it was accepted).
std::string error_of(const std::string& text) {
  auto r = parse(text);
  EXPECT_FALSE(r.ok()) << "accepted:\n" << text;
  if (r.ok()) return "";
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  return r.status().message();
}

TEST(ConfigFile, EveryKeyIsReadIntoItsSetting) {
  auto r = parse(kEveryKey);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const ServeSettings& s = r->settings;
  EXPECT_EQ(s.socket, "/run/test/gpumgr.sock");
  EXPECT_EQ(s.socket_group, "gpu");
  EXPECT_EQ(s.state_dir, "/var/lib/test");
  EXPECT_EQ(s.reattach_grace_s, 12);
  EXPECT_TRUE(s.quiet);
  EXPECT_EQ(s.http, "127.0.0.1:9500");
  EXPECT_FALSE(s.no_http);
  EXPECT_TRUE(s.http_public);
  EXPECT_EQ(s.device, "cpu");
  EXPECT_EQ(s.simulate, "2x24GiB");
  EXPECT_EQ(s.poll_interval_s, 0.5);
  EXPECT_EQ(s.memory_limit, 0.6);
  EXPECT_EQ(s.max_concurrent_jobs, 7);
  EXPECT_EQ(s.on_overuse, "terminate");
  EXPECT_EQ(s.overuse_grace_s, 3.5);
  EXPECT_EQ(s.overuse_tolerance_percent, 20);
  EXPECT_EQ(s.hello_timeout_s, 9);
  EXPECT_EQ(s.max_connections_per_uid, 17);
  EXPECT_TRUE(s.kill_orphans);
  EXPECT_EQ(s.kill_orphans_grace_s, 2);
  EXPECT_FALSE(s.fair_share);
  EXPECT_EQ(s.fair_share_half_life_s, 1800);
  // Every field was present, each at its own line.
  EXPECT_EQ(r->present.count(), kFieldCount);
  for (const FieldInfo& f : all_fields()) {
    EXPECT_GT(r->positions[index_of(f.field)].line, 0) << key_name(f.field);
  }
  EXPECT_EQ(r->positions[index_of(Field::kSocket)].line, 3);
  EXPECT_EQ(r->positions[index_of(Field::kSocket)].column, 10);
  EXPECT_EQ(r->positions[index_of(Field::kKillOrphansGrace)].line, 32);

  // The settings as the ledger gets them.
  const LedgerConfig c = to_ledger_config(s);
  EXPECT_EQ(c.max_concurrent_jobs, 7);
  EXPECT_EQ(c.memory_limit, 0.6);
  EXPECT_EQ(c.poll_interval, std::chrono::milliseconds(500));
  EXPECT_EQ(c.overuse.policy, OverusePolicy::kTerminate);
  EXPECT_EQ(c.overuse.grace_s, 3.5);
  EXPECT_EQ(c.overuse.tolerance_percent, 20);
  EXPECT_EQ(c.revoke_grace_s, 45);
  EXPECT_FALSE(c.fair_share);
  EXPECT_EQ(c.fair_share_half_life_s, 1800);
}

TEST(ConfigFile, AHalfLifeIsSecondsOrADurationWithAUnit) {
  for (const auto& [text, seconds] : std::vector<std::pair<std::string, double>>{{"7200", 7200},
                                                                                 {"1.5", 1.5},
                                                                                 {"\"90s\"", 90},
                                                                                 {"\"30m\"", 1800},
                                                                                 {"\"1h\"", 3600},
                                                                                 {"\"1.5h\"", 5400},
                                                                                 {"\"2d\"", 172800},
                                                                                 {"\"45\"", 45}}) {
    auto r = parse("[scheduling]\nfair_share_half_life = " + text + "\n");
    ASSERT_TRUE(r.ok()) << text << ": " << r.status().to_string();
    EXPECT_EQ(r->settings.fair_share_half_life_s, seconds) << text;
  }
  EXPECT_EQ(error_of("[scheduling]\nfair_share_half_life = \"an hour\"\n"),
            "/etc/gpumgr/gpumgr.toml:2:24: scheduling.fair_share_half_life: 'an hour' is not a "
            "duration: a number of seconds, or one with a unit (\"90s\", \"30m\", \"1h\", "
            "\"2d\")");
  EXPECT_EQ(error_of("[scheduling]\nfair_share_half_life = true\n"),
            "/etc/gpumgr/gpumgr.toml:2:24: scheduling.fair_share_half_life must be a duration "
            "(seconds, or a string such as \"1h\"), not a boolean");
  const std::string zero = error_of("[scheduling]\nfair_share_half_life = \"0s\"\n");
  EXPECT_NE(zero.find("scheduling.fair_share_half_life must be between 1 second and 365 days"),
            std::string::npos)
      << zero;
}

TEST(ConfigFile, TheEveryKeyFileNamesEveryField) {
  // A new field without a key in kEveryKey would escape EveryKeyIsReadIntoItsSetting.
  auto r = parse(kEveryKey);
  ASSERT_TRUE(r.ok());
  for (const FieldInfo& f : all_fields()) {
    EXPECT_TRUE(r->present.test(index_of(f.field))) << key_name(f.field);
    EXPECT_NE(value_text(r->settings, f.field), value_text(ServeSettings{}, f.field))
        << key_name(f.field) << " is at its default in the test file";
  }
}

TEST(ConfigFile, AnEmptyFileGivesTheDefaults) {
  auto r = parse("# nothing set\n");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->present.count(), 0u);
  const ServeSettings d;
  for (const FieldInfo& f : all_fields()) {
    EXPECT_EQ(value_text(r->settings, f.field), value_text(d, f.field)) << key_name(f.field);
  }
  // The defaults are those `gpumgr serve --help` gives.
  EXPECT_EQ(d.http, "127.0.0.1:9400");
  EXPECT_EQ(d.max_concurrent_jobs, 3);
  EXPECT_EQ(d.memory_limit, 0.8);
  EXPECT_EQ(d.device, "auto");
  EXPECT_EQ(d.on_overuse, "report");
  EXPECT_EQ(d.overuse_grace_s, 10);
  EXPECT_EQ(d.overuse_tolerance_percent, 5);
  EXPECT_EQ(d.poll_interval_s, 0.25);
  EXPECT_EQ(d.hello_timeout_s, 5);
  EXPECT_EQ(d.max_connections_per_uid, 256);
  EXPECT_FALSE(d.kill_orphans);
  EXPECT_EQ(d.kill_orphans_grace_s, 5);
  EXPECT_EQ(d.reattach_grace_s, 30);
  EXPECT_FALSE(d.no_http);
  EXPECT_FALSE(validate_settings(d).has_value());
}

TEST(ConfigFile, HttpListenFalseOrEmptyMeansNoHttp) {
  for (const char* text : {"[http]\nlisten = false\n", "[http]\nlisten = \"\"\n"}) {
    auto r = parse(text);
    ASSERT_TRUE(r.ok()) << text << r.status().to_string();
    EXPECT_TRUE(r->settings.no_http) << text;
    EXPECT_EQ(value_text(r->settings, Field::kHttp), "none");
  }
  EXPECT_EQ(error_of("[http]\nlisten = true\n"),
            "/etc/gpumgr/gpumgr.toml:2:10: http.listen must be an address (\"HOST:PORT\") or "
            "false, not true");
}

TEST(ConfigFile, NumbersMayBeIntegersOrFloatsButCountsMustBeIntegers) {
  auto r = parse("[limits]\nmemory_limit = 1\n[devices]\npoll_interval = 2\n");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->settings.memory_limit, 1.0);
  EXPECT_EQ(r->settings.poll_interval_s, 2.0);
  EXPECT_EQ(error_of("[limits]\nmax_concurrent_jobs = 2.0\n"),
            "/etc/gpumgr/gpumgr.toml:2:23: limits.max_concurrent_jobs must be an integer, not a "
            "float");
}

TEST(ConfigFile, ASyntaxErrorNamesItsLineAndColumn) {
  const std::string m = error_of("[limits]\nmemory_limit = 0.5\n\n[devices\n");
  EXPECT_EQ(m.rfind("/etc/gpumgr/gpumgr.toml:4:9: syntax error: ", 0), 0u) << m;
  // A key given twice is a syntax error too, at its second place.
  const std::string twice = error_of("[limits]\nmemory_limit = 0.5\nmemory_limit = 0.6\n");
  EXPECT_EQ(twice.rfind("/etc/gpumgr/gpumgr.toml:3:", 0), 0u) << twice;
  EXPECT_NE(twice.find("syntax error"), std::string::npos) << twice;
}

TEST(ConfigFile, AnUnknownKeyIsAnErrorNamingItAndItsLine) {
  EXPECT_EQ(error_of("[limits]\nmemory_limit = 0.5\nmax_jobs = 4\n"),
            "/etc/gpumgr/gpumgr.toml:3:1: unknown key 'limits.max_jobs'; the keys of [limits] "
            "are memory_limit, max_concurrent_jobs, revoke_grace");
  // A key outside any table: where it belongs is suggested.
  EXPECT_EQ(error_of("\nmemory_limit = 0.5\n"),
            "/etc/gpumgr/gpumgr.toml:2:1: unknown key 'memory_limit' outside a table (put it in "
            "[limits]); the tables are [daemon], [http], [devices], [limits], [overuse], "
            "[clients], [scheduling], [quota.*]");
  // An unknown table.
  EXPECT_EQ(error_of("[limit]\nmemory_limit = 0.5\n"),
            "/etc/gpumgr/gpumgr.toml:1:2: unknown table [limit]; the tables are [daemon], "
            "[http], [devices], [limits], [overuse], [clients], [scheduling], [quota.*]");
  // A table inside a known table is no key of it.
  const std::string nested = error_of("[limits.gpu0]\nmemory_limit = 0.5\n");
  EXPECT_NE(nested.find("unknown key 'limits.gpu0'"), std::string::npos) << nested;
}

TEST(ConfigFile, AWrongTypeNamesTheKeyWhatItMustBeAndWhere) {
  EXPECT_EQ(error_of("[limits]\nmemory_limit = \"80%\"\n"),
            "/etc/gpumgr/gpumgr.toml:2:16: limits.memory_limit must be a number, not a string");
  EXPECT_EQ(error_of("[clients]\nkill_orphans = \"yes\"\n"),
            "/etc/gpumgr/gpumgr.toml:2:16: clients.kill_orphans must be true or false, not a "
            "string");
  EXPECT_EQ(error_of("[daemon]\nsocket = 5\n"),
            "/etc/gpumgr/gpumgr.toml:2:10: daemon.socket must be a string, not an integer");
  EXPECT_EQ(error_of("[devices]\nsimulate = [\"24GiB\"]\n"),
            "/etc/gpumgr/gpumgr.toml:2:12: devices.simulate must be a string, not an array");
}

TEST(ConfigFile, AValueOutOfRangeIsRefusedByTheServeChecks) {
  struct Case {
    const char* text;
    const char* message;
  };
  const Case cases[] = {
      {"[devices]\npoll_interval = 0\n",
       "/etc/gpumgr/gpumgr.toml:2:17: devices.poll_interval must be between 0.001 and 3600 "
       "seconds, got 0"},
      {"[limits]\nmemory_limit = 1.5\n",
       "/etc/gpumgr/gpumgr.toml:2:16: limits.memory_limit is invalid: memory_limit must be in "
       "(0, 1], got 1.5"},
      {"[limits]\nmax_concurrent_jobs = 0\n",
       "/etc/gpumgr/gpumgr.toml:2:23: limits.max_concurrent_jobs must be between 1 and 1000000, "
       "got 0"},
      {"[overuse]\npolicy = \"kill\"\n",
       "/etc/gpumgr/gpumgr.toml:2:10: overuse.policy is invalid: unknown overuse policy 'kill': "
       "use report or terminate"},
      {"[overuse]\ngrace = -1\n",
       "/etc/gpumgr/gpumgr.toml:2:9: overuse.grace is invalid: the overuse grace must be "
       "between 0 and 86400 seconds, got -1"},
      {"[overuse]\ntolerance_percent = nan\n",
       "/etc/gpumgr/gpumgr.toml:2:21: overuse.tolerance_percent is invalid: the overuse "
       "tolerance must be between 0 and 1000 percent, got nan"},
      {"[clients]\nhello_timeout = 86401\n",
       "/etc/gpumgr/gpumgr.toml:2:17: clients.hello_timeout must be between 0 (no limit) and "
       "86400 seconds, got 86401"},
      // A negative count (a size of the connection table) is out of range, not wrapped.
      {"[clients]\nmax_connections_per_uid = -1\n",
       "/etc/gpumgr/gpumgr.toml:2:27: clients.max_connections_per_uid must be between 0 (no "
       "limit) and 100000000, got -1"},
      {"[clients]\nkill_orphans_grace = inf\n",
       "/etc/gpumgr/gpumgr.toml:2:22: clients.kill_orphans_grace must be between 0 and 3600 "
       "seconds, got inf"},
      {"[daemon]\nreattach_grace = -0.5\n",
       "/etc/gpumgr/gpumgr.toml:2:18: daemon.reattach_grace must be between 0 and 3600 seconds, "
       "got -0.5"},
      {"[devices]\ndevice = \"gpu\"\n",
       "/etc/gpumgr/gpumgr.toml:2:10: devices.device is invalid: "},
      // A negative size of a simulated device.
      {"[devices]\nsimulate = \"-24GiB\"\n",
       "/etc/gpumgr/gpumgr.toml:2:12: devices.simulate is invalid: "},
      {"[http]\nlisten = \"localhost\"\n",
       "/etc/gpumgr/gpumgr.toml:2:10: http.listen is invalid: bad HTTP address 'localhost'"},
  };
  for (const Case& c : cases) {
    const std::string m = error_of(c.text);
    EXPECT_EQ(m.rfind(c.message, 0), 0u) << "file:\n" << c.text << "message: " << m;
  }
}

TEST(ConfigFile, TheFlagsAndTheFileShareOneValidation) {
  // The same value refused by the same words, named by the flag or by the key.
  ServeSettings s;
  s.poll_interval_s = 0;
  auto problem = validate_settings(s);
  ASSERT_TRUE(problem.has_value());
  EXPECT_EQ(problem->field, Field::kPollInterval);
  EXPECT_EQ(problem->reason, "must be between 0.001 and 3600 seconds, got 0");
  EXPECT_EQ(field_info(problem->field).flag, "--poll-interval");
  EXPECT_EQ(key_name(problem->field), "devices.poll_interval");
  const std::string m = error_of("[devices]\npoll_interval = 0\n");
  EXPECT_NE(m.find(problem->reason), std::string::npos) << m;
}

// A file written to a temporary folder, removed at the end.
class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    char dir[] = "/tmp/gpumgr-config-test-XXXXXX";
    EXPECT_NE(::mkdtemp(dir), nullptr);
    dir_ = dir;
    path_ = dir_ + "/gpumgr.toml";
    std::ofstream(path_) << text;
  }
  ~TempFile() {
    std::remove(path_.c_str());
    ::rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::string path_;
};

TEST(ConfigFile, TheCommandLineOverridesTheFileKeyByKey) {
  TempFile file("[limits]\nmemory_limit = 0.6\nmax_concurrent_jobs = 7\n");
  SettingsSources src;
  src.config_path = file.path();
  src.config_given = true;
  src.flags.memory_limit = 0.3;        // given
  src.flags.max_concurrent_jobs = 99;  // not given: the file's 7 stays
  src.flags.hello_timeout_s = 1;       // given, the file does not set it
  src.given.set(index_of(Field::kMemoryLimit));
  src.given.set(index_of(Field::kHelloTimeout));
  auto r = resolve_settings(src);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->from_file);
  EXPECT_EQ(r->settings.memory_limit, 0.3);
  EXPECT_EQ(r->settings.max_concurrent_jobs, 7);
  EXPECT_EQ(r->settings.hello_timeout_s, 1);
  EXPECT_EQ(r->settings.poll_interval_s, 0.25);  // neither: the default

  // --no-http over a file that listens, and --http over one that does not.
  TempFile listens("[http]\nlisten = \"127.0.0.1:9501\"\n");
  SettingsSources no_http;
  no_http.config_path = listens.path();
  no_http.flags.no_http = true;
  no_http.given.set(index_of(Field::kHttp));
  auto off = resolve_settings(no_http);
  ASSERT_TRUE(off.ok()) << off.status().to_string();
  EXPECT_TRUE(off->settings.no_http);
  TempFile silent("[http]\nlisten = false\n");
  SettingsSources http;
  http.config_path = silent.path();
  http.flags.http = "127.0.0.1:9502";
  http.given.set(index_of(Field::kHttp));
  auto on = resolve_settings(http);
  ASSERT_TRUE(on.ok()) << on.status().to_string();
  EXPECT_FALSE(on->settings.no_http);
  EXPECT_EQ(on->settings.http, "127.0.0.1:9502");
}

TEST(ConfigFile, AnInvalidFlagIsNamedByTheFlag) {
  TempFile file("[limits]\nmemory_limit = 0.6\n");
  SettingsSources src;
  src.config_path = file.path();
  src.flags.max_concurrent_jobs = 0;
  src.given.set(index_of(Field::kMaxConcurrentJobs));
  auto r = resolve_settings(src);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "--max-concurrent-jobs must be between 1 and 1000000, got 0");
}

TEST(ConfigFile, APublicAddressNeedsPublicInTheFileOrOnTheCommandLine) {
  TempFile file("[http]\nlisten = \"0.0.0.0:9400\"\n");
  SettingsSources src;
  src.config_path = file.path();
  auto refused = resolve_settings(src);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().message().rfind(file.path() + ":2:10: http.listen is invalid: ", 0),
            0u)
      << refused.status().message();
  src.flags.http_public = true;
  src.given.set(index_of(Field::kHttpPublic));
  EXPECT_TRUE(resolve_settings(src).ok());
}

TEST(ConfigFile, AMissingDefaultFileIsTheDefaultsButAMissingGivenFileIsAnError) {
  TempFile dir("");
  SettingsSources src;
  src.config_path = dir.dir() + "/absent.toml";
  auto defaults = resolve_settings(src);
  ASSERT_TRUE(defaults.ok()) << defaults.status().to_string();
  EXPECT_FALSE(defaults->from_file);
  EXPECT_EQ(defaults->settings.memory_limit, 0.8);
  src.config_given = true;
  auto missing = resolve_settings(src);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "cannot read the configuration file " + dir.dir() +
                                            "/absent.toml: No such file or directory");
  // A folder is no file.
  src.config_path = dir.dir();
  auto folder = resolve_settings(src);
  ASSERT_FALSE(folder.ok());
  EXPECT_EQ(folder.status().code(), ErrorCode::kInvalidArgument);
}

TEST(ConfigFile, AReloadAppliesReloadableKeysAndKeepsRestartOnlyOnes) {
  ServeSettings running;
  running.socket = "/run/a.sock";
  ServeSettings wanted = running;
  wanted.socket = "/run/b.sock";  // restart only
  wanted.device = "cpu";          // restart only
  wanted.memory_limit = 0.9;      // reloadable
  wanted.max_concurrent_jobs = 5;
  wanted.kill_orphans = true;
  const ReloadPlan plan = plan_reload(running, wanted);
  EXPECT_EQ(plan.apply.socket, "/run/a.sock");
  EXPECT_EQ(plan.apply.device, "auto");
  EXPECT_EQ(plan.apply.memory_limit, 0.9);
  EXPECT_EQ(plan.apply.max_concurrent_jobs, 5);
  EXPECT_TRUE(plan.apply.kill_orphans);
  EXPECT_EQ(plan.changed, (std::vector<std::string>{"limits.memory_limit: 0.8 -> 0.9",
                                                    "limits.max_concurrent_jobs: 3 -> 5",
                                                    "clients.kill_orphans: false -> true"}));
  EXPECT_EQ(plan.kept, (std::vector<std::string>{
                           "daemon.socket changed ('/run/a.sock' -> '/run/b.sock') but takes "
                           "effect only at a restart; keeping '/run/a.sock'",
                           "devices.device changed ('auto' -> 'cpu') but takes effect only at a "
                           "restart; keeping 'auto'"}));
  // Nothing changed: nothing to say.
  const ReloadPlan same = plan_reload(running, running);
  EXPECT_TRUE(same.changed.empty());
  EXPECT_TRUE(same.kept.empty());
}

TEST(ConfigFile, WhichKeysReload) {
  // docs/config.md's table: these and only these apply on a reload.
  FieldSet reloadable;
  for (Field f :
       {Field::kQuiet, Field::kPollInterval, Field::kMemoryLimit, Field::kMaxConcurrentJobs,
        Field::kRevokeGrace, Field::kOnOveruse, Field::kOveruseGrace, Field::kOveruseTolerance,
        Field::kHelloTimeout, Field::kMaxConnectionsPerUid, Field::kKillOrphans,
        Field::kKillOrphansGrace, Field::kFairShare, Field::kFairShareHalfLife}) {
    reloadable.set(index_of(f));
  }
  for (const FieldInfo& f : all_fields()) {
    EXPECT_EQ(f.reloadable, reloadable.test(index_of(f.field))) << key_name(f.field);
  }
}

}  // namespace
}  // namespace gpumgr::config
