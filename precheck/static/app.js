// The Precheck page: upload, start runs, follow them live. One SSE connection at a time:
// the audit feed on the home page, the run's own stream (changes and log) on a run page.

const $ = (id) => document.getElementById(id);
const KEY = "precheck.apiKey";
let source = null; // the one open EventSource

// The type tags of the events the home page follows, as the server sends them on the audit
// feed (`event:` of each message). tests/test_page.py checks these lists against the code's.
const RUN_EVENTS = ["run.queued", "run.started", "run.progressed", "run.cancel-requested",
  "run.timed-out", "run.exited", "run.outputs-stored", "run.finished", "run.cancelled",
  "run.failed-to-start", "run.deleted"];
const UPLOAD_EVENTS = ["upload.received", "upload.expired", "upload.deleted"];

function apiKey() { return sessionStorage.getItem(KEY) || ""; }

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (response.status === 401) { askForKey(body401(apiKey())); throw new Error(body401(apiKey())); }
  const body = response.headers.get("Content-Type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error(body?.message || `${response.status} ${response.statusText}`);
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
  for (const id of ["upload-status", "run-status"]) setStatus($(id), "");
  route();
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
    if (!$("top-cell").value) $("top-cell").value = body.Name.split(".")[0].replace(/[^A-Za-z0-9_$-]/g, "_");
    loadUploads(body.Id);
  };
  xhr.onerror = () => failed("upload failed: connection lost");
  xhr.send(form);
});

async function loadUploads(select) {
  const uploads = await api("/api/v1/uploads");
  const el = $("upload-id");
  el.innerHTML = "";
  for (const u of uploads.filter((u) => !u.State.Expired)) {
    const option = new Option(`${u.Name} (${u.Id.slice(0, 8)})`, u.Id);
    el.add(option);
  }
  if (select) el.value = select;
}

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
      }),
    });
    location.hash = `#/runs/${run.Id}`;
  } catch (err) {
    setStatus($("run-status"), err.message, true);
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

async function showHome() {
  $("home").hidden = false;
  $("run-page").hidden = true;
  await Promise.all([loadUploads(), loadRuns()]);
  const feed = await api("/api/v1/events?limit=1&type=run.");
  // Follow run and upload events from now on; the lists are refreshed from the API on each.
  openStream(`/api/v1/events?follow=1&type=run.&type=upload.&lastEventId=${feed.head}`, {
    ...Object.fromEntries(RUN_EVENTS.map((t) => [t, refreshSoon])),
    ...Object.fromEntries(UPLOAD_EVENTS.map((t) => [t, () => loadUploads($("upload-id").value).catch(() => {})])),
  });
}

// Run page ------------------------------------------------------------------------------------

function showDocument(doc) {
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
}

async function download(path, name) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) return;
  const url = URL.createObjectURL(await response.blob());
  const a = Object.assign(document.createElement("a"), { href: url, download: name });
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function link(text, path, name) {
  const li = document.createElement("li");
  const a = Object.assign(document.createElement("a"), { href: "#", textContent: text });
  a.onclick = (e) => { e.preventDefault(); download(path, name); };
  li.append(a);
  return li;
}

async function showVerdict(doc) {
  const r = doc.Result;
  const box = $("verdict");
  box.hidden = false;
  let text;
  if (doc.State.Status === "completed") text = "Passed: the layout passed every check.";
  else if (doc.State.Status === "cancelled") text = "Cancelled.";
  else {
    text = `Failed (${r?.Classification || "system"}): ${doc.State.Error}`;
    if (r?.FailedStep) text += `; failed step ${r.FailedStep}`;
  }
  $("verdict-text").textContent = text;
  const metrics = $("metrics").tBodies[0];
  metrics.innerHTML = "";
  for (const [k, v] of Object.entries(r?.Metrics || {})) {
    const tr = metrics.insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = v;
  }
  const list = $("downloads");
  list.innerHTML = "";
  const base = `/api/v1/prechecks/${doc.Id}`;
  if (doc.Output.Available) {
    list.append(link(`output layout ${doc.Output.Filename}${doc.Output.Passed ? "" : " (from a failed run)"}`,
      `${base}/output`, doc.Output.Filename));
  }
  try {
    for (const rep of await api(`${base}/reports`)) list.append(link(`report ${rep.Name}`, `${base}/reports/${rep.Name}`, rep.Name));
  } catch { /* no reports */ }
  list.append(link("debug tarball", `/api/v1/debug/prechecks/${doc.Id}`, `precheck-${doc.Id}.tar.gz`));
  const png = await fetch(`${base}/render`, { headers: headers() });
  if (png.ok) {
    $("render").src = URL.createObjectURL(await png.blob());
    $("render").hidden = false;
  }
}

function appendLog(text) {
  const log = $("log");
  log.append(text + "\n");
  if ($("autoscroll").checked) log.scrollTop = log.scrollHeight;
}

async function showRun(id) {
  $("home").hidden = true;
  $("run-page").hidden = false;
  // Nothing of the page shown before stays: a wrong id must not show the previous run.
  $("run-id").textContent = id;
  $("run-state").textContent = "";
  $("run-state").className = "badge";
  $("run-summary").textContent = "";
  $("run-step").textContent = "";
  $("log").textContent = "";
  $("verdict").hidden = true;
  $("render").hidden = true;
  $("run-progress").value = 0;
  try {
    showDocument(await api(`/api/v1/prechecks/${id}`));
  } catch (err) {
    closeStream("not found");
    $("run-state").textContent = "not found";
    $("run-state").className = "badge missing";
    $("run-summary").textContent = `${err.message}. It may have been deleted; see the list of runs.`;
    return;
  }
  // One connection carries the run's changes and its log; on a drop the browser resumes it
  // with Last-Event-ID, so no line is lost or shown twice.
  openStream(`/api/v1/prechecks/${id}/events?follow=1&logs=1`, {
    status: (e) => showDocument(JSON.parse(e.data)),
    progress: (e) => showDocument(JSON.parse(e.data)),
    log: (e) => appendLog(e.data),
    end: (e) => {
      const doc = JSON.parse(e.data);
      showDocument(doc);
      closeStream("run ended");
      showVerdict(doc);
    },
  });
}

function route() {
  const m = location.hash.match(/^#\/runs\/([^/?#]+)/);
  if (m) showRun(decodeURIComponent(m[1]));
  else showHome().catch((err) => setStatus($("upload-status"), err.message, true));
}

window.addEventListener("hashchange", route);
if (apiKey()) $("forget-key").hidden = false;
route();
