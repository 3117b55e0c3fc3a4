// turnout dashboard: polls the admin API with the token from session storage, and
// refreshes at once on server-sent events when the router offers them.
"use strict";

const TOKEN_KEY = "turnout.admin-token";
const POINTS = 120;
const SLOTS = ["blue", "green"];

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  status: null,
  deployment: null,
  series: { rps: [], err: [], p99: [] },
  timer: null,
  events: null,
  lastOk: 0,
  busy: false,
};

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  // A fleet's follower answers deployment calls with 307 to its leader: a browser would
  // follow that to another origin without the token, so it is reported instead.
  const opts = { method, headers: { Authorization: "Bearer " + state.token }, redirect: "manual" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    throw new ApiError(0, "unreachable", "the router's admin API cannot be reached (" + e.message + ")");
  }
  if (resp.type === "opaqueredirect") {
    if (state.status && state.status.fleet) {
      throw new ApiError(307, "not_leader", "this replica is not the fleet's leader; " + leaderHint());
    }
    throw new ApiError(resp.status, "redirected", "the admin API answered " + path + " with a redirect, which this page does not follow");
  }
  const text = await resp.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    const err = json && json.error;
    if (resp.status === 401) logout(err ? err.message : "the token was refused");
    throw new ApiError(resp.status, err ? err.code : "http_" + resp.status,
      err ? err.message : "HTTP " + resp.status + " from " + path);
  }
  return json;
}

// ---- token -------------------------------------------------------------------------

function showLogin(message) {
  $("app").hidden = true;
  $("forget").hidden = true;
  $("login").hidden = false;
  const e = $("login-error");
  e.hidden = !message;
  e.textContent = message || "";
  $("token-input").value = "";
  $("token-input").focus();
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  stop();
  showLogin(message);
  setConn("not connected", false);
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("forget").hidden = false;
  refresh();
  state.timer = setInterval(refresh, 1000);
  subscribe();
}

function stop() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  if (state.events) state.events.close();
  state.events = null;
}

// ---- polling -----------------------------------------------------------------------

function setConn(text, down) {
  const c = $("conn");
  c.textContent = text;
  c.classList.toggle("down", !!down);
}

let refreshing = false;
let again = false;
async function refresh() {
  if (!state.token) return;
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    const [status, deps, stats] = await Promise.all([
      api("GET", "/api/v1/status"),
      api("GET", "/api/v1/deployments?limit=1"),
      api("GET", "/api/v1/stats").catch(() => null),
    ]);
    state.status = status;
    state.deployment = deps && deps.length ? deps[0] : null;
    renderStatus(status);
    renderDeployment(state.deployment, status);
    if (stats) addStats(stats);
    state.lastOk = Date.now();
    setConn("connected · updated " + new Date().toLocaleTimeString(), false);
    refreshShadow();
  } catch (e) {
    if (e.status !== 401) setConn("⚠ " + e.message, true);
  } finally {
    refreshing = false;
    if (again) { again = false; refresh(); }
  }
}

let shadowAt = 0;
async function refreshShadow() {
  // Every 5 s, or every second while a comparison runs.
  const running = state.status && state.status.deployment && state.status.deployment.stage === "shadow";
  if (!running && Date.now() - shadowAt < 5000) return;
  shadowAt = Date.now();
  try {
    renderShadow(await api("GET", "/api/v1/shadow/report"));
  } catch (e) {
    if (e.status === 404) renderShadow(null);
  }
}

function subscribe() {
  if (!window.EventSource || state.events) return;
  const es = new EventSource("/api/v1/events?access_token=" + encodeURIComponent(state.token));
  const on = (ev) => {
    let data = null;
    try { data = JSON.parse(ev.data); } catch (_) { /* ignore */ }
    if (data) addEvent(data, ev.type);
    refresh();
  };
  es.onmessage = on;
  for (const k of ["deployment", "switch", "rollback", "health", "leader"]) es.addEventListener(k, on);
  // A router without the events route answers 404: EventSource then gives up and
  // polling alone keeps the page current.
  state.events = es;
}

function addEvent(data, type) {
  const list = $("events");
  const first = list.firstElementChild;
  if (first && first.classList.contains("muted")) first.remove();
  const at = data.at ? new Date(data.at) : new Date();
  list.prepend(el("li", {},
    el("time", { datetime: at.toISOString(), text: at.toLocaleTimeString() }),
    el("span", { class: "kind", text: data.kind || type }),
    data.message || ""));
  while (list.children.length > 100) list.lastElementChild.remove();
}

// ---- rendering ---------------------------------------------------------------------

function badge(slot, small) {
  return el("span", { class: "badge " + (slot || "none") + (small ? " small" : ""), "aria-hidden": "true" });
}

// Where deployment actions go when this replica is a fleet's follower.
function leaderHint() {
  const f = state.status && state.status.fleet;
  const l = f && f.leader_replica;
  return l ? "deployments run on the fleet's leader, replica " + l.replica + ": use its dashboard at " + l.admin + "/"
    : "deployments run on the fleet's leader, and none is elected right now: try again in a few seconds";
}

// A replica of a fleet (state in etcd): who it is, who leads, whether etcd answers.
function renderFleet(f) {
  const box = $("fleet");
  box.hidden = !f;
  if (!f) return;
  const parts = ["Fleet replica " + f.replica.replica + " · "];
  if (f.leader) {
    parts.push("the leader: deployments run here");
  } else if (f.leader_replica) {
    parts.push("deployments run on the leader, replica " + f.leader_replica.replica + " — ");
    const url = String(f.leader_replica.admin);
    // Only a web address becomes a link (the value comes from etcd).
    parts.push(/^https?:\/\//.test(url) ? el("a", { href: url + "/", text: "open its dashboard" }) : url);
  } else {
    parts.push("no leader elected right now");
  }
  if (!f.connected) parts.push(" · etcd unreachable: serving with the last known routing");
  box.replaceChildren(...parts);
}

function renderStatus(s) {
  const live = s.live;
  const lb = $("live-badge");
  lb.className = "badge " + (live || "none");
  const ls = $("live-slot");
  ls.textContent = live || "none";
  ls.className = live ? "slot-" + live + "-text" : "";
  document.body.dataset.live = live || "none";
  const v = live && s.slots[live].version;
  $("live-version").textContent = v ? "version " + v : (live ? "version unknown" : "no slot takes traffic");

  const w = s.weights || { blue: 0, green: 0 };
  $("split-blue").style.width = w.blue + "%";
  $("split-green").style.width = w.green + "%";
  $("split-text").textContent = "blue " + w.blue + " %  ·  green " + w.green + " %";

  for (const name of SLOTS) renderSlot(name, s.slots[name], live === name);
  renderFleet(s.fleet);

  const other = live === "blue" ? "green" : "blue";
  const sw = $("btn-switch");
  sw.textContent = "Switch to " + other;
  sw.dataset.to = other;
  sw.disabled = false;
  const dep = s.deployment;
  const standby = SLOTS.find((n) => s.slots[n].role === "standby");
  // On a fleet's follower, the deployment's own actions belong to the leader.
  const follower = !!(s.fleet && !s.fleet.leader);
  const elsewhere = follower && dep ? leaderHint() : null;
  $("btn-rollback").disabled = (!standby && !dep) || !!elsewhere;
  $("btn-rollback").title = elsewhere ? "a deployment is running; " + elsewhere
    : standby ? "send traffic back to " + standby : (dep ? "end the deployment" : "no standby slot to roll back to");
  for (const id of ["btn-promote", "btn-abort"]) {
    $(id).disabled = !dep || follower;
    $(id).title = elsewhere || "";
  }
  for (const id of ["btn-switch", "btn-rollback", "btn-promote", "btn-abort"]) {
    if (state.busy) $(id).disabled = true;
  }
}

function renderSlot(name, slot, isLive) {
  const box = $("slot-" + name);
  const ups = slot.upstreams || [];
  const healthy = ups.filter((u) => u.healthy).length;
  const list = el("ul", { class: "ups" });
  for (const u of ups) {
    list.append(el("li", { class: u.healthy ? "health-ok" : "health-bad" },
      u.addr + (u.healthy ? " healthy" : " down")));
  }
  if (!ups.length) list.append(el("li", { class: "muted", text: "no upstreams" }));
  box.replaceChildren(
    el("h2", {}, badge(name), name,
      el("span", { class: "role" + (isLive ? " is-live" : ""), text: slot.role })),
    el("dl", {},
      el("dt", { text: "version" }), el("dd", { text: slot.version || "—" }),
      el("dt", { text: "health" }), el("dd", { class: ups.length && healthy < ups.length ? "health-bad" : "",
        text: healthy + " of " + ups.length + " upstreams healthy" }),
      el("dt", { text: "upstreams" }), el("dd", {}, list)));
}

function fmtTime(t) {
  return t ? new Date(t).toLocaleTimeString() : "";
}

function fmtDur(a, b) {
  if (!a) return "";
  const ms = (b ? new Date(b) : new Date()) - new Date(a);
  if (!(ms >= 0)) return "";
  if (ms < 1000) return ms + " ms";
  const s = Math.round(ms / 1000);
  return s < 120 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s";
}

const OUTCOME = { running: "◔ running", passed: "✓ passed", failed: "✗ failed", skipped: "– skipped", aborted: "■ aborted" };
const STAGE_NAMES = {
  pre_deploy: "pre-deploy", provision: "provision", health: "health", verify: "verify",
  shadow: "shadow", gate: "manual gate", switch: "switch", bake: "bake",
  decommission: "decommission", rollback: "rollback",
};

function renderDeployment(d) {
  const box = $("deployment");
  if (!d) {
    box.replaceChildren(el("p", { class: "muted", text: "No deployment yet." }));
    return;
  }
  const bad = d.verdict === "failed" || d.verdict === "rolled_back" || d.verdict === "aborted";
  const tl = el("ol", { class: "timeline", "aria-label": "stages" });
  for (const s of d.stages || []) {
    tl.append(el("li", { class: "st-" + s.outcome },
      el("span", { class: "name", text: STAGE_NAMES[s.stage] || s.stage }),
      el("span", { class: "outcome", text: OUTCOME[s.outcome] || s.outcome }),
      el("span", { class: "when", text: " · " + fmtTime(s.started_at) + " · " + fmtDur(s.started_at, s.ended_at) }),
      s.detail ? el("span", { class: "detail", text: s.detail }) : null));
  }
  const parts = [
    el("p", {},
      el("strong", { text: d.version }), " into ", badge(d.slot, true), d.slot,
      d.previous_version ? " (replacing " + d.previous_version + ")" : "",
      " · started " + fmtTime(d.started_at), " · ",
      el("span", { class: "verdict" + (bad ? " bad" : ""), text: d.verdict.replace("_", " ") }),
      d.manual ? " · manual gate" : ""),
    tl,
  ];
  if (d.reason) parts.push(el("p", { text: d.reason }));
  const a = d.analysis;
  if (a) {
    parts.push(el("p", { class: "muted" },
      "analysis: " + a.requests + " requests, " + a.errors + " errors",
      a.error_rate != null ? " (" + (a.error_rate * 100).toFixed(2) + " %)" : "",
      a.p99_ms != null ? ", p99 " + fmtMs(a.p99_ms) : "",
      a.baseline_p99_ms != null ? " (before: " + fmtMs(a.baseline_p99_ms) + ")" : "",
      ", weight " + a.weight + " %",
      a.duration_ms ? ", " + Math.round(a.elapsed_ms / 1000) + " of " + Math.round(a.duration_ms / 1000) + " s" : ""));
  }
  box.replaceChildren(...parts);
}

function fmtMs(v) {
  if (v == null) return "—";
  return v < 10 ? v.toFixed(1) + " ms" : Math.round(v) + " ms";
}

function pct(v) {
  return v == null ? "—" : (v * 100).toFixed(v < 0.1 ? 2 : 1) + " %";
}

function renderShadow(r) {
  const box = $("shadow");
  if (!r) {
    box.replaceChildren(el("p", { class: "muted", text: "No shadow comparison yet ([shadow] in the config turns it on)." }));
    return;
  }
  const stat = (label, v) => el("div", {}, el("span", { class: "v", text: v }), label);
  const lat = r.latency_ms || { live: {}, candidate: {} };
  const parts = [
    el("p", {}, "Candidate ", el("strong", { text: r.version }),
      " against live ", el("strong", { text: r.live_version || "?" }),
      r.running ? " — running, numbers so far" : " — finished", " (deployment " + r.deployment + ")"),
    el("div", { class: "stats" },
      stat("mirrored", String(r.requests)),
      stat("compared", String(r.compared)),
      stat("mismatched", String(r.mismatched) + " (" + pct(r.mismatch_rate) + ")"),
      stat("noise", String(r.noise)),
      stat("dropped", String(r.dropped)),
      stat("p99 live / candidate", fmtMs(lat.live.p99) + " / " + fmtMs(lat.candidate.p99))),
  ];
  const eps = r.endpoints || [];
  if (eps.length) {
    const table = el("table", {},
      el("thead", {}, el("tr", {},
        el("th", { text: "endpoint" }), el("th", { class: "num", text: "compared" }),
        el("th", { class: "num", text: "mismatched" }), el("th", { text: "differences" }))));
    const tbody = el("tbody");
    const examples = [];
    for (const ep of eps) {
      const diffs = el("td");
      for (const f of ep.fields || []) {
        const line = el("div", {}, el("code", { text: f.path }), " " + f.kind + " ×" + f.count + (f.noise ? " (noise)" : ""));
        if (f.example) {
          const id = "example-" + examples.length;
          examples.push([id, ep.endpoint, f]);
          line.append(" · ", el("a", { href: "#" + id, text: "example" }));
        }
        diffs.append(line);
      }
      tbody.append(el("tr", {},
        el("td", {}, el("code", { text: ep.endpoint })),
        el("td", { class: "num", text: String(ep.compared) }),
        el("td", { class: "num", text: ep.mismatched + " (" + pct(ep.mismatch_rate) + ")" }),
        diffs));
    }
    table.append(tbody);
    parts.push(table);
    if (examples.length) {
      parts.push(el("h3", { text: "Examples" }));
      for (const [id, ep, f] of examples) {
        const ex = f.example;
        parts.push(el("details", { id },
          el("summary", {}, el("code", { text: ex.request }), " — " + f.path),
          el("p", { text: "live: " + ex.live }),
          el("p", { text: "candidate: " + ex.candidate }),
          ex.live_body ? el("div", {}, el("h3", { text: "live response" }), el("pre", { text: ex.live_body })) : null,
          ex.candidate_body ? el("div", {}, el("h3", { text: "candidate response" }), el("pre", { text: ex.candidate_body })) : null));
      }
    }
  } else {
    parts.push(el("p", { class: "muted", text: "No differences." }));
  }
  // Keep an open example open across refreshes.
  const open = new Set([...box.querySelectorAll("details[open]")].map((d) => d.id));
  box.replaceChildren(...parts);
  for (const id of open) { const d = document.getElementById(id); if (d) d.open = true; }
}

// ---- charts ------------------------------------------------------------------------

function push(arr, v) {
  arr.push(v);
  while (arr.length > POINTS) arr.shift();
}

function addStats(st) {
  const s = st.slots;
  push(state.series.rps, { blue: s.blue.requests_per_s, green: s.green.requests_per_s });
  push(state.series.err, { blue: s.blue.error_rate, green: s.green.error_rate });
  push(state.series.p99, { blue: s.blue.p99_ms, green: s.green.p99_ms });
  chart("chart-rps", state.series.rps, (v) => (v < 10 ? v.toFixed(1) : Math.round(v)) + "/s");
  chart("chart-err", state.series.err, (v) => pct(v), 0.01);
  chart("chart-p99", state.series.p99, fmtMs, 1);
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function chart(id, data, fmt, minMax) {
  const W = 360, H = 150, L = 52, R = 8, T = 10, B = 20;
  let max = minMax || 0;
  for (const d of data) for (const n of SLOTS) if (d[n] != null && isFinite(d[n])) max = Math.max(max, d[n]);
  max = niceMax(max);
  const x = (i) => L + (W - L - R) * (i + POINTS - data.length) / (POINTS - 1);
  const y = (v) => T + (H - T - B) * (1 - Math.min(v, max) / max);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", preserveAspectRatio: "none" });
  for (const f of [0, 0.5, 1]) {
    const yy = y(max * f);
    root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: yy, y2: yy }));
    root.append(svg("text", { x: L - 4, y: yy + 4, "text-anchor": "end" }, fmt(max * f)));
  }
  root.append(svg("text", { x: L, y: H - 4 }, "2 min ago"));
  root.append(svg("text", { x: W - R, y: H - 4, "text-anchor": "end" }, "now"));
  const label = [];
  for (const n of SLOTS) {
    let path = "";
    let pen = false;
    data.forEach((d, i) => {
      const v = d[n];
      if (v == null || !isFinite(v)) { pen = false; return; }
      path += (pen ? "L" : "M") + x(i).toFixed(1) + "," + y(v).toFixed(1);
      pen = true;
    });
    if (path) root.append(svg("path", { class: "line-" + n, d: path }));
    const last = data.length ? data[data.length - 1][n] : null;
    if (last != null && isFinite(last)) {
      const cx = x(data.length - 1), cy = y(last);
      root.append(n === "blue"
        ? svg("circle", { class: "dot-blue", cx, cy, r: 4 })
        : svg("path", { class: "dot-green", d: `M${cx},${cy - 5}L${cx + 5},${cy + 4}L${cx - 5},${cy + 4}Z` }));
    }
    label.push(n + " " + (last == null ? "—" : fmt(last)));
  }
  root.setAttribute("aria-label", label.join(", "));
  const box = $(id);
  box.replaceChildren(root, el("div", { class: "muted small", text: "now: " + label.join(" · ") }));
}

// ---- actions -----------------------------------------------------------------------

function confirmDialog(text, okLabel) {
  return new Promise((resolve) => {
    const d = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = okLabel;
    d.returnValue = "";
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.showModal();
    $("confirm-cancel").focus();
  });
}

let messageTimer = null;
function showMessage(text, info) {
  const m = $("message");
  m.textContent = text;
  m.className = "message" + (info ? " info" : "");
  m.hidden = false;
  // Good news fades after a while; a failure stays until the next action.
  clearTimeout(messageTimer);
  if (info) messageTimer = setTimeout(() => { m.hidden = true; }, 15000);
}

async function action(what, question, okLabel, method, path, body) {
  if (!(await confirmDialog(question, okLabel))) return;
  state.busy = true;
  if (state.status) renderStatus(state.status);
  showMessage(what + "…", true);
  try {
    await api(method, path, body);
    showMessage(what + ": done.", true);
  } catch (e) {
    showMessage(what + " failed: " + e.message);
  } finally {
    state.busy = false;
    refresh();
  }
}

function liveDesc() {
  const s = state.status;
  if (!s || !s.live) return "no slot is live";
  const v = s.slots[s.live].version;
  return s.live + (v ? " (" + v + ")" : "") + " is live";
}

function wire() {
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = $("token-input").value.trim();
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    state.token = t;
    start();
  });
  $("forget").addEventListener("click", (ev) => {
    ev.preventDefault();
    logout(null);
  });
  $("btn-switch").addEventListener("click", () => {
    const to = $("btn-switch").dataset.to;
    const v = state.status && state.status.slots[to].version;
    action("Switch to " + to,
      "Now " + liveDesc() + ". Send all new requests to " + to + (v ? " (" + v + ")" : "") +
      "? Requests in flight finish where they started. Refused if " + to + " has no healthy upstream.",
      "Switch to " + to, "POST", "/api/v1/switch", { to });
  });
  $("btn-rollback").addEventListener("click", () => {
    action("Rollback", "Now " + liveDesc() + ". Send traffic back to the standby slot at once? " +
      "A deployment in progress ends as rolled back.", "Roll back", "POST", "/api/v1/rollback");
  });
  $("btn-promote").addEventListener("click", () => {
    action("Promote", "Pass the deployment's manual gate (or its next canary step)?", "Promote",
      "POST", "/api/v1/promote");
  });
  $("btn-abort").addEventListener("click", () => {
    action("Abort", "End the deployment before its switch? Users never see the candidate.", "Abort",
      "POST", "/api/v1/abort");
  });
  $("btn-rollback").classList.add("danger");
  $("btn-abort").classList.add("danger");
}

wire();
if (state.token) start(); else showLogin(null);
