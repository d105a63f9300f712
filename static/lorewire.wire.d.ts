// lorewire.wire.d.ts: the types of every value and frame on lorewire's wire, GENERATED from the
// Rust types (src/domain/wire.rs and the types it uses) by ts-rs; do not edit. After changing a
// wire type, rewrite it with
//   LOREWIRE_WRITE_TYPES=1 cargo nextest run -E 'test(/wire_types/)'
// lorewire.d.ts (the client's API) imports and re-exports these; both are served under /static/.

/**
 * The kind of a content item.
 */
export type ContentKind = "quest" | "event" | "npc";

/**
 * Whose an item is: shared by every player (one per `(kind, subject_id)`), or the requesting
 * player's own (one per `(kind, subject_id, player)`, seen by that player only).
 */
export type ContentScope = "shared" | "player";

export type Status = "pending" | "ready" | "fallback";

/**
 * Why an item got its fallback text (README "Using it"; the `content.reason` column). Its
 * names are its `Display` and `FallbackReason::parse`; serde uses them.
 */
export type FallbackReason =
  | "no_config"
  | "circuit_open"
  | "rate_limited"
  | `api_error_${number}`
  | "network_error"
  | "timeout"
  | "invalid_json"
  | "invalid_response"
  | "moderated"
  | "budget_exceeded";

export type Mood = "neutral" | "happy" | "sad" | "angry" | "excited" | "calm";

/**
 * The A/B group of a player: `control` when `user_id` is even, `treatment` when odd.
 */
export type Variant = "control" | "treatment";

export type Action = "WRITE" | "REWRITE" | "DESCRIBE";

export type RunStatus = "queued" | "running" | "done" | "dead" | "aborted";

/**
 * Why a run ended without its text (`run:error.code`, the `runs.error_code` column). Its
 * names are its `Display` and `RunErrorCode::parse`; serde uses them.
 */
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
  | "internal_error"
  | "moderated";

/**
 * The error codes of a WebSocket `error:<code>` frame.
 */
export type ErrorCode =
  | "invalid_payload"
  | "rate_limited"
  | "unauthorized"
  | "not_found"
  | "budget_exceeded"
  | "overloaded"
  | "moderated"
  | "unavailable";

/**
 * Where a limit sits; refusals are reported for the first level that refuses, in this order.
 */
export type Level = "player" | "project" | "studio";

/** The fields of each kind (all strings, empty while pending). */
export interface ContentFields {
  quest: { flavorText: string; hookText: string };
  event: { announcementText: string; resolutionText: string };
  npc: { greeting: string; personalityNote: string };
}

/**
 * A content item as clients see it.
 */
export type ContentItem = {
  kind: ContentKind,
  /**
   * The game's own id of the quest template, event or NPC.
   */
  subject_id: number,
  /**
   * `shared` by every player, or the requesting player's own (`player`).
   */
  scope: ContentScope,
  status: Status,
  /**
   * quest `flavorText`, `hookText`; event `announcementText`, `resolutionText`; npc
   * `greeting`, `personalityNote` (empty while pending).
   */
  fields: Record<string, string>,
  /**
   * The model that wrote it (when ready).
   */
  model: string | null,
  /**
   * Why it fell back: `no_config`, `circuit_open`, `rate_limited`, `api_error_<status>`, ...
   */
  reason: FallbackReason | null,
  updated_at: string,
  /**
   * Starts at 1 and increases with every change of the item.
   */
  version: number,
};

export type ContentStatus = Status;
export type MoodStatus = Status;

/** A content item, identified by `(kind, subject_id)` (and its player when `scope` is `player`); `fields` follow its kind. */
export type Content<K extends ContentKind = ContentKind> = {
  [P in K]: Omit<ContentItem, "kind" | "fields"> & { kind: P; fields: ContentFields[P] };
}[K];

/**
 * A lobby message as clients see it.
 */
export type Message = {
  id: number,
  user_id: number,
  nickname: string,
  text: string,
  mood: Mood,
  mood_status: Status,
  created_at: string,
  /**
   * Its listed words were replaced by `***` before anyone saw it (PROTOCOL §6).
   */
  masked?: boolean,
};

export type PresenceUser = { user_id: number, nickname: string };

export type PresenceLeave = { user_id: number };

/**
 * Tokens one attempt (or a whole run) consumed. `input_tokens` excludes cache reads and
 * cache writes, so each count is priced once at its own rate (OpenAI's `input_tokens`
 * include `cached_tokens`; the parsers subtract them).
 */
export type Usage = {
  input_tokens: number,
  output_tokens: number,
  cache_read_tokens: number,
  cache_write_tokens: number,
};

/**
 * The error of a run that ended without its text: a `run:error` code and what happened.
 */
export type RunFailure = {
  /**
   * `no_config`, `aborted`, `budget_exceeded`, `api_error_<status>`, `network_error`, ...
   */
  code: RunErrorCode,
  message: string,
};

/**
 * A run as REST clients see it (README "Generation runs").
 */
export type Run = {
  run_id: string,
  project_id: string,
  action: Action,
  status: RunStatus,
  model: string,
  attempts: number,
  usage: Usage,
  cost_usd: number,
  text: string,
  /**
   * Why the run ended without its text; null while it has not.
   */
  error: RunFailure | null,
  created_at: string,
  finished_at: string | null,
};

/**
 * `session:start`: a nickname (and the opaque token that resumes an anonymous player), or
 * the studio's JWT (and a nickname used when its claims carry none).
 */
export type SessionStart = { nickname?: string, token?: string, jwt?: string };

/**
 * `session:refresh`: a newer JWT of the session's player, before the one it started with expires.
 */
export type SessionRefresh = { jwt: string };

export type ContentRequest = {
  kind: ContentKind,
  subject_id: number,
  context?: Record<string, string>,
  regenerate?: boolean,
  /**
   * `player`: the requesting player's own item; `shared` (the default) is everyone's.
   */
  scope?: ContentScope,
};

export type ContentRef = {
  kind: ContentKind,
  subject_id: number,
  /**
   * `player`: the session's player's own item; `shared` (the default) is everyone's.
   */
  scope?: ContentScope,
};

/**
 * `generate:start`; `action` stays a string so an unknown one gets a message naming it.
 */
export type GenerateStart = {
  project_id: string,
  action: Action,
  input: string,
  skip_cache?: boolean,
};

export type GenerateAbort = { run_id: string };

export type MessageSend = { text: string };

/**
 * `presence:list`: the next page of everyone online, after `after_user_id` (0 for the first).
 */
export type PresenceList = { after_user_id: number };

/**
 * A frame from a client. Unknown fields (including `ref`, read separately) are ignored.
 */
export type ClientFrameBody =
  | { "type": "session:start" } & SessionStart
  | { "type": "session:refresh" } & SessionRefresh
  | { "type": "content:request" } & ContentRequest
  | { "type": "content:subscribe" } & ContentRef
  | { "type": "content:unsubscribe" } & ContentRef
  | { "type": "generate:start" } & GenerateStart
  | { "type": "generate:abort" } & GenerateAbort
  | { "type": "message:send" } & MessageSend
  | { "type": "presence:list" } & PresenceList;

export type TypedServerFrame =
  | {
    "type": "session:ack",
    ref?: string | number,
    user_id: number,
    nickname: string,
    /**
     * The opaque token that resumes an anonymous player (none for the studio's login).
     */
    token?: string,
    variant: Variant,
    server_time: string,
    /**
     * The JWT's `sub`, for a player of the studio's login.
     */
    external_id?: string,
    /**
     * When the JWT expires; refresh before it with `session:refresh`.
     */
    expires_at?: string,
  }
  | { "type": "session:refreshed", ref?: string | number, expires_at: string }
  | { "type": "content:snapshot", ref?: string | number, content: Content }
  | { "type": "content:update", content: Content }
  | {
    "type": "run:queued",
    ref?: string | number,
    run_id: string,
    position: number,
    estimated_ms: number,
  }
  | {
    "type": "run:started",
    run_id: string,
    model: string,
    /**
     * Set on a retry: the client drops the text of the earlier attempt.
     */
    attempt?: number,
  }
  | { "type": "run:delta", run_id: string, seq: number, text: string }
  | {
    "type": "run:done",
    run_id: string,
    text: string,
    usage: Usage,
    cost_usd: number,
    cached?: true,
  }
  | {
    "type": "run:error",
    ref?: string | number,
    run_id: string,
    code: RunErrorCode,
    message: string,
  }
  | { "type": "lobby:history", messages: Array<Message> }
  | {
    "type": "presence:state",
    online: Array<PresenceUser>,
    online_count: number,
    complete: boolean,
  }
  | {
    "type": "presence:update",
    joins: Array<PresenceUser>,
    leaves: Array<PresenceLeave>,
    online_count: number,
  }
  | {
    "type": "presence:page",
    ref?: string | number,
    online: Array<PresenceUser>,
    next_after_user_id: number | null,
  }
  | { "type": "message:new", message: Message }
  | {
    "type": "message:mood_updated",
    id: number,
    mood: Mood,
    mood_status: Exclude<Status, "pending">,
  };

export type ErrorFrame = {
  type: `error:${ErrorCode}`,
  ref?: string | number,
  message: string,
  /**
   * The usage level whose limit refused the request (`budget_exceeded`, `rate_limited`).
   */
  level?: Level,
};

/**
 * A frame to a client.
 */
export type ServerFrame = TypedServerFrame | ErrorFrame;
