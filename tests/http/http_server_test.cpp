// The HTTP server in-process: routes, content types, the read-only rule, the Host check,
// errors from the snapshot source, binding failures and stop().
#include "http/http_server.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <nlohmann/json.hpp>

#include "gpumgr/backends.h"
#include "gpumgr/manager.h"
#include "gpumgr/units.h"

namespace gpumgr::http {
namespace {

LeaseRequest request(std::string job, std::uint64_t bytes) {
  LeaseRequest r;
  r.job_id = std::move(job);
  r.bytes = bytes;
  return r;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ManagerOptions options;
    options.in_process_only = true;
    auto backend = SimulatedBackend::from_spec("2x24GiB");
    ASSERT_TRUE(backend.ok());
    auto manager = Manager::create(options, backend.value());
    ASSERT_TRUE(manager.ok()) << manager.status().to_string();
    manager_ = std::move(manager).value();
    HttpOptions http;
    http.port = 0;
    auto server = start_http_server(http, [this]() -> StatusOr<Snapshot> {
      if (fail_.load()) return Unavailable("backend gone");
      return manager_->snapshot();
    });
    ASSERT_TRUE(server.ok()) << server.status().to_string();
    server_ = std::move(server).value();
    ASSERT_GT(server_->port(), 0);
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client_->set_read_timeout(10, 0);
  }

  std::shared_ptr<Manager> manager_;
  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<httplib::Client> client_;
  std::atomic<bool> fail_{false};
};

TEST_F(HttpServerTest, MetricsAreTheTextFormat) {
  auto lease = manager_->try_acquire(request("job-a", 3 * kGiB));
  ASSERT_TRUE(lease.ok());
  auto res = client_->Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  const std::string leased_line =
      "gpumgr_device_memory_leased_bytes{gpu=\"" + std::to_string(lease->device()) +
      "\",uuid=\"SIM-" + std::to_string(lease->device()) + "\",name=\"Simulated GPU (24 GiB)\"} " +
      std::to_string(3 * kGiB) + "\n";
  EXPECT_NE(res->body.find(leased_line), std::string::npos) << res->body;
  EXPECT_NE(res->body.find("\ngpumgr_leases_active 1\n"), std::string::npos);
}

TEST_F(HttpServerTest, StatusIsTheStatusJson) {
  auto lease = manager_->try_acquire(request("job-b", 5 * kGiB));
  ASSERT_TRUE(lease.ok());
  auto res = client_->Get("/api/v1/status");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json; charset=utf-8");
  const auto json = nlohmann::json::parse(res->body);
  EXPECT_EQ(json.at("version"), 1);
  ASSERT_EQ(json.at("leases").size(), 1u);
  EXPECT_EQ(json.at("leases")[0].at("job_id"), "job-b");
  EXPECT_EQ(json.at("leases")[0].at("bytes"), 5 * kGiB);
  EXPECT_EQ(json.at("devices").size(), 2u);

  auto leases = client_->Get("/api/v1/leases");
  ASSERT_TRUE(leases);
  EXPECT_EQ(leases->status, 200);
  const auto lj = nlohmann::json::parse(leases->body);
  ASSERT_EQ(lj.at("leases").size(), 1u);
  EXPECT_EQ(lj.at("leases")[0].at("job_id"), "job-b");
  EXPECT_TRUE(lj.at("queue").empty());
}

TEST_F(HttpServerTest, ServesTheDashboardFromTheBinary) {
  auto page = client_->Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_EQ(page->get_header_value("Content-Type"), "text/html; charset=utf-8");
  EXPECT_NE(page->body.find("<title>gpumgr</title>"), std::string::npos);
  EXPECT_NE(page->get_header_value("Content-Security-Policy").find("default-src 'self'"),
            std::string::npos);
  // No third-party URL anywhere in the page: hosts without internet must get all of it.
  EXPECT_EQ(page->body.find("https://"), std::string::npos);
  for (const char* path : {"/assets/dashboard.js", "/assets/dashboard.css"}) {
    auto asset = client_->Get(path);
    ASSERT_TRUE(asset) << path;
    EXPECT_EQ(asset->status, 200) << path;
    EXPECT_GT(asset->body.size(), 1000u) << path;
    EXPECT_EQ(asset->body.find("https://"), std::string::npos) << path;
  }
  EXPECT_EQ(client_->Get("/assets/dashboard.js")->get_header_value("Content-Type"),
            "text/javascript; charset=utf-8");
  EXPECT_EQ(client_->Get("/assets/missing.js")->status, 404);
}

TEST_F(HttpServerTest, IsReadOnly) {
  for (const char* path : {"/api/v1/leases", "/api/v1/status", "/metrics", "/"}) {
    auto post = client_->Post(path, "{\"job_id\":\"x\"}", "application/json");
    ASSERT_TRUE(post) << path;
    EXPECT_EQ(post->status, 405) << path;
    EXPECT_EQ(post->get_header_value("Allow"), "GET, HEAD") << path;
    auto del = client_->Delete(path);
    ASSERT_TRUE(del) << path;
    EXPECT_EQ(del->status, 405) << path;
    auto put = client_->Put(path, "x", "text/plain");
    ASSERT_TRUE(put) << path;
    EXPECT_EQ(put->status, 405) << path;
  }
  auto head = client_->Head("/api/v1/status");
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
}

TEST_F(HttpServerTest, UnknownPathIs404) {
  auto res = client_->Get("/api/v2/status");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  EXPECT_NE(res->body.find("/metrics"), std::string::npos) << res->body;
}

TEST_F(HttpServerTest, RefusesForeignHostHeaders) {
  // A page on evil.example whose name was rebound to 127.0.0.1 must not read the job list.
  auto rebound = client_->Get("/api/v1/status", {{"Host", "evil.example:9400"}});
  ASSERT_TRUE(rebound);
  EXPECT_EQ(rebound->status, 403);
  auto local = client_->Get("/api/v1/status", {{"Host", "localhost:9400"}});
  ASSERT_TRUE(local);
  EXPECT_EQ(local->status, 200);
  auto v6 = client_->Get("/metrics", {{"Host", "[::1]:9400"}});
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->status, 200);
}

TEST_F(HttpServerTest, SourceFailureIs503) {
  fail_.store(true);
  auto res = client_->Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_NE(res->body.find("backend gone"), std::string::npos) << res->body;
  fail_.store(false);
  EXPECT_EQ(client_->Get("/metrics")->status, 200);
}

TEST_F(HttpServerTest, PortInUseIsUnavailable) {
  HttpOptions same;
  same.port = server_->port();
  auto second = start_http_server(same, [] { return StatusOr<Snapshot>(Snapshot{}); });
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(second.status().message().find(std::to_string(server_->port())), std::string::npos);
}

TEST_F(HttpServerTest, StopIsIdempotentAndClosesThePort) {
  server_->stop();
  server_->stop();
  httplib::Client after("127.0.0.1", server_->port());
  after.set_connection_timeout(2, 0);
  EXPECT_FALSE(after.Get("/metrics"));
}

TEST(HttpServerStartTest, RefusesPublicAddressWithoutAllowPublic) {
  HttpOptions options;
  options.host = "0.0.0.0";
  options.port = 0;
  auto server = start_http_server(options, [] { return StatusOr<Snapshot>(Snapshot{}); });
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(server.status().message().find("--http-public"), std::string::npos);
}

TEST(HttpServerStartTest, StopRightAfterStartReturns) {
  // httplib ignores stop() until its accept loop runs; start() must not return before that,
  // or this loop hangs (it did, on a loaded machine).
  for (int i = 0; i < 50; ++i) {
    HttpOptions options;
    options.port = 0;
    auto server = start_http_server(options, [] { return StatusOr<Snapshot>(Snapshot{}); });
    ASSERT_TRUE(server.ok()) << server.status().to_string();
    server.value()->stop();
  }
}

TEST(HttpServerStartTest, NeedsASource) {
  HttpOptions options;
  options.port = 0;
  auto server = start_http_server(options, nullptr);
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace gpumgr::http
