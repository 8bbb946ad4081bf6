//! JWT bearer tokens: configuration of trusted issuers, and verification against each issuer's
//! keys with iss, aud, exp and nbf always checked, then a bounded cache of verified tokens.
//!
//! Safety by construction: the verification algorithm is the intersection of what the key allows
//! (its JWK `alg`, else its type) and the issuer's allowlist, and the token header only picks
//! among those. HMAC algorithms cannot be configured and `none` does not parse, so neither
//! "`none`" nor "HS256 signed with the RSA public key" can verify.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use tollgate_common::config::{Errors, Validate, join};

use super::cache::{IdentityCache, hash_token};
use super::jwks::{Jwks, JwksError, JwksSettings, KeyId, Source, VerifyKey};
use super::token_source::{TokenSource, TokenSourceConfig};
use super::{Clock, Identity, Method, Rejection, unix};
use crate::metrics;
use crate::reason::Reason;

/// The `jwt:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Tokens longer than this are rejected before any parsing.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Verified tokens kept (by SHA-256 of the token), each until its `exp` at the latest.
    #[serde(default = "default_cache_entries")]
    pub cache_max_entries: usize,
    /// Upper bound on how long a verified token is cached, whatever its `exp`.
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    pub cache_max_ttl: Duration,
    pub issuers: Vec<IssuerConfig>,
}

/// One trusted issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Must equal the token's `iss` exactly.
    pub issuer: String,
    /// Where the JWKS is. Exactly one of `jwks_url`, `discovery: true` or `keys`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Find `jwks_uri` in `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// Inline public JWKs.
    #[serde(default)]
    pub keys: Option<Vec<Value>>,
    /// The token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Asymmetric algorithms accepted from this issuer.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on exp and nbf.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Tokens without `exp` are rejected unless this is false.
    #[serde(default = "yes")]
    pub require_exp: bool,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// An unknown `kid` triggers at most one refetch per this interval.
    #[serde(default = "default_min_refetch", with = "humantime_serde")]
    pub min_refetch_interval: Duration,
    /// Keys not refreshed for this long are dropped (verification then fails closed).
    #[serde(default = "default_max_stale", with = "humantime_serde")]
    pub max_stale: Duration,
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub fetch_timeout: Duration,
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Which claims fill the identity.
    #[serde(default)]
    pub claims: ClaimMapping,
    /// Where this issuer's tokens may be, tried in order; default `Authorization: Bearer`.
    /// A token found in a place its issuer does not list is refused (401 invalid_token).
    #[serde(default)]
    pub token_sources: Option<Vec<TokenSourceConfig>>,
}

impl IssuerConfig {
    /// The validated token sources (the default when none are listed).
    pub fn sources(&self) -> Vec<TokenSource> {
        match &self.token_sources {
            None => vec![TokenSource::authorization()],
            Some(list) => {
                let mut ignored = Errors::default();
                list.iter()
                    .filter_map(|s| s.parse("", &mut ignored))
                    .collect()
            }
        }
    }
}

/// Claim names that fill the identity's fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimMapping {
    #[serde(default = "default_subject_claim")]
    pub subject: String,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub plan: Option<String>,
    /// Claims holding scopes: a space-separated string or a list; the first present is used.
    #[serde(default = "default_scope_claims")]
    pub scopes: Vec<String>,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            subject: default_subject_claim(),
            tenant: None,
            plan: None,
            scopes: default_scope_claims(),
        }
    }
}

fn default_max_token_bytes() -> usize {
    8 * 1024
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_cache_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_algorithms() -> Vec<Algorithm> {
    vec![
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ]
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn yes() -> bool {
    true
}
fn default_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_min_refetch() -> Duration {
    Duration::from_secs(30)
}
fn default_max_stale() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_keys() -> usize {
    32
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_scope_claims() -> Vec<String> {
    vec!["scope".into(), "scp".into()]
}

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// A token without `kid` is tried against at most this many keys.
const MAX_KIDLESS_CANDIDATES: usize = 4;

impl Validate for JwtConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        if !(256..=64 * 1024).contains(&self.max_token_bytes) {
            errors.push(join(at, "max_token_bytes"), "must be between 256 and 65536");
        }
        if self.issuers.is_empty() {
            errors.push(join(at, "issuers"), "must list at least one issuer");
        }
        let mut seen = HashMap::new();
        for (i, iss) in self.issuers.iter().enumerate() {
            let at = format!("{}[{i}]", join(at, "issuers"));
            if iss.issuer.is_empty() {
                errors.push(join(&at, "issuer"), "must not be empty");
            } else if let Some(prev) = seen.insert(iss.issuer.as_str(), i) {
                errors.push(join(&at, "issuer"), format!("duplicate of issuers[{prev}]"));
            }
            let sources = [iss.jwks_url.is_some(), iss.discovery, iss.keys.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            if sources != 1 {
                errors.push(
                    at.clone(),
                    "set exactly one of `jwks_url`, `discovery: true` or `keys`",
                );
            }
            if let Some(u) = &iss.jwks_url
                && !(u.starts_with("https://") || u.starts_with("http://"))
            {
                errors.push(join(&at, "jwks_url"), "must be an http(s) URL");
            }
            if iss.discovery
                && !(iss.issuer.starts_with("https://") || iss.issuer.starts_with("http://"))
            {
                errors.push(join(&at, "issuer"), "discovery needs an http(s) issuer URL");
            }
            if let Some(keys) = &iss.keys
                && let Err(e) =
                    super::jwks::KeySet::from_jwks(keys, &iss.algorithms, iss.max_keys.max(1))
            {
                errors.push(join(&at, "keys"), e.to_string());
            }
            if iss.audiences.is_empty() || iss.audiences.iter().any(String::is_empty) {
                errors.push(
                    join(&at, "audiences"),
                    "must list at least one non-empty audience",
                );
            }
            if iss.algorithms.is_empty() {
                errors.push(join(&at, "algorithms"), "must list at least one algorithm");
            }
            for (j, a) in iss.algorithms.iter().enumerate() {
                if matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                    errors.push(
                        format!("{}[{j}]", join(&at, "algorithms")),
                        "HMAC algorithms are not accepted: a shared secret cannot come from a key set",
                    );
                }
            }
            if iss.leeway > Duration::from_secs(300) {
                errors.push(join(&at, "leeway"), "at most 5m");
            }
            if iss.refresh_interval < Duration::from_secs(1) {
                errors.push(join(&at, "refresh_interval"), "at least 1s");
            }
            if iss.fetch_timeout.is_zero() {
                errors.push(join(&at, "fetch_timeout"), "must be positive");
            }
            if iss.max_stale < iss.refresh_interval {
                errors.push(join(&at, "max_stale"), "must be at least refresh_interval");
            }
            if iss.max_keys == 0 || iss.max_keys > 1000 {
                errors.push(join(&at, "max_keys"), "must be between 1 and 1000");
            }
            if iss.claims.subject.is_empty() {
                errors.push(join(&at, "claims.subject"), "must not be empty");
            }
            if let Some(sources) = &iss.token_sources {
                let at = join(&at, "token_sources");
                if sources.is_empty() {
                    errors.push(&at, "must list at least one source (or be left out)");
                }
                let mut seen = Vec::new();
                for (j, s) in sources.iter().enumerate() {
                    let at = format!("{at}[{j}]");
                    if let Some(parsed) = s.parse(&at, errors) {
                        if seen.contains(&parsed) {
                            errors.push(at, "listed twice");
                        }
                        seen.push(parsed);
                    }
                }
            }
        }
    }
}

struct Issuer {
    issuer: String,
    jwks: Arc<Jwks>,
    /// One prepared validation per allowed algorithm (no allocation per token).
    validations: HashMap<Algorithm, Validation>,
    leeway: u64,
    require_exp: bool,
    claims: ClaimMapping,
}

/// Verifies JWTs of the configured issuers.
pub struct JwtVerifier {
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    /// Shared with each issuer's key set, which drops the entries of keys it withdraws.
    cache: Arc<IdentityCache>,
    cache_max_ttl: Duration,
    max_token_bytes: usize,
    clock: Clock,
    lookups: metrics::CacheCounters,
}

/// The claims needed before the signature is checked: which issuer's keys to use.
#[derive(Deserialize)]
struct Unverified {
    iss: Option<String>,
}

impl JwtVerifier {
    /// Builds the verifier; remote key sets start empty until [`JwtVerifier::spawn_refresh`]
    /// (or a first token) fetches them.
    pub fn new(
        cfg: &JwtConfig,
        http: reqwest::Client,
        clock: Clock,
    ) -> Result<JwtVerifier, JwksError> {
        if !super::crypto::install() {
            tracing::warn!("another JWT crypto provider was installed first; using it");
        }
        let mut issuers = Vec::with_capacity(cfg.issuers.len());
        let mut by_iss = HashMap::new();
        let cache = Arc::new(IdentityCache::new(cfg.cache_max_entries));
        for (i, ic) in cfg.issuers.iter().enumerate() {
            let source = match (&ic.jwks_url, &ic.keys) {
                (Some(u), _) => Source::Url(u.clone()),
                (None, Some(k)) => Source::Inline(k.clone()),
                (None, None) => Source::Discovery,
            };
            let jwks = Jwks::new(
                JwksSettings {
                    issuer: ic.issuer.clone(),
                    source,
                    algorithms: ic.algorithms.clone(),
                    refresh_interval: ic.refresh_interval,
                    min_refetch_interval: ic.min_refetch_interval,
                    max_stale: ic.max_stale,
                    fetch_timeout: ic.fetch_timeout,
                    max_keys: ic.max_keys,
                    max_document_bytes: MAX_DOCUMENT_BYTES,
                },
                http.clone(),
            )?;
            let withdrawn = cache.clone();
            jwks.on_withdrawn(Box::new(move |keys| withdrawn.forget_verified_by(keys)));
            let mut validations = HashMap::new();
            for &alg in &ic.algorithms {
                let mut v = Validation::new(alg);
                // exp/nbf are checked against the injected clock below; the library checks the
                // signature, iss and aud, and that they are present.
                v.validate_exp = false;
                v.validate_nbf = false;
                v.leeway = 0;
                let mut required = vec!["iss", "aud"];
                if ic.require_exp {
                    required.push("exp");
                }
                v.set_required_spec_claims(&required);
                v.set_issuer(&[&ic.issuer]);
                v.set_audience(&ic.audiences);
                validations.insert(alg, v);
            }
            by_iss.insert(ic.issuer.clone(), i);
            issuers.push(Issuer {
                issuer: ic.issuer.clone(),
                jwks,
                validations,
                leeway: ic.leeway.as_secs(),
                require_exp: ic.require_exp,
                claims: ic.claims.clone(),
            });
        }
        Ok(JwtVerifier {
            issuers,
            by_iss,
            cache,
            cache_max_ttl: cfg.cache_max_ttl,
            max_token_bytes: cfg.max_token_bytes,
            clock,
            lookups: metrics::CacheCounters::new("jwt"),
        })
    }

    /// Starts one background refresher per remote issuer, stopping when `stop` resolves.
    pub fn spawn_refresh(&self, stop: tollgate_common::Shutdown) {
        for iss in &self.issuers {
            tokio::spawn(iss.jwks.clone().refresh_loop(stop.clone()));
        }
    }

    /// Fetches every remote issuer's keys once; returns the issuers that failed.
    /// All issuers in parallel, each bounded by its `fetch_timeout` (twice with discovery).
    pub async fn refresh_all(&self) -> Vec<(String, JwksError)> {
        let results =
            futures::future::join_all(self.issuers.iter().map(|iss| iss.jwks.refresh())).await;
        self.issuers
            .iter()
            .zip(results)
            .filter_map(|(iss, r)| r.err().map(|e| (iss.issuer.clone(), e)))
            .collect()
    }

    /// Whether `token` has the shape of a JWS compact serialisation (three base64url parts),
    /// which is how the JWT method recognises a bearer token as its own.
    pub fn looks_like_jwt(token: &str) -> bool {
        // Per byte: 0 not allowed, 1 base64url, 2 the dot (one lookup per byte: a token is
        // scanned on every request).
        const CLASS: [u8; 256] = {
            let mut t = [0u8; 256];
            let mut c = 0;
            while c < 256 {
                let b = c as u8;
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    t[c] = 1;
                }
                c += 1;
            }
            t[b'.' as usize] = 2;
            t
        };
        let mut dots = 0;
        for b in token.bytes() {
            match CLASS[usize::from(b)] {
                0 => return false,
                2 => dots += 1,
                _ => {}
            }
        }
        dots == 2
    }

    /// Verifies a token, answering from the cache when it was verified before and has not expired.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, Rejection> {
        if token.len() > self.max_token_bytes {
            return Err(Rejection::Invalid(Reason::TokenTooLarge));
        }
        let now = self.clock.now();
        let key = hash_token(token);
        if let Some(id) = self.cache.get(&key, now) {
            self.lookups.hit();
            return Ok(id);
        }
        self.lookups.miss();
        // Boxed: the miss path (a signature check, maybe a key-set fetch) is rare, and inline
        // its state would make every Check's future, moved on each poll's way in, 1.3 KB larger.
        let (identity, exp, verified_by) = Box::pin(self.verify_uncached(token, now)).await?;
        let identity = Arc::new(identity);
        let until = match exp {
            Some(exp) => (now + self.cache_max_ttl).min(exp),
            None => now + self.cache_max_ttl,
        };
        self.cache
            .insert(key, identity.clone(), Some(verified_by), until, now);
        Ok(identity)
    }

    async fn verify_uncached(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<(Identity, Option<SystemTime>, KeyId), Rejection> {
        const MALFORMED: Rejection = Rejection::Invalid(Reason::Malformed);
        if !Self::looks_like_jwt(token) {
            return Err(MALFORMED);
        }
        // An unknown or `none` alg fails here: the header type only has asymmetric and HMAC
        // algorithms, and HMAC never matches a loaded key.
        let header = jsonwebtoken::decode_header(token).map_err(|_| MALFORMED)?;
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: extensions we do not understand must be rejected.
            return Err(Rejection::Invalid(Reason::UnsupportedCrit));
        }
        let unverified: Unverified =
            jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| MALFORMED)?;
        let iss = unverified
            .iss
            .ok_or(Rejection::Invalid(Reason::MissingIss))?;
        let issuer = self
            .by_iss
            .get(&iss)
            .map(|&i| &self.issuers[i])
            .ok_or(Rejection::Invalid(Reason::UnknownIssuer))?;
        let validation = issuer
            .validations
            .get(&header.alg)
            .ok_or(Rejection::Invalid(Reason::AlgorithmNotAllowed))?;

        let (claims, verified_by) = match header.kid.as_deref() {
            Some(kid) => {
                let vk = self.key_for(issuer, kid).await?;
                if !vk.algorithms.contains(&header.alg) {
                    return Err(Rejection::Invalid(Reason::AlgorithmNotAllowed));
                }
                (decode(token, &vk, validation)?, vk.id)
            }
            None => {
                let keys = match issuer.jwks.keys() {
                    Some(k) => k,
                    None => {
                        issuer.jwks.refetch_for_unknown_kid().await;
                        issuer
                            .jwks
                            .keys()
                            .ok_or(Rejection::Unavailable(Reason::NoKeys))?
                    }
                };
                let mut last = Rejection::Invalid(Reason::UnknownKid);
                let mut found = None;
                for vk in keys.without_kid(header.alg).take(MAX_KIDLESS_CANDIDATES) {
                    match decode(token, vk, validation) {
                        Ok(c) => {
                            found = Some((c, vk.id));
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                found.ok_or(last)?
            }
        };
        let (identity, exp) = self.identity(issuer, claims, now)?;
        Ok((identity, exp, verified_by))
    }

    async fn key_for(&self, issuer: &Issuer, kid: &str) -> Result<Arc<VerifyKey>, Rejection> {
        if let Some(keys) = issuer.jwks.keys()
            && let Some(k) = keys.get(kid)
        {
            return Ok(k.clone());
        }
        issuer.jwks.refetch_for_unknown_kid().await;
        match issuer.jwks.keys() {
            Some(keys) => keys
                .get(kid)
                .cloned()
                .ok_or(Rejection::Invalid(Reason::UnknownKid)),
            None => Err(Rejection::Unavailable(Reason::NoKeys)),
        }
    }

    fn identity(
        &self,
        issuer: &Issuer,
        claims: Map<String, Value>,
        now: SystemTime,
    ) -> Result<(Identity, Option<SystemTime>), Rejection> {
        let now_s = unix(now);
        let exp = match claims.get("exp") {
            Some(v) => Some(numeric_date(v).ok_or(Rejection::Invalid(Reason::MalformedExp))?),
            None if issuer.require_exp => return Err(Rejection::Invalid(Reason::MissingExp)),
            None => None,
        };
        if let Some(exp) = exp
            && exp.saturating_add(issuer.leeway) <= now_s
        {
            return Err(Rejection::Invalid(Reason::Expired));
        }
        if let Some(v) = claims.get("nbf") {
            let nbf = numeric_date(v).ok_or(Rejection::Invalid(Reason::MalformedNbf))?;
            if nbf > now_s.saturating_add(issuer.leeway) {
                return Err(Rejection::Invalid(Reason::NotYetValid));
            }
        }
        let subject = match claims.get(&issuer.claims.subject) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(Rejection::Invalid(Reason::MissingSubject)),
        };
        let str_claim = |name: &Option<String>| match name.as_ref().and_then(|n| claims.get(n)) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let tenant = str_claim(&issuer.claims.tenant);
        let plan = str_claim(&issuer.claims.plan);
        let scopes = issuer
            .claims
            .scopes
            .iter()
            .find_map(|c| claims.get(c))
            .map(scopes_of)
            .unwrap_or_default();
        // Cache no longer than the token's own exp (leeway only forgives clock skew at the edge).
        let exp_at = exp.map(|e| SystemTime::UNIX_EPOCH + Duration::from_secs(e));
        let mut id = Identity::new(Method::Jwt, subject);
        id.issuer = Some(issuer.issuer.clone());
        id.tenant = tenant;
        id.plan = plan;
        id.scopes = scopes;
        id.expires_at = exp_at;
        id.claims = claims;
        Ok((id, exp_at))
    }
}

fn decode(
    token: &str,
    vk: &VerifyKey,
    validation: &Validation,
) -> Result<Map<String, Value>, Rejection> {
    use jsonwebtoken::errors::ErrorKind;
    match jsonwebtoken::decode::<Map<String, Value>>(token, &vk.key, validation) {
        Ok(d) => Ok(d.claims),
        Err(e) => Err(Rejection::Invalid(match e.kind() {
            ErrorKind::InvalidSignature => Reason::BadSignature,
            ErrorKind::InvalidAudience => Reason::WrongAudience,
            ErrorKind::InvalidIssuer => Reason::WrongIssuer,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => Reason::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) if c == "exp" => Reason::MissingExp,
            ErrorKind::InvalidAlgorithm => Reason::AlgorithmNotAllowed,
            _ => Reason::Malformed,
        })),
    }
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, possibly fractional; negatives rejected.
fn numeric_date(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    if let Some(u) = n.as_u64() {
        return Some(u);
    }
    let f = n.as_f64()?;
    (f.is_finite() && f >= 0.0).then_some(f as u64)
}

/// Scopes from a space-separated string or a list of strings.
pub fn scopes_of(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
pub(crate) mod tests;
