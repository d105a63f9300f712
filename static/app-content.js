// The client page's content panel: the request form, and one card per item that turns ready
// (or fallback) live, flashing when its status changes.
import { $, el, errorText, limitNotice, timeOf } from "./dom.js";
import { session } from "./app-session.js";

const FIELD_LABELS = {
  flavorText: "Flavor", hookText: "Hook", announcementText: "Announcement",
  resolutionText: "Resolution", greeting: "Greeting", personalityNote: "Personality",
};

/** `key=value, key=value` as an object, leaving out parts without both. */
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
    await session.client.requestContent(kind, subject, parseContext($("content-context").value), { regenerate: $("content-regenerate").checked });
  } catch (err) {
    const notice = limitNotice(err);
    if (notice) $("content-error").replaceChildren(notice);
    else $("content-error").textContent = errorText(err);
  }
});

/** An item's card (the `content` event), made or brought up to date. */
export function renderCard(c) {
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
