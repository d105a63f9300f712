// The admin's spend panel: a player's content request shows up as that player's spend today
// (tokens and USD, and the studio's total against its limits), and the Block button blocks the
// player (GET /admin/api/players/{id} then says so) and turns into Unblock; the limits forms set
// the studio's limits and the player's own.
import { run, join, base, adminToken, assert } from "./lib.mjs";

async function adminApi(method, path, body) {
  const resp = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${adminToken}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  assert(resp.ok, `${method} ${path}: ${resp.status}`);
  return resp.json();
}

run("spend", async (t) => {
  const player = await t.page("player");
  const { user_id } = await join(player, "Spender");
  await player.fill("#content-subject", "7");
  await player.click("#content-form button[type=submit]");
  await player.locator('.card[data-key="quest:7"][data-status="ready"]').waitFor();
  t.step("the player's item is ready");

  const admin = await t.page("admin");
  await admin.goto(`${base}/admin`);
  await admin.fill("#token", adminToken);
  await admin.click("#login-form button[type=submit]");
  const row = admin.locator(`#spend-top tr[data-user-id="${user_id}"]`);
  await row.waitFor();
  assert((await row.textContent()).includes("Spender"), "the row names the player");
  const tokens = Number((await row.locator('[data-cell="tokens"]').textContent()).replace(/,/g, ""));
  assert(tokens === 15, `the player's tokens today, got ${tokens}`);
  const spentUsd = await row.locator('[data-cell="usd"]').textContent();
  assert(spentUsd === "$0.0001", `the player's USD today, got ${spentUsd}`);
  const studio = await admin.locator('[data-tile="studio-tokens"] .v').textContent();
  assert(studio === "15 / 1,000,000", `the studio's tokens against its limit, got ${studio}`);
  const studioUsd = await admin.locator('[data-tile="studio-usd"] .v').textContent();
  assert(studioUsd.endsWith("/ no limit"), `no studio USD limit, got ${studioUsd}`);
  t.step("the spend panel shows the player's spend");

  await row.locator('button[data-action="block"]').click();
  await admin.locator(`#spend-top tr[data-user-id="${user_id}"][data-blocked="true"]`).waitFor();
  assert((await adminApi("GET", `/admin/api/players/${user_id}`)).blocked === true, "the API says blocked");
  t.step("Block blocked the player");

  // The limits form changes the studio's limits; empty means no limit.
  await admin.fill("#limit-studio-usd", "2.5");
  await admin.fill("#limit-studio-tokens", "");
  await admin.click("#limits-form button[type=submit]");
  await admin.locator("#limits-saved", { hasText: "saved" }).waitFor();
  const limits = await adminApi("GET", "/admin/api/limits");
  assert(limits.studio_daily_usd === 2.5 && limits.studio_daily_tokens === null, `limits saved: ${JSON.stringify(limits)}`);
  await admin.locator('[data-tile="studio-tokens"] .v', { hasText: "15 / no limit" }).waitFor();
  t.step("the limits form saved the studio's limits");

  // The player's own limit: the row's Limits… button fills the form, which sets it.
  await admin.locator(`#spend-top tr[data-user-id="${user_id}"] button[data-action="limits"]`).click();
  assert((await admin.inputValue("#player-limits-id")) === String(user_id), "the form names the player");
  await admin.fill("#player-limits-tokens", "5000");
  await admin.click("#player-limits-form button[type=submit]");
  await admin.locator("#player-limits", { hasText: "5,000 tokens · no USD limit a day (its own)" }).waitFor();
  const own = (await adminApi("GET", `/admin/api/players/${user_id}`)).limits;
  assert(own.own_daily_tokens === 5000 && own.daily_tokens === 5000, `the player's own limit: ${JSON.stringify(own)}`);
  t.step("the player's own daily limit is set");

  await admin.locator(`#spend-top tr[data-user-id="${user_id}"] button[data-action="unblock"]`).click();
  await admin.locator(`#spend-top tr[data-user-id="${user_id}"][data-blocked="false"]`).waitFor();
  assert((await adminApi("GET", `/admin/api/players/${user_id}`)).blocked === false, "the API says unblocked");
  t.step("Unblock unblocked the player");
});
