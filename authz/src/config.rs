//! The service's configuration file: sections, defaults, and the validation that runs before any
//! port is bound. The reference for operators is `docs/authz.md`.

use std::net::SocketAddr;

use serde::Deserialize;
use tollgate_common::config::{Errors, Validate, join};
use tollgate_server::ServerConfig;
use tollgate_server::telemetry::LogConfig;

use crate::admin::AdminConfig;
use crate::apikey::ApiKeysConfig;
use crate::identity::Method;
use crate::identity::introspection::IntrospectionConfig;
use crate::identity::jwt::JwtConfig;
use crate::policy::{PolicyConfig, check_methods_configured};

/// Default gRPC port (Envoy's ext_authz cluster points here).
pub const DEFAULT_GRPC_PORT: u16 = 9001;
/// Default side listener port (/healthz, /readyz, /metrics).
pub const DEFAULT_HTTP_PORT: u16 = 9091;

fn default_server() -> ServerConfig {
    ServerConfig::with_ports(DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT)
}

/// The whole `tollgate-authz` config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_server")]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    /// JWT bearer tokens; absent disables the `jwt` method.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Opaque tokens by RFC 7662 introspection; absent disables `introspection`.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
    /// API keys; absent disables `api_key`.
    #[serde(default)]
    pub api_keys: Option<ApiKeysConfig>,
    /// The admin HTTP API (needs `api_keys`); absent means no admin listener.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub headers: HeadersConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: default_server(),
            log: LogConfig::default(),
            policy: PolicyConfig::default(),
            jwt: None,
            introspection: None,
            api_keys: None,
            admin: None,
            headers: HeadersConfig::default(),
        }
    }
}

impl Config {
    /// The identity methods this config enables.
    pub fn methods(&self) -> Vec<Method> {
        let mut m = Vec::new();
        if self.jwt.is_some() {
            m.push(Method::Jwt);
        }
        if self.introspection.is_some() {
            m.push(Method::Introspection);
        }
        if self.api_keys.is_some() {
            m.push(Method::ApiKey);
        }
        m
    }

    /// The admin listener's address, when the admin API is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }
}

impl Validate for Config {
    fn validate(&self, at: &str, errors: &mut Errors) {
        self.server.validate(&join(at, "server"), errors);
        self.log.validate(&join(at, "log"), errors);
        self.policy.validate(&join(at, "policy"), errors);
        check_methods_configured(&self.policy, &self.methods(), &join(at, "policy"), errors);
        if let Some(j) = &self.jwt {
            j.validate(&join(at, "jwt"), errors);
        }
        if let Some(i) = &self.introspection {
            i.validate(&join(at, "introspection"), errors);
        }
        if let Some(k) = &self.api_keys {
            k.validate(&join(at, "api_keys"), errors);
        }
        if let Some(a) = &self.admin {
            a.validate(&join(at, "admin"), errors);
            if self.api_keys.is_none() {
                errors.push(
                    join(at, "admin"),
                    "the admin API manages API keys: configure `api_keys` too",
                );
            }
            if a.addr.port() != 0
                && (a.addr == self.server.grpc_addr || a.addr == self.server.http_addr)
            {
                errors.push(
                    join(at, "admin.addr"),
                    "must differ from the server's listeners",
                );
            }
        }
        self.headers.validate(&join(at, "headers"), errors);
        if let Some(k) = &self.api_keys
            && self
                .headers
                .all_names()
                .any(|n| n == k.header.to_ascii_lowercase())
        {
            // The credential would be overwritten (or stripped) before anyone saw it.
            errors.push(
                join(at, "headers"),
                "an identity header has the API key header's name",
            );
        }
    }
}

/// The `headers:` section: what the upstream receives on an allowed request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    #[serde(default = "h_subject")]
    pub subject: String,
    #[serde(default = "h_tenant")]
    pub tenant: String,
    #[serde(default = "h_plan")]
    pub plan: String,
    /// Space-separated scopes.
    #[serde(default = "h_scopes")]
    pub scopes: String,
    #[serde(default = "h_method")]
    pub method: String,
    #[serde(default = "h_key_id")]
    pub key_id: String,
    /// Token claims copied to headers: `{claim: header-name}`; dotted claim paths allowed.
    #[serde(default)]
    pub claims: std::collections::BTreeMap<String, String>,
    /// Strip the credential (Authorization bearer / API key header) before the upstream sees it.
    #[serde(default)]
    pub remove_credential: bool,
    /// Longest value sent; longer values are cut (at a character boundary).
    #[serde(default = "default_max_value")]
    pub max_value_bytes: usize,
}

fn h_subject() -> String {
    "x-tollgate-subject".into()
}
fn h_tenant() -> String {
    "x-tollgate-tenant".into()
}
fn h_plan() -> String {
    "x-tollgate-plan".into()
}
fn h_scopes() -> String {
    "x-tollgate-scopes".into()
}
fn h_method() -> String {
    "x-tollgate-auth-method".into()
}
fn h_key_id() -> String {
    "x-tollgate-key-id".into()
}
fn default_max_value() -> usize {
    1024
}

impl Default for HeadersConfig {
    fn default() -> Self {
        Self {
            subject: h_subject(),
            tenant: h_tenant(),
            plan: h_plan(),
            scopes: h_scopes(),
            method: h_method(),
            key_id: h_key_id(),
            claims: Default::default(),
            remove_credential: false,
            max_value_bytes: default_max_value(),
        }
    }
}

impl HeadersConfig {
    /// Every header name the service sets (and so always removes from the client's request).
    pub fn all_names(&self) -> impl Iterator<Item = String> + '_ {
        [
            &self.subject,
            &self.tenant,
            &self.plan,
            &self.scopes,
            &self.method,
            &self.key_id,
        ]
        .into_iter()
        .chain(self.claims.values())
        .map(|n| n.to_ascii_lowercase())
    }
}

/// RFC 9110 token characters, and not a pseudo-header or hop-by-hop name Envoy would refuse.
fn valid_header_name(n: &str) -> bool {
    !n.is_empty()
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !matches!(
            n.to_ascii_lowercase().as_str(),
            "host"
                | "authorization"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "te"
                | "upgrade"
        )
}

impl Validate for HeadersConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        let named = [
            ("subject", &self.subject),
            ("tenant", &self.tenant),
            ("plan", &self.plan),
            ("scopes", &self.scopes),
            ("method", &self.method),
            ("key_id", &self.key_id),
        ];
        let mut seen = std::collections::HashSet::new();
        for (field, name) in named
            .into_iter()
            .chain(self.claims.iter().map(|(k, v)| (k.as_str(), v)))
        {
            let path = if named.iter().any(|(f, _)| *f == field) {
                join(at, field)
            } else {
                join(&join(at, "claims"), field)
            };
            if !valid_header_name(name) {
                errors.push(path, format!("`{name}` is not an acceptable header name"));
            } else if !seen.insert(name.to_ascii_lowercase()) {
                errors.push(path, format!("`{name}` is used twice"));
            }
        }
        for claim in self.claims.keys() {
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                errors.push(
                    join(&join(at, "claims"), claim),
                    "expected a dotted claim path",
                );
            }
        }
        if !(16..=8192).contains(&self.max_value_bytes) {
            errors.push(join(at, "max_value_bytes"), "must be between 16 and 8192");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_common::config::{Sources, load};

    fn load_str(yaml: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("authz.yaml");
        std::fs::write(&p, yaml).unwrap();
        load::<Config>(&Sources {
            file: Some(p),
            ..Default::default()
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_a_deny_all_service() {
        let c = load_str("").unwrap();
        assert_eq!(c.server.grpc_addr.port(), DEFAULT_GRPC_PORT);
        assert!(c.methods().is_empty());
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = load_str(
            "policy:\n  rules:\n    - name: r\n      identity: [introspection]\njwt:\n  issuers:\n    - issuer: https://i\n      audiences: []\n      algorithms: [HS256]\nheaders:\n  subject: \"bad name\"\n",
        )
        .unwrap_err();
        for want in [
            "policy.rules[0].identity[0]: `introspection` is not configured",
            "jwt.issuers[0]: set exactly one",
            "jwt.issuers[0].audiences",
            "jwt.issuers[0].algorithms[0]: HMAC",
            "authz.yaml:11: headers.subject",
        ] {
            assert!(e.contains(want), "missing {want:?} in\n{e}");
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = load_str("jwt:\n  isuers: []\n").unwrap_err();
        assert!(e.contains("isuers"), "{e}");
    }
}
