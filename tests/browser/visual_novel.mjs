// A treatment player sees the lobby as a visual-novel scene (speaker, portrait following the
// mood, background from the mood); a control player sees the plain chat list.
import { run, join, say, assert } from "./lib.mjs";

run("visual_novel", async (t) => {
  const first = await t.page("first");
  const second = await t.page("second");
  const one = await join(first, "Eira");
  const two = await join(second, "Finn");
  assert(one.variant !== two.variant, "consecutive players get both variants");
  const [vn, plain] = one.variant === "treatment" ? [first, second] : [second, first];
  const vnName = one.variant === "treatment" ? "Eira" : "Finn";

  assert(await vn.isVisible("#vn-scene"), "treatment: scene visible");
  assert(!(await vn.isVisible("#chat")), "treatment: no plain list");
  assert(await plain.isVisible("#chat"), "control: chat list visible");
  assert(!(await plain.isVisible("#vn-scene")), "control: no scene");

  await say(vn, "What a wonderful day in the lobby!");
  await vn.locator("#vn-speaker", { hasText: vnName }).waitFor();
  await vn.locator("#vn-text", { hasText: "What a wonderful day in the lobby!" }).waitFor();
  await vn.waitForSelector('#portrait[data-mood="happy"]');
  // The background follows after its debounce.
  await vn.waitForSelector('#vn-scene[data-bg="happy"]', { timeout: 5000 });
  t.step("speaker, portrait and background follow the message");

  await say(plain, "Hello from the plain list");
  await vn.locator("#vn-text", { hasText: "Hello from the plain list" }).waitFor();
  await plain.locator("#chat .msg", { hasText: "Hello from the plain list" }).waitFor();
  t.step("the other player's line shows in the scene");
});
