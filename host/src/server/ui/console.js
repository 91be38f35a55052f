// The volcache console: one page over the admin API, no dependencies. The token is asked once
// and kept in this tab's session storage; every call sends it as a bearer token.
"use strict";

const KEY = "volcache-token";
const $ = (sel) => document.querySelector(sel);
const series = { hit: [], saved: [] };
let token = sessionStorage.getItem(KEY);
let timer = null;
let stream = null;
let imagesShown = "";

function human(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let v = Number(bytes) || 0, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${v} B` : `${v < 10 ? v.toFixed(1) : v.toFixed(0)} ${units[i]}`;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body, contentType = "application/json") {
  const headers = { Authorization: `Bearer ${token}` };
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = contentType;
    payload = contentType === "application/json" ? JSON.stringify(body) : body;
  }
  const res = await fetch(path, { method, headers, body: payload });
  const text = await res.text();
  const json = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const message = json && json.error ? `${json.error.message} (HTTP ${res.status})` : `HTTP ${res.status}`;
    if (res.status === 401) logout(`The token was refused: ${message}`);
    throw new ApiError(res.status, message);
  }
  return json;
}

function status(text, cls = "") {
  const s = $("#status");
  s.textContent = text;
  s.className = cls;
}

function logout(message = "") {
  sessionStorage.removeItem(KEY);
  token = null;
  clearInterval(timer);
  if (stream) stream.abort();
  $("#console").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#token").focus();
}

function chart(svg, values) {
  svg.replaceChildren();
  if (values.length < 2) return;
  const max = Math.max(...values, 1e-9), min = Math.min(...values, 0);
  const span = max - min || 1;
  const points = values.map((v, i) => `${(i / (values.length - 1)) * 300},${58 - ((v - min) / span) * 56}`).join(" ");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  svg.append(line);
}

function remember(list, value) {
  list.push(value);
  if (list.length > 150) list.shift();
}

async function refreshStats() {
  const s = await api("GET", "/v1/cache/stats");
  const asked = s.hits + s.misses;
  const ratio = asked ? s.hits / asked : 0;
  $("#hit-ratio").textContent = asked ? `${(ratio * 100).toFixed(1)} %` : "-";
  $("#bytes-saved").textContent = human(s.bytes_not_downloaded);
  $("#cache-size").textContent = `${s.entries} entries`;
  $("#cache-detail").textContent =
    `${s.cache_gigabytes} GiB provisioned, ${human(s.cache_bytes_allocated)} allocated, ${s.pinned_entries} pinned; ` +
    `${s.hits} hits, ${s.misses} misses, ${s.evictions} evictions, ${s.fills_in_progress} fills running`;
  remember(series.hit, ratio * 100);
  remember(series.saved, s.bytes_not_downloaded);
  chart($("#hit-chart"), series.hit);
  chart($("#saved-chart"), series.saved);
}

async function refreshEntries() {
  const entries = await api("GET", "/v1/cache/entries");
  const rows = entries.map((e) => {
    const pin = el("button", { type: "button", class: "pin", "data-id": e.id }, e.pinned ? "Unpin" : "Pin");
    pin.addEventListener("click", () => act(e.pinned ? "DELETE" : "POST", `/v1/cache/entries/${e.id}/pin`, `entry ${e.id} ${e.pinned ? "unpinned" : "pinned"}`));
    const evict = el("button", { type: "button", class: "evict danger", "data-id": e.id }, "Evict");
    evict.addEventListener("click", () => {
      if (confirm(`Evict cache entry ${e.id} (image ${e.image_id})? Volumes cloned from it are not touched.`)) {
        act("DELETE", `/v1/cache/entries/${e.id}`, `entry ${e.id} evicted`);
      }
    });
    return el("tr", { "data-entry": e.id },
      el("td", { class: "num" }, e.id), el("td", {}, e.image_id), el("td", { class: "num" }, `${e.size} GiB`),
      el("td", { class: "num" }, human(e.allocated_bytes)), el("td", { class: "num" }, e.hit_count),
      el("td", {}, e.last_used), el("td", { class: "pinned" }, e.pinned ? "yes" : "no"), el("td", {}, e.host),
      el("td", {}, pin, " ", evict));
  });
  $("#entries tbody").replaceChildren(...rows);
}

function counts(c, since) {
  const num = (v) => el("td", { class: "num", title: `since ${since}` }, v);
  if (!c) return [num("-"), num("-"), num("-"), num("-")];
  return [num(c.calls), num(c.failures), num(c.fallbacks), num(`${c.latency_p50_us} / ${c.latency_p99_us} µs`)];
}

async function refreshPolicies() {
  const slots = await api("GET", "/v1/policies");
  const pct = (v) => `${(v * 100).toFixed(1)} %`;
  const rows = slots.map((p) => {
    const sh = p.shadow;
    const shadow = sh ? `${sh.name}: ${pct(sh.live.hit_ratio)} / ${pct(sh.shadow.hit_ratio)} over ${sh.live.requests} requests` : "-";
    return el("tr", { "data-slot": p.slot },
      el("td", {}, p.slot), el("td", { class: "policy-name" }, `${p.name} ${p.version}`), el("td", {}, p.kind),
      // The plugin in the slot now, since it was loaded (a built-in's decisions are not counted).
      ...counts(p.since_loaded, p.loaded_at),
      el("td", { class: "shadow" }, shadow));
  });
  $("#policies tbody").replaceChildren(...rows);
}

async function refreshImages() {
  const images = await api("GET", "/v1/images");
  const ids = images.map((i) => i.id).join("\n");
  if (ids === imagesShown) return;
  imagesShown = ids;
  $("#warm-image").replaceChildren(...images.map((i) => el("option", { value: i.id }, `${i.name} (${i.id})`)));
}

async function refresh() {
  try {
    await Promise.all([refreshStats(), refreshEntries(), refreshPolicies(), refreshImages()]);
    if (!$("#status").className.includes("error")) status("connected", "ok");
  } catch (e) {
    if (e.status !== 401) status(`cannot reach the daemon: ${e.message}`, "error");
  }
}

// The outcome of the operator's last action, kept until the next one.
function notice(text, cls) {
  const n = $("#notice");
  n.textContent = text;
  n.className = `small ${cls}`;
}

async function act(method, path, done) {
  try {
    await api(method, path);
    notice(done, "ok");
  } catch (e) {
    notice(e.message, "error");
  }
  refresh();
}

function describe(kind, data) {
  if (kind === "policy.changed") return `${data.slot}: ${data.name} ${data.version}`;
  if (kind === "image_volume_cache.warm") return `image ${data.image_id}: ${data.warm.status}${data.warm.detail ? ` (${data.warm.detail})` : ""}`;
  const reason = data.reason ? ` (${data.reason})` : "";
  return `image ${data.image_id} volume ${data.volume_id} ${data.size} GiB host ${data.host}${reason}`;
}

function showEvent(kind, data) {
  if (kind === "image_volume_cache.progress") {
    const p = data.progress;
    $("#warm-progress").textContent = p.done ? `image ${data.image_id} written (${human(p.total_bytes)})`
      : `writing image ${data.image_id}: ${p.percent} % of ${human(p.total_bytes)}, ${human(p.bytes_per_second)}/s`;
    return;
  }
  const short = kind.replace("image_volume_cache.", "");
  const item = el("li", { class: `event ${short.replace(".", "-")}`, "data-event": kind },
    `${new Date().toLocaleTimeString()}  ${short}  ${data ? describe(kind, data) : ""}`);
  const list = $("#events");
  list.prepend(item);
  while (list.children.length > 200) list.lastChild.remove();
  if (kind !== "lagged") refresh();
}

// EventSource cannot send a bearer token: read the server-sent events from a fetch body.
async function follow() {
  stream = new AbortController();
  try {
    const res = await fetch("/v1/events", { headers: { Authorization: `Bearer ${token}` }, signal: stream.signal });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", kind = "", data = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, nl).replace(/\r$/, "");
        buffer = buffer.slice(nl + 1);
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
        else if (line === "" && kind) {
          let parsed = null;
          try { parsed = JSON.parse(data); } catch { parsed = null; }
          showEvent(kind, parsed);
          kind = ""; data = "";
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return;
  }
  if (token) setTimeout(follow, 2000); // the daemon restarted, or the stream broke: follow again
}

async function upload(ev) {
  ev.preventDefault();
  const file = $("#upload-file").files[0];
  const slot = $("#upload-slot").value;
  const shadow = $("#upload-shadow").checked;
  const out = $("#upload-result");
  out.className = "small";
  out.textContent = `uploading ${file.name}...`;
  try {
    const bytes = await file.arrayBuffer();
    const path = shadow ? `/v1/policies/${slot}/shadow` : `/v1/policies/${slot}`;
    const res = await api("PUT", path, bytes, "application/wasm");
    out.className = "small ok";
    out.textContent = `${slot}${shadow ? " shadow" : ""}: ${res.name || file.name} ${res.version || ""} loaded`;
  } catch (e) {
    out.className = "small error";
    out.textContent = e.message;
  }
  refresh();
}

async function warm(ev) {
  ev.preventDefault();
  const image = $("#warm-image").value;
  try {
    const res = await api("POST", "/v1/cache/warm", { image_id: image });
    $("#warm-progress").textContent = `warm-up ${res.warm_id} of image ${image} started`;
  } catch (e) {
    $("#warm-progress").textContent = e.message;
  }
}

async function showConsole() {
  $("#login").hidden = true;
  $("#console").hidden = false;
  $("#logout").hidden = false;
  await refresh();
  clearInterval(timer);
  timer = setInterval(refresh, 2000);
  follow();
}

async function login(ev) {
  ev.preventDefault();
  token = $("#token").value.trim();
  try {
    await api("GET", "/v1/cache/stats");
  } catch (e) {
    if (e.status !== 401) $("#login-error").textContent = e.message;
    return;
  }
  sessionStorage.setItem(KEY, token);
  $("#token").value = "";
  showConsole();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", login);
  $("#upload-form").addEventListener("submit", upload);
  $("#warm-form").addEventListener("submit", warm);
  $("#logout").addEventListener("click", () => logout());
  if (token) showConsole(); else logout();
});
