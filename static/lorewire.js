// lorewire.js — the browser connection to a lorewire server, as a reusable ES module.
//
//   import { LorewireClient } from "/static/lorewire.js";
//   const lw = new LorewireClient({ nickname: "Ada" });
//   lw.addEventListener("content", (e) => render(e.detail));
//   lw.connect();
//   await lw.requestContent("quest", 42, { character_name: "Ada" });
//
// With the studio's login, pass `getJwt` (a function returning the player's JWT, or a promise of
// it): every session starts with a fresh JWT, and a newer one is sent (`session:refresh`)
// before the current one expires.
//
// It connects, starts the session (resuming with the token kept in localStorage), reconnects
// with exponential backoff and jitter when the socket drops, and after every reconnect
// subscribes again to every content item it knows and keeps whichever copy is newest
// (by `version`), so a page never shows a stale card after a network blip.
//
// Events (all CustomEvent, data in `detail`):
//   status     {state: "connecting"|"live"|"reconnecting"|"closed", attempt, delayMs}
//   session    the session:ack frame (user_id, nickname, token, variant, server_time;
//              external_id and expires_at with a JWT)
//   history    [Message]                       lobby history, oldest first
//   presence   {online: [{user_id, nickname}], joins, leaves, online_count, complete}
//              the list as known after each change or page; `online_count` is everyone online,
//              `complete` whether the list is all of them (else morePresence() pages on)
//   message    Message                         a new lobby message
//   mood       {id, mood, mood_status}         a message's mood settled
//   content    Content                         an item changed (snapshot or update, newest only)
//   run        a run:* frame
//   error      an error:* frame ({type, ref, message})
//   frame      every frame, as received

const DEFAULT_TOKEN_KEY = "lorewire.token";

export class LorewireClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} [options.url]       WebSocket URL; defaults to /ws on this page's host
   * @param {string} options.nickname
   * @param {() => string | Promise<string>} [options.getJwt]  the studio's JWT for this player
   * @param {Storage} [options.storage]  where the resume token is kept (localStorage)
   * @param {string} [options.tokenKey]
   * @param {number} [options.minBackoffMs]
   * @param {number} [options.maxBackoffMs]
   */
  constructor(options = {}) {
    super();
    const loc = globalThis.location;
    this.url = options.url || `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}/ws`;
    this.nickname = options.nickname || "";
    this.getJwt = options.getJwt || null;
    this.refreshTimer = null;
    this.storage = options.storage || globalThis.localStorage;
    this.tokenKey = options.tokenKey || DEFAULT_TOKEN_KEY;
    this.minBackoffMs = options.minBackoffMs ?? 300;
    this.maxBackoffMs = options.maxBackoffMs ?? 10000;
    this.ws = null;
    this.session = null;
    this.state = "closed";
    this.attempt = 0;
    this.items = new Map(); // "kind:subject_id" -> Content (newest seen)
    this.online = new Map(); // user_id -> nickname
    this.onlineCount = 0; // everyone online, listed or not
    this.presenceComplete = true; // the list is everyone online
    this.presenceCursor = null; // after_user_id of the next page; null once a pass is done
    this.pending = new Map(); // ref -> {resolve, reject, timer}
    this.nextRef = 1;
    this.stopped = true;
    this.reconnectTimer = null;
  }

  get token() {
    try {
      return this.storage.getItem(this.tokenKey);
    } catch {
      return null;
    }
  }

  set token(value) {
    try {
      if (value) this.storage.setItem(this.tokenKey, value);
      else this.storage.removeItem(this.tokenKey);
    } catch {
      /* storage may be unavailable (private mode); the session just won't resume */
    }
  }

  /** Opens the connection (and keeps it open until close()). */
  connect() {
    this.stopped = false;
    this.open();
  }

  /** Closes for good: no reconnect. */
  close() {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.refreshTimer);
    if (this.ws) this.ws.close(1000, "bye");
    this.setState("closed");
  }

  /** Forgets the resume token: the next session is a new user. */
  forget() {
    this.token = null;
  }

  open() {
    clearTimeout(this.reconnectTimer);
    this.setState(this.attempt === 0 ? "connecting" : "reconnecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.startFrame().then((start) => this.request(start)).then(
        (ack) => this.onSession(ack),
        (err) => {
          this.emit("error", err);
          // The server could not start the session (overloaded, no reply): try again on a new
          // socket. A refused nickname is final.
          if (err.type !== "error:invalid_payload" && this.ws === ws && !this.stopped) ws.close();
        },
      );
    };
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      this.onFrame(frame);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      clearTimeout(this.refreshTimer);
      this.ws = null;
      this.session = null;
      for (const [, p] of this.pending) {
        clearTimeout(p.timer);
        p.reject({ type: "error:disconnected", message: "the connection closed" });
      }
      this.pending.clear();
      if (!this.stopped) this.scheduleReconnect();
    };
  }

  scheduleReconnect() {
    this.attempt += 1;
    const base = Math.min(this.maxBackoffMs, this.minBackoffMs * 2 ** Math.min(this.attempt - 1, 10));
    // Jitter (half the delay fixed, half random) keeps a server restart from being met by every
    // client at the same instant.
    const delayMs = Math.round(base / 2 + Math.random() * (base / 2));
    this.setState("reconnecting", { delayMs });
    this.reconnectTimer = setTimeout(() => this.open(), delayMs);
  }

  /** The session:start to send: with a fresh JWT, else with the nickname and resume token. */
  async startFrame() {
    if (this.getJwt) {
      const start = { type: "session:start", jwt: await this.getJwt() };
      if (this.nickname) start.nickname = this.nickname;
      return start;
    }
    const start = { type: "session:start", nickname: this.nickname };
    const token = this.token;
    if (token) start.token = token;
    return start;
  }

  /** Sends a newer JWT once 80% of the current one's life has passed (and at least 1 s before its end). */
  scheduleRefresh(expiresAt) {
    clearTimeout(this.refreshTimer);
    if (!this.getJwt || !expiresAt) return;
    const left = Date.parse(expiresAt) - Date.now();
    const delay = Math.max(0, Math.min(left * 0.8, left - 1000));
    this.refreshTimer = setTimeout(async () => {
      try {
        const reply = await this.request({ type: "session:refresh", jwt: await this.getJwt() });
        if (this.session) this.session.expires_at = reply.expires_at;
        this.scheduleRefresh(reply.expires_at);
      } catch (err) {
        this.emit("error", err);
      }
    }, delay);
  }

  onSession(ack) {
    this.session = ack;
    if (ack.token) this.token = ack.token;
    this.scheduleRefresh(ack.expires_at);
    this.nickname = ack.nickname;
    this.attempt = 0;
    this.setState("live");
    this.emit("session", ack);
    // Every item this page knows: subscribe again and reconcile with the snapshot.
    for (const item of this.items.values()) {
      this.request({ type: "content:subscribe", kind: item.kind, subject_id: item.subject_id }).then(
        (reply) => this.onContent(reply.content),
        (err) => this.emit("error", err),
      );
    }
  }

  setState(state, extra = {}) {
    this.state = state;
    this.emit("status", { state, attempt: this.attempt, ...extra });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Sends a frame with a fresh `ref`; resolves with the direct reply, rejects with an error frame. */
  request(frame, timeoutMs = 15000) {
    const ref = `c${this.nextRef++}`;
    return new Promise((resolve, reject) => {
      if (!this.send({ ...frame, ref })) {
        reject({ type: "error:disconnected", message: "not connected" });
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject({ type: "error:timeout", message: "no reply in time" });
      }, timeoutMs);
      this.pending.set(ref, { resolve, reject, timer });
    });
  }

  onFrame(frame) {
    this.emit("frame", frame);
    const type = String(frame.type || "");
    if (frame.ref !== undefined && this.pending.has(frame.ref)) {
      const p = this.pending.get(frame.ref);
      this.pending.delete(frame.ref);
      clearTimeout(p.timer);
      if (type.startsWith("error:")) p.reject(frame);
      else p.resolve(frame);
    } else if (type.startsWith("error:")) {
      this.emit("error", frame);
    }
    switch (type) {
      case "lobby:history":
        this.emit("history", frame.messages || []);
        break;
      case "presence:state": {
        const listed = frame.online || [];
        this.online = new Map(listed.map((u) => [u.user_id, u.nickname]));
        this.onlineCount = frame.online_count ?? this.online.size;
        this.presenceComplete = frame.complete !== false;
        // The state lists the lowest user_ids: the next page starts after the last of them.
        this.presenceCursor = this.presenceComplete ? null : listed.length ? listed[listed.length - 1].user_id : 0;
        this.emitPresence([], []);
        break;
      }
      case "presence:update": {
        const joins = frame.joins || [];
        const leaves = frame.leaves || [];
        for (const u of joins) this.online.set(u.user_id, u.nickname);
        for (const u of leaves) this.online.delete(u.user_id);
        this.onlineCount = frame.online_count ?? this.online.size;
        // Only the count: above the server's list maximum the list is no longer kept up to date.
        if (!joins.length && !leaves.length && this.onlineCount !== this.online.size) this.presenceComplete = false;
        this.emitPresence(joins, leaves);
        break;
      }
      case "message:new":
        this.emit("message", frame.message);
        break;
      case "message:mood_updated":
        this.emit("mood", { id: frame.id, mood: frame.mood, mood_status: frame.mood_status });
        break;
      case "content:snapshot":
      case "content:update":
        this.onContent(frame.content);
        break;
      default:
        if (type.startsWith("run:")) this.emit("run", frame);
    }
  }

  emitPresence(joins, leaves) {
    const online = [...this.online].map(([user_id, nickname]) => ({ user_id, nickname }));
    online.sort((a, b) => a.nickname.localeCompare(b.nickname) || a.user_id - b.user_id);
    this.emit("presence", { online, joins, leaves, online_count: this.onlineCount, complete: this.presenceComplete });
  }

  onContent(content) {
    if (!content) return;
    const key = `${content.kind}:${content.subject_id}`;
    const known = this.items.get(key);
    if (known && known.version > content.version) return;
    this.items.set(key, content);
    this.emit("content", content);
  }

  // --- API ---------------------------------------------------------------------------------

  /** Sends a lobby message; the server answers with message:new to everyone. */
  sendMessage(text) {
    const ref = `m${this.nextRef++}`;
    if (!this.send({ type: "message:send", text, ref })) {
      return Promise.reject({ type: "error:disconnected", message: "not connected" });
    }
    // No reply on success (everyone gets message:new); a refusal comes as an "error" event with this ref.
    return Promise.resolve(ref);
  }

  /** Requests (or regenerates) an item; resolves with its snapshot and keeps it subscribed. */
  async requestContent(kind, subjectId, context = undefined, { regenerate = false } = {}) {
    const frame = { type: "content:request", kind, subject_id: Number(subjectId) };
    if (context && Object.keys(context).length) frame.context = context;
    if (regenerate) frame.regenerate = true;
    const reply = await this.request(frame);
    this.onContent(reply.content);
    return reply.content;
  }

  async subscribe(kind, subjectId) {
    const reply = await this.request({ type: "content:subscribe", kind, subject_id: Number(subjectId) });
    this.onContent(reply.content);
    return reply.content;
  }

  unsubscribe(kind, subjectId) {
    this.items.delete(`${kind}:${subjectId}`);
    this.send({ type: "content:unsubscribe", kind, subject_id: Number(subjectId) });
  }

  /**
   * Lists more of who is online (presence:list): the next page after those listed, or, when the
   * list went stale after a whole pass, the first page again in place of it. Resolves with the
   * presence:page (null when the list is already everyone).
   */
  async morePresence() {
    if (this.presenceComplete) return null;
    const restart = this.presenceCursor === null;
    const page = await this.request({ type: "presence:list", after_user_id: restart ? 0 : this.presenceCursor });
    if (restart) this.online = new Map();
    for (const u of page.online || []) this.online.set(u.user_id, u.nickname);
    this.presenceCursor = page.next_after_user_id ?? null;
    if (this.presenceCursor === null) this.presenceComplete = this.online.size >= this.onlineCount;
    this.emitPresence([], []);
    return page;
  }

  /** Starts a generation run; resolves with run:queued. Its frames arrive as "run" events. */
  generate({ project_id, action, input, skip_cache = false }) {
    const frame = { type: "generate:start", project_id, action, input };
    if (skip_cache) frame.skip_cache = true;
    return this.request(frame);
  }

  abort(runId) {
    return this.send({ type: "generate:abort", run_id: runId });
  }
}
