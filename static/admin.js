// The admin dashboard: token sign-in (sessionStorage), LLM settings (the key is write-only),
// circuit breaker with reset, live summary, the last hour's charts (charts.js), players, and
// runs / costs / budgets / dead letters where the server has them (a 404 shows "not available").
import { chartBoxes, startCharts, stopCharts } from "./charts.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "lorewire.admin";
const REFRESH_MS = 3000;
let timer = null;

class HttpError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try {
    data = await resp.json();
  } catch {
    /* empty body */
  }
  if (!resp.ok) throw new HttpError(resp.status, data);
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const pct = (x) => (x == null ? "n/a" : `${(x * 100).toFixed(1)}%`);
const usd = (x) => `$${Number(x || 0).toFixed(4)}`;

function tile(key, value, id) {
  return el("div", { class: "tile", ...(id ? { "data-tile": id } : {}) }, el("div", { class: "v" }, value), el("div", { class: "k" }, key));
}

// --- sign-in ---------------------------------------------------------------------------------

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  await signIn();
});
$("charts").replaceChildren(...chartBoxes());
$("logout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
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
    sessionStorage.removeItem(TOKEN_KEY);
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

if (sessionStorage.getItem(TOKEN_KEY)) signIn();

// --- LLM settings and circuit ------------------------------------------------------------------

let formDirty = false;
for (const id of ["llm-provider", "llm-model", "llm-base-url", "llm-key"]) $(id).addEventListener("input", () => (formDirty = true));

async function loadLlm() {
  const llm = await api("GET", "/admin/api/llm");
  if (!formDirty) {
    $("llm-provider").value = llm.provider;
    $("llm-model").value = llm.model;
    $("llm-base-url").value = llm.base_url;
  }
  $("llm-key-state").textContent = llm.api_key_set ? `a key is set${llm.api_key_last4 ? `, ending in …${llm.api_key_last4}` : ""}` : "no key set";
  $("llm-key-state").dataset.set = llm.api_key_set;
  $("llm-last-error").textContent = llm.last_error || "none";
  $("llm-notice").textContent = llm.notice || "";
  $("llm-notice").hidden = !llm.notice;
  renderCircuit(llm.circuit);
  return llm;
}

function renderCircuit(c) {
  const state = $("circuit-state");
  state.dataset.state = c.state;
  state.textContent = c.state.replace("_", "-");
  const parts = [`failures in window: ${c.failures}`];
  if (c.opened_at) parts.push(`opened ${fmtTime(c.opened_at)}`);
  if (c.resets_at) parts.push(`half-opens ${fmtTime(c.resets_at)}`);
  $("circuit-detail").textContent = parts.join(" · ");
}

$("circuit-reset").addEventListener("click", async () => {
  try {
    const reply = await api("POST", "/admin/api/llm/circuit/reset");
    renderCircuit(reply.circuit);
    $("circuit-msg").textContent = "circuit closed";
  } catch (err) {
    $("circuit-msg").textContent = err.message;
  }
});

$("llm-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("llm-error").textContent = "";
  const body = { provider: $("llm-provider").value, model: $("llm-model").value.trim(), base_url: $("llm-base-url").value.trim() };
  const key = $("llm-key").value.trim();
  if (key) body.api_key = key;
  await saveLlm(body);
});

$("llm-key-clear").addEventListener("click", () => saveLlm({ api_key: null }));

async function saveLlm(body) {
  try {
    await api("PUT", "/admin/api/llm", body);
    $("llm-key").value = "";
    formDirty = false;
    await loadLlm();
    $("llm-saved").textContent = "saved";
    setTimeout(() => ($("llm-saved").textContent = ""), 2500);
  } catch (err) {
    $("llm-error").textContent = err.message;
  }
}

// --- summary and players ---------------------------------------------------------------------

async function loadSummary() {
  const s = await api("GET", "/admin/api/metrics/summary");
  $("tiles").replaceChildren(
    tile("players", s.users, "users"),
    tile("online now", s.online, "online"),
    tile("messages", s.messages, "messages"),
    tile("D1 retention", pct(s.d1_retention), "d1"),
    tile("D7 retention", pct(s.d7_retention), "d7"),
    tile("queue depth", s.queue_depth ?? "—", "queue"),
    tile("spend", usd(s.spend && s.spend.total_usd), "spend"),
  );
  const content = Object.entries(s.content || {}).map(([k, v]) => tile(`content ${k}`, v, `content-${k}`));
  const runs = Object.entries(s.runs || {}).map(([k, v]) => tile(`runs ${k}`, v, `runs-${k}`));
  $("by-status").replaceChildren(...content, ...(runs.length ? runs : [tile("runs", "none", "runs")]));
  if (s.circuit) renderCircuit(s.circuit);
}

async function loadUsers() {
  const data = await api("GET", "/admin/api/users?limit=200");
  $("users-total").textContent = `${data.total} in all`;
  $("users").replaceChildren(
    ...data.users.map((u) =>
      el(
        "tr",
        { dataset: { userId: u.user_id } },
        el("td", {}, u.user_id),
        el("td", {}, u.nickname),
        el("td", {}, u.variant),
        el("td", {}, u.online ? "●" : ""),
        el("td", {}, u.message_count),
        el("td", {}, fmtTime(u.first_seen)),
        el("td", {}, fmtTime(u.last_seen)),
      ),
    ),
  );
}

// --- optional sections (generation runs) -------------------------------------------------------

function unavailable(target) {
  target.replaceChildren(el("p", { class: "na" }, "not available on this server"));
}

async function optional(target, path, render) {
  try {
    render(await api("GET", path));
  } catch (err) {
    if (err.status === 404 || err.status === 405) unavailable(target);
    else target.replaceChildren(el("p", { class: "error-text" }, err.message));
  }
}

function table(headers, rows) {
  if (!rows.length) return el("p", { class: "muted" }, "none yet");
  return el("table", {}, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))), el("tbody", {}, ...rows));
}

function listOf(data, key) {
  if (Array.isArray(data)) return data;
  return (data && (data[key] || data.items)) || [];
}

// Corrupt rows the server left out of a run list, named so the admin can repair them.
function skippedNote(data) {
  const skipped = (data && data.skipped) || [];
  if (!skipped.length) return "";
  return el("p", { class: "error-text" }, `${skipped.length} corrupt run row(s) left out: ${skipped.map((s) => `${s.run_id} (${s.error})`).join(", ")}`);
}

async function loadOptional() {
  await optional($("runs"), "/admin/api/runs?limit=20", (data) => {
    const runs = listOf(data, "runs");
    $("runs").replaceChildren(table(["run", "project", "action", "status", "cost", "created"], runs.map((r) => el("tr", {}, el("td", {}, String(r.run_id).slice(0, 8)), el("td", {}, r.project_id), el("td", {}, r.action), el("td", {}, r.status), el("td", {}, usd(r.cost_usd)), el("td", {}, fmtTime(r.created_at))))), skippedNote(data));
  });
  await optional($("dead-letters"), "/admin/api/dead-letters", (data) => {
    const dead = listOf(data, "runs");
    $("dead-letters").replaceChildren(
      table(["run", "project", "error", ""], dead.map((r) => {
        const retry = el("button", { type: "button", class: "small" }, "Retry");
        retry.addEventListener("click", async () => {
          retry.disabled = true;
          try {
            await api("POST", `/admin/api/dead-letters/${encodeURIComponent(r.run_id)}/retry`);
          } catch (err) {
            retry.textContent = err.message;
          }
          loadOptional();
        });
        return el("tr", {}, el("td", {}, String(r.run_id).slice(0, 8)), el("td", {}, r.project_id), el("td", {}, r.error ? `${r.error.code}: ${r.error.message}` : ""), el("td", {}, retry));
      })),
      skippedNote(data),
    );
  });
  await optional($("costs"), "/admin/api/costs", (data) => {
    const events = listOf(data, "events").slice(0, 20);
    $("costs").replaceChildren(tile("total spend", usd(data.total_usd)), table(["project", "model", "cost", "at"], events.map((c) => el("tr", {}, el("td", {}, c.project_id), el("td", {}, c.model), el("td", {}, usd(c.cost_usd)), el("td", {}, fmtTime(c.created_at))))));
  });
}

function renderBudget(b) {
  $("budgets").replaceChildren(el("div", { class: "tiles" }, tile("limit", b.limit_usd == null ? "none" : usd(b.limit_usd)), tile("spent", usd(b.spent_usd)), tile("reserved", usd(b.reserved_usd))));
}

$("budget-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const project = $("budget-project").value.trim();
  if (!project) return;
  optional($("budgets"), `/admin/api/budgets/${encodeURIComponent(project)}`, renderBudget);
});

$("budget-set").addEventListener("click", async () => {
  const project = $("budget-project").value.trim();
  const raw = $("budget-limit").value.trim();
  if (!project || raw === "") return;
  try {
    renderBudget(await api("PUT", `/admin/api/budgets/${encodeURIComponent(project)}`, { limit_usd: Number(raw) }));
  } catch (err) {
    $("budgets").replaceChildren(el("p", { class: "error-text" }, err.message));
  }
});

let optionalTick = 0;
async function refresh() {
  try {
    await Promise.all([loadLlm(), loadSummary(), loadUsers()]);
    // The run sections change less often; refresh them every third tick.
    if (optionalTick++ % 3 === 0) await loadOptional();
    $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (err.status === 401 || err.status === 403) $("logout").click();
    $("refreshed").textContent = `refresh failed: ${err.message}`;
  }
}
