//! The WebSocket wire format as typed serde enums: every client frame, every server frame and the
//! error codes (README "Using it"). Parsing and serializing only; never does I/O.

use bytestring::ByteString;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::content::{Content, ContentKind, ContentScope};
use super::limits::Level;
use super::lobby::{Message, Mood, MoodStatus, PresenceLeave, PresenceUser};
use super::players::Variant;
use super::runs::{RunErrorCode, Usage};

/// A frame from a client. Unknown fields (including `ref`, read separately) are ignored.
#[derive(Debug)]
#[cfg_attr(test, derive(ts_rs::TS), ts(tag = "type", rename = "ClientFrameBody"))]
pub enum ClientFrame {
    #[cfg_attr(test, ts(rename = "session:start"))]
    SessionStart(SessionStart),
    #[cfg_attr(test, ts(rename = "session:refresh"))]
    SessionRefresh(SessionRefresh),
    #[cfg_attr(test, ts(rename = "content:request"))]
    ContentRequest(ContentRequest),
    #[cfg_attr(test, ts(rename = "content:subscribe"))]
    ContentSubscribe(ContentRef),
    #[cfg_attr(test, ts(rename = "content:unsubscribe"))]
    ContentUnsubscribe(ContentRef),
    #[cfg_attr(test, ts(rename = "generate:start"))]
    GenerateStart(GenerateStart),
    #[cfg_attr(test, ts(rename = "generate:abort"))]
    GenerateAbort(GenerateAbort),
    #[cfg_attr(test, ts(rename = "message:send"))]
    MessageSend(MessageSend),
    #[cfg_attr(test, ts(rename = "presence:list"))]
    PresenceList(PresenceList),
}

/// `presence:list`: the next page of everyone online, after `after_user_id` (0 for the first).
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct PresenceList {
    pub after_user_id: u64,
}

/// `generate:start`; `action` stays a string so an unknown one gets a message naming it.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct GenerateStart {
    pub project_id: String,
    #[cfg_attr(test, ts(as = "super::runs::Action"))]
    pub action: String,
    pub input: String,
    #[serde(default)]
    #[cfg_attr(test, ts(as = "Option<bool>", optional))]
    pub skip_cache: bool,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct GenerateAbort {
    pub run_id: String,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct MessageSend {
    pub text: String,
}

/// `session:start`: a nickname (and the opaque token that resumes an anonymous player), or
/// the studio's JWT (and a nickname used when its claims carry none).
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct SessionStart {
    #[serde(default)]
    #[cfg_attr(test, ts(optional))]
    pub nickname: Option<String>,
    #[serde(default)]
    #[cfg_attr(test, ts(optional))]
    pub token: Option<String>,
    #[serde(default)]
    #[cfg_attr(test, ts(optional))]
    pub jwt: Option<String>,
}

/// `session:refresh`: a newer JWT of the session's player, before the one it started with expires.
#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct SessionRefresh {
    pub jwt: String,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct ContentRequest {
    pub kind: ContentKind,
    pub subject_id: u64,
    #[serde(default)]
    #[cfg_attr(test, ts(optional, type = "Record<string, string>"))]
    pub context: Option<Value>,
    #[serde(default)]
    #[cfg_attr(test, ts(as = "Option<bool>", optional))]
    pub regenerate: bool,
    /// `player`: the requesting player's own item; `shared` (the default) is everyone's.
    #[serde(default)]
    #[cfg_attr(test, ts(as = "Option<ContentScope>", optional))]
    pub scope: ContentScope,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct ContentRef {
    pub kind: ContentKind,
    pub subject_id: u64,
    /// `player`: the session's player's own item; `shared` (the default) is everyone's.
    #[serde(default)]
    #[cfg_attr(test, ts(as = "Option<ContentScope>", optional))]
    pub scope: ContentScope,
}

/// The frame types a client may send.
pub const CLIENT_TYPES: [&str; 9] = [
    "session:start",
    "session:refresh",
    "content:request",
    "content:subscribe",
    "content:unsubscribe",
    "generate:start",
    "generate:abort",
    "message:send",
    "presence:list",
];

/// Why a text frame was refused; the message is shown to the client as it is.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("a frame must be a JSON object")]
    NotAnObject,
    #[error("`ref` must be a string or a number")]
    BadRef,
    #[error("a frame needs a string `type`")]
    NoType,
    /// The `type` as the client wrote it.
    #[error("unknown frame type `{0}` (expected one of {list})", list = CLIENT_TYPES.join(", "))]
    UnknownType(String),
    /// The frame's fields do not make its type (serde's message).
    #[error("{0}")]
    Fields(String),
    /// One field is missing or malformed: its path and serde's message.
    #[error("`{path}`: {message}")]
    Field { path: String, message: String },
}

/// Deserializes a frame's fields, naming the field at fault in the error.
fn fields<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, FrameError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        if path == "." {
            FrameError::Fields(message)
        } else {
            FrameError::Field { path, message }
        }
    })
}

/// The error codes of a WebSocket `error:<code>` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename_all = "snake_case"))]
pub enum ErrorCode {
    InvalidPayload,
    RateLimited,
    Unauthorized,
    NotFound,
    BudgetExceeded,
    Overloaded,
    /// Moderation flagged what the player wrote (PROTOCOL §6); nothing was stored or sent.
    Moderated,
    /// The database (or the backplane) cannot take the request right now; nothing was stored.
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Moderated => "moderated",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// A frame to a client.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(untagged)]
pub enum ServerFrame {
    Typed(Typed),
    Error(ErrorFrame),
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename = "TypedServerFrame"))]
#[serde(tag = "type")]
pub enum Typed {
    #[serde(rename = "session:ack")]
    SessionAck {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional, type = "string | number"))]
        reference: Option<Value>,
        user_id: i64,
        nickname: String,
        /// The opaque token that resumes an anonymous player (none for the studio's login).
        #[serde(skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional))]
        token: Option<String>,
        variant: Variant,
        server_time: DateTime<Utc>,
        /// The JWT's `sub`, for a player of the studio's login.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional))]
        external_id: Option<String>,
        /// When the JWT expires; refresh before it with `session:refresh`.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional))]
        expires_at: Option<DateTime<Utc>>,
    },
    #[serde(rename = "session:refreshed")]
    SessionRefreshed {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional, type = "string | number"))]
        reference: Option<Value>,
        expires_at: DateTime<Utc>,
    },
    #[serde(rename = "content:snapshot")]
    ContentSnapshot {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional, type = "string | number"))]
        reference: Option<Value>,
        #[cfg_attr(test, ts(type = "Content"))]
        content: Content,
    },
    #[serde(rename = "content:update")]
    ContentUpdate {
        #[cfg_attr(test, ts(type = "Content"))]
        content: Content,
    },
    #[serde(rename = "run:queued")]
    RunQueued {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional, type = "string | number"))]
        reference: Option<Value>,
        run_id: String,
        position: i64,
        estimated_ms: i64,
    },
    #[serde(rename = "run:started")]
    RunStarted {
        run_id: String,
        model: String,
        /// Set on a retry: the client drops the text of the earlier attempt.
        #[serde(skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional))]
        attempt: Option<i32>,
    },
    #[serde(rename = "run:delta")]
    RunDelta { run_id: String, seq: u64, text: String },
    #[serde(rename = "run:done")]
    RunDone {
        run_id: String,
        text: String,
        usage: Usage,
        cost_usd: f64,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        #[cfg_attr(test, ts(optional, type = "true"))]
        cached: bool,
    },
    #[serde(rename = "run:error")]
    RunError {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional, type = "string | number"))]
        reference: Option<Value>,
        run_id: String,
        code: RunErrorCode,
        message: String,
    },
    #[serde(rename = "lobby:history")]
    LobbyHistory { messages: Vec<Message> },
    /// The lowest `user_id`s online (at most the list maximum); `complete` when that is everyone.
    #[serde(rename = "presence:state")]
    PresenceState { online: Vec<PresenceUser>, online_count: usize, complete: bool },
    /// The changes, or above the list maximum only the new count (empty lists).
    #[serde(rename = "presence:update")]
    PresenceUpdate { joins: Vec<PresenceUser>, leaves: Vec<PresenceLeave>, online_count: usize },
    /// The answer to `presence:list`; `next_after_user_id` is null on the last page.
    #[serde(rename = "presence:page")]
    PresencePage {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        #[cfg_attr(test, ts(optional, type = "string | number"))]
        reference: Option<Value>,
        online: Vec<PresenceUser>,
        next_after_user_id: Option<i64>,
    },
    #[serde(rename = "message:new")]
    MessageNew { message: Message },
    #[serde(rename = "message:mood_updated")]
    MessageMoodUpdated {
        id: i64,
        mood: Mood,
        #[cfg_attr(test, ts(type = "Exclude<Status, \"pending\">"))]
        mood_status: MoodStatus,
    },
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(ts_rs::TS))]
pub struct ErrorFrame {
    #[serde(rename = "type")]
    #[cfg_attr(test, ts(type = "`error:${ErrorCode}`"))]
    kind: String,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional, type = "string | number"))]
    reference: Option<Value>,
    message: String,
    /// The usage level whose limit refused the request (`budget_exceeded`, `rate_limited`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    level: Option<Level>,
}

impl ServerFrame {
    pub fn error(code: ErrorCode, reference: Option<Value>, message: impl Into<String>) -> ServerFrame {
        let kind = format!("error:{}", code.as_str());
        ServerFrame::Error(ErrorFrame { kind, reference, message: message.into(), level: None })
    }

    /// An error a usage limit at `level` caused.
    pub fn error_at(
        code: ErrorCode,
        reference: Option<Value>,
        message: impl Into<String>,
        level: Level,
    ) -> ServerFrame {
        let kind = format!("error:{}", code.as_str());
        ServerFrame::Error(ErrorFrame { kind, reference, message: message.into(), level: Some(level) })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("frames always serialize")
    }

    /// The frame serialized once, as the bytes the Hub hands to every subscriber.
    pub fn to_bytes(&self) -> ByteString {
        ByteString::from(self.to_json())
    }
}

impl From<Typed> for ServerFrame {
    fn from(t: Typed) -> Self {
        ServerFrame::Typed(t)
    }
}

/// Splits a raw text frame into its `ref` and its typed frame.
/// Whether `text` is a JSON object whose `type` is `session:start` (well formed or not).
pub fn is_session_start(text: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .ok()
        .is_some_and(|v| v.get("type").and_then(Value::as_str) == Some("session:start"))
}

pub fn parse(text: &str) -> (Option<Value>, Result<ClientFrame, FrameError>) {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return (None, Err(FrameError::NotJson(e))),
    };
    let Value::Object(map) = &value else {
        return (None, Err(FrameError::NotAnObject));
    };
    let reference = match map.get("ref") {
        None | Some(Value::Null) => None,
        Some(r @ (Value::String(_) | Value::Number(_))) => Some(r.clone()),
        Some(_) => return (None, Err(FrameError::BadRef)),
    };
    let Some(ty) = map.get("type").and_then(Value::as_str) else {
        return (reference, Err(FrameError::NoType));
    };
    let frame = match ty {
        "session:start" => fields(value).map(ClientFrame::SessionStart),
        "session:refresh" => fields(value).map(ClientFrame::SessionRefresh),
        "content:request" => fields(value).map(ClientFrame::ContentRequest),
        "content:subscribe" => fields(value).map(ClientFrame::ContentSubscribe),
        "content:unsubscribe" => fields(value).map(ClientFrame::ContentUnsubscribe),
        "generate:start" => fields(value).map(ClientFrame::GenerateStart),
        "generate:abort" => fields(value).map(ClientFrame::GenerateAbort),
        "message:send" => fields(value).map(ClientFrame::MessageSend),
        "presence:list" => fields(value).map(ClientFrame::PresenceList),
        other => Err(FrameError::UnknownType(other.to_owned())),
    };
    (reference, frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_ref_on_bad_frames() {
        let (r, f) = parse(r#"{"type":"nope:nope","ref":7}"#);
        assert_eq!(r, Some(Value::from(7)));
        assert!(f.unwrap_err().to_string().contains("unknown frame type"));
        let (r, f) = parse(r#"{"type":"content:request","ref":"a","kind":"quest"}"#);
        assert_eq!(r, Some(Value::from("a")));
        assert!(f.unwrap_err().to_string().contains("subject_id"));
        let (_, f) = parse(r#"{"type":"content:request","kind":"quest","subject_id":"1"}"#);
        assert!(f.unwrap_err().to_string().contains("`subject_id`"));
        let (_, f) = parse(r#"{"type":"content:request","kind":"dragon","subject_id":1}"#);
        assert!(f.unwrap_err().to_string().contains("dragon"));
        for bad in [
            r#"{"type":"presence:list"}"#,
            r#"{"type":"presence:list","after_user_id":-1}"#,
            r#"{"type":"presence:list","after_user_id":"0"}"#,
            r#"{"type":"presence:list","after_user_id":1.5}"#,
        ] {
            assert!(parse(bad).1.unwrap_err().to_string().contains("after_user_id"), "{bad}");
        }
        let (_, f) = parse(r#"{"type":"presence:list","after_user_id":250}"#);
        assert!(matches!(f, Ok(ClientFrame::PresenceList(PresenceList { after_user_id: 250 }))));
        let (_, f) = parse("not json");
        assert!(f.is_err());
    }

    #[test]
    fn each_frame_refusal_is_its_own_variant_with_its_message() {
        let refusal = |text: &str| parse(text).1.unwrap_err();
        let not_json = refusal("not json");
        assert!(matches!(not_json, FrameError::NotJson(_)));
        assert!(not_json.to_string().starts_with("frame is not JSON: expected ident"), "{not_json}");
        let cases = [
            ("[1]", "a frame must be a JSON object"),
            (r#"{"type":"presence:list","ref":[1]}"#, "`ref` must be a string or a number"),
            (r#"{"type":7}"#, "a frame needs a string `type`"),
            (
                r#"{"type":"nope"}"#,
                "unknown frame type `nope` (expected one of session:start, session:refresh, content:request, \
                 content:subscribe, content:unsubscribe, generate:start, generate:abort, message:send, presence:list)",
            ),
            (r#"{"type":"message:send"}"#, "missing field `text`"),
            (r#"{"type":"message:send","text":1}"#, "`text`: invalid type: integer `1`, expected a string"),
        ];
        for (text, message) in cases {
            assert_eq!(refusal(text).to_string(), message, "{text}");
        }
        assert!(matches!(refusal("[1]"), FrameError::NotAnObject));
        assert!(matches!(refusal(r#"{"type":"presence:list","ref":{}}"#), FrameError::BadRef));
        assert!(matches!(refusal(r#"{"ref":1}"#), FrameError::NoType));
        assert!(matches!(refusal(r#"{"type":"nope"}"#), FrameError::UnknownType(t) if t == "nope"));
        assert!(matches!(refusal(r#"{"type":"message:send"}"#), FrameError::Fields(_)));
        assert!(
            matches!(refusal(r#"{"type":"message:send","text":1}"#), FrameError::Field { path, .. } if path == "text")
        );
    }

    #[test]
    fn run_error_frames_name_their_code_as_before() {
        let frame = ServerFrame::from(Typed::RunError {
            reference: Some(Value::from(3)),
            run_id: "r1".into(),
            code: RunErrorCode::ApiError(429),
            message: "m".into(),
        });
        assert_eq!(
            frame.to_json(),
            r#"{"type":"run:error","ref":3,"run_id":"r1","code":"api_error_429","message":"m"}"#
        );
    }

    #[test]
    fn error_frames_carry_code_and_ref() {
        let json = ServerFrame::error(ErrorCode::NotFound, Some(Value::from("x")), "gone").to_json();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["type"], "error:not_found");
        assert_eq!(v["ref"], "x");
        assert_eq!(v["message"], "gone");
    }
}
