// The pool-server dashboard: one JSON snapshot a second from /events
// (server-sent events), drawn with the DOM and SVG. Text from the server
// (function names, progress messages) is only ever set as textContent.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const ROW_HEIGHT = 22;
const LABEL_WIDTH = 70;

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function seconds(s) {
  if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function hue(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}

function bar(fraction) {
  const outer = el("div", { class: "bar", "data-progress": fraction === null ? "" : String(fraction) });
  const inner = el("span");
  inner.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
  outer.append(inner);
  return outer;
}

function renderWorkers(workers) {
  const box = document.getElementById("workers");
  const tiles = new Map([...box.children].map((t) => [t.dataset.worker, t]));
  for (const w of workers) {
    let tile = tiles.get(String(w.id));
    if (!tile) {
      tile = el("div", { class: "tile", "data-worker": String(w.id) });
      box.append(tile);
    }
    tiles.delete(String(w.id));
    tile.dataset.state = w.state;
    const head = el("div", { class: "head" });
    head.append(el("span", {}, `worker ${w.id}`), el("span", { class: "state" }, w.state));
    const call = el("div", { class: "call" });
    if (w.call) {
      call.textContent = `${w.call.name} ${w.call.id} · ${seconds(w.call.elapsed_s)}`;
    } else {
      call.textContent = w.state === "idle" ? "waiting for a call" : "—";
    }
    const parts = [head, call];
    if (w.call && w.call.progress !== null) parts.push(bar(w.call.progress));
    const stats = el("div", { class: "stats" },
      `pid ${w.pid || "–"} · RSS ${bytes(w.rss_bytes)} · ${w.jobs_done} done · ` +
      `${w.restarts} restarts · ${w.recycles} recycles` +
      (w.last_exit_reason ? ` · last exit: ${w.last_exit_reason}` : ""));
    parts.push(stats);
    tile.replaceChildren(...parts);
  }
  for (const gone of tiles.values()) gone.remove();
}

function linePath(points, width, height, maxY, t0, span) {
  return points.map(([t, y], i) => {
    const x = ((t - t0) / span) * width;
    const yy = height - (y / maxY) * (height - 4);
    return `${i ? "L" : "M"}${x.toFixed(1)},${yy.toFixed(1)}`;
  }).join("");
}

function renderQueue(state, span) {
  const chart = document.getElementById("queue-chart");
  const history = state.queue.history;
  const t0 = state.now - span;
  const maxY = Math.max(1, ...history.map(([, n]) => n));
  chart.replaceChildren();
  if (history.length > 1) {
    const line = linePath(history, 400, 120, maxY, t0, span);
    const first = ((history[0][0] - t0) / span) * 400;
    const last = ((history[history.length - 1][0] - t0) / span) * 400;
    chart.append(svg("path", { class: "area", d: `${line}L${last},120L${first},120Z` }));
  }
  document.getElementById("queue-now").textContent =
    `now ${state.queue.length} of ${state.queue.capacity} (max shown ${maxY})`;
}

function renderRates(state, span) {
  const t0 = state.now - span;
  const windows = state.windows.filter((w) => w.t >= t0);
  const rate = document.getElementById("rate-chart");
  const maxRate = Math.max(1, ...windows.map((w) => w.calls_per_s));
  const width = (state.window_s / span) * 400;
  rate.replaceChildren(...windows.map((w) => {
    const h = (w.calls_per_s / maxRate) * 116;
    return svg("rect", { class: "rate", x: ((w.t - t0) / span) * 400, y: 120 - h, width, height: h });
  }));
  const latest = windows[windows.length - 1];
  document.getElementById("rate-now").textContent =
    `${latest ? latest.calls_per_s.toFixed(1) : "0"} now, max ${maxRate.toFixed(1)}; ` +
    `${state.totals.calls} finished, ${state.totals.errors} failed`;

  const latency = document.getElementById("latency-chart");
  const measured = windows.filter((w) => w.p50_ms !== null);
  const maxMs = Math.max(1, ...measured.map((w) => w.p99_ms));
  const mid = state.window_s / 2;
  latency.replaceChildren(
    svg("path", { class: "p50", d: linePath(measured.map((w) => [w.t + mid, w.p50_ms]), 400, 120, maxMs, t0, span) }),
    svg("path", { class: "p99", d: linePath(measured.map((w) => [w.t + mid, w.p99_ms]), 400, 120, maxMs, t0, span) }),
  );
  const last = measured[measured.length - 1];
  document.getElementById("latency-now").textContent = last
    ? `now ${last.p50_ms.toFixed(1)} / ${last.p99_ms.toFixed(1)}, max ${maxMs.toFixed(1)}` : "";
}

function renderTasks(state) {
  const stream = document.getElementById("tasks");
  const ids = state.workers.map((w) => w.id);
  const width = stream.clientWidth || 1000;
  const height = ids.length * ROW_HEIGHT + 4;
  stream.setAttribute("viewBox", `0 0 ${width} ${height}`);
  stream.style.height = `${height}px`;
  const span = Math.min(state.task_span_s, Math.max(20, Math.ceil(state.uptime_s / 10) * 10));
  const t0 = state.now - span;
  const scale = (width - LABEL_WIDTH) / span;
  const parts = [];
  ids.forEach((id, row) => {
    const y = row * ROW_HEIGHT + 2;
    parts.push(svg("line", { class: "row-line", x1: LABEL_WIDTH, x2: width, y1: y + ROW_HEIGHT - 1, y2: y + ROW_HEIGHT - 1 }));
    const label = svg("text", { class: "row-label", x: 4, y: y + 14 });
    label.textContent = `worker ${id}`;
    parts.push(label);
  });
  const names = new Map();
  for (const task of state.tasks) {
    const row = ids.indexOf(task.worker);
    if (row < 0) continue;
    const start = Math.max(task.start, t0);
    const end = task.end === null ? state.now : task.end;
    const x = LABEL_WIDTH + (start - t0) * scale;
    const rect = svg("rect", {
      class: `task ${task.outcome}`, x, y: row * ROW_HEIGHT + 4,
      width: Math.max(1, (end - start) * scale), height: ROW_HEIGHT - 6,
      fill: `hsl(${hue(task.name)} 65% 55%)`,
    });
    const title = svg("title");
    title.textContent = `${task.name} ${task.id} on worker ${task.worker}: ${task.outcome}, ${seconds(end - task.start)}`;
    rect.append(title);
    parts.push(rect);
    names.set(task.name, hue(task.name));
  }
  stream.replaceChildren(...parts);
  document.getElementById("task-span").textContent = `(last ${span} s, newest right)`;
  const legend = document.getElementById("task-legend");
  legend.replaceChildren(...[...names].map(([name, h]) => {
    const item = el("span", {}, name);
    const swatch = el("i");
    swatch.style.background = `hsl(${h} 65% 55%)`;
    item.prepend(swatch);
    return item;
  }));
}

function renderJobs(state) {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren(...state.jobs.map((job) => {
    const row = el("tr", { "data-job": job.id, "data-state": job.state });
    const progress = el("td");
    progress.append(bar(job.state === "DONE" ? 1 : job.progress));
    const pct = job.progress === null ? "" : `${Math.round(job.progress * 100)}% `;
    progress.append(document.createTextNode(pct + (job.message || "")));
    row.append(
      el("td", { class: "mono" }, job.id), el("td", { class: "mono" }, job.name),
      el("td", { class: "state" }, job.state), progress,
      el("td", {}, job.worker === null ? "" : String(job.worker)),
      el("td", {}, `${job.attempts}/${job.max_attempts}`),
    );
    return row;
  }));
  const counts = Object.entries(state.job_counts).map(([s, n]) => `${n} ${s.toLowerCase()}`);
  document.getElementById("job-counts").textContent = counts.length ? `(${counts.join(", ")} in memory)` : "";
  const batches = document.querySelector("#batches tbody");
  batches.replaceChildren(...state.batches.map((b) => {
    const row = el("tr", { "data-batch": b.id });
    const done = el("td");
    done.append(bar(b.percent / 100), document.createTextNode(`${b.percent.toFixed(1)}%`));
    row.append(el("td", { class: "mono" }, b.id), done,
      el("td", {}, `${b.done + b.failed}/${b.total}${b.failed ? `, ${b.failed} failed` : ""}`));
    return row;
  }));
}

function render(state) {
  const busy = state.workers.filter((w) => w.state === "busy").length;
  document.getElementById("summary").textContent =
    `${state.workers.length} workers, ${busy} busy · queue ${state.queue.length} · up ${seconds(state.uptime_s)}`;
  renderWorkers(state.workers);
  // The charts span the server's life so far, from one minute up to five.
  const span = Math.min(300, Math.max(30, Math.ceil(state.uptime_s / 10) * 10));
  for (const node of document.querySelectorAll(".chart-span")) node.textContent = `last ${span} s`;
  renderQueue(state, span);
  renderRates(state, span);
  renderTasks(state);
  renderJobs(state);
}

function connect() {
  const status = document.getElementById("connection");
  const events = new EventSource("events");
  events.onopen = () => { status.dataset.connected = "true"; status.textContent = "live"; };
  events.onerror = () => { status.dataset.connected = "false"; status.textContent = "reconnecting…"; };
  events.onmessage = (message) => render(JSON.parse(message.data));
}

document.addEventListener("DOMContentLoaded", connect);
