// worker-api-gateway dashboard. Plain JavaScript: it speaks to the same JSON API and /events
// stream as any client, with the API key the user signs in with (kept in sessionStorage).
"use strict";

const KEY = "wag.apiKey";
const state = { key: sessionStorage.getItem(KEY) || "", me: null, health: null, stream: null };
const $ = (sel, root = document) => root.querySelector(sel);
const FINAL = ["succeeded", "failed", "cancelled"];

// ---- HTTP ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error_message) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method: options.method || "GET", headers, body: options.body });
  const text = await res.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (!res.ok) throw new ApiError(res.status, body);
  return body;
}

// ---- small DOM helpers -----------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const pill = (value) => el("span", { class: `pill s-${value}`, "data-testid": "status", text: value || "–" });
const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "–");
const can = (scope) => !!state.me && state.me.scopes.includes(scope);

function showError(where, error) {
  where.replaceChildren(el("p", { class: "error", role: "alert", text: error.message || String(error) }));
}

// ---- live events -----------------------------------------------------------------------------

/// One EventSource at a time, for the page in view; `onTask` gets each task event.
function listen(filters, onTask) {
  if (state.stream) state.stream.close();
  const query = new URLSearchParams(filters);
  if (state.key) query.set("access_token", state.key);
  const stream = new EventSource(`/events?${query}`);
  state.stream = stream;
  const shown = $("#live-state");
  stream.onopen = () => { shown.textContent = "live"; };
  stream.onerror = () => { shown.textContent = "reconnecting…"; };
  stream.addEventListener("task", (e) => {
    try { onTask(JSON.parse(e.data)); } catch (_) { /* a malformed event is skipped */ }
  });
  stream.addEventListener("reset", () => route());
  stream.addEventListener("lagged", () => { shown.textContent = "lagged; reloading"; route(); });
}

// ---- views -------------------------------------------------------------------------------------

function svgLine(points, { label, unit }) {
  // points: [{x: minuteIndex 0..14, y}], drawn over 15 minutes.
  const w = 300, h = 130, pad = 24;
  const max = Math.max(1, ...points.map((p) => p.y));
  const x = (i) => pad + (i * (w - 2 * pad)) / 14;
  const y = (v) => h - pad - (v * (h - 2 * pad)) / max;
  const path = points.map((p, i) => `${i ? "L" : "M"}${x(p.x).toFixed(1)},${y(p.y).toFixed(1)}`).join(" ");
  const svg = `<svg class="chart" viewBox="0 0 ${w} ${h}" role="img" aria-label="${label}">
    <line x1="${pad}" y1="${h - pad}" x2="${w - pad}" y2="${h - pad}" stroke="#ccd3db"/>
    <text x="${pad}" y="${pad - 8}">${max.toFixed(0)} ${unit}</text>
    <text x="${pad}" y="${h - 6}">−15 min</text><text x="${w - pad - 20}" y="${h - 6}">now</text>
    <path d="${path}" fill="none" stroke="#1f5fbf" stroke-width="2"/></svg>`;
  const holder = el("div");
  holder.innerHTML = svg;
  return holder.firstChild;
}

function bars(pairs) {
  const max = Math.max(1, ...pairs.map(([, n]) => n));
  return el("div", { class: "bars" }, pairs.map(([name, n]) => {
    const fill = el("span", { class: "fill" });
    // Through the CSSOM: the page's CSP allows no style attributes.
    fill.style.width = `${(100 * n) / max}%`;
    return el("div", {}, el("span", { text: name }), el("span", { class: "track" }, fill), el("span", { text: n }));
  }));
}

/// Tasks finished in the last 15 minutes, per minute, from the task list (newest first, read
/// until older than the window or 2 000 tasks): completions and p50/p99 handler time.
async function activity() {
  const since = Date.now() - 15 * 60 * 1000;
  const done = [];
  let cursor = null, pages = 0, sampled = false;
  do {
    const q = new URLSearchParams({ limit: "500" });
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/tasks?${q}`);
    let older = false;
    for (const t of page.tasks) {
      if (Date.parse(t.timestamps.created_at) < since) { older = true; break; }
      if (t.timestamps.completed_at) done.push(t);
    }
    cursor = older ? null : page.next_cursor;
    pages += 1;
    sampled = !!cursor && pages >= 4;
  } while (cursor && pages < 4);
  const minutes = Array.from({ length: 15 }, () => []);
  for (const t of done) {
    const at = Date.parse(t.timestamps.completed_at);
    const i = 14 - Math.floor((Date.now() - at) / 60000);
    if (i >= 0 && i < 15) minutes[i].push(t.metadata.processing_time_ms || 0);
  }
  const pct = (xs, p) => {
    if (!xs.length) return 0;
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
  };
  return {
    sampled,
    throughput: minutes.map((xs, i) => ({ x: i, y: xs.length })),
    p50: minutes.map((xs, i) => ({ x: i, y: pct(xs, 50) })),
    p99: minutes.map((xs, i) => ({ x: i, y: pct(xs, 99) })),
  };
}

async function overview(view) {
  view.replaceChildren(el("h1", { text: "Overview" }), el("p", { class: "muted", text: "Loading…" }));
  const [stats, health, dead, act] = await Promise.all([
    api("/tasks/statistics"),
    api("/health").catch((e) => ({ status: "unhealthy", error: e.message })),
    api("/dead-letters?limit=5").catch(() => null),
    activity(),
  ]);
  const deps = [["MongoDB", health.mongodb], ["RabbitMQ", health.rabbitmq]];
  if (health.camunda) deps.push(["Camunda", health.camunda]);
  const queues = Object.entries(health.topics || {}).map(([name, t]) => [name, t.consuming ? "healthy" : "unhealthy"]);
  const deadCount = dead ? (dead.dead_letters || dead.items || []).length : null;
  view.replaceChildren(
    el("h1", { text: "Overview" }),
    el("div", { class: "grid" },
      el("section", { class: "card", "data-testid": "by-status" }, el("h2", { text: `Tasks by status (${stats.total_tasks})` }),
        bars(Object.entries(stats.by_status || {}))),
      el("section", { class: "card" }, el("h2", { text: "Tasks by topic" }), bars(Object.entries(stats.by_topic || {}))),
      el("section", { class: "card" }, el("h2", { text: "Health" }),
        el("p", {}, "Gateway ", pill(health.status)),
        el("dl", { class: "kv" }, deps.map(([n, s]) => [el("dt", { text: n }), el("dd", {}, pill(s))]),
          queues.map(([n, s]) => [el("dt", { text: `queue ${n}` }), el("dd", {}, pill(s))]))),
      el("section", { class: "card" }, el("h2", { text: "Finished per minute, last 15 min" }),
        svgLine(act.throughput, { label: "tasks finished per minute", unit: "/min" }),
        act.sampled ? el("p", { class: "muted", text: "from the 2 000 newest tasks" }) : null),
      el("section", { class: "card" }, el("h2", { text: "Handler time p50 / p99, last 15 min" }),
        svgLine(act.p50, { label: "p50 handler time in ms", unit: "ms p50" }),
        svgLine(act.p99, { label: "p99 handler time in ms", unit: "ms p99" })),
      el("section", { class: "card" }, el("h2", { text: "Dead letters" }),
        el("p", { text: deadCount === null ? "not available to this key" : `${deadCount}${deadCount >= 5 ? "+" : ""} recent` })),
    ),
  );
  listen({}, () => {});
}

const STATUSES = ["", "queued", "processing", "retrying", "succeeded", "failed", "cancelled"];

function taskRow(t) {
  return el("tr", { "data-task": t.task_id },
    el("td", {}, el("a", { href: `#/task/${encodeURIComponent(t.task_id)}`, text: t.task_id })),
    el("td", { class: "hide-narrow", text: t.topic }),
    el("td", { class: "hide-narrow", text: t.worker_id }),
    el("td", {}, pill(t.status)),
    el("td", { class: "attempts", text: t.attempts }),
    el("td", { class: "hide-narrow updated", text: time(t.timestamps ? t.timestamps.last_updated : t.updated_at) }));
}

async function tasks(view, params) {
  const filters = { status: params.get("status") || "", topic: params.get("topic") || "", worker_id: params.get("worker_id") || "" };
  const cursor = params.get("cursor") || "";
  const q = new URLSearchParams({ limit: "25" });
  for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
  if (cursor) q.set("cursor", cursor);
  const page = await api(`/tasks?${q}`);
  const body = el("tbody", {}, page.tasks.map(taskRow));
  const news = el("button", { type: "button", class: "secondary", hidden: true, "data-testid": "new-tasks",
    onclick: () => route() });
  let unseen = 0;
  const form = el("form", { class: "filters", onsubmit: (e) => {
    e.preventDefault();
    const data = new FormData(e.target);
    const id = (data.get("task_id") || "").trim();
    if (id) { location.hash = `#/task/${encodeURIComponent(id)}`; return; }
    const next = new URLSearchParams();
    for (const k of ["status", "topic", "worker_id"]) if (data.get(k)) next.set(k, data.get(k));
    location.hash = `#/tasks?${next}`;
  } },
    el("label", {}, "Status", el("select", { name: "status" }, STATUSES.map((s) =>
      el("option", { value: s, selected: s === filters.status, text: s || "any" })))),
    el("label", {}, "Topic", el("input", { name: "topic", value: filters.topic, size: 14 })),
    el("label", {}, "Worker", el("input", { name: "worker_id", value: filters.worker_id, size: 14 })),
    el("label", {}, "Task id", el("input", { name: "task_id", size: 14 })),
    el("button", { type: "submit", text: "Apply" }));
  const pager = el("div", { class: "pager" },
    cursor ? el("button", { type: "button", class: "secondary", onclick: () => history.back(), text: "Previous" }) : null,
    page.next_cursor ? el("button", { type: "button", class: "secondary", text: "Next", onclick: () => {
      const next = new URLSearchParams(q); next.delete("limit"); next.set("cursor", page.next_cursor);
      location.hash = `#/tasks?${next}`;
    } }) : null);
  view.replaceChildren(el("h1", { text: "Tasks" }), form, news,
    el("div", { class: "card" }, el("table", { "data-testid": "tasks" },
      el("thead", {}, el("tr", {}, el("th", { text: "Task" }), el("th", { class: "hide-narrow", text: "Topic" }),
        el("th", { class: "hide-narrow", text: "Worker" }), el("th", { text: "Status" }), el("th", { text: "Att." }),
        el("th", { class: "hide-narrow", text: "Updated" }))), body)), pager);
  const live = {};
  if (filters.topic) live.topic = filters.topic;
  listen(live, (event) => {
    const row = body.querySelector(`tr[data-task="${CSS.escape(event.task_id)}"]`);
    if (row) {
      // In place: the row keeps its height and position.
      row.replaceWith(taskRow(event));
      const fresh = body.querySelector(`tr[data-task="${CSS.escape(event.task_id)}"]`);
      fresh.classList.add("flash");
    } else if (!cursor && event.status === "queued" && (!filters.status || filters.status === "queued")
      && (!filters.worker_id || filters.worker_id === event.worker_id)) {
      // New tasks are counted, not inserted, so the rows in view never move under the pointer.
      unseen += 1;
      news.hidden = false;
      news.textContent = `${unseen} new task${unseen > 1 ? "s" : ""}: show`;
    }
  });
}

async function task(view, id) {
  const t = await api(`/tasks/${encodeURIComponent(id)}/status?include=variables`);
  const steps = [["created", t.timestamps.created_at]];
  for (const s of t.metadata.processing_steps || []) steps.push([`${s.step}: ${s.status}${s.detail ? ` — ${s.detail}` : ""}`, s.at]);
  if (t.timestamps.completed_at) steps.push([`finished: ${t.status}`, t.timestamps.completed_at]);
  for (const a of t.audit || []) steps.push([`${a.action} by ${a.by}`, a.at]);
  steps.sort((a, b) => Date.parse(a[1]) - Date.parse(b[1]));
  const message = el("p", { class: "error", role: "alert", "data-testid": "action-error" });
  const act = (label, method, path, cls) => el("button", { type: "button", class: cls, "data-testid": `action-${label.toLowerCase().replace(/ /g, "-")}`,
    text: label, onclick: async (e) => {
      e.target.disabled = true;
      try { await api(path, { method }); await route(); } catch (err) { message.textContent = err.message; e.target.disabled = false; }
    } });
  const actions = [];
  if (can("operate")) {
    const base = `/tasks/${encodeURIComponent(id)}`;
    if (["failed", "cancelled"].includes(t.status)) actions.push(act("Retry", "POST", `${base}/retry`));
    if (["queued", "retrying"].includes(t.status)) actions.push(act("Cancel", "DELETE", base, "danger"));
    if (t.camunda && t.camunda.report_state === "report_failed") actions.push(act("Re-send report", "POST", `${base}/report`));
  }
  view.replaceChildren(
    el("p", {}, el("a", { href: "#/tasks", text: "← Tasks" })),
    el("h1", {}, `Task ${t.task_id} `, pill(t.status)),
    el("div", { class: "actions", "data-testid": "actions" }, actions), message,
    el("div", { class: "grid" },
      el("section", { class: "card" }, el("h2", { text: "Timeline" }),
        el("ol", { class: "timeline", "data-testid": "timeline" }, steps.map(([what, at]) =>
          el("li", {}, el("time", { datetime: at, text: time(at) }), what)))),
      el("section", { class: "card" }, el("h2", { text: "Details" }),
        el("dl", { class: "kv" },
          el("dt", { text: "Topic" }), el("dd", { text: t.topic }),
          el("dt", { text: "Worker" }), el("dd", { text: t.worker_id }),
          el("dt", { text: "Attempts" }), el("dd", { "data-testid": "attempts", text: `${t.attempts} of ${t.metadata.max_attempts}` }),
          el("dt", { text: "Substatus" }), el("dd", { text: t.substatus || "–" }),
          el("dt", { text: "Error" }), el("dd", { class: t.error_message ? "error" : "", text: t.error_message || "–" }),
          el("dt", { text: "Camunda" }), el("dd", {}, pill(t.camunda ? t.camunda.report_state : "not_applicable"),
            t.camunda && t.camunda.reported_as ? ` ${t.camunda.reported_as}` : ""),
          el("dt", { text: "Trace id" }), el("dd", { "data-testid": "trace-id", text: t.trace_id || "–" }),
          el("dt", { text: "Handler time" }), el("dd", { text: t.metadata.processing_time_ms != null ? `${t.metadata.processing_time_ms} ms` : "–" }))),
      el("section", { class: "card" }, el("h2", { text: "Variables" }), el("pre", { text: JSON.stringify(t.variables || {}, null, 2) })),
      el("section", { class: "card" }, el("h2", { text: "Result" }), el("pre", { text: t.result ? JSON.stringify(t.result, null, 2) : "–" })),
    ),
  );
  listen({ task_id: id }, () => route());
  if (!FINAL.includes(t.status)) {
    // Besides the stream (which a re-render reopens): the API's own wait for the final state.
    const here = location.hash;
    api(`/tasks/${encodeURIComponent(id)}/status?wait=30`)
      .then(() => { if (location.hash === here) route(); })
      .catch(() => {});
  }
}

async function topics(view) {
  view.replaceChildren(el("h1", { text: "Topics" }));
  const health = await api("/health");
  let registry;
  try {
    registry = await api("/topics");
  } catch (e) {
    if (e.status === 403 || e.status === 401) {
      view.append(el("p", { class: "muted", text: "Listing the topics' policies needs a key with the admin scope." }));
      registry = Object.keys(health.topics || {}).map((name) => ({ name }));
    } else throw e;
  }
  const list = Array.isArray(registry) ? registry : registry.topics || [];
  view.append(el("div", { class: "grid" }, list.map((t) => {
    const consumer = (health.topics || {})[t.name];
    const retry = t.retry || {};
    return el("section", { class: "card", "data-testid": `topic-${t.name}` }, el("h2", { text: t.name }),
      el("dl", { class: "kv" },
        el("dt", { text: "Handler" }), el("dd", { text: t.handler || "–" }),
        el("dt", { text: "Source" }), el("dd", { text: t.source || "–" }),
        el("dt", { text: "Timeout" }), el("dd", { text: t.timeout_seconds != null ? `${t.timeout_seconds} s` : "–" }),
        el("dt", { text: "Concurrency" }), el("dd", { text: t.concurrency != null ? t.concurrency : "–" }),
        el("dt", { text: "Retry" }), el("dd", { text: retry.max_attempts != null
          ? `${retry.max_attempts} attempts, ${retry.initial_backoff_ms}–${retry.max_backoff_ms} ms` : "–" }),
        el("dt", { text: "Queue" }), el("dd", {}, consumer ? pill(consumer.consuming ? "healthy" : "unhealthy") : "not consumed here")));
  })));
}

// ---- shell -------------------------------------------------------------------------------------

async function signedIn() {
  try {
    state.me = await api("/auth/whoami");
  } catch (e) {
    if (e.status === 401) { state.key = ""; sessionStorage.removeItem(KEY); }
    state.me = null;
  }
  const open = state.health && state.health.auth === "open";
  $("#who").textContent = state.me ? `${state.me.key_id || "anonymous"} · ${state.me.scopes.join(", ")}` : "";
  $("#sign-out").hidden = open || !state.key;
  return open || !!state.me && !!state.me.key_id || (!!state.me && state.me.scopes.includes("read"));
}

async function route() {
  const view = $("#view");
  if (!(await signedIn())) {
    $("#sign-in").hidden = false;
    view.replaceChildren();
    $("#api-key").focus();
    return;
  }
  $("#sign-in").hidden = true;
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const params = new URLSearchParams(query || "");
  const [page, ...rest] = (path || "overview").split("/");
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === page || (page === "task" && link.dataset.nav === "tasks")) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  try {
    if (page === "tasks") await tasks(view, params);
    else if (page === "task") await task(view, decodeURIComponent(rest.join("/")));
    else if (page === "topics") await topics(view);
    else await overview(view);
  } catch (error) {
    showError(view, error);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  state.health = await fetch("/health").then((r) => r.json()).catch(() => null);
  $("#sign-in-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    state.key = $("#api-key").value.trim();
    sessionStorage.setItem(KEY, state.key);
    $("#api-key").value = "";
    if (!(await signedIn())) $("#sign-in-error").textContent = "That key was not accepted.";
    else { $("#sign-in-error").textContent = ""; route(); }
  });
  $("#sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    state.key = "";
    state.me = null;
    if (state.stream) state.stream.close();
    route();
  });
  window.addEventListener("hashchange", route);
  route();
});
