// Telemetry: the uplink status (state, queue, throughput, drops) polled every second, with a
// chart of queue size and throughput over the last ten minutes.

import { api } from "./api.js";
import { LineChart } from "./chart.js";
import { h } from "./dom.js";

const POLL_MS = 1000;

// Nested status objects flattened to `a.b` keys with scalar values.
function flatten(obj, prefix = "", out = []) {
  for (const [k, v] of Object.entries(obj || {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
    else out.push([key, v]);
  }
  return out;
}

// The first numeric field whose key matches one of the patterns, in pattern order.
function pick(fields, patterns) {
  for (const re of patterns) {
    const hit = fields.find(([k, v]) => re.test(k) && typeof v === "number");
    if (hit) return hit;
  }
  return null;
}

const QUEUE = [/(^|\.)queue_size$/, /queue/];
const THROUGHPUT = [/records_per_s/, /throughput/, /per_s$/];

// `#/telemetry` and `#/telemetry/{vehicle}`.
export async function telemetryView(root, cleanup, vehicle) {
  root.append(h("h1", {}, vehicle ? `Telemetry of ${vehicle}` : "Telemetry"));
  let vehicles = null;
  try {
    const body = await api("/telemetry/vehicles");
    vehicles = Array.isArray(body) ? body : body?.vehicles ?? [];
  } catch (err) {
    if (err.status !== 404) throw err;
  }
  if (vehicles && vehicles.length) {
    root.append(h("nav", { "aria-label": "Telemetry vehicles" }, h("ul", { class: "inline", id: "telemetry-vehicles" },
      vehicles.map((v) => {
        const vid = v.vehicle_id ?? v.id ?? String(v);
        return h("li", {}, h("a", { href: `#/telemetry/${encodeURIComponent(vid)}` }, v.name ?? vid));
      }))));
  }
  const path = vehicle ? `/telemetry/vehicles/${encodeURIComponent(vehicle)}/status` : "/telemetry/status";
  const state = h("p", { id: "uplink-state", role: "status" }, "loading…");
  const facts = h("dl", { class: "facts", id: "telemetry-status" });
  const canvas = h("canvas", { id: "telemetry-chart", class: "chart", role: "img", "aria-label": "Queue size and throughput over time" });
  const legend = h("p", { class: "legend" },
    h("span", { class: "swatch swatch-queue" }), " queue size (left) ",
    h("span", { class: "swatch swatch-rate" }), " throughput (right)");
  root.append(state, facts, h("figure", {}, canvas, h("figcaption", {}, legend)));
  const chart = new LineChart(canvas, [{ label: "queue", color: "#1f5f8b" }, { label: "throughput", color: "#c0392b" }]);
  let stopped = false;
  async function poll() {
    try {
      const status = await api(path);
      const fields = flatten(status);
      const uplink = fields.find(([k]) => /(^|\.)(state|status|uplink_state)$/.test(k));
      state.textContent = uplink ? `Uplink: ${uplink[1]}` : "Uplink status";
      state.dataset.state = uplink ? String(uplink[1]) : "";
      facts.replaceChildren(...fields.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-key": k }, v === null ? "—" : String(v))]));
      const q = pick(fields, QUEUE);
      const t = pick(fields, THROUGHPUT);
      chart.add(Date.now(), q ? q[1] : NaN, t ? t[1] : NaN);
    } catch (err) {
      state.textContent = err.status === 404
        ? "This server reports no uplink status here (the telemetry endpoint answered 404)."
        : `Cannot read the status: ${err.message}`;
      state.dataset.state = "unavailable";
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }
  let timer = setTimeout(poll, 0);
  cleanup.push(() => { stopped = true; clearTimeout(timer); });
}
