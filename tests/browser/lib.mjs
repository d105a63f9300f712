// Shared by the browser scenarios: launches headless Chromium, opens pages in separate
// browser contexts (separate localStorage: separate players), saves a screenshot of every page
// on failure and prints its path, and talks to the Rust test over stdin/stdout for the steps
// only the server side can do (e.g. dropping every socket).
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join as joinPath } from "node:path";

export const [base, adminToken] = process.argv.slice(2);
const CHROMIUM = process.env.LOREWIRE_CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.LOREWIRE_SCREENSHOT_DIR || joinPath(tmpdir(), "lorewire-browser");
export const TIMEOUT = 15000;

const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

export async function run(name, scenario) {
  if (!base) {
    console.error("usage: node <scenario>.mjs <base_url> <admin_token>");
    process.exit(2);
  }
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  const pages = [];
  const pageErrors = [];
  const t = {
    async page(label) {
      const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
      const page = await context.newPage();
      page.setDefaultTimeout(TIMEOUT);
      page.on("pageerror", (e) => pageErrors.push(`${label}: ${e.message}`));
      page.on("console", (m) => {
        if (m.type() === "error" && !/WebSocket|ERR_INTERNET_DISCONNECTED|Failed to load resource/.test(m.text())) {
          pageErrors.push(`${label} console: ${m.text()}`);
        }
      });
      pages.push({ label, page });
      return page;
    },
    step(message) {
      console.log(`[${name}] ${message}`);
    },
    /** Asks the Rust test to do `what` and waits until it is done. */
    async server(what) {
      console.log(`@@${what}`);
      const { value, done } = await stdinLines.next();
      if (done || value.trim() !== "@@done") throw new Error(`the test harness did not do ${what}: ${value}`);
    },
    async shoot(suffix) {
      mkdirSync(SHOTS, { recursive: true });
      for (const { label, page } of pages) {
        const path = joinPath(SHOTS, `${name}-${label}-${suffix}.png`);
        try {
          await page.screenshot({ path, fullPage: true });
          console.log(`screenshot: ${path}`);
        } catch {
          /* the page may be closed */
        }
      }
    },
  };
  try {
    await scenario(t);
    if (pageErrors.length) throw new Error(`errors in the page:\n${pageErrors.join("\n")}`);
    if (process.env.LOREWIRE_SCREENSHOT_ALWAYS) await t.shoot("final");
    console.log(`[${name}] ok`);
    await browser.close();
    process.exit(0);
  } catch (err) {
    console.error(`[${name}] FAILED: ${err && err.stack ? err.stack : err}`);
    await t.shoot("failure");
    await browser.close().catch(() => {});
    process.exit(1);
  }
}

/** Opens the client and enters the lobby as `nickname`; returns {user_id, variant}. */
export async function join(page, nickname) {
  await page.goto(`${base}/`);
  await page.fill("#nickname", nickname);
  await page.click("#join-form button[type=submit]");
  await page.waitForSelector('#status[data-state="live"]');
  await page.waitForSelector("body[data-variant]");
  return page.evaluate(() => ({ user_id: Number(document.body.dataset.userId), variant: document.body.dataset.variant }));
}

export async function say(page, text) {
  await page.fill("#chat-input", text);
  await page.press("#chat-input", "Enter");
}

/** A message with `text` in the page's lobby (chat list or visual-novel log). */
export function message(page, text) {
  return page.locator(".msg", { hasText: text }).first();
}

export function assert(condition, what) {
  if (!condition) throw new Error(`assertion failed: ${what}`);
}
