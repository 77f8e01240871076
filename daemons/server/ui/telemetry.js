// Telemetry: the vehicles whose uplink sends records to this server (`/ws/telemetry/upload`),
// polled every second: connected or not, the uplink status the vehicle last reported (its
// state and queue: records stored on the vehicle and not yet acknowledged), records stored,
// last seq, age of the newest record. For one vehicle (`GET /telemetry/vehicles/{id}`), a
// chart of the statuses the server kept (about five minutes): the vehicle's queue size and its
// throughput (records/s acknowledged). A vehicle that sends no status (a collector older than
// the status message) gets the throughput the server stores, measured between two polls.

import { api } from "./api.js";
import { LineChart } from "./chart.js";
import { h } from "./dom.js";

const POLL_MS = 1000;

function age(ms) {
  if (!Number.isFinite(ms)) return "—";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 120 ? `${s.toFixed(1)} s ago` : `${Math.round(s / 60)} min ago`;
}

const count = (n) => (Number.isFinite(n) ? n.toLocaleString("en") : "—");

// The line about the vehicle's own report of its uplink.
function reportText(status) {
  if (!status) return "The vehicle has not reported its uplink status (a collector older than the status message, or not connected since the server started).";
  return `The vehicle reports: ${status.state} · queue ${count(status.queue)} records · ${count(status.dropped)} dropped · ` +
    `${status.records_per_s.toFixed(1)} records/s · ${age(status.received_ts_ms)}`;
}

function row(v) {
  const s = v.status;
  return h("tr", { "data-vehicle": v.id, "data-connected": String(v.connected) },
    h("th", { scope: "row" }, h("a", { href: `#/telemetry/${encodeURIComponent(v.id)}` }, v.id)),
    h("td", {}, v.connected ? "connected" : "disconnected"),
    h("td", {}, s ? s.state : "—"),
    h("td", { class: "num", "data-queue": s ? String(s.queue) : "" }, s ? count(s.queue) : "—"),
    h("td", { class: "num" }, count(v.records)),
    h("td", { class: "num" }, String(v.last_seq ?? "—")),
    h("td", {}, age(v.last_ts_ms)));
}

// `#/telemetry` and `#/telemetry/{vehicle}`.
export async function telemetryView(root, cleanup, vehicle) {
  root.append(
    vehicle ? h("p", { class: "crumbs" }, h("a", { href: "#/telemetry" }, "Telemetry"), " / ", vehicle) : "",
    h("h1", {}, vehicle ? `Telemetry of ${vehicle}` : "Telemetry"));
  const state = h("p", { id: "uplink-state", role: "status" }, "loading…");
  const body = h("tbody", { id: "telemetry-vehicles" });
  root.append(state);
  let chart = null;
  let canvas = null;
  const report = h("p", { id: "uplink-report" });
  if (vehicle) {
    canvas = h("canvas", { id: "telemetry-chart", class: "chart", role: "img", "aria-label": `Queue size and throughput of ${vehicle} over time` });
    root.append(report, h("figure", {}, canvas, h("figcaption", { class: "legend" },
      h("span", { class: "swatch swatch-queue" }), " queue, records (left) ",
      h("span", { class: "swatch swatch-rate" }), " throughput, records/s (right)")));
    chart = new LineChart(canvas, [{ label: "queue", color: "#1f5f8b" }, { label: "records/s", color: "#c0392b" }]);
  }
  root.append(h("div", { class: "scroll-x" }, h("table", { class: "list" },
    h("thead", {}, h("tr", {}, ["Vehicle", "Uplink", "Vehicle's state", "Queue", "Records", "Last seq", "Newest record"]
      .map((c) => h("th", { scope: "col" }, c)))),
    body)));

  let stored = null; // the previous poll's record count, for vehicles without a status
  function plot(v) {
    const history = v.status_history ?? [];
    if (history.length) {
      chart.replace(history.map((s) => [s.received_ts_ms, s.queue, s.records_per_s]));
      const queues = history.map((s) => s.queue);
      canvas.dataset.points = String(history.length);
      canvas.dataset.queueMax = String(Math.max(...queues));
      canvas.dataset.queueLast = String(queues[queues.length - 1]);
      return;
    }
    const now = Date.now();
    const rate = stored ? ((v.records - stored.records) * 1000) / (now - stored.t) : NaN;
    stored = { records: v.records, t: now };
    chart.add(now, NaN, rate);
    canvas.dataset.points = String(chart.points.length);
  }

  async function pollOne() {
    let v = null;
    try {
      v = await api(`/telemetry/vehicles/${encodeURIComponent(vehicle)}`);
    } catch (err) {
      if (err.status !== 404) throw err;
    }
    body.replaceChildren(...(v ? [row(v)] : []));
    state.textContent = v ? `Uplink: ${v.connected ? "connected" : "disconnected"}` : "This vehicle has not uploaded anything yet.";
    state.dataset.state = v ? (v.connected ? "connected" : "disconnected") : "unknown";
    report.textContent = v ? reportText(v.status) : "";
    report.dataset.queue = v?.status ? String(v.status.queue) : "";
    report.dataset.state = v?.status ? v.status.state : "none";
    if (v) plot(v);
  }

  async function pollList() {
    const list = (await api("/telemetry/vehicles")).vehicles ?? [];
    body.replaceChildren(...list.map(row));
    state.textContent = list.length ? `${list.filter((v) => v.connected).length} of ${list.length} vehicles connected` : "No vehicle has uploaded telemetry yet.";
    state.dataset.state = "listed";
  }

  let stopped = false;
  let timer = 0;
  async function poll() {
    try {
      await (vehicle ? pollOne() : pollList());
    } catch (err) {
      state.textContent = err.status === 404
        ? "This server has no telemetry receiver (GET /api/v1/telemetry/vehicles answered 404)."
        : `Cannot read telemetry: ${err.message}`;
      state.dataset.state = err.status === 404 ? "unavailable" : "error";
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }
  poll();
  cleanup.push(() => { stopped = true; clearTimeout(timer); });
}
