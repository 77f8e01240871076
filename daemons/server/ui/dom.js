// Small DOM helpers: element creation without innerHTML (no markup injection from data).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function announce(text) {
  const region = document.getElementById("announce");
  if (region) region.textContent = text;
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "—";
}

export function timeOf(ts) {
  if (!ts) return "";
  const t = ts.indexOf("T");
  return t >= 0 ? ts.slice(t + 1, -1) : ts;
}

export function modeBadge(mode) {
  return h("span", { class: `badge mode-${mode}`, "data-mode": mode }, mode);
}

export function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, err && err.message ? err.message : String(err));
}
