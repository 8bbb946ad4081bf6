//! The service's configuration file: sections, defaults, and the validation that runs before any
//! port is bound. The reference for operators is `docs/authz.md`.

use std::net::SocketAddr;

use serde::Deserialize;
use tollgate_common::config::{Defaults, Errors, Validate, join};
use tollgate_server::ServerConfig;
use tollgate_server::telemetry::LogConfig;

use crate::admin::AdminConfig;
use crate::apikey::{ApiKeysConfig, KeyStoreConfig};
use crate::http_check::HttpAuthzConfig;
use crate::identity::Method;
use crate::identity::introspection::IntrospectionConfig;
use crate::identity::jwt::JwtConfig;
use crate::identity::mtls::MtlsConfig;
use crate::limit::RateLimitSection;
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
    /// Client certificates the proxy verified; absent disables `mtls`.
    #[serde(default)]
    pub mtls: Option<MtlsConfig>,
    /// API keys; absent disables `api_key`.
    #[serde(default)]
    pub api_keys: Option<ApiKeysConfig>,
    /// The admin HTTP API (needs `api_keys`); absent means no admin listener.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    #[serde(default)]
    pub headers: HeadersConfig,
    /// Single-call mode: the rate-limit engine in the Check; absent, Envoy's ratelimit filter
    /// (and tollgate-ratelimit) does the limiting.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSection>,
    /// The HTTP ext_authz listener (Envoy's `http_service`); absent means gRPC only.
    #[serde(default)]
    pub http_authz: Option<HttpAuthzConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: default_server(),
            log: LogConfig::default(),
            policy: PolicyConfig::default(),
            jwt: None,
            introspection: None,
            mtls: None,
            api_keys: None,
            admin: None,
            headers: HeadersConfig::default(),
            rate_limit: None,
            http_authz: None,
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
        if self.mtls.is_some() {
            m.push(Method::Mtls);
        }
        m
    }

    /// The admin listener's address, when the admin API is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.addr)
    }
}

/// The `server:` ports are this service's even when the file sets only some fields.
impl Defaults for Config {
    fn defaults() -> serde_yaml::Value {
        ServerConfig::default_ports(DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT)
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
        if let Some(m) = &self.mtls {
            m.validate(&join(at, "mtls"), errors);
        }
        if let Some(k) = &self.api_keys {
            k.validate(&join(at, "api_keys"), errors);
            check_key_store(&k.store, &join(&join(at, "api_keys"), "store"), errors);
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
        match &self.rate_limit {
            Some(r) => r.validate(&join(at, "rate_limit"), errors),
            None => {
                let p = &self.policy;
                if !p.rate_limits.is_empty() || p.rules.iter().any(|r| r.rate_limits.is_some()) {
                    errors.push(
                        join(at, "policy"),
                        "`rate_limits` need the `rate_limit` section (single-call mode)",
                    );
                }
            }
        }
        if let Some(h) = &self.http_authz {
            self.validate_http_authz(h, &join(at, "http_authz"), errors);
        }
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

impl Config {
    /// The HTTP listener's own checks, and what its flavour cannot carry.
    fn validate_http_authz(&self, h: &HttpAuthzConfig, at: &str, errors: &mut Errors) {
        h.validate(at, errors);
        let taken = [Some(self.server.grpc_addr), Some(self.server.http_addr)]
            .into_iter()
            .chain([self.admin_addr()]);
        if h.addr.port() != 0 && taken.flatten().any(|a| a == h.addr) {
            errors.push(join(at, "addr"), "must differ from the other listeners");
        }
        if let Some(k) = &self.api_keys
            && k.query_param.is_some()
            && self.headers.remove_credential
        {
            // Envoy's HTTP flavour has no way to drop a query parameter: the upstream would
            // see the key the config says it must not.
            errors.push(
                at.to_string(),
                "HTTP ext_authz cannot remove a query parameter: with `api_keys.query_param` \
                 set, `headers.remove_credential` cannot be honoured (use the gRPC listener, \
                 or keys in a header only)",
            );
        }
        for name in self.headers.all_names() {
            if HttpAuthzConfig::reserved(&name) {
                errors.push(
                    join(at, "headers"),
                    format!("`{name}` means something else to Envoy's HTTP ext_authz"),
                );
            }
        }
    }
}

/// What opening the key store at start would refuse, short of connecting to it: an embedded
/// database path that is not a file or cannot be created.
fn check_key_store(store: &KeyStoreConfig, at: &str, errors: &mut Errors) {
    match store {
        // Every Redis URL is checked by the store section's own validation.
        KeyStoreConfig::Redis(_) => {}
        KeyStoreConfig::Embedded(e) if errors.checks_files() && !e.path.as_os_str().is_empty() => {
            let problem = if e.path.exists() {
                (!e.path.is_file()).then(|| format!("{} is not a file", e.path.display()))
            } else {
                // Created at start, with its missing directories, under the nearest that exists.
                e.path
                    .ancestors()
                    .skip(1)
                    .find(|d| d.as_os_str().is_empty() || d.exists())
                    .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
                    .map(|d| format!("cannot be created: {} is not a directory", d.display()))
            };
            if let Some(p) = problem {
                errors.push(join(at, "path"), p);
            }
        }
        KeyStoreConfig::Embedded(_) => {}
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
    /// Lists are joined with `,`, with `%` and `,` inside an element percent-encoded.
    #[serde(default)]
    pub claims: std::collections::BTreeMap<String, String>,
    /// Strip the credential (Authorization bearer / API key header) before the upstream sees it.
    #[serde(default)]
    pub remove_credential: bool,
    /// Longest value sent. A longer one is refused with the credential (401), never cut: a cut
    /// value could be a prefix that names someone else.
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
            let first = claim.split('.').next().unwrap_or_default();
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                errors.push(
                    join(&join(at, "claims"), claim),
                    "expected a dotted claim path",
                );
            } else if crate::policy::IDENTITY_FIELDS.contains(&first) {
                // Policy conditions on `tenant` test the identity's tenant; a header copied
                // from a raw `tenant` claim could tell the upstream something else.
                errors.push(
                    join(&join(at, "claims"), claim),
                    format!(
                        "`{first}` is the identity's own {first}, already sent as headers.{first}"
                    ),
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
        // Nothing unauthenticated listens beyond this machine unless the config says so.
        assert!(c.server.grpc_addr.ip().is_loopback() && c.server.http_addr.ip().is_loopback());
        assert!(c.methods().is_empty());
    }

    #[test]
    fn the_rate_limit_section_is_the_limiters_with_a_domain() {
        let c = load_str(
            "rate_limit:\n  domain: edge\n  store: {type: memory}\n  failure_mode: allow\npolicy:\n  rate_limits:\n    - actions: [{remote_address: {}}]\n",
        )
        .unwrap();
        let r = c.rate_limit.unwrap();
        assert_eq!(r.domain, "edge");
        assert_eq!(r.limiter.failure_mode, tollgate_limiter::FailureMode::Allow);

        let e = load_str("rate_limit:\n  domain: edge\n  limts: {path: /x}\n").unwrap_err();
        assert!(
            e.contains("authz.yaml:3: rate_limit.limts: unknown field"),
            "{e}"
        );
        let e = load_str("rate_limit:\n  store: {type: memory}\n").unwrap_err();
        assert!(e.contains("domain"), "{e}");
        let e = load_str("rate_limit:\n  domain: ''\n  near_limit_ratio: 2\n").unwrap_err();
        assert!(
            e.contains("rate_limit.domain") && e.contains("rate_limit.near_limit_ratio"),
            "{e}"
        );
        // Descriptors without the engine would be silently ignored: refused instead.
        let e = load_str(
            "policy:\n  rules:\n    - name: r\n      public: true\n      rate_limits: [{actions: [{remote_address: {}}]}]\n",
        )
        .unwrap_err();
        assert!(e.contains("need the `rate_limit` section"), "{e}");
        let e = load_str(
            "rate_limit: {domain: d}\npolicy:\n  rules:\n    - name: r\n      public: true\n      rate_limits:\n        - actions: [{request_headers: {header_name: x}}]\n",
        )
        .unwrap_err();
        assert!(
            e.contains("policy.rules[0].rate_limits[0].actions[0]"),
            "{e}"
        );
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

    fn load_env(
        yaml: &str,
        env: &[(&str, &str)],
        skip_file_checks: bool,
    ) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("authz.yaml");
        std::fs::write(&p, yaml).unwrap();
        load::<Config>(&Sources {
            file: Some(p),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            skip_file_checks,
            ..Default::default()
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_partial_server_section_keeps_this_services_ports() {
        let c = load_str("server:\n  grpc_addr: 127.0.0.1:7000\n").unwrap();
        assert_eq!(c.server.grpc_addr.port(), 7000);
        assert_eq!(c.server.http_addr.port(), DEFAULT_HTTP_PORT);
        let c = load_str("server:\n  shutdown_delay: 1s\n").unwrap();
        assert_eq!(c.server.grpc_addr.port(), DEFAULT_GRPC_PORT);
        assert_eq!(c.server.http_addr.port(), DEFAULT_HTTP_PORT);
        let c = load_env(
            "",
            &[("TOLLGATE_SERVER__HTTP_ADDR", "127.0.0.1:7001")],
            false,
        )
        .unwrap();
        assert_eq!(c.server.grpc_addr.port(), DEFAULT_GRPC_PORT);
        assert_eq!(c.server.http_addr.port(), 7001);
    }

    #[test]
    fn what_serve_refuses_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "short\n").unwrap();
        let missing = dir.path().join("missing");
        let keys = "api_keys: {store: {type: embedded, path: /tmp/x.redb}}\n";
        let admin = |extra: &str| format!("{keys}admin:\n  addr: 127.0.0.1:0\n{extra}");

        let e = load_env(&admin(""), &[], false).unwrap_err();
        assert!(e.contains("authz.yaml:2: admin: needs a bearer credential: set admin.token_file or the environment variable TOLLGATE_ADMIN_TOKEN"), "{e}");
        let e = load_env(&admin(""), &[("TOLLGATE_ADMIN_TOKEN", "short")], false).unwrap_err();
        assert!(
            e.contains(
                "the environment variable TOLLGATE_ADMIN_TOKEN is shorter than 16 characters"
            ),
            "{e}"
        );
        assert!(
            load_env(
                &admin(""),
                &[("TOLLGATE_ADMIN_TOKEN", "a-long-enough-admin-token")],
                false
            )
            .is_ok()
        );
        let e = load_env(
            &admin(&format!("  token_file: {}\n", short.display())),
            &[],
            false,
        )
        .unwrap_err();
        assert!(e.contains("authz.yaml:4: admin.token_file: the credential in the file is shorter than 16 characters"), "{e}");
        let with_missing = admin(&format!("  token_file: {}\n", missing.display()));
        let e = load_env(&with_missing, &[], false).unwrap_err();
        assert!(
            e.contains("authz.yaml:4: admin.token_file: cannot read"),
            "{e}"
        );
        // Away from the pod the file is not there: not checked, and not required from the env.
        assert!(load_env(&with_missing, &[], true).is_ok());
        // The debug credential the same way.
        let e = load_env("server:\n  debug: {pprof: true}\n", &[], true).unwrap_err();
        assert!(e.contains("server.debug: needs a bearer credential"), "{e}");
        // Key store settings the store would refuse when opened.
        let e = load_env(
            "api_keys:\n  store: {type: redis, url: \"redis://:pw@[::1\"}\n",
            &[],
            false,
        )
        .unwrap_err();
        assert!(
            e.contains("api_keys.store.url: not a valid Redis URL"),
            "{e}"
        );
        assert!(!e.contains("pw"), "{e}");
        let file = short.display().to_string();
        let e = load_env(
            &format!("api_keys:\n  store: {{type: embedded, path: {file}/keys.redb}}\n"),
            &[],
            false,
        )
        .unwrap_err();
        assert!(
            e.contains(&format!(
                "api_keys.store.path: cannot be created: {file} is not a directory"
            )),
            "{e}"
        );
        let e = load_env(
            &format!(
                "api_keys:\n  store: {{type: embedded, path: {}}}\n",
                dir.path().display()
            ),
            &[],
            false,
        )
        .unwrap_err();
        assert!(e.contains("is not a file"), "{e}");
    }

    #[test]
    fn claim_headers_cannot_shadow_identity_fields() {
        let e = load_str("headers:\n  claims: {tenant: x-raw-tenant, plan.x: x-p, org: x-org}\n")
            .unwrap_err();
        assert!(
            e.contains("headers.claims.tenant: `tenant` is the identity's own tenant"),
            "{e}"
        );
        assert!(e.contains("headers.claims.plan.x: `plan`"), "{e}");
        assert!(!e.contains("headers.claims.org"), "{e}");
    }

    /// The first ```yaml block after `heading` in docs/authz.md.
    fn doc_example(heading: &str) -> String {
        let doc = include_str!("../../docs/authz.md");
        let at = doc.find(heading).expect("heading in docs/authz.md");
        let start = doc[at..].find("```yaml\n").unwrap() + at + "```yaml\n".len();
        let end = doc[start..].find("```").unwrap() + start;
        doc[start..end].to_string()
    }

    #[test]
    fn the_documented_examples_load() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin-token");
        std::fs::write(&token, "doc-example-admin-credential-0123").unwrap();
        let complete = doc_example("## A complete example")
            .replace("/run/secrets/admin-token", &token.display().to_string())
            .replace(
                "/var/lib/tollgate/keys.redb",
                &dir.path().join("keys.redb").display().to_string(),
            );
        let c = load_str(&complete).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.policy.rules.len(), 4);
        // The policy block of the `policy` section, with the methods it names.
        let policy = format!(
            "{}api_keys:\n  store: {{type: embedded, path: {}}}\njwt: {{issuers: [{{issuer: https://i, discovery: true, audiences: [a]}}]}}\n",
            doc_example("## `policy`"),
            dir.path().join("k2.redb").display()
        );
        load_str(&policy).unwrap_or_else(|e| panic!("{e}"));
        let headers = doc_example("## `headers`");
        load_str(&headers).unwrap_or_else(|e| panic!("{e}"));
        // Single-call mode: the section alone, then the descriptors with it.
        let section = doc_example("## Single-call mode");
        let c = load_str(&section).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.rate_limit.unwrap().domain, "gateway");
        let descriptors = format!(
            "{section}{}jwt: {{issuers: [{{issuer: https://i, discovery: true, audiences: [a]}}]}}\n",
            doc_example("**Descriptors** come from")
        );
        let c = load_str(&descriptors).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.policy.rate_limits.len(), 2);
        let mtls = doc_example("## `mtls`");
        let c = load_str(&mtls).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.methods(), [Method::Mtls]);
        // The policy of "One policy in four products".
        let compared = doc_example("### Tollgate");
        let c = load_str(&compared).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            c.policy.rules[0].conditions[0].cel.as_deref(),
            Some(e) if e.contains("claims.org == \"acme\"")
        ));
        let http = load_str(&doc_example("## HTTP mode")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(http.http_authz.unwrap().path_prefix, "/check");
    }

    #[test]
    fn cel_errors_name_file_line_and_expression() {
        let e = load_str(
            "api_keys:\n  store: {type: embedded, path: /tmp/tollgate-cel-test.redb}\npolicy:\n  rules:\n    - name: a\n      conditions:\n        - cel: request.method ==\n    - name: b\n      conditions:\n        - scope: x\n        - cel: 'user.name == \"x\"'\n        - cel: claims.org == 'acme'\n          scope: y\n    - name: c\n      conditions:\n        - cel: identity.cert.spiffe == 'x'\n",
        )
        .unwrap_err();
        for want in [
            "authz.yaml:7: policy.rules[0].conditions[0].cel: syntax error at line 1 column",
            "in `request.method ==`",
            "authz.yaml:11: policy.rules[1].conditions[1].cel: unknown variable `user` (known: request, identity, claims), in `user.name == \"x\"`",
            "authz.yaml:12: policy.rules[1].conditions[2]: a `cel` condition takes no",
            "authz.yaml:16: policy.rules[2].conditions[0].cel: `identity.cert` has no field `spiffe` (fields: subject, principal, fingerprint, dns, uris, emails, spiffe_id), in `identity.cert.spiffe == 'x'`",
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
