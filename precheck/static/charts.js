// The run page's charts: the resource timeline (memory against the limit, CPU) and the steps'
// durations as bars. Drawn by uPlot 1.6.32 (from the npm registry, MIT: uplot.LICENSE.txt),
// vendored as uplot.esm.js and uplot.min.css; it styles through the CSSOM, which the page's
// policy allows. Each chart's uPlot object is the element's `uplot` (its data, for tests).
import uPlot from "./uplot.esm.js";

const HEIGHT = 220;
const GIB = 1 << 30;

const MIB = 1 << 20;

// Bytes as GiB, or as MiB below one GiB.
export function sizeText(v) {
  if (v == null) return "–";
  return v >= GIB ? `${(v / GIB).toFixed(2)} GiB` : `${(v / MIB).toFixed(1)} MiB`;
}
const gib = sizeText;
function pct(v) { return v == null ? "–" : `${v.toFixed(1)} %`; }
function secs(v) { return v == null ? "–" : `${Math.round(v)} s`; }

function widthOf(el) { return Math.max(280, el.clientWidth || 600); }

// A chart on `el`, made once and then given new data; it follows the element's width.
function chartOn(el, opts, data) {
  if (el.uplot) {
    el.uplot.setData(data);
    return el.uplot;
  }
  const u = new uPlot({ ...opts, width: widthOf(el), height: HEIGHT }, data, el);
  el.uplot = u;
  el.uplotResize = new ResizeObserver(() => u.setSize({ width: widthOf(el), height: HEIGHT }));
  el.uplotResize.observe(el);
  return u;
}

// Take the chart off `el` (another run's page is shown next).
export function clearChart(el) {
  el.uplotResize?.disconnect();
  el.uplot?.destroy();
  delete el.uplot;
  delete el.uplotResize;
  el.replaceChildren();
}

// `body` is what `/resources` answered: {Interval, Limit, Samples: [{At, MemoryBytes, ...}]}.
export function resourceData(body) {
  const s = body.Samples;
  return [
    s.map((x) => Date.parse(x.At) / 1000),
    s.map((x) => x.MemoryBytes),
    s.map((x) => x.MemoryLimitBytes),
    s.map((x) => x.CpuPercent),
  ];
}

export function drawResources(el, body) {
  const opts = {
    class: "resource-chart",
    scales: { x: { time: true }, bytes: { range: (u, lo, hi) => [0, Math.max(hi, 1)] }, cpu: { range: (u, lo, hi) => [0, Math.max(hi, 100)] } },
    series: [
      {},
      { label: "Memory", scale: "bytes", stroke: "#1f6feb", fill: "#1f6feb22", width: 2, value: (u, v) => gib(v) },
      { label: "Limit", scale: "bytes", stroke: "#d1242f", dash: [6, 4], width: 1, value: (u, v) => gib(v) },
      { label: "CPU", scale: "cpu", stroke: "#1a7f37", width: 1, value: (u, v) => pct(v) },
    ],
    axes: [
      {},
      { scale: "bytes", values: (u, vals) => vals.map((v) => (Math.max(...vals) >= GIB ? `${(v / GIB).toFixed(1)}G` : `${Math.round(v / MIB)}M`)), size: 60 },
      { scale: "cpu", side: 1, grid: { show: false }, values: (u, vals) => vals.map((v) => `${v}%`), size: 60 },
    ],
  };
  return chartOn(el, opts, resourceData(body));
}

// `rows` are the steps as the page lists them: {n, name, time (ms or null)}.
export function stepData(rows) {
  const timed = rows.filter((r) => r.time != null);
  return [timed.map((r) => r.n), timed.map((r) => r.time / 1000)];
}

export function drawSteps(el, rows) {
  const names = new Map(rows.map((r) => [r.n, r.name]));
  const opts = {
    class: "step-chart",
    scales: { x: { time: false, range: (u, lo, hi) => [0.5, Math.max(hi, 1) + 0.5] }, y: { range: (u, lo, hi) => [0, Math.max(hi, 1)] } },
    series: [
      { label: "Step", value: (u, v) => (v == null ? "–" : `${v} ${names.get(v) || ""}`) },
      { label: "Duration", stroke: "#8250df", fill: "#8250df88", width: 1, paths: uPlot.paths.bars({ size: [0.7, 60] }), points: { show: false }, value: (u, v) => secs(v) },
    ],
    axes: [
      { splits: (u) => u.data[0], values: (u, vals) => vals.map((v) => String(v)) },
      { values: (u, vals) => vals.map((v) => `${v}s`), size: 50 },
    ],
  };
  const u = chartOn(el, opts, stepData(rows));
  u.series[0].value = (_, v) => (v == null ? "–" : `${v} ${names.get(v) || ""}`);
  return u;
}
