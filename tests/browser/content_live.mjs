// A content card turns from pending to ready without a reload.
import { run, join, assert } from "./lib.mjs";

run("content_live", async (t) => {
  const page = await t.page("player");
  await join(page, "Cora");
  await page.evaluate(() => (window.__noReload = true));
  await page.selectOption("#content-kind", "quest");
  await page.fill("#content-subject", "42");
  await page.fill("#content-context", "character_name=Cora, quest_name=The Ashen Well");
  await page.click("#content-form button[type=submit]");
  const card = page.locator('.card[data-key="quest:42"]');
  await card.and(page.locator('[data-status="pending"]')).waitFor();
  t.step("card pending");
  await card.and(page.locator('[data-status="ready"]')).waitFor();
  const flavor = await card.locator('[data-field="flavorText"]').textContent();
  assert(flavor.includes("Fake flavorText"), `ready card shows the generated text, got ${flavor}`);
  assert(await page.evaluate(() => window.__noReload === true), "the page was not reloaded");
  t.step("card ready, live");
});
