// The dashboard's last hour: after some traffic (made by the Rust test: content, a chat
// message, a generation run, a player still joined) every chart is drawn by uPlot with data
// points, its legend names its series, no Content-Security-Policy violation happens, and the
// charts take in new points on their 10 s refresh.
import { run, base, adminToken, assert } from "./lib.mjs";

const CHARTS = {
  content: { labels: ["ready", "fallback"], positive: true },
  upstream: { labels: ["ok", "failed", "rate limited"], positive: true },
  latency: { labels: ["p50", "p95"], positive: true },
  queue: { labels: ["jobs"] },
  players: { labels: ["online"], positive: true },
  lobby: { labels: ["messages"], positive: true },
  spend: { labels: ["spend"], positive: true },
  circuit: { labels: ["state"] },
};

run("charts", async (t) => {
  const page = await t.page("admin");
  await page.addInitScript(() => {
    window.cspViolations = [];
    document.addEventListener("securitypolicyviolation", (e) => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  await page.goto(`${base}/admin`);
  await page.fill("#token", adminToken);
  await page.click("#login-form button[type=submit]");
  for (const id of Object.keys(CHARTS)) await page.locator(`#chart-${id} .uplot canvas`).waitFor();
  t.step("every chart drawn");

  const drawn = await page.evaluate(() =>
    Object.fromEntries(
      Object.entries(window.lorewireCharts).map(([id, u]) => [
        id,
        { data: u.data.map((a) => Array.from(a)), labels: u.series.slice(1).map((s) => s.label) },
      ]),
    ),
  );
  for (const [id, want] of Object.entries(CHARTS)) {
    const chart = drawn[id];
    assert(chart, `chart ${id} exists`);
    const [xs, ...ys] = chart.data;
    assert(xs.length > 0, `chart ${id} has points: ${JSON.stringify(chart.data)}`);
    assert(JSON.stringify(chart.labels) === JSON.stringify(want.labels), `chart ${id} series ${chart.labels}`);
    assert(ys.length === want.labels.length && ys.every((y) => y.length === xs.length), `chart ${id} series as long as time`);
    const values = ys.flat().filter((v) => v != null);
    assert(values.length > 0, `chart ${id} has values: ${JSON.stringify(chart.data)}`);
    if (want.positive) assert(values.some((v) => v > 0), `chart ${id} shows the traffic: ${JSON.stringify(chart.data)}`);
    const legend = await page.locator(`#chart-${id} .u-legend`).textContent();
    for (const label of want.labels) assert(legend.includes(label), `chart ${id} legend names ${label}: ${legend}`);
  }
  const circuit = drawn.circuit.data[1];
  assert(circuit[circuit.length - 1] === 0, `the circuit is closed: ${circuit}`);
  t.step("every chart has data points");

  const before = drawn.content.data[0].at(-1);
  await page.waitForFunction((last) => window.lorewireCharts.content.data[0].at(-1) > last, before, { timeout: 15000 });
  t.step("charts refreshed");

  const violations = await page.evaluate(() => window.cspViolations);
  assert(violations.length === 0, `no CSP violation: ${violations.join(", ")}`);
});
