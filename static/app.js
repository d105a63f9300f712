// The lobby page: join, presence, chat (plain list for control players, a visual-novel scene
// for treatment players), content cards that turn ready live, and the generation panel.
import { LorewireClient } from "/static/lorewire.js";

const $ = (id) => document.getElementById(id);
const NICK_KEY = "lorewire.nickname";
const MOOD_ICON = { neutral: "•", happy: "☺", sad: "☂", angry: "✸", excited: "✦", calm: "≈" };
// The scene's background follows the mood only once it has held this long (so it changes at
// most this often), and a burst of mixed messages never makes it flicker.
const BG_SETTLE_MS = 1200;

let client = null;
let me = null;
const messages = new Map(); // id -> Message
let currentRun = null;

// --- helpers ---------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function hue(userId) {
  return (Number(userId) * 137.508) % 360;
}

function avatar(userId, nickname) {
  const a = el("span", { class: "avatar" }, (nickname || "?").trim().charAt(0).toUpperCase() || "?");
  a.style.background = `hsl(${hue(userId)} 65% 68%)`;
  return a;
}

function timeOf(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function moodChip(mood, status) {
  const label = status === "pending" ? "reading mood…" : mood;
  const chip = el("span", { class: "mood-chip", dataset: { mood, status } }, `${status === "pending" ? "…" : MOOD_ICON[mood] || "•"} ${label}`);
  if (status === "fallback") chip.title = "mood could not be read; shown as neutral";
  return chip;
}

function errorText(err) {
  return (err && (err.message || err.type)) || "something went wrong";
}

// --- join ------------------------------------------------------------------------------------

$("nickname").value = localStorage.getItem(NICK_KEY) || "";
$("join-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const nickname = $("nickname").value.trim();
  if (!nickname) return;
  localStorage.setItem(NICK_KEY, nickname);
  start(nickname);
});
if (new URLSearchParams(location.search).has("auto") && $("nickname").value) start($("nickname").value);

function start(nickname) {
  $("join-error").textContent = "";
  if (client) client.close();
  client = new LorewireClient({ nickname });
  client.addEventListener("status", (e) => showStatus(e.detail));
  client.addEventListener("session", (e) => onSession(e.detail));
  client.addEventListener("history", (e) => onHistory(e.detail));
  client.addEventListener("presence", (e) => renderPresence(e.detail));
  client.addEventListener("message", (e) => addMessage(e.detail));
  client.addEventListener("mood", (e) => onMood(e.detail));
  client.addEventListener("content", (e) => renderCard(e.detail));
  client.addEventListener("run", (e) => onRun(e.detail));
  client.addEventListener("error", (e) => onError(e.detail));
  client.connect();
}

function showStatus({ state, delayMs }) {
  const pill = $("status");
  pill.dataset.state = state;
  const label = { live: "live", connecting: "connecting…", reconnecting: "reconnecting…", closed: "offline" }[state] || state;
  pill.querySelector(".label").textContent = state === "reconnecting" && delayMs ? `${label} (${Math.ceil(delayMs / 100) / 10}s)` : label;
}

function onSession(ack) {
  me = ack;
  // A run started over the old socket ended with it (the server aborts a run no socket waits on).
  if (currentRun) {
    currentRun = null;
    $("gen-output").classList.remove("streaming");
    $("gen-abort").disabled = true;
    $("gen-state").textContent = "interrupted by the reconnect; start it again";
  }
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

function onError(err) {
  const type = err.type || "";
  if (!me) {
    $("join-error").textContent = errorText(err);
    $("join").hidden = false;
    $("app").hidden = true;
    client.close();
    return;
  }
  if (type === "error:rate_limited" || (type === "error:invalid_payload" && String(err.ref || "").startsWith("m"))) {
    // The message was refused: give its text back so it is not lost.
    if (unconfirmed && unconfirmed.ref === err.ref && !$("chat-input").value) $("chat-input").value = unconfirmed.text;
    unconfirmed = null;
    $("chat-error").textContent = errorText(err);
    setTimeout(() => ($("chat-error").textContent = ""), 4000);
  }
}

// --- presence --------------------------------------------------------------------------------

function renderPresence({ online, online_count, complete }) {
  const list = $("presence");
  list.replaceChildren(
    ...online.map((u) => {
      const li = el("li", { dataset: { userId: u.user_id } }, avatar(u.user_id, u.nickname), el("span", { class: "name" }, u.nickname), el("span", { class: "online-dot" }));
      if (me && u.user_id === me.user_id) li.classList.add("me-row");
      return li;
    }),
  );
  $("online-count").textContent = `${online_count ?? online.length} online`;
  $("presence-more").hidden = complete !== false;
}

$("presence-more").addEventListener("click", async () => {
  const button = $("presence-more");
  button.disabled = true;
  try {
    await client.morePresence();
  } catch (err) {
    onError(err);
  } finally {
    button.disabled = false;
  }
});

// --- chat ------------------------------------------------------------------------------------

function onHistory(list) {
  messages.clear();
  $("chat").replaceChildren();
  $("vn-log").replaceChildren();
  for (const m of list) addMessage(m, { quiet: true });
  const last = list[list.length - 1];
  if (last) showDialogue(last, { immediate: true });
}

function messageNode(m) {
  const node = el(
    "li",
    { class: "msg", dataset: { id: m.id, mood: m.mood, moodStatus: m.mood_status, userId: m.user_id } },
    avatar(m.user_id, m.nickname),
    el(
      "div",
      { class: "bubble" },
      el("div", { class: "meta" }, el("b", {}, m.nickname), el("span", {}, timeOf(m.created_at)), moodChip(m.mood, m.mood_status)),
      el("div", { class: "text" }, m.text),
    ),
  );
  if (me && m.user_id === me.user_id) node.classList.add("mine");
  return node;
}

function addMessage(m, { quiet = false } = {}) {
  if (messages.has(m.id)) return;
  messages.set(m.id, m);
  for (const listId of ["chat", "vn-log"]) {
    const list = $(listId);
    const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(messageNode(m));
    while (list.children.length > 200) list.firstElementChild.remove();
    if (stick || quiet) list.scrollTop = list.scrollHeight;
  }
  if (!quiet) showDialogue(m);
}

function onMood({ id, mood, mood_status }) {
  const m = messages.get(id);
  if (m) Object.assign(m, { mood, mood_status });
  for (const node of document.querySelectorAll(`.msg[data-id="${CSS.escape(String(id))}"]`)) {
    node.dataset.mood = mood;
    node.dataset.moodStatus = mood_status;
    node.querySelector(".mood-chip").replaceWith(moodChip(mood, mood_status));
  }
  if (dialogueId === id) showDialogue(m || { id, mood, mood_status }, { moodOnly: true });
}

$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sendChat();
});
$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    sendChat();
  }
});

let unconfirmed = null; // { ref, text } of the last message sent, until the server refuses it or 4 s pass

function sendChat() {
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text || !client) return;
  client.sendMessage(text).then(
    (ref) => {
      input.value = "";
      unconfirmed = { ref, text };
      setTimeout(() => unconfirmed && unconfirmed.ref === ref && (unconfirmed = null), 4000);
    },
    (err) => ($("chat-error").textContent = errorText(err)),
  );
}

// --- visual novel (treatment) ----------------------------------------------------------------

let dialogueId = null;
let bgMood = "neutral";
let bgTimer = null;
let bgWanted = "neutral";

function showDialogue(m, { immediate = false, moodOnly = false } = {}) {
  if (!moodOnly) {
    dialogueId = m.id;
    $("vn-speaker").textContent = m.nickname;
    $("vn-text").textContent = m.text;
  }
  const settled = m.mood_status && m.mood_status !== "pending";
  const mood = settled ? m.mood : "neutral";
  $("portrait").dataset.mood = mood;
  $("portrait").style.setProperty("--mood-color", `var(--mood-${mood})`);
  const chip = $("vn-mood");
  chip.dataset.mood = mood;
  chip.dataset.status = m.mood_status || "pending";
  chip.textContent = settled ? `${MOOD_ICON[mood]} ${mood}` : "… reading mood";
  if (settled) wantBackground(mood, immediate);
}

// Debounced: the scene changes only after the wanted mood has held for BG_SETTLE_MS; every
// different mood asked for meanwhile starts the wait again.
function wantBackground(mood, immediate) {
  if (immediate) {
    clearTimeout(bgTimer);
    bgTimer = null;
    bgWanted = mood;
    setBackground(mood);
    return;
  }
  if (bgTimer && mood === bgWanted) return;
  clearTimeout(bgTimer);
  bgTimer = null;
  bgWanted = mood;
  if (mood === bgMood) return;
  bgTimer = setTimeout(() => {
    bgTimer = null;
    setBackground(bgWanted);
  }, BG_SETTLE_MS);
}

function setBackground(mood) {
  if (mood === bgMood) return;
  bgMood = mood;
  $("vn-scene").dataset.bg = mood;
}

$("vn-log-toggle").addEventListener("click", () => {
  const log = $("vn-log");
  log.hidden = !log.hidden;
  if (!log.hidden) log.scrollTop = log.scrollHeight;
});

// --- content ---------------------------------------------------------------------------------

function parseContext(raw) {
  const context = {};
  for (const part of raw.split(",")) {
    const [k, ...rest] = part.split("=");
    const key = (k || "").trim();
    const value = rest.join("=").trim();
    if (key && value) context[key] = value;
  }
  return context;
}

$("content-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("content-error").textContent = "";
  const kind = $("content-kind").value;
  const subject = $("content-subject").value;
  try {
    await client.requestContent(kind, subject, parseContext($("content-context").value), { regenerate: $("content-regenerate").checked });
  } catch (err) {
    $("content-error").textContent = errorText(err);
  }
});

const FIELD_LABELS = {
  flavorText: "Flavor", hookText: "Hook", announcementText: "Announcement",
  resolutionText: "Resolution", greeting: "Greeting", personalityNote: "Personality",
};

function renderCard(c) {
  const key = `${c.kind}:${c.subject_id}`;
  let card = document.querySelector(`.card[data-key="${CSS.escape(key)}"]`);
  const fresh = !card;
  if (fresh) {
    card = el("article", { class: "card", dataset: { key } });
    $("cards").prepend(card);
  }
  const changed = card.dataset.status && card.dataset.status !== c.status;
  card.dataset.status = c.status;
  card.dataset.version = c.version;
  const fields = el("dl");
  for (const [name, value] of Object.entries(c.fields || {})) {
    fields.append(el("dt", {}, FIELD_LABELS[name] || name));
    fields.append(c.status === "pending" ? el("dd", {}, el("span", { class: "placeholder" })) : el("dd", { dataset: { field: name } }, value));
  }
  const foot = el("div", { class: "foot" }, `v${c.version}`);
  if (c.model) foot.append(el("span", {}, c.model));
  if (c.reason) foot.append(el("span", {}, `fallback: ${c.reason}`));
  foot.append(el("span", {}, timeOf(c.updated_at)));
  card.replaceChildren(
    el("div", { class: "card-head" }, el("span", { class: "title" }, `${c.kind} #${c.subject_id}`), el("span", { class: `badge ${c.status}` }, c.status)),
    fields,
    foot,
  );
  if (changed) {
    card.classList.remove("flash");
    void card.offsetWidth;
    card.classList.add("flash");
  }
}

// --- generation runs -------------------------------------------------------------------------

$("gen-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const out = $("gen-output");
  out.textContent = "";
  try {
    const queued = await client.generate({ project_id: $("gen-project").value.trim(), action: $("gen-action").value, input: $("gen-input").value });
    currentRun = queued.run_id;
    out.classList.add("streaming");
    $("gen-abort").disabled = false;
    $("gen-state").textContent = `queued (position ${queued.position})`;
  } catch (err) {
    if (err.type === "error:invalid_payload" && /unknown frame type/.test(err.message || "")) {
      // This server has no generation runs: say so and keep the panel out of the way.
      $("gen-panel").classList.add("unavailable");
      $("gen-start").disabled = true;
      $("gen-state").textContent = "not available on this server";
    } else {
      $("gen-state").textContent = errorText(err);
    }
  }
});

$("gen-abort").addEventListener("click", () => {
  if (currentRun) client.abort(currentRun);
});

function onRun(frame) {
  if (!currentRun || frame.run_id !== currentRun) return;
  const out = $("gen-output");
  switch (frame.type) {
    case "run:started":
      out.textContent = "";
      $("gen-state").textContent = frame.attempt ? `running (attempt ${frame.attempt})` : `running · ${frame.model || ""}`;
      break;
    case "run:delta":
      out.textContent += frame.text;
      out.scrollTop = out.scrollHeight;
      break;
    case "run:done":
      out.textContent = frame.text;
      out.classList.remove("streaming");
      $("gen-abort").disabled = true;
      $("gen-state").textContent = `done${frame.cached ? " (cached)" : ""} · $${Number(frame.cost_usd || 0).toFixed(4)}`;
      currentRun = null;
      break;
    case "run:error":
      out.classList.remove("streaming");
      $("gen-abort").disabled = true;
      $("gen-state").textContent = `${frame.code}: ${frame.message}`;
      currentRun = null;
      break;
    case "run:queued":
      $("gen-state").textContent = `queued (position ${frame.position})`;
      break;
  }
}
