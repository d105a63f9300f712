// The dashboard's moderation flags: what the word list or the moderation endpoint flagged
// (chat, nicknames), newest first, with who wrote it and why.
import { $, el, fmtTime } from "./dom.js";
import { api } from "./admin-api.js";

export async function loadFlags() {
  const data = await api("GET", "/admin/api/moderation?limit=50");
  $("flags-count").textContent = data.flags.length ? `${data.flags.length} newest` : "";
  if (!data.flags.length) {
    $("flags").replaceChildren(el("p", { class: "muted" }, "nothing flagged"));
    return;
  }
  const rows = data.flags.map((f) =>
    el(
      "tr",
      { dataset: { flagId: f.id } },
      el("td", {}, fmtTime(f.created_at)),
      el("td", {}, f.surface),
      el("td", {}, f.user_id ?? "—"),
      el("td", { class: "flag-text" }, f.text),
      el("td", {}, f.categories.join(", ")),
    ),
  );
  const head = el("tr", {}, ...["when", "where", "player", "text", "why"].map((h) => el("th", {}, h)));
  $("flags").replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}
