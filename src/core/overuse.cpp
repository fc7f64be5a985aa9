#include "core/overuse.h"

#include <cmath>
#include <sstream>

namespace gpumgr::core {

std::string_view lease_event_name(LeaseEvent::Kind kind) {
  switch (kind) {
    case LeaseEvent::Kind::kOveruseStarted:
      return "overuse";
    case LeaseEvent::Kind::kOveruseEnded:
      return "overuse-ended";
    case LeaseEvent::Kind::kTerminating:
      return "terminating";
    case LeaseEvent::Kind::kKilled:
      return "killed";
    case LeaseEvent::Kind::kRevoked:
      return "revoked";
    case LeaseEvent::Kind::kRevokeKilled:
      return "revoke-killed";
  }
  return "unknown";
}

bool exceeds_lease(std::uint64_t used, std::uint64_t leased, double tolerance_percent) {
  if (used <= leased) return false;
  // The excess is exact; the allowance a product then a division, so that whole
  // percentages of whole sizes come out exact (5% of 100 is 5, not 5.0000001).
  const std::uint64_t excess = used - leased;
  const long double allowed =
      static_cast<long double>(leased) * static_cast<long double>(tolerance_percent) / 100.0L;
  return static_cast<long double>(excess) > allowed;
}

OveruseStep step_overuse(OveruseEpisode& episode, bool over, TimeNs now,
                         const OveruseConfig& config) {
  OveruseStep step;
  if (!over) {
    if (episode.since) {
      episode.since.reset();
      step.ended = true;
    }
    // A holder already told to go is still killed at the end of its grace (below): it was
    // over for the whole grace period once, and may go over again at any moment.
    if (episode.signals_sent != 1) return step;
  } else if (!episode.since) {
    episode.since = now;
    episode.ever = true;
    step.started = true;
  }
  if (config.policy != OverusePolicy::kTerminate) return step;
  const auto grace_ns = static_cast<TimeNs>(config.grace_s * 1e9);
  if (episode.signals_sent == 0 && episode.since && now - *episode.since >= grace_ns) {
    episode.signals_sent = 1;
    episode.signalled_at = now;
    step.terminate = true;
  } else if (episode.signals_sent == 1 && now - episode.signalled_at >= grace_ns) {
    episode.signals_sent = 2;
    step.kill = true;
  }
  return step;
}

Status validate_overuse_config(const OveruseConfig& config) {
  auto show = [](double v) {
    std::ostringstream out;
    out << v;
    return out.str();
  };
  if (!std::isfinite(config.grace_s) || config.grace_s < 0 || config.grace_s > 86400) {
    return InvalidArgument("the overuse grace must be between 0 and 86400 seconds, got " +
                           show(config.grace_s));
  }
  if (!std::isfinite(config.tolerance_percent) || config.tolerance_percent < 0 ||
      config.tolerance_percent > 1000) {
    return InvalidArgument("the overuse tolerance must be between 0 and 1000 percent, got " +
                           show(config.tolerance_percent));
  }
  if (config.policy != OverusePolicy::kReport && config.policy != OverusePolicy::kTerminate) {
    return InvalidArgument("unknown overuse policy");
  }
  return Status::Ok();
}

}  // namespace gpumgr::core
