// The admin dashboard: token sign-in (sessionStorage) and the refresh loop over its parts, each
// its own module: LLM settings and circuit (admin-llm.js), overview and players
// (admin-summary.js), the last hour's charts (charts.js), runs / costs / budgets / dead
// letters where the server has them (admin-runs.js), moderation flags (admin-moderation.js) and
// today's spend against the usage limits, with Block buttons (admin-spend.js).
import { $ } from "./dom.js";
import { api, token } from "./admin-api.js";
import { loadLlm } from "./admin-llm.js";
import { loadUpstreams } from "./admin-upstreams.js";
import { loadSummary, loadUsers } from "./admin-summary.js";
import { loadRuns } from "./admin-runs.js";
import { loadFlags } from "./admin-moderation.js";
import { loadSpend } from "./admin-spend.js";
import { chartBoxes, startCharts, stopCharts } from "./charts.js";

const REFRESH_MS = 3000;
let timer = null;

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  token.set($("token").value.trim());
  await signIn();
});
$("charts").replaceChildren(...chartBoxes());
$("logout").addEventListener("click", () => {
  token.forget();
  clearInterval(timer);
  stopCharts();
  $("dash").hidden = true;
  $("login").hidden = false;
  $("logout").hidden = true;
});

async function signIn() {
  $("login-error").textContent = "";
  try {
    await loadLlm();
  } catch (err) {
    token.forget();
    $("login-error").textContent = err.status === 403 ? "wrong admin token" : err.message;
    return;
  }
  $("login").hidden = true;
  $("dash").hidden = false;
  $("logout").hidden = false;
  // The charts need the dashboard shown to know their width.
  startCharts(api);
  await refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

let runsTick = 0;
async function refresh() {
  try {
    await Promise.all([loadLlm(), loadUpstreams(), loadSummary(), loadUsers(), loadSpend()]);
    // The run sections change less often; refresh them every third tick.
    if (runsTick++ % 3 === 0) await Promise.all([loadRuns(), loadFlags()]);
    $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (err.status === 401 || err.status === 403) $("logout").click();
    $("refreshed").textContent = `refresh failed: ${err.message}`;
  }
}

if (token.get()) signIn();
