//! Players over the store (PROTOCOL §5): who a session or a REST call is. An anonymous player
//! starts with a nickname (at most `LOREWIRE_NEW_PLAYERS_RATE` new ones per client address,
//! every process together) and resumes with its opaque token; a player of the studio's login
//! presents its JWT and is keyed by the token's (`iss`, `sub`). The rules (tokens, nicknames,
//! claims, refusals) are `domain::players` and `domain::identity`; this file never builds frames.

pub mod jwks;
pub mod jwt;
pub mod remote;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::backplane::Backplane;
use crate::core::clock::SharedClock;
use crate::core::identity::{AuthMode, IdentityConfig};
use crate::core::metrics::Metrics;
use crate::core::rate_limit::RateLimiter;
use crate::domain::identity::{looks_like_jwt, JwtRefusal, Verified};
use crate::domain::moderation::Surface;
use crate::domain::players::{hash_token, new_token, validate_nickname};
use crate::moderation::Moderation;
use crate::store::usage;
use crate::store::users::{self, UserRow};
use crate::store::{Store, StoreError, StoreResult};

/// A started session: the user, and the token that resumes it (anonymous players only).
#[derive(Debug, Clone)]
pub struct Started {
    pub user: UserRow,
    pub token: Option<String>,
    pub resumed: bool,
    /// What the JWT said (players of the studio's login only).
    pub jwt: Option<Verified>,
}

/// Why a session could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartRefused {
    /// The login is not one this server accepts, or its JWT is refused (the message says why).
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    InvalidNickname(String),
    /// Too many new players from one address.
    #[error("{0}")]
    RateLimited(String),
    /// The admin blocked this player (a session start gets `error:unauthorized`, REST 403).
    #[error("this player is blocked")]
    Blocked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<JwtRefusal> for StartRefused {
    fn from(r: JwtRefusal) -> Self {
        StartRefused::Unauthorized(r.to_string())
    }
}

/// Who may play, and how they prove it.
#[derive(Clone)]
pub struct Players {
    store: Store,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    backplane: Arc<dyn Backplane>,
    config: IdentityConfig,
    verifier: Arc<jwt::Verifier>,
    /// New anonymous players per client address, when the backplane keeps no shared window.
    new_players: Arc<Mutex<RateLimiter<IpAddr>>>,
    /// Nicknames are checked like chat lines.
    moderation: Option<Moderation>,
}

impl Players {
    /// Starts the JWT verifier (and the JWKS loads) on the current actix arbiter.
    pub fn start(
        store: Store,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        backplane: Arc<dyn Backplane>,
        config: &IdentityConfig,
    ) -> Players {
        Players {
            store,
            clock,
            metrics,
            backplane,
            config: config.clone(),
            verifier: Arc::new(jwt::Verifier::start(config)),
            new_players: Arc::new(Mutex::new(RateLimiter::new(config.new_players_rate))),
            moderation: None,
        }
    }

    /// Checks every nickname with `moderation` (a flagged one is refused, "nickname not allowed").
    pub fn with_moderation(mut self, moderation: Moderation) -> Players {
        self.moderation = Some(moderation);
        self
    }

    /// Whether moderation checks nicknames (then a known player's flagged nickname is its flag).
    fn checks_nicknames(&self) -> bool {
        self.moderation.as_ref().is_some_and(Moderation::is_on)
    }

    /// A nickname by the rules, and not flagged by moderation (a flag is `user_id`'s, the player
    /// already known to start, so it counts towards `LOREWIRE_MODERATION_BLOCK_AFTER`).
    async fn nickname(&self, raw: &str, user_id: Option<i64>) -> Result<String, StartRefused> {
        let nickname = validate_nickname(raw).map_err(|e| StartRefused::InvalidNickname(e.to_string()))?;
        if let Some(moderation) = &self.moderation {
            if moderation.check(Surface::Nickname, user_id, &nickname).await.flagged {
                return Err(StartRefused::InvalidNickname("nickname not allowed".into()));
            }
        }
        Ok(nickname)
    }

    pub fn mode(&self) -> AuthMode {
        self.config.mode
    }

    /// An anonymous start: the player holding `token`, or a new one named `nickname` if the
    /// client's address may still create one. `watch` is told the player's id once it is known
    /// and before its blocked flag is read (see [`Players::start_jwt`]).
    pub async fn start_anonymous(
        &self,
        nickname: &str,
        token: Option<String>,
        client: IpAddr,
        watch: impl FnOnce(i64),
    ) -> Result<Started, StartRefused> {
        if !self.config.mode.accepts_anonymous() {
            return Err(StartRefused::Unauthorized(
                "this server accepts only the studio's login: send session:start with `jwt`".into(),
            ));
        }
        let presented = token.filter(|t| !t.is_empty() && t.len() <= 256);
        let author = match &presented {
            Some(token) if self.checks_nicknames() => {
                let hash = hash_token(token);
                self.store.run(move |conn| users::find_by_token_hash(conn, &hash)).await?.map(|u| u.id)
            }
            _ => None,
        };
        let nickname = self.nickname(nickname, author).await?;
        let now = self.clock.now_naive();
        if let Some(token) = presented {
            let (hash, name) = (hash_token(&token), nickname.clone());
            if let Some(user) = self.store.write(move |conn| users::resume(conn, &hash, &name, now)).await? {
                watch(user.id);
                self.refuse_blocked(user.id).await?;
                return Ok(Started { user, token: Some(token), resumed: true, jwt: None });
            }
        }
        self.admit_new_player(client).await?;
        let token = new_token();
        let hash = hash_token(&token);
        let (user, _) = self.store.write(move |conn| users::start_session(conn, None, &hash, &nickname, now)).await?;
        watch(user.id);
        Ok(Started { user, token: Some(token), resumed: false, jwt: None })
    }

    /// A start with the studio's JWT: its player, created at its first login. The nickname is
    /// the token's (`LOREWIRE_JWT_NICKNAME_CLAIM`, then `preferred_username`), else the frame's.
    ///
    /// `watch` is told the player's id once it is known and before its blocked flag is read: a
    /// session subscribes there to its player's close, so a block that commits after the read
    /// (which the read cannot see) still closes it.
    pub async fn start_jwt(
        &self,
        jwt: &str,
        nickname: Option<&str>,
        watch: impl FnOnce(i64),
    ) -> Result<Started, StartRefused> {
        let verified = self.verify(jwt).await?;
        let (chosen, rename) = match (verified.nickname.as_deref(), nickname) {
            (Some(claimed), _) => (claimed, true),
            (None, Some(given)) => (given, true),
            (None, None) => ("player", false),
        };
        let (issuer, subject) = (verified.issuer.clone(), verified.subject.clone());
        let author = if self.checks_nicknames() {
            let (issuer, subject) = (issuer.clone(), subject.clone());
            self.store.run(move |conn| users::find_external(conn, &issuer, &subject)).await?.map(|u| u.id)
        } else {
            None
        };
        let nickname = self.nickname(chosen, author).await?;
        let unused = hash_token(&new_token());
        let now = self.clock.now_naive();
        let (user, resumed) = self
            .store
            .write(move |conn| users::start_external(conn, &issuer, &subject, &nickname, rename, &unused, now))
            .await?;
        watch(user.id);
        self.refuse_blocked(user.id).await?;
        Ok(Started { user, token: None, resumed, jwt: Some(verified) })
    }

    /// Checks a JWT (for a start, a refresh or a REST call).
    pub async fn verify(&self, jwt: &str) -> Result<Verified, JwtRefusal> {
        let verified = self.verifier.verify(jwt, self.clock.now()).await;
        if let Err(refusal) = &verified {
            self.metrics.jwt_refused.inc();
            tracing::info!(reason = %refusal, "a JWT was refused");
        }
        verified
    }

    /// The player a REST call's bearer token belongs to: a JWT (its player must have started a
    /// session once, or is created now) or an opaque token, as the login mode allows.
    pub async fn authenticate(&self, bearer: &str) -> Result<Option<UserRow>, StartRefused> {
        if looks_like_jwt(bearer) && self.config.mode.accepts_jwt() {
            let verified = self.verify(bearer).await?;
            let (issuer, subject) = (verified.issuer, verified.subject);
            let known = self.store.run(move |conn| users::find_external(conn, &issuer, &subject)).await?;
            return match known {
                Some(user) => Ok(Some(self.touched(user).await?)),
                None => Ok(Some(self.start_jwt(bearer, None, |_| {}).await?.user)),
            };
        }
        if !self.config.mode.accepts_anonymous() {
            return Err(StartRefused::Unauthorized("send the studio's JWT as Authorization: Bearer <JWT>".into()));
        }
        if bearer.is_empty() || bearer.len() > 256 {
            return Ok(None);
        }
        let hash = hash_token(bearer);
        match self.store.run(move |conn| users::find_by_token_hash(conn, &hash)).await? {
            Some(user) => Ok(Some(self.touched(user).await?)),
            None => Ok(None),
        }
    }

    /// [`StartRefused::Blocked`] when the admin blocked `user_id`.
    async fn refuse_blocked(&self, user_id: i64) -> Result<(), StartRefused> {
        if self.store.run(move |conn| usage::is_blocked(conn, user_id)).await? {
            tracing::info!(user = user_id, "a blocked player was refused");
            return Err(StartRefused::Blocked);
        }
        Ok(())
    }

    async fn touched(&self, user: UserRow) -> Result<UserRow, StartRefused> {
        self.refuse_blocked(user.id).await?;
        let now = self.clock.now_naive();
        if needs_touch(user.last_seen_at, now) {
            let id = user.id;
            self.store.write(move |conn| users::touch(conn, id, now)).await?;
        }
        Ok(user)
    }

    /// One more new anonymous player from `client`, under `LOREWIRE_NEW_PLAYERS_RATE` kept
    /// for every process together (or by this process alone when the backplane cannot).
    async fn admit_new_player(&self, client: IpAddr) -> Result<(), StartRefused> {
        let rate = self.config.new_players_rate;
        let shared = self.backplane.admit(format!("new_players:{client}"), rate.count, rate.per).await;
        let admitted = match shared {
            Some(result) => result,
            None => self.new_players.lock().unwrap_or_else(|e| e.into_inner()).check(client, Instant::now()),
        };
        admitted.map_err(|wait| {
            self.metrics.new_players_refused.inc();
            tracing::info!(%client, "a new anonymous player was refused: too many from this address");
            StartRefused::RateLimited(format!(
                "too many new players from your address (at most {rate}); try again in {} s or resume with your token",
                wait.as_secs().max(1)
            ))
        })
    }

    /// When a JWT session must end unless refreshed: its expiry plus the leeway.
    pub fn session_deadline(&self, expires_at: DateTime<Utc>) -> DateTime<Utc> {
        expires_at + chrono::Duration::from_std(self.config.leeway).unwrap_or(chrono::Duration::zero())
    }
}

/// Marks a connected user as seen now: a session calls it when a new UTC day begins while it is
/// open (so retention counts a player who never disconnects) and when it closes.
pub async fn seen(store: &Store, user_id: i64, now: chrono::NaiveDateTime) -> StoreResult<()> {
    store.write(move |conn| users::touch(conn, user_id, now)).await
}

/// Seen-times are kept to the minute (and every new UTC day), so reads stay reads.
fn needs_touch(last_seen: chrono::NaiveDateTime, now: chrono::NaiveDateTime) -> bool {
    now.date() != last_seen.date() || now - last_seen > chrono::Duration::seconds(60)
}
