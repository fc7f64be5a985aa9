// The dashboard against the real daemon: `gpumgr serve` on simulated devices, a lease taken by
// `gpumgr run` (another process, over the Unix socket) must appear in the leases table and
// the memory bar within 2 seconds, show what its holder uses (scripted through
// GPUMGR_SIMULATE_PROCESSES) against the lease, overuse included, and leave both when that
// process dies.
//
//   node dashboard_daemon.test.js GPUMGR_BINARY
//
// Exit codes: 0 passed, 1 failed.
"use strict";

const { chromium } = require("playwright-core");
const { spawn } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const CHROMIUM = process.env.GPUMGR_CHROMIUM || "/usr/bin/chromium";
const GiB = 1024 ** 3;

function fail(message) {
  throw new Error(message);
}

async function within(ms, what, check) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() >= deadline) fail(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function main() {
  const gpumgr = process.argv[2];
  if (!gpumgr) fail("usage: node dashboard_daemon.test.js GPUMGR_BINARY");
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "gpumgr-daemon-browser-"));
  const socket = path.join(tmp, "gpumgr.sock");
  const processes = path.join(tmp, "processes.txt");
  const env = { ...process.env, GPUMGR_SOCKET: socket };
  delete env.GPUMGR_SIMULATE;
  delete env.GPUMGR_SIMULATE_PROCESSES;

  const daemon = spawn(gpumgr, ["serve", "--simulate", "2x24GiB", "--socket", socket,
                                "--http", "127.0.0.1:0", "--state-dir", path.join(tmp, "state")],
                       { stdio: ["ignore", "pipe", "pipe"],
                         env: { ...env, GPUMGR_SIMULATE_PROCESSES: processes } });
  let log = "";
  daemon.stdout.on("data", (d) => (log += d));
  daemon.stderr.on("data", (d) => (log += d));
  const daemonExited = new Promise((resolve) => daemon.on("exit", (code) => resolve(code)));
  let runner;
  let context;
  try {
    const port = await within(30000, "the daemon's HTTP port in its log", async () => {
      const m = /HTTP on 127\.0\.0\.1:(\d+)/.exec(log);
      if (daemon.exitCode !== null) fail("gpumgr serve exited: " + log);
      return m && m[1];
    });
    const base = `http://127.0.0.1:${port}`;
    context = await chromium.launchPersistentContext(path.join(tmp, "profile"), {
      executablePath: CHROMIUM, headless: true, timeout: 90000,
      viewport: { width: 1280, height: 800 },
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const page = context.pages()[0] || (await context.newPage());
    const problems = [];
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    await page.goto(base + "/", { waitUntil: "load", timeout: 60000 });
    await page.waitForSelector("#device-1 .seg.leased", { state: "attached", timeout: 30000 });

    // Another process takes a lease through the daemon's socket.
    runner = spawn(gpumgr, ["run", "--vram", "6GiB", "--job-id", "daemon-browser-job", "--",
                            "sleep", "120"], { stdio: "inherit", env, detached: true });
    const row = page.locator('#leases tbody tr[data-job-id="daemon-browser-job"]');
    // The clock starts once the daemon has granted the lease, which `gpumgr status` sees.
    await within(30000, "the daemon to grant the lease", async () => {
      const res = await fetch(base + "/api/v1/leases");
      const body = await res.json();
      return body.leases.some((l) => l.job_id === "daemon-browser-job");
    });
    const granted = Date.now();
    await within(2000, "the lease row", async () => (await row.count()) === 1);
    const device = await row.getAttribute("data-devices");
    await within(2000 - (Date.now() - granted), "the leased segment to show 6 GiB", async () =>
      (await page.locator(`#device-${device} .seg.leased`).getAttribute("data-leased-bytes")) ===
      String(6 * GiB));
    console.log(`daemon lease visible ${Date.now() - granted} ms after the grant, on GPU ${device}`);

    // Its holder (the `gpumgr run` process) uses 8 GiB of its 6 GiB: the daemon measures it
    // and the row and the device bar show it.
    fs.writeFileSync(processes, `${device} ${runner.pid} 8GiB\n`);
    const use = row.locator(`.lbar-row[data-device="${device}"]`);
    await within(5000, "the lease's use to show 8 GiB, 2 GiB of it over", async () =>
      (await use.getAttribute("data-used-bytes")) === String(8 * GiB) &&
      (await use.locator(".seg.over").getAttribute("data-over-bytes")) === String(2 * GiB) &&
      (await row.locator(".badge.over").count()) === 1 &&
      (await page.locator(`#device-${device} .seg.overuse`).getAttribute("data-overuse-bytes")) ===
          String(2 * GiB));
    const text = await use.locator(".lbar-text").textContent();
    if (text !== "8 GiB of 6 GiB") fail("the lease's use reads " + text);

    // The lease dies with its process.
    process.kill(-runner.pid, "SIGKILL");
    await within(5000, "the lease to leave the table after its holder died", async () =>
      (await row.count()) === 0);
    if (problems.length) fail(problems.join("\n"));
  } finally {
    if (runner && runner.exitCode === null) {
      try { process.kill(-runner.pid, "SIGKILL"); } catch (e) { /* already gone */ }
    }
    if (context) await context.close().catch(() => {});
    daemon.kill("SIGTERM");
    const timer = setTimeout(() => daemon.kill("SIGKILL"), 15000);
    const code = await daemonExited;
    clearTimeout(timer);
    fs.rmSync(tmp, { recursive: true, force: true });
    if (code !== 0) console.error("gpumgr serve exited with " + code + ":\n" + log);
  }
}

main().then(
  () => console.log("dashboard daemon browser test passed"),
  (e) => {
    console.error("dashboard daemon browser test FAILED: " + e.message);
    process.exit(1);
  });
