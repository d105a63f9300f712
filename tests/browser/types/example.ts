// A TypeScript game client written against static/lorewire.d.ts; `tsc --noEmit` checks it
// (tests/integration/types.rs). The `@ts-expect-error` lines are mistakes the types must catch:
// were one accepted, tsc would fail on the unused directive.
import {
  LorewireClient,
  type ClientFrame,
  type Content,
  type Run,
  type RunErrorCode,
  type RunFrame,
  type ServerFrame,
} from "../../../static/lorewire.js";

const lw = new LorewireClient({ nickname: "Ada", url: "ws://127.0.0.1:8080/ws", maxBackoffMs: 5000 });

lw.addEventListener("status", (e) => {
  const state: "connecting" | "live" | "reconnecting" | "closed" = e.detail.state;
  if (e.detail.delayMs !== undefined) console.log(`${state}: retry in ${e.detail.delayMs} ms`);
});
lw.addEventListener("session", (e) => {
  const variant: "control" | "treatment" = e.detail.variant;
  // A player of the studio's login (JWT) has no opaque token, but its `sub` and the JWT's expiry.
  console.log(e.detail.user_id.toFixed(0), e.detail.token?.length ?? e.detail.external_id, e.detail.expires_at, variant);
});
lw.addEventListener("history", (e) => e.detail.forEach((m) => console.log(m.nickname, m.text, m.mood)));
lw.addEventListener("presence", (e) => {
  console.log(e.detail.online.map((u) => u.nickname), e.detail.leaves.length, `${e.detail.online_count} online`);
  if (!e.detail.complete) void lw.morePresence().then((page) => page?.next_after_user_id ?? "last page");
});
lw.addEventListener("message", (e) => console.log(e.detail.created_at, e.detail.mood_status));
lw.addEventListener("mood", (e) => {
  // @ts-expect-error a settled mood is never pending
  const pending: "pending" = e.detail.mood_status;
  console.log(pending);
});
lw.addEventListener("content", (e) => render(e.detail));
lw.addEventListener("run", (e) => onRun(e.detail));
lw.addEventListener("error", (e) => console.warn(e.detail.type, e.detail.message));
lw.addEventListener("frame", (e) => describe(e.detail));
lw.addEventListener("content", (e) => {
  // @ts-expect-error a content event carries the item, not a frame
  console.log(e.detail.type);
});

/** Fields follow the kind. */
function render(content: Content): string {
  switch (content.kind) {
    case "quest":
      return `${content.fields.flavorText} ${content.fields.hookText}`;
    case "event":
      return content.fields.announcementText;
    case "npc":
      // @ts-expect-error an npc has no quest fields
      return content.fields.flavorText;
  }
}

function onRun(frame: RunFrame): void {
  switch (frame.type) {
    case "run:delta":
      console.log(frame.seq, frame.text);
      break;
    case "run:done":
      console.log(frame.usage.output_tokens, frame.cost_usd, frame.cached === true);
      break;
    case "run:error":
      console.log(frame.code === "aborted" || frame.code === "api_error_503");
      break;
    default:
      console.log(frame.run_id);
  }
}

function describe(frame: ServerFrame): string {
  switch (frame.type) {
    case "session:ack":
      return frame.nickname;
    case "presence:update":
      return `${frame.joins.length} joined, ${frame.online_count} online`;
    case "presence:state":
      return frame.complete ? "everyone" : `${frame.online.length} of ${frame.online_count}`;
    case "presence:page":
      return frame.next_after_user_id === null ? "last page" : `more after ${frame.next_after_user_id}`;
    case "message:mood_updated":
      return frame.mood;
    case "error:rate_limited":
      return frame.message;
    default:
      return frame.type;
  }
}

/** A run as `GET /api/runs/{run_id}` answers it. */
function summarize(run: Run): string {
  // @ts-expect-error a run's status is one the server knows
  const gone: Run["status"] = "deleted";
  const code: RunErrorCode | undefined = run.error?.code;
  return run.status === "done" ? `${run.text} (${run.usage.output_tokens} tokens)` : `${code ?? run.status} ${gone}`;
}

async function play(): Promise<void> {
  lw.connect();
  const quest = await lw.requestContent("quest", 42, { character_name: "Ada" });
  console.log(quest.fields.hookText, quest.version, quest.reason ?? "no fallback");
  const npc = await lw.subscribe("npc", "7");
  console.log(npc.fields.greeting);
  await lw.sendMessage("hello");
  const queued = await lw.generate({ project_id: "p1", action: "WRITE", input: "the ashen well" });
  if (queued.type === "run:queued") console.log(queued.position, queued.estimated_ms);
  lw.abort(queued.run_id);
  const ack = await lw.request({ type: "session:start", nickname: "Ada", token: lw.token ?? "" });
  console.log(ack.server_time);
  const snapshot = await lw.request({ type: "content:subscribe", kind: "event", subject_id: 3 });
  console.log(snapshot.content.status);
  const page = await lw.request({ type: "presence:list", after_user_id: 0 });
  console.log(page.online.length, page.next_after_user_id ?? "last page", lw.onlineCount, lw.presenceComplete);
  // @ts-expect-error after_user_id is a number
  lw.send({ type: "presence:list", after_user_id: "0" });

  const frames: ClientFrame[] = [
    { type: "message:send", text: "hi", ref: 1 },
    { type: "content:unsubscribe", kind: "npc", subject_id: 7 },
    { type: "generate:abort", run_id: "run_1" },
  ];
  frames.forEach((f) => lw.send(f));
  // @ts-expect-error a wrong frame: subject_id is a number, and "dragon" is no kind
  lw.send({ type: "content:request", kind: "dragon", subject_id: "42" });
  // @ts-expect-error an unknown frame type
  lw.send({ type: "lobby:shout", text: "hi" });
  // @ts-expect-error an action the server does not know
  await lw.generate({ project_id: "p1", action: "SUMMARIZE", input: "x" });
  // @ts-expect-error a run:error code the server never sends
  const exploded: RunErrorCode = "exploded";
  // @ts-expect-error an error frame's type names an error code
  const shout: ServerFrame = { type: "error:shouting", message: "no" };
  console.log(exploded, shout, summarize(await fetch("/api/runs/run_1").then((r) => r.json() as Promise<Run>)));
  lw.unsubscribe("quest", 42);
  lw.close();
}

void play();
