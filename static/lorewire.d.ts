// lorewire.d.ts — the types of lorewire.js (README "Browser client").
//
//   import { LorewireClient, type Content } from "./lorewire.js";   // next to lorewire.js
//
// Served at /static/lorewire.d.ts beside /static/lorewire.js and /static/lorewire.wire.d.ts.
// Every value and frame on the wire is GENERATED from the server's Rust types into
// lorewire.wire.d.ts (re-exported here); this file names the frames and types the client's API.

import type {
  ClientFrameBody,
  Content,
  ContentKind,
  ErrorFrame,
  GenerateStart,
  Message,
  Mood,
  MoodStatus,
  PresenceLeave,
  PresenceUser,
  ServerFrame,
  TypedServerFrame,
} from "./lorewire.wire.js";

export * from "./lorewire.wire.js";

/** A direct reply echoes the `ref` its request carried. */
export type Ref = string | number;
/** An RFC 3339 time, UTC. */
export type Timestamp = string;

// --- Client frames (client -> server) ---------------------------------------------------------

export interface Referenced {
  ref?: Ref;
}

/** Any frame a client sends, with the `ref` its direct reply will echo. */
export type ClientFrame = ClientFrameBody & Referenced;
type ClientFrameOf<T extends ClientFrame["type"]> = Extract<ClientFrame, { type: T }>;

/** Nickname 1..32 characters after trimming, no control characters; `token` resumes a user. */
export type SessionStartFrame = ClientFrameOf<"session:start">;
/** `context`: at most 20 string values. */
export type ContentRequestFrame = ClientFrameOf<"content:request">;
export type ContentSubscribeFrame = ClientFrameOf<"content:subscribe">;
export type ContentUnsubscribeFrame = ClientFrameOf<"content:unsubscribe">;
/** `input`: 1..16000 characters. */
export type GenerateStartFrame = ClientFrameOf<"generate:start">;
export type GenerateAbortFrame = ClientFrameOf<"generate:abort">;
/** `text`: 1..500 characters, no control characters but newline. */
export type MessageSendFrame = ClientFrameOf<"message:send">;
/** The next page of everyone online: the users with a user_id above `after_user_id` (0 first). */
export type PresenceListFrame = ClientFrameOf<"presence:list">;

// --- Server frames (server -> client) ---------------------------------------------------------

type ServerFrameOf<T extends TypedServerFrame["type"]> = Extract<TypedServerFrame, { type: T }>;

/** `token` is an opaque secret: it resumes the user and authenticates REST calls as a bearer token. */
export type SessionAckFrame = ServerFrameOf<"session:ack">;
export type ContentSnapshotFrame = ServerFrameOf<"content:snapshot">;
export type ContentUpdateFrame = ServerFrameOf<"content:update">;
export type RunQueuedFrame = ServerFrameOf<"run:queued">;
/** `attempt` is set on a retry: drop the text of the earlier attempt; `seq` restarts at 0. */
export type RunStartedFrame = ServerFrameOf<"run:started">;
/** `seq` counts from 0 without gaps (per attempt). */
export type RunDeltaFrame = ServerFrameOf<"run:delta">;
/** `text` is the concatenation of the attempt's deltas; `cached`: an identical earlier run's, at no cost. */
export type RunDoneFrame = ServerFrameOf<"run:done">;
export type RunErrorFrame = ServerFrameOf<"run:error">;
/** Oldest first. */
export type LobbyHistoryFrame = ServerFrameOf<"lobby:history">;
/** After `session:ack`: the lowest user_ids online, at most `LOREWIRE_PRESENCE_LIST_MAX`. */
export type PresenceStateFrame = ServerFrameOf<"presence:state">;
/** Above `LOREWIRE_PRESENCE_LIST_MAX` online, `joins` and `leaves` are empty: only the count. */
export type PresenceUpdateFrame = ServerFrameOf<"presence:update">;
/** The answer to `presence:list`, ascending by user_id; `next_after_user_id` is null on the last page. */
export type PresencePageFrame = ServerFrameOf<"presence:page">;
export type MessageNewFrame = ServerFrameOf<"message:new">;
export type MessageMoodUpdatedFrame = ServerFrameOf<"message:mood_updated">;

export type RunFrame = RunQueuedFrame | RunStartedFrame | RunDeltaFrame | RunDoneFrame | RunErrorFrame;

/** What the client itself rejects with when no reply can come. */
export interface LocalErrorFrame {
  type: "error:disconnected" | "error:timeout";
  message: string;
}

/** The direct reply to each client frame that has one. */
export interface Replies {
  "session:start": SessionAckFrame;
  "content:request": ContentSnapshotFrame;
  "content:subscribe": ContentSnapshotFrame;
  "generate:start": RunQueuedFrame | RunErrorFrame;
  "presence:list": PresencePageFrame;
}

export type ReplyTo<F extends ClientFrame> = F["type"] extends keyof Replies ? Replies[F["type"]] : ServerFrame;

// --- The client -------------------------------------------------------------------------------

export type ConnectionState = "connecting" | "live" | "reconnecting" | "closed";

export interface LorewireClientOptions {
  /** WebSocket URL; defaults to /ws on this page's host. */
  url?: string;
  nickname?: string;
  /** The studio's JWT for this player (LOREWIRE_AUTH=jwt|both): asked for at every session start,
   * and again before the current one expires (sent as `session:refresh`). */
  getJwt?: () => string | Promise<string>;
  /** Where the resume token is kept (localStorage). */
  storage?: Storage;
  tokenKey?: string;
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

/** The `detail` of each event the client dispatches (all are `CustomEvent`s). */
export interface LorewireEventMap {
  status: { state: ConnectionState; attempt: number; delayMs?: number };
  session: SessionAckFrame;
  /** Lobby history, oldest first. */
  history: Message[];
  /** The list as known after each change or page, with the change itself. */
  presence: {
    online: PresenceUser[];
    joins: PresenceUser[];
    leaves: PresenceLeave[];
    /** Everyone online, listed or not. */
    online_count: number;
    /** Whether `online` is everyone; if not, `morePresence()` lists more. */
    complete: boolean;
  };
  message: Message;
  mood: { id: number; mood: Mood; mood_status: Exclude<MoodStatus, "pending"> };
  /** A snapshot or update, newest version only. */
  content: Content;
  run: RunFrame;
  error: ErrorFrame | LocalErrorFrame;
  /** Every frame, as received. */
  frame: ServerFrame;
}

export type LorewireEvent<K extends keyof LorewireEventMap> = CustomEvent<LorewireEventMap[K]>;

export declare class LorewireClient extends EventTarget {
  constructor(options?: LorewireClientOptions);

  readonly url: string;
  nickname: string;
  /** `connecting`, `live`, `reconnecting` or `closed`. */
  readonly state: ConnectionState;
  /** Reconnect attempts since the last live session. */
  readonly attempt: number;
  /** The current session's ack, null while not live. */
  readonly session: SessionAckFrame | null;
  /** Every item this client knows, newest version, by `"kind:subject_id"`. */
  readonly items: Map<string, Content>;
  /** Who is online as far as listed: user_id -> nickname. */
  readonly online: Map<number, string>;
  /** Everyone online, listed or not. */
  readonly onlineCount: number;
  /** Whether `online` is everyone. */
  readonly presenceComplete: boolean;
  /** The resume token kept in storage. */
  token: string | null;

  /** Opens the connection (and keeps it open until close()). */
  connect(): void;
  /** Closes for good: no reconnect. */
  close(): void;
  /** Forgets the resume token: the next session is a new user. */
  forget(): void;
  /** Sends a frame as it is; false when not connected. */
  send(frame: ClientFrame): boolean;
  /** Sends a frame with a fresh `ref`; resolves with the direct reply, rejects with an error frame. */
  request<F extends ClientFrame>(frame: F, timeoutMs?: number): Promise<ReplyTo<F>>;

  /** Lists the next page of who is online (or the first again once the list went stale); null when complete. */
  morePresence(): Promise<PresencePageFrame | null>;
  /** Sends a lobby message; resolves with its `ref` (a refusal comes as an `error` event with it). */
  sendMessage(text: string): Promise<string>;
  /** Requests (or regenerates) an item; resolves with its snapshot and keeps it subscribed. */
  requestContent<K extends ContentKind>(
    kind: K,
    subjectId: number | string,
    context?: Record<string, string>,
    options?: { regenerate?: boolean },
  ): Promise<Content<K>>;
  subscribe<K extends ContentKind>(kind: K, subjectId: number | string): Promise<Content<K>>;
  unsubscribe(kind: ContentKind, subjectId: number | string): void;
  /** Starts a generation run; resolves with `run:queued`. Its frames arrive as `run` events. */
  generate(run: GenerateStart): Promise<RunQueuedFrame | RunErrorFrame>;
  /** Aborts a run: it ends with `run:error` code `aborted`. False when not connected. */
  abort(runId: string): boolean;

  addEventListener<K extends keyof LorewireEventMap>(
    type: K,
    listener: (this: LorewireClient, event: LorewireEvent<K>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof LorewireEventMap>(
    type: K,
    listener: (this: LorewireClient, event: LorewireEvent<K>) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}
