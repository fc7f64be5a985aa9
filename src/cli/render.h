// Text rendering of a Snapshot for `gpumgr status` and `gpumgr watch`: a device table with
// memory bars (leased / outside / free, with the capacity line), then leases, the queue and
// statistics. Pure functions: any thread may call them.
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
};

// "[####%%%%....|..]": leased '#', outside '%', free '.', and '|' where capacity ends.
std::string memory_bar(const DeviceAccount& device, int width, bool color);
std::string render_status(const Snapshot& snapshot, const RenderOptions& options);
// "3m12s", "45.2s", "2h05m"
std::string format_duration(double seconds);

}  // namespace gpumgr::cli
