// The visual-novel scene treatment players see instead of the chat list: the last line as
// dialogue, a portrait and a background that follow its mood, and the log behind a toggle.
import { $ } from "./dom.js";

export const MOOD_ICON = { neutral: "•", happy: "☺", sad: "☂", angry: "✸", excited: "✦", calm: "≈" };
// The scene's background follows the mood only once it has held this long (so it changes at
// most this often), and a burst of mixed messages never makes it flicker.
const BG_SETTLE_MS = 1200;

let dialogueId = null;
let bgMood = "neutral";
let bgTimer = null;
let bgWanted = "neutral";

/** Shows `m` as the dialogue (or, with `moodOnly`, only its mood); `immediate` skips the settling. */
export function showDialogue(m, { immediate = false, moodOnly = false } = {}) {
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

/** A message's mood settled: the scene follows it if that message is the dialogue. */
export function dialogueMood(m) {
  if (dialogueId === m.id) showDialogue(m, { moodOnly: true });
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
