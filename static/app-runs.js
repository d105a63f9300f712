// The client page's generation panel: start a run, watch its text stream in, abort it.
import { $, errorText, limitNotice } from "./dom.js";
import { session } from "./app-session.js";

let currentRun = null;

$("gen-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const out = $("gen-output");
  out.textContent = "";
  $("gen-error").textContent = "";
  try {
    const queued = await session.client.generate({ project_id: $("gen-project").value.trim(), action: $("gen-action").value, input: $("gen-input").value });
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
      const notice = limitNotice(err);
      $("gen-state").textContent = notice ? "refused" : errorText(err);
      if (notice) $("gen-error").replaceChildren(notice);
    }
  }
});

$("gen-abort").addEventListener("click", () => {
  if (currentRun) session.client.abort(currentRun);
});

/** A new session: a run started over the old socket ended with it (the server aborts a run no socket waits on). */
export function interruptRun() {
  if (!currentRun) return;
  currentRun = null;
  $("gen-output").classList.remove("streaming");
  $("gen-abort").disabled = true;
  $("gen-state").textContent = "interrupted by the reconnect; start it again";
}

/** A frame of the run being watched (the `run` event). */
export function onRun(frame) {
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
