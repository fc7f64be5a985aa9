// The Prometheus exposition of a hand-built Snapshot, line by line.
#include "http/metrics.h"

#include <gtest/gtest.h>

#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "gpumgr/units.h"

namespace gpumgr::http {
namespace {

using std::chrono::system_clock;

system_clock::time_point at(double unix_seconds) {
  return system_clock::time_point(std::chrono::duration_cast<system_clock::duration>(
      std::chrono::duration<double>(unix_seconds)));
}

// Two devices: the first reports everything, the second (an old driver, say) no utilisation,
// temperature or power, and is unhealthy; its name needs escaping. Two leases: one over its
// 20 GiB on device 0 (22 GiB used, 23 GiB at peak), one on both devices whose use is known on
// device 0 only (its job id needs escaping).
Snapshot sample_snapshot() {
  Snapshot s;
  s.backend = {"nvml", "550.54.15", "12.4", "12.550.54.15"};
  s.config.max_concurrent_jobs = 4;
  s.config.memory_limit = 0.75;
  s.taken_at = at(1700000090.5);

  DeviceAccount a;
  a.info.index = 0;
  a.info.uuid = "GPU-aaaa";
  a.info.name = "NVIDIA H100 80GB HBM3";
  a.info.total_bytes = 80 * kGiB;
  a.info.used_bytes = 30 * kGiB;
  a.info.gpu_utilization_percent = 37;
  a.info.memory_utilization_percent = 12;
  a.info.temperature_c = 61;
  a.info.power_draw_w = 312.5;
  a.info.power_limit_w = 700;
  a.capacity_bytes = 60 * kGiB;
  a.leased_bytes = 24 * kGiB;
  a.foreign_bytes = 2 * kGiB;
  a.overuse_bytes = 2 * kGiB;
  a.admissible_bytes = 32 * kGiB;
  a.active_leases = 2;

  DeviceAccount b;
  b.info.index = 1;
  b.info.uuid = "GPU-bbbb";
  b.info.name = "Card \"B\"\\2";
  b.info.total_bytes = 16 * kGiB;
  b.info.used_bytes = 0;
  b.info.healthy = false;
  b.info.health_reason = "GPU is lost";
  b.capacity_bytes = 12 * kGiB;
  b.leased_bytes = 4 * kGiB;
  b.active_leases = 1;
  s.devices = {a, b};

  LeaseInfo over;
  over.job_id = "sdxl-1";
  over.devices = {0};
  over.bytes = 20 * kGiB;
  over.usage = {{0, 22 * kGiB, 23 * kGiB}};
  over.overused = true;
  over.overused_s = 4;
  LeaseInfo split;
  split.job_id = "tp \"2\"\\";
  split.devices = {0, 1};
  split.bytes = 4 * kGiB;
  split.usage = {{0, 3 * kGiB, 3 * kGiB + kGiB / 2}, {1, std::nullopt, std::nullopt}};
  s.leases = {over, split};
  s.queue.resize(3);
  s.users = {UserUsage{1000, 24 * kGiB, 2, 1, 32 * kGiB, std::nullopt, 1234.5},
             UserUsage{1001, 0, 0, 2, std::nullopt, 4, 0}};
  s.stats.jobs_succeeded = 7;
  s.stats.jobs_failed = 1;
  s.stats.jobs_rejected = 2;
  s.stats.jobs_timed_out = 3;
  s.stats.jobs_cancelled = 0;
  s.stats.overuse_events = 5;
  s.stats.overuse_terminations = 2;
  s.stats.wait_seconds.bounds = {0.1, 1, 10};
  s.stats.wait_seconds.counts = {4, 6, 9, 10};
  s.stats.wait_seconds.count = 10;
  s.stats.wait_seconds.sum = 25.25;
  s.stats.hold_seconds.bounds = {60, 600};
  s.stats.hold_seconds.counts = {1, 7, 8};
  s.stats.hold_seconds.count = 8;
  s.stats.hold_seconds.sum = 1234.5;
  return s;
}

MetricsContext sample_context() { return {"9.8.7", at(1700000000)}; }

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(MetricsTest, RendersTheWholeExpositionExactly) {
  const std::string expected =
      R"(# HELP gpumgr_build_info Always 1; the labels say which gpumgr and which device backend serve these metrics.
# TYPE gpumgr_build_info gauge
gpumgr_build_info{version="9.8.7",backend="nvml",driver_version="550.54.15",cuda_driver_version="12.4"} 1
# HELP gpumgr_start_time_seconds When the serving process started, in seconds since the Unix epoch.
# TYPE gpumgr_start_time_seconds gauge
gpumgr_start_time_seconds 1700000000
# HELP gpumgr_uptime_seconds Seconds since the serving process started.
# TYPE gpumgr_uptime_seconds gauge
gpumgr_uptime_seconds 90.5
# HELP gpumgr_memory_limit_ratio Share of each device's memory that leases may hold (--memory-limit).
# TYPE gpumgr_memory_limit_ratio gauge
gpumgr_memory_limit_ratio 0.75
# HELP gpumgr_max_concurrent_jobs How many leases may be active at once (--max-concurrent-jobs).
# TYPE gpumgr_max_concurrent_jobs gauge
gpumgr_max_concurrent_jobs 4
# HELP gpumgr_device_memory_total_bytes Device memory, in bytes.
# TYPE gpumgr_device_memory_total_bytes gauge
gpumgr_device_memory_total_bytes{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 85899345920
gpumgr_device_memory_total_bytes{gpu="1",uuid="GPU-bbbb",name="Card \"B\"\\2"} 17179869184
# HELP gpumgr_device_memory_used_bytes Device memory in use by any process, as the driver reports it, in bytes.
# TYPE gpumgr_device_memory_used_bytes gauge
gpumgr_device_memory_used_bytes{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 32212254720
gpumgr_device_memory_used_bytes{gpu="1",uuid="GPU-bbbb",name="Card \"B\"\\2"} 0
# HELP gpumgr_device_memory_capacity_bytes Device memory that leases may hold: memory limit times total, in bytes.
# TYPE gpumgr_device_memory_capacity_bytes gauge
gpumgr_device_memory_capacity_bytes{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 64424509440
gpumgr_device_memory_capacity_bytes{gpu="1",uuid="GPU-bbbb",name="Card \"B\"\\2"} 12884901888
# HELP gpumgr_device_memory_leased_bytes Device memory promised to active leases, in bytes.
# TYPE gpumgr_device_memory_leased_bytes gauge
gpumgr_device_memory_leased_bytes{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 25769803776
gpumgr_device_memory_leased_bytes{gpu="1",uuid="GPU-bbbb",name="Card \"B\"\\2"} 4294967296
# HELP gpumgr_device_memory_outside_bytes Device memory used by processes that hold no lease, in bytes.
# TYPE gpumgr_device_memory_outside_bytes gauge
gpumgr_device_memory_outside_bytes{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 2147483648
gpumgr_device_memory_outside_bytes{gpu="1",uuid="GPU-bbbb",name="Card \"B\"\\2"} 0
# HELP gpumgr_device_memory_admissible_bytes Device memory a new lease could be granted now: capacity - leased - overuse - outside.
# TYPE gpumgr_device_memory_admissible_bytes gauge
gpumgr_device_memory_admissible_bytes{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 34359738368
gpumgr_device_memory_admissible_bytes{gpu="1",uuid="GPU-bbbb",name="Card \"B\"\\2"} 0
# HELP gpumgr_device_overuse_bytes Device memory lease holders use beyond their leases (the sum over leases of used - leased, where positive), in bytes.
# TYPE gpumgr_device_overuse_bytes gauge
gpumgr_device_overuse_bytes{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 2147483648
gpumgr_device_overuse_bytes{gpu="1",uuid="GPU-bbbb",name="Card \"B\"\\2"} 0
# HELP gpumgr_device_leases_active Active leases placed on the device.
# TYPE gpumgr_device_leases_active gauge
gpumgr_device_leases_active{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 2
gpumgr_device_leases_active{gpu="1",uuid="GPU-bbbb",name="Card \"B\"\\2"} 1
# HELP gpumgr_device_utilization_ratio Share of the last sample period the device was busy (0 to 1).
# TYPE gpumgr_device_utilization_ratio gauge
gpumgr_device_utilization_ratio{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 0.37
# HELP gpumgr_device_memory_utilization_ratio Share of the last sample period device memory was read or written (0 to 1).
# TYPE gpumgr_device_memory_utilization_ratio gauge
gpumgr_device_memory_utilization_ratio{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 0.12
# HELP gpumgr_device_temperature_celsius Device temperature, in degrees Celsius.
# TYPE gpumgr_device_temperature_celsius gauge
gpumgr_device_temperature_celsius{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 61
# HELP gpumgr_device_power_watts Device power draw, in watts.
# TYPE gpumgr_device_power_watts gauge
gpumgr_device_power_watts{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 312.5
# HELP gpumgr_device_power_limit_watts Device power limit, in watts.
# TYPE gpumgr_device_power_limit_watts gauge
gpumgr_device_power_limit_watts{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 700
# HELP gpumgr_device_healthy 1 while the device is healthy, else 0.
# TYPE gpumgr_device_healthy gauge
gpumgr_device_healthy{gpu="0",uuid="GPU-aaaa",name="NVIDIA H100 80GB HBM3"} 1
gpumgr_device_healthy{gpu="1",uuid="GPU-bbbb",name="Card \"B\"\\2"} 0
# HELP gpumgr_leases_active Active leases (jobs holding memory).
# TYPE gpumgr_leases_active gauge
gpumgr_leases_active 2
# HELP gpumgr_queue_depth Requests waiting in the queue.
# TYPE gpumgr_queue_depth gauge
gpumgr_queue_depth 3
# HELP gpumgr_user_leased_bytes VRAM a user's leases hold (each lease's size times its devices), in bytes.
# TYPE gpumgr_user_leased_bytes gauge
gpumgr_user_leased_bytes{uid="1000"} 25769803776
gpumgr_user_leased_bytes{uid="1001"} 0
# HELP gpumgr_user_jobs A user's active leases.
# TYPE gpumgr_user_jobs gauge
gpumgr_user_jobs{uid="1000"} 2
gpumgr_user_jobs{uid="1001"} 0
# HELP gpumgr_user_waiting A user's waiting requests.
# TYPE gpumgr_user_waiting gauge
gpumgr_user_waiting{uid="1000"} 1
gpumgr_user_waiting{uid="1001"} 2
# HELP gpumgr_user_quota_vram_bytes The tightest max_vram quota that applies to a user, in bytes; no sample: no limit.
# TYPE gpumgr_user_quota_vram_bytes gauge
gpumgr_user_quota_vram_bytes{uid="1000"} 34359738368
# HELP gpumgr_user_quota_jobs The tightest max_jobs quota that applies to a user; no sample: no limit.
# TYPE gpumgr_user_quota_jobs gauge
gpumgr_user_quota_jobs{uid="1001"} 4
# HELP gpumgr_user_fair_share_gib_seconds A user's recent use, as fair share weighs it: GiB-seconds leased, decayed with the fair-share half-life.
# TYPE gpumgr_user_fair_share_gib_seconds gauge
gpumgr_user_fair_share_gib_seconds{uid="1000"} 1234.5
gpumgr_user_fair_share_gib_seconds{uid="1001"} 0
# HELP gpumgr_lease_size_bytes What a lease holds on each of its devices, in bytes.
# TYPE gpumgr_lease_size_bytes gauge
gpumgr_lease_size_bytes{job_id="sdxl-1",gpu="0"} 21474836480
gpumgr_lease_size_bytes{job_id="tp \"2\"\\",gpu="0"} 4294967296
gpumgr_lease_size_bytes{job_id="tp \"2\"\\",gpu="1"} 4294967296
# HELP gpumgr_lease_used_bytes What a lease's holder (its process and their descendants) uses on the device at the last poll, in bytes; no sample where that cannot be measured.
# TYPE gpumgr_lease_used_bytes gauge
gpumgr_lease_used_bytes{job_id="sdxl-1",gpu="0"} 23622320128
gpumgr_lease_used_bytes{job_id="tp \"2\"\\",gpu="0"} 3221225472
# HELP gpumgr_lease_peak_used_bytes The most a lease's holder has used on the device during the lease, in bytes; no sample where that cannot be measured.
# TYPE gpumgr_lease_peak_used_bytes gauge
gpumgr_lease_peak_used_bytes{job_id="sdxl-1",gpu="0"} 24696061952
gpumgr_lease_peak_used_bytes{job_id="tp \"2\"\\",gpu="0"} 3758096384
# HELP gpumgr_lease_overused 1 while a lease's holder uses more than the lease (beyond the overuse tolerance) on any of its devices, else 0.
# TYPE gpumgr_lease_overused gauge
gpumgr_lease_overused{job_id="sdxl-1"} 1
gpumgr_lease_overused{job_id="tp \"2\"\\"} 0
# HELP gpumgr_lease_overuse_total Times a lease's holder went over its lease (beyond the tolerance): one per episode.
# TYPE gpumgr_lease_overuse_total counter
gpumgr_lease_overuse_total 5
# HELP gpumgr_lease_overuse_terminations_total Leases whose holder the overuse policy (--on-overuse terminate) terminated.
# TYPE gpumgr_lease_overuse_terminations_total counter
gpumgr_lease_overuse_terminations_total 2
# HELP gpumgr_lease_revocable 1 for each revocable lease, labelled preemptible or resident (plain leases have no sample).
# TYPE gpumgr_lease_revocable gauge
# HELP gpumgr_lease_revoke_deadline_seconds Seconds until the holder of a lease being revoked is killed unless it releases.
# TYPE gpumgr_lease_revoke_deadline_seconds gauge
# HELP gpumgr_revocations_total Revocable leases revoked for a waiter (or on request), by cause: preempted (a preemptible job) or resident (an idle model).
# TYPE gpumgr_revocations_total counter
gpumgr_revocations_total{cause="preempted"} 0
gpumgr_revocations_total{cause="resident"} 0
# HELP gpumgr_revocation_kills_total Holders of revoked leases killed because they had not released at the grace's end.
# TYPE gpumgr_revocation_kills_total counter
gpumgr_revocation_kills_total 0
# HELP gpumgr_jobs_total Jobs that ended, by outcome: succeeded or failed (released leases), rejected (refused), timed_out or cancelled (gave up waiting).
# TYPE gpumgr_jobs_total counter
gpumgr_jobs_total{outcome="succeeded"} 7
gpumgr_jobs_total{outcome="failed"} 1
gpumgr_jobs_total{outcome="rejected"} 2
gpumgr_jobs_total{outcome="timed_out"} 3
gpumgr_jobs_total{outcome="cancelled"} 0
# HELP gpumgr_job_wait_seconds Time from request to grant of every granted lease, in seconds.
# TYPE gpumgr_job_wait_seconds histogram
gpumgr_job_wait_seconds_bucket{le="0.1"} 4
gpumgr_job_wait_seconds_bucket{le="1"} 6
gpumgr_job_wait_seconds_bucket{le="10"} 9
gpumgr_job_wait_seconds_bucket{le="+Inf"} 10
gpumgr_job_wait_seconds_sum 25.25
gpumgr_job_wait_seconds_count 10
# HELP gpumgr_job_hold_seconds Time from grant to release of every lease, in seconds.
# TYPE gpumgr_job_hold_seconds histogram
gpumgr_job_hold_seconds_bucket{le="60"} 1
gpumgr_job_hold_seconds_bucket{le="600"} 7
gpumgr_job_hold_seconds_bucket{le="+Inf"} 8
gpumgr_job_hold_seconds_sum 1234.5
gpumgr_job_hold_seconds_count 8
)";
  const auto want = lines_of(expected);
  const auto got = lines_of(render_metrics(sample_snapshot(), sample_context()));
  // Line by line first, so that a failure names the line rather than dumping both texts.
  for (std::size_t i = 0; i < std::min(want.size(), got.size()); ++i) {
    ASSERT_EQ(got[i], want[i]) << "line " << i + 1;
  }
  EXPECT_EQ(got.size(), want.size());
  EXPECT_EQ(render_metrics(sample_snapshot(), sample_context()).back(), '\n');
}

TEST(MetricsTest, DeviceWithoutReadingsHasNoSampleRatherThanZero) {
  Snapshot s = sample_snapshot();
  s.devices.erase(s.devices.begin());  // only the device that reports no utilisation
  const std::string text = render_metrics(s, sample_context());
  EXPECT_EQ(text.find("gpumgr_device_utilization_ratio{"), std::string::npos);
  EXPECT_EQ(text.find("gpumgr_device_temperature_celsius{"), std::string::npos);
  EXPECT_EQ(text.find("gpumgr_device_power_watts{"), std::string::npos);
  // The family is still described, so that dashboards see the name.
  EXPECT_NE(text.find("# TYPE gpumgr_device_power_watts gauge\n"), std::string::npos);
}

TEST(MetricsTest, LeaseUseWithoutAMeasurementHasNoSample) {
  Snapshot s = sample_snapshot();
  s.leases[0].usage = {{0, std::nullopt, std::nullopt}};
  s.leases[1].usage.clear();  // nothing measured yet (an older daemon, say)
  const std::string text = render_metrics(s, sample_context());
  EXPECT_EQ(text.find("gpumgr_lease_used_bytes{"), std::string::npos) << text;
  EXPECT_EQ(text.find("gpumgr_lease_peak_used_bytes{"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE gpumgr_lease_used_bytes gauge\n"), std::string::npos);
  // The size and the flag do not depend on a measurement.
  EXPECT_NE(text.find("\ngpumgr_lease_size_bytes{job_id=\"sdxl-1\",gpu=\"0\"} 21474836480\n"),
            std::string::npos);
  EXPECT_NE(text.find("\ngpumgr_lease_overused{job_id=\"sdxl-1\"} 1\n"), std::string::npos);
  // A measured 0 is a sample of 0.
  s.leases[0].usage = {{0, 0, 0}};
  EXPECT_NE(render_metrics(s, sample_context())
                .find("\ngpumgr_lease_used_bytes{job_id=\"sdxl-1\",gpu=\"0\"} 0\n"),
            std::string::npos);
}

TEST(MetricsTest, EscapesLabelValues) {
  EXPECT_EQ(escape_label_value(R"(a"b\c)"), R"(a\"b\\c)");
  EXPECT_EQ(escape_label_value("line\nbreak"), R"(line\nbreak)");
  EXPECT_EQ(escape_label_value("plain 80GB"), "plain 80GB");
  Snapshot s;
  DeviceAccount d;
  d.info.name = "evil\"} 1\nfake_metric 2";
  s.devices = {d};
  LeaseInfo l;
  l.job_id = "job\"} 1\nfake_lease 3";
  l.devices = {0};
  l.usage = {{0, kGiB, kGiB}};
  s.leases = {l};
  const std::string text = render_metrics(s, sample_context());
  EXPECT_EQ(text.find("\nfake_metric 2"), std::string::npos) << text;
  EXPECT_EQ(text.find("\nfake_lease 3"), std::string::npos) << text;
  EXPECT_NE(text.find("gpumgr_lease_used_bytes{job_id=\"job\\\"} 1\\nfake_lease 3\",gpu=\"0\"} "
                      "1073741824\n"),
            std::string::npos)
      << text;
}

TEST(MetricsTest, FormatsSampleValues) {
  EXPECT_EQ(format_sample_value(0.1), "0.1");
  EXPECT_EQ(format_sample_value(1), "1");
  EXPECT_EQ(format_sample_value(-3), "-3");
  EXPECT_EQ(format_sample_value(1700000000), "1700000000");
  EXPECT_EQ(format_sample_value(2.5e-7), "2.5e-07");
  EXPECT_EQ(format_sample_value(1e21), "1e+21");
  EXPECT_EQ(format_sample_value(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(format_sample_value(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(format_sample_value(std::numeric_limits<double>::quiet_NaN()), "NaN");
}

TEST(MetricsTest, HistogramWithoutBoundsHasOnlyTheInfBucket) {
  Snapshot s;
  s.stats.hold_seconds.count = 3;
  s.stats.hold_seconds.counts = {3};
  s.stats.hold_seconds.sum = 4.5;
  const std::string text = render_metrics(s, sample_context());
  EXPECT_NE(text.find("gpumgr_job_hold_seconds_bucket{le=\"+Inf\"} 3\n"
                      "gpumgr_job_hold_seconds_sum 4.5\n"
                      "gpumgr_job_hold_seconds_count 3\n"),
            std::string::npos)
      << text;
}

}  // namespace
}  // namespace gpumgr::http
