// The client library with the studio's login: LorewireClient({getJwt}) starts the session with
// a JWT and sends a newer one (session:refresh) before it expires, so a session whose first
// token lives 3 s stays live past it without reconnecting (the server, with no leeway, would
// close it with 4001 otherwise).
import { createHmac } from "node:crypto";
import { run, base, assert } from "./lib.mjs";

// The secret the Rust test gives the server (tests/integration/browser.rs).
const SECRET = "browser-jwt-secret-0123456789";

const b64 = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

function sign(claims) {
  const unsigned = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${unsigned}.${createHmac("sha256", SECRET).update(unsigned).digest("base64url")}`;
}

run("jwt_session", async (t) => {
  const page = await t.page("player");
  let issued = 0;
  await page.exposeFunction("nextJwt", () => {
    issued += 1;
    // The first token lives 3 s; every later one ten minutes.
    const life = issued === 1 ? 3 : 600;
    return sign({ iss: "studio", sub: "browser-player", name: "Jay", exp: Math.floor(Date.now() / 1000) + life });
  });
  await page.goto(`${base}/health`);
  await page.evaluate(async () => {
    const { LorewireClient } = await import("/static/lorewire.js");
    const lw = new LorewireClient({ getJwt: () => window.nextJwt() });
    window.seen = { sessions: [], errors: [], states: [] };
    lw.addEventListener("session", (e) => window.seen.sessions.push(e.detail));
    lw.addEventListener("error", (e) => window.seen.errors.push(e.detail));
    lw.addEventListener("status", (e) => window.seen.states.push(e.detail.state));
    window.lw = lw;
    lw.connect();
  });
  await page.waitForFunction(() => window.seen.sessions.length === 1);
  const ack = await page.evaluate(() => window.seen.sessions[0]);
  assert(ack.external_id === "browser-player" && ack.nickname === "Jay", `the JWT's player: ${JSON.stringify(ack)}`);
  assert(ack.token === undefined, "no opaque token for a JWT player");
  t.step("session started with the JWT");

  // Past the first token's expiry (3 s) by a margin.
  await page.waitForTimeout(4500);
  const seen = await page.evaluate(() => ({ ...window.seen, state: window.lw.state, expires: window.lw.session?.expires_at }));
  assert(seen.sessions.length === 1, `no second session (no 4001 close and reconnect): ${JSON.stringify(seen)}`);
  assert(seen.state === "live", `still live: ${seen.state}`);
  assert(seen.errors.length === 0, `no error: ${JSON.stringify(seen.errors)}`);
  assert(issued >= 2, `a newer JWT was asked for (${issued})`);
  assert(Date.parse(seen.expires) > Date.now() + 500_000, `the session's expiry moved: ${seen.expires}`);
  t.step("refreshed before expiry, still live");
  await page.evaluate(() => window.lw.close());
});
