// The page: sign-in, fragment routes and view switching.
//
// Routes: #/groups, #/groups/{id}, #/dongles/{id}, #/vehicles, #/vehicles/{id}, #/telemetry,
// #/telemetry/{vehicle}. `/#token=…` signs in and is removed from the address bar.

import { api, clearToken, setToken, takeTokenFromFragment, token } from "./api.js";
import { groupsView, groupView, dongleView } from "./views.js";
import { vehiclesView, vehicleView } from "./commands.js";
import { telemetryView } from "./telemetry.js";
import { errorBox, h } from "./dom.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const signOut = document.getElementById("sign-out");
let cleanup = [];

const ROUTES = [
  [/^\/groups\/([^/]+)$/, groupView, "groups"],
  [/^\/groups\/?$/, groupsView, "groups"],
  [/^\/dongles\/([^/]+)$/, dongleView, "groups"],
  [/^\/vehicles\/([^/]+)$/, vehicleView, "vehicles"],
  [/^\/vehicles\/?$/, vehiclesView, "vehicles"],
  [/^\/telemetry\/([^/]+)$/, telemetryView, "telemetry"],
  [/^\/telemetry\/?$/, telemetryView, "telemetry"],
];

function teardown() {
  for (const fn of cleanup) {
    try { fn(); } catch { /* a view's cleanup must not stop the others */ }
  }
  cleanup = [];
  view.replaceChildren();
}

function signInView(message) {
  teardown();
  nav.hidden = true;
  signOut.hidden = true;
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true, spellcheck: "false", "aria-describedby": "token-help" });
  const out = h("div", {});
  const form = h("form", { class: "stack signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("label", { for: "token" }, "API token"),
    input,
    h("p", { id: "token-help", class: "muted" }, "A user token (tu_…) from `tether server token create --user NAME`. It is kept in this tab only."),
    h("button", { type: "submit" }, "Sign in"),
    out);
  if (message) out.append(errorBox(message));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    try {
      await api("/groups");
      if (!location.hash.startsWith("#/")) location.hash = "#/groups";
      else route();
    } catch (err) {
      clearToken();
      out.replaceChildren(errorBox(err.status === 401 ? "This token is not valid." : err));
    }
  });
  view.append(form);
  input.focus();
}

async function route() {
  if (!token()) return signInView();
  teardown();
  nav.hidden = false;
  signOut.hidden = false;
  const path = location.hash.replace(/^#/, "") || "/groups";
  for (const [re, fn, section] of ROUTES) {
    const m = path.match(re);
    if (!m) continue;
    for (const a of nav.querySelectorAll("a")) {
      if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    // Each view draws into its own container with its own cleanup list: if the user moves on
    // before it finished loading, it draws into a detached node and its streams are closed.
    const mine = [];
    cleanup = mine;
    const root = h("div", { class: "page" });
    view.append(root);
    try {
      await fn(root, mine, m[1] ? decodeURIComponent(m[1]) : undefined);
    } catch (err) {
      if (err.status !== 401 && cleanup === mine) {
        root.append(errorBox(err.status === 404 ? "Not found (or not yours)." : err));
      }
    }
    if (cleanup !== mine) {
      for (const f of mine) f();
      return;
    }
    const title = view.querySelector("h1");
    document.title = title ? `${title.textContent} · Tether` : "Tether";
    return;
  }
  view.append(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/groups" }, "Back to the groups")));
}

signOut.addEventListener("click", () => {
  clearToken();
  signInView();
});
window.addEventListener("tether:unauthorized", () => {
  if (nav.hidden) return; // the sign-in form checks its token itself
  clearToken();
  signInView("Your token is no longer valid; sign in again.");
});
window.addEventListener("hashchange", () => {
  if (takeTokenFromFragment()) return route();
  route();
});

takeTokenFromFragment();
route();
