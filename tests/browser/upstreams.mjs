// The dashboard's upstreams: every upstream with its circuit, last error, calls, failures and
// latency; the second shown open after its failures, and its reset button closing it; no key on
// the page.
import { run, base, adminToken, assert } from "./lib.mjs";

run("upstreams", async (t) => {
  const page = await t.page("upstreams");
  await page.goto(`${base}/admin`);
  await page.fill("#token", adminToken);
  await page.click("#login-form button[type=submit]");
  const first = page.locator('#upstreams tr[data-upstream="1"]');
  const second = page.locator('#upstreams tr[data-upstream="2"]');
  await first.waitFor();
  await second.locator('td[data-state="open"]').waitFor();
  assert((await second.textContent()).includes("second-model"), "the second names its model");
  assert((await second.textContent()).includes("api_error_500"), "the second shows its last error");
  assert(/[0-9.]+ ms a call/.test(await second.textContent()), "the second shows its latency");
  assert((await first.locator('td[data-state="closed"]').count()) === 1, "the first stays closed");
  assert(!(await page.content()).includes("CANARY"), "no key reaches the page");
  t.step("every upstream shown, the second open with its last error");

  await second.locator("button").click();
  await second.locator('td[data-state="closed"]').waitFor();
  t.step("reset closed the second's circuit");
});
