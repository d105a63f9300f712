// The dashboard's generation-run sections: recent runs, dead letters with a retry button,
// costs and a project's budget. A server without runs answers 404: "not available".
import { $, el, fmtTime, usd } from "./dom.js";
import { api } from "./admin-api.js";
import { tile } from "./admin-summary.js";

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

/** Runs, dead letters and costs, each "not available" where the server has none. */
export async function loadRuns() {
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
          loadRuns();
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
