// The generation panel streams a run to its end, aborts a slow one, and the admin dashboard
// lists both runs, the spend, and a dead letter it can re-queue.
import { run, join, base, adminToken, assert } from "./lib.mjs";

run("generation", async (t) => {
  const page = await t.page("player");
  await join(page, "Wren");
  await page.fill("#gen-project", "browser");
  await page.fill("#gen-input", "a lighthouse keeper's logbook");
  await page.click("#gen-start");
  await page.locator("#gen-state", { hasText: /^done/ }).waitFor();
  const text = await page.textContent("#gen-output");
  assert(text === "Fake generated prose.", `the streamed text is the whole answer, got ${JSON.stringify(text)}`);
  t.step("run streamed to done");

  await t.server("slow-stream");
  await page.fill("#gen-input", "a storm over the harbour");
  await page.click("#gen-start");
  await page.waitForFunction(() => document.getElementById("gen-output").textContent.length > 0);
  await page.click("#gen-abort");
  await page.locator("#gen-state", { hasText: /^aborted/ }).waitFor();
  t.step("slow run aborted mid-stream");

  await t.server("dead-letter");
  const admin = await t.page("admin");
  await admin.goto(`${base}/admin`);
  await admin.fill("#token", adminToken);
  await admin.click("#login-form button[type=submit]");
  for (const status of ["done", "aborted", "dead"]) {
    await admin.locator("#runs td", { hasText: new RegExp(`^${status}$`) }).first().waitFor();
  }
  await admin.locator("#costs", { hasText: "total spend" }).waitFor();
  const retry = admin.locator("#dead-letters button", { hasText: "Retry" });
  await retry.waitFor();
  await retry.click();
  await admin.locator("#dead-letters button", { hasText: "Retry" }).waitFor({ state: "detached" });
  t.step("admin sees the runs and re-queues the dead letter");

  await admin.fill("#budget-project", "browser");
  await admin.fill("#budget-limit", "2.5");
  await admin.click("#budget-set");
  await admin.locator("#budgets .tile", { hasText: "$2.5000" }).waitFor();
  // Read it back from the server into an emptied panel.
  await admin.evaluate(() => document.getElementById("budgets").replaceChildren());
  await admin.click("#budget-form button[type=submit]");
  await admin.locator("#budgets .tile", { hasText: "$2.5000" }).waitFor();
  t.step("admin sets a project's budget and reads it back");
});
