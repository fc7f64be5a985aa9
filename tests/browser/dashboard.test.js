// The gpumgr dashboard in a real browser: Debian's headless Chromium, driven by
// playwright-core, loads the page from http_fixture (the HTTP server over simulated devices),
// and the test checks that a lease it takes shows up in the leases table and in the memory
// bar within 2 seconds, that its holder's use shows against the lease (overuse in its own
// colour, in the lease's bar and the device's), that unknown use is labelled, that kinds and
// estimates show, that a resident lease shows as revocable, as in use while a request runs
// beside it (whose row names it), and then as being revoked (with its countdown and the
// revocation counted), that the page fetches nothing from elsewhere, that it fits a phone's
// width, and takes the screenshot the README shows.
//
//   node dashboard.test.js FIXTURE SCREENSHOT.png
//
// Exit codes: 0 passed, 1 failed.
"use strict";

const { chromium } = require("playwright-core");
const { spawn } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const readline = require("node:readline");

const CHROMIUM = process.env.GPUMGR_CHROMIUM || "/usr/bin/chromium";
const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

function fail(message) {
  throw new Error(message);
}

// The fixture answers each command with one line; answers come back in order.
class Fixture {
  constructor(binary, args) {
    this.proc = spawn(binary, args, { stdio: ["pipe", "pipe", "inherit"] });
    this.lines = [];
    this.waiting = [];
    readline.createInterface({ input: this.proc.stdout }).on("line", (line) => {
      const waiter = this.waiting.shift();
      if (waiter) waiter(line);
      else this.lines.push(line);
    });
    this.exited = new Promise((resolve) => this.proc.on("exit", (code) => resolve(code)));
  }
  nextLine(timeoutMs = 15000) {
    if (this.lines.length) return Promise.resolve(this.lines.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("the fixture did not answer")), timeoutMs);
      this.waiting.push((line) => {
        clearTimeout(timer);
        resolve(line);
      });
    });
  }
  async command(line) {
    this.proc.stdin.write(line + "\n");
    const answer = await this.nextLine();
    if (!answer.startsWith("ok")) fail(`fixture: ${line} -> ${answer}`);
    return answer;
  }
  async quit() {
    if (this.proc.exitCode !== null) return this.proc.exitCode;
    this.proc.stdin.write("quit\n");
    const timer = setTimeout(() => this.proc.kill("SIGKILL"), 15000);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }
}

// Polls `check` (which returns a value or null) until it gives a value or the deadline passes.
async function within(ms, what, check) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await check();
    if (last !== null && last !== undefined && last !== false) return last;
    if (Date.now() >= deadline) fail(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// An element's classes: none when it has no class attribute (a table row that is neither new
// nor flagged has none, and a check that polls may catch it between two states).
async function classes(locator) {
  return ((await locator.getAttribute("class")) || "").split(" ");
}

async function main() {
  const [fixturePath, screenshot] = process.argv.slice(2);
  if (!fixturePath || !screenshot) fail("usage: node dashboard.test.js FIXTURE SCREENSHOT.png");

  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "gpumgr-chromium-"));
  const fixture = new Fixture(fixturePath, [
    "--devices", "2x24GiB,80GiB", "--memory-limit", "0.8", "--max-concurrent-jobs", "3",
    "--animate", "--history", path.join(profile, "history.sqlite"),
  ]);
  let context;
  try {
    const first = (await fixture.nextLine()).split(" ");
    if (first[0] !== "port") fail("fixture said " + first.join(" "));
    const base = `http://127.0.0.1:${first[1]}`;

    // A fresh profile and no background traffic: the test must not need the internet.
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: 90000,
      viewport: { width: 1280, height: 800 },
      args: [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
      ],
    });
    const page = context.pages()[0] || (await context.newPage());
    const problems = [];
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    page.on("console", (m) => {
      if (m.type() === "error") problems.push("console error: " + m.text());
    });
    page.on("request", (r) => {
      if (!r.url().startsWith(base) && !r.url().startsWith("data:")) {
        problems.push("request outside the daemon: " + r.url());
      }
    });

    await page.goto(base + "/", { waitUntil: "load", timeout: 60000 });
    await page.waitForSelector("#device-0 .seg.leased", { state: "attached", timeout: 30000 });
    const barWidth = await page.locator("#device-0 .membar").evaluate((e) => e.clientWidth);
    const leasedWidth = () =>
      page.locator("#device-0 .seg.leased").evaluate((e) => e.getBoundingClientRect().width);
    const before = await leasedWidth();

    // The lease appears in the table and in the bar within 2 seconds of being taken.
    await fixture.command("acquire browser-job 6144 0 python generate.py --model sdxl");
    const taken = Date.now();
    const row = page.locator('#leases tbody tr[data-job-id="browser-job"]');
    await within(2000, "the lease row", async () => (await row.count()) === 1);
    const cell = (r, cls) => r.locator("td." + cls).textContent();
    const cells = [await cell(row, "job"), await cell(row, "kind"), await cell(row, "size"),
                   await cell(row, "dev-list")];
    if (JSON.stringify(cells) !== JSON.stringify(["browser-job", "–", "6 GiB", "0"])) {
      fail("lease row shows " + JSON.stringify(cells));
    }
    await within(2000 - (Date.now() - taken), "the leased segment of GPU 0 to grow", async () => {
      const attr = await page.locator("#device-0 .seg.leased").getAttribute("data-leased-bytes");
      const width = await leasedWidth();
      // 6 GiB of 24 GiB: a quarter of the bar (the width animates towards it).
      return attr === String(6 * GiB) && width > before && Math.abs(width - barWidth / 4) < 3;
    });
    console.log(`lease visible after ${Date.now() - taken} ms`);

    // Its holder (the fixture) uses 9 GiB of the 6 GiB: the lease's bar goes over, in the
    // overuse colour, the row is flagged, and the device bar shows the 3 GiB of overuse.
    const use = row.locator('.lbar-row[data-device="0"]');
    await within(5000, "the lease's use to read 0 B of 6 GiB", async () =>
      (await use.getAttribute("data-used-bytes")) === "0" &&
      (await use.locator(".lbar-text").textContent()) === "0 B of 6 GiB");
    await fixture.command("use 0 9216");
    await within(5000, "the lease's bar to show 9 GiB, 3 GiB of it over", async () =>
      (await use.getAttribute("data-used-bytes")) === String(9 * GiB) &&
      (await use.locator(".seg.over").getAttribute("data-over-bytes")) === String(3 * GiB) &&
      (await classes(row)).includes("overused"));
    if ((await use.locator(".lbar-text").textContent()) !== "9 GiB of 6 GiB") {
      fail("the lease's use reads " + (await use.locator(".lbar-text").textContent()));
    }
    const badge = await row.locator(".badge.over").textContent();
    if (!/^OVER \d+\.\ds$/.test(badge)) fail("the overuse badge says " + badge);
    const colours = await page.evaluate(() => {
      const style = (sel) => getComputedStyle(document.querySelector(sel)).backgroundColor;
      return { over: style("#leases .lbar .seg.over"), used: style("#leases .lbar .seg.used"),
               overuse: style("#device-0 .seg.overuse"), leased: style("#device-0 .seg.leased") };
    });
    if (colours.over !== "rgb(247, 120, 186)" || colours.overuse !== colours.over ||
        colours.used === colours.over || colours.leased === colours.overuse) {
      fail("overuse is not in its own colour: " + JSON.stringify(colours));
    }
    // The lease's bar spans the 9 GiB: used within the lease two thirds, beyond it one third.
    const widths = await use.evaluate((e) => ({
      bar: e.querySelector(".lbar").getBoundingClientRect().width,
      used: e.querySelector(".seg.used").getBoundingClientRect().width,
      over: e.querySelector(".seg.over").getBoundingClientRect().width,
    }));
    if (Math.abs(widths.used - (widths.bar * 2) / 3) > 1.5 ||
        Math.abs(widths.over - widths.bar / 3) > 1.5) {
      fail("lease bar segments " + JSON.stringify(widths));
    }
    await within(3000, "GPU 0's bar to show 3 GiB of overuse", async () => {
      const seg = page.locator("#device-0 .seg.overuse");
      const width = await seg.evaluate((e) => e.getBoundingClientRect().width);
      return (await seg.getAttribute("data-overuse-bytes")) === String(3 * GiB) &&
          Math.abs(width - barWidth / 8) < 3;
    });
    const legend = await page.locator("#device-0 .mem-legend").textContent();
    if (!legend.includes("overuse 3 GiB")) fail("GPU 0's legend says " + legend);
    await within(3000, "the summary to count the lease over", async () =>
      (await page.locator("#sum-overuse").textContent()) === "1 1 event(s)");
    await fixture.command("use 0 0");
    await within(3000, "the lease to be back under", async () =>
      (await use.getAttribute("data-used-bytes")) === "0" &&
      (await row.locator(".badge.over").count()) === 0 &&
      (await use.locator(".lbar-text").textContent()) === "0 B of 6 GiB · peak 9 GiB");

    // And leaves the table when released.
    await fixture.command("release browser-job");
    await within(2000, "the released lease to leave the table", async () => (await row.count()) === 0);

    // A resident model on the 80 GiB card, then a waiter that fits only there: the queue takes
    // the resident back. Its row says what it is and, while it is revoked, how long its holder
    // has left; the summary counts the revocation.
    await fixture.command("resident-acquire sdxl-resident sdxl-base 40960 2 python serve.py --model sdxl");
    const resident = page.locator('#leases tbody tr[data-job-id="sdxl-resident"]');
    await within(3000, "the resident's row", async () =>
      (await resident.count()) === 1 &&
      (await resident.getAttribute("data-revocable")) === "resident" &&
      (await resident.locator(".badge.revocable").textContent()) === "resident sdxl-base" &&
      (await resident.locator(".badge.revoking").count()) === 0);
    if ((await row.count()) !== 0 || (await page.locator("#leases .badge.revocable").count()) !== 1) {
      fail("a plain lease shows a revocable badge");
    }
    // A request served on the model: its row names the model, and the model's row says it is
    // in use until the request ends.
    await fixture.command("beside-acquire sdxl-request-1 sdxl-base 2048 - python serve.py --request 1");
    const request = page.locator('#leases tbody tr[data-job-id="sdxl-request-1"]');
    await within(3000, "the request's row and the model in use", async () =>
      (await request.count()) === 1 &&
      (await cell(request, "dev-list")) === "2" &&
      (await request.locator(".badge.beside").textContent()) === "beside sdxl-base" &&
      (await request.locator(".badge.revocable").count()) === 0 &&
      (await resident.locator(".badge.in-use").textContent()) === "in use · 1 job");
    await fixture.command("release sdxl-request-1");
    await within(3000, "the model to be idle again", async () =>
      (await request.count()) === 0 && (await resident.locator(".badge.in-use").count()) === 0);
    await fixture.command("wait needs-the-card 30720 0 python render.py --scene big");
    const revoking = await within(3000, "the resident to be revoked", async () => {
      if (!(await classes(resident)).includes("revoking")) return null;
      const b = resident.locator(".badge.revoking");
      return (await b.count()) === 1 ? await b.textContent() : null;
    });
    // The in-process ledger's grace is 30 s: a few seconds of it are gone at most.
    const left = /^REVOKING (\d+\.\d)s$/.exec(revoking);
    if (!left || !(Number(left[1]) > 20 && Number(left[1]) <= 30)) {
      fail("the revoking badge says " + revoking);
    }
    const why = await resident.locator(".badge.revoking").getAttribute("title");
    if (!why.startsWith("taken back for needs-the-card; ")) fail("the revoking badge's title is " + why);
    await within(3000, "the summary to count the revocation", async () =>
      (await page.locator("#sum-revoked").textContent()) === "1 1 unloaded · 1 now");
    // Its holder lets go: the waiter starts on the card, and the count stays.
    await fixture.command("release sdxl-resident");
    const taker = page.locator('#leases tbody tr[data-job-id="needs-the-card"]');
    await within(5000, "the waiter to start in the resident's place", async () =>
      (await taker.count()) === 1 && (await resident.count()) === 0 &&
      (await cell(taker, "dev-list")) === "2");
    await within(3000, "the summary to keep the count", async () =>
      (await page.locator("#sum-revoked").textContent()) === "1 1 unloaded");
    await fixture.command("release needs-the-card");
    await within(5000, "the waiter's lease to leave", async () => (await taker.count()) === 0);

    // A busy host for the picture: leases on every device, one sized by its kind's default,
    // one over its lease, one whose use is unknown; outside use; a queue.
    await fixture.command("kind-acquire sdxl-turbo-render sdxl-turbo 0 9216 0 python -m studio.render --model sdxl-turbo --batch 4");
    await fixture.command("use 0 7168");
    await fixture.command("kind-acquire trellis-mesh-0412 trellis 14336 0 1 python trellis/run.py --input /data/chairs/0412.png");
    await fixture.command("use 1 16384");
    await fixture.command("foreign 1 3072");
    await fixture.command("acquire llama3-70b-serve 40960 2 vllm serve meta-llama/Llama-3-70B --tp 1");
    await fixture.command("hide-usage llama3-70b-serve");
    await fixture.command("wait whisper-large-v3 6144 1 python asr.py --model large-v3");
    await fixture.command("wait musicgen-melody 12288 0 python musicgen.py --duration 30");
    await within(5000, "two queued jobs in the table", async () =>
      (await page.locator("#queue tbody tr").count()) === 2);
    const queued = await page.locator("#queue tbody tr").first().getAttribute("data-job-id");
    if (queued !== "whisper-large-v3") fail("queue head is " + queued);
    const outside = await page.locator("#device-1 .seg.outside").getAttribute("data-outside-bytes");
    if (outside !== String(3072 * MiB)) fail("outside segment of GPU 1 says " + outside);

    // Kinds and the estimate's note are shown as the status JSON has them.
    const status = await (await fetch(base + "/api/v1/status")).json();
    const sdxl = status.leases.find((l) => l.job_id === "sdxl-turbo-render");
    if (!sdxl.estimate.startsWith("default 9 GiB")) fail("the fixture's estimate is " + sdxl.estimate);
    const sdxlRow = page.locator('#leases tbody tr[data-job-id="sdxl-turbo-render"]');
    await within(3000, "the estimate note", async () =>
      (await sdxlRow.locator(".estimate").count()) === 1 &&
      (await sdxlRow.locator(".estimate").textContent()) === sdxl.estimate &&
      (await sdxlRow.locator(".estimate").isVisible()));
    if ((await cell(sdxlRow, "kind")) !== "sdxl-turbo") fail("sdxl's kind cell is wrong");
    if ((await sdxlRow.locator(".lbar-text").textContent()) !== "7 GiB of 9 GiB") {
      fail("sdxl's use reads " + (await sdxlRow.locator(".lbar-text").textContent()));
    }
    // trellis is over: 16 GiB of 14 GiB; GPU 1's bar shows the 2 GiB.
    const trellisRow = page.locator('#leases tbody tr[data-job-id="trellis-mesh-0412"]');
    await within(3000, "trellis over its lease", async () =>
      (await trellisRow.locator(".seg.over").getAttribute("data-over-bytes")) === String(2 * GiB) &&
      (await trellisRow.locator(".badge.over").count()) === 1 &&
      (await page.locator("#device-1 .seg.overuse").getAttribute("data-overuse-bytes")) ===
          String(2 * GiB));
    // llama's use is unknown: said so, not drawn as 0.
    const llama = page.locator('#leases tbody tr[data-job-id="llama3-70b-serve"] .lbar-row');
    await within(3000, "llama's use to be unknown", async () =>
      (await classes(llama)).includes("unknown") &&
      (await llama.locator(".lbar-text").textContent()) === "unknown" &&
      (await llama.locator(".seg").count()) === 0);

    // Some history for the small charts, then the picture.
    await page.waitForTimeout(7000);
    fs.mkdirSync(path.dirname(path.resolve(screenshot)), { recursive: true });
    await page.screenshot({ path: screenshot });
    console.log("screenshot: " + screenshot);

    // A phone: one column, nothing wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(300);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
    if (overflow > 390) fail(`the page is ${overflow}px wide on a 390px phone`);
    await page.screenshot({
      path: screenshot.replace(/\.png$/, "") + "-phone.png", fullPage: true,
    });

    if (problems.length) fail(problems.join("\n"));
  } finally {
    if (context) await context.close().catch(() => {});
    const code = await fixture.quit();
    fs.rmSync(profile, { recursive: true, force: true });
    if (code !== 0) console.error("fixture exited with " + code);
  }
}

main().then(
  () => console.log("dashboard browser test passed"),
  (e) => {
    console.error("dashboard browser test FAILED: " + e.message);
    process.exit(1);
  });
