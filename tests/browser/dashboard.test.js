// The gpumgr dashboard in a real browser: Debian's headless Chromium, driven by
// playwright-core, loads the page from http_fixture (the HTTP server over simulated devices),
// and the test checks that a lease it takes shows up in the leases table and in the memory
// bar within 2 seconds, that the page fetches nothing from elsewhere, that it fits a phone's
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

async function main() {
  const [fixturePath, screenshot] = process.argv.slice(2);
  if (!fixturePath || !screenshot) fail("usage: node dashboard.test.js FIXTURE SCREENSHOT.png");

  const fixture = new Fixture(fixturePath, [
    "--devices", "2x24GiB,80GiB", "--memory-limit", "0.8", "--max-concurrent-jobs", "3",
    "--animate",
  ]);
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "gpumgr-chromium-"));
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
    const cells = await row.locator("td").allTextContents();
    if (cells[0] !== "browser-job" || cells[2] !== "6 GiB" || cells[3] !== "0") {
      fail("lease row shows " + JSON.stringify(cells));
    }
    await within(2000 - (Date.now() - taken), "the leased segment of GPU 0 to grow", async () => {
      const attr = await page.locator("#device-0 .seg.leased").getAttribute("data-leased-bytes");
      const width = await leasedWidth();
      // 6 GiB of 24 GiB: a quarter of the bar (the width animates towards it).
      return attr === String(6 * GiB) && width > before && Math.abs(width - barWidth / 4) < 3;
    });
    console.log(`lease visible after ${Date.now() - taken} ms`);

    // And leaves the table when released.
    await fixture.command("release browser-job");
    await within(2000, "the released lease to leave the table", async () => (await row.count()) === 0);

    // A busy host for the picture: leases on every device, outside use, a queue.
    await fixture.command("acquire sdxl-turbo-render 9216 0 python -m studio.render --model sdxl-turbo --batch 4");
    await fixture.command("acquire trellis-mesh-0412 14336 1 python trellis/run.py --input /data/chairs/0412.png");
    await fixture.command("foreign 1 3072");
    await fixture.command("acquire llama3-70b-serve 40960 2 vllm serve meta-llama/Llama-3-70B --tp 1");
    await fixture.command("wait whisper-large-v3 6144 1 python asr.py --model large-v3");
    await fixture.command("wait musicgen-melody 12288 0 python musicgen.py --duration 30");
    await within(5000, "two queued jobs in the table", async () =>
      (await page.locator("#queue tbody tr").count()) === 2);
    const queued = await page.locator("#queue tbody tr").first().getAttribute("data-job-id");
    if (queued !== "whisper-large-v3") fail("queue head is " + queued);
    const outside = await page.locator("#device-1 .seg.outside").getAttribute("data-outside-bytes");
    if (outside !== String(3072 * MiB)) fail("outside segment of GPU 1 says " + outside);

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
