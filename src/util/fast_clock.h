// fast_steady_ns(): the steady clock's time (std::chrono::steady_clock's nanoseconds), read
// cheaply.
//
// Why: the ledger stamps every grant and every release. On the virtual machines it runs on,
// a steady_clock read (the vDSO's clock_gettime) costs about 25 ns, a tenth of a whole
// acquire+release. Where the kernel itself keeps time with the TSC (x86-64 with the
// clocksource "tsc": the kernel has checked that the TSC runs at a constant rate and agrees
// across CPUs), a reading here is one rdtsc, about 10 ns, scaled by a rate measured against
// steady_clock. Elsewhere, when GPUMGR_CLOCK=steady is set, and during the first 100 ms while
// the rate is being measured, it reads steady_clock itself.
//
// The conversion is anchored to steady_clock afresh after every 100 ms, so a reading stays
// within a few microseconds of steady_clock; when it is re-anchored a reading may step back
// by that much, so a duration computed from two readings must be clamped at zero.
//
// Any thread may call these functions.
#pragma once

#include <cstdint>
#include <string_view>

namespace gpumgr {

// Nanoseconds since steady_clock's epoch.
std::int64_t fast_steady_ns();

// Where readings come from: "tsc" or "steady_clock".
std::string_view fast_clock_source();

}  // namespace gpumgr
