// The client page's lobby chat: history, new messages and their moods (the plain list and the
// scene's log), sending a line, and giving a refused line's text back.
import { $, el, errorText, timeOf } from "./dom.js";
import { session } from "./app-session.js";
import { avatar } from "./app-presence.js";
import { MOOD_ICON, dialogueMood, showDialogue } from "./app-scene.js";

const messages = new Map(); // id -> Message
let unconfirmed = null; // { ref, text } of the last message sent, until the server refuses it or 4 s pass

function moodChip(mood, status) {
  const label = status === "pending" ? "reading mood…" : mood;
  const chip = el("span", { class: "mood-chip", dataset: { mood, status } }, `${status === "pending" ? "…" : MOOD_ICON[mood] || "•"} ${label}`);
  if (status === "fallback") chip.title = "mood could not be read; shown as neutral";
  return chip;
}

/** The lobby's history (the `history` event): the lists start again from it. */
export function onHistory(list) {
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
  if (session.me && m.user_id === session.me.user_id) node.classList.add("mine");
  return node;
}

/** A message (the `message` event) into both lists, once; `quiet` leaves the dialogue alone. */
export function addMessage(m, { quiet = false } = {}) {
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

/** A message's mood settled (the `mood` event). */
export function onMood({ id, mood, mood_status }) {
  const m = messages.get(id);
  if (m) Object.assign(m, { mood, mood_status });
  for (const node of document.querySelectorAll(`.msg[data-id="${CSS.escape(String(id))}"]`)) {
    node.dataset.mood = mood;
    node.dataset.moodStatus = mood_status;
    node.querySelector(".mood-chip").replaceWith(moodChip(mood, mood_status));
  }
  dialogueMood(m || { id, mood, mood_status });
}

/** A refusal once in the lobby: a refused line gets its text back, and the reason is shown. */
export function chatRefused(err) {
  const type = err.type || "";
  if (type === "error:rate_limited" || (type === "error:invalid_payload" && String(err.ref || "").startsWith("m"))) {
    if (unconfirmed && unconfirmed.ref === err.ref && !$("chat-input").value) $("chat-input").value = unconfirmed.text;
    unconfirmed = null;
    $("chat-error").textContent = errorText(err);
    setTimeout(() => ($("chat-error").textContent = ""), 4000);
  }
}

function sendChat() {
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text || !session.client) return;
  session.client.sendMessage(text).then(
    (ref) => {
      input.value = "";
      unconfirmed = { ref, text };
      setTimeout(() => unconfirmed && unconfirmed.ref === ref && (unconfirmed = null), 4000);
    },
    (err) => ($("chat-error").textContent = errorText(err)),
  );
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
