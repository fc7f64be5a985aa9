// parse_http_address and the loopback rule: what `gpumgr serve --http` accepts.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace gpumgr::http
