// gpumgr watch: a live terminal view in the spirit of nvitop: devices with memory bars,
// leases (each with a bar of its holder's use against the lease, overuse in its own colour)
// and the queue, redrawn every second to fit the terminal; q quits. When stdout is not
// a terminal it prints one snapshot and exits, so that `gpumgr watch | less` and scripts work.
// Like `gpumgr status` it reads the daemon given by --socket or GPUMGR_SOCKET; without either
// it uses the host's daemon when one answers at the default path, else looks in-process.
//
// Raw ANSI and termios rather than ncurses: one dependency fewer, and the view is a full
// redraw of text that render_status already lays out. Runs on the main thread; the signal
// handlers only set flags and write to a self-pipe that wakes the main loop.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>

#include "cli/commands.h"
#include "cli/render.h"
#include "gpumgr/manager.h"
#include "util/terminal_text.h"

namespace gpumgr::cli {

namespace {

volatile std::sig_atomic_t g_resized = 0;
volatile std::sig_atomic_t g_quit = 0;
int g_wake_fd = -1;  // write end of the self-pipe

void on_signal(int sig) {
  if (sig == SIGWINCH) {
    g_resized = 1;
  } else {
    g_quit = 1;
  }
  if (g_wake_fd >= 0) {
    const char byte = 0;
    [[maybe_unused]] const ssize_t n = ::write(g_wake_fd, &byte, 1);
  }
}

// Cuts a line to `columns` terminal columns, keeping ANSI colour sequences intact (they take
// no columns) and never splitting a UTF-8 character. The text between the colour sequences
// went through terminal_safe() in render_status, so the only ESC bytes are the colours.
std::string fit_line(const std::string& line, int columns) {
  std::string out;
  std::size_t visible = 0;
  const auto limit = static_cast<std::size_t>(std::max(columns, 0));
  bool cut = false;
  for (std::size_t i = 0; i < line.size();) {
    if (line[i] == '\033' && i + 1 < line.size() && line[i + 1] == '[') {
      std::size_t j = i + 2;
      while (j < line.size() && (line[j] < 0x40 || line[j] > 0x7e)) ++j;
      out.append(line, i, j + 1 - i);
      i = j + 1;
      continue;
    }
    // One character: a lead byte and its continuation bytes.
    std::size_t j = i + 1;
    while (j < line.size() && (static_cast<unsigned char>(line[j]) & 0xc0) == 0x80) ++j;
    const std::string_view character(line.data() + i, j - i);
    const std::size_t width = terminal_columns(character);
    if (visible + width > limit) {
      cut = true;
      break;
    }
    visible += width;
    out.append(character);
    i = j;
  }
  if (cut) out += "\033[0m";
  return out;
}

struct TerminalSize {
  int columns = 100;
  int rows = 40;
};

TerminalSize terminal_size() {
  TerminalSize size;
  winsize ws{};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
    size.columns = ws.ws_col;
    size.rows = ws.ws_row;
  }
  return size;
}

// Puts the terminal into the state the view needs and restores it on destruction: no echo,
// keys delivered at once, the alternate screen (so the shell's scrollback survives), no
// cursor. Ctrl-C still raises SIGINT, which quits cleanly.
class TerminalMode {
 public:
  TerminalMode() {
    if (::isatty(STDIN_FILENO) != 0 && ::tcgetattr(STDIN_FILENO, &saved_) == 0) {
      termios raw = saved_;
      raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
      raw.c_cc[VMIN] = 0;
      raw.c_cc[VTIME] = 0;
      restore_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
    }
    write_all("\033[?1049h\033[?25l");
  }
  ~TerminalMode() {
    write_all("\033[0m\033[?25h\033[?1049l");
    if (restore_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
  }
  TerminalMode(const TerminalMode&) = delete;
  TerminalMode& operator=(const TerminalMode&) = delete;

  static void write_all(const std::string& text) {
    std::size_t done = 0;
    while (done < text.size()) {
      const ssize_t n = ::write(STDOUT_FILENO, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      done += static_cast<std::size_t>(n);
    }
  }

 private:
  termios saved_{};
  bool restore_ = false;
};

std::string clock_text() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  ::localtime_r(&now, &local);
  char buf[16];
  std::strftime(buf, sizeof buf, "%H:%M:%S", &local);
  return buf;
}

// One frame: a title line, then the status fitted to the terminal. Every line is cleared to
// its end and the screen below the frame is cleared, so nothing of a longer frame remains.
std::string frame(Manager& manager, const TerminalSize& size, double interval_s) {
  std::string body;
  auto snap = manager.snapshot();
  if (snap.ok()) {
    RenderOptions ro;
    ro.width = size.columns;
    ro.color = true;
    ro.height = std::max(1, size.rows - 2);
    ro.lease_bars = true;
    body = render_status(snap.value(), ro);
  } else {
    // The message may quote what a daemon sent: no raw control characters from it.
    body = "\033[31mcannot read the state: " + terminal_safe(snap.status().message()) +
           "\033[0m\n(retrying every second)\n";
  }
  char title[160];
  std::snprintf(title, sizeof title, "\033[1mgpumgr watch\033[0m  every %.1fs, q quits%*s",
                interval_s, std::max(9, size.columns - 33), clock_text().c_str());
  std::string out = "\033[H" + fit_line(title, size.columns) + "\033[K\r\n\033[K\r\n";
  std::size_t start = 0;
  int row = 2;
  while (start < body.size() && row < size.rows) {
    std::size_t end = body.find('\n', start);
    if (end == std::string::npos) end = body.size();
    out += fit_line(body.substr(start, end - start), size.columns) + "\033[K";
    start = end + 1;
    if (++row < size.rows) out += "\r\n";
  }
  return out + "\033[J";
}

int run_live(Manager& manager, double interval_s) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    std::perror("gpumgr watch: pipe");
    return kExitError;
  }
  g_wake_fd = pipe_fds[1];
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigemptyset(&sa.sa_mask);
  for (const int sig : {SIGWINCH, SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);

  const auto interval = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::duration<double>(interval_s));
  bool stdin_open = true;
  {
    TerminalMode mode;
    auto next = std::chrono::steady_clock::now();
    while (g_quit == 0) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= next || g_resized != 0) {
        g_resized = 0;
        TerminalMode::write_all(frame(manager, terminal_size(), interval_s));
        next = std::chrono::steady_clock::now() + interval;
      }
      pollfd fds[2] = {{pipe_fds[0], POLLIN, 0}, {STDIN_FILENO, POLLIN, 0}};
      const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(
          next - std::chrono::steady_clock::now());
      const int ready =
          ::poll(fds, stdin_open ? 2 : 1, static_cast<int>(std::max<long long>(0, wait.count())));
      if (ready <= 0) continue;  // timeout (redraw) or EINTR (flags set by the handler)
      if ((fds[0].revents & POLLIN) != 0) {
        char drain[64];
        while (::read(pipe_fds[0], drain, sizeof drain) > 0) {
        }
      }
      if (stdin_open && (fds[1].revents & (POLLIN | POLLHUP)) != 0) {
        char keys[64];
        const ssize_t n = ::read(STDIN_FILENO, keys, sizeof keys);
        if (n == 0) stdin_open = false;  // EOF: only signals can end the view now
        for (ssize_t i = 0; i < n; ++i) {
          if (keys[i] == 'q' || keys[i] == 'Q') g_quit = 1;
        }
        if (n > 0 && g_quit == 0) next = std::chrono::steady_clock::now();  // any key: redraw
      }
    }
  }
  g_wake_fd = -1;
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
  return kExitOk;
}

}  // namespace

Command setup_watch(CLI::App& app, const GlobalOptions& global) {
  struct Options {
    double interval = 1.0;
    ViewOptions view;
  };
  auto opts = std::make_shared<Options>();
  CLI::App* sub = app.add_subcommand(
      "watch", "A live terminal view of devices, leases and the queue (q quits)");
  // Global options such as --simulate may also follow the subcommand: gpumgr watch --simulate ..
  sub->fallthrough();
  sub->add_option("--interval", opts->interval, "Seconds between refreshes")
      ->check(CLI::Range(0.1, 3600.0));
  add_view_options(*sub, opts->view);
  sub->footer(
      "When stdout is not a terminal, prints one snapshot and exits.\n"
      "Exit codes: 0 ok; 1 backend failure; 2 bad arguments; 3 no driver or daemon reachable.");
  return {sub, [opts, &global]() -> int {
            int code = kExitOk;
            auto manager = open_view_manager(opts->view, global, "watch", &code);
            if (!manager) return code;
            if (::isatty(STDOUT_FILENO) == 0) {
              auto snap = manager->snapshot();
              if (!snap.ok()) {
                std::fprintf(stderr, "gpumgr watch: %s\n",
                             terminal_safe(snap.status().message()).c_str());
                return exit_code_for(snap.status());
              }
              RenderOptions ro;
              ro.lease_bars = true;
              if (const char* cols = std::getenv("COLUMNS");
                  cols != nullptr && std::atoi(cols) > 0) {
                ro.width = std::atoi(cols);
              }
              std::cout << render_status(snap.value(), ro);
              return kExitOk;
            }
            return run_live(*manager, opts->interval);
          }};
}

}  // namespace gpumgr::cli
