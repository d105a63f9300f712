// With a list maximum of 2 (the Rust test's setting) and four players already online, a player
// who joins sees the whole count and the first two; "Show more" pages through the rest, then
// goes away. When someone leaves (above the maximum, only the count comes), the count follows.
import { run, join } from "./lib.mjs";

run("presence_pages", async (t) => {
  const ada = await t.page("ada");
  await join(ada, "Ada");
  const rows = (n) => ada.waitForFunction((n) => document.querySelectorAll("#presence li").length === n, n);
  const more = ada.locator("#presence-more");
  await ada.locator("#online-count", { hasText: "5 online" }).waitFor();
  await rows(2);
  await more.waitFor({ state: "visible" });
  t.step("count and the first page");

  await more.click();
  await rows(4);
  await more.waitFor({ state: "visible" });
  await more.click();
  await rows(5);
  await more.waitFor({ state: "hidden" });
  await ada.locator("#presence li.me-row", { hasText: "Ada" }).waitFor();
  t.step("paged through everyone");

  await t.server("leave");
  await ada.locator("#online-count", { hasText: "4 online" }).waitFor();
  await more.waitFor({ state: "visible" });
  t.step("the count follows a leave");
});
