// What `gpumgr slurm conf` prints and what the SPANK plugin reads from a task's environment.
#include "slurm/gres_conf.h"

#include <gtest/gtest.h>

#include "gpumgr/units.h"
#include "slurm/task_env.h"

namespace gpumgr::slurm {
namespace {

TEST(GresConfTest, OneGpuAndOneShardLinePerDeviceWholeUnitsOfTheLeasableMemory) {
  // 24 GiB at a 0.8 memory limit: 19.2 GiB leasable, 19 whole GiB; 80 GiB: 64.
  const std::vector<GresDevice> devices = {{0, "GPU-a", 24 * kGiB * 8 / 10},
                                           {1, "GPU-b", 64 * kGiB}};
  auto out = make_gres_conf(devices, GresOptions{});
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ(out->shards, (std::vector<std::uint64_t>{19, 64}));
  EXPECT_NE(out->gres_conf.find("\nName=gpu File=/dev/nvidia0\nName=gpu File=/dev/nvidia1\n"
                                "Name=shard Count=19 File=/dev/nvidia0\n"
                                "Name=shard Count=64 File=/dev/nvidia1\n"),
            std::string::npos)
      << out->gres_conf;
  EXPECT_EQ(out->node_gres, "Gres=gpu:2,shard:83");
  // Every line that is not a line Slurm reads is a comment.
  std::size_t start = 0;
  while (start < out->gres_conf.size()) {
    const std::size_t nl = out->gres_conf.find('\n', start);
    ASSERT_NE(nl, std::string::npos);
    const std::string line = out->gres_conf.substr(start, nl - start);
    EXPECT_TRUE(line.rfind("#", 0) == 0 || line.rfind("Name=", 0) == 0) << line;
    start = nl + 1;
  }
}

TEST(GresConfTest, NodeNameUnitAndFilePattern) {
  GresOptions options;
  options.node_name = "n1";
  options.unit_bytes = 512 * kMiB;
  options.file_pattern = "/tmp/x/n1-gpu%d";
  auto out = make_gres_conf({{0, "SIM-0", 3 * kGiB + 100}}, options);
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_NE(out->gres_conf.find("NodeName=n1 Name=gpu File=/tmp/x/n1-gpu0\n"
                                "NodeName=n1 Name=shard Count=6 File=/tmp/x/n1-gpu0\n"),
            std::string::npos)
      << out->gres_conf;
  EXPECT_EQ(out->node_gres, "NodeName=n1 Gres=gpu:1,shard:6");
}

TEST(GresConfTest, ADeviceBelowOneUnitGetsNoShardLineAndNoDeviceAtAllIsAnError) {
  auto out = make_gres_conf({{0, "a", kGiB / 2}, {1, "b", 2 * kGiB}}, GresOptions{});
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->gres_conf.find("Count=0"), std::string::npos);
  EXPECT_NE(out->gres_conf.find("Name=shard Count=2 File=/dev/nvidia1\n"), std::string::npos);
  EXPECT_EQ(out->node_gres, "Gres=gpu:2,shard:2");
  auto none = make_gres_conf({{0, "a", kGiB / 2}}, GresOptions{});
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("smaller --unit"), std::string::npos);
  EXPECT_FALSE(make_gres_conf({}, GresOptions{}).ok());
}

TEST(GresConfTest, BadPatternsNodeNamesAndUnitsAreRefusedWithTheReason) {
  for (const char* bad : {"dev/nvidia%d", "/dev/nvidia", "/dev/%d%d", "/dev/a b%d", "/dev/%s%d",
                          "/dev/x#%d", "/dev/x,%d"}) {
    GresOptions options;
    options.file_pattern = bad;
    EXPECT_FALSE(make_gres_conf({{0, "a", kGiB}}, options).ok()) << bad;
  }
  GresOptions named;
  named.node_name = "n 1";
  EXPECT_FALSE(make_gres_conf({{0, "a", kGiB}}, named).ok());
  EXPECT_EQ(*parse_shard_unit("GiB"), kGiB);
  EXPECT_EQ(*parse_shard_unit("512MiB"), 512 * kMiB);
  EXPECT_EQ(*parse_shard_unit("GB"), 1000000000u);
  EXPECT_FALSE(parse_shard_unit("").ok());
  EXPECT_FALSE(parse_shard_unit("0GiB").ok());
  EXPECT_FALSE(parse_shard_unit("gallons").ok());
}

TEST(TaskEnvTest, GpuIndicesComeFromSlurmsVariablesInOrderOfPrecedence) {
  EXPECT_EQ(*slurm_gpu_indices("1", "0,1", "0"), std::vector<int>{1});
  EXPECT_EQ(*slurm_gpu_indices(std::nullopt, "0,1", "0"), (std::vector<int>{0, 1}));
  EXPECT_EQ(*slurm_gpu_indices("", std::nullopt, "1"), std::vector<int>{1});
  const auto none = slurm_gpu_indices(std::nullopt, std::nullopt, std::nullopt);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("--gres=shard"), std::string::npos);
  const auto uuids = slurm_gpu_indices(std::nullopt, std::nullopt, "GPU-8f0d");
  ASSERT_FALSE(uuids.ok());
  EXPECT_NE(uuids.status().message().find("CUDA_VISIBLE_DEVICES"), std::string::npos);
  EXPECT_FALSE(slurm_gpu_indices(std::nullopt, std::nullopt, "0,,1").ok());
  EXPECT_FALSE(slurm_gpu_indices(std::nullopt, std::nullopt, "-1").ok());
}

TEST(TaskEnvTest, LeaseSizeFromVramElseShards) {
  EXPECT_EQ(**lease_bytes("12GiB", "5", kGiB, 1), 12 * kGiB);
  EXPECT_EQ(**lease_bytes("auto", std::nullopt, kGiB, 1), 0u);
  EXPECT_EQ(**lease_bytes(std::nullopt, "12", kGiB, 1), 12 * kGiB);
  EXPECT_EQ(**lease_bytes(std::nullopt, "12", kGiB, 3), 4 * kGiB);  // shared by the tasks
  EXPECT_FALSE(lease_bytes(std::nullopt, std::nullopt, kGiB, 1)->has_value());
  EXPECT_FALSE(lease_bytes(std::nullopt, "0", kGiB, 1)->has_value());
  EXPECT_FALSE(lease_bytes("0", std::nullopt, kGiB, 1).ok());
  EXPECT_FALSE(lease_bytes("12 GiB", std::nullopt, kGiB, 1).ok());
  EXPECT_FALSE(lease_bytes(std::nullopt, "twelve", kGiB, 1).ok());
}

TEST(TaskEnvTest, JobIdsSocketPathsAndPluginArguments) {
  EXPECT_EQ(lease_job_id(42, 0, 3), "slurm-42.0.3");
  EXPECT_EQ(lease_job_id(42, 0xfffffffb, 0), "slurm-42.batch.0");
  EXPECT_EQ(*expand_socket_path("/run/gpumgr/%n.sock", "n1"), "/run/gpumgr/n1.sock");
  EXPECT_EQ(*expand_socket_path("/run/100%%/%n", "n2"), "/run/100%/n2");
  EXPECT_FALSE(expand_socket_path("/run/%s", "n1").ok());
  auto config = parse_plugin_args({"socket=/run/g/%n.sock", "optional", "unit=512MiB"});
  ASSERT_TRUE(config.ok()) << config.status().message();
  EXPECT_EQ(config->socket, "/run/g/%n.sock");
  EXPECT_TRUE(config->optional);
  EXPECT_EQ(config->unit_bytes, 512 * kMiB);
  EXPECT_FALSE(parse_plugin_args({}).value().optional);
  EXPECT_FALSE(parse_plugin_args({"socket=relative"}).ok());
  EXPECT_FALSE(parse_plugin_args({"sockt=/x"}).ok());
  EXPECT_FALSE(parse_plugin_args({"unit=0"}).ok());
}

TEST(TaskEnvTest, MessagesRoundTripAndBadOnesAreRefused) {
  const Message m = {{"want", "lease"}, {"command", "python train.py\nrm -rf"}, {"empty", ""}};
  auto back = decode_message(encode_message(m));
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ((*back)["want"], "lease");
  EXPECT_EQ((*back)["command"], "python train.py rm -rf");  // a newline cannot end it early
  EXPECT_EQ((*back)["empty"], "");
  EXPECT_FALSE(decode_message("want=lease\n").ok());  // no end
  EXPECT_FALSE(decode_message("bad key=1\n\n").ok());
  EXPECT_FALSE(decode_message("noequals\n\n").ok());
  EXPECT_TRUE(decode_message("\n").value().empty());
}

}  // namespace
}  // namespace gpumgr::slurm
