//! The studio's public keys (a JWKS) for RS256, ES256 and EdDSA JWTs: loaded from a URL or a
//! file at start, again every `LOREWIRE_JWT_JWKS_REFRESH_SECS` (a revoked key drops out), and
//! on a `kid` it does not know at most once per `jwks_unknown_kid_every` (a rotated-in key is
//! found without waiting; a flood of made-up `kid`s costs one fetch per period).
//!
//! A load that fails keeps the keys already loaded. Never logs a token.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::DecodingKey;
use serde_json::Value;

use crate::core::identity::JwksSource;
use crate::domain::identity::JwtRefusal;

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Before the keys were ever loaded, a JWT asks for a load at most this often.
const FIRST_LOAD_EVERY: Duration = Duration::from_secs(1);
/// How long a fetch of the JWKS may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One key of the set.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

pub struct Jwks {
    source: JwksSource,
    keys: Mutex<Vec<Key>>,
    /// When an unknown `kid` last made us load the set again.
    last_unknown_kid_load: Mutex<Option<Instant>>,
    /// Whether a load has ever succeeded, and when a JWT last asked for the first one.
    loaded: std::sync::atomic::AtomicBool,
    last_first_load: Mutex<Option<Instant>>,
    unknown_kid_every: Duration,
    /// Serializes loads, so a burst of unknown `kid`s makes one.
    loading: tokio::sync::Mutex<()>,
}

impl Jwks {
    pub fn new(source: JwksSource, unknown_kid_every: Duration) -> Arc<Jwks> {
        Arc::new(Jwks {
            source,
            keys: Mutex::new(Vec::new()),
            last_unknown_kid_load: Mutex::new(None),
            loaded: std::sync::atomic::AtomicBool::new(false),
            last_first_load: Mutex::new(None),
            unknown_kid_every,
            loading: tokio::sync::Mutex::new(()),
        })
    }

    /// Loads the set now and then every `every`, on the current actix arbiter.
    pub fn keep_loaded(self: &Arc<Self>, every: Duration) {
        let jwks = self.clone();
        actix::spawn(async move {
            loop {
                jwks.load().await;
                tokio::time::sleep(every).await;
            }
        });
    }

    /// The key a JWT names by `kid` (or, without one, the set's only key).
    pub async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, JwtRefusal> {
        if let Some(key) = self.find(kid)? {
            return Ok(key);
        }
        // Before the first load succeeds (the start's may still be on its way, or failed), a
        // JWT may ask for it once a second; after it, an unknown kid once per period.
        let first = !self.loaded.load(std::sync::atomic::Ordering::Acquire);
        let may = if first {
            once_per(&self.last_first_load, FIRST_LOAD_EVERY)
        } else {
            once_per(&self.last_unknown_kid_load, self.unknown_kid_every)
        };
        if may {
            self.load().await;
            if let Some(key) = self.find(kid)? {
                return Ok(key);
            }
        }
        match kid {
            Some(kid) if self.is_empty() => {
                tracing::warn!(kid, "a JWT was refused: no JWKS key is loaded");
                Err(JwtRefusal::KeysUnavailable)
            }
            Some(kid) => Err(JwtRefusal::UnknownKid(kid.chars().take(64).collect())),
            None if self.is_empty() => Err(JwtRefusal::KeysUnavailable),
            None => Err(JwtRefusal::NoKid),
        }
    }

    fn is_empty(&self) -> bool {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    fn find(&self, kid: Option<&str>) -> Result<Option<DecodingKey>, JwtRefusal> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        match kid {
            Some(kid) => Ok(keys.iter().find(|k| k.kid.as_deref() == Some(kid)).map(|k| k.key.clone())),
            None if keys.len() == 1 => Ok(Some(keys[0].key.clone())),
            None => Ok(None),
        }
    }

    /// Loads the set; on failure keeps the keys it had and says why in the log.
    pub async fn load(&self) {
        let _one_at_a_time = self.loading.lock().await;
        let loaded = match &self.source {
            JwksSource::Url(url) => fetch(url).await,
            JwksSource::File(path) => {
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display())).and_then(|b| parse(&b))
            }
        };
        match loaded {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "JWKS loaded");
                *self.keys.lock().unwrap_or_else(|e| e.into_inner()) = keys;
                self.loaded.store(true, std::sync::atomic::Ordering::Release);
            }
            Err(e) => tracing::warn!(error = %e, "the JWKS could not be loaded; the keys loaded before stay"),
        }
    }
}

/// Whether `last` is at least `every` ago (or never), taking now as the new last.
fn once_per(last: &Mutex<Option<Instant>>, every: Duration) -> bool {
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if last.is_some_and(|at| now.duration_since(at) < every) {
        return false;
    }
    *last = Some(now);
    true
}

async fn fetch(url: &str) -> Result<Vec<Key>, String> {
    let client = awc::Client::builder().timeout(FETCH_TIMEOUT).finish();
    let mut response = client.get(url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url} answered {}", response.status()));
    }
    let body = response.body().limit(MAX_JWKS_BYTES).await.map_err(|e| format!("GET {url}: {e}"))?;
    parse(&body)
}

/// The usable keys of a JWKS document; a key that cannot be read (an unknown `kty`, a
/// private-only or malformed key) is left out and logged, the others are kept.
fn parse(document: &[u8]) -> Result<Vec<Key>, String> {
    let value: Value = serde_json::from_slice(document).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let Some(Value::Array(entries)) = value.get("keys") else {
        return Err("the JWKS has no `keys` list".into());
    };
    let mut keys: Vec<Key> = Vec::with_capacity(entries.len());
    for entry in entries {
        let read = serde_json::from_value::<Jwk>(entry.clone())
            .map_err(|e| e.to_string())
            .and_then(|jwk| DecodingKey::from_jwk(&jwk).map(|key| (jwk.common.key_id, key)).map_err(|e| e.to_string()));
        match read {
            Ok((kid, key)) => {
                if kid.is_some() && keys.iter().any(|k| k.kid == kid) {
                    tracing::warn!(kid, "the JWKS names a kid twice; the last one is used");
                    keys.retain(|k| k.kid != kid);
                }
                keys.push(Key { kid, key });
            }
            Err(e) => tracing::warn!(error = %e, "a JWKS key cannot be used; it is left out"),
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_keys_are_left_out_and_the_rest_kept() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hs", "k": "c2VjcmV0"},
            {"kty": "weird", "kid": "x"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]});
        let keys = parse(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["hs", "ed"]);
        assert!(parse(b"{}").err().unwrap().contains("keys"));
        assert!(parse(b"nope").err().unwrap().contains("not JSON"));
    }
}
