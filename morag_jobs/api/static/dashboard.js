// morag-jobs dashboard: the job list with live progress (SSE), parent jobs as a tree,
// cancelling a job, and a job's history.
// Vanilla JS, no build step. Every text from the server goes in through textContent.
"use strict";

const API = "api/v1";
const KEY_STORAGE = "morag-jobs.api-key";
const TERMINAL = new Set(["FINISHED", "FAILED", "CANCELLED"]);
const ETA_WINDOW = 20;            // progress samples an ETA looks back over ...
const ETA_MAX_AGE_MS = 10 * 60e3; // ... if they are at most this old
const SERVER_ETA_MAX_AGE_MS = 60e3;  // the server's ETA counts down this long, then the local one takes over
const SERVER_ETA_REFRESH_MS = 30e3;  // running jobs' server ETAs are asked for again this often
const PAGE = 100;          // jobs per "Load more"
const OVERLAP = 5;         // rows re-read at a page boundary: a job deleted meanwhile cannot make paging skip one
const RECOUNT_MS = 1000;   // at most one recount of the total per this long
const KIDS_PAGE = 20;      // a parent's children per "Show more children"

const state = {
  key: localStorage.getItem(KEY_STORAGE) || "",
  jobs: new Map(),      // id -> job snapshot (highest version seen)
  samples: new Map(),   // id -> [{t, p}] progress history for the ETA (server times, ms)
  received: new Map(),  // id -> Date.now() when its latest sample arrived
  serverEta: new Map(), // id -> {seconds, at}: the server's eta_seconds and Date.now() when it came
  rows: new Map(),      // id -> <tr>, for the jobs listed now at the top level
  listed: new Set(),    // ids of the jobs the list has loaded (children under a parent too)
  families: new Map(),  // parent id -> {ids, total, loading, error}: its children loaded so far
  expanded: new Set(),  // parents whose children the list shows
  childRows: new Map(), // child id -> <tr>, under its expanded parent
  moreRows: new Map(),  // parent id -> <tr> "Show more children" / "Loading children…"
  kidItems: new Map(),  // child id -> <li>, in the open parent's details
  view: newView(""),    // the list: its filter, total and how far down it is loaded
  recountTimer: null,
  source: null,
  retryTimer: null,
  detailId: null,
  history: [],          // the open job's history rows, oldest first
  timelineAfter: null,  // the last history row shown
  timelineGen: 0,       // bumped when another job is opened: older loads stop
  timelineBusy: false,
  timelineAgain: false,
  chartFrame: null,
};

// The list shows the jobs of the status filter from the newest down to `frontier`, the
// oldest job loaded so far (all of them once `done`); "Load more" moves the frontier down
// a page. `total` is the server's count for the filter, kept current as jobs arrive,
// leave or enter the filter; `adjusted` counts those local changes, so a count the
// server sent before one of them is not taken over it.
function newView(status) {
  return { status, total: null, frontier: null, done: false, loaded: false, loading: false,
           adjusted: 0 };
}

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

// The server's ETA (GET /jobs: typical stage durations of finished jobs of the type,
// blended with the live rate); the stream's jobs carry none, so the last one is kept.
function takeServerEta(job) {
  if (!("eta_seconds" in job)) return;
  if (Number.isFinite(job.eta_seconds)) state.serverEta.set(job.id, { seconds: job.eta_seconds, at: Date.now() });
  else state.serverEta.delete(job.id);
}

// Running jobs' server ETAs, asked for again (one request) while any job is running.
async function refreshServerEtas() {
  if (!state.key || !state.source || ![...state.jobs.values()].some((job) => job.status === "PROCESSING")) return;
  try {
    const page = await api(`jobs?status=PROCESSING&limit=${PAGE}&sort=-updated_at`);
    for (const job of items(page)) {
      const known = state.jobs.get(job.id);
      if (known && known.version <= job.version) takeServerEta(job);
    }
  } catch (error) {
    if (error instanceof Unauthorized) failed(error);  // else the next refresh tries again
  }
}

// Seconds left: the server's estimate counted down since it came, while it is recent;
// else at the rate of the recent samples (or the average since the job started).
function etaSeconds(job) {
  if (TERMINAL.has(job.status)) return NaN;
  const server = state.serverEta.get(job.id);
  const age = server ? Date.now() - server.at : Infinity;
  if (age <= SERVER_ETA_MAX_AGE_MS) return Math.max(0, server.seconds - age / 1000);
  if (!(job.percentage > 0)) return NaN;
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

// An answer other than 2xx: the server's `detail` as the message, and the HTTP status.
class HttpError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}
class Unauthorized extends HttpError {}  // 401 or 403: this key may not

// The server's `detail`: a sentence, or (422) a list of problems.
function detailText(body) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) return detail.map((d) => (d && d.msg) || String(d)).join("; ");
  return typeof detail === "string" ? detail : "";
}

async function api(path, method = "GET") {
  const response = await fetch(`${API}/${path}`, {
    method,
    headers: { Authorization: `Bearer ${state.key}`, Accept: "application/json" },
    cache: "no-store",
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const Failure = response.status === 401 || response.status === 403 ? Unauthorized : HttpError;
    throw new Failure(detailText(body) || `${path}: the server answered ${response.status}`,
                      response.status);
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
  takeServerEta(job);
  addSample(job.id, job.last_progress_at || job.updated_at, job.percentage);
  return true;
}

// Microseconds since the epoch (Date.parse keeps only milliseconds): the server orders
// jobs by created_at to the microsecond, then by id.
function timeKey(iso) {
  if (!iso) return -Infinity;
  const fraction = /\.(\d+)/.exec(iso);
  return Date.parse(iso) * 1000 + (fraction ? Number(`${fraction[1]}000000`.slice(3, 6)) : 0);
}

// Negative when job a is listed above job b: newest first, as GET /jobs?sort=-created_at.
function order(a, b) {
  return timeKey(b.created_at) - timeKey(a.created_at) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0);
}

function matches(job) {
  return !state.view.status || job.status === state.view.status;
}

function listed(job) {
  const view = state.view;
  return matches(job) && (view.done || (view.frontier !== null && order(job, view.frontier) <= 0));
}

function jobsQuery(offset, limit = PAGE) {
  const status = state.view.status ? `&status=${encodeURIComponent(state.view.status)}` : "";
  return `jobs?limit=${limit}&offset=${offset}&sort=-created_at${status}`;
}

// The server's count, unless the list changed the total itself since it was asked.
function takeTotal(page, mark) {
  const view = state.view;
  // Past the server's counting cap the total is a lower bound: never below what is known.
  const total = page.total_is_lower_bound ? Math.max(view.total ?? 0, page.total) : page.total;
  view.totalIsLowerBound = Boolean(page.total_is_lower_bound);
  if (view.total === null || view.adjusted === mark) view.total = total;
  else recountSoon();
}

// The first page: at start, when the stream (re)connects, and when the filter changes.
async function loadJobs() {
  const view = state.view;
  const mark = view.adjusted;
  const page = await api(jobsQuery(0));
  if (view !== state.view) return;
  const before = new Set(state.listed);
  const fetched = items(page);
  for (const job of fetched) accept(job);
  const last = fetched[fetched.length - 1];
  const exhausted = fetched.length < PAGE || fetched.length >= page.total;
  // Jobs loaded further down stay listed if this page reaches the ones listed before
  // (else more than a page of jobs arrived unseen, and the list starts over from here).
  const joined = before.size === 0 || fetched.some((job) => before.has(job.id));
  if (!joined || view.frontier === null || (last && order(last, view.frontier) > 0)) {
    view.frontier = last || null;
  }
  view.done = exhausted || (joined && view.done);
  view.loaded = true;
  takeTotal(page, mark);
  renderList();
}

async function loadMore() {
  const view = state.view;
  if (view.loading || view.done) return;
  view.loading = true;
  renderMore();
  const mark = view.adjusted;
  try {
    const offset = Math.max(0, state.listed.size - OVERLAP);
    const page = await api(jobsQuery(offset));
    if (view !== state.view) return;
    const fetched = items(page);
    for (const job of fetched) accept(job);
    const last = fetched[fetched.length - 1];
    if (last && (view.frontier === null || order(last, view.frontier) > 0)) view.frontier = last;
    view.done = fetched.length < PAGE || offset + fetched.length >= page.total;
    takeTotal(page, mark);
  } finally {
    view.loading = false;
    renderList();
  }
}

// Ask the server for the total again, soon (a job changed in a way the list cannot count).
function recountSoon() {
  if (state.recountTimer !== null) return;
  state.recountTimer = setTimeout(async () => {
    state.recountTimer = null;
    const view = state.view;
    const mark = view.adjusted;
    try {
      const page = await api(jobsQuery(0, 1));
      if (view === state.view) { takeTotal(page, mark); renderSummary(); }
    } catch (error) {
      failed(error);
    }
  }, RECOUNT_MS);
}

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

function renderSummary() {
  const view = state.view;
  const shown = state.listed.size;
  if (!view.loaded) {
    $("summary").textContent = "loading…";
  } else {
    const total = Math.max(view.total ?? shown, shown);
    const what = view.status ? `${view.status.toLowerCase()} jobs` : "jobs";
    const plus = view.totalIsLowerBound ? "+" : "";
    $("summary").textContent = total > shown ? `${shown} of ${total.toLocaleString("en")}${plus} ${what}`
      : `${total} ${total === 1 ? what.replace(/s$/, "") : what}`;
  }
  renderMore();
}

function renderMore() {
  const view = state.view;
  const left = Math.max(0, (view.total ?? 0) - state.listed.size);
  const more = view.loaded && !view.done && left > 0;
  const button = $("load-more");
  button.hidden = !more;
  button.disabled = view.loading;
  button.textContent = view.loading ? "Loading…" : `Load ${Math.min(PAGE, left)} more`;
  $("more-info").textContent = more ? `${plural(left, "older job")} not shown` : "";
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

function jobLink(job) { return `#/jobs/${encodeURIComponent(job.id)}`; }

// A job's row: at the top level (`job-row`) or under its expanded parent (`child-row`).
function makeRow(job, child = false) {
  const row = el("tr", { class: child ? "job child" : "job", tabindex: "0",
                         "data-testid": child ? "child-row" : "job-row", "data-job-id": job.id,
                         "data-parent-id": child ? job.parent_id : null },
    el("td", { class: "cell-job" },
      el("a", { class: "name", href: jobLink(job), "data-testid": "job-name" }),
      el("span", { class: "sub" }),
      kidsToggle(job)),
    el("td", { class: "cell-status" }, el("span", { class: "status", "data-testid": "job-status" })),
    el("td", { class: "cell-progress" }, progressBar("job-bar")),
    el("td", { class: "stage", "data-testid": "job-stage", "data-label": "Stage" }),
    el("td", { class: "message", "data-testid": "job-message" }),
    el("td", { class: "eta", "data-testid": "job-eta", "data-label": "ETA" }),
    el("td", { class: "updated", "data-testid": "job-updated", "data-label": "Updated" }),
    el("td", { class: "actions" }, cancelControl(job.id, "row")));
  row.addEventListener("click", (event) => {
    if (event.target.closest("a, button, .cancel")) return;
    location.hash = jobLink(job);
  });
  row.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.target === row) location.hash = jobLink(job);
  });
  return row;
}

// "k of n children ended" under a parent's name; a button that shows or hides them.
function kidsToggle(job) {
  const button = el("button", { type: "button", class: "kids-toggle", "aria-expanded": "false",
                                "data-testid": "job-children" });
  button.hidden = true;
  button.addEventListener("click", () => toggleFamily(job.id));
  return button;
}

function kids(n) { return `${n} ${n === 1 ? "child" : "children"}`; }

function childrenText(job) {
  const failed = job.children_failed ? `, ${job.children_failed} failed` : "";
  return `${job.children_done} of ${kids(job.children)} ended${failed}`;
}

function fillRow(row, job) {
  row.dataset.status = job.status;
  row.querySelector(".name").textContent = job.name || job.id;
  row.querySelector(".sub").textContent = [job.job_type, job.id.slice(0, 12)].filter(Boolean).join(" · ");
  const toggle = row.querySelector(".kids-toggle");
  const parent = job.children > 0 && !row.classList.contains("child");
  toggle.hidden = !parent;
  if (parent) {
    const open = state.expanded.has(job.id);
    toggle.textContent = childrenText(job);
    toggle.setAttribute("aria-expanded", String(open));
    toggle.setAttribute("aria-label", `${childrenText(job)}: ${open ? "hide" : "show"} the children of ${job.name || job.id}`);
  }
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
  syncCancel(row.querySelector(".cancel"), job);
}

// Shown under its parent rather than at the top level: the parent is listed too.
function underParent(job) {
  return Boolean(job.parent_id) && state.listed.has(job.parent_id);
}

function renderList() {
  const body = $("job-rows");
  const jobs = [...state.jobs.values()].filter(listed).sort(order);
  state.listed = new Set(jobs.map((job) => job.id));
  const nodes = [];
  const keep = { rows: new Set(), childRows: new Set(), moreRows: new Set() };
  const node = (map, id, make) => {
    let row = state[map].get(id);
    if (!row) { row = make(); state[map].set(id, row); }
    keep[map].add(id);
    nodes.push(row);
    return row;
  };
  for (const job of jobs) {
    if (underParent(job)) continue;
    fillRow(node("rows", job.id, () => makeRow(job)), job);
    if (!(job.children > 0 && state.expanded.has(job.id))) continue;
    const family = state.families.get(job.id);
    for (const id of family ? family.ids : []) {
      const kid = state.jobs.get(id);
      fillRow(node("childRows", id, () => makeRow(kid, true)), kid);
    }
    if (!family || family.loading || family.error || family.ids.length < family.total) {
      fillMoreRow(node("moreRows", job.id, () => makeMoreRow(job.id)), job.id);
    }
  }
  for (const map of Object.keys(keep)) {
    for (const [id, row] of state[map]) {
      if (!keep[map].has(id)) { row.remove(); state[map].delete(id); }
    }
  }
  let previous = null;
  for (const row of nodes) {
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (expected !== row) body.insertBefore(row, expected);
    previous = row;
  }
  $("empty").hidden = jobs.length > 0 || !state.view.loaded;
  renderSummary();
}

// -- parent jobs: their children, a page at a time -----------------------------------

function makeMoreRow(parentId) {
  const button = el("button", { type: "button", class: "kids-more", "data-testid": "kids-more" });
  button.addEventListener("click", () => loadFamily(parentId));
  return el("tr", { class: "kids-more-row", "data-testid": "kids-more-row", "data-parent-id": parentId },
    el("td", { colspan: "8" }, el("span", { class: "kids-info muted", role: "status" }), button));
}

function fillMoreRow(row, parentId) {
  describeFamily(state.families.get(parentId), row.querySelector(".kids-info"),
                 row.querySelector(".kids-more"));
}

// "Loading children…", the error, or how many are not shown yet and a button for them.
function describeFamily(family, info, button) {
  const left = family && family.total !== null ? Math.max(0, family.total - family.ids.length) : 0;
  if (!family || family.loading) {
    info.textContent = family && family.ids.length ? "" : "Loading children…";
    button.textContent = "Loading…";
    button.disabled = true;
    button.hidden = !(family && family.ids.length);
    return;
  }
  button.disabled = false;
  if (family.error) {
    info.textContent = `The children could not be loaded: ${family.error}`;
    button.textContent = "Try again";
    button.hidden = false;
  } else {
    info.textContent = left ? `${left} more ${left === 1 ? "child" : "children"} not shown` : "";
    button.textContent = `Show ${Math.min(KIDS_PAGE, left)} more`;
    button.hidden = left === 0;
  }
}

function toggleFamily(parentId) {
  if (state.expanded.has(parentId)) state.expanded.delete(parentId);
  else {
    state.expanded.add(parentId);
    if (!state.families.has(parentId)) loadFamily(parentId);
  }
  renderList();
}

// The next page of a parent's children (GET /jobs/{id}/children), in the canvas's order.
async function loadFamily(parentId) {
  let family = state.families.get(parentId);
  if (!family) {
    family = { ids: [], total: null, loading: false, error: "" };
    state.families.set(parentId, family);
  }
  if (family.loading) return;
  family.loading = true;
  family.error = "";
  renderFamily(parentId);
  try {
    const query = `limit=${KIDS_PAGE}&offset=${family.ids.length}`;
    const page = await api(`jobs/${encodeURIComponent(parentId)}/children?${query}`);
    if (state.families.get(parentId) !== family) return;  // another key since
    for (const kid of items(page)) {
      accept(kid);
      if (!family.ids.includes(kid.id)) family.ids.push(kid.id);
    }
    family.total = Math.max(page.total, family.ids.length);
  } catch (error) {
    if (error instanceof Unauthorized && error.status === 401) failed(error);
    family.error = error.message || String(error);
  } finally {
    family.loading = false;
    renderFamily(parentId);
  }
}

function renderFamily(parentId) {
  if (state.expanded.has(parentId)) renderList();
  if (state.detailId === parentId) renderDetailKids();
}

// A job from the stream: new, changed, or one the list has not loaded (further down).
function updateJob(job) {
  const before = state.jobs.get(job.id);
  const wasListed = before !== undefined && listed(before);
  const wasMatching = before !== undefined && matches(before);
  if (!accept(job)) return;
  const view = state.view;
  const isListed = listed(job);
  if (view.total !== null) {
    let change = 0;
    if (wasListed !== isListed) change = isListed ? 1 : -1;  // arrived, or entered/left the filter
    else if (!isListed && view.status) {  // further down, under a status filter
      if (before === undefined) recountSoon();  // did it enter or leave the filter? ask
      else if (wasMatching !== matches(job)) change = matches(job) ? 1 : -1;
    }
    if (change) { view.total += change; view.adjusted += 1; }
  } else {
    recountSoon();  // the first page is on its way: its count may predate this job
  }
  const row = state.rows.get(job.id);
  const under = isListed && underParent(job);
  if (row && isListed && !under) fillRow(row, job);
  else if (wasListed !== isListed || (isListed && !under) || row) renderList();
  const childRow = state.childRows.get(job.id);
  if (childRow) fillRow(childRow, job);
  renderSummary();
  if (job.id === state.detailId) {
    renderDetail(job);
    loadTimeline();
  }
  const item = state.kidItems.get(job.id);
  if (item && job.parent_id === state.detailId) fillKidItem(item, job);
}

// -- cancelling a job ----------------------------------------------------------------

// "Cancel", then an in-page confirmation ("Yes, cancel" / "No"), then POST .../cancel. The
// note (the server's answer when it refuses) stays when the button goes, the job ended.
let controls = 0;
function cancelControl(jobId, where) {
  const detail = where === "detail";
  const promptId = `cancel-prompt-${++controls}`;
  const start = el("button", { type: "button", class: "cancel-start",
                               "data-testid": detail ? "cancel-job" : "row-cancel" },
                   detail ? "Cancel job" : "Cancel");
  const prompt = el("span", { class: "cancel-prompt", id: promptId });
  const yes = el("button", { type: "button", class: "cancel-yes", "data-testid": "cancel-confirm" },
                 "Yes, cancel");
  const no = el("button", { type: "button", class: "cancel-no", "data-testid": "cancel-keep" },
                detail ? "No, keep it" : "No");
  const confirm = el("span", { class: "cancel-confirm", role: "group", "aria-labelledby": promptId,
                               "data-testid": "cancel-confirmation" }, prompt, yes, no);
  const note = el("span", { class: "cancel-note", role: "alert", "data-testid": "cancel-message" });
  const control = el("div", { class: `cancel cancel-${where}`, "data-job-id": jobId }, start, confirm, note);
  confirm.hidden = true;
  note.hidden = true;
  control.dataset.step = "idle";  // idle | confirming | sending

  start.addEventListener("click", () => {
    setNote(control, "");
    control.dataset.step = "confirming";
    syncCancel(control, state.jobs.get(control.dataset.jobId));
    yes.focus();
  });
  const dismiss = () => {
    control.dataset.step = "idle";
    syncCancel(control, state.jobs.get(control.dataset.jobId));
    start.focus();
  };
  no.addEventListener("click", dismiss);
  confirm.addEventListener("keydown", (event) => {
    if (event.key === "Escape") { event.stopPropagation(); dismiss(); }
  });
  yes.addEventListener("click", () => cancelJob(control));
  return control;
}

function setNote(control, text, error = false) {
  const note = control.querySelector(".cancel-note");
  note.textContent = text;
  note.classList.toggle("error", error);
  note.hidden = !text;
  syncShown(control);
}

function syncShown(control) {
  const shown = [...control.children].some((child) => !child.hidden);
  control.dataset.shown = shown ? "1" : "0";
}

// The control as the job now is: nothing to cancel once it has ended.
function syncCancel(control, job) {
  if (!control || !job) return;
  control.dataset.jobId = job.id;
  const name = job.name || job.id;
  const open = !TERMINAL.has(job.status);
  const step = control.dataset.step;
  if (!open && step === "confirming") {
    setNote(control, `It ended meanwhile (${job.status}); there is nothing to cancel.`);
  }
  if (!open && step !== "sending") control.dataset.step = "idle";
  const now = control.dataset.step;
  const start = control.querySelector(".cancel-start");
  const focused = control.contains(document.activeElement);
  start.hidden = !open || now !== "idle";
  start.setAttribute("aria-label", `Cancel job ${name}`);
  control.querySelector(".cancel-confirm").hidden = now === "idle";
  control.querySelector(".cancel-prompt").textContent = control.classList.contains("cancel-detail")
    ? (job.children > 0 ? "Cancel this job and its children still running? Their tasks stop at their next progress report."
                        : "Cancel this job? A task still running it stops at its next progress report.")
    : "Cancel this job?";
  const yes = control.querySelector(".cancel-yes");
  yes.disabled = now === "sending";
  yes.textContent = now === "sending" ? "Cancelling…" : "Yes, cancel";
  yes.setAttribute("aria-label", now === "sending" ? `Cancelling ${name}` : `Yes, cancel ${name}`);
  control.querySelector(".cancel-no").disabled = now === "sending";
  syncShown(control);
  if (focused && !open && now === "idle") keepFocus(control);  // it ended: its buttons went
}

async function cancelJob(control) {
  const id = control.dataset.jobId;
  const hadFocus = control.contains(document.activeElement);
  control.dataset.step = "sending";
  syncCancel(control, state.jobs.get(id));
  try {
    const job = await api(`jobs/${encodeURIComponent(id)}/cancel`, "POST");
    control.dataset.step = "idle";
    setNote(control, control.closest("tr") ? "" : "Cancelled.");  // a row says so in its status
    updateJob(job);  // CANCELLED now; the stream says so too
  } catch (error) {
    control.dataset.step = "idle";
    if (error instanceof Unauthorized && error.status === 401) { failed(error); return; }
    setNote(control, error.message || String(error), true);
    syncCancel(control, state.jobs.get(id));
    if (error instanceof HttpError) refreshJob(id);  // 409: it ended; show how
  }
  if (hadFocus) keepFocus(control);
}

// The focus was on "Yes, cancel", which went: Cancel again if shown, else the row.
function keepFocus(control) {
  const active = document.activeElement;
  if (active && active !== document.body && !control.contains(active)) return;
  const start = control.querySelector(".cancel-start");
  if (!start.hidden) start.focus();
  else if (control.closest("tr")) control.closest("tr").focus();
}

// The job as the server has it now (after a refused cancel): the stream may lag.
async function refreshJob(id) {
  try {
    updateJob(await api(`jobs/${encodeURIComponent(id)}`));
  } catch (error) {
    if (error instanceof Unauthorized && error.status === 401) failed(error);
  }
}

function changeFilter() {
  state.view = newView($("status-filter").value);
  renderList();
  loadJobs().catch(failed);
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
  syncCancel($("detail-actions").querySelector(".cancel"), job);
  const list = $("detail-fields");
  list.replaceChildren();
  field(list, "status", job.status);
  if (job.children > 0) field(list, "children", childrenText(job));
  if (job.parent_id) {
    const parent = state.jobs.get(job.parent_id);
    const dd = el("dd", { "data-field": "parent" },
      el("a", { href: jobLink({ id: job.parent_id }), "data-testid": "detail-parent" },
         parent ? parent.name || parent.id : job.parent_id));
    list.append(el("dt", {}, "parent"), dd);
  }
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
  renderDetailKids();
}

// The open parent's children, each with its bar, a page at a time.
function renderDetailKids() {
  const job = state.jobs.get(state.detailId);
  const section = $("detail-kids");
  section.hidden = !(job && job.children > 0);
  if (section.hidden) return;
  const family = state.families.get(job.id);
  if (!family) { loadFamily(job.id); return; }
  $("kids-summary").textContent = childrenText(job);
  const list = $("kid-list");
  const keep = new Set(family.ids);
  for (const [id, item] of state.kidItems) {
    if (!keep.has(id)) { item.remove(); state.kidItems.delete(id); }
  }
  let previous = null;
  for (const id of family.ids) {
    let item = state.kidItems.get(id);
    if (!item) { item = makeKidItem(id); state.kidItems.set(id, item); }
    fillKidItem(item, state.jobs.get(id));
    const expected = previous ? previous.nextSibling : list.firstChild;
    if (expected !== item) list.insertBefore(item, expected);
    previous = item;
  }
  describeFamily(family, $("kids-info"), $("kids-more"));
}

function makeKidItem(id) {
  return el("li", { class: "kid", "data-testid": "detail-child", "data-job-id": id },
    el("a", { class: "name", href: jobLink({ id }), "data-testid": "job-name" }),
    el("span", { class: "status", "data-testid": "job-status" }),
    progressBar("kid-bar"),
    el("span", { class: "kid-message muted", "data-testid": "job-message" }));
}

function fillKidItem(item, job) {
  item.dataset.status = job.status;
  item.querySelector(".name").textContent = job.name || job.id;
  const status = item.querySelector(".status");
  status.textContent = job.status;
  status.dataset.status = job.status;
  setProgress(item.querySelector(".progress"), job);
  const message = job.error && job.status === "FAILED" ? job.error : job.summary || job.stage || "";
  item.querySelector(".kid-message").textContent = message;
}

function timelineItem(event) {
  const what = event.percentage != null ? percentText(event.percentage) : event.status || "";
  return el("li", { "data-testid": "timeline-item", "data-kind": event.kind, "data-event-id": event.id },
    el("span", { class: "when" }, new Date(event.at).toLocaleTimeString()),
    el("span", { class: "what" }, what),
    el("span", { class: "chip" }, event.kind === "progress" ? event.source : `${event.kind} · ${event.source}`),
    el("span", { class: "text" }, event.message || ""));
}

// The history list: one group per run of rows in the same stage, newest on top. Only the
// newest group starts open; the others sum up their rows until opened.
const groupRows = new WeakMap();  // group <li> -> its history rows, oldest first

function stageGroup(stage) {
  const summary = el("summary", {},
    el("span", { class: "group-stage", "data-testid": "stage-group-name" }, stage || "no stage"),
    el("span", { class: "group-info muted", "data-testid": "stage-group-info" }));
  summary.addEventListener("click", () => { group.dataset.touched = "1"; });
  const details = el("details", {}, summary, el("ol", { class: "timeline" }));
  details.open = true;
  const group = el("li", { class: "group", "data-testid": "stage-group", "data-stage": stage }, details);
  groupRows.set(group, []);
  return group;
}

function describeGroup(group) {
  const rows = groupRows.get(group);
  const first = rows[0];
  const last = rows[rows.length - 1];
  const percentages = rows.filter((row) => row.percentage != null).map((row) => row.percentage);
  const parts = [plural(rows.length, "update")];
  if (percentages.length) {
    const low = percentages[0];
    const high = percentages[percentages.length - 1];
    parts.push(low === high ? percentText(low) : `${percentText(low)} → ${percentText(high)}`);
  }
  const span = (Date.parse(last.at) - Date.parse(first.at)) / 1000;
  parts.push(`${new Date(first.at).toLocaleTimeString()}${span >= 1 ? `, ${duration(span)}` : ""}`);
  group.querySelector(".group-info").textContent = parts.join(" · ");
}

function addToTimeline(event) {
  const list = $("timeline");
  const stage = event.stage || "";
  let group = list.firstElementChild;
  if (!group || group.dataset.stage !== stage) {
    if (group && !group.dataset.touched) group.querySelector("details").open = false;
    group = stageGroup(stage);
    list.prepend(group);
  }
  groupRows.get(group).push(event);
  group.querySelector("ol").prepend(timelineItem(event));
  describeGroup(group);
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
          state.history.push(event);
          addToTimeline(event);
          after = event.id;
        }
        state.timelineAfter = after;
        if (page.next_after_id == null) break;
      }
      renderChart();
    } while (state.timelineAgain);
  } catch (error) {
    if (gen === state.timelineGen) failed(error);
  } finally {
    if (gen === state.timelineGen) state.timelineBusy = false;
  }
}

// -- the progress chart: inline SVG, drawn with DOM calls (no style attributes: the CSP) --

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

// Runs of rows in the same stage: [{stage, from, to}] in time (ms), for a job with no plan.
function stageRuns(events, end) {
  const runs = [];
  for (const event of events) {
    const at = Date.parse(event.at);
    const last = runs[runs.length - 1];
    if (last && last.stage === (event.stage || "")) continue;
    if (last) last.to = at;
    runs.push({ stage: event.stage || "", from: at, to: end });
  }
  return runs.filter((run) => run.stage);
}

function renderChart() {
  const figure = $("chart");
  const plot = $("chart-plot");
  const events = state.history;
  const job = state.jobs.get(state.detailId);
  figure.hidden = events.length === 0;
  plot.replaceChildren();
  if (!events.length) return;

  const width = Math.max(240, Math.floor(plot.clientWidth || 600));
  const height = width < 520 ? 170 : 210;
  const margin = { top: 8, right: 10, bottom: 22, left: 40 };
  const w = width - margin.left - margin.right;
  const h = height - margin.top - margin.bottom;
  const times = events.map((event) => Date.parse(event.at));
  const t0 = times[0];
  const t1 = Math.max(times[times.length - 1], t0 + 1);
  const x = (t) => margin.left + ((t - t0) / (t1 - t0)) * w;
  const y = (p) => margin.top + (1 - Math.min(100, Math.max(0, p)) / 100) * h;
  const round = (n) => Math.round(n * 10) / 10;

  const first = events.find((event) => event.percentage != null);
  const lastRow = [...events].reverse().find((event) => event.percentage != null);
  const label = `Progress over time: ${plural(events.length, "history row")}` +
    (first ? `, ${percentText(first.percentage)} to ${percentText(lastRow.percentage)}` : "") +
    ` in ${duration((t1 - t0) / 1000)}`;
  const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
                            "aria-label": label, "data-testid": "chart-svg" },
    svg("title", {}, label));

  // Stage bands: the plan's share of the overall percentage (horizontal), or else the
  // time the history spent in each stage (vertical).
  const plan = Array.isArray(job && job.stages) ? job.stages : [];
  const bands = svg("g", { class: "bands" });
  if (plan.length) {
    plan.forEach(([name, start, end], i) => {
      const top = y(end);
      const tall = y(start) - top;
      bands.append(svg("rect", { class: `band band-${i % 2}`, x: margin.left, y: round(top),
                                 width: w, height: round(tall), "data-testid": "chart-band",
                                 "data-stage": name },
        svg("title", {}, `${name}: ${round(start)}–${round(end)}% of the job`)));
      if (tall >= 12) {
        bands.append(svg("text", { class: "band-label", x: margin.left + w - 4,
                                   y: round(top + Math.min(tall / 2, 12) + 4), "text-anchor": "end" }, name));
      }
    });
  } else {
    stageRuns(events, t1).forEach((run, i) => {
      const left = x(run.from);
      const wide = Math.max(1, x(run.to) - left);
      bands.append(svg("rect", { class: `band band-${i % 2}`, x: round(left), y: margin.top,
                                 width: round(wide), height: h, "data-testid": "chart-band",
                                 "data-stage": run.stage },
        svg("title", {}, `${run.stage}: ${duration((run.to - run.from) / 1000)}`)));
      if (wide >= run.stage.length * 6.5 + 8) {
        bands.append(svg("text", { class: "band-label", x: round(left + 4), y: margin.top + 12 }, run.stage));
      }
    });
  }
  root.append(bands);

  const axis = svg("g", { class: "axis" });
  for (const p of [0, 25, 50, 75, 100]) {
    axis.append(svg("line", { class: "grid", x1: margin.left, x2: margin.left + w, y1: round(y(p)), y2: round(y(p)) }));
    if (p % 50 === 0) {
      axis.append(svg("text", { x: margin.left - 6, y: round(y(p) + 4), "text-anchor": "end" }, `${p}%`));
    }
  }
  const bottom = height - 6;
  axis.append(svg("text", { x: margin.left, y: bottom }, new Date(t0).toLocaleTimeString()));
  axis.append(svg("text", { x: margin.left + w, y: bottom, "text-anchor": "end" },
                  new Date(t1).toLocaleTimeString()));
  if (w > 300) {
    axis.append(svg("text", { x: margin.left + w / 2, y: bottom, "text-anchor": "middle" },
                    duration((t1 - t0) / 1000)));
  }
  root.append(axis);

  // One point per history row; a row without a percentage (a status change) keeps the last.
  let p = first ? first.percentage : 0;
  const points = events.map((event, i) => {
    if (event.percentage != null) p = event.percentage;
    return [round(x(times[i])), round(y(p))];
  });
  root.append(svg("polyline", { class: "line", points: points.map((pt) => pt.join(",")).join(" "),
                                "data-testid": "chart-line", "data-points": points.length }));
  events.forEach((event, i) => {
    if (event.kind === "progress") return;
    root.append(svg("circle", { class: "marker", "data-kind": event.kind, cx: points[i][0],
                                cy: points[i][1], r: 4 },
      svg("title", {}, `${event.kind}: ${event.message || event.status || ""}`)));
  });
  const [lx, ly] = points[points.length - 1];
  root.append(svg("circle", { class: "now", cx: lx, cy: ly, r: 3 }));
  plot.append(root);

  $("chart-caption").textContent = plan.length
    ? "Shaded: each stage's share of the job, from its stage plan."
    : stageRuns(events, t1).length ? "Shaded: the time spent in each stage." : "";
}

function renderDetailChartSoon() {
  if (state.chartFrame) return;
  state.chartFrame = requestAnimationFrame(() => {
    state.chartFrame = null;
    if (state.detailId && !$("detail").hidden) renderChart();
  });
}

async function openDetail(id) {
  state.detailId = id;
  state.timelineGen += 1;
  state.timelineBusy = false;
  state.timelineAfter = null;
  state.history = [];
  $("timeline").replaceChildren();
  if ($("detail").dataset.jobId !== id) {
    $("kid-list").replaceChildren();
    state.kidItems.clear();
    $("detail-kids").hidden = true;
    const control = $("detail-actions").querySelector(".cancel");
    control.dataset.step = "idle";
    setNote(control, "");
    control.querySelector(".cancel-start").hidden = true;  // until the job is known
    control.querySelector(".cancel-confirm").hidden = true;
  }
  renderChart();
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
  // Another key may read other jobs: nothing of the last one's list is kept.
  for (const rows of [state.rows, state.childRows, state.moreRows]) {
    for (const row of rows.values()) row.remove();
    rows.clear();
  }
  state.listed.clear();
  state.families.clear();
  state.expanded.clear();
  $("kid-list").replaceChildren();
  state.kidItems.clear();
  state.jobs.clear();
  state.samples.clear();
  state.received.clear();
  state.serverEta.clear();
  state.view = newView($("status-filter").value);
  route();
  loadJobs().then(connect, failed);
}

function tick() {
  for (const [id, row] of [...state.rows, ...state.childRows]) {
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
  $("status-filter").addEventListener("change", changeFilter);
  $("load-more").addEventListener("click", () => loadMore().catch(failed));
  $("detail-actions").append(cancelControl("", "detail"));
  $("kids-more").addEventListener("click", () => { if (state.detailId) loadFamily(state.detailId); });
  window.addEventListener("resize", renderDetailChartSoon);
  window.addEventListener("hashchange", route);
  setInterval(tick, 1000);
  setInterval(refreshServerEtas, SERVER_ETA_REFRESH_MS);
  if (state.key) start();
  else askForKey("");
});
