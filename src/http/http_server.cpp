#include "http/http_server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>

#include "core/snapshot_json.h"
#include "http/assets.h"
#include "http/metrics.h"

namespace gpumgr::http {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr const char* kJsonContentType = "application/json; charset=utf-8";
// The largest request head (request line and headers) accepted; past it, 431.
constexpr std::size_t kMaxRequestHead = 64 * 1024;
// The longest method name taken for one.
constexpr std::size_t kMaxMethod = 32;
// Requests answered on one kept-alive connection before it is closed (Connection: close).
constexpr std::size_t kMaxRequestsPerConnection = 100;
// Time a client has to take a whole answer, from when it is ready.
constexpr auto kWriteTimeout = std::chrono::seconds(10);
// After an answer with Connection: close, what the client still sends is read and dropped
// for up to this long before closing, so that the close does not reset the connection
// (and lose the answer) while a request body is still arriving.
constexpr auto kLingerTimeout = std::chrono::seconds(2);
// Listen backlog (the kernel caps it at net.core.somaxconn).
constexpr int kListenBacklog = 1024;

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// "[::1]:9400" -> "::1"; "localhost:9400" -> "localhost"; a Host header may omit the port.
std::string host_of(std::string_view authority) {
  if (!authority.empty() && authority.front() == '[') {
    const auto close = authority.find(']');
    return close == std::string_view::npos ? std::string(authority)
                                           : std::string(authority.substr(1, close - 1));
  }
  const auto colon = authority.rfind(':');
  return std::string(colon == std::string_view::npos ? authority : authority.substr(0, colon));
}

std::string authority(const std::string& host, int port) {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

void send_error(httplib::Response& res, int status, const std::string& message) {
  res.status = status;
  res.set_content(message + "\n", "text/plain; charset=utf-8");
}

void send_json(httplib::Response& res, const nlohmann::json& body) {
  res.set_content(body.dump(2) + "\n", kJsonContentType);
}

// RFC 9110 token characters: what a method name may be made of.
bool is_token_char(char c) {
  if (c == '\0') return false;
  return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
         std::strchr("!#$%&'*+-.^_`|~", c) != nullptr;
}

// An answer written here rather than by httplib (405, 400, 408, 431): always the last on its
// connection.
std::string canned_response(int status, std::string_view reason, const std::string& body,
                            bool allow_get_head) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason) + "\r\n";
  if (allow_get_head) out += "Allow: GET, HEAD\r\n";
  out +=
      "Cache-Control: no-store\r\n"
      "X-Content-Type-Options: nosniff\r\n"
      "Content-Type: text/plain; charset=utf-8\r\n"
      "Content-Length: " +
      std::to_string(body.size() + 1) +
      "\r\n"
      "Connection: close\r\n\r\n" +
      body + "\n";
  return out;
}

std::string errno_text(int err) {
  char buf[256];
  // GNU strerror_r returns the text (maybe not in buf).
  return ::strerror_r(err, buf, sizeof buf);
}

// getaddrinfo for a host to listen on, as numeric addresses in the resolver's order.
StatusOr<std::vector<std::string>> resolve_with_getaddrinfo(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &found);
  if (rc != 0) {
    std::string why = rc == EAI_SYSTEM ? errno_text(errno) : ::gai_strerror(rc);
    return Unavailable("cannot resolve '" + host + "': " + why);
  }
  std::vector<std::string> addresses;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    char text[NI_MAXHOST];
    if (::getnameinfo(a->ai_addr, a->ai_addrlen, text, sizeof text, nullptr, 0, NI_NUMERICHOST) ==
            0 &&
        std::find(addresses.begin(), addresses.end(), text) == addresses.end()) {
      addresses.emplace_back(text);
    }
  }
  ::freeaddrinfo(found);
  if (addresses.empty()) return Unavailable("cannot resolve '" + host + "': no address");
  return addresses;
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// A listening socket on one numeric address: the socket, or the errno of what failed.
struct Listener {
  int fd = -1;
  int error = 0;
  int port = 0;
};

Listener listen_on(const std::string& address, int port) {
  Listener result;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (::getaddrinfo(address.c_str(), service.c_str(), &hints, &found) != 0 || found == nullptr) {
    result.error = EINVAL;
    return result;
  }
  const int fd = ::socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    result.error = errno;
    ::freeaddrinfo(found);
    return result;
  }
  // SO_REUSEADDR only: with SO_REUSEPORT (httplib's default) a second daemon would bind the
  // same port and the kernel would split the scrapes between the two.
  int yes = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  if (found->ai_family == AF_INET6) {
    int no = 0;  // "::" serves IPv4 too, as it did with httplib
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &no, sizeof no);
  }
  if (::bind(fd, found->ai_addr, found->ai_addrlen) != 0 || ::listen(fd, kListenBacklog) != 0) {
    result.error = errno;
    ::close(fd);
    ::freeaddrinfo(found);
    return result;
  }
  ::freeaddrinfo(found);
  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) == 0) {
    result.port = bound.ss_family == AF_INET6
                      ? ntohs(reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port)
                      : ntohs(reinterpret_cast<const sockaddr_in*>(&bound)->sin_port);
  }
  result.fd = fd;
  return result;
}

std::string bind_failure(const std::string& where, int port, int error) {
  switch (error) {
    case EADDRINUSE:
      return "cannot listen on " + where + ": port " + std::to_string(port) +
             " is in use (another gpumgr serve? the DCGM exporter also defaults to port 9400; "
             "choose another with --http)";
    case EADDRNOTAVAIL:
      return "cannot listen on " + where + ": that address is not one of this host's";
    case EACCES:
      return "cannot listen on " + where +
             ": permission denied (ports below 1024 need root or "
             "CAP_NET_BIND_SERVICE)";
    default:
      return "cannot listen on " + where + ": " + errno_text(error);
  }
}

// Where a request head ends (the index past its blank line), or npos while incomplete. A head
// ending in bare LFs counts too: httplib then answers 400 at once instead of a timeout later.
std::size_t head_end(const std::string& in) {
  const auto crlf = in.find("\r\n\r\n");
  const auto lf = in.find("\n\n");
  if (crlf == std::string::npos && lf == std::string::npos) return std::string::npos;
  return std::min(crlf == std::string::npos ? std::string::npos : crlf + 4,
                  lf == std::string::npos ? std::string::npos : lf + 2);
}

// Whether a request head announces a body (Content-Length other than 0, or
// Transfer-Encoding). GET and HEAD bodies are not read: such a connection is closed after
// its answer rather than have the body taken for the next request.
bool announces_body(std::string_view head) {
  const std::string h = lower(head);
  if (h.find("\ntransfer-encoding:") != std::string::npos) return true;
  const auto at = h.find("\ncontent-length:");
  if (at == std::string::npos) return false;
  const auto start = at + std::string_view("\ncontent-length:").size();
  const auto end = h.find_first_of("\r\n", start);
  std::string_view value = std::string_view(h).substr(start, end - start);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  return value.find_first_not_of('0') != std::string_view::npos;  // not 0: a body (or junk)
}

// One client connection. It is held by exactly one party at a time: the loop thread, or a
// worker answering its request, or the hand-back queue between the two.
struct Connection {
  enum class Phase { kReading, kWriting, kLingering };

  int fd = -1;
  std::string peer_ip;
  int peer_port = 0;
  std::string local_ip;
  int local_port = 0;
  Phase phase = Phase::kReading;
  Clock::time_point deadline;
  std::string in;   // received, not yet consumed by a request
  std::string out;  // the answer, from out_sent on
  std::size_t out_sent = 0;
  bool close_after_write = false;
  bool request_has_body = false;  // the request being answered announced a body
  std::size_t served = 0;         // requests answered
};

void address_of(const sockaddr_storage& a, std::string& ip, int& port) {
  char text[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET6) {
    const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&a);
    ::inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof text);
    port = ntohs(v6->sin6_port);
  } else if (a.ss_family == AF_INET) {
    const auto* v4 = reinterpret_cast<const sockaddr_in*>(&a);
    ::inet_ntop(AF_INET, &v4->sin_addr, text, sizeof text);
    port = ntohs(v4->sin_port);
  }
  ip = text;
}

// httplib's request parser and router over a request already received whole: reads come from
// memory, and the answer is collected in memory, so a worker never waits on the network.
class MemoryStream final : public httplib::Stream {
 public:
  explicit MemoryStream(Connection& c) : c_(c) {}

  bool is_readable() const override { return pos_ < c_.in.size(); }
  bool is_writable() const override { return true; }
  ssize_t read(char* ptr, size_t size) override {
    // At the end: EOF. The head is complete; GET and HEAD bodies are not read.
    const std::size_t n = std::min(size, c_.in.size() - pos_);
    std::memcpy(ptr, c_.in.data() + pos_, n);
    pos_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    c_.out.append(ptr, size);
    return static_cast<ssize_t>(size);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    ip = c_.peer_ip;
    port = c_.peer_port;
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    ip = c_.local_ip;
    port = c_.local_port;
  }
  socket_t socket() const override { return c_.fd; }

  std::size_t consumed() const { return pos_; }

 private:
  Connection& c_;
  std::size_t pos_ = 0;
};

// httplib::Server used as a router only: this file owns the sockets.
class Router final : public httplib::Server {
 public:
  // Parses one request from `stream` and writes its answer there; false when there was no
  // request to read or the answer could not be written.
  bool answer(httplib::Stream& stream, bool close_connection, bool& connection_closed) {
    static const std::function<void(httplib::Request&)> no_setup;
    return process_request(stream, close_connection, connection_closed, no_setup);
  }
};

class Server final : public HttpServer {
 public:
  Server(const HttpOptions& options, SnapshotSource source)
      : options_(options), source_(std::move(source)) {
    context_.version = std::string(build_version());
    context_.started_at = std::chrono::system_clock::now();
  }
  ~Server() override { stop(); }

  Status start() {
    setup_routes();
    if (Status s = open_listener(); !s.ok()) return s;
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0) {
      const std::string why = errno_text(errno);
      ::close(listen_fd_);
      listen_fd_ = -1;
      return Unavailable("cannot start the HTTP server: eventfd: " + why);
    }
    workers_ = std::make_unique<httplib::ThreadPool>(std::max<std::size_t>(1, options_.workers));
    try {
      loop_ = std::thread([this] { run_loop(); });
    } catch (const std::system_error& e) {
      workers_->shutdown();
      ::close(listen_fd_);
      ::close(wake_fd_);
      listen_fd_ = wake_fd_ = -1;
      return Unavailable(std::string("cannot start the HTTP server thread: ") + e.what());
    }
    return Status::Ok();
  }

  int port() const override { return port_; }

  void stop() override {
    std::lock_guard<std::mutex> lock(stop_mutex_);
    if (!loop_.joinable()) return;
    stopping_.store(true);
    wake();
    loop_.join();  // closes the listening socket and every connection it holds
    // Requests being answered finish; their connections are closed on hand-back.
    workers_->shutdown();
    workers_.reset();
    ::close(wake_fd_);
    wake_fd_ = -1;
  }

 private:
  void setup_routes() {
    router_.set_keep_alive_max_count(kMaxRequestsPerConnection);
    router_.set_keep_alive_timeout(std::max<time_t>(
        1,
        static_cast<time_t>(
            std::chrono::duration_cast<std::chrono::seconds>(options_.request_timeout).count())));
    // Every response: never cached (the state changes every second) and never sniffed.
    router_.set_default_headers(
        {{"Cache-Control", "no-store"}, {"X-Content-Type-Options", "nosniff"}});
    router_.set_pre_routing_handler(
        [this](const httplib::Request& req, httplib::Response& res) { return screen(req, res); });
    router_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      with_snapshot(res, [&](const Snapshot& s) {
        res.set_content(render_metrics(s, context_), kMetricsContentType);
      });
    });
    router_.Get("/api/v1/status", [this](const httplib::Request&, httplib::Response& res) {
      with_snapshot(res, [&](const Snapshot& s) { send_json(res, to_json(s)); });
    });
    router_.Get("/api/v1/leases", [this](const httplib::Request&, httplib::Response& res) {
      with_snapshot(res, [&](const Snapshot& s) {
        nlohmann::json leases = nlohmann::json::array();
        for (const auto& l : s.leases) leases.push_back(to_json(l));
        nlohmann::json queue = nlohmann::json::array();
        for (const auto& w : s.queue) queue.push_back(to_json(w));
        send_json(res, {{"version", kStatusJsonVersion},
                        {"taken_at", to_json(s)["taken_at"]},
                        {"leases", leases},
                        {"queue", queue}});
      });
    });
    router_.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("ok\n", "text/plain; charset=utf-8");
    });
    router_.Get(
        R"(/|/assets/[A-Za-z0-9._-]+)", [](const httplib::Request& req, httplib::Response& res) {
          const Asset* asset = find_asset(req.path);
          if (asset == nullptr) return send_error(res, 404, "no such file: " + req.path);
          res.set_content(std::string(asset->body), std::string(asset->content_type).c_str());
          // The page may load only its own files: no CDN, no third party.
          res.set_header("Content-Security-Policy",
                         "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'");
        });
    // Read-only: only GET and HEAD reach the router. Every other method is answered 405 as
    // soon as its head has arrived (start_request), without waiting for a body.
    router_.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      // Only fill in bodies the handlers left empty (a plain 404 from the router).
      if (res.status == 404 && res.body.empty()) {
        send_error(
            res, 404,
            "no such path: " + req.path + " (try /, /metrics, /api/v1/status or /api/v1/leases)");
      }
    });
    router_.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
          std::string what = "unknown error";
          try {
            std::rethrow_exception(ep);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          send_error(res, 500, "internal error: " + what);
        });
  }

  // Resolves the host, applies the loopback rule to what it resolves to, and listens on the
  // first address that can be bound. Every failure says which of these it was.
  Status open_listener() {
    auto resolved = options_.resolve ? options_.resolve(options_.host)
                                     : resolve_with_getaddrinfo(options_.host);
    if (!resolved.ok()) return resolved.status();
    const std::vector<std::string>& addresses = resolved.value();
    if (addresses.empty()) return Unavailable("cannot resolve '" + options_.host + "': no address");
    if (!options_.allow_public) {
      std::vector<std::string> public_ones;
      for (const auto& a : addresses) {
        if (!is_loopback_host(a)) public_ones.push_back(a);
      }
      if (!public_ones.empty()) {
        return InvalidArgument(
            "refusing to serve HTTP on '" + options_.host + "', which resolves to " +
            join(public_ones) +
            (public_ones.size() == 1 ? ", not a loopback address" : ", not loopback addresses") +
            ": anyone who can reach it would see job names, commands and users; pass "
            "--http-public to allow it");
      }
    }
    // The first failure is reported, unless another address of the name found the port in
    // use: that is the one to fix.
    std::string failure;
    bool in_use = false;
    for (const auto& address : addresses) {
      const Listener l = listen_on(address, options_.port);
      if (l.fd >= 0) {
        listen_fd_ = l.fd;
        port_ = l.port;
        return Status::Ok();
      }
      const bool is_name = address != options_.host;
      const std::string where =
          authority(options_.host, options_.port) + (is_name ? " (" + address + ")" : "");
      if (failure.empty() || (l.error == EADDRINUSE && !in_use)) {
        failure = bind_failure(where, options_.port, l.error);
        in_use = l.error == EADDRINUSE;
      }
    }
    return Unavailable(failure);
  }

  // Refuses requests whose Host header names something other than a loopback address while
  // the server listens on loopback only: a web page the user visits could otherwise read the
  // job list through a DNS name rebound to 127.0.0.1 (DNS rebinding).
  httplib::Server::HandlerResponse screen(const httplib::Request& req, httplib::Response& res) {
    if (options_.allow_public) return httplib::Server::HandlerResponse::Unhandled;
    const std::string host = host_of(req.get_header_value("Host"));
    if (host.empty() || is_loopback_host(host)) return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, 403,
               "Host '" + host +
                   "' refused: this gpumgr serves loopback clients only (start it with "
                   "--http-public to serve other names)");
    return httplib::Server::HandlerResponse::Handled;
  }

  template <typename F>
  void with_snapshot(httplib::Response& res, F&& fill) {
    auto snapshot = source_();
    if (!snapshot.ok()) {
      send_error(res, 503, "snapshot unavailable: " + snapshot.status().to_string());
      return;
    }
    fill(snapshot.value());
  }

  // ---- the connection loop (one thread) ----

  void wake() {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof one);
  }

  void close_connection(std::unique_ptr<Connection>& c) {
    if (!c) return;
    if (c->fd >= 0) ::close(c->fd);
    c.reset();
    live_.fetch_sub(1);
  }

  void run_loop() {
    std::vector<pollfd> fds;
    auto accept_paused_until = Clock::time_point::min();
    // Bounded only by stop(): each round is bounded by poll's timeout (at most 1 s).
    while (!stopping_.load()) {
      take_handed_back();
      const auto now = Clock::now();
      expire(now);
      fds.clear();
      fds.push_back({wake_fd_, POLLIN, 0});
      const bool accepting = now >= accept_paused_until;
      fds.push_back({accepting ? listen_fd_ : -1, POLLIN, 0});
      auto next = now + std::chrono::seconds(1);
      for (const auto& c : conns_) {
        const auto events =
            static_cast<short>(c->phase == Connection::Phase::kWriting ? POLLOUT : POLLIN);
        fds.push_back({c->fd, events, 0});
        next = std::min(next, c->deadline);
      }
      if (!accepting) next = std::min(next, accept_paused_until);
      const auto wait_ms =
          std::chrono::ceil<std::chrono::milliseconds>(std::max(next - now, Clock::duration(0)));
      const int ready = ::poll(fds.data(), fds.size(), static_cast<int>(wait_ms.count()));
      if (ready < 0) {
        if (errno == EINTR) continue;
        break;  // cannot happen with valid descriptors; stop serving rather than spin
      }
      if (fds[0].revents != 0) {
        std::uint64_t count = 0;
        [[maybe_unused]] const ssize_t n = ::read(wake_fd_, &count, sizeof count);
      }
      // Connections first (their indexes match conns_ as it was), then accept new ones.
      const std::size_t held = conns_.size();
      std::vector<std::unique_ptr<Connection>> keep;
      keep.reserve(held);
      for (std::size_t i = 0; i < held; ++i) {
        std::unique_ptr<Connection> c = std::move(conns_[i]);
        if (fds[i + 2].revents != 0) on_ready(c);
        if (c) keep.push_back(std::move(c));
      }
      // on_ready may have handed some to workers; anything added meanwhile is kept too.
      for (std::size_t i = held; i < conns_.size(); ++i) keep.push_back(std::move(conns_[i]));
      conns_ = std::move(keep);
      if (accepting && fds[1].revents != 0 && !accept_all()) {
        accept_paused_until = Clock::now() + std::chrono::milliseconds(100);
      }
    }
    // Stopping: close everything held here; later hand-backs close their own.
    {
      std::lock_guard<std::mutex> lock(handed_back_mutex_);
      loop_done_ = true;
      for (auto& c : handed_back_) conns_.push_back(std::move(c));
      handed_back_.clear();
    }
    for (auto& c : conns_) close_connection(c);
    conns_.clear();
    ::close(listen_fd_);
    listen_fd_ = -1;
  }

  // Accepts what is waiting. False when out of file descriptors with nothing to evict.
  bool accept_all() {
    for (int i = 0; i < 256; ++i) {
      sockaddr_storage peer{};
      socklen_t len = sizeof peer;
      const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer), &len,
                               SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if ((errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) &&
            evict_one()) {
          continue;
        }
        return errno == EAGAIN || errno == EWOULDBLOCK;
      }
      if (live_.load() >= std::max<std::size_t>(1, options_.max_connections) && !evict_one()) {
        ::close(fd);  // every connection is being answered: this one waits for nothing
        continue;
      }
      auto c = std::make_unique<Connection>();
      c->fd = fd;
      address_of(peer, c->peer_ip, c->peer_port);
      sockaddr_storage local{};
      socklen_t local_len = sizeof local;
      if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) == 0) {
        address_of(local, c->local_ip, c->local_port);
      }
      c->deadline = Clock::now() + options_.request_timeout;
      live_.fetch_add(1);
      conns_.push_back(std::move(c));
    }
    return true;
  }

  // Closes the connection that has waited longest for a request (or is lingering); false
  // when every connection here is being written to.
  bool evict_one() {
    std::size_t victim = conns_.size();
    for (std::size_t i = 0; i < conns_.size(); ++i) {
      if (conns_[i] == nullptr || conns_[i]->phase == Connection::Phase::kWriting) continue;
      if (victim == conns_.size() || conns_[i]->deadline < conns_[victim]->deadline) victim = i;
    }
    if (victim == conns_.size()) return false;
    close_connection(conns_[victim]);
    conns_.erase(conns_.begin() + static_cast<std::ptrdiff_t>(victim));
    return true;
  }

  void expire(Clock::time_point now) {
    for (auto& c : conns_) {
      if (c->deadline > now) continue;
      if (c->phase == Connection::Phase::kReading && !c->in.empty()) {
        // It began a request and did not finish it in time: say so, best effort, and close.
        const std::string answer =
            canned_response(408, "Request Timeout",
                            "the request did not arrive whole within " +
                                std::to_string(options_.request_timeout.count()) + " ms",
                            false);
        [[maybe_unused]] const ssize_t n =
            ::send(c->fd, answer.data(), answer.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      }
      close_connection(c);
    }
    std::erase(conns_, nullptr);
  }

  void on_ready(std::unique_ptr<Connection>& c) {
    switch (c->phase) {
      case Connection::Phase::kReading:
        return on_readable(c);
      case Connection::Phase::kWriting:
        return on_writable(c);
      case Connection::Phase::kLingering: {
        char buf[16384];
        for (int i = 0; i < 4; ++i) {
          const ssize_t n = ::recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
          if (n > 0) continue;
          if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
          return close_connection(c);  // EOF or an error: done
        }
        return;
      }
    }
  }

  void on_readable(std::unique_ptr<Connection>& c) {
    bool eof = false;
    char buf[16384];
    for (int i = 0; i < 4 && c->in.size() <= kMaxRequestHead; ++i) {
      const ssize_t n = ::recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        c->in.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) break;
      eof = true;  // EOF, or an error (a reset): nothing more will come
      break;
    }
    if (!start_request(c) && c && eof) close_connection(c);
  }

  void on_writable(std::unique_ptr<Connection>& c) {
    while (c->out_sent < c->out.size()) {
      const ssize_t n = ::send(c->fd, c->out.data() + c->out_sent, c->out.size() - c->out_sent,
                               MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        c->out_sent += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
      return close_connection(c);
    }
    answer_sent(c);
  }

  // The answer is out: close (gracefully), or wait for the next request on the connection.
  void answer_sent(std::unique_ptr<Connection>& c) {
    c->out.clear();
    c->out_sent = 0;
    if (c->close_after_write) {
      ::shutdown(c->fd, SHUT_WR);
      c->phase = Connection::Phase::kLingering;
      c->deadline = Clock::now() + kLingerTimeout;
      c->in.clear();
      return;
    }
    c->phase = Connection::Phase::kReading;
    c->deadline = Clock::now() + options_.request_timeout;
    start_request(c);  // a pipelined request may be here already
  }

  // With a whole request head received: answers it or hands it to a worker, and returns true
  // (c is then empty or writing). False while the head is incomplete.
  bool start_request(std::unique_ptr<Connection>& c) {
    // Empty lines before a request line are ignored (RFC 9112, 2.2).
    const auto first = c->in.find_first_not_of("\r\n");
    c->in.erase(0, first == std::string::npos ? c->in.size() : first);
    const std::size_t end = head_end(c->in);
    if (end == std::string::npos) {
      // What has come of the method must look like one (a TLS handshake does not): else it is
      // refused now, not after the request timeout.
      const std::string_view start(c->in.data(), std::min(c->in.size(), kMaxMethod + 1));
      const std::string_view method = start.substr(0, start.find(' '));
      if (method.size() > kMaxMethod || !std::all_of(method.begin(), method.end(), is_token_char)) {
        return bad_request(c);
      }
      if (c->in.size() <= kMaxRequestHead) return false;
      respond_and_close(c, canned_response(431, "Request Header Fields Too Large",
                                           "the request head is larger than " +
                                               std::to_string(kMaxRequestHead / 1024) + " KiB",
                                           false));
      return true;
    }
    const std::string_view head(c->in.data(), end);
    const std::string_view method = head.substr(0, head.find_first_of(" \r\n"));
    const bool token = !method.empty() && method.size() <= kMaxMethod &&
                       method.size() < head.size() && head[method.size()] == ' ' &&
                       std::all_of(method.begin(), method.end(), is_token_char);
    if (!token) {
      return bad_request(c);
    }
    if (method != "GET" && method != "HEAD") {
      // Read-only: nothing is read past the head (a body may never come), nothing changes.
      respond_and_close(
          c, canned_response(405, "Method Not Allowed",
                             std::string(method) +
                                 " is not allowed: the gpumgr HTTP interface is read-only "
                                 "(GET, HEAD)",
                             true));
      return true;
    }
    c->request_has_body = announces_body(head);
    dispatch(std::move(c));
    return true;
  }

  bool bad_request(std::unique_ptr<Connection>& c) {
    respond_and_close(
        c, canned_response(400, "Bad Request",
                           "malformed request line (expected METHOD PATH HTTP/1.1)", false));
    return true;
  }

  void respond_and_close(std::unique_ptr<Connection>& c, std::string answer) {
    c->out = std::move(answer);
    c->out_sent = 0;
    c->close_after_write = true;
    c->phase = Connection::Phase::kWriting;
    c->deadline = Clock::now() + kWriteTimeout;
    on_writable(c);
  }

  // ---- workers ----

  void dispatch(std::unique_ptr<Connection> c) {
    // std::function needs a copyable callable: the connection travels as a raw pointer that
    // the job owns from here on.
    Connection* raw = c.release();
    workers_->enqueue([this, raw] {
      std::unique_ptr<Connection> job(raw);
      answer(*job);
      hand_back(std::move(job));
    });
  }

  void answer(Connection& c) {
    MemoryStream stream(c);
    const bool last = stopping_.load() || c.served + 1 >= kMaxRequestsPerConnection;
    bool client_closes = false;
    bool ok = false;
    try {
      ok = router_.answer(stream, last, client_closes);
    } catch (...) {
      ok = false;
    }
    c.in.erase(0, stream.consumed());
    c.served++;
    c.close_after_write = !ok || last || client_closes || c.request_has_body;
    c.phase = Connection::Phase::kWriting;
    c.out_sent = 0;
    c.deadline = Clock::now() + kWriteTimeout;
  }

  void hand_back(std::unique_ptr<Connection> c) {
    std::lock_guard<std::mutex> lock(handed_back_mutex_);
    if (loop_done_) {
      close_connection(c);
      return;
    }
    handed_back_.push_back(std::move(c));
    wake();
  }

  // On the loop thread: the answers workers rendered start going out.
  void take_handed_back() {
    std::deque<std::unique_ptr<Connection>> ready;
    {
      std::lock_guard<std::mutex> lock(handed_back_mutex_);
      ready.swap(handed_back_);
    }
    for (auto& c : ready) {
      on_writable(c);
      if (c) conns_.push_back(std::move(c));
    }
  }

  const HttpOptions options_;
  const SnapshotSource source_;
  MetricsContext context_;
  Router router_;
  int port_ = 0;        // set before the loop starts, then read-only
  int listen_fd_ = -1;  // the loop's after start()
  int wake_fd_ = -1;    // eventfd: wakes the loop for hand-backs and stop()
  std::thread loop_;    // guarded by stop_mutex_ after start()
  std::unique_ptr<httplib::ThreadPool> workers_;
  std::atomic<bool> stopping_{false};
  std::atomic<std::size_t> live_{0};                // connections open, here or with a worker
  std::vector<std::unique_ptr<Connection>> conns_;  // the loop thread's only
  std::mutex handed_back_mutex_;
  std::deque<std::unique_ptr<Connection>> handed_back_;  // guarded by handed_back_mutex_
  bool loop_done_ = false;                               // guarded by handed_back_mutex_
  std::mutex stop_mutex_;                                // serialises stop() calls
};

}  // namespace

bool is_loopback_host(const std::string& host) {
  const std::string h = lower(host);
  if (h == "localhost" || h.ends_with(".localhost")) return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, h.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;  // 127.0.0.0/8
  }
  in6_addr v6{};
  if (::inet_pton(AF_INET6, h.c_str(), &v6) == 1) {
    const unsigned char* b = v6.s6_addr;
    bool zero_first_10 = true;
    for (int i = 0; i < 10; ++i) zero_first_10 = zero_first_10 && b[i] == 0;
    if (!zero_first_10) return false;
    // ::1, or ::ffff:127.x.y.z (an IPv4 loopback address written as IPv6).
    const bool v6_loopback =
        b[10] == 0 && b[11] == 0 && b[12] == 0 && b[13] == 0 && b[14] == 0 && b[15] == 1;
    const bool v4_mapped = b[10] == 0xff && b[11] == 0xff && b[12] == 127;
    return v6_loopback || v4_mapped;
  }
  return false;
}

StatusOr<HttpOptions> parse_http_address(const std::string& text, bool allow_public) {
  std::string host;
  std::string port_text;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return InvalidArgument("bad HTTP address '" + text + "': expected [IPV6]:PORT");
    }
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string::npos) {
      return InvalidArgument("bad HTTP address '" + text +
                             "': expected HOST:PORT, e.g. 127.0.0.1:9400");
    }
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string::npos) {
      return InvalidArgument("bad HTTP address '" + text +
                             "': write an IPv6 address in brackets, e.g. [::1]:9400");
    }
  }
  if (host.empty()) {
    return InvalidArgument("bad HTTP address '" + text + "': no host (use 127.0.0.1:PORT)");
  }
  int port = -1;
  const auto [end, ec] =
      std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() ||
      port < 0 || port > 65535) {
    return InvalidArgument("bad HTTP address '" + text + "': the port must be 0 to 65535");
  }
  if (!allow_public && !is_loopback_host(host)) {
    in6_addr any{};
    const bool literal = ::inet_pton(AF_INET, host.c_str(), &any) == 1 ||
                         ::inet_pton(AF_INET6, host.c_str(), &any) == 1;
    return InvalidArgument(
        "refusing to serve HTTP on '" + host + "', which is not " +
        (literal ? "a loopback address" : "localhost (only localhost names count as loopback)") +
        ": anyone who can reach it would see job names, commands and users; pass --http-public "
        "to allow it");
  }
  HttpOptions options;
  options.host = host;
  options.port = port;
  options.allow_public = allow_public;
  return options;
}

StatusOr<std::unique_ptr<HttpServer>> start_http_server(const HttpOptions& options,
                                                        SnapshotSource source) {
  if (!source) return InvalidArgument("start_http_server: no snapshot source");
  if (options.port < 0 || options.port > 65535) {
    return InvalidArgument("HTTP port " + std::to_string(options.port) + " is not 0 to 65535");
  }
  if (options.host.empty()) return InvalidArgument("HTTP host is empty");
  if (options.request_timeout.count() <= 0) {
    return InvalidArgument("HTTP request timeout must be positive");
  }
  if (!options.allow_public && !is_loopback_host(options.host)) {
    return InvalidArgument("refusing to serve HTTP on '" + options.host +
                           "', which is not a loopback address, without allow_public "
                           "(--http-public)");
  }
  auto server = std::make_unique<Server>(options, std::move(source));
  if (Status s = server->start(); !s.ok()) return s;
  return std::unique_ptr<HttpServer>(std::move(server));
}

}  // namespace gpumgr::http
