// Counters the contending helper processes share through a mapped file, so that the test
// sees what every holder saw at the moment it held its lease. Lock-free atomics are
// address-free and so work across processes.
#pragma once

#include <atomic>
#include <cstdint>

struct SharedCounters {
  std::atomic<std::int64_t> holders{0};     // leases held right now, as the holders count
  std::atomic<std::int64_t> bytes{0};       // bytes held right now
  std::atomic<std::int64_t> violations{0};  // times a holder saw a limit exceeded
  std::atomic<std::int64_t> grants{0};
};
static_assert(std::atomic<std::int64_t>::is_always_lock_free);
