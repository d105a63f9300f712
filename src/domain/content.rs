//! Game content as rules: the three kinds (quest, event, npc) and what is fixed per kind (field
//! names, length caps, the deterministic fallback text, checks of a model's answer), the item as
//! clients see it, its status and why it fell back, and the validation of a request.
//!
//! Fallback text is non-empty and a pure function of `(kind, subject_id)`. Never does I/O, never
//! holds a prompt (prompts are the content feature's, `content::prompts`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::answer::{close_truncated, cut_at_sentence, json_body, type_name, Checked, Closed, OutputError};
use super::context::{Context, ContextError};
pub use super::status::Status as ContentStatus;

/// The kind of a content item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum ContentKind {
    Quest,
    Event,
    Npc,
}

/// Length caps (in chars) per field; the system prompts (`content::prompts`) state the same numbers.
const QUEST_FLAVOR_MAX: usize = 600;
const QUEST_HOOK_MAX: usize = 300;
const EVENT_ANNOUNCEMENT_MAX: usize = 600;
const EVENT_RESOLUTION_MAX: usize = 600;
const NPC_GREETING_MAX: usize = 300;
const NPC_PERSONALITY_MAX: usize = 300;

const QUEST_FIELDS: [&str; 2] = ["flavorText", "hookText"];
const EVENT_FIELDS: [&str; 2] = ["announcementText", "resolutionText"];
const NPC_FIELDS: [&str; 2] = ["greeting", "personalityNote"];

/// Fallback pairs per kind, in `field_names` order. Generic on purpose: no names, no places.
const QUEST_FALLBACKS: [[&str; 2]; 6] = [
    [
        "The road ahead is older than any map that names it. Those who walked it before left only \
         cold ashes and scratched warnings on the waystones, and the wind still carries their \
         unfinished oaths.",
        "Something waits at the end of this road. Go and learn whether it is a reward or a \
         reckoning.",
    ],
    [
        "Bells toll in a chapel no one has entered for a generation, and the candles inside burn \
         without wax. Whatever stirs there has grown tired of waiting for the brave to come to it.",
        "Answer the call before the silence does.",
    ],
    [
        "Coin is scarce, the nights are long, and rumor travels faster than any rider. A task has \
         surfaced from the murk of the taverns: dangerous, poorly paid, and exactly the kind of \
         work that makes heroes or buries them.",
        "Take up the task. Few others will dare.",
    ],
    [
        "Crows gather where the old battle was fought, and the earth there has begun to give back \
         what it swallowed. The dead do not rest easily while the promises made over their graves \
         go unkept.",
        "Keep the promise the living forgot.",
    ],
    [
        "A sealed letter, a broken seal, and a debt that outlived the one who owed it. The matter \
         passed through many hands before reaching yours, and every one of them was glad to let \
         it go.",
        "The debt is yours now. See it settled, one way or another.",
    ],
    [
        "Beyond the last lit window of the town, the fog has started to speak in familiar voices. \
         The watch pretends not to hear. Someone must walk into the grey and learn what it wants.",
        "Step into the fog and bring back the truth, if you can bear it.",
    ],
];

const EVENT_FALLBACKS: [[&str; 2]; 6] = [
    [
        "A red moon rises over the land, and every hearth burns a little colder. Watchfires are \
         lit along the walls, and the old songs of warding are sung again in taverns and temples \
         alike.",
        "The red moon sets at last. The land exhales, counts its losses, and remembers those who \
         stood watch until dawn.",
    ],
    [
        "Horns sound from the high passes: something has broken loose from the deep places \
         beneath the mountains. Arm yourselves, gather your companions, and hold the line while \
         the roads are still open.",
        "The horns fall silent. What came up from the deep has been driven back into the dark, \
         though the mountains will not soon forget it.",
    ],
    [
        "A strange fog rolls in from the marshes, swallowing roads and lanterns alike. Travelers \
         speak of shapes moving within it and of voices calling out names they should not know.",
        "The fog lifts as quietly as it came. Some paths have changed, some travelers never \
         returned, and the marsh keeps its secrets.",
    ],
    [
        "The ancient seals are weakening. Across the realm shrines flicker and wards crack, and \
         every able blade is called to stand between the world and what stirs beneath it.",
        "The seals hold once more, bound anew by sweat, steel and sacrifice. For now, what lies \
         beneath sleeps again.",
    ],
    [
        "Caravans have vanished on every great road, and the markets grow thin and fearful. \
         Bounties are nailed up in every square for any who can bring the roads back into the \
         light.",
        "The roads are open again, though caravans travel in greater numbers now. The markets \
         fill, and the bounty boards are scraped clean.",
    ],
    [
        "A comet splits the night sky, trailing green fire. Scholars mutter of omens, priests of \
         judgment, and in the wild places the beasts grow restless and bold.",
        "The comet fades beyond the horizon, leaving scorched hilltops and strange stones behind. \
         Whatever it foretold has come and gone, and the world turns on.",
    ],
];

const NPC_FALLBACKS: [[&str; 2]; 6] = [
    [
        "Well met, traveler. Mind the mud on your boots and the company you keep; both have a way \
         of following you home.",
        "Weary but watchful; speaks plainly, trusts slowly, and remembers every kindness and every \
         slight.",
    ],
    [
        "Another wanderer, and still breathing. The roads must be kinder than they were. What \
         brings you this far from the light?",
        "Dry-humored and guarded; hides an old grief behind sharp remarks and a quiet curiosity.",
    ],
    [
        "You have the look of someone who has seen things best left unspoken. Sit, if you like. \
         The fire is warm enough for two.",
        "Gentle and patient, with a listener's silence; knows more than they say, and says it only \
         when asked.",
    ],
    [
        "Keep your blade sheathed and your voice low. These walls have ears, and not all of them \
         belong to the living.",
        "Suspicious and superstitious; sees omens everywhere, yet is fiercely loyal to those who \
         earn their trust.",
    ],
    [
        "Coin, news, or trouble? I deal in all three, stranger, though trouble costs extra.",
        "Shrewd and pragmatic; haggles over everything, but keeps a bargain once it is struck.",
    ],
    [
        "May the old gods keep you. Few come this way anymore, and fewer leave the same as they \
         arrived.",
        "Devout and soft-spoken; carries a heavy secret and seeks redemption in small acts of \
         service.",
    ],
];

impl ContentKind {
    /// Every kind, in protocol order.
    pub const ALL: [ContentKind; 3] = [ContentKind::Quest, ContentKind::Event, ContentKind::Npc];

    /// The protocol name: `quest`, `event` or `npc`.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentKind::Quest => "quest",
            ContentKind::Event => "event",
            ContentKind::Npc => "npc",
        }
    }

    /// The kind named exactly `s` (lowercase protocol names only).
    pub fn parse(s: &str) -> Option<ContentKind> {
        ContentKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The fields of an item of this kind, in a fixed order.
    pub fn field_names(self) -> &'static [&'static str] {
        match self {
            ContentKind::Quest => &QUEST_FIELDS,
            ContentKind::Event => &EVENT_FIELDS,
            ContentKind::Npc => &NPC_FIELDS,
        }
    }

    /// Every field set to `""`: the fields of a pending item.
    pub fn empty_fields(self) -> Map<String, Value> {
        self.field_names().iter().map(|&f| (f.to_owned(), Value::String(String::new()))).collect()
    }

    /// The fallback fields of item `(self, subject_id)`: non-empty and always the same for the
    /// same item. The text is picked by SHA-256 of `"{kind}:{subject_id}"`, so neighbouring ids
    /// spread over all texts.
    pub fn fallback_fields(self, subject_id: u64) -> Map<String, Value> {
        let texts: &[[&str; 2]] = match self {
            ContentKind::Quest => &QUEST_FALLBACKS,
            ContentKind::Event => &EVENT_FALLBACKS,
            ContentKind::Npc => &NPC_FALLBACKS,
        };
        let digest = Sha256::digest(format!("{}:{subject_id}", self.as_str()).as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        // The remainder is below texts.len(), so the cast back cannot truncate.
        let index = (u64::from_be_bytes(first) % texts.len() as u64) as usize;
        self.field_names()
            .iter()
            .zip(texts[index])
            .map(|(&field, text)| (field.to_owned(), Value::String(text.to_owned())))
            .collect()
    }

    /// The length cap of `field` in chars, `None` if this kind has no such field.
    pub fn max_len(self, field: &str) -> Option<usize> {
        match (self, field) {
            (ContentKind::Quest, "flavorText") => Some(QUEST_FLAVOR_MAX),
            (ContentKind::Quest, "hookText") => Some(QUEST_HOOK_MAX),
            (ContentKind::Event, "announcementText") => Some(EVENT_ANNOUNCEMENT_MAX),
            (ContentKind::Event, "resolutionText") => Some(EVENT_RESOLUTION_MAX),
            (ContentKind::Npc, "greeting") => Some(NPC_GREETING_MAX),
            (ContentKind::Npc, "personalityNote") => Some(NPC_PERSONALITY_MAX),
            _ => None,
        }
    }

    /// Validates the model's text: trims, strips a ```` ```json ... ``` ```` fence if present,
    /// parses a JSON object, requires every field present as a string, non-empty after trimming
    /// and at most [`max_len`](Self::max_len) chars; drops unknown keys; returns the fields
    /// (trimmed). Text that does not parse is [`OutputError::NotJson`]; JSON of the wrong shape
    /// is [`OutputError::Invalid`].
    ///
    /// Two salvages make a nearly right answer acceptable (and say so): a field over its cap is
    /// cut at its last sentence end that fits, and an answer cut off inside its last field (the
    /// output-token cap) is closed and that field cut at its last sentence end; either only when
    /// at least half of the field survives. Nothing that breaks a cap is ever accepted.
    pub fn validate_output(self, text: &str) -> Result<Checked<Map<String, Value>>, OutputError> {
        let (object, cut) = match json_body(text) {
            Ok(Value::Object(object)) => (object, None),
            Ok(value) => {
                return Err(OutputError::Invalid(format!("expected a JSON object, got {}", type_name(&value))))
            }
            Err(not_json) => match close_truncated(text) {
                Some(Closed { value: Value::Object(object), cut_member }) => (object, Some((cut_member, not_json))),
                _ => return Err(not_json),
            },
        };
        let mut salvaged = cut.is_some();
        let mut fields = Map::new();
        for &field in self.field_names() {
            let text = match object.get(field) {
                None => {
                    return Err(match cut {
                        // Cut off before this field: the answer is not whole JSON.
                        Some((_, not_json)) => not_json,
                        None => OutputError::Invalid(format!("missing field `{field}`")),
                    });
                }
                Some(Value::String(s)) => s.trim(),
                Some(other) => {
                    return Err(OutputError::Invalid(format!(
                        "field `{field}` must be a string, got {}",
                        type_name(other)
                    )))
                }
            };
            let max = self.max_len(field).expect("every field has a cap");
            let chars = text.chars().count();
            let was_cut = cut.as_ref().is_some_and(|(member, _)| member.as_deref() == Some(field));
            let text = if was_cut || chars > max {
                match cut_at_sentence(text, max) {
                    Some(kept) => {
                        salvaged = true;
                        kept
                    }
                    None if was_cut => return Err(cut.expect("was cut").1),
                    None => {
                        return Err(OutputError::Invalid(format!(
                            "field `{field}` is too long ({chars} characters; at most {max})"
                        )))
                    }
                }
            } else {
                text
            };
            if text.is_empty() {
                return Err(OutputError::Invalid(format!("field `{field}` is empty")));
            }
            fields.insert(field.to_owned(), Value::String(text.to_owned()));
        }
        Ok(Checked { value: fields, salvaged })
    }
}

/// Why an item got its fallback text (README "Using it"; the `content.reason` column). Its
/// names are its `Display` and `FallbackReason::parse`; serde uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename_all = "snake_case"))]
pub enum FallbackReason {
    NoConfig,
    CircuitOpen,
    RateLimited,
    #[cfg_attr(test, ts(untagged, type = "`api_error_${number}`"))]
    ApiError(u16),
    NetworkError,
    Timeout,
    InvalidJson,
    InvalidResponse,
    /// Moderation flagged the answer, and its one regeneration (PROTOCOL §6).
    Moderated,
    /// The studio's daily usage limit had no room for the item (PROTOCOL §5).
    BudgetExceeded,
}

impl std::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FallbackReason::NoConfig => f.write_str("no_config"),
            FallbackReason::CircuitOpen => f.write_str("circuit_open"),
            FallbackReason::RateLimited => f.write_str("rate_limited"),
            FallbackReason::ApiError(status) => write!(f, "api_error_{status}"),
            FallbackReason::NetworkError => f.write_str("network_error"),
            FallbackReason::Timeout => f.write_str("timeout"),
            FallbackReason::InvalidJson => f.write_str("invalid_json"),
            FallbackReason::InvalidResponse => f.write_str("invalid_response"),
            FallbackReason::Moderated => f.write_str("moderated"),
            FallbackReason::BudgetExceeded => f.write_str("budget_exceeded"),
        }
    }
}

impl FallbackReason {
    /// Every reason but `ApiError`, which carries the upstream's HTTP status.
    pub const NAMED: [FallbackReason; 9] = [
        FallbackReason::NoConfig,
        FallbackReason::CircuitOpen,
        FallbackReason::RateLimited,
        FallbackReason::NetworkError,
        FallbackReason::Timeout,
        FallbackReason::InvalidJson,
        FallbackReason::InvalidResponse,
        FallbackReason::Moderated,
        FallbackReason::BudgetExceeded,
    ];

    /// The reason a name stands for; `None` for a name this version does not know (a corrupt
    /// row). `api_error_<status>` takes the status as [`Display`](std::fmt::Display) writes it.
    pub fn parse(s: &str) -> Option<FallbackReason> {
        if let Some(status) = s.strip_prefix("api_error_") {
            let reason = FallbackReason::ApiError(status.parse().ok()?);
            return (reason.to_string() == s).then_some(reason);
        }
        FallbackReason::NAMED.into_iter().find(|reason| reason.to_string() == s)
    }
}

impl Serialize for FallbackReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FallbackReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        FallbackReason::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown fallback reason `{name}`")))
    }
}

/// Whose an item is: shared by every player (one per `(kind, subject_id)`), or the requesting
/// player's own (one per `(kind, subject_id, player)`, seen by that player only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[cfg_attr(test, derive(ts_rs::TS))]
#[serde(rename_all = "lowercase")]
pub enum ContentScope {
    #[default]
    Shared,
    Player,
}

/// The owner a shared item is stored with (user ids start at 1).
pub const SHARED_OWNER: i64 = 0;

/// A content item as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[cfg_attr(test, derive(ts_rs::TS), ts(rename = "ContentItem"))]
pub struct Content {
    pub kind: ContentKind,
    /// The game's own id of the quest template, event or NPC.
    pub subject_id: u64,
    /// `shared` by every player, or the requesting player's own (`player`).
    pub scope: ContentScope,
    /// The player whose own item it is ([`SHARED_OWNER`] for a shared one); never sent.
    #[serde(skip)]
    #[schema(ignore)]
    #[cfg_attr(test, ts(skip))]
    pub owner_id: i64,
    pub status: ContentStatus,
    /// quest `flavorText`, `hookText`; event `announcementText`, `resolutionText`; npc
    /// `greeting`, `personalityNote` (empty while pending).
    #[schema(value_type = HashMap<String, String>)]
    #[cfg_attr(test, ts(type = "Record<string, string>"))]
    pub fields: Map<String, Value>,
    /// The model that wrote it (when ready).
    pub model: Option<String>,
    /// Why it fell back: `no_config`, `circuit_open`, `rate_limited`, `api_error_<status>`, ...
    #[schema(value_type = Option<String>)]
    pub reason: Option<FallbackReason>,
    pub updated_at: DateTime<Utc>,
    /// Starts at 1 and increases with every change of the item.
    pub version: i64,
}

/// A validated `content:request`.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub kind: ContentKind,
    pub subject_id: u64,
    pub context: Option<Context>,
    pub regenerate: bool,
    /// `shared` unless the request asks for the player's own item.
    pub scope: ContentScope,
}

/// Who asks for an item: the game server (the admin token over REST, a session started with a
/// server-role JWT) or a player.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester {
    /// The player asking (a server-role session has one; the admin token has none).
    pub user_id: Option<i64>,
    /// The game server, which may change shared items.
    pub server: bool,
}

impl Requester {
    pub fn player(user_id: i64) -> Requester {
        Requester { user_id: Some(user_id), server: false }
    }
}

/// Why a content request is refused; the message is shown to the client as it is.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ContentRequestError {
    #[error(transparent)]
    SubjectId(#[from] SubjectIdTooLarge),
    #[error(transparent)]
    Context(#[from] ContextError),
}

/// A subject id above what the store can hold (`i64::MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("subject_id must be at most {max}", max = i64::MAX)]
pub struct SubjectIdTooLarge;

/// Checks a request's fields.
pub fn validate(
    kind: ContentKind,
    subject_id: u64,
    context: Option<&Value>,
    regenerate: bool,
) -> Result<ValidRequest, ContentRequestError> {
    check_subject_id(subject_id)?;
    let context = match context {
        None | Some(Value::Null) => None,
        Some(v) => Some(Context::parse(Some(v))?),
    };
    Ok(ValidRequest { kind, subject_id, context, regenerate, scope: ContentScope::Shared })
}

/// Subject ids are the game's u64 ids, stored as signed 64-bit integers.
pub fn check_subject_id(subject_id: u64) -> Result<i64, SubjectIdTooLarge> {
    i64::try_from(subject_id).map_err(|_| SubjectIdTooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeSet;

    #[test]
    fn each_request_refusal_is_its_own_variant_with_its_message() {
        let too_large = validate(ContentKind::Quest, u64::MAX, None, false).unwrap_err();
        assert_eq!(too_large, ContentRequestError::SubjectId(SubjectIdTooLarge));
        assert_eq!(too_large.to_string(), "subject_id must be at most 9223372036854775807");
        assert_eq!(check_subject_id(i64::MAX as u64), Ok(i64::MAX));
        assert_eq!(check_subject_id(i64::MAX as u64 + 1), Err(SubjectIdTooLarge));
        let bad_context = validate(ContentKind::Npc, 1, Some(&json!([1])), false).unwrap_err();
        assert_eq!(bad_context, ContentRequestError::Context(ContextError::NotAnObject));
        assert_eq!(bad_context.to_string(), "context must be an object of strings");
        assert!(validate(ContentKind::Event, 1, Some(&Value::Null), true).unwrap().context.is_none());
    }

    #[test]
    fn fallback_reasons_round_trip_as_clients_read_them() {
        let names = [
            (FallbackReason::NoConfig, "no_config"),
            (FallbackReason::CircuitOpen, "circuit_open"),
            (FallbackReason::RateLimited, "rate_limited"),
            (FallbackReason::ApiError(500), "api_error_500"),
            (FallbackReason::NetworkError, "network_error"),
            (FallbackReason::Timeout, "timeout"),
            (FallbackReason::InvalidJson, "invalid_json"),
            (FallbackReason::InvalidResponse, "invalid_response"),
            (FallbackReason::Moderated, "moderated"),
            (FallbackReason::BudgetExceeded, "budget_exceeded"),
        ];
        for reason in FallbackReason::NAMED {
            assert!(names.iter().any(|(r, _)| *r == reason), "{reason:?} has a name in this test");
        }
        for (reason, name) in names {
            assert_eq!(reason.to_string(), name);
            assert_eq!(FallbackReason::parse(name), Some(reason), "{name}");
            assert_eq!(serde_json::to_value(reason).unwrap(), name);
            assert_eq!(serde_json::from_value::<FallbackReason>(name.into()).unwrap(), reason);
        }
        for unknown in ["", "fallback", "api_error_", "api_error_05", "api_error_99999", "stream_cut"] {
            assert_eq!(FallbackReason::parse(unknown), None, "{unknown}");
            assert!(serde_json::from_value::<FallbackReason>(unknown.into()).is_err(), "{unknown}");
        }
    }

    #[test]
    fn names_round_trip() {
        for kind in ContentKind::ALL {
            assert_eq!(ContentKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, Value::String(kind.as_str().to_owned()));
            assert_eq!(serde_json::from_value::<ContentKind>(json).unwrap(), kind);
        }
        assert_eq!(ContentKind::parse("Quest"), None);
        assert_eq!(ContentKind::parse(" quest"), None);
        assert_eq!(ContentKind::parse("dragon"), None);
        assert_eq!(ContentKind::parse(""), None);
    }

    #[test]
    fn field_names_follow_the_protocol() {
        assert_eq!(ContentKind::Quest.field_names(), ["flavorText", "hookText"]);
        assert_eq!(ContentKind::Event.field_names(), ["announcementText", "resolutionText"]);
        assert_eq!(ContentKind::Npc.field_names(), ["greeting", "personalityNote"]);
        for kind in ContentKind::ALL {
            for field in kind.field_names() {
                assert!(kind.max_len(field).is_some_and(|n| n >= 100), "{kind:?} {field}");
            }
            assert_eq!(kind.max_len("mood"), None);
        }
        assert_eq!(ContentKind::Quest.max_len("greeting"), None);
    }

    #[test]
    fn validate_output_happy_path_with_and_without_fence() {
        let plain = r#"{"flavorText": "  Mist over the barrow.  ", "hookText": "Go.", "extra": 1}"#;
        let checked = ContentKind::Quest.validate_output(plain).unwrap();
        assert!(!checked.salvaged);
        let fields = checked.value;
        assert_eq!(fields.len(), 2, "unknown keys are dropped");
        assert_eq!(fields["flavorText"], "Mist over the barrow.");
        assert_eq!(fields["hookText"], "Go.");
        assert!(!fields.contains_key("extra"));

        for fenced in [
            "```json\n{\"greeting\": \"Hail.\", \"personalityNote\": \"Grim.\"}\n```",
            "  ```\n{\"greeting\": \"Hail.\", \"personalityNote\": \"Grim.\"}```  ",
            "```JSON {\"greeting\": \"Hail.\", \"personalityNote\": \"Grim.\"} ```",
            "\u{feff}{\"greeting\": \"Hail.\", \"personalityNote\": \"Grim.\"}",
        ] {
            let fields = ContentKind::Npc.validate_output(fenced).unwrap().value;
            assert_eq!(fields["greeting"], "Hail.", "{fenced}");
            assert_eq!(fields["personalityNote"], "Grim.", "{fenced}");
        }
    }

    #[test]
    fn validate_output_not_json() {
        for text in ["Sure! Here is your quest: ...", "", "```json\n{\"flavorText\": \"a\",", "{'a': 1}"] {
            let err = ContentKind::Quest.validate_output(text).unwrap_err();
            assert!(matches!(err, OutputError::NotJson(_)), "{text:?}: {err:?}");
            assert!(err.to_string().starts_with("the model's answer is not JSON"));
        }
    }

    #[test]
    fn validate_output_refuses_what_breaks_the_schema() {
        let kind = ContentKind::Event;
        let invalid = |text: &str| match kind.validate_output(text) {
            Err(OutputError::Invalid(why)) => why,
            other => panic!("{text}: expected Invalid, got {other:?}"),
        };
        assert!(invalid(r#"["a", "b"]"#).contains("object"));
        assert!(invalid(r#""just a string""#).contains("object"));
        assert!(invalid(r#"{"announcementText": "A storm."}"#).contains("missing field `resolutionText`"));
        assert!(invalid(r#"{"unexpected": 1}"#).contains("missing field"));
        let why = invalid(r#"{"announcementText": "A storm.", "resolutionText": 5}"#);
        assert!(why.contains("`resolutionText` must be a string"), "{why}");
        let why = invalid(r#"{"announcementText": null, "resolutionText": "Calm."}"#);
        assert!(why.contains("`announcementText` must be a string"), "{why}");
        let why = invalid(r#"{"announcementText": " \n\t ", "resolutionText": "Calm."}"#);
        assert!(why.contains("`announcementText` is empty"), "{why}");

        let max = kind.max_len("resolutionText").unwrap();
        let at_cap = json!({"announcementText": "A storm.", "resolutionText": "é".repeat(max)}).to_string();
        assert_eq!(kind.validate_output(&at_cap).unwrap().value["resolutionText"], "é".repeat(max));
        let over = json!({"announcementText": "A storm.", "resolutionText": "é".repeat(max + 1)}).to_string();
        let why = invalid(&over);
        assert!(why.contains("`resolutionText` is too long"), "{why}");
        // The cap applies after trimming.
        let padded = json!({"announcementText": "A storm.", "resolutionText": format!("  {}  ", "a".repeat(max))});
        assert!(kind.validate_output(&padded.to_string()).is_ok());
        assert!(OutputError::Invalid("x".into()).to_string().starts_with("the model's JSON does not match the schema"));
    }

    #[test]
    fn nearly_right_answers_are_salvaged_within_their_caps() {
        let kind = ContentKind::Quest;
        let max = kind.max_len("hookText").unwrap();
        // A field 4 characters over its cap, with a sentence end inside it.
        let first = format!("{}.", "a".repeat(200));
        let over = format!("{first} {}", "b".repeat(max + 4 - first.len() - 1));
        assert_eq!(over.chars().count(), max + 4);
        let text = json!({"flavorText": "Mist.", "hookText": over}).to_string();
        let checked = kind.validate_output(&text).unwrap();
        assert!(checked.salvaged);
        assert_eq!(checked.value["hookText"], first);

        // Cut off inside the last field: closed, and that field cut at its last sentence end.
        let cut =
            "{\"flavorText\": \"Mist over the barrow.\", \"hookText\": \"Go now, before the bells toll again. Or ne";
        let checked = kind.validate_output(cut).unwrap();
        assert!(checked.salvaged);
        assert_eq!(checked.value["flavorText"], "Mist over the barrow.");
        assert_eq!(checked.value["hookText"], "Go now, before the bells toll again.");

        // Not salvageable: cut inside the first field, less than half of a field would survive,
        // or no sentence end to cut at.
        let refused = |text: &str| kind.validate_output(text).unwrap_err();
        assert!(matches!(refused("{\"flavorText\": \"Mist over the barrow. It"), OutputError::NotJson(_)));
        let cut_early = "{\"flavorText\": \"Mist.\", \"hookText\": \"Go. Before the bells toll again tonight";
        assert!(matches!(refused(cut_early), OutputError::NotJson(_)));
        let mostly_over = json!({"flavorText": "Mist.", "hookText": format!("Go. {}", "b".repeat(max))}).to_string();
        assert!(refused(&mostly_over).to_string().contains("too long"));
    }

    #[test]
    fn empty_fields_are_every_field_empty() {
        for kind in ContentKind::ALL {
            let fields = kind.empty_fields();
            let keys: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
            assert_eq!(keys, kind.field_names().iter().copied().collect());
            assert!(fields.values().all(|v| v == ""));
        }
    }

    #[test]
    fn fallback_is_deterministic_valid_and_varied() {
        for kind in ContentKind::ALL {
            let mut distinct = BTreeSet::new();
            for id in 0..1000u64 {
                let fields = kind.fallback_fields(id);
                assert_eq!(fields, kind.fallback_fields(id), "{kind:?} {id}");
                // The fallback passes the same checks as a model answer, unchanged.
                let checked = kind.validate_output(&Value::Object(fields.clone()).to_string()).unwrap();
                assert_eq!(checked.value, fields);
                assert!(!checked.salvaged);
                distinct.insert(fields[kind.field_names()[0]].as_str().unwrap().to_owned());
            }
            assert!(distinct.len() >= 5, "{kind:?}: only {} texts reached", distinct.len());
            // Large ids work too.
            assert_eq!(kind.fallback_fields(u64::MAX), kind.fallback_fields(u64::MAX));
        }
        // Consecutive ids spread: the first ten do not all share one text.
        let first: BTreeSet<String> =
            (0..10).map(|id| ContentKind::Quest.fallback_fields(id)["hookText"].to_string()).collect();
        assert!(first.len() > 1);
        // Same subject id, different kind: different fields entirely.
        assert_ne!(
            ContentKind::Quest.fallback_fields(1).keys().collect::<Vec<_>>(),
            ContentKind::Npc.fallback_fields(1).keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn fallback_texts_are_well_formed() {
        for table in [&QUEST_FALLBACKS, &EVENT_FALLBACKS, &NPC_FALLBACKS] {
            let firsts: BTreeSet<&str> = table.iter().map(|pair| pair[0]).collect();
            let seconds: BTreeSet<&str> = table.iter().map(|pair| pair[1]).collect();
            assert_eq!(firsts.len(), table.len(), "no duplicate texts");
            assert_eq!(seconds.len(), table.len(), "no duplicate texts");
            for text in table.iter().flatten() {
                assert_eq!(text.trim(), *text);
                assert!(!text.contains("  "), "line continuation left a double space: {text}");
                assert!(text.ends_with(['.', '?', '!']), "{text}");
            }
        }
    }
}
