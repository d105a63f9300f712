//! The identity settings (PROTOCOL §5 "Identity"): how players prove who they are (anonymous
//! nicknames, the studio's JWTs, or either), where the JWT keys come from, and the limits on new
//! anonymous players and on whom to believe about a client's address.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ipnet::IpNet;

use crate::core::rate_limit::Rate;
use crate::core::secret::Secret;

/// `LOREWIRE_AUTH`: which logins `session:start` (and REST) accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// A nickname starts a player; an opaque token resumes one.
    Anonymous,
    /// Only a JWT signed by the studio.
    Jwt,
    /// Either.
    Both,
}

impl AuthMode {
    pub fn accepts_jwt(self) -> bool {
        matches!(self, AuthMode::Jwt | AuthMode::Both)
    }
    pub fn accepts_anonymous(self) -> bool {
        matches!(self, AuthMode::Anonymous | AuthMode::Both)
    }
}

/// `LOREWIRE_SHARED_CONTENT_WRITERS`: who may regenerate a shared content item or change its
/// context once it exists (PROTOCOL §5 "Who shapes shared content").
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SharedWriters {
    /// Any player (anonymous play's behaviour).
    Players,
    /// Only the game server: the admin token, or a JWT with the server role.
    Server,
}

/// The identity flags, with their environment variables (README "Players and identity").
#[derive(Debug, Clone, Args)]
pub struct IdentitySettings {
    /// Logins accepted: anonymous (nickname), jwt (the studio's signed JWT) or both.
    #[arg(long, global = true, env = "LOREWIRE_AUTH", value_enum, default_value_t = AuthMode::Anonymous)]
    pub auth: AuthMode,
    /// Shared secret of HS256/HS384/HS512 JWTs.
    #[arg(long, global = true, env = "LOREWIRE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// RS256/ES256/EdDSA keys as a JWKS: an http(s):// URL or a file path.
    #[arg(long, global = true, env = "LOREWIRE_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// How often the JWKS is fetched again, in seconds (revoked keys drop out).
    #[arg(long, global = true, env = "LOREWIRE_JWT_JWKS_REFRESH_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub jwt_jwks_refresh_secs: u64,
    /// When set, a JWT's `iss` must be this.
    #[arg(long, global = true, env = "LOREWIRE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// When set, a JWT's `aud` must hold this.
    #[arg(long, global = true, env = "LOREWIRE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The claim holding the player's nickname (then `preferred_username`, then the frame's).
    #[arg(long, global = true, env = "LOREWIRE_JWT_NICKNAME_CLAIM", default_value = "name")]
    pub jwt_nickname_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, global = true, env = "LOREWIRE_JWT_LEEWAY_SECS", default_value_t = 30)]
    pub jwt_leeway_secs: u64,
    /// The claim whose value `server` marks the game server's own JWT.
    #[arg(long, global = true, env = "LOREWIRE_JWT_ROLE_CLAIM", default_value = "lorewire_role")]
    pub jwt_role_claim: String,
    /// New anonymous players per client address (every process together), as COUNT/WINDOW.
    #[arg(long, global = true, env = "LOREWIRE_NEW_PLAYERS_RATE", default_value = "60/1h")]
    pub new_players_rate: Rate,
    /// Comma list of CIDRs of the proxies whose forwarding headers name the client's address.
    #[arg(long, global = true, env = "LOREWIRE_TRUSTED_PROXIES", default_value = "", value_parser = parse_proxies)]
    pub trusted_proxies: TrustedProxies,
    /// Who may regenerate a shared content item or change its context: players or the game
    /// server only [default: server with jwt or both, players with anonymous].
    #[arg(long, global = true, env = "LOREWIRE_SHARED_CONTENT_WRITERS", value_enum)]
    pub shared_content_writers: Option<SharedWriters>,
    /// REST runs one player may leave queued or running at once.
    #[arg(long, global = true, env = "LOREWIRE_PLAYER_UNWATCHED_RUNS", default_value_t = 5)]
    pub player_unwatched_runs: u32,
}

/// Where the JWT keys of the asymmetric algorithms come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    Url(String),
    File(std::path::PathBuf),
}

impl JwksSource {
    pub fn parse(s: &str) -> JwksSource {
        if s.starts_with("http://") || s.starts_with("https://") {
            JwksSource::Url(s.to_owned())
        } else {
            JwksSource::File(s.strip_prefix("file://").unwrap_or(s).into())
        }
    }
}

/// The proxies trusted to say who the client is (`LOREWIRE_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&addr))
    }
}

/// `LOREWIRE_TRUSTED_PROXIES`: CIDRs or single addresses, comma separated.
fn parse_proxies(s: &str) -> Result<TrustedProxies, String> {
    let mut nets = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let net = match part.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => part
                .parse::<IpAddr>()
                .map(IpNet::from)
                .map_err(|_| format!("`{part}` is neither a CIDR (10.0.0.0/8) nor an address"))?,
        };
        nets.push(net);
    }
    Ok(TrustedProxies(nets))
}

/// The resolved identity settings.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub mode: AuthMode,
    pub jwt_secret: Option<Secret>,
    pub jwks: Option<JwksSource>,
    pub jwks_refresh: Duration,
    /// At most one fetch of the JWKS for an unknown `kid` per this long.
    pub jwks_unknown_kid_every: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub nickname_claim: String,
    pub leeway: Duration,
    pub role_claim: String,
    pub new_players_rate: Rate,
    pub trusted_proxies: TrustedProxies,
    /// As set; [`IdentityConfig::shared_writers`] resolves the default from the login mode.
    pub shared_content_writers: Option<SharedWriters>,
    /// `LOREWIRE_PLAYER_UNWATCHED_RUNS`: REST runs one player may leave queued or running at once.
    pub player_unwatched_runs: u32,
}

/// Why the identity settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentitySetupError {
    #[error(
        "LOREWIRE_AUTH={0} needs the JWT keys: set LOREWIRE_JWT_SECRET (HS256/384/512) or LOREWIRE_JWT_JWKS_URL \
         (RS256, ES256, EdDSA)"
    )]
    NoKeys(&'static str),
}

impl IdentitySettings {
    pub fn into_config(self) -> IdentityConfig {
        let filled = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        IdentityConfig {
            mode: self.auth,
            jwt_secret: self.jwt_secret.filter(|s| !s.is_empty()),
            jwks: filled(self.jwt_jwks_url).map(|s| JwksSource::parse(&s)),
            jwks_refresh: Duration::from_secs(self.jwt_jwks_refresh_secs),
            jwks_unknown_kid_every: Duration::from_secs(10),
            issuer: filled(self.jwt_issuer),
            audience: filled(self.jwt_audience),
            nickname_claim: self.jwt_nickname_claim,
            leeway: Duration::from_secs(self.jwt_leeway_secs),
            role_claim: self.jwt_role_claim,
            new_players_rate: self.new_players_rate,
            trusted_proxies: self.trusted_proxies,
            shared_content_writers: self.shared_content_writers,
            player_unwatched_runs: self.player_unwatched_runs,
        }
    }
}

impl IdentityConfig {
    /// Who may change a shared item: as set, else the game server when JWTs are accepted and
    /// any player with anonymous logins only.
    pub fn shared_writers(&self) -> SharedWriters {
        self.shared_content_writers.unwrap_or(match self.mode {
            AuthMode::Anonymous => SharedWriters::Players,
            AuthMode::Jwt | AuthMode::Both => SharedWriters::Server,
        })
    }

    /// JWT logins need keys to check them with.
    pub fn check(&self) -> Result<(), IdentitySetupError> {
        if self.mode.accepts_jwt() && self.jwt_secret.is_none() && self.jwks.is_none() {
            let mode = if self.mode == AuthMode::Jwt { "jwt" } else { "both" };
            return Err(IdentitySetupError::NoKeys(mode));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_take_cidrs_and_addresses() {
        let p = parse_proxies("10.0.0.0/8, 192.168.1.7,::1").unwrap();
        assert!(p.contains("10.2.3.4".parse().unwrap()));
        assert!(p.contains("192.168.1.7".parse().unwrap()));
        assert!(!p.contains("192.168.1.8".parse().unwrap()));
        assert!(p.contains("::1".parse().unwrap()));
        assert_eq!(parse_proxies("").unwrap(), TrustedProxies::default());
        assert!(parse_proxies("10.0.0.0/33").unwrap_err().contains("10.0.0.0/33"));
    }

    #[test]
    fn the_game_server_writes_shared_content_by_default_once_jwts_are_on() {
        let mut config = crate::core::config::Config::with_database("x.db").identity;
        assert_eq!(config.shared_writers(), SharedWriters::Players);
        for mode in [AuthMode::Jwt, AuthMode::Both] {
            config.mode = mode;
            assert_eq!(config.shared_writers(), SharedWriters::Server, "{mode:?}");
        }
        config.shared_content_writers = Some(SharedWriters::Players);
        assert_eq!(config.shared_writers(), SharedWriters::Players);
        config.mode = AuthMode::Anonymous;
        config.shared_content_writers = Some(SharedWriters::Server);
        assert_eq!(config.shared_writers(), SharedWriters::Server);
    }

    #[test]
    fn jwks_source_is_a_url_or_a_file() {
        assert_eq!(JwksSource::parse("https://id.example/jwks"), JwksSource::Url("https://id.example/jwks".into()));
        assert_eq!(JwksSource::parse("/etc/keys.json"), JwksSource::File("/etc/keys.json".into()));
        assert_eq!(JwksSource::parse("file:///etc/keys.json"), JwksSource::File("/etc/keys.json".into()));
    }
}
