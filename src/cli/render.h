// Text rendering of a Snapshot for `gpumgr status` and `gpumgr watch`: a device table with
// memory bars (leased / overuse / outside / free, with the capacity line), then leases (size,
// what the holder uses now and at peak, overuse), the queue and statistics. Every string a
// client chose (job ids, commands, kinds) goes through terminal_safe(): nothing in a snapshot
// can send the terminal a control sequence. Pure functions: any thread may call them.
#pragma once

#include <string>

#include "gpumgr/ledger.h"

namespace gpumgr::cli {

struct RenderOptions {
  int width = 100;     // terminal columns
  bool color = false;  // ANSI colours
  int max_rows = -1;   // rows of leases/queue to show; -1 for all
  // Lines the whole rendering may take (`gpumgr watch` fits the terminal); -1: no limit.
  // Lease and queue rows are cut first ("... N more"), then whatever still does not fit.
  int height = -1;
  // `gpumgr watch`: each lease row gets a bar of its holder's use against the lease
  // (lease_bar), and the UID and WAITED columns are left out where `width` has too little
  // room for them.
  bool lease_bars = false;
};

// "[####!!%%%%....|..]": leased '#', overuse (holders beyond their leases) '!', outside '%',
// free '.', and '|' where capacity ends.
std::string memory_bar(const DeviceAccount& device, int width, bool color);

// What a lease's holder uses, over all of the lease's devices: the highest figure now and the
// highest peak. Empty where no device's use is known; `partial` when some device's use is
// known and another's is not.
struct LeaseUse {
  std::optional<std::uint64_t> used_bytes;
  std::optional<std::uint64_t> peak_used_bytes;
  bool partial = false;
};
LeaseUse lease_use(const LeaseInfo& lease);

// "[####::....]": the holder's use against its lease, `width` cells inside the brackets:
// '#' used within the lease, '!' used beyond it, ':' the peak above today's use, '.' the rest
// of the lease, '|' where the lease ends when the peak goes past it. "[ unknown  ]" where the
// use is unknown. Uses the figures of lease_use().
std::string lease_bar(const LeaseInfo& lease, int width, bool color);

std::string render_status(const Snapshot& snapshot, const RenderOptions& options);
// "3m12s", "45.2s", "2h05m"
std::string format_duration(double seconds);

}  // namespace gpumgr::cli
