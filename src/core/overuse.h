// The overuse rule and policy (docs/accounting.md, "Overuse") as pure functions of their
// inputs, time passed in: a lease whose holder uses more than the lease (beyond a tolerance)
// starts an episode, which ends when it is back under; under `terminate`, an episode that
// lasts the grace period gets the holder's tree SIGTERM, and one that lasts another grace
// period SIGKILL and its lease released as failed.
// Not synchronised: the ledger calls these under its mutex; any thread may call the pure
// functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/scheduler.h"
#include "gpumgr/ledger.h"

namespace gpumgr::core {

// Something the overuse policy (or a revocation) did, for the daemon's log and the in-process event
// handler.
struct LeaseEvent {
  enum class Kind {
    kOveruseStarted,  // the holder went over its lease (beyond the tolerance)
    kOveruseEnded,    // it is back under
    kTerminating,     // `terminate`: SIGTERM sent to the holder's process tree
    kKilled,          // `terminate`: SIGKILL sent, the lease released as failed
    kRevoked,         // a revocable lease was revoked: its holder has the grace to release
    kRevokeKilled,    // a revoked lease's holder had not released at the grace's end
  };
  Kind kind = Kind::kOveruseStarted;
  std::string job_id;
  std::uint32_t pid = 0;
  std::uint32_t uid = 0;
  int device = -1;  // where the use is highest over the lease
  std::uint64_t leased_bytes = 0;
  std::uint64_t used_bytes = 0;
  std::string message;  // one line, what a log shows after the job id
};
std::string_view lease_event_name(LeaseEvent::Kind kind);  // "overuse", "overuse-ended", ...

// Whether `used` is beyond `leased` by more than the tolerance (a percentage of `leased`).
bool exceeds_lease(std::uint64_t used, std::uint64_t leased, double tolerance_percent);

// One lease's overuse state.
struct OveruseEpisode {
  std::optional<TimeNs> since;  // over since then; empty while under
  bool ever = false;            // was over at some time during the lease
  int signals_sent = 0;         // `terminate`: 1 after SIGTERM, 2 after SIGKILL
  TimeNs signalled_at = 0;
  std::string enforcement;  // what the policy did, for status displays
};

// What to do after a measurement of one lease.
struct OveruseStep {
  bool started = false;    // a new episode: count it and report it
  bool ended = false;      // back under
  bool terminate = false;  // send SIGTERM to the holder's tree now
  bool kill = false;       // send SIGKILL now and release the lease as failed
};

// Advances `episode` by one measurement taken at `now`: `over` says whether the holder is
// beyond its lease on any of its devices.
OveruseStep step_overuse(OveruseEpisode& episode, bool over, TimeNs now,
                         const OveruseConfig& config);

// Checks an OveruseConfig: the grace a finite number of seconds in [0, 86400], the tolerance
// a finite percentage in [0, 1000]; the message names the field and the value.
Status validate_overuse_config(const OveruseConfig& config);

}  // namespace gpumgr::core
