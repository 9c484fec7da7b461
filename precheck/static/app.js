// The Precheck page: upload, start runs, follow them live. One SSE connection at a time:
// the audit feed on the home page, the run's own stream (changes and log) on a run page.

import Panzoom from "./panzoom.es.js"; // vendored from the npm registry, MIT (panzoom.LICENSE.txt)
import { clearChart, drawResources, drawSteps, sizeText } from "./charts.js";

const $ = (id) => document.getElementById(id);
const KEY = "precheck.apiKey";
let source = null; // the one open EventSource

// The type tags of the events the home page follows, as the server sends them on the audit
// feed (`event:` of each message). tests/test_page.py checks these lists against the code's.
const RUN_EVENTS = ["run.queued", "run.started", "run.progressed", "run.cancel-requested",
  "run.timed-out", "run.exited", "run.outputs-stored", "run.finished", "run.cancelled",
  "run.failed-to-start", "run.finish-failed", "run.retried", "run.deleted", "run.files-pruned",
  "run.resources-peaked", "run.reused"];
const UPLOAD_EVENTS = [
  "upload.received", "upload.expired", "upload.deleted", "upload.inspected", "upload.inspection-failed",
];

function apiKey() { return sessionStorage.getItem(KEY) || ""; }

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (response.status === 401) { askForKey(body401(apiKey())); throw new Error(body401(apiKey())); }
  const body = response.headers.get("Content-Type")?.includes("json") ? await response.json() : null;
  if (!response.ok) {
    const err = new Error(body?.message || `${response.status} ${response.statusText}`);
    err.status = response.status;
    err.checks = body?.checks; // 422: the pre-flight checks the layout fails
    throw err;
  }
  return body;
}

// EventSource cannot send headers: streams take the key as a query value.
function streamUrl(path) {
  const key = apiKey();
  const sep = path.includes("?") ? "&" : "?";
  return key ? `${path}${sep}access_token=${encodeURIComponent(key)}` : path;
}

function openStream(url, handlers) {
  if (source) source.close();
  source = new EventSource(streamUrl(url));
  source.onopen = () => { $("conn").textContent = "live"; $("conn").classList.add("live"); };
  source.onerror = () => { $("conn").textContent = "reconnecting"; $("conn").classList.remove("live"); };
  for (const [name, fn] of Object.entries(handlers)) source.addEventListener(name, fn);
  return source;
}

function closeStream(label = "offline") {
  if (source) source.close();
  source = null;
  $("conn").textContent = label;
  $("conn").classList.remove("live");
}

function body401(key) { return key ? "that API key was refused: enter another" : "an API key is needed"; }

function askForKey(why) {
  $("key-form").hidden = false;
  $("key-why").textContent = why;
  $("key").focus();
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  $("key-form").hidden = true;
  $("forget-key").hidden = false;
  // Messages that asked for a key are out of date now.
  for (const id of ["upload-status", "run-status", "run-action-status"]) setStatus($(id), "");
  route(true);
});
$("forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY); location.reload(); });

function setStatus(el, text, error = false) { el.textContent = text; el.classList.toggle("error", error); }

// Home page -----------------------------------------------------------------------------------

$("upload-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  const xhr = new XMLHttpRequest(); // fetch has no upload progress
  xhr.open("POST", "/api/v1/uploads");
  for (const [k, v] of Object.entries(headers())) xhr.setRequestHeader(k, v);
  const bar = $("upload-progress");
  bar.hidden = false;
  bar.classList.remove("error");
  bar.value = 0;
  setStatus($("upload-status"), "");
  const failed = (text) => { bar.hidden = true; setStatus($("upload-status"), text, true); };
  xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) bar.value = (100 * ev.loaded) / ev.total; };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
    if (xhr.status === 401) { askForKey(body401(apiKey())); failed(body401(apiKey())); return; }
    if (xhr.status !== 200) { failed(body.message || `upload failed (${xhr.status})`); return; }
    bar.value = 100;
    setStatus($("upload-status"), `uploaded ${body.Name}: ${body.Size} bytes, sha256 ${body.Checksums.sha256.slice(0, 12)}…`);
    if (!$("top-cell").value || autoTop) {
      $("top-cell").value = body.Name.split(".")[0].replace(/[^A-Za-z0-9_$-]/g, "_");
      autoTop = true;
    }
    loadUploads(body.Id);
  };
  xhr.onerror = () => failed("upload failed: connection lost");
  xhr.send(form);
});

async function loadUploads(select) {
  const uploads = await api("/api/v1/uploads");
  const el = $("upload-id");
  el.innerHTML = "";
  uploadsById = new Map();
  for (const u of uploads.filter((u) => !u.State.Expired)) {
    const option = new Option(`${u.Name} (${u.Id.slice(0, 8)})`, u.Id);
    el.add(option);
    uploadsById.set(u.Id, u);
  }
  if (select) el.value = select;
  showLayout();
}

// Pre-flight: once the server has read the chosen upload's layout, the top cell field offers
// its top cells, the slot its die fits is chosen, and the checks for the top cell and slot as
// they stand are shown before Start.
let uploadsById = new Map();
let autoTop = false; // the top cell field holds a guess of the page's, not the user's choice
const preselected = new Set(); // uploads whose top cell and slot were already filled in
let preflightAsked = 0;

function showLayout() {
  const u = uploadsById.get($("upload-id").value);
  const layout = u?.Layout;
  const list = $("top-cells");
  list.innerHTML = "";
  for (const c of layout?.TopCells || []) list.append(new Option(c.Name));
  if (layout?.Status === "done" && !preselected.has(u.Id)) {
    preselected.add(u.Id);
    if (layout.TopCells.length === 1 && (autoTop || !$("top-cell").value)) {
      $("top-cell").value = layout.TopCells[0].Name;
      autoTop = true;
    }
    if (layout.Slot) $("slot").value = layout.Slot;
  }
  checkPreflight();
}

function checkDetails(checks) {
  const ul = $("preflight-checks");
  ul.innerHTML = "";
  for (const c of checks || []) {
    const li = document.createElement("li");
    li.dataset.code = c.code;
    li.textContent = c.message;
    ul.append(li);
  }
}

function showPreflight(kind, text, checks = []) {
  const box = $("preflight");
  box.hidden = !kind;
  box.className = `preflight ${kind || ""}`;
  $("preflight-status").textContent = text;
  checkDetails(checks);
}

async function checkPreflight() {
  const uploadId = $("upload-id").value;
  const top = $("top-cell").value;
  const asked = ++preflightAsked;
  const u = uploadsById.get(uploadId);
  if (!u) { showPreflight(null, ""); return; }
  if (u.Layout.Status === "pending") { showPreflight("unknown", "Pre-flight: reading the layout…"); return; }
  if (u.Layout.Status === "failed") {
    showPreflight("unknown", `Pre-flight could not run: ${u.Layout.Error}. The precheck will say more.`);
    return;
  }
  if (!$("top-cell").checkValidity()) { showPreflight("unknown", "Pre-flight: name the top cell."); return; }
  const query = new URLSearchParams({ top_cell: top, slot: $("slot").value });
  try {
    const result = await api(`/api/v1/uploads/${encodeURIComponent(uploadId)}/preflight?${query}`);
    if (asked !== preflightAsked) return; // a newer question is on its way
    if (result.Passed) {
      showPreflight("passed", "Pre-flight passed: top cell, database unit, die size and origin.");
    } else if (result.Passed === false) {
      const n = result.Checks.length;
      showPreflight("failed", `Pre-flight: ${n} check${n > 1 ? "s" : ""} the precheck would fail:`, result.Checks);
    }
  } catch (err) {
    if (asked === preflightAsked) showPreflight("unknown", `Pre-flight: ${err.message}`);
  }
}

$("upload-id").addEventListener("change", showLayout);
$("top-cell").addEventListener("input", () => { autoTop = false; checkPreflight(); });
$("slot").addEventListener("change", () => checkPreflight());

$("run-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  setStatus($("run-status"), "");
  try {
    const run = await api("/api/v1/prechecks", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        upload_id: $("upload-id").value, top_cell: $("top-cell").value, die_id: $("die-id").value,
        slot: $("slot").value, cob: $("cob").checked,
        preflight: $("preflight-warn").checked ? "warn" : "enforce",
      }),
    });
    location.hash = `#/runs/${run.Id}`;
  } catch (err) {
    if (err.checks) {
      showPreflight("failed", "Not started: the layout fails pre-flight checks the precheck would fail:", err.checks);
      setStatus($("run-status"), "not started: fix the layout, or tick \"start even if pre-flight fails\"", true);
    } else {
      setStatus($("run-status"), err.message, true);
    }
  }
});

function progressText(doc) {
  return doc.Progress ? `step ${doc.Progress.Step} of ${doc.Progress.Total}: ${doc.Progress.Name}` : "";
}

// A failed run's class (design: the layout; system: worth retrying) and reason.
function failureText(doc) {
  if (doc.State.Status !== "failed") return "";
  const r = doc.Result;
  return `${r?.Classification || "system"}: ${doc.State.Error}${r?.FailedStep ? ` (${r.FailedStep})` : ""}`;
}

async function loadRuns() {
  const [runs, queue] = await Promise.all([api("/api/v1/prechecks"), api("/api/v1/queue")]);
  $("queue-summary").textContent = `${queue.queued} queued, ${queue.running} running of ${queue.max_concurrent}`;
  const body = $("runs").tBodies[0];
  body.innerHTML = "";
  for (const r of runs) {
    const tr = body.insertRow();
    tr.dataset.id = r.Id;
    const cells = [r.Id.slice(0, 12), r.Config.Labels.top_cell, "", r.Queue.Position ?? "", progressText(r),
      failureText(r), new Date(r.Created).toLocaleString()];
    cells.forEach((text, i) => { tr.insertCell().textContent = text; });
    const badge = document.createElement("span");
    badge.className = `badge ${r.State.Status}`;
    badge.textContent = r.State.Status;
    tr.cells[2].append(badge);
    tr.onclick = () => { location.hash = `#/runs/${r.Id}`; };
  }
}

let refresh = null;
function refreshSoon() { clearTimeout(refresh); refresh = setTimeout(() => loadRuns().catch(() => {}), 100); }

// Who is signed in, and the role: a user sees only its own uploads and runs.
async function loadWhoami() {
  const me = await api("/api/v1/whoami");
  $("whoami").textContent = `${me.Name} (${me.Role})`;
}

async function showHome() {
  $("home").hidden = false;
  $("run-page").hidden = true;
  loadWhoami().catch(() => {});
  await Promise.all([loadUploads(), loadRuns()]);
  const feed = await api("/api/v1/events?limit=1&type=run.");
  // Follow run and upload events from now on; the lists are refreshed from the API on each.
  openStream(`/api/v1/events?follow=1&type=run.&type=upload.&lastEventId=${feed.head}`, {
    ...Object.fromEntries(RUN_EVENTS.map((t) => [t, refreshSoon])),
    ...Object.fromEntries(UPLOAD_EVENTS.map((t) => [t, () => loadUploads($("upload-id").value).catch(() => {})])),
  });
}

// Run page ------------------------------------------------------------------------------------
// A run's page is built from its one stream: the document on each change, the log line by line.
// Lines go into the page in batches, once a frame; the steps list is made from the step lines.

const ENDED = new Set(["completed", "failed", "cancelled"]);
// The precheck's steps in order, as names for the steps its log has not announced yet (with
// chip-on-board checks the pad mask check follows the size check). The log's own lines win.
const STEP_IDS = ["KLayout.ReadLayout", "KLayout.CheckTopLevel", "KLayout.CheckSize",
  "KLayout.GenerateID", "KLayout.Render", "KLayout.Density", "Checker.KLayoutDensity",
  "KLayout.ZeroArea", "Checker.ZeroArea", "KLayout.Antenna", "Checker.KLayoutAntenna", "Magic.DRC",
  "Checker.MagicDRC", "KLayout.DRC", "Checker.KLayoutDRC", "KLayout.WriteLayout"];
// `Running 'KLayout.CheckSize' at 'runs/<tag>/03-klayout-checksize'…` starts step 3.
const STEP_LINE = /Running '([A-Za-z0-9_.]+)' at '[^']*?(\d+)-[^'/]+'/;
// With `timestamps=1` a log message starts with the time the line was written.
const STAMP = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)) /;
const ERROR_LINE = /^\s*(ERROR\b|Error:|Traceback )/;
// The flow's logger lines: `[21:24:33] VERBOSE  Running ...…`, padded to the terminal's width
// with the source reference (`step.py:1138`) last; older images leave the time out.
const LOGGER_HEAD = /^(\[\d\d:\d\d:\d\d\] )?(DEBUG|VERBOSE|INFO|WARNING|ERROR|CRITICAL)( {2,}|$)/;
const SOURCE_REF = /^[\w.-]{1,200}\.py:\d{1,9}$/;
const RULE = "───"; // a rule line, `─── Check Slot Size ───`, heads each of the flow's steps
// ANSI sequences (an image run with `TERM` set colours its lines): SGR ones are shown as
// colours, the rest are dropped.
const ANSI = /\x1b\[([0-9;?]*)([A-Za-z])/g;
// The 256-colour palette past the 16 named ones: a 6x6x6 cube, then 24 greys.
const CUBE = [0, 95, 135, 175, 215, 255];
const CHUNK = 200; // log lines per block; blocks out of sight are not laid out
const BATCH = 5000; // log lines added to the page per frame at most
const MARKED = 5000; // search matches highlighted at once at most (all are counted)
const STATE_TEXT = { done: "done", running: "running", failed: "failed", cancelled: "cancelled",
  waiting: "waiting", "not-reached": "not reached", skipped: "skipped" };

let view = null; // the run page shown: its state, made anew on each visit

function newView(id) {
  return {
    id,
    base: `/api/v1/prechecks/${encodeURIComponent(id)}`,
    doc: null,
    estimate: null, // the run's Estimate: the document's, then the stream's estimate messages
    texts: [], // line number -> text
    els: [], // line number -> its element
    last: 0, // the last line number shown
    pending: [], // [line number, text, arrival time] not in the page yet
    scheduled: false,
    stamped: null, // whether the stream's lines carry their time (known from the first)
    section: null, // the log section lines are added to: {el, chunk, size}
    steps: new Map(), // step number -> {name, line, stamp, arrived}
    stepAt: new Map(), // step number -> when it began, from the run's events
    stepsKey: "",
    target: null, // the line the address points at
    targetEl: null,
    search: { q: "", re: null, matches: [], marked: new Set(), index: -1, current: null },
    autoTop: -1, // where following the end last scrolled the log to
    timer: null,
  };
}

function leaveRun() {
  if (view) clearInterval(view.timer);
  view = null;
}

// A time the API wrote (Docker's zero time is "never"), in ms.
function ms(iso) {
  if (!iso || iso.startsWith("0001-")) return null;
  const t = Date.parse(iso.replace(/(\.\d{3})\d+/, "$1"));
  return Number.isNaN(t) ? null : t;
}

function duration(t, whole = false) {
  if (t == null || t < 0) return "";
  if (t < 10000 && !whole) return `${(t / 1000).toFixed(1)}s`;
  const s = Math.floor(t / 1000);
  const pad = (x) => String(x).padStart(2, "0");
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60;
  if (h) return `${h}h ${pad(m)}m ${pad(s % 60)}s`;
  return m ? `${m}m ${pad(s % 60)}s` : `${s}s`;
}

function showTime(el, t) {
  el.textContent = t == null ? "–" : new Date(t).toLocaleString([], { dateStyle: "short", timeStyle: "medium" });
  el.title = t == null ? "" : new Date(t).toISOString();
}

function showDocument(doc) {
  const v = view;
  if (!v || doc.Id !== v.id) return;
  v.doc = doc;
  $("run-id").textContent = doc.Id;
  const state = $("run-state");
  state.textContent = doc.State.Status;
  state.className = `badge ${doc.State.Status}`;
  const labels = doc.Config.Labels;
  let summary = `${labels.top_cell}, die ${labels.die_id}, slot ${labels.slot}${labels.cob === "true" ? ", chip on board" : ""}`;
  summary += `; input ${doc.Input.Filename} (${doc.Input.Size} bytes)`;
  if (doc.State.Status === "queued") summary += `; queue position ${doc.Queue.Position} of ${doc.Queue.Length}`;
  $("run-summary").textContent = summary;
  if (doc.Progress) {
    $("run-progress").max = doc.Progress.Total;
    $("run-progress").value = doc.Progress.Step;
  }
  $("run-step").textContent = progressText(doc);
  const live = doc.State.Status === "queued" || doc.State.Status === "running";
  $("cancel-run").hidden = !live;
  $("rerun").hidden = !ENDED.has(doc.State.Status);
  $("recheck").hidden = !ENDED.has(doc.State.Status);
  $("recheck-of").hidden = !doc.RecheckOf;
  if (doc.RecheckOf) {
    $("recheck-of-link").textContent = doc.RecheckOf;
    $("recheck-of-link").href = `#/runs/${encodeURIComponent(doc.RecheckOf)}`;
  }
  showRecheck(doc.Recheck);
  showImage(doc);
  showTimes(v);
  showSteps(v);
}

// What a newer image means for this run: one is available, its re-check is queued, or the
// re-check kept or changed the verdict (`Recheck` of the run document).
const RECHECK_STATES = {
  "newer-image-available": (r) => `A newer image is available (${r.Image}); this verdict came from an older one.`,
  "recheck-queued": (r) => `A newer image is available: re-check ${r.Run} is queued or running.`,
  "rechecked-same": (r) => `Re-checked on a newer image (${r.Image}): same verdict, ${r.Verdict}.`,
  "verdict-changed": (r) => `Re-checked on a newer image (${r.Image}): the verdict changed, ${r.Before} before, ${r.Verdict} now.`,
  "recheck-failed": (r) => `Re-checked on a newer image (${r.Image || "not started"}): the re-check gave no verdict.`,
};

function showRecheck(recheck) {
  const text = recheck && RECHECK_STATES[recheck.State];
  $("recheck-state").hidden = !text;
  $("recheck-state").textContent = text ? text(recheck) : "";
  $("recheck-state").dataset.state = recheck ? recheck.State : "";
}

// Which image the attempt runs, pinned, and the command line that runs it elsewhere.
function showImage(doc) {
  const mine = doc.RunItYourself;
  $("image-card").hidden = !mine;
  if (!mine) return;
  $("run-image").textContent = doc.ImageDigest ? `${doc.ImageDigest} (id ${doc.Image})` : `${doc.Image} (built on the engine: no repo digest)`;
  $("run-layout").textContent = mine.Layout;
  if ($("run-command").textContent !== mine.Command) $("run-command").textContent = mine.Command;
}

async function copyCommand() {
  const text = $("run-command").textContent;
  try {
    await navigator.clipboard.writeText(text);
    setStatus($("copy-status"), "copied");
  } catch {
    // No clipboard for this page (an insecure origin): select it for the user to copy.
    getSelection().selectAllChildren($("run-command"));
    setStatus($("copy-status"), "selected: copy it with your keyboard");
  }
}

function showTimes(v) {
  const doc = v.doc;
  if (!doc) return;
  showEstimate(v);
  const created = ms(doc.Created), started = ms(doc.State.StartedAt), finished = ms(doc.State.FinishedAt);
  showTime($("run-created"), created);
  showTime($("run-started"), started);
  showTime($("run-finished"), finished);
  let label = "Elapsed", value = "–";
  if (doc.State.Status === "queued") {
    label = "Waiting";
    if (created != null) value = duration(Date.now() - created, true);
  } else if (started != null) {
    const end = finished ?? (ENDED.has(doc.State.Status) ? null : Date.now());
    if (end != null) value = duration(end - started, true);
  }
  $("run-elapsed-label").textContent = label;
  $("run-elapsed").textContent = value;
}

// "starts in about 40 min, ends about 14:10" (local time), from the run's `Estimate` (the
// document's, then the stream's `estimate` messages); the relative part is said anew every tick.
function estimateText(status, e, now) {
  const start = ms(e?.StartAt), end = ms(e?.EndAt);
  if (start == null || end == null || !(status === "queued" || status === "running")) return "";
  const ends = `ends about ${clockTime(end, now)}`;
  if (status !== "queued") return ends;
  const wait = Math.round((start - now) / 60000);
  return `${wait < 1 ? "starts about now" : `starts in about ${minutes(wait)}`}, ${ends}`;
}

function minutes(m) {
  if (m < 60) return `${m} min`;
  return m % 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : `${m / 60} h`;
}

// 14:10 on the same day; with the weekday on another.
function clockTime(t, now) {
  const d = new Date(t), pad = (x) => String(x).padStart(2, "0");
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return d.toDateString() === new Date(now).toDateString() ? hm : `${d.toLocaleDateString([], { weekday: "short" })} ${hm}`;
}

function showEstimate(v) {
  const text = estimateText(v.doc.State.Status, v.estimate, Date.now());
  $("run-estimate").hidden = !text;
  $("run-estimate").textContent = text;
}

function tick(v) {
  if (view !== v) { clearInterval(v.timer); return; }
  showTimes(v);
  showSteps(v);
  if (resourcesDue(v)) loadResources(v);
  if (v.doc && ENDED.has(v.doc.State.Status)) clearInterval(v.timer);
}

// Steps ---------------------------------------------------------------------------------------

function stepNames(doc, total) {
  const ids = doc?.Config.Labels.cob === "true"
    ? [...STEP_IDS.slice(0, 3), "KLayout.CheckPadMask", ...STEP_IDS.slice(3)] : STEP_IDS;
  return ids.length === total ? ids : [];
}

// When step `n` began: the log's own time, else the run's events, else when its line came.
function stepStart(v, n) {
  const s = v.steps.get(n);
  return s.stamp ?? v.stepAt.get(n) ?? s.arrived;
}

function stepRows(v) {
  const doc = v.doc;
  const status = doc?.State.Status ?? "queued";
  const ended = ENDED.has(status);
  const seen = [...v.steps.keys()].sort((a, b) => a - b);
  const last = seen.length ? seen[seen.length - 1] : 0;
  const total = Math.max(doc?.Progress?.Total || (doc?.Config.Labels.cob === "true" ? 17 : 16), last);
  const names = stepNames(doc, total);
  const failed = doc?.Result?.FailedStep;
  const failedSeen = Boolean(failed) && seen.some((n) => v.steps.get(n).name === failed);
  const finished = ms(doc?.State.FinishedAt);
  const rows = [];
  for (let n = 1; n <= total; n++) {
    const s = v.steps.get(n);
    if (!s) {
      const state = n < last ? "skipped" : ended ? "not-reached" : "waiting";
      rows.push({ n, name: names[n - 1] || `step ${n}`, state, line: null, time: null });
      continue;
    }
    let state = "done";
    if (!ended) {
      if (n === last) state = status === "running" ? "running" : "done";
    } else if (failedSeen ? s.name === failed : n === last && status !== "completed") {
      state = status === "cancelled" ? "cancelled" : "failed";
    }
    const next = seen.find((m) => m > n);
    const start = stepStart(v, n);
    const end = next ? stepStart(v, next) : ended ? finished : Date.now();
    rows.push({ n, name: s.name, state, line: s.line, time: start != null && end != null ? end - start : null });
  }
  return rows;
}

function showSteps(v) {
  if (view !== v) return;
  const rows = stepRows(v);
  const key = JSON.stringify(rows.map((r) => [r.name, r.state, r.line, duration(r.time)]));
  if (key === v.stepsKey) return;
  v.stepsKey = key;
  drawSteps($("step-chart"), rows);
  const list = $("steps");
  list.replaceChildren(...rows.map((r) => {
    const li = document.createElement("li");
    li.className = `step ${r.state}`;
    li.dataset.state = r.state;
    li.dataset.step = r.n;
    const icon = Object.assign(document.createElement("span"), { className: "icon", title: STATE_TEXT[r.state] });
    const name = r.line
      ? Object.assign(document.createElement("a"), { href: `#/runs/${encodeURIComponent(v.id)}/L${r.line}` })
      : document.createElement("span");
    name.className = "name";
    name.textContent = r.name;
    const state = Object.assign(document.createElement("span"), { className: "state", textContent: STATE_TEXT[r.state] });
    const time = Object.assign(document.createElement("span"), { className: "time", textContent: duration(r.time) });
    li.append(icon, name, state, time);
    return li;
  }));
}

async function loadStepTimes(v) {
  try {
    for (const e of await api(`${v.base}/events`)) {
      if (e.type !== "run.progressed") continue;
      const t = ms(e.data?.at ?? e.time);
      if (t != null && !v.stepAt.has(e.data.step)) v.stepAt.set(e.data.step, t);
    }
    showSteps(v);
  } catch { /* the steps keep the times their lines came at */ }
}

// Resources: the timeline is loaded at first, on the run's changes and once per interval
// while it runs, and once more at its end.
async function loadResources(v) {
  v.resourcesAt = Date.now();
  try {
    const body = await api(`${v.base}/resources`);
    if (view !== v) return;
    v.resources = body;
    drawResources($("resource-chart"), body);
    const peak = v.doc?.Resources;
    const n = body.Samples.length;
    $("resources-summary").textContent = peak
      ? `peak ${sizeText(peak.PeakMemoryBytes)} of ${sizeText(peak.MemoryLimitBytes)}, ${n} samples`
      : `${n} samples, one per ${body.Interval} s`;
  } catch { /* the chart keeps what it showed */ }
}

function resourcesDue(v) {
  const every = (v.resources?.Interval ?? 15) * 1000;
  return v.doc?.State.Status === "running" && Date.now() - (v.resourcesAt || 0) >= every;
}

// Log -----------------------------------------------------------------------------------------

function onLogMessage(v, e) {
  if (view !== v) return;
  // The message id is "<position>:<line number>".
  let n = Number(e.lastEventId.split(":").pop());
  if (!Number.isInteger(n) || n <= 0) n = (v.pending.length ? v.pending[v.pending.length - 1][0] : v.last) + 1;
  v.pending.push([n, e.data, Date.now()]);
  scheduleFlush(v);
}

function scheduleFlush(v) {
  if (v.scheduled) return;
  v.scheduled = true;
  const run = () => {
    if (!v.scheduled) return;
    v.scheduled = false;
    flush(v);
  };
  requestAnimationFrame(run);
  setTimeout(run, 250); // a hidden tab has no frames: its log still grows
}

function flush(v) {
  if (view !== v) return;
  const batch = v.pending.splice(0, BATCH);
  if (v.pending.length) scheduleFlush(v);
  const fresh = [];
  let stepsChanged = false;
  for (const [n, raw, arrived] of batch) {
    if (n <= v.last) continue; // already shown
    let text = raw, stamp = null;
    if (v.stamped === null) v.stamped = STAMP.test(raw);
    if (v.stamped) {
      const m = STAMP.exec(raw);
      if (m) { stamp = ms(m[1]); text = raw.slice(m[0].length); }
    }
    // Coloured, a step line's quoted names are coloured too: its steps are read without ANSI.
    const found = STEP_LINE.exec(text.includes("\x1b") ? text.replace(ANSI, "") : text);
    const step = found ? Number(found[2]) : 0;
    if (step && !v.steps.has(step)) {
      v.steps.set(step, { name: found[1], line: n, stamp, arrived });
      stepsChanged = true;
    }
    v.texts[n] = text;
    v.last = n;
    addLine(v, n, text, step);
    fresh.push(n);
  }
  if (!fresh.length) return;
  $("log-count").textContent = `${v.last} ${v.last === 1 ? "line" : "lines"}`;
  if (v.search.re) searchLines(v, fresh);
  if (stepsChanged) showSteps(v);
  if (v.target && !v.targetEl && v.els[v.target]) goToLine(v, v.target);
  else if ($("autoscroll").checked) toBottom(v);
}

// A line's text in runs of one look: [{text, cls: [class names], fg, bg}] from its ANSI SGR
// codes; named colours are classes, 256 and true colours CSS colours set on the element.
function ansiRuns(raw) {
  if (!raw.includes("\x1b")) return [{ text: raw, cls: [], fg: "", bg: "" }];
  const runs = [];
  let at = 0, look = { bold: false, dim: false, italic: false, under: false, fg: null, bg: null };
  for (const m of raw.matchAll(ANSI)) {
    if (m.index > at) runs.push(runOf(raw.slice(at, m.index), look));
    at = m.index + m[0].length;
    if (m[2] === "m") look = sgr(look, m[1]);
  }
  if (at < raw.length) runs.push(runOf(raw.slice(at), look));
  return runs;
}

function runOf(text, look) {
  const cls = [];
  if (look.bold) cls.push("a-b");
  if (look.dim) cls.push("a-d");
  if (look.italic) cls.push("a-i");
  if (look.under) cls.push("a-u");
  let fg = "", bg = "";
  if (typeof look.fg === "number") cls.push(`a-f${look.fg}`); else if (look.fg) fg = look.fg;
  if (typeof look.bg === "number") cls.push(`a-g${look.bg}`); else if (look.bg) bg = look.bg;
  return { text: text.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, ""), cls, fg, bg };
}

// The look after one SGR sequence's codes (`1;31`, `38;5;208`, `0`).
function sgr(look, params) {
  const next = { ...look };
  const codes = params.replace(/\?/g, "").split(";").map((c) => Number(c || 0));
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) Object.assign(next, { bold: false, dim: false, italic: false, under: false, fg: null, bg: null });
    else if (c === 1) next.bold = true;
    else if (c === 2) next.dim = true;
    else if (c === 3) next.italic = true;
    else if (c === 4) next.under = true;
    else if (c === 22) next.bold = next.dim = false;
    else if (c === 23) next.italic = false;
    else if (c === 24) next.under = false;
    else if (c >= 30 && c <= 37) next.fg = c - 30;
    else if (c >= 90 && c <= 97) next.fg = c - 82;
    else if (c === 39) next.fg = null;
    else if (c >= 40 && c <= 47) next.bg = c - 40;
    else if (c >= 100 && c <= 107) next.bg = c - 92;
    else if (c === 49) next.bg = null;
    else if (c === 38 || c === 48) {
      const [colour, used] = extendedColour(codes, i + 1);
      next[c === 38 ? "fg" : "bg"] = colour;
      i += used;
    }
  }
  return next;
}

// `5;n` (a palette index) or `2;r;g;b` after a 38 or 48: the colour and how many codes it took.
function extendedColour(codes, i) {
  if (codes[i] === 5) {
    const n = codes[i + 1] ?? 0;
    if (n < 16) return [n, 2];
    if (n >= 232) { const g = 8 + 10 * (n - 232); return [`rgb(${g},${g},${g})`, 2]; }
    const k = n - 16;
    return [`rgb(${CUBE[Math.floor(k / 36)]},${CUBE[Math.floor(k / 6) % 6]},${CUBE[k % 6]})`, 2];
  }
  if (codes[i] === 2) return [`rgb(${codes[i + 1] ?? 0},${codes[i + 2] ?? 0},${codes[i + 3] ?? 0})`, 4];
  return [null, 0];
}

// How a line (its text without ANSI sequences) is shown: a rule line as its title; a logger
// line as its time, level, message and source reference, the padding between them trimmed;
// any other line as it is. Parts are [name, from, to] into the text.
function lineShape(text) {
  const trimmed = text.trim();
  if (trimmed.startsWith(RULE) && trimmed.endsWith(RULE)) {
    const [from, to] = ruleTitle(text);
    if (from < to) return { kind: "rule", level: "", parts: [["title", from, to]] };
  }
  const m = LOGGER_HEAD.exec(text);
  if (!m) return { kind: "plain", level: "", parts: [["text", 0, text.length]] };
  const parts = [];
  if (m[1]) parts.push(["time", 0, m[1].length - 1]);
  const levelAt = m[1] ? m[1].length : 0;
  parts.push(["level", levelAt, levelAt + m[2].length]);
  let end = text.trimEnd().length;
  const space = text.lastIndexOf(" ", end - 1);
  let source = null;
  if (space > m[0].length && SOURCE_REF.test(text.slice(space + 1, end))) {
    source = ["source", space + 1, end];
    end = text.slice(0, space).trimEnd().length;
  }
  if (end > m[0].length) parts.push(["message", m[0].length, end]);
  if (source) parts.push(source);
  return { kind: "logger", level: m[2].toLowerCase(), parts };
}

// Where a rule line's title is: between its runs of `─` and blanks.
function ruleTitle(text) {
  let from = 0, to = text.length;
  while (from < to && (text[from] === "─" || /\s/.test(text[from]))) from++;
  while (to > from && (text[to - 1] === "─" || /\s/.test(text[to - 1]))) to--;
  return [from, to];
}

// The runs of `runs` between two offsets of their joined text.
function sliceRuns(runs, from, to) {
  const out = [];
  let at = 0;
  for (const r of runs) {
    const end = at + r.text.length;
    if (end > from && at < to) out.push({ ...r, text: r.text.slice(Math.max(from - at, 0), Math.min(to, end) - at) });
    at = end;
    if (at >= to) break;
  }
  return out;
}

// A line as the page shows it: its shape, the runs of each part, and the text of it all
// (what search looks in).
function shownLine(raw) {
  const runs = ansiRuns(raw);
  const text = runs.length === 1 ? runs[0].text : runs.map((r) => r.text).join("");
  const shape = lineShape(text);
  const parts = shape.parts.map(([name, from, to]) => ({ name, runs: sliceRuns(runs, from, to) }));
  const shown = shape.kind === "plain" ? text
    : parts.map((p) => p.runs.map((r) => r.text).join("")).join(" ");
  return { kind: shape.kind, level: shape.level, parts, shown };
}

// Put a line's parts into its element, marking what `re` matches within each part (a match
// over runs of different looks is marked in each).
function fillLine(el, line, re) {
  line.parts.forEach((part, i) => {
    if (i) el.append(" "); // as `shown` joins them, so a copied line reads the same
    const box = part.name === "text" ? el : document.createElement("span");
    if (box !== el) { box.className = part.name; el.append(box); }
    const ranges = re ? matchRanges(part.runs.map((r) => r.text).join(""), re) : [];
    let at = 0;
    for (const r of part.runs) { appendRun(box, r, ranges, at); at += r.text.length; }
  });
  el.append("\n");
}

function matchRanges(text, re) {
  re.lastIndex = 0; // matchAll starts where the last test stopped
  return [...text.matchAll(re)].filter((m) => m[0]).map((m) => [m.index, m.index + m[0].length]);
}

// One run, starting at `at` in its part, its pieces within `ranges` marked.
function appendRun(box, r, ranges, at) {
  let target = box;
  if (r.cls.length || r.fg || r.bg) {
    target = document.createElement("span");
    if (r.cls.length) target.className = r.cls.join(" ");
    if (r.fg) target.style.color = r.fg; // CSSOM, which the page's policy allows
    if (r.bg) target.style.backgroundColor = r.bg;
    box.append(target);
  }
  let from = 0;
  const end = r.text.length;
  for (const [a, b] of ranges) {
    const s = Math.max(a - at, from), e = Math.min(b - at, end);
    if (e <= s) continue;
    if (s > from) target.append(r.text.slice(from, s));
    target.append(Object.assign(document.createElement("mark"), { textContent: r.text.slice(s, e) }));
    from = e;
  }
  if (from < end) target.append(r.text.slice(from));
}

function lineClass(step, line) {
  if (step) return "line head";
  if (line.kind === "rule") return "line rule";
  if (line.kind === "logger") return `line lv-${line.level}`;
  return ERROR_LINE.test(line.shown) ? "line err" : "line";
}

// Each step line starts a section of the log that can be folded; its lines go in blocks.
function addLine(v, n, text, step) {
  if (step || !v.section) {
    const el = document.createElement("div");
    el.className = step ? "sec step" : "sec";
    if (step) el.dataset.step = step;
    $("log").append(el);
    v.section = { el, chunk: null, size: 0 };
  }
  const shown = shownLine(text);
  const line = document.createElement("div");
  line.className = lineClass(step, shown);
  const number = document.createElement("a");
  number.className = "ln";
  number.href = `#/runs/${encodeURIComponent(v.id)}/L${n}`;
  number.dataset.n = n;
  line.append(number);
  if (step) {
    const fold = document.createElement("button");
    fold.type = "button";
    fold.className = "fold";
    fold.title = "fold this step";
    fold.setAttribute("aria-expanded", "true");
    line.append(fold);
  }
  fillLine(line, shown, null);
  const sec = v.section;
  if (step) {
    sec.el.append(line); // the step's own line stays in sight when it is folded
  } else {
    if (!sec.chunk || sec.size >= CHUNK) {
      sec.chunk = document.createElement("div");
      sec.chunk.className = "chunk";
      sec.el.append(sec.chunk);
      sec.size = 0;
    }
    sec.chunk.append(line);
    sec.size++;
  }
  v.els[n] = line;
}

function toBottom(v) {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
  v.autoTop = log.scrollTop;
}

function setFolded(sec, folded) {
  sec.classList.toggle("folded", folded);
  const button = sec.querySelector(".fold");
  if (button) {
    button.setAttribute("aria-expanded", String(!folded));
    button.title = folded ? "unfold this step" : "fold this step";
  }
}

function showLine(el) {
  const sec = el.closest(".sec");
  if (sec?.classList.contains("folded")) setFolded(sec, false);
  $("autoscroll").checked = false;
  el.scrollIntoView({ block: "center" });
}

// The line the address names (#/runs/<id>/L<n>): highlighted and in sight once it is there.
function goToLine(v, n) {
  v.target = n;
  const el = v.els[n];
  if (!el) return;
  v.targetEl?.classList.remove("target");
  v.targetEl = el;
  el.classList.add("target");
  showLine(el);
}

// Search --------------------------------------------------------------------------------------

function paint(v, n, re) {
  const el = v.els[n];
  if (!el) return;
  const keep = el.classList.contains("head") ? 2 : 1; // the number (and the fold button)
  while (el.childNodes.length > keep) el.lastChild.remove();
  el.classList.toggle("match", Boolean(re));
  fillLine(el, shownLine(v.texts[n]), re);
}

// What search looks in: the line as shown (a plain line is shown as it is, and is most lines).
function searchable(text) {
  return text.includes("\x1b") || text.includes(RULE) || LOGGER_HEAD.test(text) ? shownLine(text).shown : text;
}

function searchLines(v, numbers) {
  const s = v.search;
  for (const n of numbers) {
    const text = v.texts[n];
    s.re.lastIndex = 0;
    if (text === undefined || !s.re.test(searchable(text))) continue;
    s.matches.push(n);
    if (s.marked.size < MARKED) { paint(v, n, s.re); s.marked.add(n); }
  }
  showMatchCount(v);
}

function setQuery(v, q) {
  const s = v.search;
  if (q === s.q) return false;
  for (const n of s.marked) paint(v, n, null);
  s.current?.classList.remove("current");
  Object.assign(s, { q, re: q ? new RegExp(q.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"), "gi") : null,
    matches: [], marked: new Set(), index: -1, current: null });
  if (s.re) {
    const all = [];
    for (let n = 1; n <= v.last; n++) all.push(n);
    searchLines(v, all);
  }
  showMatchCount(v);
  return true;
}

function goToMatch(v, delta) {
  const s = v.search;
  if (!s.matches.length) return;
  s.index = (s.index + delta + s.matches.length) % s.matches.length;
  const n = s.matches[s.index];
  if (!s.marked.has(n)) { paint(v, n, s.re); s.marked.add(n); }
  s.current?.classList.remove("current");
  s.current = v.els[n];
  s.current.classList.add("current");
  showLine(s.current);
  showMatchCount(v);
}

function showMatchCount(v) {
  const s = v.search;
  let text = "";
  if (s.re) {
    if (!s.matches.length) text = "no match";
    else if (s.index < 0) text = `${s.matches.length} ${s.matches.length === 1 ? "match" : "matches"}`;
    else text = `${s.index + 1} of ${s.matches.length}`;
  }
  $("search-count").textContent = text;
}

let searchTimer = null;
function searchNow(delta) {
  clearTimeout(searchTimer);
  const v = view;
  if (!v) return;
  const changed = setQuery(v, $("log-search").value);
  if (changed) v.search.index = delta < 0 ? 0 : -1;
  goToMatch(v, delta);
}
$("log-search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => searchNow(1), 200);
});
$("log-search").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && e.shiftKey) { e.preventDefault(); searchNow(-1); }
  if (e.key === "Escape") { $("log-search").value = ""; searchNow(1); }
});
$("search-form").addEventListener("submit", (e) => { e.preventDefault(); searchNow(1); });
$("search-prev").addEventListener("click", () => searchNow(-1));

$("log").addEventListener("click", (e) => {
  const fold = e.target.closest(".fold");
  if (!fold) return;
  const sec = fold.closest(".sec");
  setFolded(sec, !sec.classList.contains("folded"));
});
$("fold-all").addEventListener("click", () => { for (const s of $("log").querySelectorAll(".sec.step")) setFolded(s, true); });
$("unfold-all").addEventListener("click", () => { for (const s of $("log").querySelectorAll(".sec.step")) setFolded(s, false); });
// Scrolling up stops following the end; scrolling back down to it follows again.
$("log").addEventListener("scroll", () => {
  const log = $("log");
  if (!view || Math.abs(log.scrollTop - view.autoTop) < 2) return;
  $("autoscroll").checked = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
});
$("autoscroll").addEventListener("change", () => { if ($("autoscroll").checked && view) toBottom(view); });

// Actions and downloads -----------------------------------------------------------------------

$("cancel-run").addEventListener("click", async () => {
  const v = view;
  if (!v || !confirm(`Cancel run ${v.id.slice(0, 12)}?`)) return;
  const button = $("cancel-run");
  button.disabled = true;
  setStatus($("run-action-status"), "cancelling…");
  try {
    const body = await api(v.base, { method: "DELETE" });
    if (view === v) setStatus($("run-action-status"), body?.message || "cancel requested");
  } catch (err) {
    if (view === v) setStatus($("run-action-status"), `could not cancel: ${err.message}`, true);
  } finally {
    button.disabled = false;
  }
});

// Re-run and re-check queue a new run of the same upload; a re-check resolves the image anew.
async function runAgain(button, action, verb) {
  const v = view;
  if (!v) return;
  button.disabled = true;
  setStatus($("run-action-status"), "starting a new run…");
  try {
    const doc = await api(`${v.base}/${action}`, { method: "POST" });
    location.hash = `#/runs/${doc.Id}`;
  } catch (err) {
    let text = `could not ${verb}: ${err.message}`;
    if (err.status === 404 || err.status === 410) text += ". Upload the layout again to check it.";
    if (view === v) setStatus($("run-action-status"), text, true);
  } finally {
    button.disabled = false;
  }
}

$("rerun").addEventListener("click", () => runAgain($("rerun"), "rerun", "re-run"));
$("recheck").addEventListener("click", () => runAgain($("recheck"), "recheck", "re-check"));

$("copy-command").addEventListener("click", () => copyCommand());
$("resources-csv").addEventListener("click", () => {
  if (view) saveWithKey(`${view.base}/resources?format=csv`, `precheck-${view.id}-resources.csv`);
});

// Downloads are plain links; with a key they are fetched with it and saved from memory.
document.addEventListener("click", (e) => {
  const a = e.target.closest?.("a[download]");
  const path = a?.getAttribute("href") || "";
  if (!a || !apiKey() || !path.startsWith("/api/") || e.button !== 0) return;
  e.preventDefault();
  saveWithKey(path, a.getAttribute("download"));
});

// The exact name (RFC 6266 `filename*`), else the plain fallback.
function savedName(disposition) {
  const exact = disposition.match(/filename\*=UTF-8''([^;\s]+)/i)?.[1];
  if (exact) {
    try { return decodeURIComponent(exact); } catch { /* not UTF-8: the fallback */ }
  }
  return disposition.match(/filename="([^"]*)"/)?.[1];
}

async function saveWithKey(path, name) {
  try {
    const response = await fetch(path, { headers: headers() });
    if (response.status === 401) { askForKey(body401(apiKey())); throw new Error(body401(apiKey())); }
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const given = savedName(response.headers.get("Content-Disposition") || "");
    const url = URL.createObjectURL(await response.blob());
    const a = Object.assign(document.createElement("a"), { href: url, download: name || given || "download" });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    setStatus($("run-action-status"), `download failed: ${err.message}`, true);
  }
}

function link(text, path, name) {
  const li = document.createElement("li");
  li.append(Object.assign(document.createElement("a"), { href: path, download: name, textContent: text }));
  return li;
}

// Whom the run's end is told, and how each delivery stands (its attempts are in the API).
async function showNotifications(v) {
  let list;
  try {
    list = await api(`${v.base}/notifications`);
  } catch {
    return;
  }
  if (view !== v) return;
  $("notifications").hidden = list.length === 0;
  $("notification-list").replaceChildren(...list.map((n) => {
    const li = document.createElement("li");
    const tries = n.Attempts.length;
    const last = tries ? n.Attempts[tries - 1] : null;
    const why = last && !last.Delivered ? `: ${last.Error}` : "";
    li.textContent = `${n.Kind} ${n.Target}: ${n.Status}` +
      (tries ? ` (${tries} attempt${tries > 1 ? "s" : ""})${why}` : "");
    return li;
  }));
  // A delivery still owed is shown again a little later.
  if (list.some((n) => n.Status === "pending")) setTimeout(() => { if (view === v) showNotifications(v); }, 3000);
}

async function showVerdict(v, doc) {
  const r = doc.Result;
  $("verdict").hidden = false;
  showNotifications(v);
  let text;
  if (doc.State.Status === "completed") text = "Passed: the layout passed every check.";
  else if (doc.State.Status === "cancelled") text = "Cancelled.";
  else {
    text = `Failed (${r?.Classification || "system"}): ${doc.State.Error}`;
    if (r?.FailedStep) text = `${text.replace(/\.$/, "")}; failed step ${r.FailedStep}`;
  }
  $("verdict-text").textContent = text;
  // Answered from the result cache: no container ran; the source is named only to those who
  // may see it.
  $("reused").hidden = !r?.Reused;
  $("reused").textContent = !r?.Reused ? "" : r.ReusedFrom
    ? `Answered from the result cache: the same layout, parameters and image as run ${r.ReusedFrom}; no container ran.`
    : "Answered from the result cache: an identical earlier check (same layout bytes, parameters and image); no container ran.";
  const metrics = $("metrics").tBodies[0];
  metrics.innerHTML = "";
  for (const [k, value] of Object.entries(r?.Metrics || {})) {
    const tr = metrics.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = value;
  }
  const list = $("downloads");
  list.innerHTML = "";
  if (doc.Output.Available) {
    list.append(link(`output layout ${doc.Output.Filename}${doc.Output.Passed ? "" : " (from a failed run)"}`,
      `${v.base}/output`, doc.Output.Filename));
  }
  let reports = [];
  try { reports = await api(`${v.base}/reports`); } catch { /* no reports */ }
  if (view !== v) return;
  // Under the step that wrote each (the flow's order is the folders'), then the flow's own files.
  for (const rep of reports) {
    const where = rep.Path.split("/").map(encodeURIComponent).join("/");
    const label = rep.Step ? `${rep.Step} report ${rep.Name}` : `report ${rep.Path}`;
    list.append(link(label, `${v.base}/reports/${where}`, rep.Name));
  }
  if (!prunedKinds(doc).has("run_folder")) {
    list.append(link("debug tarball", `/api/v1/debug/prechecks/${encodeURIComponent(doc.Id)}`, `precheck-${doc.Id}.tar.gz`));
  }
  showPruned(doc);
  showNotes(v, r);
  const png = await fetch(`${v.base}/render`, { headers: headers() });
  let url = null;
  if (png.ok && view === v) {
    url = URL.createObjectURL(await png.blob());
    $("render").src = url;
    $("render-link").href = url;
    $("render").hidden = false;
    $("render-link").hidden = false;
  }
  if (view === v) await showFindings(v, doc, url);
}

// What retention removed of a final run's files, and when: its record and verdict stay.
const PRUNED_NAMES = {
  outputs: "the output layout", reports: "the reports", render: "the render",
  run_folder: "the run folder (debug tarball)", logs: "the output lines",
};

function prunedKinds(doc) {
  return new Set((doc.Pruned || []).flatMap((p) => p.What));
}

function showPruned(doc) {
  const list = $("pruned");
  list.replaceChildren(...(doc.Pruned || []).map((p) => {
    const li = document.createElement("li");
    const why = p.Reason === "budget" ? "storage past its budget" : "kept past retention";
    li.textContent = `Removed ${p.What.map((k) => PRUNED_NAMES[k] || k).join(", ")} on ` +
      `${new Date(p.At).toLocaleString()} (${why}); the record, verdict and events are kept.`;
    return li;
  }));
  list.hidden = !doc.Pruned;
}

// The flow's warning and error lines, above the log: a passed run may warn (Magic DRC). The
// flow's own warning.log and error.log hold each record whole (a failed tool's last lines):
// fetched when opened.
function showNotes(v, r) {
  const warnings = r?.Warnings || { Count: 0, Lines: [] };
  const errors = r?.Errors || { Count: 0, Lines: [] };
  for (const [what, seen] of [["warnings", warnings], ["errors", errors]]) {
    $(`${what}-box`).hidden = !seen.Count && !seen.File;
    const more = seen.Count > seen.Lines.length ? ` (the first ${seen.Lines.length} shown)` : "";
    $(`${what}-count`).textContent = `${seen.Count}${more}`;
    $(what).replaceChildren(...seen.Lines.map((line) => Object.assign(document.createElement("li"), { textContent: line })));
    showFlowFile(v, what, seen.File);
  }
  $("notes").hidden = !warnings.Count && !errors.Count && !warnings.File && !errors.File;
}

const FLOW_FILE_SHOWN = 64 * 1024; // bytes of a flow log file shown on the page; the rest is a download

function showFlowFile(v, what, file) {
  const box = $(`${what}-file`);
  box.hidden = !file;
  box.open = false;
  $(`${what}-file-text`).textContent = "";
  if (!file) return;
  $(`${what}-file-size`).textContent = `(${file.Size} bytes)`;
  box.ontoggle = async () => {
    if (!box.open || $(`${what}-file-text`).textContent) return;
    const got = await fetch(`${v.base}/reports/${encodeURIComponent(file.Path)}`, { headers: headers() });
    if (view !== v) return;
    const text = got.ok ? await got.text() : `not available (${got.status})`;
    $(`${what}-file-text`).textContent = text.length > FLOW_FILE_SHOWN
      ? `${text.slice(0, FLOW_FILE_SHOWN)}\n… (the whole file is in the reports)` : text;
  };
}

// Die sizes of the slots in µm, as the server's pre-flight has them: the render's extent when
// the upload's own box is gone.
const SLOT_SIZES = { "1x1": [3932, 5122], "0p5x1": [1936, 5122], "1x0p5": [3932, 2531], "0p5x0p5": [1936, 2531] };

// The die box in µm the render shows: the top cell's box as the upload's reading found it,
// else the slot's die at the origin.
async function dieBox(doc) {
  try {
    const upload = await api(`/api/v1/uploads/${encodeURIComponent(doc.Config.Labels.upload_id)}`);
    const cell = (upload.Layout?.TopCells || []).find((c) => c.Name === doc.Config.Labels.top_cell);
    if (cell?.BBox && cell.BBox.Right > cell.BBox.Left && cell.BBox.Top > cell.BBox.Bottom) return cell.BBox;
  } catch { /* the upload is gone: the slot's size */ }
  const size = SLOT_SIZES[doc.Config.Labels.slot];
  return size ? { Left: 0, Bottom: 0, Right: size[0], Top: size[1] } : null;
}

async function showFindings(v, doc, renderUrl) {
  const found = doc.Result?.Findings || [];
  $("findings-card").hidden = !found.length;
  $("findings").replaceChildren();
  $("markers").replaceChildren();
  $("marker-list").replaceChildren();
  $("marker-title").textContent = "";
  $("findings-render").hidden = !renderUrl;
  if (renderUrl) $("findings-render").src = renderUrl;
  if (!found.length) return;
  const total = found.reduce((n, f) => n + f.Count, 0);
  $("findings-summary").textContent = `${total} marker${total === 1 ? "" : "s"} in ${found.length} report${found.length === 1 ? "" : "s"}`;
  let data;
  try { data = await api(`${v.base}/findings?limit=0`); } catch { return; }
  if (view !== v) return;
  v.die = await dieBox(doc);
  if (view !== v) return;
  for (const rep of data.Reports) {
    const box = document.createElement("div");
    box.className = "check";
    box.dataset.path = rep.Path;
    const h = Object.assign(document.createElement("h4"), { textContent: `${rep.Step || "report"}: ${rep.Path}` });
    box.append(h);
    if (rep.Error) box.append(Object.assign(document.createElement("p"), { className: "cut", textContent: `not read: ${rep.Error}` }));
    else if (rep.CutShort) box.append(Object.assign(document.createElement("p"), { className: "cut", textContent: "read in part: the counts are at least these" }));
    if (!rep.Rules.length && !rep.Error) box.append(Object.assign(document.createElement("p"), { className: "clear", textContent: "clear: no rule fired" }));
    if (rep.Rules.length) {
      const table = document.createElement("table");
      table.createTHead().insertRow().append(...["Rule", "Count", "Description", ""].map((t) => Object.assign(document.createElement("th"), { textContent: t })));
      const body = table.createTBody();
      for (const rule of rep.Rules) {
        const tr = body.insertRow();
        tr.dataset.rule = rule.Rule;
        tr.insertCell().textContent = rule.Rule;
        tr.insertCell().textContent = rule.Count;
        tr.insertCell().textContent = rule.Description;
        const show = Object.assign(document.createElement("button"), { type: "button", textContent: "show" });
        show.addEventListener("click", () => showRule(v, rep, rule, tr));
        tr.insertCell().append(show);
      }
      box.append(table);
    }
    $("findings").append(box);
  }
}

const SVG = "http://www.w3.org/2000/svg";

function fmt(x) { return String(Math.round(x * 1000) / 1000); }

// A marker as KLayout writes it: `edge-pair: (x,y;x,y)|(x,y;x,y)`, `box: (x,y;x,y)`, ...
function markerText(m) {
  const pts = m.Points.map(([x, y]) => `${fmt(x)},${fmt(y)}`);
  if (m.Kind === "edge-pair" && pts.length === 4) return `edge-pair: (${pts[0]};${pts[1]})|(${pts[2]};${pts[3]})`;
  return `${m.Kind}: (${pts.join(";")})`;
}

async function showRule(v, rep, rule, row) {
  for (const tr of document.querySelectorAll("#findings tr.chosen")) tr.classList.remove("chosen");
  row.classList.add("chosen");
  let data;
  const q = new URLSearchParams({ report: rep.Path, rule: rule.Rule, limit: "1000" });
  try { data = await api(`${v.base}/findings?${q}`); } catch (err) { $("marker-title").textContent = err.message; return; }
  if (view !== v) return;
  const markers = data.Reports[0]?.Rules[0]?.Markers || [];
  const kept = markers.length < rule.Count ? `the first ${markers.length} of ${rule.Count}` : `${rule.Count}`;
  $("marker-title").textContent = `${rule.Rule}: ${kept} marker${rule.Count === 1 ? "" : "s"} (µm)`;
  $("marker-list").replaceChildren(...markers.map((m, i) => {
    const li = Object.assign(document.createElement("li"), { textContent: markerText(m) });
    li.addEventListener("click", () => goToMarker(v, i, li));
    return li;
  }));
  v.centres = drawMarkers(v, markers);
  zoom().reset({ animate: false });
}

// Zoom and pan on the render and its markers together, made once for the page.
let panzoom = null;
function zoom() {
  if (!panzoom) {
    panzoom = Panzoom($("render-box"), { maxScale: 64, step: 0.3 });
    $("render-frame").addEventListener("wheel", panzoom.zoomWithWheel);
    $("zoom-reset").addEventListener("click", () => panzoom.reset());
  }
  return panzoom;
}

// Centre the marker's place at a close zoom (the render's pixels are several µm).
function goToMarker(v, i, li) {
  for (const el of document.querySelectorAll("#marker-list li.chosen")) el.classList.remove("chosen");
  li.classList.add("chosen");
  const c = v.centres?.[i];
  if (!c) return;
  const img = $("findings-render"), box = $("render-box");
  const scale = box.clientWidth / (img.naturalWidth || box.clientWidth);
  const pz = zoom();
  pz.zoom(16, { animate: false });
  pz.pan(box.clientWidth / 2 - c[0] * scale, box.clientHeight / 2 - c[1] * scale, { animate: false });
}

// The flow's render fits the layout's box into the image as a layout view's "zoom fit" does:
// the box grown by 2.5 % of its size on each side, scaled to fit and centred (measured on
// renders made the flow's way). A µm point's pixel in the render; y is up in the layout, down
// in the image.
const FIT_MARGIN = 0.025;

function renderPixel(box, w, h) {
  const grown = 1 + 2 * FIT_MARGIN;
  const s = Math.min(w / ((box.Right - box.Left) * grown), h / ((box.Top - box.Bottom) * grown));
  const cx = (box.Left + box.Right) / 2, cy = (box.Bottom + box.Top) / 2;
  return ([x, y]) => [w / 2 + (x - cx) * s, h / 2 - (y - cy) * s];
}

// Markers over the render, placed by the die box (the top cell's box). Without a die box, the
// markers' own extent stands in for it.
function drawMarkers(v, markers) {
  const svg = $("markers");
  svg.replaceChildren();
  const img = $("findings-render");
  const w = img.naturalWidth || 4096, h = img.naturalHeight || 4096;
  let box = v.die;
  if (!box) {
    const xs = markers.flatMap((m) => m.Points.map((p) => p[0])), ys = markers.flatMap((m) => m.Points.map((p) => p[1]));
    if (!xs.length) return [];
    box = { Left: Math.min(...xs), Right: Math.max(...xs), Bottom: Math.min(...ys), Top: Math.max(...ys) };
    if (box.Right === box.Left) box.Right = box.Left + 1;
    if (box.Top === box.Bottom) box.Top = box.Bottom + 1;
  }
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const centres = []; // each marker's centre in the render's pixels
  const px = renderPixel(box, w, h);
  for (const m of markers) {
    const pts = m.Points.map(px);
    if (!pts.length) { centres.push(null); continue; }
    let shape;
    if (m.Kind === "box" && pts.length === 2) {
      const [[x1, y1], [x2, y2]] = pts;
      shape = document.createElementNS(SVG, "rect");
      shape.setAttribute("x", Math.min(x1, x2)); shape.setAttribute("y", Math.min(y1, y2));
      shape.setAttribute("width", Math.abs(x2 - x1)); shape.setAttribute("height", Math.abs(y2 - y1));
    } else {
      shape = document.createElementNS(SVG, m.Kind === "polygon" ? "polygon" : "polyline");
      shape.setAttribute("points", pts.map(([x, y]) => `${x},${y}`).join(" "));
    }
    shape.setAttribute("class", "shape");
    svg.append(shape);
    // A ring around it: a marker of a few µm is smaller than a pixel of the render.
    const cx = pts.reduce((a, p) => a + p[0], 0) / pts.length, cy = pts.reduce((a, p) => a + p[1], 0) / pts.length;
    const ring = document.createElementNS(SVG, "circle");
    ring.setAttribute("cx", cx); ring.setAttribute("cy", cy); ring.setAttribute("r", Math.max(w, h) / 100);
    ring.setAttribute("class", "spot");
    svg.append(ring);
    centres.push([cx, cy]);
  }
  return centres;
}

async function showRun(id, line) {
  leaveRun();
  const v = (view = newView(id));
  v.target = line || null;
  $("home").hidden = true;
  $("run-page").hidden = false;
  // Nothing of the page shown before stays: a wrong id must not show the previous run.
  $("run-id").textContent = id;
  $("run-state").textContent = "";
  $("run-state").className = "badge";
  for (const el of ["run-summary", "run-step", "log-count", "search-count", "run-estimate"]) $(el).textContent = "";
  $("run-estimate").hidden = true;
  for (const el of ["run-created", "run-started", "run-finished", "run-elapsed"]) $(el).textContent = "–";
  $("run-elapsed-label").textContent = "Elapsed";
  setStatus($("run-action-status"), "");
  $("log").replaceChildren();
  $("steps").replaceChildren();
  for (const el of ["resource-chart", "step-chart"]) clearChart($(el));
  $("resources-summary").textContent = "";
  $("log-search").value = "";
  $("autoscroll").checked = !line;
  $("cancel-run").hidden = true;
  $("rerun").hidden = true;
  $("recheck").hidden = true;
  $("recheck-of").hidden = true;
  $("recheck-state").hidden = true;
  $("image-card").hidden = true;
  $("run-command").textContent = "";
  setStatus($("copy-status"), "");
  $("verdict").hidden = true;
  $("findings-card").hidden = true;
  $("notes").hidden = true;
  $("notifications").hidden = true;
  $("notification-list").replaceChildren();
  $("render").hidden = true;
  $("render-link").hidden = true;
  $("run-progress").value = 0;
  $("raw-log").href = `${v.base}/logs?format=text`;
  $("raw-log").download = `precheck-${id}.log`;
  try {
    const doc = await api(v.base);
    if (view !== v) return;
    v.estimate = doc.Estimate;
    showDocument(doc);
  } catch (err) {
    if (view !== v) return;
    closeStream("not found");
    $("run-state").textContent = "not found";
    $("run-state").className = "badge missing";
    $("run-summary").textContent = `${err.message}. It may have been deleted; see the list of runs.`;
    return;
  }
  v.timer = setInterval(() => tick(v), 1000);
  loadStepTimes(v);
  loadResources(v);
  // One connection carries the run's changes and its log; on a drop the browser resumes it
  // with Last-Event-ID, so no line is lost or shown twice.
  openStream(`${v.base}/events?follow=1&logs=1&timestamps=1&estimates=1`, {
    status: (e) => { showDocument(JSON.parse(e.data)); loadResources(v); },
    progress: (e) => { showDocument(JSON.parse(e.data)); loadResources(v); },
    log: (e) => onLogMessage(v, e),
    estimate: (e) => {
      if (view !== v) return;
      v.estimate = JSON.parse(e.data).Estimate;
      showTimes(v);
    },
    end: (e) => {
      if (view !== v) return;
      const doc = JSON.parse(e.data);
      showDocument(doc);
      closeStream("run ended");
      showVerdict(v, doc);
      loadStepTimes(v); // the exact times of the steps whose lines came as the run went
      loadResources(v); // with the last samples and the peak
    },
  });
}

function route(reload = false) {
  const m = location.hash.match(/^#\/runs\/([^/?#]+)(?:\/L(\d+))?/);
  if (m) {
    const id = decodeURIComponent(m[1]);
    const line = m[2] ? Number(m[2]) : null;
    if (!reload && view && view.id === id && view.doc) { if (line) goToLine(view, line); return; }
    showRun(id, line);
  } else {
    leaveRun();
    showHome().catch((err) => setStatus($("upload-status"), err.message, true));
  }
}

window.addEventListener("hashchange", () => route());
if (apiKey()) $("forget-key").hidden = false;
route();
