//! The TypeScript types of the wire, `static/lorewire.wire.d.ts`, rendered from the Rust types
//! with ts-rs and compared with the checked-in file, so the client's types cannot drift from the
//! server's. Test-only: ts-rs is a dev-dependency and the derives are `cfg_attr(test, ...)`, so
//! the binary never carries them. Rewrite the file after changing a wire type with
//! `LOREWIRE_WRITE_TYPES=1 cargo nextest run -E 'test(/wire_types/)'`.

use ts_rs::{Config, TS};

use super::content::{Content, ContentKind, ContentScope, FallbackReason};
use super::limits::Level;
use super::lobby::{Message, Mood, PresenceLeave, PresenceUser};
use super::players::Variant;
use super::runs::{Action, RunErrorCode, RunFailure, RunStatus, RunView, Usage};
use super::status::Status;
use super::wire::{
    ClientFrame, ContentRef, ContentRequest, ErrorCode, ErrorFrame, GenerateAbort, GenerateStart, MessageSend,
    PresenceList, ServerFrame, SessionRefresh, SessionStart, Typed,
};

/// The checked-in file, relative to the crate root.
const FILE: &str = "static/lorewire.wire.d.ts";

const HEADER: &str = "\
// lorewire.wire.d.ts: the types of every value and frame on lorewire's wire, GENERATED from the
// Rust types (src/domain/wire.rs and the types it uses) by ts-rs; do not edit. After changing a
// wire type, rewrite it with
//   LOREWIRE_WRITE_TYPES=1 cargo nextest run -E 'test(/wire_types/)'
// lorewire.d.ts (the client's API) imports and re-exports these; both are served under /static/.
";

fn decl<T: TS + ?Sized>(cfg: &Config) -> String {
    format!("{}export {}\n", T::docs().unwrap_or_default(), layout(&T::decl(cfg)))
}

/// Widest line `layout` keeps an object on.
const WIDTH: usize = 100;

enum Tok {
    Open,
    Close,
    Comma,
    Bar,
    Doc(String),
    Text(String),
}

enum Node {
    Text(String),
    Bar,
    Doc(String),
    /// An object's fields, each a run of nodes.
    Object(Vec<Vec<Node>>),
}

/// ts-rs's one-line declaration laid out for reading: a long union one member a line, a long
/// or documented object one field a line. Only whitespace changes.
fn layout(decl: &str) -> String {
    let (head, body) = decl.split_once(" = ").expect("a type declaration");
    let nodes = parse(&mut tokens(body).into_iter().peekable());
    let flat = format!("{head} = {}", render(&nodes, 0, false));
    if "export ".len() + flat.len() <= WIDTH && !flat.contains('\n') {
        return flat;
    }
    let union = nodes.iter().any(|n| matches!(n, Node::Bar));
    if union {
        format!("{head} =\n  | {}", render(&nodes, 2, true))
    } else {
        format!("{head} = {}", render(&nodes, 0, true))
    }
}

fn tokens(s: &str) -> Vec<Tok> {
    let chars: Vec<char> = s.chars().collect();
    let (mut out, mut text, mut angle, mut i) = (Vec::new(), String::new(), 0i32, 0);
    let flush = |text: &mut String, out: &mut Vec<Tok>| {
        if !text.trim().is_empty() {
            out.push(Tok::Text(text.trim().to_owned()));
        }
        text.clear();
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '`' => {
                text.push(c);
                i += 1;
                while chars[i] != c {
                    text.push(chars[i]);
                    i += 1;
                }
                text.push(c);
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                flush(&mut text, &mut out);
                let rest: String = chars[i..].iter().collect();
                let end = rest.find("*/").expect("a closed doc comment") + 2;
                out.push(Tok::Doc(rest[..end].to_owned()));
                i += rest[..end].chars().count() - 1;
            }
            '<' | '>' => {
                angle += if c == '<' { 1 } else { -1 };
                text.push(c);
            }
            '{' | '}' | ',' | '|' if c == '{' || c == '}' || angle == 0 => {
                flush(&mut text, &mut out);
                out.push(match c {
                    '{' => Tok::Open,
                    '}' => Tok::Close,
                    ',' => Tok::Comma,
                    _ => Tok::Bar,
                });
            }
            _ => text.push(c),
        }
        i += 1;
    }
    flush(&mut text, &mut out);
    out
}

fn parse(toks: &mut std::iter::Peekable<std::vec::IntoIter<Tok>>) -> Vec<Node> {
    let mut nodes = Vec::new();
    while let Some(tok) = toks.next_if(|t| !matches!(t, Tok::Close | Tok::Comma)) {
        nodes.push(match tok {
            Tok::Text(t) => Node::Text(t),
            Tok::Bar => Node::Bar,
            Tok::Doc(d) => Node::Doc(d),
            _ => {
                let mut fields = Vec::new();
                loop {
                    let field = parse(toks);
                    if !field.is_empty() {
                        fields.push(field);
                    }
                    if let Some(Tok::Close) | None = toks.next() {
                        break;
                    }
                }
                Node::Object(fields)
            }
        });
    }
    nodes
}

fn render(nodes: &[Node], indent: usize, wide: bool) -> String {
    let mut out = String::new();
    for node in nodes {
        let piece = match node {
            Node::Text(t) => t.clone(),
            Node::Bar if wide => format!("\n{}|", " ".repeat(indent)),
            Node::Bar => "|".to_owned(),
            Node::Doc(d) => doc(d, indent),
            Node::Object(fields) => object(fields, indent, wide),
        };
        if !(out.is_empty() || out.ends_with(' ') || piece.starts_with(';') || piece.starts_with('\n')) {
            out.push(' ');
        }
        out.push_str(&piece);
    }
    out
}

fn object(fields: &[Vec<Node>], indent: usize, wide: bool) -> String {
    let flat: Vec<String> = fields.iter().map(|f| render(f, indent + 2, false)).collect();
    let one_line = format!("{{ {} }}", flat.join(", "));
    let documented = fields.iter().flatten().any(|n| matches!(n, Node::Doc(_)));
    // Wide at the top means the declaration did not fit on its line; a union member starts at `  | `.
    if !documented && (!wide || (indent > 0 && indent + 2 + one_line.len() <= WIDTH)) {
        return one_line;
    }
    let pad = " ".repeat(indent + 2);
    // Nested objects and unions inside a field stay on one line.
    let lines: Vec<String> = fields.iter().map(|f| format!("{pad}{},\n", render(f, indent + 2, false))).collect();
    format!("{{\n{}{}}}", lines.concat(), " ".repeat(indent))
}

/// A doc comment re-indented (its first line goes where the caller stands), ending with a
/// newline and the indent of what it documents.
fn doc(d: &str, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let lines: Vec<&str> = d.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    format!("{}\n{pad}", lines.join(&format!("\n{pad} ")))
}

/// The item's fields per kind, from the names the server fills in (`ContentKind::field_names`).
fn content_fields() -> String {
    let kinds: Vec<String> = ContentKind::ALL
        .iter()
        .map(|kind| {
            let fields: Vec<String> = kind.field_names().iter().map(|f| format!("{f}: string")).collect();
            format!("  {}: {{ {} }};\n", kind.as_str(), fields.join("; "))
        })
        .collect();
    format!(
        "/** The fields of each kind (all strings, empty while pending). */\nexport interface ContentFields {{\n{}}}\n",
        kinds.concat()
    )
}

/// Refinements ts-rs cannot derive: the names Rust gives `Status` by use, and an item whose
/// `fields` follow its `kind`.
const REFINEMENTS: &str = "\
export type ContentStatus = Status;
export type MoodStatus = Status;

/** A content item, identified by `(kind, subject_id)` (and its player when `scope` is `player`); `fields` follow its kind. */
export type Content<K extends ContentKind = ContentKind> = {
  [P in K]: Omit<ContentItem, \"kind\" | \"fields\"> & { kind: P; fields: ContentFields[P] };
}[K];
";

fn generate() -> String {
    let cfg = Config::new().with_large_int("number");
    let parts = [
        HEADER.to_owned(),
        decl::<ContentKind>(&cfg),
        decl::<ContentScope>(&cfg),
        decl::<Status>(&cfg),
        decl::<FallbackReason>(&cfg),
        decl::<Mood>(&cfg),
        decl::<Variant>(&cfg),
        decl::<Action>(&cfg),
        decl::<RunStatus>(&cfg),
        decl::<RunErrorCode>(&cfg),
        decl::<ErrorCode>(&cfg),
        decl::<Level>(&cfg),
        content_fields(),
        decl::<Content>(&cfg),
        REFINEMENTS.to_owned(),
        decl::<Message>(&cfg),
        decl::<PresenceUser>(&cfg),
        decl::<PresenceLeave>(&cfg),
        decl::<Usage>(&cfg),
        decl::<RunFailure>(&cfg),
        decl::<RunView>(&cfg),
        decl::<SessionStart>(&cfg),
        decl::<SessionRefresh>(&cfg),
        decl::<ContentRequest>(&cfg),
        decl::<ContentRef>(&cfg),
        decl::<GenerateStart>(&cfg),
        decl::<GenerateAbort>(&cfg),
        decl::<MessageSend>(&cfg),
        decl::<PresenceList>(&cfg),
        decl::<ClientFrame>(&cfg),
        decl::<Typed>(&cfg),
        decl::<ErrorFrame>(&cfg),
        decl::<ServerFrame>(&cfg),
    ];
    parts.join("\n")
}

#[test]
fn the_checked_in_client_types_match_the_rust_wire_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FILE);
    let rendered = generate();
    if std::env::var_os("LOREWIRE_WRITE_TYPES").is_some_and(|v| v == "1") {
        std::fs::write(&path, &rendered).expect("write the generated types");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    let first = checked_in.lines().zip(rendered.lines()).position(|(a, b)| a != b);
    let line = first.unwrap_or(checked_in.lines().count().min(rendered.lines().count()));
    assert!(
        checked_in == rendered,
        "{FILE} is not what the Rust wire types render (a wire type changed?), from line {}:\n  \
         file:     {:?}\n  rendered: {:?}\nrewrite it with\n  \
         LOREWIRE_WRITE_TYPES=1 cargo nextest run -E 'test(/wire_types/)'\nand commit it",
        line + 1,
        checked_in.lines().nth(line).unwrap_or("(end)"),
        rendered.lines().nth(line).unwrap_or("(end)"),
    );
}

/// The strings the server writes (`Display`, `as_str`) are the members ts-rs renders, one for one.
#[test]
fn every_code_the_server_writes_is_a_member_of_its_generated_union() {
    fn check(decl: String, written: &[String]) {
        let members = decl.matches(" | ").count() + 1;
        assert_eq!(members, written.len(), "{decl}: one member per variant");
        for code in written {
            let member =
                if code.starts_with("api_error_") { "`api_error_${number}`".to_owned() } else { format!("\"{code}\"") };
            assert!(decl.contains(&member), "{decl} lacks {member}");
        }
    }
    let cfg = Config::new();
    use FallbackReason as F;
    let reasons = [
        F::NoConfig,
        F::CircuitOpen,
        F::RateLimited,
        F::ApiError(503),
        F::NetworkError,
        F::Timeout,
        F::InvalidJson,
        F::InvalidResponse,
        F::Moderated,
        F::BudgetExceeded,
    ];
    check(FallbackReason::decl(&cfg), &reasons.map(|r| r.to_string()));
    use RunErrorCode as R;
    let codes = [
        R::NoConfig,
        R::Aborted,
        R::BudgetExceeded,
        R::RateLimited,
        R::ApiError(429),
        R::NetworkError,
        R::Timeout,
        R::InvalidResponse,
        R::StreamCut,
        R::StreamError,
        R::Internal,
        R::Moderated,
    ];
    check(RunErrorCode::decl(&cfg), &codes.map(|c| c.to_string()));
    use ErrorCode as E;
    let errors = [
        E::InvalidPayload,
        E::RateLimited,
        E::Unauthorized,
        E::NotFound,
        E::BudgetExceeded,
        E::Overloaded,
        E::Moderated,
        E::Unavailable,
    ];
    check(ErrorCode::decl(&cfg), &errors.map(|e| e.as_str().to_owned()));
}
