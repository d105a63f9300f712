// The client page's list of who is online, paged with "more", and the avatars people wear.
import { $, el } from "./dom.js";
import { session } from "./app-session.js";

function hue(userId) {
  return (Number(userId) * 137.508) % 360;
}

/** A round initial in a colour of the user's own. */
export function avatar(userId, nickname) {
  const a = el("span", { class: "avatar" }, (nickname || "?").trim().charAt(0).toUpperCase() || "?");
  a.style.background = `hsl(${hue(userId)} 65% 68%)`;
  return a;
}

/** The list as the client knows it (the `presence` event). */
export function renderPresence({ online, online_count, complete }) {
  const list = $("presence");
  list.replaceChildren(
    ...online.map((u) => {
      const li = el("li", { dataset: { userId: u.user_id } }, avatar(u.user_id, u.nickname), el("span", { class: "name" }, u.nickname), el("span", { class: "online-dot" }));
      if (session.me && u.user_id === session.me.user_id) li.classList.add("me-row");
      return li;
    }),
  );
  $("online-count").textContent = `${online_count ?? online.length} online`;
  $("presence-more").hidden = complete !== false;
}

/** "More" lists the next page; a refusal goes to `onError`. */
export function initPresence(onError) {
  $("presence-more").addEventListener("click", async () => {
    const button = $("presence-more");
    button.disabled = true;
    try {
      await session.client.morePresence();
    } catch (err) {
      onError(err);
    } finally {
      button.disabled = false;
    }
  });
}
