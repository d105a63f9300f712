// The dashboard's spend panel: today's studio spend (tokens, USD) against its daily limits, the
// day's top players with a Block / Unblock button each, the forms that change the studio's and
// the default player's daily limits and one player's own (PROTOCOL §5).
import { $, el, usd } from "./dom.js";
import { api } from "./admin-api.js";
import { tile } from "./admin-summary.js";

const LIMIT_FIELDS = {
  "limit-studio-usd": "studio_daily_usd",
  "limit-studio-tokens": "studio_daily_tokens",
  "limit-player-usd": "player_daily_usd",
  "limit-player-tokens": "player_daily_tokens",
  "limit-player-rate": "player_llm_rate",
};

let formDirty = false;
for (const id of Object.keys(LIMIT_FIELDS)) $(id).addEventListener("input", () => (formDirty = true));

const count = (n) => Number(n || 0).toLocaleString("en-US");
/** `spent / limit`, or `spent / no limit`. */
const against = (spent, limit, show) => `${show(spent)} / ${limit == null ? "no limit" : show(limit)}`;

/** Today's usage, the limits and the top players' blocked state, drawn. */
export async function loadSpend() {
  const [limits, day] = await Promise.all([api("GET", "/admin/api/limits"), api("GET", "/admin/api/usage?limit=10")]);
  $("spend-day").textContent = `${day.day} (UTC)`;
  $("spend-tiles").replaceChildren(
    tile("studio tokens today", against(day.tokens, limits.studio_daily_tokens, count), "studio-tokens"),
    tile("studio USD today", against(day.usd, limits.studio_daily_usd, usd), "studio-usd"),
    tile("per player, daily", `${limits.player_daily_tokens == null ? "no token limit" : `${count(limits.player_daily_tokens)} tokens`} · ${limits.player_daily_usd == null ? "no USD limit" : usd(limits.player_daily_usd)}`, "player-limits"),
    tile("player start rate", limits.player_llm_rate, "player-rate"),
  );
  if (!formDirty) {
    for (const [id, key] of Object.entries(LIMIT_FIELDS)) $(id).value = limits[key] ?? "";
  }
  const players = await Promise.all(day.top.map((p) => api("GET", `/admin/api/players/${p.user_id}`).catch(() => null)));
  renderTop(day.top, players);
}

function renderTop(top, players) {
  if (!top.length) {
    $("spend-top").replaceChildren(el("p", { class: "muted" }, "no player has spent anything today"));
    return;
  }
  const rows = top.map((p, i) => {
    const blocked = Boolean(players[i] && players[i].blocked);
    const button = el("button", { type: "button", class: blocked ? "small" : "small danger", dataset: { action: blocked ? "unblock" : "block" } }, blocked ? "Unblock" : "Block");
    button.addEventListener("click", () => setBlocked(p.user_id, !blocked, button));
    return el(
      "tr",
      { dataset: { userId: p.user_id, blocked: String(blocked) } },
      el("td", {}, p.user_id),
      el("td", {}, p.nickname),
      el("td", { dataset: { cell: "tokens" } }, count(p.tokens)),
      el("td", { dataset: { cell: "usd" } }, usd(p.usd)),
      el("td", { dataset: { cell: "state" } }, blocked ? "blocked" : "active"),
      el("td", {}, button, " ", limitsButton(players[i])),
    );
  });
  const head = el("tr", {}, ...["id", "nickname", "tokens", "USD", "state", ""].map((h) => el("th", {}, h)));
  $("spend-top").replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

/** A button that puts the player's own limits in the player form. */
function limitsButton(player) {
  const button = el("button", { type: "button", class: "small ghost", dataset: { action: "limits" } }, "Limits…");
  button.disabled = !player;
  button.addEventListener("click", () => {
    $("player-limits-id").value = player.user_id;
    $("player-limits-tokens").value = player.limits.own_daily_tokens ?? "";
    $("player-limits-usd").value = player.limits.own_daily_usd ?? "";
    showPlayerLimits(player);
  });
  return button;
}

/** One player's limits that apply (its own, else the defaults) and its spend today. */
function showPlayerLimits(p) {
  const tokens = p.limits.daily_tokens == null ? "no token limit" : `${count(p.limits.daily_tokens)} tokens`;
  const dollars = p.limits.daily_usd == null ? "no USD limit" : usd(p.limits.daily_usd);
  const own = p.limits.own_daily_tokens != null || p.limits.own_daily_usd != null ? "its own" : "the defaults";
  $("player-limits").textContent = `${p.nickname} (#${p.user_id}): ${tokens} · ${dollars} a day (${own}); today ${count(p.today.tokens)} tokens, ${usd(p.today.usd)}`;
}

$("player-limits-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("spend-error").textContent = "";
  const id = $("player-limits-id").value.trim();
  if (!id) return;
  const number = (raw) => (raw.trim() === "" ? null : Number(raw));
  const body = { daily_tokens: number($("player-limits-tokens").value), daily_usd: number($("player-limits-usd").value) };
  try {
    showPlayerLimits(await api("PUT", `/admin/api/players/${encodeURIComponent(id)}`, body));
  } catch (err) {
    $("spend-error").textContent = err.message;
  }
});

async function setBlocked(userId, blocked, button) {
  button.disabled = true;
  $("spend-error").textContent = "";
  try {
    await api("PUT", `/admin/api/players/${userId}`, { blocked });
    await loadSpend();
  } catch (err) {
    $("spend-error").textContent = err.message;
    button.disabled = false;
  }
}

/** The form's value for `key`: a number, null when empty (no limit); the rate as text, left out when empty. */
function formValue(id, key) {
  const raw = $(id).value.trim();
  if (key === "player_llm_rate") return raw === "" ? undefined : raw;
  return raw === "" ? null : Number(raw);
}

$("limits-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("spend-error").textContent = "";
  const body = {};
  for (const [id, key] of Object.entries(LIMIT_FIELDS)) {
    const value = formValue(id, key);
    if (value !== undefined) body[key] = value;
  }
  try {
    await api("PUT", "/admin/api/limits", body);
    formDirty = false;
    await loadSpend();
    $("limits-saved").textContent = "saved";
    setTimeout(() => ($("limits-saved").textContent = ""), 2500);
  } catch (err) {
    $("spend-error").textContent = err.message;
  }
});
