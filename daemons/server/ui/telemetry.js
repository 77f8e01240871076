// Telemetry: the vehicles whose uplink sends records to this server (`/ws/telemetry/upload`),
// polled every second: connected or not, records stored, last acknowledged seq, age of the
// newest record; for one vehicle, a chart of its throughput (records/s stored) and its queue as
// the server sees it (seconds between now and the newest stored record: how far the uplink is
// behind).

import { api } from "./api.js";
import { LineChart } from "./chart.js";
import { h } from "./dom.js";

const POLL_MS = 1000;

function age(ms) {
  if (!Number.isFinite(ms)) return "—";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 120 ? `${s.toFixed(1)} s ago` : `${Math.round(s / 60)} min ago`;
}

// `#/telemetry` and `#/telemetry/{vehicle}`.
export async function telemetryView(root, cleanup, vehicle) {
  root.append(
    vehicle ? h("p", { class: "crumbs" }, h("a", { href: "#/telemetry" }, "Telemetry"), " / ", vehicle) : "",
    h("h1", {}, vehicle ? `Telemetry of ${vehicle}` : "Telemetry"));
  const state = h("p", { id: "uplink-state", role: "status" }, "loading…");
  const body = h("tbody", { id: "telemetry-vehicles" });
  root.append(state, h("div", { class: "scroll-x" }, h("table", { class: "list" },
    h("thead", {}, h("tr", {}, ["Vehicle", "Uplink", "Records", "Last seq", "Newest record"].map((c) => h("th", { scope: "col" }, c)))),
    body)));
  let chart = null;
  if (vehicle) {
    const canvas = h("canvas", { id: "telemetry-chart", class: "chart", role: "img", "aria-label": `Throughput and queue of ${vehicle} over time` });
    root.append(h("figure", {}, canvas, h("figcaption", { class: "legend" },
      h("span", { class: "swatch swatch-rate" }), " throughput, records/s (left) ",
      h("span", { class: "swatch swatch-queue" }), " queue, seconds behind (right)")));
    chart = new LineChart(canvas, [{ label: "records/s", color: "#c0392b" }, { label: "behind", color: "#1f5f8b" }]);
  }
  let last = null;
  let stopped = false;
  let timer = 0;
  async function poll() {
    try {
      const list = (await api("/telemetry/vehicles")).vehicles ?? [];
      const shown = vehicle ? list.filter((v) => v.id === vehicle) : list;
      body.replaceChildren(...shown.map((v) => h("tr", { "data-vehicle": v.id, "data-connected": String(v.connected) },
        h("th", { scope: "row" }, h("a", { href: `#/telemetry/${encodeURIComponent(v.id)}` }, v.id)),
        h("td", {}, v.connected ? "connected" : "disconnected"),
        h("td", {}, String(v.records)),
        h("td", {}, String(v.last_seq ?? "—")),
        h("td", {}, age(v.last_ts_ms)))));
      if (vehicle) {
        const v = shown[0];
        state.textContent = v ? `Uplink: ${v.connected ? "connected" : "disconnected"}` : "This vehicle has not uploaded anything yet.";
        state.dataset.state = v ? (v.connected ? "connected" : "disconnected") : "unknown";
        if (v) {
          const now = Date.now();
          const rate = last ? ((v.records - last.records) * 1000) / (now - last.t) : NaN;
          last = { records: v.records, t: now };
          chart.add(now, rate, Number.isFinite(v.last_ts_ms) ? Math.max(0, (now - v.last_ts_ms) / 1000) : NaN);
        }
      } else {
        state.textContent = list.length ? `${list.filter((v) => v.connected).length} of ${list.length} vehicles connected` : "No vehicle has uploaded telemetry yet.";
        state.dataset.state = "listed";
      }
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
