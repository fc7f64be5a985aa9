// libFuzzer target for the daemon's protocol decoder: the exact functions the server runs on
// every byte a client sends (LineSplitter, decode_request), plus the client's decode_reply.
// Properties checked beyond "no crash, no sanitizer report": a request that decodes
// re-encodes to one line that decodes to the same request.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "daemon/protocol.h"

using namespace gpumgr::daemon;

namespace {
void check(bool ok) {
  if (!ok) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  LineSplitter splitter(kMaxRequestBytes);
  // Feed in two chunks, as a socket might deliver them.
  const std::size_t cut = size / 3;
  splitter.append(bytes.substr(0, cut));
  for (int pass = 0; pass < 2; ++pass) {
    while (true) {
      auto line = splitter.next();
      if (!line.ok() || !line->has_value()) break;
      std::optional<std::uint64_t> id;
      auto request = decode_request(**line, &id);
      if (request.ok()) {
        check(id.has_value() && *id == request->id);
        const std::string again = encode_request(*request);
        check(!again.empty() && again.back() == '\n');
        check(again.find('\n') == again.size() - 1);
        auto back = decode_request(std::string_view(again).substr(0, again.size() - 1));
        check(back.ok());
        check(back->op == request->op && back->id == request->id);
        check(back->lease.job_id == request->lease.job_id);
        check(back->lease.bytes == request->lease.bytes);
        check(back->job_id == request->job_id);
      } else {
        // The error reply built from it must itself be one decodable line.
        const std::string reply = encode_error(id, request.status());
        check(reply.find('\n') == reply.size() - 1);
        check(decode_reply(std::string_view(reply).substr(0, reply.size() - 1)).ok());
      }
    }
    if (pass == 0) splitter.append(bytes.substr(cut));
  }
  (void)decode_reply(bytes);
  return 0;
}
