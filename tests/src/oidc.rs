//! The OAuth2/OIDC provider (`tests/oidc/server.js`, over npm `oidc-provider`), spawned per test.
//!
//! The provider generates its keys at start (two RSA keys and one EC P-256 key, RS256 tokens
//! signed with the first) and knows four confidential clients, all allowed the
//! client-credentials grant with scopes `read write admin`:
//!
//! | client | may introspect |
//! |---|---|
//! | [`INTROSPECTOR`] (`tollgate-introspector`) | yes: the resource server's identity |
//! | [`APP_GOLD`], [`APP_SILVER`], [`TEST_CLIENT`] | no: introspection answers `active: false` |
//!
//! Access tokens live 10 minutes. Their format follows the `resource` parameter:
//! [`API_RESOURCE`] gives an RS256 JWT (`typ: at+jwt`, `aud` = the resource, `sub` and
//! `client_id` = the client), [`ES256_RESOURCE`] an ES256 JWT, [`OPAQUE_RESOURCE`] or no resource
//! an opaque token that RFC 7662 introspection describes (audience [`OPAQUE_RESOURCE`]).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tempfile::TempDir;

use crate::paths::{node_bin, project_root};
use crate::process::ChildProcess;

/// A client registered at the provider. The secrets are fixtures of `tests/oidc/server.js`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OidcClient {
    /// The `client_id`.
    pub id: &'static str,
    /// The `client_secret` (client_secret_basic or client_secret_post).
    pub secret: &'static str,
}

/// The only client allowed to introspect tokens: what Tollgate authenticates as.
pub const INTROSPECTOR: OidcClient = OidcClient {
    id: "tollgate-introspector",
    secret: "tollgate-introspector-secret-3f9c1a",
};
/// An application client (client credentials; `read write admin`).
pub const APP_GOLD: OidcClient = OidcClient {
    id: "app-gold",
    secret: "app-gold-secret-7d2e4b",
};
/// An application client (client credentials; `read write admin`).
pub const APP_SILVER: OidcClient = OidcClient {
    id: "app-silver",
    secret: "app-silver-secret-5a8f0c",
};
/// A client for tests that need one more identity (client credentials; `read write admin`).
pub const TEST_CLIENT: OidcClient = OidcClient {
    id: "tollgate-test",
    secret: "tollgate-test-secret-1b6d9e",
};

/// Resource indicator for which the provider issues RS256 JWT access tokens.
pub const API_RESOURCE: &str = "https://api.tollgate.test";
/// Resource indicator for which the provider issues ES256 JWT access tokens (the EC key).
pub const ES256_RESOURCE: &str = "https://es256.tollgate.test";
/// Resource indicator for opaque tokens; also the audience of tokens requested without one.
pub const OPAQUE_RESOURCE: &str = "https://opaque.tollgate.test";
/// Every scope a client may ask for.
pub const SCOPES: &str = "read write admin";
/// Lifetime of every access token the provider issues.
pub const TOKEN_TTL: Duration = Duration::from_secs(600);

/// How long the provider may take to answer discovery after spawning (node starts in ~0.5 s).
const START_DEADLINE: Duration = Duration::from_secs(20);

/// The endpoints the provider announces at `/.well-known/openid-configuration`.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
    token_endpoint: String,
    introspection_endpoint: String,
    revocation_endpoint: String,
}

/// A successful token endpoint answer.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    /// The access token (a JWT or an opaque string, depending on the resource).
    pub access_token: String,
    /// Seconds until expiry.
    pub expires_in: u64,
    /// The granted scopes, space separated (absent when none were granted).
    pub scope: Option<String>,
    /// Always `Bearer`.
    pub token_type: String,
}

/// A running provider; killed when dropped.
#[derive(Debug)]
pub struct OidcProvider {
    process: ChildProcess,
    addr: SocketAddr,
    discovery: Discovery,
    http: reqwest::Client,
    // Holds the log file; dropped after `process`, so the log outlives the child.
    _dir: TempDir,
}

impl OidcProvider {
    /// Starts a provider whose issuer is `http://127.0.0.1:<port>`.
    pub async fn start() -> anyhow::Result<OidcProvider> {
        Self::start_with_issuer_path("").await
    }

    /// Starts a provider whose issuer is `http://127.0.0.1:<port><issuer_path>` (e.g.
    /// `/realms/tollgate`); every endpoint lives under that path.
    pub async fn start_with_issuer_path(issuer_path: &str) -> anyhow::Result<OidcProvider> {
        let dir_path = project_root().join("tests/oidc");
        let server = dir_path.join("server.js");
        if !dir_path.join("node_modules/oidc-provider").is_dir() {
            bail!(
                "{} is missing its npm packages: run scripts/setup.sh",
                dir_path.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("tollgate-oidc-")
            .tempdir()?;
        let log = dir.path().join("oidc-provider.log");

        // Port 0: the server binds a kernel-chosen port and names it in its READY line, so two
        // tests never race for the same port.
        let mut cmd = Command::new(node_bin());
        cmd.arg(&server)
            .args(["--port", "0"])
            .current_dir(&dir_path);
        if !issuer_path.is_empty() {
            cmd.args(["--issuer-path", issuer_path]);
        }
        let mut process = ChildProcess::spawn("oidc-provider", cmd, &log)
            .with_context(|| format!("starting {}", server.display()))?;

        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;

        let end = tokio::time::Instant::now() + START_DEADLINE;
        let addr = loop {
            if let Some(addr) = ready_addr(&process.log()) {
                break addr;
            }
            if let Some(status) = process.exited() {
                bail!(
                    "oidc-provider exited ({status}) before READY:\n{}",
                    process.log()
                );
            }
            if tokio::time::Instant::now() > end {
                bail!(
                    "oidc-provider not READY after {START_DEADLINE:?}:\n{}",
                    process.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };

        let url = format!("http://{addr}{issuer_path}/.well-known/openid-configuration");
        let discovery: Discovery = loop {
            match fetch_json(&http, &url).await {
                Ok(discovery) => break discovery,
                Err(err) if tokio::time::Instant::now() > end => {
                    return Err(err.context(format!("discovery at {url}:\n{}", process.log())));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };

        Ok(OidcProvider {
            process,
            addr,
            discovery,
            http,
            _dir: dir,
        })
    }

    /// The issuer (`iss` of every token), without a trailing slash.
    pub fn issuer(&self) -> String {
        self.discovery.issuer.clone()
    }

    /// The discovery document's URL.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.discovery.issuer)
    }

    /// Where the provider publishes its public keys.
    pub fn jwks_uri(&self) -> String {
        self.discovery.jwks_uri.clone()
    }

    /// The token endpoint (client credentials grant).
    pub fn token_endpoint(&self) -> String {
        self.discovery.token_endpoint.clone()
    }

    /// The RFC 7662 introspection endpoint.
    pub fn introspection_endpoint(&self) -> String {
        self.discovery.introspection_endpoint.clone()
    }

    /// The RFC 7009 revocation endpoint.
    pub fn revocation_endpoint(&self) -> String {
        self.discovery.revocation_endpoint.clone()
    }

    /// The loopback address the provider listens on (for an Envoy cluster, say).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Everything the provider wrote so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The published JWKS document.
    pub async fn jwks(&self) -> anyhow::Result<serde_json::Value> {
        fetch_json(&self.http, &self.discovery.jwks_uri).await
    }

    /// Obtains an access token with the client-credentials grant (client_secret_basic):
    /// a JWT for [`API_RESOURCE`] or [`ES256_RESOURCE`], an opaque token otherwise.
    pub async fn client_credentials(
        &self,
        client_id: &str,
        secret: &str,
        scope: &str,
        resource: Option<&str>,
    ) -> anyhow::Result<String> {
        Ok(self
            .token(client_id, secret, scope, resource)
            .await?
            .access_token)
    }

    /// Like [`Self::client_credentials`], with the whole token response.
    pub async fn token(
        &self,
        client_id: &str,
        secret: &str,
        scope: &str,
        resource: Option<&str>,
    ) -> anyhow::Result<TokenResponse> {
        let mut form = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            form.push(("scope", scope));
        }
        if let Some(resource) = resource {
            form.push(("resource", resource));
        }
        let response = self
            .http
            .post(&self.discovery.token_endpoint)
            .basic_auth(client_id, Some(secret))
            .form(&form)
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            bail!("token endpoint answered {status} for {client_id}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("token response {body}"))
    }

    /// Introspects `token` as [`INTROSPECTOR`]; the RFC 7662 answer (`active`, `scope`,
    /// `client_id`, `sub`, `exp`, `aud`, ...).
    pub async fn introspect(&self, token: &str) -> anyhow::Result<serde_json::Value> {
        self.introspect_as(INTROSPECTOR, token).await
    }

    /// Introspects `token` authenticating as `client`.
    pub async fn introspect_as(
        &self,
        client: OidcClient,
        token: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let response = self
            .http
            .post(&self.discovery.introspection_endpoint)
            .basic_auth(client.id, Some(client.secret))
            .form(&[("token", token)])
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            bail!("introspection answered {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Revokes `token` as `client` (its own tokens, or any token as [`INTROSPECTOR`]).
    pub async fn revoke(&self, client: OidcClient, token: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .post(&self.discovery.revocation_endpoint)
            .basic_auth(client.id, Some(client.secret))
            .form(&[("token", token)])
            .send()
            .await?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "revocation answered {status}: {}",
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
    }
}

/// The address in the server's `READY http://127.0.0.1:P` line, once it is complete.
fn ready_addr(log: &str) -> Option<SocketAddr> {
    log.split_inclusive('\n')
        .filter_map(|line| line.strip_suffix('\n'))
        .find_map(|line| line.strip_prefix("READY http://"))
        .and_then(|addr| addr.trim().parse().ok())
}

async fn fetch_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<T> {
    let response = http.get(url).send().await?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {url} answered {status}");
    }
    Ok(response.json().await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Decodes one base64url (unpadded) JWT segment into JSON.
    fn segment(part: &str) -> Value {
        let mut bits = 0u32;
        let mut nbits = 0;
        let mut bytes = Vec::new();
        for c in part.bytes() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'-' => 62,
                b'_' => 63,
                _ => panic!("not base64url: {part}"),
            };
            bits = (bits << 6) | u32::from(v);
            nbits += 6;
            if nbits >= 8 {
                nbits -= 8;
                bytes.push((bits >> nbits) as u8);
                bits &= (1 << nbits) - 1;
            }
        }
        serde_json::from_slice(&bytes).expect("JWT segment is JSON")
    }

    fn decode_jwt(token: &str) -> (Value, Value) {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "a JWS in compact form: {token}");
        (segment(parts[0]), segment(parts[1]))
    }

    #[test]
    fn ready_line_is_parsed_only_once_complete() {
        assert_eq!(ready_addr("READY http://127.0.0.1:41"), None);
        assert_eq!(
            ready_addr("READY http://127.0.0.1:41\n"),
            Some(([127, 0, 0, 1], 41).into())
        );
        assert_eq!(ready_addr("noise\n"), None);
    }

    #[tokio::test]
    async fn issues_jwt_and_opaque_tokens_and_introspects_them() {
        let op = OidcProvider::start().await.expect("provider starts");
        let issuer = op.issuer();
        assert_eq!(issuer, format!("http://{}", op.addr()));
        assert_eq!(op.jwks_uri(), format!("{issuer}/jwks"));

        let jwks = op.jwks().await.unwrap();
        let keys = jwks["keys"].as_array().unwrap();
        let ktys: Vec<&str> = keys.iter().map(|k| k["kty"].as_str().unwrap()).collect();
        assert_eq!(ktys, ["RSA", "RSA", "EC"]);
        assert!(
            keys.iter().all(|k| k.get("d").is_none()),
            "no private parts published"
        );

        // JWT for the API resource, signed with the first RSA key.
        let jwt = op
            .client_credentials(
                APP_GOLD.id,
                APP_GOLD.secret,
                "read write",
                Some(API_RESOURCE),
            )
            .await
            .unwrap();
        let (header, claims) = decode_jwt(&jwt);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["kid"], keys[0]["kid"]);
        assert_eq!(claims["iss"], issuer.as_str());
        assert_eq!(claims["aud"], API_RESOURCE);
        assert_eq!(claims["sub"], APP_GOLD.id);
        assert_eq!(claims["client_id"], APP_GOLD.id);
        assert_eq!(claims["scope"], "read write");
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert_eq!(lifetime, TOKEN_TTL.as_secs());

        let es = op.client_credentials(
            TEST_CLIENT.id,
            TEST_CLIENT.secret,
            "admin",
            Some(ES256_RESOURCE),
        );
        let (header, _) = decode_jwt(&es.await.unwrap());
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], keys[2]["kid"]);

        // Opaque token without a resource, introspected by the resource server's client.
        let opaque = op
            .client_credentials(APP_SILVER.id, APP_SILVER.secret, "read", None)
            .await
            .unwrap();
        assert_ne!(opaque.split('.').count(), 3, "not a JWT: {opaque}");
        let info = op.introspect(&opaque).await.unwrap();
        assert_eq!(info["active"], true, "{info}");
        assert_eq!(info["client_id"], APP_SILVER.id);
        assert_eq!(info["sub"], APP_SILVER.id);
        assert_eq!(info["scope"], "read");
        assert_eq!(info["aud"], OPAQUE_RESOURCE);
        assert_eq!(info["iss"], issuer.as_str());
        assert!(info["exp"].as_u64().is_some());

        // Other clients learn nothing; garbage and revoked tokens are inactive.
        assert_eq!(
            op.introspect_as(APP_GOLD, &opaque).await.unwrap()["active"],
            false
        );
        assert_eq!(op.introspect("garbage").await.unwrap()["active"], false);
        op.revoke(APP_SILVER, &opaque).await.unwrap();
        assert_eq!(op.introspect(&opaque).await.unwrap()["active"], false);

        let wrong = op
            .client_credentials(APP_GOLD.id, "wrong", "read", None)
            .await;
        assert!(wrong.unwrap_err().to_string().contains("invalid_client"));
        let unknown =
            op.client_credentials(APP_GOLD.id, APP_GOLD.secret, "", Some("https://x.test"));
        assert!(
            unknown
                .await
                .unwrap_err()
                .to_string()
                .contains("invalid_target")
        );

        assert!(
            !op.log().contains("WARNING"),
            "provider warned:\n{}",
            op.log()
        );
    }

    #[tokio::test]
    async fn issuer_path_prefixes_every_endpoint() {
        let op = OidcProvider::start_with_issuer_path("/realms/tollgate")
            .await
            .unwrap();
        let issuer = op.issuer();
        assert_eq!(issuer, format!("http://{}/realms/tollgate", op.addr()));
        assert!(op.token_endpoint().starts_with(&issuer));
        assert!(op.introspection_endpoint().starts_with(&issuer));
        let jwt = op
            .client_credentials(
                TEST_CLIENT.id,
                TEST_CLIENT.secret,
                "read",
                Some(API_RESOURCE),
            )
            .await
            .unwrap();
        assert_eq!(decode_jwt(&jwt).1["iss"], issuer.as_str());
    }
}
