// The dashboard's last hour: one uPlot chart per group over GET /admin/api/metrics/history
// (parallel arrays: `t` in unix seconds, one array per series), redrawn every 10 s while the
// dashboard is open. uPlot comes from /static/uPlot.iife.min.js (vendored, MIT).
const REFRESH_MS = 10000;
const CIRCUIT = ["closed", "open", "half-open"];

const num = (digits) => (v) => (v == null ? "—" : Number(v).toFixed(digits));
const GROUPS = [
  { id: "content", title: "Content finished", unit: "items / min", fmt: num(1), series: [
    ["content_ready_per_min", "ready", "#4cc38a"],
    ["content_fallback_per_min", "fallback", "#e2a640"],
  ] },
  { id: "upstream", title: "Upstream calls", unit: "calls / min", fmt: num(1), series: [
    ["upstream_ok_per_min", "ok", "#4cc38a"],
    ["upstream_failed_per_min", "failed", "#e5534b"],
    ["upstream_rate_limited_per_min", "rate limited", "#e2a640"],
  ] },
  { id: "latency", title: "Upstream latency", unit: "seconds", fmt: num(3), series: [
    ["upstream_p50_secs", "p50", "#7c6cf0"],
    ["upstream_p95_secs", "p95", "#f07cc4"],
  ] },
  { id: "queue", title: "Queue depth", unit: "jobs queued or running", fmt: num(0), step: true, whole: true, series: [
    ["queue_depth", "jobs", "#c9a24d"],
  ] },
  { id: "players", title: "Players online", unit: "players", fmt: num(0), step: true, whole: true, series: [
    ["players_online", "online", "#5b8def"],
  ] },
  { id: "lobby", title: "Lobby messages", unit: "messages / min", fmt: num(1), series: [
    ["lobby_messages_per_min", "messages", "#4cc3b5"],
  ] },
  { id: "spend", title: "Spend", unit: "USD / min", fmt: (v) => (v == null ? "—" : `$${Number(v).toFixed(5)}`), series: [
    ["spend_usd_per_min", "spend", "#c9a24d"],
  ] },
  { id: "circuit", title: "Circuit breaker", unit: "state", step: true, circuit: true,
    fmt: (v) => (v == null ? "—" : CIRCUIT[v] || String(v)), series: [
    ["circuit_state", "state", "#e5534b"],
  ] },
];

// Counts have whole-number ticks only.
const WHOLE = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];
// From zero to a little above the highest value; an empty or all-zero chart spans 0..1.
const fromZero = (_, min, max) => [0, max > 0 ? max * 1.15 : 1];

const AXIS = { stroke: "#9097a8", grid: { stroke: "#2a2f40", width: 1 }, ticks: { stroke: "#2a2f40", width: 1 } };

/** Every chart by group id (the uPlot instances, also for a look from the console). */
export const charts = {};
let timer = null;

function options(group, width) {
  const y = { ...AXIS, size: 60, label: group.unit, labelSize: 18 };
  if (group.circuit) {
    y.splits = () => [0, 1, 2];
    y.values = (_, splits) => splits.map((v) => CIRCUIT[v] || "");
  } else {
    y.values = (_, splits) => splits.map((v) => group.fmt(v));
    if (group.whole) y.incrs = WHOLE;
  }
  return {
    width,
    height: 190,
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: group.circuit ? [0, 2] : fromZero } },
    axes: [{ ...AXIS }, y],
    series: [
      { label: "time" },
      ...group.series.map(([, label, stroke]) => ({
        label,
        stroke,
        width: 2,
        value: (_, v) => group.fmt(v),
        ...(group.step ? { paths: uPlot.paths.stepped({ align: 1 }) } : {}),
      })),
    ],
  };
}

function dataOf(group, history) {
  return [history.t, ...group.series.map(([key]) => history.series[key] || history.t.map(() => null))];
}

function widthOf(id) {
  const box = document.getElementById(`chart-${id}`);
  return Math.max(240, Math.floor(box.clientWidth || 400));
}

async function refresh(api) {
  const status = document.getElementById("charts-status");
  let history;
  try {
    history = await api("GET", "/admin/api/metrics/history");
  } catch (err) {
    status.textContent = err.status === 404 ? "not available on this server" : `history failed: ${err.message}`;
    return;
  }
  status.textContent = `every ${history.interval_secs} s, the last hour`;
  for (const group of GROUPS) {
    const data = dataOf(group, history);
    if (charts[group.id]) charts[group.id].setData(data);
    else charts[group.id] = new uPlot(options(group, widthOf(group.id)), data, document.getElementById(`chart-${group.id}`));
  }
}

function resize() {
  for (const group of GROUPS) {
    const chart = charts[group.id];
    if (chart) chart.setSize({ width: widthOf(group.id), height: 190 });
  }
}

/** Draws the charts now and every 10 s after, until `stopCharts`. */
export async function startCharts(api) {
  stopCharts();
  await refresh(api);
  timer = setInterval(() => refresh(api), REFRESH_MS);
}

export function stopCharts() {
  clearInterval(timer);
  timer = null;
}

/** The chart boxes, one per group, with their titles (the charts go in on the first refresh). */
export function chartBoxes() {
  return GROUPS.map((group) => {
    const box = document.createElement("div");
    box.className = "chart";
    const title = document.createElement("h3");
    title.textContent = group.title;
    const plot = document.createElement("div");
    plot.id = `chart-${group.id}`;
    plot.className = "chart-plot";
    plot.dataset.chart = group.id;
    box.append(title, plot);
    return box;
  });
}

window.addEventListener("resize", resize);
window.lorewireCharts = charts;
