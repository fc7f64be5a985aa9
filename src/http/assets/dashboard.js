// gpumgr dashboard: polls /api/v1/status (the JSON of `gpumgr status --json`, see
// docs/status-json.md) and draws devices, leases and the queue. Plain DOM and hand-drawn
// SVG, no libraries: the page must work on hosts with no internet, and the server's
// Content-Security-Policy allows only its own files.
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const HISTORY_S = 300;  // the small charts show the last five minutes at most
  const params = new URLSearchParams(location.search);
  // One update a second by default; ?refresh_ms= may ask for faster (not below 200 ms).
  const REFRESH_MS = Math.max(200, Math.min(1000, Number(params.get("refresh_ms")) || 1000));

  const history = new Map();  // device uuid -> [{t, util, leased, outside}]
  const seenJobs = new Set();  // rows already shown, so that only new rows flash
  let failures = 0;

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }

  // Binary units, like the command line: "19.2 GiB", "512 MiB".
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    const text = i === 0 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1);
    return text.replace(/\.0$/, "") + " " + units[i];
  }

  // "45.2s", "3m12s", "2h05m", like the command line.
  function duration(s) {
    if (!(s >= 0)) return "–";
    if (s < 60) return s.toFixed(1) + "s";
    const whole = Math.floor(s);
    if (s < 3600) return Math.floor(whole / 60) + "m" + String(whole % 60).padStart(2, "0") + "s";
    const m = Math.floor(whole / 60);
    return Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
  }

  function pct(part, whole) {
    return whole > 0 ? Math.max(0, Math.min(100, (100 * part) / whole)) : 0;
  }

  // ---- devices -------------------------------------------------------------------------

  function sparkBox(title, series) {
    const box = el("div", "spark-box");
    const head = el("div", "spark-head");
    head.append(el("span", "", title));
    const value = el("b", "spark-value", "–");
    head.append(value);
    const chart = svg("svg", {
      class: "spark", viewBox: "0 0 200 44", preserveAspectRatio: "none",
      "data-series": series, role: "img", "aria-label": title + " over the last minutes",
    });
    box.append(head, chart);
    return { box, value, chart };
  }

  function createDevice(d) {
    const card = el("article", "device");
    card.id = "device-" + d.index;
    card.dataset.gpu = String(d.index);
    card.dataset.uuid = d.uuid;

    const head = el("div", "dev-head");
    const index = el("span", "dev-index", (d.kind === "cpu" ? "CPU " : "GPU ") + d.index);
    const name = el("span", "dev-name", d.name);
    name.title = d.uuid + (d.pci_bus_id ? " · " + d.pci_bus_id : "");
    const reserved = el("span", "reserved", "reserved for queue head");
    const health = el("span", "health");
    head.append(index, name, reserved, health);

    const bar = el("div", "membar");
    bar.setAttribute("role", "img");
    const leased = el("div", "seg leased");
    const overuse = el("div", "seg overuse");
    const outside = el("div", "seg outside");
    const cap = el("div", "cap");
    bar.append(leased, overuse, outside, cap);

    const legend = el("div", "mem-legend");
    const facts = el("div", "facts");

    const sparks = el("div", "sparks");
    const util = sparkBox("Utilisation", "utilization");
    const mem = sparkBox("Memory held", "memory");
    sparks.append(util.box, mem.box);

    card.append(head, bar, legend, sparks, facts);
    return { card, health, reserved, bar, leased, overuse, outside, cap, legend, facts, util, mem };
  }

  const deviceViews = new Map();  // uuid -> view

  function legendItem(swatch, label, value) {
    const span = el("span");
    span.append(el("span", "swatch " + swatch), label + " ");
    span.append(el("b", "", value));
    return span;
  }

  function fact(label, value) {
    const span = el("span", "", label + " ");
    span.append(el("b", "", value));
    return span;
  }

  function updateDevice(view, d, points) {
    const total = d.total_bytes;
    view.card.classList.toggle("unhealthy", !d.healthy);
    view.health.className = "health " + (d.healthy ? "ok" : "bad");
    view.health.textContent = d.healthy ? "healthy" : "unhealthy";
    view.health.title = d.health_reason || "";
    view.reserved.hidden = !d.reserved_for_head;

    // Overuse: what holders use beyond their leases; older daemons do not send it.
    const overuse = d.overuse_bytes || 0;
    const free = Math.max(0, total - d.leased_bytes - overuse - d.foreign_bytes);
    view.bar.dataset.totalBytes = String(total);
    view.bar.dataset.capacityBytes = String(d.capacity_bytes);
    view.bar.setAttribute("aria-label",
        `leased ${bytes(d.leased_bytes)}, overuse ${bytes(overuse)}, ` +
        `outside ${bytes(d.foreign_bytes)}, free ${bytes(free)}` +
        ` of ${bytes(total)}; capacity ${bytes(d.capacity_bytes)}`);
    view.leased.dataset.leasedBytes = String(d.leased_bytes);
    view.leased.style.width = pct(d.leased_bytes, total) + "%";
    view.leased.title = "leased " + bytes(d.leased_bytes);
    view.overuse.dataset.overuseBytes = String(overuse);
    view.overuse.style.width = pct(overuse, total) + "%";
    view.overuse.title = "used by lease holders beyond their leases " + bytes(overuse);
    view.outside.dataset.outsideBytes = String(d.foreign_bytes);
    view.outside.style.width = pct(d.foreign_bytes, total) + "%";
    view.outside.title = "used outside leases " + bytes(d.foreign_bytes);
    view.cap.style.left = pct(d.capacity_bytes, total) + "%";
    view.cap.title = "capacity " + bytes(d.capacity_bytes) + " (what leases may hold)";

    view.legend.replaceChildren(
        legendItem("leased", "leased", bytes(d.leased_bytes)),
        legendItem("overuse", "overuse", bytes(overuse)),
        legendItem("outside", "outside", bytes(d.foreign_bytes)),
        legendItem("free", "free", bytes(free)),
        legendItem("cap", "capacity", bytes(d.capacity_bytes) + " / " + bytes(total)));

    const facts = [
      fact("leases", String(d.active_leases)),
      fact("admissible", bytes(d.admissible_bytes)),
    ];
    if (d.temperature_c !== null) facts.push(fact("temp", d.temperature_c + "°C"));
    if (d.power_draw_w !== null) {
      facts.push(fact("power", Math.round(d.power_draw_w) + " W" +
                  (d.power_limit_w !== null ? " / " + Math.round(d.power_limit_w) + " W" : "")));
    }
    if (!d.healthy && d.health_reason) facts.push(fact("reason", d.health_reason));
    view.facts.replaceChildren(...facts);

    view.util.value.textContent =
        d.utilization_percent === null ? "n/a" : d.utilization_percent + "%";
    view.mem.value.textContent = bytes(d.leased_bytes + overuse + d.foreign_bytes);
    drawUtil(view.util.chart, points);
    drawMemory(view.mem.chart, points, total, d.capacity_bytes);
  }

  // Charts span from the oldest kept sample to now, so a freshly opened page shows its few
  // seconds across the whole width rather than as a sliver at the right edge.
  function xScale(points) {
    const t0 = points[0].t;
    const t1 = points[points.length - 1].t;
    const span = Math.max(t1 - t0, 1e-3);
    return (t) => (200 * (t - t0)) / span;
  }

  function areaPath(points, x, y) {
    if (points.length === 0) return "";
    let d = `M${x(points[0].t).toFixed(1)},44`;
    for (const p of points) d += ` L${x(p.t).toFixed(1)},${y(p).toFixed(1)}`;
    d += ` L${x(points[points.length - 1].t).toFixed(1)},44 Z`;
    return d;
  }

  function single(points) {
    // One sample would be a zero-width area: draw it as a flat line across.
    return points.length === 1 ? [points[0], { ...points[0], t: points[0].t + 1 }] : points;
  }

  function drawUtil(chart, raw) {
    const known = single(raw.filter((p) => p.util !== null));
    chart.replaceChildren();
    if (known.length === 0) return;
    const x = xScale(known);
    const y = (p) => 43 - (41 * p.util) / 100;
    chart.append(svg("path", { class: "area-util", d: areaPath(known, x, y) }));
  }

  function drawMemory(chart, raw, total, capacity) {
    const points = single(raw);
    chart.replaceChildren();
    if (points.length === 0 || !(total > 0)) return;
    const x = xScale(points);
    const scale = (b) => 43 - (41 * b) / total;
    chart.append(svg("path", { class: "area-out", d: areaPath(points, x, (p) => scale(p.leased + p.overuse + p.outside)) }));
    chart.append(svg("path", { class: "area-over", d: areaPath(points, x, (p) => scale(p.leased + p.overuse)) }));
    chart.append(svg("path", { class: "area-mem", d: areaPath(points, x, (p) => scale(p.leased)) }));
    const cy = scale(capacity).toFixed(1);
    chart.append(svg("line", { class: "capline", x1: 0, x2: 200, y1: cy, y2: cy }));
  }

  function renderDevices(s) {
    const container = $("devices");
    const now = s.taken_at;
    const present = new Set();
    for (const d of s.devices) {
      present.add(d.uuid);
      let view = deviceViews.get(d.uuid);
      if (!view) {
        view = createDevice(d);
        deviceViews.set(d.uuid, view);
        container.append(view.card);
      }
      const points = history.get(d.uuid) || [];
      if (points.length === 0 || points[points.length - 1].t < now) {
        points.push({ t: now, util: d.utilization_percent, leased: d.leased_bytes,
                      overuse: d.overuse_bytes || 0, outside: d.foreign_bytes });
      }
      while (points.length > 0 && points[0].t < now - HISTORY_S) points.shift();
      history.set(d.uuid, points);
      updateDevice(view, d, points);
    }
    for (const [uuid, view] of deviceViews) {
      if (!present.has(uuid)) {
        view.card.remove();
        deviceViews.delete(uuid);
        history.delete(uuid);
      }
    }
  }

  // ---- tables --------------------------------------------------------------------------

  function row(jobId, cells) {
    const tr = el("tr");
    tr.dataset.jobId = jobId;
    for (const [content, cls] of cells) {
      const td = el("td", cls || "");
      // A block inside the cell, so that CSS can cut a long command with an ellipsis.
      if (content instanceof Node) td.append(content);
      else if (td.classList.contains("cmd")) td.append(el("div", "", content));
      else td.textContent = content;
      tr.append(td);
    }
    if (!seenJobs.has(jobId) && seenJobs.size > 0) tr.classList.add("new");
    return tr;
  }

  // One device's use against the lease: a bar (used within the lease, used beyond it, the
  // peak, where the lease ends when the bar spans more) and its figures. `u.used_bytes` null
  // is unknown (the backend cannot attribute memory to processes), never drawn as 0.
  function leaseUse(l, u) {
    const line = el("div", "lbar-row");
    line.dataset.device = String(u.device);
    line.dataset.leaseBytes = String(l.bytes);
    if (l.devices.length > 1) line.append(el("span", "lbar-dev", "GPU " + u.device));
    const bar = el("div", "lbar");
    const text = el("span", "lbar-text");
    if (u.used_bytes === null || u.used_bytes === undefined) {
      line.classList.add("unknown");
      line.dataset.usedBytes = "";
      line.dataset.peakBytes = "";
      bar.title = "unknown: the backend cannot attribute memory to processes here";
      text.textContent = "unknown";
      line.append(bar, text);
      return line;
    }
    const used = u.used_bytes;
    const peak = Math.max(u.peak_used_bytes === null ? used : u.peak_used_bytes, used);
    const scale = Math.max(l.bytes, peak, 1);
    line.dataset.usedBytes = String(used);
    line.dataset.peakBytes = String(peak);
    const within = el("div", "seg used");
    within.style.width = pct(Math.min(used, l.bytes), scale) + "%";
    const over = el("div", "seg over");
    over.dataset.overBytes = String(Math.max(0, used - l.bytes));
    over.style.width = pct(Math.max(0, used - l.bytes), scale) + "%";
    bar.append(within, over);
    if (peak > used) {
      const mark = el("div", "peak");
      mark.style.left = pct(peak, scale) + "%";
      mark.title = "peak " + bytes(peak);
      bar.append(mark);
    }
    if (scale > l.bytes) {
      const end = el("div", "lend");
      end.style.left = pct(l.bytes, scale) + "%";
      end.title = "the lease: " + bytes(l.bytes);
      bar.append(end);
    }
    bar.title = `uses ${bytes(used)} of ${bytes(l.bytes)}, peak ${bytes(peak)}`;
    text.textContent = `${bytes(used)} of ${bytes(l.bytes)}` +
        (peak > used ? ` · peak ${bytes(peak)}` : "");
    line.append(bar, text);
    return line;
  }

  function useCell(l) {
    const box = el("div", "use");
    // Nothing measured yet (or an older daemon): every device unknown.
    const usage = l.usage && l.usage.length ? l.usage
        : l.devices.map((d) => ({ device: d, used_bytes: null, peak_used_bytes: null }));
    for (const u of usage) box.append(leaseUse(l, u));
    if (l.overused) {
      const badge = el("span", "badge over", "OVER " + duration(l.overused_s));
      badge.title = "uses more than its lease, beyond the tolerance, for " + duration(l.overused_s);
      box.append(badge);
    }
    if (l.enforcement) box.append(el("div", "enforcement", l.enforcement));
    return box;
  }

  function sizeCell(l) {
    const box = el("div");
    box.append(el("span", "size-bytes",
                  bytes(l.bytes) + (l.devices.length > 1 ? " ×" + l.devices.length : "")));
    if (l.estimate) {
      const note = el("div", "estimate", l.estimate);
      note.title = "where the size came from";
      box.append(note);
    }
    return box;
  }

  // The job's id and, on a revocable lease, its kind (a resident's model name), how many jobs
  // run beside a resident now and, while it is being revoked, how long its holder has left to
  // release before it is killed; on a job beside a resident, the resident's name.
  function jobCell(l) {
    if (!l.revocable && !l.beside_resident) return l.job_id;
    const box = el("div", "job-box");
    box.append(el("span", "job-id", l.job_id));
    if (l.beside_resident) {
      const beside = el("span", "badge beside", "beside " + l.beside_resident);
      beside.title = "runs on resident " + l.beside_resident + ", which is never taken back to make room for it";
      box.append(beside);
    }
    if (!l.revocable) return box;
    const resident = l.revocable === "resident";
    const tag = el("span", "badge revocable", resident ? "resident " + (l.resident || "") : l.revocable);
    tag.title = resident
        ? "an idle model kept loaded: a waiter that needs the memory takes it back, least recently used first"
        : "a preemptible job: a waiter of higher priority that needs the memory takes it back";
    box.append(tag);
    if (resident && l.in_use_by > 0) {
      const jobs = l.in_use_by === 1 ? "1 job" : l.in_use_by + " jobs";
      const use = el("span", "badge in-use", "in use · " + jobs);
      use.title = jobs + " beside it now: idle residents are taken back before it";
      box.append(use);
    }
    if (l.revoking) {
      const left = el("span", "badge revoking", "REVOKING " + duration(l.revoke_in_s));
      left.title = (l.revoked_for ? "taken back for " + l.revoked_for : "revoked on request") +
          "; its holder is killed unless it releases within " + duration(l.revoke_in_s);
      box.append(left);
    }
    return box;
  }

  function renderTables(s) {
    const leaseRows = s.leases.map((l) => {
      const tr = row(l.job_id, [
        [jobCell(l), "job"],
        [l.kind || "–", "kind wide"],
        ["pid " + l.pid + " · uid " + l.uid, "holder"],
        [sizeCell(l), "num size"],
        [useCell(l), "usage"],
        [l.devices.join(", "), "dev-list"],
        [duration(l.age_s), "num"],
        [duration(l.waited_s), "num wide"],
        [l.command || "–", "cmd wide"],
      ]);
      tr.dataset.bytes = String(l.bytes);
      tr.dataset.devices = l.devices.join(",");
      tr.classList.toggle("overused", !!l.overused);
      tr.classList.toggle("revoking", !!l.revoking);
      tr.dataset.revocable = l.revocable || "";
      tr.lastChild.title = l.command || "";
      return tr;
    });
    const queueRows = s.queue.map((w) => {
      const tr = row(w.job_id, [
        [String(w.position + 1), "num"],
        [w.job_id, "job"],
        [String(w.priority), "num"],
        [bytes(w.bytes), "num size"],
        [String(w.gpus), "num"],
        [duration(w.waited_s), "num"],
        [w.command || "–", "cmd wide"],
      ]);
      tr.dataset.position = String(w.position);
      tr.lastChild.title = w.command || "";
      return tr;
    });
    // Each user's use against its quota ("–": no limit) and its fair-share use.
    const userRows = (s.users || []).map((u) => {
      const tr = el("tr");
      for (const [text, cls] of [
        [String(u.uid), "num"],
        [bytes(u.leased_bytes) + " / " + (u.max_vram_bytes == null ? "–" : bytes(u.max_vram_bytes)), "num"],
        [String(u.jobs) + " / " + (u.max_jobs == null ? "–" : String(u.max_jobs)), "num"],
        [String(u.waiting), "num"],
        [u.fair_share_gib_s.toFixed(u.fair_share_gib_s < 10 ? 1 : 0) + " GiB·s", "num"],
      ]) {
        tr.append(el("td", cls, text));
      }
      const full = u.max_vram_bytes != null && u.leased_bytes >= u.max_vram_bytes;
      const busy = u.max_jobs != null && u.jobs >= u.max_jobs;
      tr.classList.toggle("at-quota", full || busy);
      return tr;
    });
    $("users").tBodies[0].replaceChildren(...userRows);
    $("users").classList.toggle("is-empty", userRows.length === 0);
    $("users-empty").hidden = userRows.length > 0;
    $("user-count").textContent = String(userRows.length);
    $("leases").tBodies[0].replaceChildren(...leaseRows);
    $("queue").tBodies[0].replaceChildren(...queueRows);
    $("leases").classList.toggle("is-empty", leaseRows.length === 0);
    $("queue").classList.toggle("is-empty", queueRows.length === 0);
    $("leases-empty").hidden = leaseRows.length > 0;
    $("queue-empty").hidden = queueRows.length > 0;
    $("lease-count").textContent = String(s.leases.length);
    $("queue-count").textContent = String(s.queue.length);
    seenJobs.clear();
    seenJobs.add("");  // non-empty from now on: later rows are new
    for (const l of s.leases) seenJobs.add(l.job_id);
    for (const w of s.queue) seenJobs.add(w.job_id);
  }

  // ---- summary and header ----------------------------------------------------------------

  function setValue(id, main, small) {
    const e = $(id);
    e.replaceChildren(main);
    if (small) e.append(" ", el("small", "", small));
  }

  function renderSummary(s) {
    const c = s.config;
    $("source").textContent = `${s.source} · ${s.backend.name}` +
        (s.backend.driver_version ? " · driver " + s.backend.driver_version : "");
    $("config").textContent = `limit ${Math.round(c.memory_limit * 100)}% of each device · ` +
        `at most ${c.max_concurrent_jobs} jobs · ${c.placement} · ${c.queue} queue` +
        (c.on_overuse ? ` · overuse: ${c.on_overuse}` +
            (c.on_overuse === "terminate" ? ` after ${duration(c.overuse_grace_s)}` : "") +
            ` (tolerance ${c.overuse_tolerance_percent}%)` : "");
    setValue("sum-leases", String(s.leases.length), "of " + c.max_concurrent_jobs);
    setValue("sum-queue", String(s.queue.length), s.queue.length ? "waiting" : "");
    let leased = 0;
    let capacity = 0;
    for (const d of s.devices) {
      leased += d.leased_bytes;
      capacity += d.capacity_bytes;
    }
    setValue("sum-leased", bytes(leased), "of " + bytes(capacity));
    const st = s.stats;
    const notOk = st.jobs_failed + st.jobs_rejected + st.jobs_timed_out + st.jobs_cancelled;
    setValue("sum-jobs", String(st.jobs_succeeded), notOk ? `ok · ${notOk} not` : "ok");
    const overused = s.leases.filter((l) => l.overused).length;
    const terminated = st.overuse_terminations || 0;
    setValue("sum-overuse", String(overused),
             `${st.overuse_events || 0} event(s)` + (terminated ? `, ${terminated} terminated` : ""));
    // Older daemons send no revocation counters.
    const preempted = st.revocations_preempted || 0;
    const unloaded = st.revocations_resident || 0;
    const kills = st.revocation_kills || 0;
    const revoking = s.leases.filter((l) => l.revoking).length;
    const parts = [[preempted, "preempted"], [unloaded, "unloaded"], [kills, "killed at grace"],
                   [revoking, "now"]].filter(([n]) => n > 0);
    setValue("sum-revoked", String(preempted + unloaded),
             parts.map(([n, what]) => `${n} ${what}`).join(" · "));
    setValue("sum-wait", st.wait_seconds.count ? duration(st.wait_seconds.mean) : "–",
             st.wait_seconds.count ? "max " + duration(st.wait_seconds.max) : "");
  }

  function setLive(ok, text) {
    $("live-dot").className = "dot " + (ok ? "on" : "off");
    $("updated").textContent = text;
  }

  // ---- polling ---------------------------------------------------------------------------

  async function poll() {
    const started = Date.now();
    try {
      const res = await fetch("/api/v1/status", { cache: "no-store" });
      if (!res.ok) throw new Error(`${res.status} ${(await res.text()).trim()}`);
      const s = await res.json();
      renderSummary(s);
      renderDevices(s);
      renderTables(s);
      failures = 0;
      $("error").hidden = true;
      document.body.dataset.updatedAt = String(s.taken_at);
      setLive(true, "live · " + new Date(s.taken_at * 1000).toLocaleTimeString());
    } catch (e) {
      failures++;
      setLive(false, "disconnected, retrying");
      if (failures >= 2) {
        $("error").hidden = false;
        $("error").textContent = "Cannot reach the gpumgr daemon: " + e.message;
      }
    }
    setTimeout(poll, Math.max(0, REFRESH_MS - (Date.now() - started)));
  }

  poll();
})();
