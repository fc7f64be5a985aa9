// FairShare: each user's recent use of the host, for fair-share ordering of the queue
// (docs/scheduling.md). A user's usage is the VRAM it has leased over time, in GiB-seconds
// (a lease's size times its devices, integrated over its hold), decayed exponentially with a
// half-life: use an hour ago weighs half as much as use now, at the default of one hour.
//
// Usage changes only at grants and releases (the rate) and with time (the decay), so each
// user keeps its usage at its last change and its rate since: the figure at any later time
// is exact, with no periodic update. With rate r (GiB) and decay constant l = ln 2 / half-life,
// u(t) = u(t0) e^{-l (t - t0)} + r (1 - e^{-l (t - t0)}) / l.
//
// Not thread-safe: the Scheduler owns it and its owner serialises every call.
#pragma once

#include <cstdint>
#include <unordered_map>

namespace gpumgr::core {

class FairShare {
 public:
  // Nanoseconds, as the scheduler's clock.
  using TimeNs = std::int64_t;
  static constexpr TimeNs kDefaultHalfLife = 3'600'000'000'000;  // one hour

  explicit FairShare(TimeNs half_life = kDefaultHalfLife) { set_half_life(half_life, 0); }

  // Changes the half-life from `now` on (a reload): the use before `now` decayed at the old
  // one. A half-life of at most 0 is taken as 1 ns (use forgotten at once).
  void set_half_life(TimeNs half_life, TimeNs now);
  TimeNs half_life() const { return half_life_; }

  // A lease of `gib` (size times devices, in GiB) starts or ends for `uid` at `now`.
  void start(std::uint32_t uid, double gib, TimeNs now);
  void stop(std::uint32_t uid, double gib, TimeNs now);

  // The decayed usage of `uid` at `now`, in GiB-seconds (0 for a user never seen). A `now`
  // before the user's last change (a clock that stepped back) reads as that change's time.
  double usage(std::uint32_t uid, TimeNs now) const;
  // The GiB `uid` holds now.
  double rate(std::uint32_t uid) const;

 private:
  struct Account {
    double usage = 0;  // GiB-seconds at `at`
    double rate = 0;   // GiB leased since `at`
    TimeNs at = 0;
  };
  // `a`'s usage at `now`.
  double value(const Account& a, TimeNs now) const;
  Account& advance(std::uint32_t uid, TimeNs now);

  TimeNs half_life_ = kDefaultHalfLife;
  double decay_per_s_ = 0;  // ln 2 / half-life
  std::unordered_map<std::uint32_t, Account> accounts_;
};

}  // namespace gpumgr::core
