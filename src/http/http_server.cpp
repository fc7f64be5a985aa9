#include "http/http_server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <cctype>
#include <charconv>
#include <chrono>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include "core/snapshot_json.h"
#include "http/assets.h"
#include "http/metrics.h"

namespace gpumgr::http {
namespace {

constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr const char* kJsonContentType = "application/json; charset=utf-8";
// Request threads. A dashboard tab keeps one keep-alive connection busy between polls; eight
// leave room for a few tabs, a Prometheus scraper and curl.
constexpr std::size_t kThreads = 8;

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

class Server final : public HttpServer {
 public:
  Server(const HttpOptions& options, SnapshotSource source)
      : options_(options), source_(std::move(source)) {
    context_.version = std::string(build_version());
    context_.started_at = std::chrono::system_clock::now();
  }
  ~Server() override { stop(); }

  Status start() {
    server_.new_task_queue = [] { return new httplib::ThreadPool(kThreads); };
    // SO_REUSEADDR only. httplib's default also sets SO_REUSEPORT, with which a second
    // daemon would bind the same port and the kernel would split the scrapes between them.
    server_.set_socket_options([](socket_t sock) {
      int yes = 1;
      ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    // Every response: never cached (the state changes every second) and never sniffed.
    server_.set_default_headers(
        {{"Cache-Control", "no-store"}, {"X-Content-Type-Options", "nosniff"}});
    server_.set_pre_routing_handler(
        [this](const httplib::Request& req, httplib::Response& res) { return screen(req, res); });
    server_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      with_snapshot(res, [&](const Snapshot& s) {
        res.set_content(render_metrics(s, context_), kMetricsContentType);
      });
    });
    server_.Get("/api/v1/status", [this](const httplib::Request&, httplib::Response& res) {
      with_snapshot(res, [&](const Snapshot& s) { send_json(res, to_json(s)); });
    });
    server_.Get("/api/v1/leases", [this](const httplib::Request&, httplib::Response& res) {
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
    server_.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("ok\n", "text/plain; charset=utf-8");
    });
    server_.Get(
        R"(/|/assets/[A-Za-z0-9._-]+)", [](const httplib::Request& req, httplib::Response& res) {
          const Asset* asset = find_asset(req.path);
          if (asset == nullptr) return send_error(res, 404, "no such file: " + req.path);
          res.set_content(std::string(asset->body), std::string(asset->content_type).c_str());
          // The page may load only its own files: no CDN, no third party.
          res.set_header("Content-Security-Policy",
                         "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'");
        });
    // Read-only: every method that could change something is refused on every path.
    const auto refuse = [](const httplib::Request& req, httplib::Response& res) {
      res.set_header("Allow", "GET, HEAD");
      send_error(
          res, 405,
          req.method + " is not allowed: the gpumgr HTTP interface is read-only (GET, HEAD)");
    };
    server_.Post(".*", refuse);
    server_.Put(".*", refuse);
    server_.Patch(".*", refuse);
    server_.Delete(".*", refuse);
    server_.Options(".*", refuse);
    server_.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      // Only fill in bodies the handlers left empty (a plain 404 from the router).
      if (res.status == 404 && res.body.empty()) {
        send_error(
            res, 404,
            "no such path: " + req.path + " (try /, /metrics, /api/v1/status or /api/v1/leases)");
      }
    });
    server_.set_exception_handler(
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

    if (options_.port == 0) {
      port_ = server_.bind_to_any_port(options_.host);
      if (port_ < 0) port_ = 0;
    } else if (server_.bind_to_port(options_.host, options_.port)) {
      port_ = options_.port;
    }
    if (port_ <= 0) {
      return Unavailable("cannot listen on " + authority(options_.host, options_.port) +
                         ": the address is in use or not local (another gpumgr serve? "
                         "DCGM exporter also defaults to port 9400; choose another with --http)");
    }
    thread_ = std::thread([this] {
      server_.listen_after_bind();
      listen_returned_.store(true);
    });
    // httplib's stop() does nothing until the listening loop has started, so a stop() right
    // after start() would leave the thread listening forever: wait for the loop here.
    while (!server_.is_running() && !listen_returned_.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return Status::Ok();
  }

  int port() const override { return port_; }

  void stop() override {
    std::lock_guard<std::mutex> lock(stop_mutex_);
    if (thread_.joinable()) {
      server_.stop();
      thread_.join();
    }
  }

 private:
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

  const HttpOptions options_;
  const SnapshotSource source_;
  MetricsContext context_;
  httplib::Server server_;
  int port_ = 0;        // set before the server thread starts, then read-only
  std::thread thread_;  // guarded by stop_mutex_ after start()
  std::atomic<bool> listen_returned_{false};
  std::mutex stop_mutex_;  // serialises stop() calls
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
    return InvalidArgument("refusing to serve HTTP on '" + host +
                           "', which is not a loopback address: anyone who can reach it would see "
                           "job names, commands and users; pass --http-public to allow it");
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
