// Vehicles and their commands: run ReadDTC / ClearDTC / ReadDataByID, watch the responses
// arrive on `/ws/responses/{command_id}`, and the command history.

import { api, responsesSocketUrl } from "./api.js";
import { announce, errorBox, h, shortId } from "./dom.js";

const COMMANDS = ["ReadDTC", "ClearDTC", "ReadDataByID"];

function unavailable(root, err) {
  if (err.status === 404 && err.code === "not_found") {
    root.append(h("p", { class: "notice" }, "This server has no vehicle commands service (GET /api/v1/vehicles answered 404)."));
    return true;
  }
  return false;
}

const listOf = (body, key) => (Array.isArray(body) ? body : body?.[key] ?? body?.items ?? []);

// `#/vehicles`: the user's vehicles, and a form to add one.
export async function vehiclesView(root) {
  root.append(h("h1", {}, "Vehicles"));
  let vehicles;
  try {
    vehicles = listOf(await api("/vehicles"), "vehicles");
  } catch (err) {
    if (unavailable(root, err)) return;
    throw err;
  }
  const { dongles } = await api("/dongles").catch(() => ({ dongles: [] }));
  if (vehicles.length === 0) root.append(h("p", {}, "No vehicles yet."));
  else root.append(h("div", { class: "scroll-x" }, h("table", { class: "list", id: "vehicles" },
    h("thead", {}, h("tr", {}, ["Name", "VIN", "Dongle", "Online"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, vehicles.map((v) => h("tr", { "data-vehicle": v.id },
      h("th", { scope: "row" }, h("a", { href: `#/vehicles/${v.id}` }, v.name)),
      h("td", {}, v.vin ?? ""),
      h("td", {}, v.dongle_id ? h("a", { href: `#/dongles/${v.dongle_id}` }, shortId(v.dongle_id)) : ""),
      h("td", {}, v.online ? "online" : "offline")))))));

  const name = h("input", { id: "vehicle-name", required: true, maxlength: "100" });
  const vin = h("input", { id: "vehicle-vin", maxlength: "17", autocomplete: "off" });
  const dongle = h("select", { id: "vehicle-dongle" }, h("option", { value: "" }, "none"),
    dongles.map((d) => h("option", { value: d.id }, d.serial)));
  const out = h("div", { role: "status" });
  const form = h("form", { class: "stack", "aria-labelledby": "add-vehicle" },
    h("h2", { id: "add-vehicle" }, "Add a vehicle"),
    h("label", { for: "vehicle-name" }, "Name"), name,
    h("label", { for: "vehicle-vin" }, "VIN (optional)"), vin,
    h("label", { for: "vehicle-dongle" }, "Dongle (optional)"), dongle,
    h("button", { type: "submit" }, "Add"), out);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { name: name.value };
    if (vin.value.trim()) body.vin = vin.value.trim();
    if (dongle.value) body.dongle_id = dongle.value;
    try {
      const v = await api("/vehicles", { method: "POST", body });
      location.hash = `#/vehicles/${v.id}`;
    } catch (err) {
      out.replaceChildren(errorBox(err));
    }
  });
  root.append(form);
}

// A response payload: DTCs as a table, anything else as JSON.
function payloadView(payload) {
  if (payload && Array.isArray(payload.dtcs)) {
    if (payload.dtcs.length === 0) return h("p", {}, "No DTCs.");
    return h("table", { class: "list dtcs" },
      h("thead", {}, h("tr", {}, ["Code", "Status", "Description"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, payload.dtcs.map((d) => h("tr", {},
        h("td", { class: "dtc" }, d.dtcCode ?? d.code ?? ""),
        h("td", {}, d.status ?? ""),
        h("td", {}, d.description ?? "")))));
  }
  return h("pre", {}, JSON.stringify(payload, null, 2));
}

function responseItem(r) {
  const payload = r.response ?? r.response_payload ?? r;
  return h("li", { class: "response", "data-seq": r.sequence_number ?? "" },
    h("p", {}, `#${r.sequence_number ?? "?"}${r.is_final ? " (final)" : ""}`),
    payloadView(payload));
}

// Follows a command's responses over its WebSocket until the final one.
function follow(commandId, list, status, onDone) {
  const socket = new WebSocket(responsesSocketUrl(commandId));
  status.textContent = "waiting for responses…";
  status.dataset.state = "waiting";
  let final = false;
  socket.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    if (msg.event && msg.event !== "response") {
      if (msg.status) status.textContent = msg.error_message ? `${msg.status}: ${msg.error_message}` : msg.status;
      return;
    }
    list.append(responseItem(msg));
    if (msg.is_final) {
      final = true;
      status.textContent = "completed";
      status.dataset.state = "completed";
      announce("Command completed");
    }
  };
  socket.onclose = (ev) => {
    if (!final) {
      status.textContent = ev.reason ? `closed: ${ev.reason}` : `closed (${ev.code}) before the final response`;
      status.dataset.state = "closed";
    }
    onDone();
  };
  return socket;
}

// `#/vehicles/{id}`: run commands, see responses, history.
export async function vehicleView(root, cleanup, id) {
  let vehicle;
  try {
    vehicle = await api(`/vehicles/${id}`);
  } catch (err) {
    if (unavailable(root, err) && err.message.includes("route")) return;
    throw err;
  }
  root.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/vehicles" }, "Vehicles"), " / ", vehicle.name),
    h("h1", {}, `Vehicle ${vehicle.name}`),
    h("dl", { class: "facts" },
      h("dt", {}, "VIN"), h("dd", {}, vehicle.vin ?? "—"),
      h("dt", {}, "Dongle"), h("dd", {}, vehicle.dongle_id ? h("a", { href: `#/dongles/${vehicle.dongle_id}` }, shortId(vehicle.dongle_id)) : "—"),
      h("dt", {}, "Online"), h("dd", { id: "vehicle-online" }, vehicle.online ? "online" : "offline")));

  const command = h("select", { id: "command-name" }, COMMANDS.map((c) => h("option", { value: c }, c)));
  const did = h("input", { id: "command-did", placeholder: "F190", autocomplete: "off" });
  const ecu = h("input", { id: "command-ecu", placeholder: "engine", autocomplete: "off" });
  const didRow = h("div", { class: "field", hidden: true }, h("label", { for: "command-did" }, "Data identifier (hex)"), did);
  command.addEventListener("change", () => { didRow.hidden = command.value !== "ReadDataByID"; });
  const run = h("button", { type: "submit", id: "run-command" }, "Run");
  const status = h("p", { id: "command-status", role: "status" });
  const responses = h("ol", { id: "responses", class: "responses", "aria-label": "Responses" });
  const form = h("form", { class: "stack", "aria-labelledby": "run-title" },
    h("h2", { id: "run-title" }, "Run a command"),
    h("div", { class: "field" }, h("label", { for: "command-name" }, "Command"), command),
    didRow,
    h("div", { class: "field" }, h("label", { for: "command-ecu" }, "ECU (optional)"), ecu),
    run, status, responses);
  const history = h("tbody", { id: "history" });
  let socket = null;
  cleanup.push(() => socket && socket.close());

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const params = {};
    if (command.value === "ReadDataByID") {
      const hex = did.value.trim().replace(/^0x/i, "");
      if (!/^[0-9a-fA-F]{1,4}$/.test(hex)) {
        status.textContent = "The data identifier is 1 to 4 hex digits, e.g. F190.";
        did.focus();
        return;
      }
      params.did = parseInt(hex, 16);
    }
    if (ecu.value.trim()) params.ecu = ecu.value.trim();
    run.disabled = true;
    responses.replaceChildren();
    try {
      const accepted = await api("/commands", { method: "POST", body: { vehicle_id: id, command_name: command.value, command_params: params } });
      status.textContent = `${accepted.status} (${shortId(accepted.command_id)})`;
      status.dataset.command = accepted.command_id;
      if (socket) socket.close();
      socket = follow(accepted.command_id, responses, status, () => { run.disabled = false; loadHistory(); });
    } catch (err) {
      status.replaceChildren(errorBox(err));
      run.disabled = false;
    }
  });

  async function showResponses(c) {
    responses.replaceChildren();
    status.textContent = `${c.command_name}: ${c.status}${c.error_message ? ` (${c.error_message})` : ""}`;
    try {
      listOf(await api(`/commands/${c.command_id ?? c.id}/responses`), "responses").forEach((r) => responses.append(responseItem(r)));
    } catch (err) {
      responses.append(h("li", {}, errorBox(err)));
    }
  }

  async function loadHistory() {
    try {
      const list = listOf(await api(`/commands?vehicle_id=${encodeURIComponent(id)}&limit=20`), "commands");
      history.replaceChildren(...list.map((c) => {
        const open = h("button", { type: "button", class: "link" }, c.command_name);
        open.addEventListener("click", () => showResponses(c));
        return h("tr", { "data-command": c.command_id ?? c.id, "data-status": c.status },
          h("td", {}, open), h("td", {}, c.status), h("td", {}, c.submitted_at ?? ""), h("td", {}, c.error_message ?? ""));
      }));
    } catch (err) {
      history.replaceChildren(h("tr", {}, h("td", { colspan: "4" }, errorBox(err))));
    }
  }
  root.append(form,
    h("h2", {}, "History"),
    h("div", { class: "scroll-x" }, h("table", { class: "list" },
      h("thead", {}, h("tr", {}, ["Command", "Status", "Submitted", "Error"].map((c) => h("th", { scope: "col" }, c)))),
      history)));
  loadHistory();
}
