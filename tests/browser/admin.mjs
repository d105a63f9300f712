// The admin dashboard: sign-in with the token, the circuit shown open after upstream failures,
// and its reset button closing it; the moderation flag the Rust test made; the key is never on
// the page; without a key, the notice that every item falls back.
import { run, base, adminToken, assert } from "./lib.mjs";

run("admin", async (t) => {
  const page = await t.page("admin");
  await page.goto(`${base}/admin`);
  await page.fill("#token", "not-the-token");
  await page.click("#login-form button[type=submit]");
  await page.locator("#login-error", { hasText: "wrong admin token" }).waitFor();
  t.step("wrong token refused");

  await page.fill("#token", adminToken);
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector('#circuit-state[data-state="open"]');
  t.step("circuit shown open");
  await page.locator("#llm-key-state", { hasText: "a key is set" }).waitFor();
  await page.locator('#users tr').first().waitFor();
  await page.locator('[data-tile="users"] .v').waitFor();
  await page.locator("#runs .na, #runs table, #runs .muted").first().waitFor();
  await page.locator("#flags tr[data-flag-id]", { hasText: "B4D Bo" }).waitFor();
  assert((await page.textContent("#flags")).includes("word_list"), "the flag says why");
  const html = await page.content();
  assert(!html.includes("CANARY"), "the API key never reaches the page");

  await page.click("#circuit-reset");
  await page.waitForSelector('#circuit-state[data-state="closed"]');
  // And it stays closed across the next refresh.
  await page.waitForTimeout(3500);
  assert((await page.getAttribute("#circuit-state", "data-state")) === "closed", "still closed after a refresh");
  t.step("reset closed the circuit");

  assert(await page.locator("#llm-notice").isHidden(), "no notice while calls can be made");
  await page.click("#llm-key-clear");
  await page.locator("#llm-key-state", { hasText: "no key set" }).waitFor();
  await page.locator("#llm-notice", { hasText: "every content item will fall back with `no_config`" }).waitFor();
  assert((await page.textContent("#llm-notice")).includes("Try it with a local model"), "the notice points to README");
  t.step("without a key the dashboard says every item falls back");
});
