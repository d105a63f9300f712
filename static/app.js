// The lobby page: join, presence, chat (plain list for control players, a visual-novel scene
// for treatment players), content cards that turn ready live, and the generation panel. This
// module joins them: each part is its own module, and the client's events are routed here.
import { connect, initJoin, joinRefused } from "./app-session.js";
import { initPresence, renderPresence } from "./app-presence.js";
import { addMessage, chatRefused, onHistory, onMood } from "./app-chat.js";
import { renderCard } from "./app-content.js";
import { interruptRun, onRun } from "./app-runs.js";

/** A refusal: the join's before a session, else the lobby's. */
function onError(err) {
  if (!joinRefused(err)) chatRefused(err);
}

initPresence(onError);
initJoin((nickname) =>
  connect(nickname, {
    session: interruptRun,
    history: onHistory,
    presence: renderPresence,
    message: (m) => addMessage(m),
    mood: onMood,
    content: renderCard,
    run: onRun,
    error: onError,
  }),
);
