//! Checks a studio-signed JWT (PROTOCOL §5): its algorithm against the keys configured (HS256,
//! HS384, HS512 with `LOREWIRE_JWT_SECRET`; RS256, ES256, EdDSA with the JWKS), its signature
//! (jsonwebtoken), its issuer and audience when set, then its times and claims with the
//! process's clock (`domain::identity::read_claims`). Every refusal is a [`JwtRefusal`]; the
//! token itself is never logged.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks::Jwks;
use crate::core::identity::IdentityConfig;
use crate::domain::identity::{read_claims, JwtRefusal, Verified, MAX_JWT_BYTES};

pub struct Verifier {
    config: IdentityConfig,
    secret: Option<DecodingKey>,
    jwks: Option<Arc<Jwks>>,
}

impl Verifier {
    /// A verifier for the settings; with a JWKS, its keys are loaded now and kept fresh on the
    /// current actix arbiter.
    pub fn start(config: &IdentityConfig) -> Verifier {
        let secret = config.jwt_secret.as_ref().map(|s| DecodingKey::from_secret(s.expose().as_bytes()));
        let jwks = config.jwks.clone().map(|source| {
            let jwks = Jwks::new(source, config.jwks_unknown_kid_every);
            jwks.keep_loaded(config.jwks_refresh);
            jwks
        });
        Verifier { config: config.clone(), secret, jwks }
    }

    /// What the JWT says, once every check passed.
    pub async fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Verified, JwtRefusal> {
        if !self.config.mode.accepts_jwt() {
            return Err(JwtRefusal::NotEnabled);
        }
        if token.len() > MAX_JWT_BYTES {
            return Err(JwtRefusal::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| refusal(e.kind()))?;
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                self.secret.clone().ok_or_else(|| JwtRefusal::Algorithm(format!("{:?}", header.alg)))?
            }
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => match &self.jwks {
                Some(jwks) => jwks.key(header.kid.as_deref()).await?,
                None => return Err(JwtRefusal::Algorithm(format!("{:?}", header.alg))),
            },
            other => return Err(JwtRefusal::Algorithm(format!("{other:?}"))),
        };
        let mut validation = Validation::new(header.alg);
        // Times are checked with the process's clock below; the claims this server needs, too.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = HashSet::new();
        validation.validate_aud = self.config.audience.is_some();
        if let Some(aud) = &self.config.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = &self.config.issuer {
            validation.set_issuer(&[iss]);
        }
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| refusal(e.kind()))?;
        let verified =
            read_claims(&data.claims, now, self.config.leeway, &self.config.nickname_claim, &self.config.role_claim)?;
        if self.config.issuer.as_ref().is_some_and(|iss| *iss != verified.issuer) {
            return Err(JwtRefusal::WrongIssuer);
        }
        Ok(verified)
    }
}

fn refusal(kind: &ErrorKind) -> JwtRefusal {
    match kind {
        ErrorKind::InvalidSignature => JwtRefusal::BadSignature,
        ErrorKind::InvalidIssuer => JwtRefusal::WrongIssuer,
        ErrorKind::InvalidAudience => JwtRefusal::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            JwtRefusal::KeyMismatch
        }
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => JwtRefusal::BadSignature,
        ErrorKind::Base64(_) => JwtRefusal::Malformed("a part is not base64url".into()),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => JwtRefusal::Malformed("a part is not JSON".into()),
        _ => JwtRefusal::Malformed("it is not three base64url parts".into()),
    }
}
