// morag-jobs dashboard: the job list with live progress (SSE) and a job's history.
// Vanilla JS, no build step. Every text from the server goes in through textContent.
"use strict";

const API = "api/v1";
const KEY_STORAGE = "morag-jobs.api-key";
const TERMINAL = new Set(["FINISHED", "FAILED", "CANCELLED"]);
const ETA_WINDOW = 20;            // progress samples an ETA looks back over ...
const ETA_MAX_AGE_MS = 10 * 60e3; // ... if they are at most this old
const PAGE = 500;

const state = {
  key: localStorage.getItem(KEY_STORAGE) || "",
  jobs: new Map(),      // id -> job snapshot (highest version seen)
  samples: new Map(),   // id -> [{t, p}] progress history for the ETA (server times, ms)
  received: new Map(),  // id -> Date.now() when its latest sample arrived
  rows: new Map(),      // id -> <tr>
  source: null,
  retryTimer: null,
  detailId: null,
  timelineAfter: null,  // the last history row shown
  timelineGen: 0,       // bumped when another job is opened: older loads stop
  timelineBusy: false,
  timelineAgain: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

// -- formatting ----------------------------------------------------------------------

function percentText(p) { return `${Number(p || 0).toFixed(1)}%`; }

function duration(seconds) {
  if (!Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

function ago(iso) {
  if (!iso) return "—";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  return seconds < 5 ? "just now" : `${duration(seconds)} ago`;
}

function clock(iso) {
  return iso ? new Date(iso).toLocaleString() : "—";
}

// -- ETA from the progress history ---------------------------------------------------

function addSample(id, iso, p, arrived = true) {
  if (!iso || p === null || p === undefined) return;
  const t = Date.parse(iso);
  let samples = state.samples.get(id) || [];
  const last = samples[samples.length - 1];
  if (last && p < last.p && t >= last.t) samples = [];  // an explicit retry reset the job
  if (!samples.some((s) => s.t === t)) {
    samples.push({ t, p });
    samples.sort((a, b) => a.t - b.t);
  }
  state.samples.set(id, samples.slice(-200));
  if (arrived) state.received.set(id, Date.now());
}

// Seconds left, at the rate of the recent samples (or the average since the job started).
function etaSeconds(job) {
  if (TERMINAL.has(job.status) || !(job.percentage > 0)) return NaN;
  if (job.percentage >= 100) return 0;
  const samples = state.samples.get(job.id) || [];
  const latest = samples[samples.length - 1];
  let rate = NaN;  // percent per ms
  if (latest) {
    const recent = samples.slice(-ETA_WINDOW).filter((s) => latest.t - s.t <= ETA_MAX_AGE_MS);
    const first = recent[0];
    if (recent.length >= 2 && latest.t > first.t && latest.p > first.p) {
      rate = (latest.p - first.p) / (latest.t - first.t);
    }
  }
  const anchor = latest ? latest.t : Date.parse(job.last_progress_at || job.updated_at);
  if (!Number.isFinite(rate) && job.started_at && anchor > Date.parse(job.started_at)) {
    rate = job.percentage / (anchor - Date.parse(job.started_at));
  }
  if (!(rate > 0)) return NaN;
  const sinceArrival = Date.now() - (state.received.get(job.id) || Date.now());
  return ((100 - job.percentage) / rate - sinceArrival) / 1000;
}

function etaText(job) {
  const seconds = etaSeconds(job);
  if (!Number.isFinite(seconds)) return "—";
  return seconds < 1 ? "any moment" : `~${duration(seconds)}`;
}

// -- talking to the API --------------------------------------------------------------

class Unauthorized extends Error {}

async function api(path) {
  const response = await fetch(`${API}/${path}`, {
    headers: { Authorization: `Bearer ${state.key}`, Accept: "application/json" },
    cache: "no-store",
  });
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    throw new Unauthorized(body.detail || `the server answered ${response.status}`);
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.detail || `${path}: HTTP ${response.status}`);
  }
  return response.json();
}

function items(page) { return Array.isArray(page) ? page : page.items || []; }

function failed(error) {
  if (error instanceof Unauthorized) {
    askForKey(`This key was refused: ${error.message}`);
  } else {
    showError(error.message || String(error));
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// -- the key -------------------------------------------------------------------------

function askForKey(message) {
  disconnect();
  state.key = "";
  localStorage.removeItem(KEY_STORAGE);
  $("key-error").textContent = message || "";
  $("key-error").hidden = !message;
  $("key-form").hidden = false;
  $("list").hidden = true;
  $("detail").hidden = true;
  $("forget-key").hidden = true;
  $("api-key").focus();
}

function useKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  state.key = key;
  localStorage.setItem(KEY_STORAGE, key);
  $("api-key").value = "";
  $("key-form").hidden = true;
  start();
}

// -- the job list --------------------------------------------------------------------

function accept(job) {
  const known = state.jobs.get(job.id);
  if (known && known.version > job.version) return false;
  state.jobs.set(job.id, job);
  addSample(job.id, job.last_progress_at || job.updated_at, job.percentage);
  return true;
}

async function loadJobs() {
  const page = await api(`jobs?limit=${PAGE}&sort=-created_at`);
  for (const job of items(page)) accept(job);
  const shown = state.jobs.size;
  const total = page.total ?? shown;
  $("summary").textContent = total > shown ? `${shown} of ${total} jobs` : `${total} jobs`;
  renderList();
}

function progressBar(testid) {
  return el("div", { class: "progress" },
    el("div", { class: "bar", "data-testid": testid }),
    el("span", { class: "pct", "data-testid": `${testid}-text` }));
}

function setProgress(container, job) {
  container.dataset.status = job.status;
  const bar = container.querySelector(".bar");
  bar.style.width = `${Math.min(100, Math.max(0, job.percentage))}%`;
  container.querySelector(".pct").textContent = percentText(job.percentage);
  container.setAttribute("role", "progressbar");
  container.setAttribute("aria-valuenow", String(job.percentage));
  container.setAttribute("aria-valuemin", "0");
  container.setAttribute("aria-valuemax", "100");
}

function makeRow(job) {
  const row = el("tr", { class: "job", tabindex: "0", "data-testid": "job-row", "data-job-id": job.id },
    el("td", {},
      el("a", { class: "name", href: `#/jobs/${encodeURIComponent(job.id)}`, "data-testid": "job-name" }),
      el("span", { class: "sub" })),
    el("td", {}, el("span", { class: "status", "data-testid": "job-status" })),
    el("td", {}, progressBar("job-bar")),
    el("td", { class: "stage", "data-testid": "job-stage" }),
    el("td", { class: "message", "data-testid": "job-message" }),
    el("td", { class: "eta", "data-testid": "job-eta" }),
    el("td", { class: "updated", "data-testid": "job-updated" }));
  row.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
  });
  row.addEventListener("keydown", (event) => {
    if (event.key === "Enter") location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
  });
  return row;
}

function fillRow(row, job) {
  row.dataset.status = job.status;
  row.querySelector(".name").textContent = job.name || job.id;
  row.querySelector(".sub").textContent = [job.job_type, job.id.slice(0, 12)].filter(Boolean).join(" · ");
  const status = row.querySelector(".status");
  status.textContent = job.status;
  status.dataset.status = job.status;
  setProgress(row.querySelector(".progress"), job);
  row.querySelector(".stage").textContent = job.stage || "—";
  const message = row.querySelector(".message");
  message.textContent = job.error && job.status === "FAILED" ? job.error : job.summary || "";
  message.title = message.textContent;
  row.querySelector(".eta").textContent = etaText(job);
  row.querySelector(".updated").textContent = ago(job.updated_at);
}

function visible(job) {
  const wanted = $("status-filter").value;
  return !wanted || job.status === wanted;
}

function renderList() {
  const body = $("job-rows");
  const jobs = [...state.jobs.values()].filter(visible)
    .sort((a, b) => (b.created_at || "").localeCompare(a.created_at || "") || b.id.localeCompare(a.id));
  const keep = new Set(jobs.map((job) => job.id));
  for (const [id, row] of state.rows) {
    if (!keep.has(id)) { row.remove(); state.rows.delete(id); }
  }
  let previous = null;
  for (const job of jobs) {
    let row = state.rows.get(job.id);
    if (!row) { row = makeRow(job); state.rows.set(job.id, row); }
    fillRow(row, job);
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (expected !== row) body.insertBefore(row, expected);
    previous = row;
  }
  $("empty").hidden = jobs.length > 0;
}

function updateJob(job) {
  if (!accept(job)) return;
  const row = state.rows.get(job.id);
  if (row && visible(job)) fillRow(row, job);
  else renderList();
  if (job.id === state.detailId) {
    renderDetail(job);
    loadTimeline();
  }
}

// -- live updates (Server-Sent Events) -----------------------------------------------

function setConnection(kind, text) {
  $("connection").dataset.state = kind;
  $("connection").textContent = text;
}

function connect() {
  disconnect();
  setConnection("connecting", "connecting");
  const source = new EventSource(`${API}/stream?access_token=${encodeURIComponent(state.key)}`);
  state.source = source;
  source.addEventListener("open", () => {
    setConnection("live", "live");
    showError("");
    loadJobs().catch(failed);  // catch up on what changed while we were away
  });
  source.addEventListener("job", (event) => updateJob(JSON.parse(event.data)));
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) {
      setConnection("offline", "offline — retrying");
      state.retryTimer = setTimeout(() => {
        api("jobs?limit=1").then(connect, (error) => {
          if (error instanceof Unauthorized) failed(error);
          else connect();
        });
      }, 5000);
    } else {
      setConnection("connecting", "reconnecting");
    }
  });
}

function disconnect() {
  if (state.source) state.source.close();
  state.source = null;
  clearTimeout(state.retryTimer);
}

// -- one job: detail and timeline ----------------------------------------------------

function field(list, name, value) {
  list.append(el("dt", {}, name), el("dd", { "data-field": name }, value ?? "—"));
}

function renderDetail(job) {
  $("detail-title").textContent = job.name || job.id;
  setProgress($("detail").querySelector(".progress"), job);
  const list = $("detail-fields");
  list.replaceChildren();
  field(list, "status", job.status);
  field(list, "stage", job.stage ? `${job.stage}${job.stage_percent != null ? ` (${percentText(job.stage_percent)} of stage)` : ""}` : null);
  field(list, "message", job.summary || null);
  if (job.error) field(list, "error", job.error);
  if (job.current != null) field(list, "items", `${job.current} / ${job.total ?? "?"}`);
  field(list, "ETA", etaText(job));
  field(list, "type", job.job_type);
  field(list, "user", job.user_id);
  field(list, "worker", job.worker_id);
  field(list, "id", job.id);
  field(list, "created", clock(job.created_at));
  field(list, "started", clock(job.started_at));
  field(list, "updated", clock(job.updated_at));
  if (job.finished_at) field(list, "finished", clock(job.finished_at));
}

function timelineItem(event) {
  const what = event.percentage != null ? percentText(event.percentage) : event.status || "";
  return el("li", { "data-testid": "timeline-item", "data-kind": event.kind, "data-event-id": event.id },
    el("span", { class: "when" }, new Date(event.at).toLocaleTimeString()),
    el("span", { class: "what" }, what),
    event.stage ? el("span", { class: "chip" }, event.stage) : "",
    el("span", { class: "chip" }, event.kind === "progress" ? event.source : `${event.kind} · ${event.source}`),
    el("span", { class: "text" }, event.message || ""));
}

// Fetch history rows after the last one shown; newest go on top.
async function loadTimeline() {
  if (state.timelineBusy) { state.timelineAgain = true; return; }
  state.timelineBusy = true;
  const gen = state.timelineGen;
  const id = state.detailId;
  try {
    do {
      state.timelineAgain = false;
      let after = state.timelineAfter;
      for (;;) {
        const query = `limit=1000${after != null ? `&after_id=${after}` : ""}`;
        const page = await api(`jobs/${encodeURIComponent(id)}/events?${query}`);
        if (gen !== state.timelineGen) return;
        for (const event of items(page)) {
          if (event.percentage != null) addSample(id, event.at, event.percentage, false);
          $("timeline").prepend(timelineItem(event));
          after = event.id;
        }
        state.timelineAfter = after;
        if (page.next_after_id == null) break;
      }
    } while (state.timelineAgain);
  } catch (error) {
    if (gen === state.timelineGen) failed(error);
  } finally {
    if (gen === state.timelineGen) state.timelineBusy = false;
  }
}

async function openDetail(id) {
  state.detailId = id;
  state.timelineGen += 1;
  state.timelineBusy = false;
  state.timelineAfter = null;
  $("timeline").replaceChildren();
  $("list").hidden = true;
  $("detail").hidden = false;
  $("detail").dataset.jobId = id;
  const known = state.jobs.get(id);
  if (known) renderDetail(known);
  try {
    const job = await api(`jobs/${encodeURIComponent(id)}`);
    if (id !== state.detailId) return;
    accept(job);
    renderDetail(state.jobs.get(id));
    await loadTimeline();
  } catch (error) {
    failed(error);
  }
}

// -- routing and start-up ------------------------------------------------------------

function route() {
  if (!state.key) return;
  const match = location.hash.match(/^#\/jobs\/(.+)$/);
  if (match) {
    openDetail(decodeURIComponent(match[1]));
  } else {
    state.detailId = null;
    $("detail").hidden = true;
    $("list").hidden = false;
    renderList();
  }
}

function start() {
  $("forget-key").hidden = false;
  route();
  loadJobs().then(connect, failed);
}

function tick() {
  for (const [id, row] of state.rows) {
    const job = state.jobs.get(id);
    row.querySelector(".eta").textContent = etaText(job);
    row.querySelector(".updated").textContent = ago(job.updated_at);
  }
  const eta = document.querySelector('#detail-fields [data-field="ETA"]');
  if (eta && state.detailId && state.jobs.has(state.detailId)) {
    eta.textContent = etaText(state.jobs.get(state.detailId));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", useKey);
  $("forget-key").addEventListener("click", () => askForKey(""));
  $("status-filter").addEventListener("change", renderList);
  window.addEventListener("hashchange", route);
  setInterval(tick, 1000);
  if (state.key) start();
  else askForKey("");
});
