//! Identity as rules (PROTOCOL §5): what a verified JWT says about its player, why a JWT is
//! refused (each reason a sentence a client developer can act on, never the token itself), the
//! time checks with their leeway, and which address a request comes from behind trusted
//! proxies. Pure: the signature check and the keys are `players::jwt`.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// A JWT longer than this is refused unread.
pub const MAX_JWT_BYTES: usize = 8192;

/// What a verified JWT says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `iss`, empty when the token has none: with `sub`, the player's key.
    pub issuer: String,
    pub subject: String,
    /// The nickname the claims carry, if any (not yet checked against the nickname rules).
    pub nickname: Option<String>,
    /// The game server's own token (its role claim is `server`).
    pub server: bool,
    pub expires_at: DateTime<Utc>,
}

/// Why a JWT is refused. The message goes to the client as `error:unauthorized`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtRefusal {
    #[error("JWT login is not enabled on this server")]
    NotEnabled,
    #[error("the JWT is malformed: {0}")]
    Malformed(String),
    #[error("the JWT is longer than {MAX_JWT_BYTES} bytes")]
    TooLong,
    #[error("the JWT's algorithm {0} is not accepted here")]
    Algorithm(String),
    #[error("the JWT's algorithm does not fit the key it names")]
    KeyMismatch,
    #[error("the JWT names no `kid`, and the key set has more than one key for its algorithm")]
    NoKid,
    #[error("the JWT's key id `{0}` is unknown")]
    UnknownKid(String),
    #[error("the JWT's keys could not be loaded; try again later")]
    KeysUnavailable,
    #[error("the JWT's signature is not valid")]
    BadSignature,
    #[error("the JWT has expired")]
    Expired,
    #[error("the JWT is not valid yet (`nbf` is in the future)")]
    NotYetValid,
    #[error("the JWT has no `exp`")]
    NoExpiry,
    #[error("the JWT's issuer (`iss`) is not the one this server accepts")]
    WrongIssuer,
    #[error("the JWT's audience (`aud`) is not this server's")]
    WrongAudience,
    #[error("the JWT has no `sub`")]
    NoSubject,
    #[error("the JWT is for another player than this session's")]
    OtherPlayer,
}

/// The claims the verifier reads, after the signature, issuer and audience checks passed.
/// Checks `exp` and `nbf` against `now` with `leeway` (the process's clock, so a test's
/// manual clock drives them).
pub fn read_claims(
    claims: &Map<String, Value>,
    now: DateTime<Utc>,
    leeway: Duration,
    nickname_claim: &str,
    role_claim: &str,
) -> Result<Verified, JwtRefusal> {
    let leeway = chrono::Duration::from_std(leeway).unwrap_or(chrono::Duration::zero());
    let time = |name: &str| -> Result<Option<DateTime<Utc>>, JwtRefusal> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .and_then(|secs| DateTime::from_timestamp(secs.floor() as i64, 0))
                .map(Some)
                .ok_or_else(|| JwtRefusal::Malformed(format!("`{name}` is not a number of seconds"))),
        }
    };
    let expires_at = time("exp")?.ok_or(JwtRefusal::NoExpiry)?;
    if expires_at + leeway < now {
        return Err(JwtRefusal::Expired);
    }
    if time("nbf")?.is_some_and(|nbf| nbf - leeway > now) {
        return Err(JwtRefusal::NotYetValid);
    }
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let subject = text("sub").filter(|s| !s.is_empty()).ok_or(JwtRefusal::NoSubject)?;
    Ok(Verified {
        issuer: text("iss").unwrap_or_default(),
        subject,
        nickname: text(nickname_claim).or_else(|| text("preferred_username")),
        server: text(role_claim).as_deref() == Some("server"),
        expires_at,
    })
}

/// Whether a bearer token is a JWT (three base64url parts) rather than an opaque token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.starts_with("eyJ")
}

/// The client's address: the TCP peer's, unless the peer is a trusted proxy; then the
/// right-most address of `Forwarded` (else `X-Forwarded-For`) that is not itself a trusted
/// proxy. A hop that names no usable address ends the walk at the proxy that reported it.
pub fn client_address(
    peer: IpAddr,
    trusted: impl Fn(IpAddr) -> bool,
    forwarded: Option<&str>,
    x_forwarded_for: Option<&str>,
) -> IpAddr {
    if !trusted(peer) {
        return peer;
    }
    let hops: Vec<Option<IpAddr>> = match (forwarded, x_forwarded_for) {
        (Some(f), _) if !f.trim().is_empty() => forwarded_for(f),
        (_, Some(x)) => x.split(',').map(|a| parse_node(a.trim())).collect(),
        _ => Vec::new(),
    };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            Some(addr) if trusted(addr) => client = addr,
            Some(addr) => return addr,
            None => return client,
        }
    }
    client
}

/// The `for=` values of a `Forwarded` header (RFC 7239), first hop first.
fn forwarded_for(header: &str) -> Vec<Option<IpAddr>> {
    header
        .split(',')
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then(|| parse_node(value.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(addr) = node.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']').and_then(|(addr, _)| addr.parse().ok());
    }
    node.rsplit_once(':').and_then(|(addr, port)| port.parse::<u16>().ok().and(addr.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn claims_name_the_player_and_its_expiry() {
        let c = claims(json!({"iss": "studio", "sub": "p-1", "exp": 2000, "name": "Ada", "lorewire_role": "server"}));
        let v = read_claims(&c, at(1000), Duration::ZERO, "name", "lorewire_role").unwrap();
        assert_eq!(
            v,
            Verified {
                issuer: "studio".into(),
                subject: "p-1".into(),
                nickname: Some("Ada".into()),
                server: true,
                expires_at: at(2000)
            }
        );
        let c = claims(json!({"sub": "p-1", "exp": 2000, "preferred_username": "Bo"}));
        let v = read_claims(&c, at(1000), Duration::ZERO, "name", "lorewire_role").unwrap();
        assert_eq!((v.issuer.as_str(), v.nickname.as_deref(), v.server), ("", Some("Bo"), false));
    }

    #[test]
    fn times_hold_within_the_leeway_only() {
        let read = |v: Value, now: i64| read_claims(&claims(v), at(now), Duration::from_secs(30), "name", "r");
        assert!(read(json!({"sub": "a", "exp": 1000}), 1030).is_ok());
        assert_eq!(read(json!({"sub": "a", "exp": 1000}), 1031), Err(JwtRefusal::Expired));
        assert!(read(json!({"sub": "a", "exp": 5000, "nbf": 1030}), 1000).is_ok());
        assert_eq!(read(json!({"sub": "a", "exp": 5000, "nbf": 1031}), 1000), Err(JwtRefusal::NotYetValid));
        assert_eq!(read(json!({"sub": "a"}), 1000), Err(JwtRefusal::NoExpiry));
        assert_eq!(read(json!({"exp": 5000}), 1000), Err(JwtRefusal::NoSubject));
        assert_eq!(read(json!({"sub": "", "exp": 5000}), 1000), Err(JwtRefusal::NoSubject));
        assert!(matches!(read(json!({"sub": "a", "exp": "soon"}), 1000), Err(JwtRefusal::Malformed(_))));
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_says_otherwise() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let trusted = |a: IpAddr| a.to_string().starts_with("10.");
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        // An untrusted peer's headers are ignored.
        assert_eq!(client_address(client, trusted, None, Some("198.51.100.1")), client);
        // The right-most untrusted address of X-Forwarded-For; a forged left part is ignored.
        assert_eq!(client_address(proxy, trusted, None, Some("198.51.100.1, 203.0.113.9, 10.0.0.2")), client);
        // Forwarded wins over X-Forwarded-For and takes ports, quotes and brackets.
        let forwarded = r#"for=198.51.100.1;proto=https, for="[2001:db8::7]:4711""#;
        assert_eq!(
            client_address(proxy, trusted, Some(forwarded), Some("203.0.113.9")),
            "2001:db8::7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(proxy, trusted, Some("for=203.0.113.9:80"), None), client);
        // Without headers, or with only trusted hops, the last proxy is the client.
        assert_eq!(client_address(proxy, trusted, None, None), proxy);
        assert_eq!(client_address(proxy, trusted, None, Some("10.0.0.3")), "10.0.0.3".parse::<IpAddr>().unwrap());
        // An obfuscated hop stops the walk at the proxy that reported it.
        assert_eq!(client_address(proxy, trusted, Some("for=203.0.113.9, for=_hidden"), None), proxy);
    }

    #[test]
    fn jwts_are_told_from_opaque_tokens() {
        assert!(looks_like_jwt("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"));
        assert!(!looks_like_jwt("0123456789abcdef"));
        assert!(!looks_like_jwt("eyJ.only-two"));
    }
}
