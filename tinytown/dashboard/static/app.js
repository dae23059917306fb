// Tinytown dashboard: plain JavaScript, no build step.  Everything shown is read from the
// server's JSON routes; the town's events arrive over Server-Sent Events (/api/events) and
// update the page in place (no reload).  Text from the town is only ever set as textContent.
"use strict";

const FEED_MAX = 500;
const LOG_TICK_MS = 1000;
const page = {
  town: null, numbers: {}, seen: new Set(), source: null, stateTimer: null, stateBusy: false,
  stateAgain: false, detail: null, logTimer: null, filter: { agent: "", task: "", kind: "" },
};

function $(selector) { return document.querySelector(selector); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "onclick") node.addEventListener("click", value);
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === "") continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options) {
  const response = await fetch(path, { credentials: "same-origin", ...(options || {}) });
  let data = {};
  try { data = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) throw new Error(data.message ? `${data.error}: ${data.message}` : response.statusText);
  return data;
}

function post(path, body) {
  return api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : "";
}

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }
function diffstatText(d) { return `${plural(d.files || 0, "file")}, +${d.insertions || 0} -${d.deletions || 0}`; }

// a worktree agent's task: its branch, what changed on it, and what became of it
function changeNode(t) {
  if (!t.branch) return "";
  const parts = [t.branch];
  if (t.diffstat) parts.push(diffstatText(t.diffstat));
  if (t.merged_by) parts.push(`merged into ${t.merged_into}`);
  else if (t.discarded) parts.push("discarded");
  const spans = parts.flatMap((part, i) => [i ? " · " : "", el("span", {}, part)]);  // a part never breaks
  return el("div", { class: `change${t.merged_by ? " merged" : ""}${t.discarded ? " discarded" : ""}` }, spans);
}

function ref(task) { return task && task.number ? `#${task.number}` : (task ? task.id.slice(0, 8) : ""); }
function refOfId(id) { return page.numbers[id] ? `#${page.numbers[id]}` : (id ? id.slice(0, 8) : ""); }
function clock(ms) { return new Date(ms).toLocaleTimeString([], { hour12: false }); }
function ago(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}

// ------------------------------------------------------------------ agents and board

function scheduleState() {
  if (page.stateTimer !== null) return;
  page.stateTimer = setTimeout(() => { page.stateTimer = null; loadState(); }, 120);
}

async function loadState() {
  if (page.stateBusy) { page.stateAgain = true; return; }
  page.stateBusy = true;
  try {
    const state = await api("/api/state");
    page.town = state;
    for (const tasks of Object.values(state.board)) for (const t of tasks) if (t.number) page.numbers[t.id] = t.number;
    Object.assign(page.numbers, state.numbers);
    renderHeader(state);
    renderAgents(state);
    renderBoard(state);
    renderAgentChoices(state);
  } catch (error) {
    $("#redis").textContent = `cannot read the town: ${error.message}`;
  } finally {
    page.stateBusy = false;
    if (page.stateAgain) { page.stateAgain = false; scheduleState(); }
  }
}

function renderHeader(state) {
  $("#town-name").textContent = state.town;
  document.title = `Tinytown ${state.town}`;
  $("#redis").textContent = `${state.redis}${state.server ? ` (${state.server})` : ""}`;
  $("#task-counts").textContent = Object.entries(state.counts).map(([s, n]) => `${s} ${n}`).join(" · ");
}

function renderAgents(state) {
  const rows = state.agents.map((view) => {
    const a = view.agent;
    const flags = [];
    if (view.runner_gone) flags.push(el("span", { class: "flag" }, "runner gone"));
    else if (view.stale) flags.push(el("span", { class: "flag" }, "stale"));
    const inbox = `${view.inbox.pending} / ${view.inbox.urgent} / ${view.inbox.in_flight}`;
    const task = a.current_task ? el("a", { href: "#", onclick: (e) => { e.preventDefault(); showTask(a.current_task); } },
      refOfId(a.current_task)) : "";
    return el("tr", { class: "agent", "data-agent": a.name, title: "show its round log",
      onclick: (e) => { if (e.target.tagName !== "A") showLog(a.name); } },
      el("td", {}, el("strong", {}, a.name), a.cli ? el("span", { class: "muted" }, ` ${a.cli}`) : ""),
      el("td", {}, el("span", { class: `state state-${a.state}` }, a.state), flags),
      el("td", { class: "host" }, a.host || ""),
      el("td", {}, task),
      el("td", { class: "inbox", "data-pending": view.inbox.pending }, inbox),
      el("td", {}, ago(a.last_seen, state.now)),
      el("td", {}, String(a.rounds_completed)));
  });
  $("#agents tbody").replaceChildren(...rows);
}

function renderBoard(state) {
  const columns = Object.entries(state.board).map(([name, tasks]) => {
    const cards = tasks.map((t) => {
      const waiting = t.state === "waiting" && t.waiting_on && t.waiting_on.length ? ` (waiting on ${t.waiting_on.join(" ")})` : "";
      const deps = t.depends_on && t.depends_on.length ? `after ${t.depends_on.join(" ")}${waiting}` : "";
      const outcome = t.result || t.error || "";
      return el("div", { class: `card ${t.state} ${t.priority}`, "data-task-id": t.id, "data-number": t.number,
        onclick: () => showTask(t.id) },
        el("span", { class: "ref" }, ref(t)), t.description.length > 120 ? `${t.description.slice(0, 120)}…` : t.description,
        el("div", { class: "who" }, t.assigned_to ? `→ ${t.assigned_to}` : "backlog", t.tags && t.tags.length ? ` · ${t.tags.join(", ")}` : ""),
        deps ? el("div", { class: "deps" }, deps) : "",
        changeNode(t),
        outcome ? el("div", { class: "outcome" }, outcome.length > 160 ? `${outcome.slice(0, 160)}…` : outcome) : "");
    });
    return el("div", { class: "column", "data-state": name },
      el("h3", {}, el("span", { class: `state-${name}` }, name), el("span", { class: "muted" }, String(state.counts[name] ?? tasks.length))),
      cards);
  });
  $("#board").replaceChildren(...columns);
}

function setChoices(select, choices) {
  const current = select.value;
  select.replaceChildren(...choices.map(([value, label]) => el("option", { value }, label)));
  if (choices.some(([value]) => value === current)) select.value = current;
}

function renderAgentChoices(state) {
  const names = state.agents.map((v) => v.agent.name);
  const others = names.filter((n) => n !== state.conductor);
  setChoices($("#send-to"), [...others.map((n) => [n, n]), ["all", "all (broadcast)"], [state.conductor, state.conductor]]);
  setChoices($("#assign-agent"), [...others.map((n) => [n, n]), ["", "backlog (anyone may claim)"]]);
  setChoices($("#feed-agent"), [["", "everyone"], ...names.map((n) => [n, n])]);
}

// ------------------------------------------------------------------ the conversation

function entryNode(entry) {
  const d = entry.data || {};
  const task = entry.task ? ` ${ref(entry.task)}` : (d.task_id ? ` ${refOfId(d.task_id)}` : "");
  let what;
  let body = null;
  if (entry.type === "message.sent") {
    what = `${d.from} → ${d.to}`;
    body = entry.message ? entry.message.body : "(message expired)";
  } else if (entry.type.startsWith("task.")) {
    const who = d.agent || d.by || "";
    what = `${entry.type}${task}${who ? ` · ${who}` : ""}`;
    if (entry.type === "task.created" && entry.task) body = entry.task.description;
    if (entry.type === "task.completed" && entry.task) body = entry.task.result;
    if ((entry.type === "task.failed" || entry.type === "task.cancelled") && entry.task) body = entry.task.error;
    if (entry.type === "task.merged" && d.branch) body = `${d.branch} into ${d.into}`;
  } else {
    what = `${entry.type}${d.agent ? ` · ${d.agent}` : ""}`;
  }
  const node = el("li", { class: `entry ${entry.type.replace(".", "-")}`, "data-event-id": entry.id, "data-type": entry.type },
    el("span", { class: "at" }, clock(entry.at)),
    el("span", { class: "what" }, what),
    entry.type === "message.sent" ? el("span", { class: "kind" }, `[${d.kind}]${task}`) : "",
    body ? el("pre", { class: "body" }, body) : "");
  if (entry.message) node.dataset.messageId = entry.message.id;
  if (d.task_id) node.addEventListener("click", () => showTask(d.task_id));
  node.dataset.shownAt = String(Date.now());
  return node;
}

function addEntry(entry) {
  if (page.seen.has(entry.id)) return;
  page.seen.add(entry.id);
  const feed = $("#feed");
  const atBottom = feed.scrollTop + feed.clientHeight >= feed.scrollHeight - 20;
  feed.append(entryNode(entry));
  while (feed.children.length > FEED_MAX) feed.firstElementChild.remove();
  if (atBottom) feed.scrollTop = feed.scrollHeight;
}

async function loadFeed() {
  const params = { ...page.filter };
  try {
    const feed = await api(`/api/feed${query(params)}`);
    page.seen = new Set();
    $("#feed").replaceChildren();
    for (const entry of feed.entries) addEntry(entry);
    openStream(feed.last, params);
  } catch (error) {
    $("#feed").replaceChildren(el("li", { class: "entry flag" }, error.message));
  }
}

function openStream(after, params) {
  if (page.source) page.source.close();
  const source = new EventSource(`/api/events${query({ after, ...params })}`);
  page.source = source;
  source.onopen = () => { $("#live").textContent = "live"; $("#live").classList.remove("off"); scheduleState(); };
  source.onerror = () => { $("#live").textContent = "reconnecting"; $("#live").classList.add("off"); };
  source.addEventListener("trouble", (message) => {
    $("#live").textContent = `reconnecting: ${JSON.parse(message.data).message}`;
    $("#live").classList.add("off");
  });
  source.addEventListener("town", (message) => {
    const entry = JSON.parse(message.data);
    if (entry.task && entry.task.number) page.numbers[entry.task.id] = entry.task.number;
    if (entry.matches) addEntry(entry);
    scheduleState();
    const d = entry.data || {};
    if (page.detail && page.detail.kind === "task" && d.task_id === page.detail.id) showTask(page.detail.id, true);
    if (page.detail && page.detail.kind === "log" && (d.agent === page.detail.agent || d.by === page.detail.agent)) pumpLog();
  });
}

// ------------------------------------------------------------------ details: a task, a log

function detail(title, ...nodes) {
  $("#detail-title").textContent = title;
  $("#detail").replaceChildren(...nodes);
}

function stopLog() {
  if (page.logTimer !== null) clearTimeout(page.logTimer);
  page.logTimer = null;
}

async function showTask(id, quiet) {
  if (!quiet) stopLog();
  page.detail = { kind: "task", id };
  try {
    const t = await api(`/api/tasks/${encodeURIComponent(id)}`);
    if (!page.detail || page.detail.id !== id) return;
    const field = (name, value) => (value === null || value === undefined || value === ""
      ? [] : [el("dt", {}, name), el("dd", { "data-field": name.replace(/ /g, "-") }, value)]);
    const short = (sha) => (sha || "").slice(0, 10);
    const reviewable = t.branch && !t.merged_by && !t.discarded;
    const facts = el("dl", { id: "task-facts" },
      field("state", el("span", { class: `state state-${t.state}` }, t.state)),
      field("agent", t.assigned_to || "backlog"), field("created by", t.created_by), field("priority", t.priority),
      field("tags", (t.tags || []).join(", ")), field("depends on", (t.depends_on || []).join(" ")),
      field("waiting on", t.state === "waiting" ? (t.waiting_on || []).join(" ") : ""),
      field("attempt", t.attempt ? String(t.attempt) : ""), field("description", t.description),
      field("result", t.result), field("error", t.error), field("decided by", t.decided_by),
      field("branch", t.branch),
      field("change", t.diffstat ? `${diffstatText(t.diffstat)} (${short(t.base)}..${short(t.head)})` : ""),
      field("merged", t.merged_by
        ? `by ${t.merged_by} into ${t.merged_into}${t.merge_commit ? ` (${short(t.merge_commit)})` : ""}` : ""),
      field("discarded", t.discarded ? "yes: its branch was deleted" : ""),
      field("review", reviewable ? [`tt review ${ref(t)}`, `tt merge ${ref(t)}`, `tt discard ${ref(t)}`].join(" · ") : ""));
    const thread = el("ol", { id: "thread", class: "feed" }, t.thread.map((m) => el("li", { class: "entry", "data-message-id": m.id },
      el("span", { class: "at" }, clock(m.created_at)), el("span", { class: "what" }, `${m.from} → ${m.to}`),
      el("span", { class: "kind" }, `[${m.kind}]`), el("pre", { class: "body" }, m.body))));
    detail(`Task ${ref(t)}`, facts, el("h3", {}, `Thread (${t.thread.length})`), thread);
  } catch (error) {
    detail("Task", el("p", { class: "flag" }, error.message));
  }
}

async function showLog(agent, round) {
  stopLog();
  page.detail = { kind: "log", agent, round: round || null, follow: !round, offset: null, shown: null };
  const pre = el("pre", { class: "log", id: "log" });
  const rounds = el("select", { id: "log-round", onchange: () => showLog(agent, Number(rounds.value) || null) });
  detail(`Round log: ${agent}`, el("div", { class: "row" }, el("label", {}, "round ", rounds)), pre);
  page.detail.pre = pre;
  page.detail.rounds = rounds;
  await pumpLog();
}

async function pumpLog() {
  const d = page.detail;
  if (!d || d.kind !== "log" || d.busy) return;
  d.busy = true;
  stopLog();
  try {
    const params = { round: d.round || null, offset: d.round ? d.offset : null };
    const log = await api(`/api/logs/${encodeURIComponent(d.agent)}${query(params)}`);
    if (page.detail !== d) return;
    const newest = Math.max(0, ...log.rounds);
    if (d.follow && d.round !== null && newest > d.round) {  // a newer round began: show it from its start
      d.round = newest; d.offset = 0; d.pre.textContent = "";
    } else {
      if (d.round === null) d.round = log.round;
      if (log.text) d.pre.append(log.text);
      d.offset = log.end;
      if (!log.round) d.pre.textContent = `${d.agent} has not run a round yet.`;
    }
    setChoices(d.rounds, [["", "newest"], ...log.rounds.map((n) => [String(n), `round ${n}`])]);
    d.rounds.value = d.follow ? "" : String(d.round);
    d.pre.scrollTop = d.pre.scrollHeight;
  } catch (error) {
    d.pre.textContent = error.message;
  } finally {
    d.busy = false;
    if (page.detail === d) page.logTimer = setTimeout(pumpLog, LOG_TICK_MS);
  }
}

// ------------------------------------------------------------------ acting

function status(node, text, failed) {
  node.textContent = text;
  node.classList.toggle("error", Boolean(failed));
}

async function onSend(event) {
  event.preventDefault();
  const out = $("#send-status");
  try {
    const receipt = await post("/api/send", {
      to: $("#send-to").value, body: $("#send-body").value, kind: $("#send-kind").value, priority: $("#send-priority").value,
    });
    status(out, `sent to ${receipt.message.to}`);
    $("#send-body").value = "";
  } catch (error) {
    status(out, error.message, true);
  }
}

async function onAssign(event) {
  event.preventDefault();
  const out = $("#assign-status");
  try {
    const task = await post("/api/assign", {
      agent: $("#assign-agent").value, description: $("#assign-description").value, priority: $("#assign-priority").value,
      tags: $("#assign-tags").value, depends_on: $("#assign-depends").value,
    });
    page.numbers[task.id] = task.number;
    status(out, `created task ${ref(task)}${task.assigned_to ? ` for ${task.assigned_to}` : " in the backlog"}`);
    $("#assign-description").value = "";
  } catch (error) {
    status(out, error.message, true);
  }
}

function onFilter(event) {
  event.preventDefault();
  page.filter = { agent: $("#feed-agent").value, task: $("#feed-task").value.trim(), kind: $("#feed-kind").value };
  loadFeed();
}

function start() {
  const url = new URL(window.location.href);
  if (url.searchParams.has("token")) {  // it is a cookie now: keep it out of the address bar and history
    url.searchParams.delete("token");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  $("#send-form").addEventListener("submit", onSend);
  $("#assign-form").addEventListener("submit", onAssign);
  $("#feed-filter").addEventListener("submit", onFilter);
  $("#feed-agent").addEventListener("change", onFilter);
  $("#feed-kind").addEventListener("change", onFilter);
  loadState().then(loadFeed);
}

document.addEventListener("DOMContentLoaded", start);
