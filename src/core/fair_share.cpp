#include "core/fair_share.h"

#include <algorithm>
#include <cmath>

namespace gpumgr::core {

void FairShare::set_half_life(TimeNs half_life, TimeNs now) {
  // Every account's usage is brought to `now` under the old half-life first.
  for (auto& [uid, a] : accounts_) {
    a.usage = value(a, now);
    a.at = std::max(a.at, now);
  }
  half_life_ = std::max<TimeNs>(half_life, 1);
  decay_per_s_ = std::log(2.0) / (static_cast<double>(half_life_) / 1e9);
}

double FairShare::value(const Account& a, TimeNs now) const {
  if (now <= a.at) return a.usage;
  const double dt = static_cast<double>(now - a.at) / 1e9;
  // -expm1(-x) = 1 - e^{-x}, exact for the small x of short intervals.
  const double gone = -std::expm1(-decay_per_s_ * dt);
  return a.usage * (1 - gone) + a.rate * gone / decay_per_s_;
}

FairShare::Account& FairShare::advance(std::uint32_t uid, TimeNs now) {
  Account& a = accounts_[uid];
  a.usage = value(a, now);
  a.at = std::max(a.at, now);
  return a;
}

void FairShare::start(std::uint32_t uid, double gib, TimeNs now) { advance(uid, now).rate += gib; }

void FairShare::stop(std::uint32_t uid, double gib, TimeNs now) {
  Account& a = advance(uid, now);
  // Sums of doubles drift: the last lease's end leaves exactly no rate.
  a.rate = std::max(0.0, a.rate - gib);
  if (a.rate < 1e-9) a.rate = 0;
}

double FairShare::usage(std::uint32_t uid, TimeNs now) const {
  const auto it = accounts_.find(uid);
  return it == accounts_.end() ? 0 : value(it->second, now);
}

double FairShare::rate(std::uint32_t uid) const {
  const auto it = accounts_.find(uid);
  return it == accounts_.end() ? 0 : it->second.rate;
}

}  // namespace gpumgr::core
