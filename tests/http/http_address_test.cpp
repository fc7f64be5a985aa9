// parse_http_address and the loopback rule: what `gpumgr serve --http` accepts.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "http/http_server.h"

namespace gpumgr::http {
namespace {

TEST(HttpAddressTest, ParsesLoopbackAddresses) {
  auto v4 = parse_http_address("127.0.0.1:9400", false);
  ASSERT_TRUE(v4.ok()) << v4.status().to_string();
  EXPECT_EQ(v4->host, "127.0.0.1");
  EXPECT_EQ(v4->port, 9400);
  EXPECT_FALSE(v4->allow_public);

  auto v6 = parse_http_address("[::1]:8080", false);
  ASSERT_TRUE(v6.ok()) << v6.status().to_string();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 8080);

  auto name = parse_http_address("localhost:0", false);
  ASSERT_TRUE(name.ok()) << name.status().to_string();
  EXPECT_EQ(name->host, "localhost");
  EXPECT_EQ(name->port, 0);

  auto other_loopback = parse_http_address("127.3.2.1:65535", false);
  ASSERT_TRUE(other_loopback.ok()) << other_loopback.status().to_string();
  EXPECT_EQ(other_loopback->port, 65535);
}

TEST(HttpAddressTest, RefusesPublicAddressesWithoutAllowPublic) {
  for (const char* text : {"0.0.0.0:9400", "[::]:9400", "192.168.1.5:9400", "gpu-box:9400",
                           "[2001:db8::1]:9400", "128.0.0.1:9400"}) {
    auto refused = parse_http_address(text, false);
    ASSERT_FALSE(refused.ok()) << text;
    EXPECT_EQ(refused.status().code(), ErrorCode::kInvalidArgument) << text;
    EXPECT_NE(refused.status().message().find("--http-public"), std::string::npos)
        << refused.status().message();

    auto allowed = parse_http_address(text, true);
    ASSERT_TRUE(allowed.ok()) << text << ": " << allowed.status().to_string();
    EXPECT_TRUE(allowed->allow_public);
    EXPECT_EQ(allowed->port, 9400);
  }
  EXPECT_EQ(parse_http_address("0.0.0.0:9400", true)->host, "0.0.0.0");
  EXPECT_EQ(parse_http_address("[::]:9400", true)->host, "::");
}

TEST(HttpAddressTest, RejectsMalformedAddresses) {
  for (const char* text :
       {"", "9400", "127.0.0.1", "127.0.0.1:", ":9400", "127.0.0.1:65536", "127.0.0.1:-1",
        "127.0.0.1:94x0", "::1:9400", "[::1]9400", "[::1]", "127.0.0.1:9400 "}) {
    auto parsed = parse_http_address(text, true);
    EXPECT_FALSE(parsed.ok()) << "'" << text << "' was accepted";
    if (!parsed.ok()) {
      EXPECT_EQ(parsed.status().code(), ErrorCode::kInvalidArgument) << text;
    }
  }
}

TEST(HttpAddressTest, LoopbackHosts) {
  EXPECT_TRUE(is_loopback_host("127.0.0.1"));
  EXPECT_TRUE(is_loopback_host("127.255.0.9"));
  EXPECT_TRUE(is_loopback_host("::1"));
  EXPECT_TRUE(is_loopback_host("::ffff:127.0.0.1"));
  EXPECT_TRUE(is_loopback_host("LOCALHOST"));
  EXPECT_TRUE(is_loopback_host("dashboard.localhost"));
  EXPECT_FALSE(is_loopback_host("0.0.0.0"));
  EXPECT_FALSE(is_loopback_host("::"));
  EXPECT_FALSE(is_loopback_host("::ffff:10.0.0.1"));
  EXPECT_FALSE(is_loopback_host("10.0.0.1"));
  EXPECT_FALSE(is_loopback_host("localhost.example.com"));
  EXPECT_FALSE(is_loopback_host(""));
}

// What `gpumgr serve --http` says when it cannot serve: the cause, not a guess among several.
Status start_status(const HttpOptions& options) {
  auto server = start_http_server(options, [] { return StatusOr<Snapshot>(Snapshot{}); });
  if (server.ok()) {
    server.value()->stop();
    return Status::Ok();
  }
  return server.status();
}

HttpOptions at(const std::string& host, int port) {
  HttpOptions options;
  options.host = host;
  options.port = port;
  return options;
}

bool has(const Status& s, const std::string& text) {
  return s.message().find(text) != std::string::npos;
}

TEST(HttpBindMessageTest, PortInUseSaysInUse) {
  auto first = start_http_server(at("127.0.0.1", 0), [] { return StatusOr<Snapshot>(Snapshot{}); });
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  const int port = first.value()->port();
  const Status s = start_status(at("127.0.0.1", port));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kUnavailable);
  EXPECT_TRUE(has(s, "127.0.0.1:" + std::to_string(port))) << s.message();
  EXPECT_TRUE(has(s, "in use")) << s.message();
  EXPECT_FALSE(has(s, "not local")) << s.message();
}

TEST(HttpBindMessageTest, NameThatDoesNotResolveSaysSo) {
  // *.localhost passes the loopback rule by name; where the resolver does not know the name,
  // the message must say so rather than blame a port in use.
  const std::string name = "gpumgr-no-such-name.localhost";
  const Status s = start_status(at(name, 0));
  if (s.ok()) GTEST_SKIP() << name << " resolves to loopback here";
  EXPECT_TRUE(has(s, "resolve")) << s.message();
  EXPECT_TRUE(has(s, name)) << s.message();
  EXPECT_FALSE(has(s, "in use")) << s.message();
}

// A resolver that answers `addresses` for every name (or fails with `failure`).
HttpOptions resolving(const std::string& host, std::vector<std::string> addresses,
                      bool allow_public = false, std::string failure = "") {
  HttpOptions options = at(host, 0);
  options.allow_public = allow_public;
  options.resolve = [addresses = std::move(addresses), failure = std::move(failure)](
                        const std::string& name) -> StatusOr<std::vector<std::string>> {
    if (!failure.empty()) return Unavailable("cannot resolve '" + name + "': " + failure);
    return addresses;
  };
  return options;
}

TEST(HttpBindMessageTest, NameResolvingToAPublicAddressIsRefusedNamingIt) {
  // A *.localhost name passes the loopback rule by its spelling, but a resolver may answer
  // anything for it: what it resolves to decides, and the message says what that was.
  const Status s = start_status(resolving("evil.localhost", {"203.0.113.7"}));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(has(s, "'evil.localhost', which resolves to 203.0.113.7, not a loopback address"))
      << s.message();
  EXPECT_TRUE(has(s, "--http-public")) << s.message();
  EXPECT_FALSE(has(s, "in use")) << s.message();

  // One public address among loopback ones is enough to refuse; only it is named.
  const Status mixed = start_status(resolving("localhost", {"127.0.0.1", "192.0.2.1"}));
  ASSERT_FALSE(mixed.ok());
  EXPECT_TRUE(has(mixed, "resolves to 192.0.2.1,")) << mixed.message();
  EXPECT_FALSE(has(mixed, "127.0.0.1")) << mixed.message();
}

TEST(HttpBindMessageTest, PublicNameThatIsNotThisHostsSaysSo) {
  // With --http-public the name is allowed, but 203.0.113.7 (TEST-NET-3) is no address of
  // this host: the message says that, not "in use".
  const Status s = start_status(resolving("evil.localhost", {"203.0.113.7"}, true));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kUnavailable);
  EXPECT_TRUE(has(s, "evil.localhost:0 (203.0.113.7)")) << s.message();
  EXPECT_TRUE(has(s, "not one of this host's")) << s.message();
  EXPECT_FALSE(has(s, "in use")) << s.message();
}

TEST(HttpBindMessageTest, ResolverFailureIsReported) {
  const Status s =
      start_status(resolving("evil.localhost", {}, false, "Name or service not known"));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kUnavailable);
  EXPECT_TRUE(has(s, "cannot resolve 'evil.localhost': Name or service not known")) << s.message();
  EXPECT_FALSE(has(s, "in use")) << s.message();
}

TEST(HttpBindMessageTest, NameResolvingToLoopbackIsServed) {
  auto server = start_http_server(resolving("app.localhost", {"127.0.0.1"}),
                                  [] { return StatusOr<Snapshot>(Snapshot{}); });
  ASSERT_TRUE(server.ok()) << server.status().to_string();
  EXPECT_GT(server.value()->port(), 0);
  server.value()->stop();
}

}  // namespace
}  // namespace gpumgr::http
