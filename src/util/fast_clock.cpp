#include "util/fast_clock.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>

#include "util/small_file.h"

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

namespace gpumgr {
namespace {

__extension__ using Uint128 = unsigned __int128;

constexpr std::int64_t kAnchorIntervalNs = 100'000'000;  // re-anchor after 100 ms
// An anchor whose steady_clock read took longer than this (the thread was preempted between
// the two TSC reads around it) is not trusted; the next reading tries again.
constexpr std::uint64_t kMaxAnchorTicks = 10'000;  // about 3 us at 3 GHz; a read takes 0.05 us

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool use_tsc() {
#if defined(__x86_64__)
  static const bool use = [] {
    if (const char* env = std::getenv("GPUMGR_CLOCK");
        env != nullptr && std::string(env) == "steady")
      return false;
    const auto source =
        read_small_file("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    return source.has_value() && (*source == "tsc\n" || *source == "tsc");
  }();
  return use;
#else
  return false;
#endif
}

std::uint64_t read_tsc() {
#if defined(__x86_64__)
  return __rdtsc();
#else
  return 0;
#endif
}

// The published conversion: ns = base_ns + (tsc - base_tsc) * ns_per_tick_q32 / 2^32, valid
// while tsc - base_tsc < limit_ticks. A sequence lock guards it: the writer makes seq odd,
// stores, makes it even again; a reader retries when seq was odd or changed under it. Every
// field is an atomic, so that no read races a write even when it is retried.
struct Conversion {
  std::atomic<std::uint32_t> seq{0};
  std::atomic<std::uint64_t> base_tsc{0};
  std::atomic<std::int64_t> base_ns{0};
  std::atomic<std::uint64_t> ns_per_tick_q32{0};  // 0: not measured yet
  std::atomic<std::uint64_t> limit_ticks{0};
};

Conversion conversion;

// The writer's side, under anchor_mutex: the last anchor, from which the next one measures
// the rate.
std::mutex anchor_mutex;
std::uint64_t last_anchor_tsc = 0;
std::int64_t last_anchor_ns = 0;
// When the slow path may next try to anchor (steady ns), read without the mutex.
std::atomic<std::int64_t> next_anchor_ns{0};

// A TSC reading and the steady_clock time at the same instant: the middle of the two TSC
// reads around the clock read, from the tightest of three tries.
struct Pair {
  std::uint64_t tsc;
  std::int64_t ns;
  std::uint64_t width;
};

Pair read_pair() {
  Pair best{0, 0, ~std::uint64_t{0}};
  for (int i = 0; i < 3; ++i) {
    const std::uint64_t before = read_tsc();
    const std::int64_t ns = steady_ns();
    const std::uint64_t after = read_tsc();
    if (after >= before && after - before < best.width) {
      best = Pair{before + (after - before) / 2, ns, after - before};
    }
  }
  return best;
}

void publish(std::uint64_t base_tsc, std::int64_t base_ns, std::uint64_t rate_q32) {
  const std::uint32_t seq = conversion.seq.load(std::memory_order_relaxed);
  conversion.seq.store(seq + 1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  conversion.base_tsc.store(base_tsc, std::memory_order_relaxed);
  conversion.base_ns.store(base_ns, std::memory_order_relaxed);
  conversion.ns_per_tick_q32.store(rate_q32, std::memory_order_relaxed);
  const Uint128 limit = (Uint128{static_cast<std::uint64_t>(kAnchorIntervalNs)} << 32) / rate_q32;
  conversion.limit_ticks.store(static_cast<std::uint64_t>(limit), std::memory_order_relaxed);
  conversion.seq.store(seq + 2, std::memory_order_release);
}

// Takes a new anchor and, from the last one, the TSC's rate; publishes both. Under
// anchor_mutex.
void anchor() {
  const Pair now = read_pair();
  if (now.width > kMaxAnchorTicks) return;  // preempted three times: try on a later reading
  const bool have_last = last_anchor_ns != 0 && now.tsc > last_anchor_tsc;
  const std::int64_t span_ns = now.ns - last_anchor_ns;
  if (have_last && span_ns >= kAnchorIntervalNs / 2) {
    const Uint128 rate =
        (Uint128{static_cast<std::uint64_t>(span_ns)} << 32) / (now.tsc - last_anchor_tsc);
    if (rate > 0 && rate < (Uint128{1} << 40)) {  // 1/256 to 256 ns per tick: plausible
      publish(now.tsc, now.ns, static_cast<std::uint64_t>(rate));
    }
  }
  if (!have_last || span_ns >= kAnchorIntervalNs / 2) {
    last_anchor_tsc = now.tsc;
    last_anchor_ns = now.ns;
  }
  next_anchor_ns.store(now.ns + (have_last ? kAnchorIntervalNs : kAnchorIntervalNs / 2),
                       std::memory_order_relaxed);
}

// No valid conversion for this reading: read steady_clock, and anchor when one is due.
std::int64_t slow_path() {
  const std::int64_t ns = steady_ns();
  if (ns >= next_anchor_ns.load(std::memory_order_relaxed)) {
    std::unique_lock lock(anchor_mutex, std::try_to_lock);
    if (lock.owns_lock() && ns >= next_anchor_ns.load(std::memory_order_relaxed)) anchor();
  }
  return ns;
}

}  // namespace

std::int64_t fast_steady_ns() {
  if (!use_tsc()) return steady_ns();
  const std::uint64_t tsc = read_tsc();
  std::uint64_t base_tsc;
  std::int64_t base_ns;
  std::uint64_t rate;
  std::uint64_t limit;
  for (;;) {
    const std::uint32_t seq = conversion.seq.load(std::memory_order_acquire);
    base_tsc = conversion.base_tsc.load(std::memory_order_relaxed);
    base_ns = conversion.base_ns.load(std::memory_order_relaxed);
    rate = conversion.ns_per_tick_q32.load(std::memory_order_relaxed);
    limit = conversion.limit_ticks.load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if ((seq & 1U) == 0 && seq == conversion.seq.load(std::memory_order_relaxed)) break;
  }
  // A TSC read before the anchor (on another thread) wraps to a huge difference: that, an
  // anchor older than its interval, or no rate yet all take the slow path.
  const std::uint64_t elapsed = tsc - base_tsc;
  if (rate == 0 || elapsed >= limit) return slow_path();
  return base_ns + static_cast<std::int64_t>((Uint128{elapsed} * rate) >> 32);
}

std::string_view fast_clock_source() { return use_tsc() ? "tsc" : "steady_clock"; }

}  // namespace gpumgr
