// The protocol codec: every request field's checks, replies, and the line splitter.
#include "daemon/protocol.h"

#include <gtest/gtest.h>

namespace gpumgr::daemon {
namespace {

TEST(Protocol, DecodesAnAcquireWithEveryField) {
  auto r = decode_request(
      R"({"id":7,"op":"acquire","job_id":"j1","bytes":1073741824,"gpus":2,"priority":-3,)"
      R"("device":1,"command":"python x.py","wait":true,"timeout_s":2.5,"future":1})");
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->id, 7u);
  EXPECT_EQ(r->op, Op::kAcquire);
  EXPECT_EQ(r->lease.job_id, "j1");
  EXPECT_EQ(r->lease.bytes, 1073741824u);
  EXPECT_EQ(r->lease.gpus, 2);
  EXPECT_EQ(r->lease.priority, -3);
  EXPECT_EQ(r->lease.device, 1);
  EXPECT_EQ(r->lease.command, "python x.py");
  EXPECT_TRUE(r->wait);
  ASSERT_TRUE(r->timeout_s.has_value());
  EXPECT_DOUBLE_EQ(*r->timeout_s, 2.5);
}

TEST(Protocol, DefaultsAndTryAcquireNeverWaits) {
  auto r = decode_request(R"({"id":1,"op":"try_acquire","job_id":"j","bytes":5,"wait":true})");
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->wait);
  EXPECT_EQ(r->lease.gpus, 1);
  EXPECT_EQ(r->lease.device, -1);
  EXPECT_FALSE(r->timeout_s.has_value());
  auto rel = decode_request(R"({"id":2,"op":"release","job_id":"j"})");
  ASSERT_TRUE(rel.ok());
  EXPECT_EQ(rel->outcome, JobOutcome::kSucceeded);
  rel = decode_request(R"({"id":2,"op":"release","job_id":"j","outcome":"failed"})");
  ASSERT_TRUE(rel.ok());
  EXPECT_EQ(rel->outcome, JobOutcome::kFailed);
}

struct BadCase {
  const char* line;
  const char* names;                // what the error message must mention
  std::optional<std::uint64_t> id;  // the id the error reply can echo
};

TEST(Protocol, RejectsBadRequestsNamingTheProblem) {
  const BadCase cases[] = {
      {"not json", "not valid JSON", std::nullopt},
      {"[1,2]", "JSON object", std::nullopt},
      {R"({"op":"ping"})", "'id'", std::nullopt},
      {R"({"id":-1,"op":"ping"})", "'id'", std::nullopt},
      {R"({"id":"1","op":"ping"})", "'id'", std::nullopt},
      {R"({"id":1.5,"op":"ping"})", "'id'", std::nullopt},
      {R"({"id":3})", "'op'", 3},
      {R"({"id":3,"op":7})", "'op'", 3},
      {R"({"id":4,"op":"fly"})", "unknown operation 'fly'", 4},
      {R"({"id":5,"op":"acquire","bytes":1})", "'job_id'", 5},
      {R"({"id":5,"op":"acquire","job_id":"","bytes":1})", "'job_id' must not be empty", 5},
      {R"({"id":5,"op":"acquire","job_id":7,"bytes":1})", "'job_id' must be a string", 5},
      {R"({"id":6,"op":"acquire","job_id":"j"})", "'bytes'", 6},
      {R"({"id":6,"op":"acquire","job_id":"j","bytes":"1GiB"})", "'bytes' must be an integer", 6},
      {R"({"id":6,"op":"acquire","job_id":"j","bytes":-5})", "'bytes' must be a positive", 6},
      {R"({"id":6,"op":"acquire","job_id":"j","bytes":0})", "'bytes' must be positive", 6},
      {R"({"id":6,"op":"acquire","job_id":"j","bytes":1.5})", "'bytes' must be an integer", 6},
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"gpus":0})", "'gpus'", 7},
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"gpus":"2"})", "'gpus'", 7},
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"priority":99999999999})", "'priority'", 7},
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"device":-2})", "'device'", 7},
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"wait":"yes"})", "'wait'", 7},
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"timeout_s":-1})", "'timeout_s'", 7},
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"timeout_s":"1"})", "'timeout_s'", 7},
      {R"({"id":8,"op":"release"})", "'job_id'", 8},
      {R"({"id":8,"op":"release","job_id":"j","outcome":"meh"})", "'outcome'", 8},
      {R"({"id":9,"op":"hello"})", "'version'", 9},
      {R"({"id":9,"op":"hello","version":"1"})", "'version'", 9},
      {R"({"id":10,"op":"can_admit"})", "'bytes'", 10},
  };
  for (const auto& c : cases) {
    std::optional<std::uint64_t> id;
    auto r = decode_request(c.line, &id);
    ASSERT_FALSE(r.ok()) << c.line;
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << c.line;
    EXPECT_NE(r.status().message().find(c.names), std::string::npos)
        << c.line << " -> " << r.status().message();
    EXPECT_EQ(id, c.id) << c.line;
  }
}

TEST(Protocol, RejectsOversizedRequestsAndFields) {
  const std::string huge(kMaxRequestBytes + 1, ' ');
  auto r = decode_request(huge);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("limit"), std::string::npos);
  const std::string long_id(kMaxJobIdBytes + 1, 'x');
  r = decode_request(R"({"id":1,"op":"cancel","job_id":")" + long_id + "\"}");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("limit is 256"), std::string::npos);
}

TEST(Protocol, RequestsRoundTrip) {
  Request r;
  r.id = 42;
  r.op = Op::kAcquire;
  r.lease.job_id = "a\nb\"c";  // newlines in strings are escaped: the frame stays one line
  r.lease.bytes = 123;
  r.lease.gpus = 2;
  r.lease.priority = 5;
  r.timeout_s = 1.25;
  const std::string line = encode_request(r);
  ASSERT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  auto back = decode_request(std::string_view(line).substr(0, line.size() - 1));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->id, 42u);
  EXPECT_EQ(back->lease.job_id, r.lease.job_id);
  EXPECT_EQ(back->lease.gpus, 2);
  EXPECT_DOUBLE_EQ(*back->timeout_s, 1.25);
}

TEST(Protocol, RepliesRoundTrip) {
  auto ok = decode_reply(encode_ok(9, {{"admit", true}}));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->id, 9u);
  EXPECT_TRUE(ok->status.ok());
  EXPECT_EQ(ok->body.at("admit"), true);
  auto err = decode_reply(encode_error(std::nullopt, Status(ErrorCode::kPermissionDenied, "no")));
  ASSERT_TRUE(err.ok());
  EXPECT_FALSE(err->id.has_value());
  EXPECT_EQ(err->status.code(), ErrorCode::kPermissionDenied);
  EXPECT_EQ(err->status.message(), "no");
  EXPECT_FALSE(decode_reply(R"({"id":1})").ok());
  EXPECT_FALSE(decode_reply(R"({"id":1,"ok":false})").ok());
}

TEST(LineSplitter, SplitsAcrossChunksAndEnforcesTheLimit) {
  LineSplitter s(8);
  s.append("ab");
  EXPECT_FALSE(s.next()->has_value());
  s.append("c\nde\nf");
  EXPECT_EQ(**s.next(), "abc");
  EXPECT_EQ(**s.next(), "de");
  EXPECT_FALSE(s.next()->has_value());
  EXPECT_EQ(s.buffered(), 1u);
  s.append("12345678");  // 9 bytes without a newline
  EXPECT_FALSE(s.next().ok());
  LineSplitter t(4);
  t.append("123456\n");
  EXPECT_FALSE(t.next().ok());
}

}  // namespace
}  // namespace gpumgr::daemon
