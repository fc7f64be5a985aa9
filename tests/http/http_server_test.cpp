// The HTTP server in-process: routes, content types, the read-only rule, the Host check,
// errors from the snapshot source, binding failures and stop().
#include "http/http_server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

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

// One raw exchange on a fresh loopback connection: sends `request`, then reads until the
// server closes or `limit` passes. Records how long the answer took to end.
struct RawAnswer {
  std::string bytes;
  bool closed = false;  // the server closed the connection (EOF or reset) within the limit
  double seconds = 0;
};

RawAnswer raw_exchange(int port, const std::string& request,
                       std::chrono::milliseconds limit = std::chrono::milliseconds(3000)) {
  RawAnswer answer;
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return answer;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const auto start = std::chrono::steady_clock::now();
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
          static_cast<ssize_t>(request.size())) {
    ::close(fd);
    return answer;
  }
  const auto deadline = start + limit;
  for (int round = 0; round < 10000; ++round) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      answer.closed = true;
      break;
    }
    answer.bytes.append(buf, static_cast<std::size_t>(n));
  }
  answer.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ::close(fd);
  return answer;
}

std::string header_block(const std::string& response) {
  return response.substr(0, response.find("\r\n\r\n") + 2);
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

TEST_F(HttpServerTest, EveryOtherMethodIs405AtOnce) {
  // docs/http.md: every method other than GET and HEAD gets 405 with Allow: GET, HEAD, at once:
  // known methods without handlers (TRACE, CONNECT), methods httplib does not know (BREW,
  // PROPFIND), and a POST whose body never comes (the server must not wait for it).
  const std::string host = "Host: 127.0.0.1\r\n";
  const std::vector<std::pair<std::string, std::string>> requests = {
      {"TRACE", "TRACE / HTTP/1.1\r\n" + host + "\r\n"},
      {"CONNECT", "CONNECT 127.0.0.1:443 HTTP/1.1\r\n" + host + "\r\n"},
      {"OPTIONS", "OPTIONS * HTTP/1.1\r\n" + host + "\r\n"},
      {"BREW", "BREW /pot HTTP/1.1\r\n" + host + "\r\n"},
      {"PROPFIND", "PROPFIND /api/v1/status HTTP/1.1\r\n" + host + "\r\n"},
      {"POST", "POST /api/v1/status HTTP/1.1\r\n" + host + "\r\n"},
      {"POST", "POST /api/v1/leases HTTP/1.1\r\n" + host + "Content-Length: 100\r\n\r\n"},
      {"DELETE", "DELETE /api/v1/leases HTTP/1.0\r\n\r\n"},
  };
  for (const auto& [method, request] : requests) {
    const RawAnswer answer = raw_exchange(server_->port(), request);
    const std::string head = header_block(answer.bytes);
    EXPECT_EQ(answer.bytes.rfind("HTTP/1.1 405 ", 0), 0u) << request << "->\n" << answer.bytes;
    EXPECT_NE(head.find("\r\nAllow: GET, HEAD\r\n"), std::string::npos) << request << head;
    EXPECT_NE(head.find("\r\nConnection: close\r\n"), std::string::npos) << request << head;
    EXPECT_NE(head.find("\r\nCache-Control: no-store\r\n"), std::string::npos) << head;
    EXPECT_NE(answer.bytes.find(method + " is not allowed"), std::string::npos) << answer.bytes;
    EXPECT_TRUE(answer.closed) << request;
    EXPECT_LT(answer.seconds, 1.0) << request;
  }
  // The connection after them still works, and a lease-changing method changed nothing.
  auto status = client_->Get("/healthz");
  ASSERT_TRUE(status);
  EXPECT_EQ(status->status, 200);
}

TEST_F(HttpServerTest, GarbageIs400AndClosedAtOnce) {
  // A TLS ClientHello (https:// to this port) never ends in a blank line: it is refused on
  // its first bytes rather than after the request timeout. So is a malformed request line.
  const std::string client_hello("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
  for (const std::string& request :
       {client_hello, std::string("G(T / HTTP/1.1\r\n\r\n"), std::string("GET\r\n\r\n")}) {
    const RawAnswer answer = raw_exchange(server_->port(), request);
    EXPECT_EQ(answer.bytes.rfind("HTTP/1.1 400 ", 0), 0u) << answer.bytes;
    EXPECT_TRUE(answer.closed);
    EXPECT_LT(answer.seconds, 1.0);
  }
}

TEST_F(HttpServerTest, KeepAliveAndPipelinedRequests) {
  // Two requests in one write on one connection: both answered, in order, then closed.
  const RawAnswer answer = raw_exchange(server_->port(),
                                        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                                        "HEAD /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                        "Connection: close\r\n\r\n");
  const auto first = answer.bytes.find("HTTP/1.1 200 OK");
  const auto second = answer.bytes.find("HTTP/1.1 200 OK", first + 1);
  ASSERT_NE(first, std::string::npos) << answer.bytes;
  ASSERT_NE(second, std::string::npos) << answer.bytes;
  EXPECT_NE(answer.bytes.find("ok\n"), std::string::npos);
  EXPECT_NE(answer.bytes.find("Content-Type: text/plain; version=0.0.4", second),
            std::string::npos);
  EXPECT_TRUE(answer.closed);
  EXPECT_LT(answer.seconds, 1.0);
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

// Connects to the server and sends `bytes` (perhaps nothing); the socket, or -1.
int open_raw(int port, const std::string& bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
      (!bytes.empty() && ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) !=
                             static_cast<ssize_t>(bytes.size()))) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Waits up to `limit` for the server to close `fd`; what it sent before closing, or nullopt
// while it is still open.
std::optional<std::string> wait_closed(int fd, std::chrono::milliseconds limit) {
  std::string got;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (int round = 0; round < 1000; ++round) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(0, left.count()))) <= 0) break;
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return got;
    got.append(buf, static_cast<std::size_t>(n));
  }
  return std::nullopt;
}

std::unique_ptr<HttpServer> start_with(const HttpOptions& options) {
  auto server = start_http_server(options, [] { return StatusOr<Snapshot>(Snapshot{}); });
  EXPECT_TRUE(server.ok()) << server.status().to_string();
  return server.ok() ? std::move(server).value() : nullptr;
}

TEST(HttpServerLimitsTest, AnUnfinishedRequestIsAnswered408AndClosed) {
  HttpOptions options;
  options.port = 0;
  options.request_timeout = std::chrono::milliseconds(300);
  auto server = start_with(options);
  ASSERT_TRUE(server);
  const auto start = std::chrono::steady_clock::now();
  const int partial = open_raw(server->port(), "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n");
  const int silent = open_raw(server->port(), "");
  ASSERT_GE(partial, 0);
  ASSERT_GE(silent, 0);
  const auto partial_got = wait_closed(partial, std::chrono::milliseconds(3000));
  const auto silent_got = wait_closed(silent, std::chrono::milliseconds(3000));
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ::close(partial);
  ::close(silent);
  ASSERT_TRUE(partial_got.has_value()) << "a half-sent request was not closed";
  EXPECT_EQ(partial_got->rfind("HTTP/1.1 408 Request Timeout\r\n", 0), 0u) << *partial_got;
  ASSERT_TRUE(silent_got.has_value()) << "a silent connection was not closed";
  EXPECT_EQ(*silent_got, "");  // nothing begun, nothing said
  EXPECT_GE(took, 0.25);
  EXPECT_LT(took, 2.0);
  // A client that finishes in time is served as usual.
  const RawAnswer ok = raw_exchange(
      server->port(), "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(ok.bytes.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << ok.bytes;
}

TEST(HttpServerLimitsTest, AtTheConnectionLimitTheLongestWaitingIsClosed) {
  HttpOptions options;
  options.port = 0;
  options.max_connections = 16;
  auto server = start_with(options);
  ASSERT_TRUE(server);
  std::vector<int> idle;
  for (int i = 0; i < 40; ++i) {
    const int fd = open_raw(server->port(), "GET / HTTP/1.1\r\n");
    ASSERT_GE(fd, 0);
    idle.push_back(fd);
  }
  // A new client is still served: room is made by closing those that waited longest.
  const RawAnswer health = raw_exchange(
      server->port(), "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(health.bytes.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << health.bytes;
  EXPECT_LT(health.seconds, 1.0);
  std::size_t closed = 0;
  for (int fd : idle) {
    if (wait_closed(fd, std::chrono::milliseconds(50)).has_value()) ++closed;
    ::close(fd);
  }
  EXPECT_GE(closed, 40u - 16u) << "of 40 waiting connections over a limit of 16";
  EXPECT_LT(closed, 40u);  // the newest ones are kept
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
