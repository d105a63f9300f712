// The dashboard's overview tiles (players, retention, queue, spend, items and runs by status)
// and the players table.
import { $, el, fmtTime, pct, usd } from "./dom.js";
import { api } from "./admin-api.js";
import { renderCircuit } from "./admin-llm.js";

/** A figure with its name under it; `id` names the tile for tests. */
export function tile(key, value, id) {
  return el("div", { class: "tile", ...(id ? { "data-tile": id } : {}) }, el("div", { class: "v" }, value), el("div", { class: "k" }, key));
}

export async function loadSummary() {
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

export async function loadUsers() {
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
