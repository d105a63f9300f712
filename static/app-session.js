// The client page's connection: the join form, the LorewireClient of this page, the status pill
// and the switch from the join view to the app once the session is acknowledged.
import { LorewireClient } from "./lorewire.js";
import { $, el, errorText } from "./dom.js";

const NICK_KEY = "lorewire.nickname";

/** This page's client, and the session's ack once there is one (null before). */
export const session = { client: null, me: null };

/** Shows the join form, remembering the last nickname; `join(nickname)` on submit, or at once with `?auto`. */
export function initJoin(join) {
  $("nickname").value = localStorage.getItem(NICK_KEY) || "";
  $("join-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const nickname = $("nickname").value.trim();
    if (!nickname) return;
    localStorage.setItem(NICK_KEY, nickname);
    join(nickname);
  });
  if (new URLSearchParams(location.search).has("auto") && $("nickname").value) join($("nickname").value);
}

/** A new client for `nickname` (closing the last one), with `listeners` by event name, connected. */
export function connect(nickname, listeners) {
  $("join-error").textContent = "";
  if (session.client) session.client.close();
  const client = new LorewireClient({ nickname });
  session.client = client;
  client.addEventListener("status", (e) => showStatus(e.detail));
  client.addEventListener("session", (e) => onSession(e.detail));
  for (const [type, listener] of Object.entries(listeners)) client.addEventListener(type, (e) => listener(e.detail));
  client.connect();
}

function showStatus({ state, delayMs }) {
  const pill = $("status");
  pill.dataset.state = state;
  const label = { live: "live", connecting: "connecting…", reconnecting: "reconnecting…", closed: "offline" }[state] || state;
  pill.querySelector(".label").textContent = state === "reconnecting" && delayMs ? `${label} (${Math.ceil(delayMs / 100) / 10}s)` : label;
}

function onSession(ack) {
  session.me = ack;
  document.body.dataset.view = "app";
  document.body.dataset.variant = ack.variant;
  document.body.dataset.userId = ack.user_id;
  $("join").hidden = true;
  $("app").hidden = false;
  const treatment = ack.variant === "treatment";
  $("chat").hidden = treatment;
  $("vn-scene").hidden = !treatment;
  $("me").hidden = false;
  $("me").replaceChildren("Playing as ", el("b", {}, ack.nickname), el("span", { class: "tag" }, ack.variant));
}

/** Before any session: the refusal is the join's; back to the join form. Whether it was. */
export function joinRefused(err) {
  if (session.me) return false;
  $("join-error").textContent = errorText(err);
  $("join").hidden = false;
  $("app").hidden = true;
  session.client.close();
  return true;
}
