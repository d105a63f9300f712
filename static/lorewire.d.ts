// lorewire.d.ts — the types of lorewire.js and of every WebSocket frame (README "Browser client").
//
//   import { LorewireClient, type Content } from "./lorewire.js";   // next to lorewire.js
//
// Served at /static/lorewire.d.ts beside /static/lorewire.js.

// --- Shared values ---------------------------------------------------------------------------

export type ContentKind = "quest" | "event" | "npc";
export type ContentStatus = "pending" | "ready" | "fallback";
export type Mood = "neutral" | "happy" | "sad" | "angry" | "excited" | "calm";
export type MoodStatus = "pending" | "ready" | "fallback";
export type Variant = "control" | "treatment";
export type Action = "WRITE" | "REWRITE" | "DESCRIBE";
/** A direct reply echoes the `ref` its request carried. */
export type Ref = string | number;
/** An RFC 3339 time, UTC. */
export type Timestamp = string;

/** Why an item is `fallback`. */
export type FallbackReason =
  | "no_config"
  | "circuit_open"
  | "rate_limited"
  | `api_error_${number}`
  | "network_error"
  | "timeout"
  | "invalid_json"
  | "invalid_response";

/** The fields of each kind (all strings, empty while pending). */
export interface ContentFields {
  quest: { flavorText: string; hookText: string };
  event: { announcementText: string; resolutionText: string };
  npc: { greeting: string; personalityNote: string };
}

/** A content item, identified by `(kind, subject_id)`; `fields` follow its kind. */
export type Content<K extends ContentKind = ContentKind> = {
  [P in K]: {
    kind: P;
    subject_id: number;
    status: ContentStatus;
    fields: ContentFields[P];
    /** The model that wrote it (when `ready`). */
    model: string | null;
    /** Set when `fallback`. */
    reason: FallbackReason | null;
    updated_at: Timestamp;
    /** Starts at 1 and increases with every change of the item. */
    version: number;
  };
}[K];

export interface Message {
  id: number;
  user_id: number;
  nickname: string;
  text: string;
  mood: Mood;
  mood_status: MoodStatus;
  created_at: Timestamp;
}

export interface PresenceUser {
  user_id: number;
  nickname: string;
}

export interface PresenceLeave {
  user_id: number;
}

export interface Usage {
  input_tokens: number;
  output_tokens: number;
  cache_read_tokens: number;
  cache_write_tokens: number;
}

/** Why a run ended without its text (`run:error.code`). */
export type RunErrorCode =
  | "no_config"
  | "aborted"
  | "budget_exceeded"
  | "rate_limited"
  | `api_error_${number}`
  | "network_error"
  | "timeout"
  | "invalid_response"
  | "stream_cut"
  | "stream_error"
  | "internal_error";

export type ErrorCode =
  | "invalid_payload"
  | "rate_limited"
  | "unauthorized"
  | "not_found"
  | "budget_exceeded"
  | "overloaded"
  | "unavailable";

// --- Client frames (client -> server) ---------------------------------------------------------

export interface Referenced {
  ref?: Ref;
}

export interface SessionStartFrame extends Referenced {
  type: "session:start";
  /** 1..32 characters after trimming, no control characters. */
  nickname: string;
  /** From an earlier `session:ack`: resumes the same user. */
  token?: string;
}

export interface ContentRequestFrame extends Referenced {
  type: "content:request";
  kind: ContentKind;
  subject_id: number;
  /** At most 20 string values. */
  context?: Record<string, string>;
  regenerate?: boolean;
}

export interface ContentSubscribeFrame extends Referenced {
  type: "content:subscribe";
  kind: ContentKind;
  subject_id: number;
}

export interface ContentUnsubscribeFrame extends Referenced {
  type: "content:unsubscribe";
  kind: ContentKind;
  subject_id: number;
}

export interface GenerateStartFrame extends Referenced {
  type: "generate:start";
  project_id: string;
  action: Action;
  /** 1..16000 characters. */
  input: string;
  skip_cache?: boolean;
}

export interface GenerateAbortFrame extends Referenced {
  type: "generate:abort";
  run_id: string;
}

export interface MessageSendFrame extends Referenced {
  type: "message:send";
  /** 1..500 characters, no control characters but newline. */
  text: string;
}

/** The next page of everyone online: the users with a user_id above `after_user_id` (0 first). */
export interface PresenceListFrame extends Referenced {
  type: "presence:list";
  after_user_id: number;
}

export type ClientFrame =
  | SessionStartFrame
  | ContentRequestFrame
  | ContentSubscribeFrame
  | ContentUnsubscribeFrame
  | GenerateStartFrame
  | GenerateAbortFrame
  | MessageSendFrame
  | PresenceListFrame;

// --- Server frames (server -> client) ---------------------------------------------------------

export interface SessionAckFrame extends Referenced {
  type: "session:ack";
  user_id: number;
  nickname: string;
  /** An opaque secret: resumes the user and authenticates REST calls as a bearer token. */
  token: string;
  variant: Variant;
  server_time: Timestamp;
}

export interface ContentSnapshotFrame extends Referenced {
  type: "content:snapshot";
  content: Content;
}

export interface ContentUpdateFrame {
  type: "content:update";
  content: Content;
}

export interface RunQueuedFrame extends Referenced {
  type: "run:queued";
  run_id: string;
  position: number;
  estimated_ms: number;
}

export interface RunStartedFrame {
  type: "run:started";
  run_id: string;
  model: string;
  /** Set on a retry: drop the text of the earlier attempt; `seq` restarts at 0. */
  attempt?: number;
}

export interface RunDeltaFrame {
  type: "run:delta";
  run_id: string;
  /** Counts from 0 without gaps (per attempt). */
  seq: number;
  text: string;
}

export interface RunDoneFrame {
  type: "run:done";
  run_id: string;
  /** The concatenation of the attempt's deltas. */
  text: string;
  usage: Usage;
  cost_usd: number;
  /** The stored text of an identical earlier run, at no cost. */
  cached?: true;
}

export interface RunErrorFrame extends Referenced {
  type: "run:error";
  run_id: string;
  code: RunErrorCode;
  message: string;
}

export interface LobbyHistoryFrame {
  type: "lobby:history";
  /** Oldest first. */
  messages: Message[];
}

/** After `session:ack`: the lowest user_ids online, at most `LOREWIRE_PRESENCE_LIST_MAX`. */
export interface PresenceStateFrame {
  type: "presence:state";
  online: PresenceUser[];
  /** Distinct users online, listed or not. */
  online_count: number;
  /** Whether `online` is everyone. */
  complete: boolean;
}

/** Above `LOREWIRE_PRESENCE_LIST_MAX` online, `joins` and `leaves` are empty: only the count. */
export interface PresenceUpdateFrame {
  type: "presence:update";
  joins: PresenceUser[];
  leaves: PresenceLeave[];
  online_count: number;
}

/** The answer to `presence:list`, ascending by user_id. */
export interface PresencePageFrame extends Referenced {
  type: "presence:page";
  online: PresenceUser[];
  /** The last listed user_id when more follow (the next `after_user_id`); null on the last page. */
  next_after_user_id: number | null;
}

export interface MessageNewFrame {
  type: "message:new";
  message: Message;
}

export interface MessageMoodUpdatedFrame {
  type: "message:mood_updated";
  id: number;
  mood: Mood;
  mood_status: Exclude<MoodStatus, "pending">;
}

export interface ErrorFrame extends Referenced {
  type: `error:${ErrorCode}`;
  message: string;
}

export type RunFrame = RunQueuedFrame | RunStartedFrame | RunDeltaFrame | RunDoneFrame | RunErrorFrame;

export type ServerFrame =
  | SessionAckFrame
  | ContentSnapshotFrame
  | ContentUpdateFrame
  | RunFrame
  | LobbyHistoryFrame
  | PresenceStateFrame
  | PresenceUpdateFrame
  | PresencePageFrame
  | MessageNewFrame
  | MessageMoodUpdatedFrame
  | ErrorFrame;

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
  generate(run: { project_id: string; action: Action; input: string; skip_cache?: boolean }): Promise<
    RunQueuedFrame | RunErrorFrame
  >;
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
