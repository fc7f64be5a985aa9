// The protocol codec: every request field's checks, replies, and the line splitter.
#include "daemon/protocol.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

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
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"allowed_devices":1})",
       "'allowed_devices' must be a list of device indices, got number", 7},
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"allowed_devices":[0,-1]})",
       "'allowed_devices' is out of range", 7},
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"allowed_devices":["0"]})",
       "'allowed_devices' must be an integer", 7},
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"holder_pid":-3})", "'holder_pid'", 7},
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"holder_pid":"12"})", "'holder_pid'", 7},
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"timeout_s":-1})", "'timeout_s'", 7},
      {R"({"id":7,"op":"acquire","job_id":"j","bytes":1,"timeout_s":"1"})", "'timeout_s'", 7},
      {R"({"id":8,"op":"release"})", "'job_id'", 8},
      {R"({"id":8,"op":"release","job_id":"j","outcome":"meh"})", "'outcome'", 8},
      {R"({"id":9,"op":"hello"})", "'version'", 9},
      {R"({"id":9,"op":"hello","version":"1"})", "'version'", 9},
      {R"({"id":10,"op":"can_admit"})", "'bytes'", 10},
      {R"({"id":11,"op":"acquire","job_id":"j","bytes":1,"preemptible":1})", "'preemptible'", 11},
      {R"({"id":11,"op":"acquire","job_id":"j","bytes":1,"resident":""})", "'resident'", 11},
      {R"({"id":11,"op":"acquire","job_id":"j","bytes":1,"resident":3})", "'resident'", 11},
      {R"({"id":12,"op":"acquire","job_id":"j","bytes":1,"beside_resident":""})",
       "'beside_resident'", 12},
      {R"({"id":12,"op":"acquire","job_id":"j","bytes":1,"beside_resident":[1]})",
       "'beside_resident'", 12},
      {R"({"id":11,"op":"acquire","job_id":"j","bytes":1,"revoke_grace_s":-1})", "'revoke_grace_s'",
       11},
      {R"({"id":11,"op":"acquire","job_id":"j","bytes":1,"revoke_grace_s":"5"})",
       "'revoke_grace_s'", 11},
      {R"({"id":11,"op":"acquire","job_id":"j","bytes":1,"revoke_grace_s":1e9})",
       "'revoke_grace_s'", 11},
      {R"({"id":12,"op":"revoke"})", "'job_id'", 12},
      {R"({"id":12,"op":"touch","job_id":""})", "'job_id'", 12},
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

TEST(Protocol, RevocableFieldsAndOperationsRoundTrip) {
  Request r;
  r.id = 7;
  r.op = Op::kAcquire;
  r.lease.job_id = "model";
  r.lease.bytes = 1;
  r.lease.resident = "llama";
  r.lease.revoke_grace_s = 2.5;
  auto back = decode_request(encode_request(r));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_EQ(back->lease.resident, "llama");
  EXPECT_FALSE(back->lease.preemptible);
  ASSERT_TRUE(back->lease.revoke_grace_s.has_value());
  EXPECT_DOUBLE_EQ(*back->lease.revoke_grace_s, 2.5);
  EXPECT_EQ(back->lease.beside_resident, "");
  r.lease.resident.clear();
  r.lease.beside_resident = "llama";
  r.lease.preemptible = true;
  r.lease.revoke_grace_s.reset();
  back = decode_request(encode_request(r));
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->lease.preemptible);
  EXPECT_EQ(back->lease.beside_resident, "llama");
  EXPECT_EQ(encode_request(r).find("\"beside_resident\":\"llama\"") != std::string::npos, true);
  EXPECT_FALSE(back->lease.revoke_grace_s.has_value());
  for (const Op op : {Op::kRevoke, Op::kTouch}) {
    Request j;
    j.id = 8;
    j.op = op;
    j.job_id = "model";
    back = decode_request(encode_request(j));
    ASSERT_TRUE(back.ok()) << back.status().to_string();
    EXPECT_EQ(back->op, op);
    EXPECT_EQ(back->job_id, "model");
  }
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

// A folder of our own for check_socket_folder, removed at the end.
class Folder {
 public:
  Folder() {
    char tmpl[] = "/tmp/gpumgr-protocol-test-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~Folder() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string make(const std::string& name, unsigned mode) const {
    const std::string p = path_ + "/" + name;
    EXPECT_EQ(::mkdir(p.c_str(), 0700), 0);
    EXPECT_EQ(::chmod(p.c_str(), mode), 0);
    return p;
  }

 private:
  std::string path_;
};

std::string bind_socket(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ::close(fd);
  return path;
}

TEST(SocketFolder, OwnFoldersNotWritableByOthersAreSafe) {
  Folder f;
  const uid_t me = ::geteuid();
  EXPECT_TRUE(check_socket_folder(f.path() + "/gpumgr.sock", me).ok());
  EXPECT_TRUE(check_socket_folder(f.make("a", 0755) + "/gpumgr.sock", me).ok());
  EXPECT_TRUE(check_socket_folder(f.make("b", 0750) + "/x.sock", me).ok());
  // Sticky and writable by all, like /tmp: nobody else can replace an entry of ours.
  const std::string sticky = f.make("sticky", 01777);
  EXPECT_TRUE(check_socket_folder(sticky + "/gpumgr.sock", me).ok());
  EXPECT_TRUE(check_socket_folder(bind_socket(sticky + "/mine.sock"), me).ok());
  EXPECT_TRUE(check_socket_folder("/tmp/some.sock", me).ok());
  // A relative path is checked where it points.
  const std::string cwd = std::filesystem::current_path();
  std::filesystem::current_path(f.path());
  EXPECT_TRUE(check_socket_folder("gpumgr.sock", me).ok());
  std::filesystem::current_path(cwd);
}

TEST(SocketFolder, WritableByOthersOrGroupWithoutStickyIsRefused) {
  Folder f;
  const uid_t me = ::geteuid();
  const std::string open = f.make("open", 0777);
  Status s = check_socket_folder(open + "/gpumgr.sock", me);
  EXPECT_EQ(s.code(), ErrorCode::kPermissionDenied);
  EXPECT_NE(s.message().find(open + " is writable by others (mode 0777) and not sticky"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("chmod go-w " + open), std::string::npos) << s.message();
  const std::string group = f.make("group", 0770);
  s = check_socket_folder(group + "/gpumgr.sock", me);
  EXPECT_EQ(s.code(), ErrorCode::kPermissionDenied);
  EXPECT_NE(s.message().find(group + " is writable by its group (mode 0770)"), std::string::npos)
      << s.message();
  // A folder above it counts too: its writers could rename ours away and put theirs there.
  const std::string inner = open + "/inner";
  ASSERT_EQ(::mkdir(inner.c_str(), 0700), 0);
  s = check_socket_folder(inner + "/gpumgr.sock", me);
  EXPECT_EQ(s.code(), ErrorCode::kPermissionDenied);
  EXPECT_NE(s.message().find(open + " is writable by others"), std::string::npos) << s.message();
}

TEST(SocketFolder, AMissingFolderIsNotFound) {
  Folder f;
  const Status s = check_socket_folder(f.path() + "/none/gpumgr.sock", ::geteuid());
  EXPECT_EQ(s.code(), ErrorCode::kNotFound);
  EXPECT_NE(s.message().find(f.path() + "/none does not exist"), std::string::npos) << s.message();
  EXPECT_EQ(check_socket_folder("", ::geteuid()).code(), ErrorCode::kInvalidArgument);
}

TEST(SocketFolder, FoldersAndSocketsOfAnotherUidAreRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to make a folder of another uid";
  Folder f;
  const std::string theirs = f.make("theirs", 0700);
  ASSERT_EQ(::chown(theirs.c_str(), 12345, 12345), 0);
  Status s = check_socket_folder(theirs + "/gpumgr.sock", 0);
  EXPECT_EQ(s.code(), ErrorCode::kPermissionDenied);
  EXPECT_NE(s.message().find(theirs + " is owned by uid 12345, not by root"), std::string::npos)
      << s.message();
  // For uid 12345 itself the folder is its own, and root's folders above it are fine.
  EXPECT_TRUE(check_socket_folder(theirs + "/gpumgr.sock", 12345).ok());
  s = check_socket_folder(theirs + "/gpumgr.sock", 65534);
  EXPECT_NE(s.message().find("not by you (uid 65534) or root"), std::string::npos) << s.message();
  // A symbolic link of another uid is refused (it could point anywhere); one of ours to an
  // unsafe folder is refused for that folder.
  const std::string their_link = f.path() + "/their-link";
  ASSERT_EQ(::symlink(f.path().c_str(), their_link.c_str()), 0);
  ASSERT_EQ(::lchown(their_link.c_str(), 12345, 12345), 0);
  s = check_socket_folder(their_link + "/gpumgr.sock", 0);
  EXPECT_NE(s.message().find(their_link + " is a symbolic link owned by uid 12345"),
            std::string::npos)
      << s.message();
  const std::string our_link = f.path() + "/our-link";
  ASSERT_EQ(::symlink(theirs.c_str(), our_link.c_str()), 0);
  s = check_socket_folder(our_link + "/gpumgr.sock", 0);
  EXPECT_NE(s.message().find(theirs + " is owned by uid 12345"), std::string::npos) << s.message();
  // In a sticky shared folder, a socket planted by another uid is refused.
  const std::string sticky = f.make("sticky", 01777);
  const std::string planted = bind_socket(sticky + "/gpumgr.sock");
  ASSERT_EQ(::chown(planted.c_str(), 12345, 12345), 0);
  s = check_socket_folder(planted, 0);
  EXPECT_EQ(s.code(), ErrorCode::kPermissionDenied);
  EXPECT_NE(s.message().find(planted + " is owned by uid 12345"), std::string::npos) << s.message();
  EXPECT_TRUE(check_socket_folder(planted, 12345).ok());
}

}  // namespace
}  // namespace gpumgr::daemon
