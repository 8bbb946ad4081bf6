//! Hostile tests of JWT verification against a JWKS served in-process on 127.0.0.1:0.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::*;
use crate::identity::{Clock, Rejection};
use crate::reason::Reason;
use tollgate_common::clock::ManualClock;

pub(crate) const RSA1: &[u8] = include_bytes!("testdata/rsa1.pem");
pub(crate) const RSA1_PUB: &[u8] = include_bytes!("testdata/rsa1.pub.pem");
pub(crate) const RSA2: &[u8] = include_bytes!("testdata/rsa2.pem");
pub(crate) const EC: &[u8] = include_bytes!("testdata/ec.pem");
/// A 1024-bit RSA key: too weak to be trusted.
const RSA_WEAK: &[u8] = include_bytes!("testdata/rsa1024.pem");

pub(crate) const ISS: &str = "https://issuer.test";
pub(crate) const AUD: &str = "https://api.test";
const T0: u64 = 1_800_000_000;

/// The public JWK of a private PEM key, with a kid.
pub(crate) fn public_jwk(pem: &[u8], alg: Algorithm, kid: &str) -> Value {
    assert!(
        crate::identity::crypto::install(),
        "verification runs on the ring provider"
    );
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(pem).unwrap(),
    };
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

pub(crate) fn sign(pem: &[u8], alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    assert!(
        crate::identity::crypto::install(),
        "verification runs on the ring provider"
    );
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem).unwrap(),
        Algorithm::HS256 => EncodingKey::from_secret(pem),
        _ => EncodingKey::from_rsa_pem(pem).unwrap(),
    };
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

pub(crate) fn claims(now: u64) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now + 600, "iat": now, "scope": "read write", "org": "acme"})
}

/// A manual clock.
pub(crate) fn clock_at(secs: u64) -> (Clock, Arc<ManualClock>) {
    let t = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    ));
    (t.clone(), t)
}

/// A JWKS endpoint whose document and health the test controls, counting fetches.
pub(crate) struct JwksServer {
    pub url: String,
    pub doc: Arc<Mutex<Value>>,
    pub fetches: Arc<AtomicUsize>,
    pub down: Arc<AtomicBool>,
}

#[derive(Clone)]
struct SrvState {
    doc: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

async fn serve_jwks(State(s): State<SrvState>) -> impl IntoResponse {
    s.fetches.fetch_add(1, Ordering::SeqCst);
    if s.down.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "down".to_string());
    }
    (StatusCode::OK, s.doc.lock().to_string())
}

impl JwksServer {
    pub(crate) async fn start(keys: Vec<Value>) -> JwksServer {
        let st = SrvState {
            doc: Arc::new(Mutex::new(json!({ "keys": keys }))),
            fetches: Arc::new(AtomicUsize::new(0)),
            down: Arc::new(AtomicBool::new(false)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/jwks", get(serve_jwks))
            .with_state(st.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        JwksServer {
            url: format!("http://{addr}/jwks"),
            doc: st.doc,
            fetches: st.fetches,
            down: st.down,
        }
    }

    pub(crate) fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

pub(crate) fn issuer_yaml(source: &str, extra: &str) -> JwtConfig {
    let y = format!(
        "issuers:\n  - issuer: {ISS}\n    audiences: [{AUD}]\n    {source}\n    claims: {{tenant: org}}\n{extra}"
    );
    let cfg: JwtConfig = serde_yaml::from_str(&y).unwrap();
    let mut e = tollgate_common::config::Errors::default();
    tollgate_common::config::Validate::validate(&cfg, "jwt", &mut e);
    assert!(e.is_empty(), "{e:?}");
    cfg
}

fn verifier(cfg: &JwtConfig, clock: Clock) -> JwtVerifier {
    JwtVerifier::new(cfg, reqwest::Client::new(), clock).unwrap()
}

async fn remote(extra: &str) -> (JwksServer, JwtVerifier, Arc<ManualClock>) {
    let srv = JwksServer::start(vec![
        public_jwk(RSA1, Algorithm::RS256, "k1"),
        public_jwk(EC, Algorithm::ES256, "e1"),
    ])
    .await;
    let cfg = issuer_yaml(&format!("jwks_url: {}", srv.url), extra);
    let (clock, t) = clock_at(T0);
    (srv, verifier(&cfg, clock), t)
}

fn reason(r: Result<Arc<Identity>, Rejection>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.reason(),
    }
}

#[tokio::test]
async fn valid_tokens_verify_and_are_cached() {
    let (srv, v, _) = remote("").await;
    let t = sign(RSA1, Algorithm::RS256, Some("k1"), &claims(T0));
    let id = v.verify(&t).await.unwrap();
    assert_eq!(id.subject, "alice");
    assert_eq!(id.method, Method::Jwt);
    assert_eq!(id.issuer.as_deref(), Some(ISS));
    assert_eq!(id.scopes, vec!["read", "write"]);
    assert_eq!(id.tenant.as_deref(), Some("acme"));
    let fetched = srv.fetches();
    assert_eq!(fetched, 1, "first token fetches the key set once");
    let again = v.verify(&t).await.unwrap();
    assert!(
        Arc::ptr_eq(&id, &again),
        "second verification is answered from the cache"
    );
    let es = sign(EC, Algorithm::ES256, Some("e1"), &claims(T0));
    assert_eq!(v.verify(&es).await.unwrap().subject, "alice");
    assert_eq!(srv.fetches(), 1);
}

#[tokio::test]
async fn algorithm_confusion_is_impossible() {
    let (_srv, v, _) = remote("").await;
    // HS256 with the RSA public key (PEM bytes) as the HMAC secret, naming the RSA key.
    let forged = sign(RSA1_PUB, Algorithm::HS256, Some("k1"), &claims(T0));
    assert_eq!(reason(v.verify(&forged).await), "algorithm_not_allowed");
    // The same key's JWK `n` as the secret.
    let jwk = public_jwk(RSA1, Algorithm::RS256, "k1");
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    let forged = sign(&n, Algorithm::HS256, Some("k1"), &claims(T0));
    assert_eq!(reason(v.verify(&forged).await), "algorithm_not_allowed");
    // ES256 header on an RSA key: the key's own algorithms decide.
    let t = sign(EC, Algorithm::ES256, Some("k1"), &claims(T0));
    assert_eq!(reason(v.verify(&t).await), "algorithm_not_allowed");
    // PS256 is allowed by the issuer and fits RSA keys, but the JWK says RS256 only.
    let t = sign(RSA1, Algorithm::PS256, Some("k1"), &claims(T0));
    assert_eq!(reason(v.verify(&t).await), "algorithm_not_allowed");
}

#[tokio::test]
async fn alg_none_and_malformed_tokens_are_rejected() {
    let (_srv, v, _) = remote("").await;
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "k1"})),
        b64(&claims(T0))
    );
    assert_eq!(reason(v.verify(&none).await), "malformed");
    let none_sig = format!("{}.{}.c2ln", b64(&json!({"alg": "none"})), b64(&claims(T0)));
    assert_eq!(reason(v.verify(&none_sig).await), "malformed");
    let valid = sign(RSA1, Algorithm::RS256, Some("k1"), &claims(T0));
    let parts: Vec<&str> = valid.split('.').collect();
    for bad in [
        "".to_string(),
        "abc".to_string(),
        "a.b".to_string(),
        "a.b.c.d".to_string(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}.!!!.{}", parts[0], parts[2]),
        format!("{}.{}.{}", parts[0], b64(&json!("not an object")), parts[2]),
        format!(
            "{}.{}.{}",
            b64(&json!({"alg": "RS256", "kid": 7})),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode("{\"iss\":"),
            parts[2]
        ),
        format!("{} .{}.{}", parts[0], parts[1], parts[2]),
    ] {
        let r = reason(v.verify(&bad).await);
        assert!(r == "malformed" || r == "missing_iss", "{bad:?} gave {r}");
    }
    // A flipped signature byte.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let tampered = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&sig));
    assert_eq!(reason(v.verify(&tampered).await), "bad_signature");
    // Payload swapped under a valid signature.
    let mut c = claims(T0);
    c["sub"] = json!("mallory");
    let swapped = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
    assert_eq!(reason(v.verify(&swapped).await), "bad_signature");
}

#[tokio::test]
async fn oversized_tokens_are_rejected_before_parsing() {
    let (srv, v, _) = remote("max_token_bytes: 1024\n").await;
    let mut c = claims(T0);
    c["pad"] = json!("x".repeat(2000));
    let t = sign(RSA1, Algorithm::RS256, Some("k1"), &c);
    assert_eq!(reason(v.verify(&t).await), "token_too_large");
    assert_eq!(srv.fetches(), 0);
}

#[tokio::test]
async fn time_audience_and_issuer_are_always_checked() {
    let (_srv, v, clock) = remote("").await;
    let mut c = claims(T0);
    c["exp"] = json!(T0 - 31);
    assert_eq!(
        reason(
            v.verify(&sign(RSA1, Algorithm::RS256, Some("k1"), &c))
                .await
        ),
        "expired"
    );
    c["exp"] = json!(T0 - 10);
    assert_eq!(
        reason(
            v.verify(&sign(RSA1, Algorithm::RS256, Some("k1"), &c))
                .await
        ),
        "ok",
        "within leeway"
    );
    let mut c = claims(T0);
    c["nbf"] = json!(T0 + 120);
    assert_eq!(
        reason(
            v.verify(&sign(RSA1, Algorithm::RS256, Some("k1"), &c))
                .await
        ),
        "not_yet_valid"
    );
    let mut c = claims(T0);
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        reason(
            v.verify(&sign(RSA1, Algorithm::RS256, Some("k1"), &c))
                .await
        ),
        "missing_exp"
    );
    let mut c = claims(T0);
    c["exp"] = json!("tomorrow");
    assert_eq!(
        reason(
            v.verify(&sign(RSA1, Algorithm::RS256, Some("k1"), &c))
                .await
        ),
        "missing_exp",
        "not a NumericDate"
    );
    let mut c = claims(T0);
    c["aud"] = json!("https://other.test");
    assert_eq!(
        reason(
            v.verify(&sign(RSA1, Algorithm::RS256, Some("k1"), &c))
                .await
        ),
        "wrong_audience"
    );
    c["aud"] = json!(["https://other.test", AUD]);
    assert_eq!(
        reason(
            v.verify(&sign(RSA1, Algorithm::RS256, Some("k1"), &c))
                .await
        ),
        "ok",
        "one of a list"
    );
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        reason(
            v.verify(&sign(RSA1, Algorithm::RS256, Some("k1"), &c))
                .await
        ),
        "wrong_audience"
    );
    let mut c = claims(T0);
    c["iss"] = json!("https://evil.test");
    assert_eq!(
        reason(
            v.verify(&sign(RSA1, Algorithm::RS256, Some("k1"), &c))
                .await
        ),
        "unknown_issuer"
    );
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(
        reason(
            v.verify(&sign(RSA1, Algorithm::RS256, Some("k1"), &c))
                .await
        ),
        "missing_iss"
    );
    let mut c = claims(T0);
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        reason(
            v.verify(&sign(RSA1, Algorithm::RS256, Some("k1"), &c))
                .await
        ),
        "missing_subject"
    );

    // A cached token stops working at its exp.
    let mut c = claims(T0);
    c["exp"] = json!(T0 + 60);
    let t = sign(RSA1, Algorithm::RS256, Some("k1"), &c);
    assert_eq!(reason(v.verify(&t).await), "ok");
    clock.set(SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + 60 + 31));
    assert_eq!(
        reason(v.verify(&t).await),
        "expired",
        "the cache never answers past exp"
    );
}

#[tokio::test]
async fn unknown_kid_flood_fetches_at_most_once_per_interval() {
    let (srv, v, _) = remote("").await;
    let good = sign(RSA1, Algorithm::RS256, Some("k1"), &claims(T0));
    assert_eq!(reason(v.verify(&good).await), "ok");
    assert_eq!(srv.fetches(), 1);
    let v = Arc::new(v);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let v = v.clone();
        let t = sign(
            RSA2,
            Algorithm::RS256,
            Some(&format!("random-{i}")),
            &claims(T0),
        );
        tasks.push(tokio::spawn(async move { reason(v.verify(&t).await) }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "unknown_kid");
    }
    assert!(
        srv.fetches() <= 2,
        "{} fetches for an unknown-kid flood",
        srv.fetches()
    );
}

#[tokio::test]
async fn rotated_keys_are_picked_up_on_unknown_kid() {
    let (srv, v, _) = remote("").await;
    // min_refetch_interval 0 here: the bound itself is tested by the flood test.
    let cfg = issuer_yaml(
        &format!("jwks_url: {}\n    min_refetch_interval: 0s", srv.url),
        "",
    );
    let (clock, _) = clock_at(T0);
    let v2 = verifier(&cfg, clock);
    drop(v);
    assert_eq!(
        reason(
            v2.verify(&sign(RSA1, Algorithm::RS256, Some("k1"), &claims(T0)))
                .await
        ),
        "ok"
    );
    let t2 = sign(RSA2, Algorithm::RS256, Some("k2"), &claims(T0));
    assert_eq!(reason(v2.verify(&t2).await), "unknown_kid");
    srv.doc.lock()["keys"]
        .as_array_mut()
        .unwrap()
        .push(public_jwk(RSA2, Algorithm::RS256, "k2"));
    assert_eq!(
        reason(v2.verify(&t2).await),
        "ok",
        "the new key is fetched on its first use"
    );
}

#[tokio::test]
async fn keys_are_served_stale_while_the_issuer_is_down_and_cold_start_fails_closed() {
    let (srv, v, _) = remote("").await;
    srv.down.store(true, Ordering::SeqCst);
    let t = sign(RSA1, Algorithm::RS256, Some("k1"), &claims(T0));
    assert!(
        matches!(
            v.verify(&t).await,
            Err(Rejection::Unavailable(Reason::NoKeys))
        ),
        "cold start fails closed"
    );

    srv.down.store(false, Ordering::SeqCst);
    assert!(v.refresh_all().await.is_empty());
    srv.down.store(true, Ordering::SeqCst);
    assert!(
        !v.refresh_all().await.is_empty(),
        "refresh fails while down"
    );
    assert_eq!(
        reason(v.verify(&t).await),
        "ok",
        "last good keys still verify"
    );
}

#[tokio::test]
async fn inline_keys_and_kidless_tokens() {
    let jwk = public_jwk(EC, Algorithm::ES256, "e1");
    let mut no_kid = jwk.clone();
    no_kid.as_object_mut().unwrap().remove("kid");
    let keys = serde_json::to_string(&vec![no_kid]).unwrap();
    let cfg = issuer_yaml(&format!("keys: {keys}"), "");
    let (clock, _) = clock_at(T0);
    let v = verifier(&cfg, clock);
    assert_eq!(
        reason(
            v.verify(&sign(EC, Algorithm::ES256, None, &claims(T0)))
                .await
        ),
        "ok"
    );
    assert_eq!(
        reason(
            v.verify(&sign(RSA1, Algorithm::RS256, None, &claims(T0)))
                .await
        ),
        "unknown_kid"
    );
}

#[test]
fn symmetric_and_encryption_keys_never_load() {
    let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256"});
    let mut enc = public_jwk(RSA1, Algorithm::RS256, "enc");
    enc["use"] = json!("enc");
    let all = [Algorithm::RS256, Algorithm::ES256];
    assert!(super::super::jwks::KeySet::from_jwks(&[oct, enc], &all, 10).is_err());
    let cfg: Result<JwtConfig, _> = serde_yaml::from_str("issuers: []\nbogus: 1");
    assert!(cfg.is_err());
}

#[tokio::test]
async fn weak_rsa_keys_never_verify() {
    let jwk = public_jwk(RSA_WEAK, Algorithm::RS256, "weak");
    let cfg = issuer_yaml(&format!("keys: [{jwk}]"), "");
    let (clock, _) = clock_at(T0);
    let v = verifier(&cfg, clock);
    let t = sign(RSA_WEAK, Algorithm::RS256, Some("weak"), &claims(T0));
    assert_eq!(
        reason(v.verify(&t).await),
        "bad_signature",
        "1024-bit RSA is refused"
    );
}

#[tokio::test]
async fn a_refresh_that_withdraws_a_key_drops_what_it_verified() {
    let (srv, v, _) = remote("").await;
    let rsa = sign(RSA1, Algorithm::RS256, Some("k1"), &claims(T0));
    let es = sign(EC, Algorithm::ES256, Some("e1"), &claims(T0));
    let cached_es = v.verify(&es).await.unwrap();
    v.verify(&rsa).await.unwrap();
    // The issuer drops k1: the token it signed is refused at once, not after the cache TTL;
    // what e1 verified is still answered from the cache.
    *srv.doc.lock() = json!({ "keys": [public_jwk(EC, Algorithm::ES256, "e1")] });
    assert!(v.refresh_all().await.is_empty());
    assert_eq!(reason(v.verify(&rsa).await), "unknown_kid");
    assert!(Arc::ptr_eq(&cached_es, &v.verify(&es).await.unwrap()));
    // New material under an old kid withdraws the old key too.
    *srv.doc.lock() = json!({ "keys": [public_jwk(RSA2, Algorithm::RS256, "e1")] });
    assert!(v.refresh_all().await.is_empty());
    assert_ne!(reason(v.verify(&es).await), "ok");
}
