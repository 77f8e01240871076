// Groups and dongles: the groups list (live from `group_state`), and the live console of a
// group or a dongle.

import { api } from "./api.js";
import { ConsoleStream } from "./console.js";
import { FrameTable, frameRow } from "./frametable.js";
import { announce, errorBox, h, modeBadge, shortId, timeOf } from "./dom.js";

const MAX_MULTIPLEXED = 32;

function backlogText(b) {
  return `A→B ${b.a_to_b} · B→A ${b.b_to_a}`;
}

function serials(dongles) {
  return new Map(dongles.map((d) => [d.id, d]));
}

// `#/groups`: every group with its mode, backlog and offline side, and every dongle.
export async function groupsView(root, cleanup) {
  root.append(h("h1", {}, "Groups"));
  const [{ groups }, { dongles }] = await Promise.all([api("/groups"), api("/dongles")]);
  const byId = serials(dongles);
  const name = (id) => (byId.get(id) ? byId.get(id).serial : shortId(id));
  const rows = new Map();
  const status = h("p", { class: "muted", id: "groups-live" }, "");

  function row(g) {
    const toggle = h("button", { type: "button", class: "toggle", "data-action": g.mode === "inactive" ? "activate" : "deactivate" },
      g.mode === "inactive" ? "Activate" : "Deactivate");
    toggle.setAttribute("aria-label", `${g.mode === "inactive" ? "Activate" : "Deactivate"} ${g.name}`);
    toggle.addEventListener("click", async () => {
      toggle.disabled = true;
      try {
        const state = await api(`/groups/${g.id}/${toggle.dataset.action}`, { method: "POST" });
        update(state);
        announce(`${state.name} is ${state.mode}`);
      } catch (err) {
        toggle.after(errorBox(err));
      } finally {
        toggle.disabled = false;
      }
    });
    const tr = h("tr", { "data-group": g.id },
      h("th", { scope: "row" }, h("a", { href: `#/groups/${g.id}` }, g.name)),
      h("td", {}, h("a", { href: `#/dongles/${g.dongle_a}` }, name(g.dongle_a)), " ↔ ", h("a", { href: `#/dongles/${g.dongle_b}` }, name(g.dongle_b))),
      h("td", { class: "mode" }, modeBadge(g.mode)),
      h("td", { class: "backlog" }, backlogText(g.backlog)),
      h("td", { class: "offline" }, g.offline_side ?? "none"),
      h("td", {}, toggle));
    rows.set(g.id, { tr, toggle });
    return tr;
  }

  function update(g) {
    const r = rows.get(g.id);
    if (!r) return;
    r.tr.querySelector(".mode").replaceChildren(modeBadge(g.mode));
    r.tr.querySelector(".backlog").textContent = backlogText(g.backlog);
    r.tr.querySelector(".offline").textContent = g.offline_side ?? "none";
    const action = g.mode === "inactive" ? "activate" : "deactivate";
    r.toggle.dataset.action = action;
    r.toggle.textContent = action === "activate" ? "Activate" : "Deactivate";
    r.toggle.setAttribute("aria-label", `${r.toggle.textContent} ${g.name}`);
  }

  if (groups.length === 0) {
    root.append(h("p", {}, "No groups yet. Create one with POST /api/v1/groups (see docs/api.md)."));
  } else {
    root.append(h("div", { class: "scroll-x" }, h("table", { class: "list", id: "groups" },
      h("caption", { class: "visually-hidden" }, "Groups"),
      h("thead", {}, h("tr", {}, ["Name", "Dongles", "Mode", "Backlog", "Offline side", "Action"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, groups.map(row)))), status);
    // Live: one multiplexed console for the first 32 groups, polling beyond that.
    const live = groups.slice(0, MAX_MULTIPLEXED).map((g) => g.id);
    const stream = new ConsoleStream("/streams/console", {
      params: { groups: live.join(",") },
      onEvent: (type, data) => { if (type === "group_state") update(data); },
      onState: (s) => { status.textContent = `Live updates: ${s.state}${s.detail ? ` (${s.detail})` : ""}`; },
    });
    stream.open();
    cleanup.push(() => stream.close());
    if (groups.length > MAX_MULTIPLEXED) {
      const poll = setInterval(async () => {
        try { (await api("/groups")).groups.forEach(update); } catch { /* shown by the next success */ }
      }, 5000);
      cleanup.push(() => clearInterval(poll));
    }
  }

  root.append(h("h2", {}, "Dongles"));
  if (dongles.length === 0) root.append(h("p", {}, "No dongles yet: agents announce them."));
  else root.append(h("div", { class: "scroll-x" }, h("table", { class: "list", id: "dongles" },
    h("thead", {}, h("tr", {}, ["Serial", "Online", "Last seen"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, dongles.map((d) => h("tr", { "data-dongle": d.id },
      h("th", { scope: "row" }, h("a", { href: `#/dongles/${d.id}` }, d.serial)),
      h("td", {}, d.online ? "online" : "offline"),
      h("td", {}, d.last_seen ?? "never")))))));
}

// The live part shared by a group and a dongle: controls, presence, notices and the table.
function livePanel(root, cleanup, { path, label, dongleName, onGroupState, presenceOf }) {
  const table = new FrameTable({ dongleName, label: `${label} frames` });
  cleanup.push(() => table.destroy());
  const rate = h("output", { id: "rate", "aria-live": "off" }, "0");
  const rowCount = h("output", { id: "row-count" }, "0");
  const conn = h("span", { id: "conn", class: "conn", "data-state": "connecting" }, "connecting");
  const connDetail = h("span", { id: "conn-detail", class: "muted" }, "");
  const sampling = h("p", { id: "sampling", class: "notice", role: "status", hidden: true });
  const notices = h("ul", { id: "notices", class: "notices", "aria-label": "Console notices" });
  const filterInput = h("input", { id: "filter", type: "text", inputmode: "text", placeholder: "7E8, 0x7E0", autocomplete: "off", spellcheck: "false" });
  const filterError = h("span", { class: "error", id: "filter-error", role: "alert" });
  const pause = h("button", { type: "button", id: "pause", "aria-pressed": "false" }, "Pause");
  const reconnect = h("button", { type: "button", id: "reconnect" }, "Reconnect");
  const clear = h("button", { type: "button", id: "clear" }, "Clear");
  const pausedInfo = h("span", { id: "paused-info", class: "muted" });

  table.onRender = (n) => { rowCount.textContent = String(n); };
  table.onRate = (r) => {
    rate.textContent = String(r);
    if (table.paused) pausedInfo.textContent = `${table.pending.length} waiting${table.droppedWhilePaused ? `, ${table.droppedWhilePaused} dropped` : ""}`;
  };
  pause.addEventListener("click", () => {
    const paused = !table.paused;
    table.setPaused(paused);
    pause.textContent = paused ? "Resume" : "Pause";
    pause.setAttribute("aria-pressed", String(paused));
    pausedInfo.textContent = paused ? "paused" : "";
    announce(paused ? "Table paused" : "Table resumed");
  });
  filterInput.addEventListener("input", () => {
    filterError.textContent = table.setFilter(filterInput.value) ? "" : "ids are hex, e.g. 7E8 or 0x18DAF110";
  });
  clear.addEventListener("click", () => table.clear());

  function notice(text, level = "info") {
    notices.prepend(h("li", { class: `level-${level}` }, text));
    while (notices.children.length > 20) notices.lastChild.remove();
  }

  const stream = new ConsoleStream(path, {
    onEvent(type, data) {
      switch (type) {
        case "can_frame":
          table.add(frameRow(data));
          break;
        case "presence":
          presenceOf(data);
          break;
        case "group_state":
          if (onGroupState) onGroupState(data);
          break;
        case "log":
          if (data.sampling) {
            sampling.hidden = !data.sampling.active;
            sampling.textContent = data.sampling.active
              ? `Sampling on: ${data.sampling.input_rate_per_s} frames/s in, showing ${(data.sampling.fraction * 100).toFixed(1)} % of them (threshold ${data.sampling.threshold_per_s}/s).`
              : "";
          }
          notice(`${timeOf(data.ts)} ${data.level}: ${data.message}`, data.level);
          break;
        case "stream_reset":
          notice(`stream reset (${data.reason}): some events between ${data.requested ?? "?"} and ${data.oldest ?? "now"} are missing`, "warn");
          break;
        default:
          break;
      }
    },
    onState(s) {
      conn.textContent = s.state;
      conn.dataset.state = s.state;
      connDetail.textContent = s.detail ? ` ${s.detail}` : "";
      if (s.state === "resumed" || s.state === "reset") announce(`Console ${s.state}`);
    },
  });
  reconnect.addEventListener("click", () => stream.restart());
  stream.open();
  cleanup.push(() => stream.close());

  root.append(
    h("section", { class: "live", "aria-label": "Live frames" },
      h("div", { class: "toolbar" },
        h("label", { for: "filter" }, "Filter by id"), filterInput, filterError,
        pause, clear, reconnect, pausedInfo),
      h("p", { class: "stats" },
        h("span", {}, "Connection: ", conn, connDetail), " · ",
        h("span", {}, rate, " frames/s"), " · ",
        h("span", {}, rowCount, " rows")),
      sampling,
      table.el,
      h("details", { class: "notices-box" }, h("summary", {}, "Notices"), notices)));
  return { stream, table };
}

function presenceList(entries) {
  const list = h("ul", { class: "presence", id: "presence", "aria-label": "Presence" });
  const items = new Map();
  for (const [key, label, online] of entries) {
    const state = h("span", { class: "badge", "data-presence": online ? "online" : "offline" }, online ? "online" : "offline");
    const when = h("span", { class: "muted" });
    const li = h("li", { "data-key": key }, `${label}: `, state, " ", when);
    items.set(key, { state, when });
    list.append(li);
  }
  function set(key, status, ts) {
    const item = items.get(key);
    if (!item) return;
    if (status !== "seen") {
      item.state.textContent = status;
      item.state.dataset.presence = status;
    }
    item.when.textContent = `${status === "seen" ? "seen" : "since"} ${timeOf(ts)}`;
  }
  return { list, set };
}

// `#/groups/{id}`: the group's state (live) and its console.
export async function groupView(root, cleanup, id) {
  const [group, { dongles }] = await Promise.all([api(`/groups/${id}`), api("/dongles")]);
  const byId = serials(dongles);
  const side = (d) => (d === group.dongle_a ? "A" : "B");
  const label = (d) => `${side(d)} ${byId.get(d) ? byId.get(d).serial : shortId(d)}`;
  const mode = h("span", { id: "mode" }, modeBadge(group.mode));
  const backlog = h("span", { id: "backlog" }, backlogText(group.backlog));
  const offline = h("span", { id: "offline-side" }, group.offline_side ?? "none");
  const toggle = h("button", { type: "button", id: "toggle-mode" });
  function show(g) {
    mode.replaceChildren(modeBadge(g.mode));
    backlog.textContent = backlogText(g.backlog);
    offline.textContent = g.offline_side ?? "none";
    toggle.textContent = g.mode === "inactive" ? "Activate" : "Deactivate";
    toggle.dataset.action = g.mode === "inactive" ? "activate" : "deactivate";
  }
  show(group);
  toggle.addEventListener("click", async () => {
    toggle.disabled = true;
    try {
      const g = await api(`/groups/${id}/${toggle.dataset.action}`, { method: "POST" });
      show(g);
      announce(`Group is ${g.mode}`);
    } catch (err) {
      toggle.after(errorBox(err));
    } finally {
      toggle.disabled = false;
    }
  });
  const presence = presenceList([
    [group.dongle_a, `Dongle ${label(group.dongle_a)}`, byId.get(group.dongle_a)?.online],
    [group.dongle_b, `Dongle ${label(group.dongle_b)}`, byId.get(group.dongle_b)?.online],
  ]);
  root.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/groups" }, "Groups"), " / ", group.name),
    h("h1", {}, `Group ${group.name}`),
    h("dl", { class: "facts" },
      h("dt", {}, "Mode"), h("dd", {}, mode, " ", toggle),
      h("dt", {}, "Backlog"), h("dd", {}, backlog),
      h("dt", {}, "Offline side"), h("dd", {}, offline),
      h("dt", {}, "Dongles"), h("dd", {},
        h("a", { href: `#/dongles/${group.dongle_a}` }, label(group.dongle_a)), " ↔ ",
        h("a", { href: `#/dongles/${group.dongle_b}` }, label(group.dongle_b)))),
    presence.list);
  livePanel(root, cleanup, {
    path: `/streams/groups/${id}/console`,
    label: `Group ${group.name}`,
    dongleName: (d) => label(d),
    onGroupState: show,
    presenceOf: (p) => { if (p.dongle_id) presence.set(p.dongle_id, p.status, p.ts); },
  });
}

// `#/dongles/{id}`: one dongle's console.
export async function dongleView(root, cleanup, id) {
  const dongle = await api(`/dongles/${id}`);
  const presence = presenceList([[dongle.id, `Dongle ${dongle.serial}`, dongle.online]]);
  root.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/groups" }, "Groups"), " / ", dongle.serial),
    h("h1", {}, `Dongle ${dongle.serial}`),
    h("dl", { class: "facts" },
      h("dt", {}, "Id"), h("dd", {}, h("code", {}, dongle.id)),
      h("dt", {}, "Last seen"), h("dd", { id: "last-seen" }, dongle.last_seen ?? "never")),
    presence.list);
  livePanel(root, cleanup, {
    path: `/streams/dongles/${id}/console`,
    label: `Dongle ${dongle.serial}`,
    dongleName: () => dongle.serial,
    presenceOf: (p) => {
      if (p.dongle_id === id) {
        presence.set(id, p.status, p.ts);
        document.getElementById("last-seen").textContent = p.ts;
      }
    },
  });
}
