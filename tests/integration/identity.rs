//! The studio's login (PROTOCOL §5 "Identity"): JWTs signed with a shared secret or with keys
//! from a JWKS (file or URL, with rotation), players keyed by (`iss`, `sub`), refusals that say
//! why, the session's end at the JWT's expiry and `session:refresh`, JWTs on REST, the login
//! modes, and the rate of new anonymous players per client address (behind trusted proxies).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde_json::{json, Value};

use crate::common::{get_json, spawn_with, Db, Setup, WsClient};
use lorewire::core::identity::{AuthMode, JwksSource};
use lorewire::core::rate_limit::Rate;

const SECRET: &str = "studio-shared-secret-0123456789";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hs256(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key of the studio and its public half as a JWK.
struct StudioKey {
    alg: Algorithm,
    kid: String,
    signing: EncodingKey,
    jwk: Value,
}

impl StudioKey {
    fn rsa(kid: &str) -> StudioKey {
        let rsa = Rsa::generate(2048).unwrap();
        let jwk = json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
        let signing = EncodingKey::from_rsa_der(&rsa.private_key_to_der().unwrap());
        StudioKey { alg: Algorithm::RS256, kid: kid.into(), signing, jwk }
    }

    fn ec(kid: &str) -> StudioKey {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let (mut x, mut y) = (openssl::bn::BigNum::new().unwrap(), openssl::bn::BigNum::new().unwrap());
        key.public_key().affine_coordinates(&group, &mut x, &mut y, &mut BigNumContext::new().unwrap()).unwrap();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": b64(&x.to_vec_padded(32).unwrap()), "y": b64(&y.to_vec_padded(32).unwrap())});
        let signing = EncodingKey::from_ec_der(&PKey::from_ec_key(key).unwrap().private_key_to_pkcs8().unwrap());
        StudioKey { alg: Algorithm::ES256, kid: kid.into(), signing, jwk }
    }

    fn ed(kid: &str) -> StudioKey {
        let key = PKey::generate_ed25519().unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA", "x": b64(&key.raw_public_key().unwrap())});
        let signing = EncodingKey::from_ed_der(&key.private_key_to_pkcs8().unwrap());
        StudioKey { alg: Algorithm::EdDSA, kid: kid.into(), signing, jwk }
    }

    fn sign(&self, claims: Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        encode(&header, &claims, &self.signing).unwrap()
    }
}

fn claims(sub: &str, name: &str) -> Value {
    json!({"iss": "studio", "sub": sub, "name": name, "exp": now() + 3600})
}

fn with_secret(mode: AuthMode) -> impl FnOnce(&mut lorewire::core::config::Config) {
    move |c| {
        c.identity.mode = mode;
        c.identity.jwt_secret = Some(lorewire::core::config::Secret::new(SECRET));
    }
}

/// Sends `session:start` and returns the answer (an ack or an error).
async fn start(ws: &mut WsClient, frame: Value) -> Value {
    ws.send(frame).await;
    ws.recv().await
}

async fn jwt_start(app: &crate::common::TestApp, jwt: &str) -> Value {
    let mut ws = app.ws().await;
    start(&mut ws, json!({"type": "session:start", "jwt": jwt, "ref": 1})).await
}

async fn jwt_players_are_keyed_by_issuer_and_subject(db: Db) {
    let app = spawn_with(Setup::new(db), with_secret(AuthMode::Both)).await;
    let jwt = hs256(claims("p-1", "Ada"));
    let ack = jwt_start(&app, &jwt).await;
    assert_eq!(ack["type"], "session:ack", "{ack}");
    assert_eq!((ack["nickname"].as_str(), ack["external_id"].as_str()), (Some("Ada"), Some("p-1")));
    assert!(ack.get("token").is_none(), "a JWT player gets no opaque token: {ack}");
    let expires = chrono::DateTime::parse_from_rfc3339(ack["expires_at"].as_str().unwrap()).unwrap();
    assert!((expires.timestamp() - (now() + 3600)).abs() <= 5, "{ack}");

    // The same (iss, sub) is the same player, renamed by its newer token; another issuer is another player.
    let again = jwt_start(&app, &hs256(claims("p-1", "Ada L."))).await;
    assert_eq!((again["user_id"].clone(), again["nickname"].as_str()), (ack["user_id"].clone(), Some("Ada L.")));
    let other_iss = hs256(json!({"iss": "other-studio", "sub": "p-1", "name": "Ada", "exp": now() + 3600}));
    assert_ne!(jwt_start(&app, &other_iss).await["user_id"], ack["user_id"]);
    // Without a nickname claim, preferred_username, then the frame's nickname.
    let preferred = hs256(json!({"iss": "studio", "sub": "p-2", "preferred_username": "Bo", "exp": now() + 60}));
    assert_eq!(jwt_start(&app, &preferred).await["nickname"], "Bo");
    let bare = hs256(json!({"iss": "studio", "sub": "p-3", "exp": now() + 60}));
    let mut ws = app.ws().await;
    let named = start(&mut ws, json!({"type": "session:start", "jwt": bare, "nickname": "Cy"})).await;
    assert_eq!(named["nickname"], "Cy");

    // REST takes the JWT as a bearer, as the same player.
    let (status, body) = get_json(&app.url("/api/content/quest/1"), Some(&jwt)).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "authenticated, then not found: {body}");
    let (status, body) = get_json(&app.url("/api/content/quest/1"), Some(&hs256(json!({"sub": "x", "exp": 1})))).await;
    assert_eq!((status, body["message"].as_str()), (401, Some("the JWT has expired")), "{body}");

    // With `both`, anonymous players still start and resume.
    let (_, anon) = app.player("Dee").await;
    let mut ws = app.ws().await;
    let resumed = start(&mut ws, json!({"type": "session:start", "nickname": "Dee", "token": anon["token"]})).await;
    assert_eq!(resumed["user_id"], anon["user_id"]);
}

async fn every_refused_jwt_says_why(db: Db) {
    let app = spawn_with(Setup::new(db), |c| {
        with_secret(AuthMode::Jwt)(c);
        c.identity.issuer = Some("studio".into());
        c.identity.audience = Some("game".into());
        c.identity.leeway = Duration::from_secs(30);
    })
    .await;
    let good = json!({"iss": "studio", "aud": "game", "sub": "p", "exp": now() + 60});
    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let other_secret = encode(&Header::default(), &good, &EncodingKey::from_secret(b"not-the-studio")).unwrap();
    let rsa_without_jwks = StudioKey::rsa("k1").sign(good.clone());
    let cases = [
        (other_secret, "the JWT's signature is not valid"),
        (hs256(with(json!({"exp": now() - 31}))), "the JWT has expired"),
        (hs256(with(json!({"nbf": now() + 120}))), "the JWT is not valid yet"),
        (hs256(with(json!({"iss": "someone"}))), "the JWT's issuer (`iss`) is not the one this server accepts"),
        (hs256(with(json!({"iss": null}))), "the JWT's issuer (`iss`) is not the one this server accepts"),
        (hs256(with(json!({"aud": "other-game"}))), "the JWT's audience (`aud`) is not this server's"),
        (hs256(with(json!({"sub": null}))), "the JWT has no `sub`"),
        (hs256(with(json!({"exp": null}))), "the JWT has no `exp`"),
        (rsa_without_jwks, "the JWT's algorithm RS256 is not accepted here"),
        ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJwIn0.".to_owned(), "the JWT is malformed"),
        ("not-a-jwt".to_owned(), "the JWT is malformed"),
        ("x".repeat(9000), "the JWT is longer than 8192 bytes"),
    ];
    for (jwt, why) in cases {
        let refused = jwt_start(&app, &jwt).await;
        assert_eq!(refused["type"], "error:unauthorized", "{why}: {refused}");
        assert_eq!(refused["ref"], 1);
        let message = refused["message"].as_str().unwrap();
        assert!(message.starts_with(why), "expected `{why}`, got `{message}`");
        assert!(!message.contains(&jwt[..jwt.len().min(40)]), "the token is never echoed");
    }
    // Within the leeway, an expired token still passes.
    assert_eq!(jwt_start(&app, &hs256(with(json!({"exp": now() - 5})))).await["type"], "session:ack");
    // No players were made by the refusals: the one accepted is the only one.
    let (_, users) = app.admin_get("/admin/api/users").await;
    assert_eq!(users["total"], 1, "{users}");
}

/// `jwt` refuses nickname starts, opaque resumes and opaque REST tokens; `anonymous` refuses JWTs.
#[actix_web::test]
async fn each_login_mode_accepts_only_its_logins() {
    let app = spawn_with(Setup::new(Db::Sqlite), with_secret(AuthMode::Jwt)).await;
    let mut ws = app.ws().await;
    let refused = start(&mut ws, json!({"type": "session:start", "nickname": "Ada", "ref": 2})).await;
    assert_eq!((refused["type"].as_str(), refused["ref"].as_i64()), (Some("error:unauthorized"), Some(2)));
    assert!(refused["message"].as_str().unwrap().contains("`jwt`"), "{refused}");
    let mut ws = app.ws().await;
    let refused =
        start(&mut ws, json!({"type": "session:start", "nickname": "Ada", "token": "0123456789abcdef"})).await;
    assert_eq!(refused["type"], "error:unauthorized");
    let (status, body) = get_json(&app.url("/api/content/quest/1"), Some("0123456789abcdef")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["message"].as_str().unwrap().contains("JWT"), "{body}");

    let app = spawn_with(Setup::new(Db::Sqlite), with_secret(AuthMode::Anonymous)).await;
    let refused = jwt_start(&app, &hs256(claims("p", "Ada"))).await;
    assert_eq!(refused["type"], "error:unauthorized");
    assert_eq!(refused["message"], "JWT login is not enabled on this server");
    // And a JWT as a REST bearer is just a token nobody holds.
    let (status, _) = get_json(&app.url("/api/content/quest/1"), Some(&hs256(claims("p", "Ada")))).await;
    assert_eq!(status, 401);
}

/// A configuration that cannot check a JWT does not start.
#[actix_web::test]
async fn jwt_login_without_keys_refuses_to_start() {
    let db = crate::process::test_db(Db::Sqlite).await;
    let mut config = lorewire::core::config::Config::with_database(&db.url);
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.identity.mode = AuthMode::Both;
    let refused = lorewire::app::start(config, Arc::new(lorewire::core::clock::SystemClock)).await.err().unwrap();
    assert!(refused.to_string().contains("LOREWIRE_JWT_SECRET"), "{refused}");
}

/// RS256, ES256 and EdDSA tokens are checked with the keys of a JWKS file.
#[actix_web::test]
async fn asymmetric_jwts_are_checked_with_a_jwks_file() {
    let keys = [StudioKey::rsa("rsa-1"), StudioKey::ec("ec-1"), StudioKey::ed("ed-1")];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let jwks = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    std::fs::write(&path, jwks.to_string()).unwrap();
    let app = spawn_with(Setup::new(Db::Sqlite), |c| {
        c.identity.mode = AuthMode::Jwt;
        c.identity.jwks = Some(JwksSource::File(path.clone()));
    })
    .await;
    for (n, key) in keys.iter().enumerate() {
        let ack = jwt_start(&app, &key.sign(claims(&format!("p-{n}"), "Ada"))).await;
        assert_eq!(ack["type"], "session:ack", "{:?}: {ack}", key.alg);
    }
    // A key of the set signs only with its own algorithm; another kid's key is not this one.
    let impostor = StudioKey::rsa("rsa-1");
    let refused = jwt_start(&app, &impostor.sign(claims("p-0", "Ada"))).await;
    assert_eq!(refused["message"], "the JWT's signature is not valid");
    let refused = jwt_start(&app, &StudioKey::ec("nobody").sign(claims("p-9", "Ada"))).await;
    assert_eq!(refused["message"], "the JWT's key id `nobody` is unknown");
    // An HS256 token is refused: no shared secret is set, whatever its kid names.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = encode(&header, &claims("p-0", "Ada"), &EncodingKey::from_secret(b"anything")).unwrap();
    assert_eq!(jwt_start(&app, &confused).await["message"], "the JWT's algorithm HS256 is not accepted here");
}

/// A JWKS served over HTTP, whose requests are counted.
struct JwksServer {
    url: String,
    document: Arc<Mutex<Value>>,
    fetches: Arc<Mutex<u32>>,
    _server: actix_web::dev::ServerHandle,
}

impl JwksServer {
    async fn start(keys: &[&StudioKey]) -> JwksServer {
        let document = Arc::new(Mutex::new(json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})));
        let fetches = Arc::new(Mutex::new(0u32));
        let (doc, count) = (document.clone(), fetches.clone());
        let server = HttpServer::new(move || {
            let (doc, count) = (doc.clone(), count.clone());
            App::new().route(
                "/jwks.json",
                web::get().to(move || {
                    let (doc, count) = (doc.clone(), count.clone());
                    async move {
                        *count.lock().unwrap() += 1;
                        let body = doc.lock().unwrap().to_string();
                        HttpResponse::Ok().content_type("application/json").body(body)
                    }
                }),
            )
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        JwksServer { url: format!("http://{addr}/jwks.json"), document, fetches, _server: handle }
    }

    fn serve(&self, keys: &[&StudioKey]) {
        *self.document.lock().unwrap() = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    }

    fn fetches(&self) -> u32 {
        *self.fetches.lock().unwrap()
    }
}

/// A key rotated in is found on its first use (one fetch, however many tokens name unknown
/// kids meanwhile); a key taken out stops working at the next refresh.
#[actix_web::test]
async fn jwks_rotation_fetches_once_per_period_and_drops_revoked_keys() {
    let (old, new) = (StudioKey::ed("2026-old"), StudioKey::rsa("2026-new"));
    let jwks = JwksServer::start(&[&old]).await;
    let app = spawn_with(Setup::new(Db::Sqlite), |c| {
        c.identity.mode = AuthMode::Jwt;
        c.identity.jwks = Some(JwksSource::Url(jwks.url.clone()));
        c.identity.jwks_refresh = Duration::from_secs(3600);
        c.identity.jwks_unknown_kid_every = Duration::from_secs(3600);
    })
    .await;
    assert_eq!(jwt_start(&app, &old.sign(claims("p-1", "Ada"))).await["type"], "session:ack");
    let before = jwks.fetches();
    assert!(before >= 1);

    jwks.serve(&[&old, &new]);
    assert_eq!(jwt_start(&app, &new.sign(claims("p-2", "Bo"))).await["type"], "session:ack");
    assert_eq!(jwks.fetches(), before + 1, "the unknown kid made one fetch");
    // A flood of made-up kids within the period costs no fetch.
    for n in 0..20 {
        let refused = jwt_start(&app, &StudioKey::ed(&format!("made-up-{n}")).sign(claims("p-3", "Cy"))).await;
        assert_eq!(refused["message"], format!("the JWT's key id `made-up-{n}` is unknown"));
    }
    assert_eq!(jwks.fetches(), before + 1, "no fetch for the flood");

    // Revoked: the next refresh (every 300 ms here) drops the old key.
    let jwks = JwksServer::start(&[&old, &new]).await;
    let app = spawn_with(Setup::new(Db::Sqlite), |c| {
        c.identity.mode = AuthMode::Jwt;
        c.identity.jwks = Some(JwksSource::Url(jwks.url.clone()));
        c.identity.jwks_refresh = Duration::from_millis(300);
    })
    .await;
    assert_eq!(jwt_start(&app, &old.sign(claims("p-1", "Ada"))).await["type"], "session:ack");
    jwks.serve(&[&new]);
    let refused = crate::common::eventually("the revoked key refused", || async {
        let answer = jwt_start(&app, &old.sign(claims("p-1", "Ada"))).await;
        (answer["type"] == "error:unauthorized").then_some(answer)
    })
    .await;
    assert_eq!(refused["message"], "the JWT's key id `2026-old` is unknown");
}

/// The session ends with close 4001 once its JWT has expired (no leeway here), unless a newer
/// JWT of the same player moved the end; a refused refresh keeps the session as it was.
#[actix_web::test]
async fn a_jwt_session_ends_at_expiry_unless_refreshed() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| {
        with_secret(AuthMode::Jwt)(c);
        c.identity.leeway = Duration::ZERO;
    })
    .await;
    let short = |sub: &str, secs: i64| hs256(json!({"iss": "studio", "sub": sub, "exp": now() + secs}));
    let mut ending = app.ws().await;
    assert_eq!(
        start(&mut ending, json!({"type": "session:start", "jwt": short("p-1", 2)})).await["type"],
        "session:ack"
    );
    let mut refreshed = app.ws().await;
    assert_eq!(
        start(&mut refreshed, json!({"type": "session:start", "jwt": short("p-2", 2)})).await["type"],
        "session:ack"
    );

    // Refused refreshes: another player's JWT, a bad one. The session lives on.
    refreshed.send(json!({"type": "session:refresh", "jwt": short("p-1", 600), "ref": "r1"})).await;
    let refused = refreshed.recv().await;
    assert_eq!((refused["type"].as_str(), refused["ref"].as_str()), (Some("error:unauthorized"), Some("r1")));
    assert_eq!(refused["message"], "the JWT is for another player than this session's");
    refreshed.send(json!({"type": "session:refresh", "jwt": "nope", "ref": "r2"})).await;
    assert_eq!(refreshed.recv().await["type"], "error:unauthorized");
    refreshed.send(json!({"type": "session:refresh", "jwt": short("p-2", 600), "ref": "r3"})).await;
    let ok = refreshed.recv().await;
    assert_eq!((ok["type"].as_str(), ok["ref"].as_str()), (Some("session:refreshed"), Some("r3")), "{ok}");
    let expires = chrono::DateTime::parse_from_rfc3339(ok["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires.timestamp() >= now() + 590);

    assert_eq!(ending.expect_close().await, Some(4001));
    // The refreshed session is still served after the first JWT's expiry.
    refreshed.send(json!({"type": "content:subscribe", "kind": "quest", "subject_id": 5, "ref": "s"})).await;
    let answer = refreshed.recv().await;
    assert_eq!((answer["type"].as_str(), answer["ref"].as_str()), (Some("error:not_found"), Some("s")), "{answer}");

    // An anonymous session has nothing to refresh.
    let app = spawn_with(Setup::new(Db::Sqlite), with_secret(AuthMode::Both)).await;
    let (mut anon, _) = app.player("Ada").await;
    anon.send(json!({"type": "session:refresh", "jwt": short("p-1", 600)})).await;
    assert_eq!(anon.recv().await["message"], "only a session started with a JWT can be refreshed");
}

/// At most LOREWIRE_NEW_PLAYERS_RATE new anonymous players per client address: the next is
/// refused and stores nothing; resumes are free; behind a trusted proxy the forwarded address
/// counts, from an untrusted peer the headers do not.
#[actix_web::test]
async fn new_anonymous_players_are_limited_per_client_address() {
    let app = spawn_with(Setup::new(Db::Sqlite), |c| {
        c.identity.new_players_rate = Rate { count: 2, per: Duration::from_secs(3600) };
    })
    .await;
    let (_, first) = app.player("One").await;
    app.player("Two").await;
    let mut ws = app.ws().await;
    let refused = start(&mut ws, json!({"type": "session:start", "nickname": "Three", "ref": 3})).await;
    assert_eq!((refused["type"].as_str(), refused["ref"].as_i64()), (Some("error:rate_limited"), Some(3)), "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("at most 2/1h"), "{refused}");
    // An unknown token would make a new player: refused too.
    let mut ws = app.ws().await;
    let refused = start(&mut ws, json!({"type": "session:start", "nickname": "Three", "token": "unknown"})).await;
    assert_eq!(refused["type"], "error:rate_limited");
    let (_, users) = app.admin_get("/admin/api/users").await;
    assert_eq!(users["total"], 2, "nothing stored for the refused: {users}");
    let mut ws = app.ws().await;
    let resumed = start(&mut ws, json!({"type": "session:start", "nickname": "One", "token": first["token"]})).await;
    assert_eq!(resumed["user_id"], first["user_id"], "a resume is not counted");
    // Headers of an untrusted peer change nothing.
    let ws = app.url("/ws");
    let mut spoofed = WsClient::connect_with_headers(&ws, None, &[("x-forwarded-for", "198.51.100.7")]).await.unwrap();
    assert_eq!(
        start(&mut spoofed, json!({"type": "session:start", "nickname": "Spoof"})).await["type"],
        "error:rate_limited"
    );

    // Behind a trusted proxy (the loopback here), each forwarded client has its own window.
    let app = spawn_with(Setup::new(Db::Sqlite), |c| {
        c.identity.new_players_rate = Rate { count: 1, per: Duration::from_secs(3600) };
        c.identity.trusted_proxies = lorewire::core::identity::TrustedProxies(vec!["127.0.0.0/8".parse().unwrap()]);
    })
    .await;
    let url = app.url("/ws");
    let via = |headers: &'static [(&'static str, &'static str)]| {
        let url = url.clone();
        async move {
            let mut ws = WsClient::connect_with_headers(&url, None, headers).await.unwrap();
            start(&mut ws, json!({"type": "session:start", "nickname": "Via"})).await["type"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(via(&[("x-forwarded-for", "198.51.100.7")]).await, "session:ack");
    assert_eq!(via(&[("x-forwarded-for", "203.0.113.1, 198.51.100.7")]).await, "error:rate_limited");
    assert_eq!(via(&[("forwarded", "for=\"[2001:db8::1]:443\"")]).await, "session:ack");
    assert_eq!(via(&[("x-forwarded-for", "198.51.100.8")]).await, "session:ack");
    assert_eq!(via(&[]).await, "session:ack", "the proxy itself is a client too");
    assert_eq!(via(&[]).await, "error:rate_limited");
}

crate::both_backends!(jwt_players_are_keyed_by_issuer_and_subject, every_refused_jwt_says_why);
