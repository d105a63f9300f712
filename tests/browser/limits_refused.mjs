// A player over a usage limit is told so where the request was made: a content request and a
// run start refused with error:budget_exceeded (level player) show "You've reached today's
// limit" with the server's message; over the start rate, "Slow down: try again in N s".
import { run, join, base, adminToken, assert } from "./lib.mjs";

async function putLimits(body) {
  const resp = await fetch(`${base}/admin/api/limits`, {
    method: "PUT",
    headers: { authorization: `Bearer ${adminToken}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert(resp.ok, `PUT /admin/api/limits: ${resp.status}`);
}

async function request(page, subject) {
  await page.fill("#content-subject", String(subject));
  await page.click("#content-form button[type=submit]");
}

run("limits_refused", async (t) => {
  const page = await t.page("player");
  await join(page, "Thrifty");

  await request(page, 1);
  const notice = page.locator('#content-error .limit-notice[data-code="budget_exceeded"][data-level="player"]');
  await notice.waitFor();
  const text = await notice.textContent();
  assert(text.includes("You've reached today's limit"), `the headline, got ${text}`);
  assert(text.includes("your daily"), `the server's message, got ${text}`);
  assert((await page.locator(".card").count()) === 0, "no card for a refused request");
  t.step("a refused content request says the daily limit is reached");

  await page.fill("#gen-input", "a cursed bell");
  await page.click("#gen-start");
  const runNotice = page.locator('#gen-error .limit-notice[data-code="budget_exceeded"][data-level="player"]');
  await runNotice.waitFor();
  assert((await runNotice.textContent()).includes("You've reached today's limit"), "the run's refusal");
  t.step("a refused run start says the daily limit is reached");

  await putLimits({ player_daily_tokens: null, player_llm_rate: "1/1m" });
  await request(page, 2);
  await page.locator('.card[data-key="quest:2"]').waitFor();
  assert((await page.textContent("#content-error")) === "", "an allowed request clears the notice");
  await request(page, 3);
  const slow = page.locator('#content-error .limit-notice[data-code="rate_limited"]');
  await slow.waitFor();
  const slowText = await slow.textContent();
  assert(/Slow down: try again in \d+ s/.test(slowText), `the wait, got ${slowText}`);
  assert(slowText.includes("too many new items and runs"), `the server's message, got ${slowText}`);
  t.step("over the start rate the page says how long to wait");
});
