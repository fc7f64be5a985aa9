// Quotas in the configuration file ([quota.default], [quota.user.NAME], [quota.group.NAME])
// and their part of admission (src/core/quota.h): what can never fit a quota, or asks for a
// priority above it, is refused at once with quota_exceeded. Users and groups are those every
// Debian system has (root and daemon; groups root, daemon and users).
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "config/config_file.h"
#include "core/quota.h"
#include "gpumgr/units.h"

namespace gpumgr::config {
namespace {

StatusOr<ConfigFile> parse(const std::string& text) {
  return parse_config_text(text, "/etc/gpumgr/gpumgr.toml");
}

std::string error_of(const std::string& text) {
  auto r = parse(text);
  EXPECT_FALSE(r.ok()) << "accepted:\n" << text;
  return r.ok() ? "" : r.status().message();
}

LeaseRequest req(std::uint64_t bytes, int gpus = 1, int priority = 0) {
  LeaseRequest r;
  r.job_id = "j";
  r.bytes = bytes;
  r.gpus = gpus;
  r.priority = priority;
  return r;
}

TEST(ConfigQuota, TheTablesAreReadByNameAndById) {
  auto r = parse(R"(
[quota.default]
max_vram = "30GiB"
max_jobs = 4
max_priority = 5
[quota.user.daemon]
max_vram = "8GiB"
[quota.user.4321]
max_vram = "50%"
[quota.group.users]
max_vram = "40GiB"
max_jobs = 10
)");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const core::QuotaConfig& q = r->quotas;
  ASSERT_TRUE(q.default_rule.has_value());
  EXPECT_EQ(q.default_rule->limits.max_vram_bytes, 30 * kGiB);
  EXPECT_EQ(q.default_rule->limits.max_jobs, 4);
  EXPECT_EQ(q.default_rule->limits.max_priority, 5);
  ASSERT_EQ(q.users.count(1), 1u);  // daemon is uid 1 on Debian
  EXPECT_EQ(q.users.at(1).scope, "quota.user.daemon");
  EXPECT_EQ(q.users.at(1).limits.max_vram_bytes, 8 * kGiB);
  ASSERT_EQ(q.users.count(4321), 1u);  // a numeric id needs no account
  EXPECT_EQ(q.users.at(4321).limits.max_vram_share, 0.5);
  ASSERT_EQ(q.groups.count(100), 1u);  // users is gid 100
  EXPECT_EQ(q.groups.at(100).limits.max_jobs, 10);

  // A user's table over the default, key by key.
  auto daemon_rule = core::user_rule(q, 1);
  ASSERT_TRUE(daemon_rule.has_value());
  EXPECT_EQ(daemon_rule->limits.max_vram_bytes, 8 * kGiB);
  EXPECT_EQ(daemon_rule->limits.max_jobs, 4);
  EXPECT_EQ(daemon_rule->limits.max_priority, 5);
  // A share in the user's table replaces the default's size.
  auto share_rule = core::user_rule(q, 4321);
  ASSERT_TRUE(share_rule.has_value());
  EXPECT_FALSE(share_rule->limits.max_vram_bytes.has_value());
  EXPECT_EQ(share_rule->limits.max_vram_share, 0.5);
  // Anyone else: the default.
  EXPECT_EQ(core::user_rule(q, 777)->scope, "quota.default");
}

TEST(ConfigQuota, UnknownUsersAndGroupsAreReportedByName) {
  EXPECT_EQ(error_of("[quota.user.no-such-user-here]\nmax_jobs = 1\n"),
            "/etc/gpumgr/gpumgr.toml:1:13: unknown user 'no-such-user-here' in "
            "[quota.user.no-such-user-here]: no such user on this host (give a name it knows, or "
            "a numeric id)");
  EXPECT_EQ(error_of("\n[quota.group.no-such-group-here]\nmax_jobs = 1\n"),
            "/etc/gpumgr/gpumgr.toml:2:14: unknown group 'no-such-group-here' in "
            "[quota.group.no-such-group-here]: no such group on this host (give a name it knows, "
            "or a numeric id)");
  // The same account twice, by name and by id.
  const std::string twice = error_of("[quota.user.root]\nmax_jobs = 1\n[quota.user.0]\n");
  // (toml++ keeps a table's keys sorted: "0" is read before "root".)
  EXPECT_NE(twice.find("[quota.user.root] is the same user (id 0) as [quota.user.0]"),
            std::string::npos)
      << twice;
}

TEST(ConfigQuota, BadQuotaValuesAreRefusedWithTheirPlace) {
  struct Case {
    const char* text;
    const char* message;
  };
  const Case cases[] = {
      {"[quota.default]\nmax_vram = \"-8GiB\"\n",
       "/etc/gpumgr/gpumgr.toml:2:12: quota.default.max_vram is invalid: "},
      {"[quota.default]\nmax_vram = \"0GiB\"\n",
       "/etc/gpumgr/gpumgr.toml:2:12: quota.default.max_vram must be positive, got '0GiB'"},
      {"[quota.default]\nmax_vram = \"150%\"\n",
       "/etc/gpumgr/gpumgr.toml:2:12: quota.default.max_vram must be a share above 0% and at "
       "most 100%, got '150%'"},
      {"[quota.default]\nmax_vram = 8\n",
       "/etc/gpumgr/gpumgr.toml:2:12: quota.default.max_vram must be a size (\"30GiB\") or a "
       "share (\"50%\"), not an integer"},
      {"[quota.default]\nmax_jobs = -1\n",
       "/etc/gpumgr/gpumgr.toml:2:12: quota.default.max_jobs must be between 0 and 1000000, got "
       "-1"},
      {"[quota.default]\nmax_priority = \"high\"\n",
       "/etc/gpumgr/gpumgr.toml:2:16: quota.default.max_priority must be an integer, not a "
       "string"},
      {"[quota.user.root]\nmax_gpus = 1\n",
       "/etc/gpumgr/gpumgr.toml:2:1: unknown key 'quota.user.root.max_gpus'; the keys of "
       "[quota.user.root] are max_vram, max_jobs, max_priority"},
      {"[quota.users.root]\nmax_jobs = 1\n",
       "/etc/gpumgr/gpumgr.toml:1:8: unknown key 'quota.users'; the quota tables are "
       "[quota.default], [quota.user.NAME] and [quota.group.NAME]"},
  };
  for (const Case& c : cases) {
    const std::string m = error_of(c.text);
    EXPECT_EQ(m.rfind(c.message, 0), 0u) << "file:\n" << c.text << "message: " << m;
  }
}

TEST(ConfigQuota, ARequestThatCanNeverFitItsQuotaIsRefusedAtOnce) {
  auto r = parse(R"(
[quota.default]
max_vram = "30GiB"
max_priority = 5
[quota.user.daemon]
max_vram = "8GiB"
[quota.user.4321]
max_vram = "25%"
max_jobs = 0
[quota.group.users]
max_vram = "12GiB"
)");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const core::QuotaConfig& q = r->quotas;
  const std::uint64_t host = 80 * kGiB;
  const std::vector<std::uint32_t> none;
  auto check = [&](const LeaseRequest& request, std::uint32_t uid,
                   const std::vector<std::uint32_t>& gids = {}) {
    return core::check_quota_admission(q, request, uid, gids, host);
  };
  // Within every limit.
  EXPECT_TRUE(check(req(30 * kGiB), 777).ok());
  EXPECT_TRUE(check(req(8 * kGiB, 1, 5), 1).ok());
  // Above the default's 30 GiB in all: 2 GPUs of 16 GiB.
  Status s = check(req(16 * kGiB, 2), 777);
  EXPECT_EQ(s.code(), ErrorCode::kQuotaExceeded);
  EXPECT_EQ(s.message(),
            "the request for 32 GiB (16 GiB on each of 2 GPUs) can never fit the quota of uid "
            "777: at most 30 GiB leased at once (quota.default.max_vram)");
  EXPECT_EQ(error_code_name(s.code()), "quota_exceeded");
  // The user's own 8 GiB.
  s = check(req(9 * kGiB), 1);
  EXPECT_EQ(s.code(), ErrorCode::kQuotaExceeded);
  EXPECT_NE(s.message().find("at most 8 GiB leased at once (quota.user.daemon.max_vram)"),
            std::string::npos)
      << s.message();
  // A priority above the default's max_priority, which the user's table inherits.
  s = check(req(kGiB, 1, 6), 1);
  EXPECT_EQ(s.code(), ErrorCode::kQuotaExceeded);
  EXPECT_EQ(s.message(),
            "priority 6 is above the highest that uid 1 may ask for, 5 "
            "(quota.default.max_priority)");
  // max_jobs = 0: nothing at all.
  s = check(req(kGiB), 4321);
  EXPECT_EQ(s.code(), ErrorCode::kQuotaExceeded);
  EXPECT_EQ(s.message(), "uid 4321 may run no jobs (quota.user.4321.max_jobs = 0)");
  // A group's limit applies to its members: 12 GiB for gid 100.
  EXPECT_TRUE(check(req(20 * kGiB), 777).ok());
  s = check(req(20 * kGiB), 777, {5, 100});
  EXPECT_EQ(s.code(), ErrorCode::kQuotaExceeded);
  EXPECT_NE(s.message().find("quota of group 100: at most 12 GiB leased at once "
                             "(quota.group.users.max_vram)"),
            std::string::npos)
      << s.message();
  // A request for a kind's estimate (bytes 0) has no size yet: not refused for VRAM.
  EXPECT_TRUE(check(req(0), 1).ok());
}

TEST(ConfigQuota, AShareIsOfTheHostsCapacity) {
  auto r = parse("[quota.default]\nmax_vram = \"25%\"\n");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const std::vector<std::uint32_t> none;
  EXPECT_TRUE(core::check_quota_admission(r->quotas, req(20 * kGiB), 5, none, 80 * kGiB).ok());
  const Status s = core::check_quota_admission(r->quotas, req(20 * kGiB), 5, none, 40 * kGiB);
  EXPECT_EQ(s.code(), ErrorCode::kQuotaExceeded);
  EXPECT_NE(s.message().find("at most 25% of the host's 40 GiB, 10 GiB leased at once"),
            std::string::npos)
      << s.message();
}

TEST(ConfigQuota, NoQuotasRefuseNothing) {
  auto r = parse("[limits]\nmax_concurrent_jobs = 2\n");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->quotas.empty());
  EXPECT_TRUE(
      core::check_quota_admission(r->quotas, req(1000 * kGiB, 8, 100), 1000, {}, kGiB).ok());
}

TEST(ConfigQuota, TheGroupsOfAUserComeFromTheSystem) {
  // root's primary group is root (0).
  const std::vector<std::uint32_t> groups = core::groups_of(0);
  EXPECT_NE(std::find(groups.begin(), groups.end(), 0u), groups.end());
  EXPECT_TRUE(core::groups_of(4'000'000'000u).empty());
}

}  // namespace
}  // namespace gpumgr::config
