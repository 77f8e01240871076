// The token and the REST calls. The token lives in sessionStorage (this tab only, gone when it
// closes); `/#token=…` puts it there and is removed from the address bar at once.

const KEY = "tether.token";

export function takeTokenFromFragment() {
  const hash = location.hash;
  if (!hash.startsWith("#token=")) return false;
  const params = new URLSearchParams(hash.slice(1));
  const token = params.get("token") || "";
  const route = params.get("route") || "/groups";
  if (token) sessionStorage.setItem(KEY, token);
  // Replace, not push: the token must not stay in the history either.
  history.replaceState(null, "", location.pathname + location.search + "#" + route);
  return Boolean(token);
}

export const token = () => sessionStorage.getItem(KEY);
export const setToken = (t) => sessionStorage.setItem(KEY, t);
export const clearToken = () => sessionStorage.removeItem(KEY);

// The API's base: the directory the page was served from (so a server mounted under a prefix
// works too).
export function baseUrl() {
  const path = location.pathname.endsWith("/") ? location.pathname : location.pathname.replace(/[^/]*$/, "");
  return location.origin + path;
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  const init = { method, headers, signal };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(baseUrl() + "api/v1" + path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", `cannot reach the server (${err.message})`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    const e = (data && data.error) || {};
    if (response.status === 401) window.dispatchEvent(new CustomEvent("tether:unauthorized"));
    throw new ApiError(response.status, e.code || "error", e.message || `${response.status} ${response.statusText}`);
  }
  return data;
}

// A console (SSE) URL with the token as `access_token` (EventSource cannot send headers).
export function streamUrl(path, params = {}) {
  const url = new URL(baseUrl() + "api/v1" + path);
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) url.searchParams.set(k, v);
  url.searchParams.set("access_token", token());
  return url.toString();
}

// The WebSocket URL of a command's responses on this server (the token as `access_token`).
export function responsesSocketUrl(commandId) {
  const url = new URL(baseUrl() + "ws/responses/" + encodeURIComponent(commandId));
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("access_token", token());
  return url.toString();
}
