// Both pages load under their Content-Security-Policy without a failed request, a console
// error or a policy violation, and the icon they link is there.
import { run, join, base, adminToken, assert } from "./lib.mjs";

/** Everything that went wrong on `page`, as it happens. */
function watch(page) {
  const problems = [];
  page.on("console", (m) => m.type() === "error" && problems.push(`console: ${m.text()}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} (${r.failure()?.errorText})`));
  page.on("response", (r) => r.status() >= 400 && problems.push(`${r.status()} ${r.request().method()} ${r.url()}`));
  // A CSP violation is also an event in the page: keep those it reports.
  page.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`);
    });
  });
  return problems;
}

async function iconIsServed(page) {
  return page.evaluate(async () => {
    const link = document.querySelector('link[rel="icon"]');
    if (!link) return "no icon link";
    const resp = await fetch(link.href);
    return resp.ok && (resp.headers.get("content-type") || "").startsWith("image/") ? "ok" : `status ${resp.status}`;
  });
}

run("pages_clean", async (t) => {
  const client = await t.page("client");
  const clientProblems = watch(client);
  await join(client, "Clean");
  await client.fill("#content-subject", "5");
  await client.click("#content-form button[type=submit]");
  await client.locator("#cards > *").first().waitFor();
  await client.waitForTimeout(500);
  assert(clientProblems.length === 0, `the client page logged:\n${clientProblems.join("\n")}`);
  assert((await iconIsServed(client)) === "ok", "the client's icon is served");
  t.step("client page clean");

  const admin = await t.page("admin");
  const adminProblems = watch(admin);
  await admin.goto(`${base}/admin`);
  await admin.fill("#token", adminToken);
  await admin.click("#login-form button[type=submit]");
  await admin.locator('[data-tile="users"] .v').waitFor();
  await admin.waitForTimeout(3500); // one refresh of the dashboard
  assert(adminProblems.length === 0, `the dashboard logged:\n${adminProblems.join("\n")}`);
  assert((await iconIsServed(admin)) === "ok", "the dashboard's icon is served");
  t.step("dashboard clean");
});
