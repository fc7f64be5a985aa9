// render_status with a height: what `gpumgr watch` draws in a small terminal.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "cli/render.h"
#include "gpumgr/units.h"

namespace gpumgr::cli {
namespace {

int lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

Snapshot busy(int leases, int waiters) {
  Snapshot s;
  s.source = "in-process";
  s.backend.name = "simulated";
  for (int i = 0; i < 2; ++i) {
    DeviceAccount d;
    d.info.index = i;
    d.info.name = "Simulated GPU (24 GiB)";
    d.info.total_bytes = 24 * kGiB;
    d.capacity_bytes = 19 * kGiB;
    s.devices.push_back(d);
  }
  s.taken_at = std::chrono::system_clock::now();
  for (int i = 0; i < leases; ++i) {
    LeaseInfo l;
    l.job_id = "lease-" + std::to_string(i);
    l.devices = {i % 2};
    l.bytes = kGiB;
    l.granted_at = s.taken_at;
    s.leases.push_back(l);
  }
  for (int i = 0; i < waiters; ++i) {
    WaiterInfo w;
    w.job_id = "waiter-" + std::to_string(i);
    w.position = i;
    s.queue.push_back(w);
  }
  return s;
}

TEST(RenderFitTest, WithoutHeightEverythingIsShown) {
  const std::string text = render_status(busy(30, 12), {});
  EXPECT_NE(text.find("lease-29"), std::string::npos);
  EXPECT_NE(text.find("waiter-11"), std::string::npos);
  EXPECT_EQ(text.find("more"), std::string::npos);
}

TEST(RenderFitTest, RowsAreCutToFitTheHeight) {
  RenderOptions o;
  o.height = 30;
  const Snapshot s = busy(30, 12);
  const std::string text = render_status(s, o);
  EXPECT_LE(lines(text), 30) << text;
  // As many rows as fit: one more row of each table would not.
  EXPECT_GE(lines(text), 28) << text;
  EXPECT_NE(text.find("lease-0 "), std::string::npos);
  EXPECT_EQ(text.find("lease-29"), std::string::npos);
  EXPECT_NE(text.find(" more\n"), std::string::npos);
  // Devices and statistics stay: they are what the view is for.
  EXPECT_NE(text.find("STATS"), std::string::npos);
  EXPECT_NE(text.find("Simulated GPU"), std::string::npos);
}

TEST(RenderFitTest, AnUnchangedRenderingWhenItFits) {
  RenderOptions tall;
  tall.height = 500;
  const Snapshot s = busy(3, 1);
  EXPECT_EQ(render_status(s, tall), render_status(s, {}));
}

TEST(RenderFitTest, ATinyTerminalKeepsTheTopAndSaysWhatWasCut) {
  RenderOptions o;
  o.height = 5;
  const std::string text = render_status(busy(30, 12), o);
  EXPECT_EQ(lines(text), 5) << text;
  EXPECT_EQ(text.rfind("gpumgr: in-process", 0), 0u) << text;
  EXPECT_NE(text.find("more lines: enlarge the terminal\n"), std::string::npos) << text;
}

}  // namespace
}  // namespace gpumgr::cli
