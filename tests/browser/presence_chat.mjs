// Two players in two browser contexts see each other online and each other's messages, with
// moods settling live; when one leaves, the other sees it.
import { run, join, say, message, assert } from "./lib.mjs";

run("presence_chat", async (t) => {
  const ada = await t.page("ada");
  const bo = await t.page("bo");
  const a = await join(ada, "Ada");
  const b = await join(bo, "Bo");
  assert(a.user_id !== b.user_id, "two players");
  t.step("both joined");

  await ada.locator("#presence li", { hasText: "Bo" }).waitFor();
  await bo.locator("#presence li", { hasText: "Ada" }).waitFor();
  await ada.locator("#online-count", { hasText: "2 online" }).waitFor();
  t.step("presence both ways");

  await say(ada, "Hello from Ada");
  await message(bo, "Hello from Ada").waitFor({ state: "attached" });
  await say(bo, "Hi Ada, Bo here");
  await message(ada, "Hi Ada, Bo here").waitFor({ state: "attached" });
  t.step("chat both ways");

  // The mood arrives after the message, on both sides.
  for (const page of [ada, bo]) {
    await page.locator('.msg[data-mood-status="ready"][data-mood="happy"]', { hasText: "Hello from Ada" }).first().waitFor({ state: "attached" });
  }
  t.step("moods settled");

  await bo.context().close();
  await ada.locator("#presence li", { hasText: "Bo" }).waitFor({ state: "detached" });
  await ada.locator("#online-count", { hasText: "1 online" }).waitFor();
  t.step("leave seen");
});
