// The Caliber dashboard: fetches JSON from this server and builds the page with DOM calls.
// Every stored string is set as textContent, never as HTML.
"use strict";

const POLL_MS = 2000;
const csrf = document.querySelector('meta[name="caliber-csrf"]').content;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

async function getJSON(url) {
  const answer = await fetch(url, { credentials: "same-origin" });
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.error || answer.statusText);
  return body;
}

function when(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// A start time in a table cell: the clock time today, else the date too (the whole time in
// its title).
function shortWhen(iso) {
  const full = when(iso);
  const today = when(new Date().toISOString()).slice(0, 10);
  return full.slice(0, 10) === today ? full.slice(11, 16) : full.slice(5, 16);
}

// A time in the queue table: to the second today, else its date and minute; whole in its
// title (three whole times a row pushed the end and duration out of a 1280 px window).
function cellTime(iso) {
  if (!iso) return "-";
  const full = when(iso);
  const today = when(new Date().toISOString()).slice(0, 10);
  const text = full.slice(0, 10) === today ? full.slice(11) : full.slice(5, 16);
  return el("time", { datetime: iso, title: full, text });
}

function seconds(s) {
  if (s === null || s === undefined) return "-";
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${Math.round(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function status(text) {
  return el("span", { class: `status status-${text}`, text });
}

function link(href, text) { return el("a", { href, text }); }

function ago(iso) {
  const left = (new Date(iso) - Date.now()) / 1000;
  return left > 0 ? ` (in ${seconds(left)})` : "";
}

// When a workload may start and where it stands in line: `--not-before`, `--priority`,
// `--after` (the queue table's "starts" column).
function plan(w) {
  const parts = [];
  if (w.not_before) parts.push(el("span", { class: "not-before", text: shortWhen(w.not_before),
    title: `not before ${when(w.not_before)}` }));
  if (w.priority) parts.push(el("span", { class: "priority", text: `prio ${w.priority}`,
    title: "priority: claimed before lower ones" }));
  for (const upstream of w.after || []) {
    parts.push(el("span", { class: "after" }, document.createTextNode("after "),
      link(`/workload/${encodeURIComponent(upstream)}`, upstream)));
  }
  if (!parts.length) return "-";
  const cell = el("span", { class: "plan" });
  parts.forEach((part, i) => { if (i) cell.append(" · "); cell.append(part); });
  return cell;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => el("tr", {}, ...cells.map((c) =>
    el("td", {}, typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c)))));
}

// --- the queue ---------------------------------------------------------------------------

function queuePage() {
  const form = document.getElementById("filters");
  const params = new URLSearchParams(location.search);
  for (const name of ["status", "pinion", "workflow"]) form.elements[name].value = params.get(name) || "";
  let offset = Number(params.get("offset") || 0);
  const go = (changes) => {
    const next = new URLSearchParams(location.search);
    for (const [k, v] of Object.entries(changes)) { if (v) next.set(k, v); else next.delete(k); }
    location.search = next.toString();
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go({ status: form.elements.status.value, pinion: form.elements.pinion.value.trim(),
         workflow: form.elements.workflow.value.trim(), offset: "" });
  });
  document.getElementById("prev").addEventListener("click", () => go({ offset: String(Math.max(0, offset - 100)) || "" }));
  document.getElementById("next").addEventListener("click", () => go({ offset: String(offset + 100) }));

  async function refresh() {
    const query = new URLSearchParams(location.search);
    const page = await getJSON(`/api/queue?${query}`);
    const counts = document.getElementById("counts");
    counts.replaceChildren(...Object.entries(page.counts).sort().map(([s, n]) => {
      const a = el("a", { href: `?status=${encodeURIComponent(s)}`, "data-status": s });
      a.append(status(s), ` ${n}`);
      return a;
    }));
    fill(document.querySelector("#queue tbody"), page.items.map((w) => [
      link(`/workload/${encodeURIComponent(w.id)}`, w.id), w.workflow, w.pinion, status(w.status),
      w.attempts, plan(w), cellTime(w.created_at), cellTime(w.started_at), cellTime(w.ended_at), seconds(w.duration),
      w.results_id ? link(`/results/${encodeURIComponent(w.results_id)}`, w.results_id) : "-",
      w.secret_ok ? "ok" : "mismatch",
    ]));
    document.getElementById("range").textContent = page.items.length ?
      `${page.offset + 1}-${page.offset + page.items.length}${page.more ? " of more" : ""}` : "no workloads";
    document.getElementById("prev").disabled = page.offset === 0;
    document.getElementById("next").disabled = !page.more;
    const seen = await getJSON("/api/pinions");
    fill(document.querySelector("#pinions tbody"), seen.map((p) => [
      p.pinion, p.owner || "-", link(`/workload/${encodeURIComponent(p.workload)}`, `${p.workflow} ${p.workload}`),
      when(p.expires_at), p.alive ? "yes" : "lease ran out",
    ]));
    await refreshEvents();
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }
  loop(refresh);
}

// --- the workloads that ended: the events the notifications send ----------------------------

async function refreshEvents() {
  const list = document.getElementById("events");
  const ended = await getJSON(`/api/events?limit=${encodeURIComponent(list.dataset.limit)}`);
  list.replaceChildren(...ended.map((e) => el("li", { "data-id": e.caliber.id },
    el("time", { datetime: e.caliber.ended_at, text: when(e.caliber.ended_at) }), " ",
    status(e.caliber.status), " ", el("span", { class: "text", text: e.text }), " ",
    link(`/workload/${encodeURIComponent(e.caliber.id)}`, "view"))));
  if (!ended.length) list.replaceChildren(el("li", { class: "note", text: "none yet" }));
}

function eventsPage() {
  loop(async () => {
    await refreshEvents();
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  });
}

// --- one workload --------------------------------------------------------------------------

function workloadPage(id) {
  let outputOffset = 0;
  let outputDone = false;
  const output = document.getElementById("output");
  let latest = null;
  for (const button of document.querySelectorAll("#actions button")) {
    button.addEventListener("click", async () => {
      if (!confirm(confirmText(button.textContent, button.dataset.action, latest))) return;
      const answer = await fetch(`/api/workload/${encodeURIComponent(id)}/${button.dataset.action}`, {
        method: "POST", credentials: "same-origin", headers: { "X-Caliber-CSRF": csrf } });
      const body = await answer.json();
      if (!answer.ok) alert(body.error || answer.statusText);
      outputDone = false;
      await refresh();
    });
  }
  let lastStatus = null;
  async function refresh() {
    const w = await getJSON(`/api/workload/${encodeURIComponent(id)}`);
    latest = w;
    document.getElementById("wid").textContent = `${w.id} (${w.workflow})`;
    document.getElementById("status").replaceWith(Object.assign(status(w.status), { id: "status" }));
    for (const button of document.querySelectorAll("#actions button"))
      button.hidden = !w.actions[button.dataset.action];
    const p = w.progress;
    document.getElementById("progress").textContent = p ?
      `task ${p.task} of ${p.tasks}: ${p.name}${p.branch === null || p.branch === undefined ? "" : ` [branch ${p.branch}]`} (${seconds(p.task_elapsed)}), running ${seconds(p.elapsed)}` : "";
    const facts = [["pinion", w.pinion], ["queued by", w.queued_by], ["created", when(w.created_at)],
      ["attempts", w.attempts], ["run-secret", w.secret_ok ? "matches your key" : "does not match your key"],
      ["run folder", w.work_dir || "-"]];
    const rows = facts.map(([k, v]) => [k, String(v)]);
    rows.push(["starts", w.not_before ? `not before ${when(w.not_before)}${ago(w.not_before)}` : "when a pinion takes it"]);
    rows.push(["priority", `${w.priority}${w.priority ? "" : " (the default)"}`]);
    if (w.waits_for.length) rows.push(["waits for", chainList(w.waits_for)]);
    if (w.waited_by.length) {
      const direct = w.waited_by.filter((d) => d.direct);
      const cell = chainList(direct);
      const further = w.waited_by.length - direct.length;
      if (further) cell.append(` (and ${further} more down the chain)`);
      rows.push(["waited for by", cell]);
    }
    if (w.results_id) rows.push(["results", link(`/results/${encodeURIComponent(w.results_id)}`, w.results_id)]);
    if (w.lease) rows.push(["lease", `${w.lease.owner} until ${when(w.lease.expires_at)}`]);
    fill(document.querySelector("#facts tbody"), rows);
    document.getElementById("waiting").textContent = why(w);
    document.getElementById("error").textContent = w.last_error || "";
    fill(document.querySelector("#history tbody"), w.history.map((h) => [when(h.at), h.status ? status(h.status) : "", h.message]));
    if (w.status !== lastStatus || w.status === "running") {
      document.getElementById("diagram").src = `/api/workload/${encodeURIComponent(id)}/diagram.svg?at=${Date.now()}`;
    }
    if (w.results_id && w.status !== lastStatus) {
      const img = document.getElementById("timeline");
      img.src = `/api/workload/${encodeURIComponent(id)}/timeline.svg?at=${Date.now()}`;
      img.hidden = false;
      document.getElementById("timeline-head").hidden = false;
    }
    lastStatus = w.status;
    while (!outputDone) {
      const o = await getJSON(`/api/workload/${encodeURIComponent(id)}/output?offset=${outputOffset}`);
      if (o.reset) output.textContent = "";
      if (o.text) output.append(document.createTextNode(o.text));
      const grew = o.offset !== outputOffset;
      outputOffset = o.offset;
      outputDone = o.done;
      if (!grew) break;
    }
  }
  loop(refresh);
}

// The workloads of a chain, each a link with its status.
function chainList(items) {
  const cell = el("span", { class: "chain" });
  items.forEach((item, i) => {
    if (i) cell.append(", ");
    cell.append(link(`/workload/${encodeURIComponent(item.id)}`,
      item.workflow ? `${item.workflow} ${item.id}` : item.id), " ", status(item.status || "gone"));
  });
  return cell;
}

const UPSTREAM = {
  queued: "has not started", waiting: "is itself waiting", running: "is running",
  failed: "failed: this one goes on once it is retried and completes",
  gone: "is no longer in the queue",
};

// Why a workload has not started: what it waits for, or its start time.
function why(w) {
  if (w.status === "waiting") {
    const open = w.waits_for.filter((u) => u.status !== "completed");
    return "Waiting: " + open.map((u) => `${u.workflow || "workload"} ${u.id} ${UPSTREAM[u.status || "gone"] || u.status}`).join("; ") + ".";
  }
  if (w.status === "queued" && w.not_before && new Date(w.not_before) > Date.now())
    return `Queued to start at ${when(w.not_before)}${ago(w.not_before)}: no pinion takes it earlier.`;
  return "";
}

// The confirmation of an action; a cancel names the chain it cancels too.
function confirmText(what, action, w) {
  let text = `${what}: workload ${id}?`;
  const below = w && action.startsWith("cancel") ? w.waited_by : [];
  if (below.length) {
    text += `\n\nThe ${below.length === 1 ? "workload" : `${below.length} workloads`} waiting after it ` +
      `${below.length === 1 ? "is" : "are"} cancelled too: ` +
      below.map((d) => `${d.workflow} ${d.id}`).join(", ") + ".";
  }
  return text;
}

// --- one Results -----------------------------------------------------------------------------

function recordsTable(records) {
  const columns = [];
  for (const r of records.slice(0, 20)) for (const k of Object.keys(r)) if (!columns.includes(k)) columns.push(k);
  const table = el("table", { class: "grid records" });
  table.append(el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", { text: c })))));
  const body = el("tbody");
  fill(body, records.map((r) => columns.map((c) => r[c] === undefined ? "" :
    (typeof r[c] === "object" ? JSON.stringify(r[c]) : String(r[c])))));
  table.append(body);
  return table;
}

function valueBlock(id, which, item, title) {
  const box = el("div", { class: "value-block" });
  if (item.chart) {
    box.append(el("figure", { class: "chart" }, el("img", {
      src: `/api/results/${encodeURIComponent(id)}/chart/${encodeURIComponent(which)}.svg`,
      alt: `plot of ${title}`, "data-kind": item.chart })));
  }
  if (item.records && item.records.length) box.append(recordsTable(item.records));
  const text = el("div", { class: "value", text: item.value });
  if (item.chart || (item.records && item.records.length)) {
    box.append(el("details", {}, el("summary", { text: "the value as text" }), text));
  } else box.append(text);
  return box;
}

async function resultsPage(id) {
  const r = await getJSON(`/api/results/${encodeURIComponent(id)}`);
  document.getElementById("rid").textContent = `${r.id} (${r.workflow})`;
  document.getElementById("status").replaceWith(Object.assign(status(r.status), { id: "status" }));
  const head = document.getElementById("head");
  head.append(`pinion ${r.pinion || "-"} · started ${when(r.started_at)} · finished ${when(r.finished_at)} · `);
  if (r.workload_id) head.append(link(`/workload/${encodeURIComponent(r.workload_id)}`, `workload ${r.workload_id}`));
  if (r.speckle_url) head.append(" · ", el("a", { href: r.speckle_url, text: "open in Speckle", rel: "noreferrer" }));
  const inputs = document.getElementById("inputs");
  for (const u of r.upstream) {  // where its $results values came from
    const item = el("li", {}, `inputs from: ${u.workflow} ${u.tasks.map((t) => `'${t}'`).join(", ")} (`);
    if (u.workload) item.append(link(`/workload/${encodeURIComponent(u.workload)}`, `workload ${u.workload}`), ", ");
    item.append(link(`/results/${encodeURIComponent(u.results)}`, `results ${u.results}`), ")");
    inputs.append(item);
  }
  inputs.hidden = !r.upstream.length;
  document.getElementById("unsigned").textContent = r.unsigned ? `not vouched for: ${r.unsigned}` : "";
  document.getElementById("error").textContent = r.error || "";
  const tasks = document.getElementById("tasks");
  for (const t of r.tasks) {
    const title = t.branch === null ? t.name : `${t.name} [branch ${t.branch}]`;
    const box = el("section", { class: "task", "data-task": t.name });
    const h = el("h3", {}, document.createTextNode(`${title} `), status(t.status), document.createTextNode(` ${seconds(t.duration)}`));
    if (t.reused_from) h.append(document.createTextNode(` (reused from ${t.reused_from})`));
    box.append(h);
    if (t.status === "completed") box.append(valueBlock(id, `task:${t.index}`, t, title));
    if (t.error) {
      box.append(el("p", { class: "error", text: `${t.error.type}: ${t.error.message}` }));
      if (t.error.traceback) box.append(el("pre", { class: "traceback", text: t.error.traceback }));
    }
    tasks.append(box);
  }
  const g = document.getElementById("g");
  if (!r.g.length) { g.previousElementSibling.hidden = true; g.hidden = true; }
  for (const item of r.g) {
    const box = el("section", { class: "task" }, el("h3", { text: item.key }));
    box.append(valueBlock(id, `g:${item.key}`, item, `g[${item.key}]`));
    g.append(box);
  }
  const files = document.getElementById("files");
  if (!r.files.length) files.append(el("li", { text: "none kept" }));
  for (const f of r.files) {
    files.append(el("li", {}, el("a", { href: `/api/results/${encodeURIComponent(id)}/files/${f.path.split("/").map(encodeURIComponent).join("/")}`,
      text: f.path, download: "" }), document.createTextNode(` (${f.size.toLocaleString()} bytes)`)));
  }
}

// --- polling --------------------------------------------------------------------------------

function loop(refresh) {
  const tick = async () => {
    try { await refresh(); document.body.dataset.error = ""; }
    catch (error) { document.body.dataset.error = String(error.message || error); }
    setTimeout(tick, POLL_MS);
  };
  tick();
}

const page = document.body.dataset.page;
const id = document.body.dataset.id;
if (page === "queue") queuePage();
else if (page === "workload") workloadPage(id);
else if (page === "events") eventsPage();
else if (page === "results") resultsPage(id).catch((error) => {
  document.getElementById("error").textContent = String(error.message || error);
});
