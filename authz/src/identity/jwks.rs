//! An issuer's signing keys: fetched from its JWKS URL (directly or through OIDC discovery) or
//! given inline, each key paired with the algorithms it may verify, refreshed in the background,
//! refetched on an unknown `kid` at most once per interval, and served stale while the issuer is
//! down (up to a bound, after which verification fails closed).
//!
//! The algorithms of a key come from the key itself (`alg`, else `kty`/`crv`) intersected with
//! the issuer's allowlist. Symmetric (`oct`) keys and encryption keys are never loaded, so HMAC
//! with a public key as the secret, and `none`, cannot verify anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::metrics;

/// A key that may verify tokens signed with one of `algorithms`.
pub struct VerifyKey {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

/// The usable keys of one issuer at one time.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// Keys published without a `kid`.
    anonymous: Vec<Arc<VerifyKey>>,
}

/// Why a JWKS could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("document from {url} is invalid: {reason}")]
    Invalid { url: String, reason: String },
    #[error("no usable key (after filtering by algorithm and use)")]
    NoUsableKey,
}

impl KeySet {
    /// Builds a key set from a JWKS document's `keys`, keeping at most `max_keys` usable keys.
    pub fn from_jwks(
        keys: &[serde_json::Value],
        allowed: &[Algorithm],
        max_keys: usize,
    ) -> Result<KeySet, JwksError> {
        let mut set = KeySet::default();
        let mut n = 0;
        for raw in keys {
            if n >= max_keys {
                break;
            }
            // One key a parser does not understand must not take down the whole set.
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
                continue;
            };
            let Some(vk) = verify_key(&jwk, allowed) else {
                continue;
            };
            let vk = Arc::new(vk);
            match &jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid.clone(), vk);
                }
                None => set.anonymous.push(vk),
            }
            n += 1;
        }
        if n == 0 {
            Err(JwksError::NoUsableKey)
        } else {
            Ok(set)
        }
    }

    /// The key named `kid`.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyKey>> {
        self.by_kid.get(kid)
    }

    /// Candidate keys for a token without a `kid` that says it is signed with `alg`.
    pub fn without_kid(&self, alg: Algorithm) -> impl Iterator<Item = &Arc<VerifyKey>> {
        self.anonymous
            .iter()
            .chain(self.by_kid.values())
            .filter(move |k| k.algorithms.contains(&alg))
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key and its algorithms, or `None` when the key may not verify anything here.
fn verify_key(jwk: &Jwk, allowed: &[Algorithm]) -> Option<VerifyKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return None,
        },
        // Symmetric keys never come from a key set: a shared secret published is no secret.
        _ => return None,
    };
    let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm {
        Some(KeyAlgorithm::UNKNOWN_ALGORITHM) => return None,
        Some(ka) => {
            let a = Algorithm::try_from(ka).ok()?;
            if by_type.contains(&a) && allowed.contains(&a) {
                vec![a]
            } else {
                return None;
            }
        }
        None => by_type
            .iter()
            .copied()
            .filter(|a| allowed.contains(a))
            .collect(),
    };
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey { key, algorithms })
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Fixed keys from the config.
    Inline(Vec<serde_json::Value>),
    Url(String),
    /// `{issuer}/.well-known/openid-configuration`'s `jwks_uri`.
    Discovery,
}

/// Fetch and cache settings of one issuer's keys.
#[derive(Debug, Clone)]
pub struct JwksSettings {
    pub issuer: String,
    pub source: Source,
    pub algorithms: Vec<Algorithm>,
    pub refresh_interval: Duration,
    pub min_refetch_interval: Duration,
    pub max_stale: Duration,
    pub fetch_timeout: Duration,
    pub max_keys: usize,
    pub max_document_bytes: usize,
}

/// One issuer's cached keys.
pub struct Jwks {
    settings: JwksSettings,
    http: reqwest::Client,
    keys: ArcSwapOption<KeySet>,
    times: Mutex<Times>,
    /// Serialises fetches, so a flood of unknown kids makes one request, not one per Check.
    fetching: tokio::sync::Mutex<()>,
    jwks_uri: Mutex<Option<String>>,
}

#[derive(Default, Clone, Copy)]
struct Times {
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
}

impl Jwks {
    /// A key cache; inline keys are loaded at once, remote ones on the first [`Jwks::refresh`].
    pub fn new(settings: JwksSettings, http: reqwest::Client) -> Result<Arc<Jwks>, JwksError> {
        let jwks = Arc::new(Jwks {
            http,
            keys: ArcSwapOption::empty(),
            times: Mutex::new(Times::default()),
            fetching: tokio::sync::Mutex::new(()),
            jwks_uri: Mutex::new(None),
            settings,
        });
        if let Source::Inline(keys) = &jwks.settings.source {
            let set = KeySet::from_jwks(keys, &jwks.settings.algorithms, jwks.settings.max_keys)?;
            jwks.keys.store(Some(Arc::new(set)));
        }
        Ok(jwks)
    }

    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    fn is_inline(&self) -> bool {
        matches!(self.settings.source, Source::Inline(_))
    }

    /// The current keys; `None` before the first successful fetch or once they are older than
    /// `max_stale` (fail closed rather than trust keys the issuer may have rotated away).
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        let keys = self.keys.load_full()?;
        if self.is_inline() {
            return Some(keys);
        }
        let t = *self.times.lock();
        match t.last_success {
            Some(at) if at.elapsed() <= self.settings.max_stale => Some(keys),
            _ => None,
        }
    }

    /// Refetches because a token named a key we do not have (or we have none). Returns whether
    /// new keys may be there to look at: at most one fetch per `min_refetch_interval`; callers
    /// arriving while a fetch is in flight wait for it instead of starting their own.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        if self.is_inline() {
            return false;
        }
        let arrived = Instant::now();
        let _guard = self.fetching.lock().await;
        let t = *self.times.lock();
        if let Some(last) = t.last_attempt {
            if last >= arrived {
                // Someone fetched while we waited.
                return t.last_success.is_some_and(|s| s >= arrived);
            }
            if last.elapsed() < self.settings.min_refetch_interval {
                metrics::jwks_refetch_suppressed();
                return false;
            }
        }
        self.fetch_locked().await.is_ok()
    }

    /// Fetches the key set now (the background refresher and startup call this).
    pub async fn refresh(&self) -> Result<(), JwksError> {
        if self.is_inline() {
            return Ok(());
        }
        let _guard = self.fetching.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<(), JwksError> {
        self.times.lock().last_attempt = Some(Instant::now());
        let span = tollgate_common::trace::span("jwks fetch", "client");
        let res = tracing::Instrument::instrument(self.fetch(), span.clone()).await;
        if res.is_err() {
            tollgate_common::trace::fail(&span);
        }
        metrics::jwks_fetch(res.is_ok());
        match res {
            Ok(set) => {
                self.keys.store(Some(Arc::new(set)));
                self.times.lock().last_success = Some(Instant::now());
                Ok(())
            }
            Err(e) => {
                tracing::warn!(issuer = %self.settings.issuer, error = %e, "JWKS fetch failed; keeping the keys we have");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let url = match &self.settings.source {
            Source::Inline(_) => unreachable!("inline keys are never fetched"),
            Source::Url(u) => u.clone(),
            Source::Discovery => {
                let cached = self.jwks_uri.lock().clone();
                match cached {
                    Some(u) => u,
                    None => {
                        let u = self.discover().await?;
                        *self.jwks_uri.lock() = Some(u.clone());
                        u
                    }
                }
            }
        };
        let doc = match self.get_json(&url).await {
            Ok(d) => d,
            Err(e) => {
                // The issuer may have moved its JWKS: discover again next time.
                *self.jwks_uri.lock() = None;
                return Err(e);
            }
        };
        let keys =
            doc.get("keys")
                .and_then(|k| k.as_array())
                .ok_or_else(|| JwksError::Invalid {
                    url: url.clone(),
                    reason: "no `keys` array".into(),
                })?;
        KeySet::from_jwks(keys, &self.settings.algorithms, self.settings.max_keys)
    }

    async fn discover(&self) -> Result<String, JwksError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        );
        let doc = self.get_json(&url).await?;
        let invalid = |reason: &str| JwksError::Invalid {
            url: url.clone(),
            reason: reason.into(),
        };
        // OIDC Discovery §4.3: the document must name the issuer it was fetched for.
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.settings.issuer.as_str()) {
            return Err(invalid("`issuer` differs from the configured issuer"));
        }
        doc.get("jwks_uri")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| invalid("no `jwks_uri`"))
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, JwksError> {
        let fetch_err = |reason: String| JwksError::Fetch {
            url: url.to_string(),
            reason,
        };
        let mut resp = self
            .http
            .get(url)
            .timeout(self.settings.fetch_timeout)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| fetch_err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fetch_err(format!("status {}", resp.status())));
        }
        let limit = self.settings.max_document_bytes;
        if resp.content_length().is_some_and(|n| n as usize > limit) {
            return Err(fetch_err(format!("larger than {limit} bytes")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fetch_err(e.to_string()))? {
            if body.len() + chunk.len() > limit {
                return Err(fetch_err(format!("larger than {limit} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| JwksError::Invalid {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }

    /// Refreshes every `refresh_interval` (sooner after a failure) until `stop` resolves.
    /// A fetch made just before (at startup) counts as the first one.
    pub async fn refresh_loop(self: Arc<Self>, stop: tollgate_common::Shutdown) {
        if self.is_inline() {
            return;
        }
        loop {
            let t = *self.times.lock();
            let wait = match (t.last_attempt, t.last_success) {
                (None, _) => Duration::ZERO,
                (Some(attempt), Some(success)) if success >= attempt => {
                    self.settings.refresh_interval
                }
                // Retry sooner while failing, but not in a tight loop.
                _ => self
                    .settings
                    .min_refetch_interval
                    .max(Duration::from_secs(1))
                    .min(self.settings.refresh_interval),
            };
            tokio::select! {
                _ = stop.triggered() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let _ = self.refresh().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::Algorithm;

    use super::*;
    use crate::identity::jwt::tests::{EC, JwksServer, RSA1, public_jwk};

    fn settings(url: &str) -> JwksSettings {
        JwksSettings {
            issuer: "https://issuer.test".into(),
            source: Source::Url(url.into()),
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            refresh_interval: Duration::from_secs(60),
            min_refetch_interval: Duration::from_secs(30),
            max_stale: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(5),
            max_keys: 4,
            max_document_bytes: 64 * 1024,
        }
    }

    #[tokio::test]
    async fn keys_older_than_max_stale_are_dropped() {
        let srv = JwksServer::start(vec![public_jwk(RSA1, Algorithm::RS256, "k1")]).await;
        let jwks = Jwks::new(settings(&srv.url), reqwest::Client::new()).unwrap();
        assert!(jwks.keys().is_none(), "nothing before the first fetch");
        jwks.refresh().await.unwrap();
        assert!(jwks.keys().unwrap().get("k1").is_some());
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert!(jwks.keys().is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            jwks.keys().is_none(),
            "keys nobody could refresh for max_stale are not trusted"
        );
    }

    #[tokio::test]
    async fn key_sets_are_bounded_in_keys_and_bytes() {
        let many: Vec<_> = (0..50)
            .map(|i| public_jwk(EC, Algorithm::ES256, &format!("e{i}")))
            .collect();
        let srv = JwksServer::start(many).await;
        let jwks = Jwks::new(settings(&srv.url), reqwest::Client::new()).unwrap();
        jwks.refresh().await.unwrap();
        assert_eq!(
            jwks.keys().unwrap().len(),
            4,
            "at most max_keys keys are kept"
        );

        let mut huge = public_jwk(EC, Algorithm::ES256, "big");
        huge["pad"] = serde_json::json!("x".repeat(100 * 1024));
        *srv.doc.lock() = serde_json::json!({ "keys": [huge] });
        assert!(
            matches!(jwks.refresh().await, Err(JwksError::Fetch { .. })),
            "oversized document refused"
        );
        assert_eq!(jwks.keys().unwrap().len(), 4, "the last good set stays");

        *srv.doc.lock() = serde_json::json!({ "keys": "nope" });
        assert!(matches!(
            jwks.refresh().await,
            Err(JwksError::Invalid { .. })
        ));
        *srv.doc.lock() = serde_json::json!({ "keys": [{"kty": "oct", "k": "AAAA"}] });
        assert!(matches!(jwks.refresh().await, Err(JwksError::NoUsableKey)));
        assert_eq!(jwks.keys().unwrap().len(), 4);
    }

    #[test]
    fn the_key_decides_the_algorithm() {
        let all = [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256];
        let mut rsa = public_jwk(RSA1, Algorithm::RS256, "r");
        rsa.as_object_mut().unwrap().remove("alg");
        let set = KeySet::from_jwks(&[rsa.clone()], &all, 8).unwrap();
        assert_eq!(
            set.get("r").unwrap().algorithms,
            vec![Algorithm::RS256, Algorithm::PS256]
        );
        rsa["alg"] = serde_json::json!("ES256");
        assert!(
            KeySet::from_jwks(&[rsa.clone()], &all, 8).is_err(),
            "an RSA key claiming ES256 is unusable"
        );
        rsa["alg"] = serde_json::json!("RS512");
        assert!(
            KeySet::from_jwks(&[rsa], &all, 8).is_err(),
            "alg outside the allowlist"
        );
        let ec = public_jwk(EC, Algorithm::ES256, "e");
        let set = KeySet::from_jwks(&[ec], &[Algorithm::RS256], 8);
        assert!(set.is_err(), "ES256 not allowed for this issuer");
    }
}
