// After the server drops the socket, the page reconnects as the same player, subscribes again
// and shows the item's final state (which it reached while the page was offline).
import { run, join, base, assert } from "./lib.mjs";

run("reconnect", async (t) => {
  const page = await t.page("player");
  const me = await join(page, "Dara");
  await page.evaluate(() => (window.__noReload = true));
  await page.selectOption("#content-kind", "npc");
  await page.fill("#content-subject", "7");
  await page.click("#content-form button[type=submit]");
  const card = page.locator('.card[data-key="npc:7"]');
  await card.and(page.locator('[data-status="pending"]')).waitFor();
  t.step("card pending");

  // Offline first, so the page cannot reconnect before the item is done.
  await page.context().setOffline(true);
  await t.server("drop-sockets");
  await page.waitForSelector('#status[data-state="reconnecting"]');
  t.step("socket dropped, page reconnecting");

  const token = await page.evaluate(() => localStorage.getItem("lorewire.token"));
  assert(token, "the resume token is kept in localStorage");
  const deadline = Date.now() + 15000;
  let item;
  for (;;) {
    const resp = await fetch(`${base}/api/content/npc/7`, { headers: { authorization: `Bearer ${token}` } });
    item = await resp.json();
    if (item.status !== "pending") break;
    assert(Date.now() < deadline, "the item finished on the server");
    await new Promise((r) => setTimeout(r, 100));
  }
  assert((await card.getAttribute("data-status")) === "pending", "the page missed the update while offline");
  t.step("item finished while the page was offline");

  await page.context().setOffline(false);
  await page.waitForSelector('#status[data-state="live"]', { timeout: 20000 });
  // The page shows exactly what the server has.
  await card.and(page.locator(`[data-status="${item.status}"][data-version="${item.version}"]`)).waitFor();
  assert(item.status === "ready", `the fake answered in time (got ${item.status} / ${item.reason})`);
  const after = await page.evaluate(() => Number(document.body.dataset.userId));
  assert(after === me.user_id, `resumed as the same player (${after} vs ${me.user_id})`);
  assert(await page.evaluate(() => window.__noReload === true), "the page was not reloaded");
  t.step("reconnected, resubscribed, final state shown");
});
