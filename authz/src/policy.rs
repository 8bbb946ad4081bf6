//! Per-route policies: ordered rules matching host, path and method, each naming the identity
//! methods a route accepts and the conditions (scopes, claims) the caller must meet, or marking
//! the route public.
//!
//! Rules are compiled once (regexes included) from [`PolicyConfig`]; matching is pure and
//! allocation-free so that it can run on every Check.

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use tollgate_common::config::{Errors, Validate, join};

use crate::identity::{Identity, Method};

/// The `policy:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// What happens when no rule matches.
    #[serde(default)]
    pub no_match: NoMatch,
    /// The order in which identity methods are tried on a route that does not list its own.
    #[serde(default = "default_identity_order")]
    pub identity_order: Vec<Method>,
    /// Evaluated in order; the first rule that matches decides.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            no_match: NoMatch::Deny,
            identity_order: default_identity_order(),
            rules: Vec::new(),
        }
    }
}

fn default_identity_order() -> Vec<Method> {
    vec![Method::Jwt, Method::Introspection, Method::ApiKey]
}

/// The decision for a request no rule matched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoMatch {
    /// 403 (the safe default).
    #[default]
    Deny,
    /// Any identity method of `identity_order`, no conditions.
    Authenticated,
    /// Allowed without a credential.
    Public,
}

/// One rule of `policy.rules`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Names the rule in logs and in `context_extensions` (`tollgate.rule`).
    pub name: String,
    /// Exact host names or `*.suffix` wildcards, compared without case, port or trailing dot;
    /// empty matches any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path match on the path Envoy normalised; absent matches any path.
    #[serde(default)]
    pub path: Option<PathMatchConfig>,
    /// HTTP methods (upper case); empty matches any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Allowed without a credential.
    #[serde(default)]
    pub public: bool,
    /// Identity methods accepted here, in the order they are tried; default `policy.identity_order`.
    #[serde(default)]
    pub identity: Option<Vec<Method>>,
    /// All must hold for the request to be allowed.
    #[serde(default)]
    pub conditions: Vec<ConditionConfig>,
}

/// How a rule matches the path: exactly one of `exact`, `prefix` or `regex`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatchConfig {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    /// Anchored implicitly: the whole path must match.
    #[serde(default)]
    pub regex: Option<String>,
}

/// A condition on the caller's identity; exactly one of `scope` or `claim` (with one operator).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    /// The identity must carry this scope.
    #[serde(default)]
    pub scope: Option<String>,
    /// Dotted path into the token claims (`realm_access.roles`). `subject`, `tenant` and
    /// `plan` always name the identity's own fields (what its headers carry), never a raw
    /// claim of that name.
    #[serde(default)]
    pub claim: Option<String>,
    #[serde(default)]
    pub equals: Option<Value>,
    /// The claim (a list, or a space-separated string) contains this value.
    #[serde(default)]
    pub contains: Option<Value>,
    #[serde(default)]
    pub one_of: Option<Vec<Value>>,
}

impl Validate for PolicyConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        if self.identity_order.is_empty() {
            errors.push(join(at, "identity_order"), "must list at least one method");
        }
        if self.identity_order.contains(&Method::Anonymous) {
            errors.push(
                join(at, "identity_order"),
                "`anonymous` is not a credential; use `public: true`",
            );
        }
        let mut names = HashMap::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("{}[{i}]", join(at, "rules"));
            if r.name.is_empty() {
                errors.push(join(&at, "name"), "must not be empty");
            } else if let Some(prev) = names.insert(r.name.as_str(), i) {
                errors.push(join(&at, "name"), format!("duplicate of rules[{prev}]"));
            }
            for (j, h) in r.hosts.iter().enumerate() {
                if h.is_empty()
                    || (h.contains('*') && !(h.starts_with("*.") && h[2..].find('*').is_none()))
                {
                    errors.push(
                        format!("{}[{j}]", join(&at, "hosts")),
                        "expected a host name or `*.suffix`",
                    );
                }
            }
            if let Some(p) = &r.path {
                let set = [p.exact.is_some(), p.prefix.is_some(), p.regex.is_some()];
                if set.iter().filter(|b| **b).count() != 1 {
                    errors.push(
                        join(&at, "path"),
                        "set exactly one of `exact`, `prefix` or `regex`",
                    );
                }
                for (f, v) in [("exact", &p.exact), ("prefix", &p.prefix)] {
                    if v.as_ref().is_some_and(|v| !v.starts_with('/')) {
                        // Reported on `path` (which has a line even in flow style `{prefix: x}`).
                        errors.push(join(&at, "path"), format!("`{f}` must start with `/`"));
                    }
                }
                if let Some(re) = &p.regex
                    && let Err(e) = compile_path_regex(re)
                {
                    errors.push(join(&at, "path.regex"), format!("invalid regex: {e}"));
                }
            }
            for (j, m) in r.methods.iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    errors.push(
                        format!("{}[{j}]", join(&at, "methods")),
                        "expected an upper-case HTTP method",
                    );
                }
            }
            if let Some(ids) = &r.identity {
                if ids.is_empty() && !r.public {
                    errors.push(
                        join(&at, "identity"),
                        "must list at least one method (or set `public: true`)",
                    );
                }
                if ids.contains(&Method::Anonymous) {
                    errors.push(
                        join(&at, "identity"),
                        "`anonymous` is not a credential; use `public: true`",
                    );
                }
            }
            if r.public && (!r.conditions.is_empty() || r.identity.is_some()) {
                errors.push(
                    join(&at, "public"),
                    "a public rule takes no `identity` or `conditions`",
                );
            }
            for (j, c) in r.conditions.iter().enumerate() {
                let at = format!("{}[{j}]", join(&at, "conditions"));
                let ops = [c.equals.is_some(), c.contains.is_some(), c.one_of.is_some()]
                    .iter()
                    .filter(|b| **b)
                    .count();
                match (&c.scope, &c.claim) {
                    (Some(s), None) if ops == 0 => {
                        if s.is_empty() || s.contains(' ') {
                            errors.push(join(&at, "scope"), "must be one non-empty scope");
                        }
                    }
                    (Some(_), None) => {
                        errors.push(at, "a `scope` condition takes no operator");
                    }
                    (None, Some(cl)) if ops == 1 => {
                        if cl.is_empty() || cl.split('.').any(str::is_empty) {
                            errors.push(join(&at, "claim"), "expected a dotted claim path");
                        } else if let Some((field, _)) = cl.split_once('.')
                            && IDENTITY_FIELDS.contains(&field)
                        {
                            errors.push(
                                join(&at, "claim"),
                                format!("`{field}` is the identity's own {field} (a string): nothing lies below it"),
                            );
                        }
                    }
                    (None, Some(_)) => {
                        errors.push(at, "a `claim` condition takes exactly one of `equals`, `contains`, `one_of`");
                    }
                    _ => errors.push(at, "expected exactly one of `scope` or `claim`"),
                }
            }
        }
    }
}

/// Condition names that always mean the identity's own field: the value its header carries and
/// rate limits see, whatever claim the issuer mapped it from.
pub const IDENTITY_FIELDS: [&str; 3] = ["subject", "tenant", "plan"];

/// The identity methods configured on the service, to check rules against.
pub fn check_methods_configured(
    cfg: &PolicyConfig,
    configured: &[Method],
    at: &str,
    errors: &mut Errors,
) {
    let order_at = join(at, "identity_order");
    let mut any = false;
    for m in &cfg.identity_order {
        any |= configured.contains(m);
    }
    if !any
        && (cfg.no_match == NoMatch::Authenticated
            || cfg.rules.iter().any(|r| !r.public && r.identity.is_none()))
    {
        errors.push(order_at, "none of these identity methods is configured");
    }
    for (i, r) in cfg.rules.iter().enumerate() {
        if let Some(ids) = &r.identity {
            for (j, m) in ids.iter().enumerate() {
                if *m != Method::Anonymous && !configured.contains(m) {
                    errors.push(
                        format!("{}[{i}].identity[{j}]", join(at, "rules")),
                        format!("`{}` is not configured (add its section)", m.as_str()),
                    );
                }
            }
        }
    }
}

fn compile_path_regex(re: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    by_name: HashMap<String, usize>,
    no_match: Option<Rule>,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Shared with every decision it makes.
    pub name: Arc<str>,
    hosts: Vec<HostMatch>,
    path: PathMatch,
    methods: Vec<String>,
    /// Allowed without a credential.
    pub public: bool,
    /// Identity methods accepted, in the order they are tried (only configured ones).
    pub identity: Vec<Method>,
    pub conditions: Vec<Condition>,
}

#[derive(Debug)]
enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug)]
enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub enum Condition {
    Scope(String),
    Claim { path: Vec<String>, op: ClaimOp },
}

#[derive(Debug, Clone)]
pub enum ClaimOp {
    Equals(Value),
    Contains(Value),
    OneOf(Vec<Value>),
}

/// Why conditions failed: a missing scope is reported to the client (RFC 6750 `scope`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmet<'a> {
    Scope(&'a str),
    Claim,
}

impl Policy {
    /// Compiles a validated config; `configured` are the identity methods the service has.
    pub fn compile(cfg: &PolicyConfig, configured: &[Method]) -> Result<Policy, regex::Error> {
        let order: Vec<Method> = cfg
            .identity_order
            .iter()
            .copied()
            .filter(|m| configured.contains(m))
            .collect();
        let mut rules = Vec::with_capacity(cfg.rules.len());
        let mut by_name = HashMap::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            let path = match &r.path {
                None => PathMatch::Any,
                Some(PathMatchConfig { exact: Some(p), .. }) => PathMatch::Exact(p.clone()),
                Some(PathMatchConfig {
                    prefix: Some(p), ..
                }) => PathMatch::Prefix(p.clone()),
                Some(PathMatchConfig {
                    regex: Some(re), ..
                }) => PathMatch::Regex(compile_path_regex(re)?),
                Some(_) => PathMatch::Any,
            };
            let identity = match (&r.identity, r.public) {
                (_, true) => Vec::new(),
                (Some(ids), false) => ids
                    .iter()
                    .copied()
                    .filter(|m| configured.contains(m))
                    .collect(),
                (None, false) => order.clone(),
            };
            rules.push(Rule {
                name: r.name.as_str().into(),
                hosts: r
                    .hosts
                    .iter()
                    .map(|h| {
                        let h = h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase();
                        match h.strip_prefix('*') {
                            Some(suffix) => HostMatch::Suffix(suffix.to_string()),
                            None => HostMatch::Exact(h),
                        }
                    })
                    .collect(),
                path,
                methods: r.methods.clone(),
                public: r.public,
                identity,
                conditions: r.conditions.iter().map(compile_condition).collect(),
            });
            by_name.insert(r.name.clone(), i);
        }
        let no_match = match cfg.no_match {
            NoMatch::Deny => None,
            NoMatch::Public | NoMatch::Authenticated => Some(Rule {
                name: Arc::from("no_match"),
                hosts: Vec::new(),
                path: PathMatch::Any,
                methods: Vec::new(),
                public: cfg.no_match == NoMatch::Public,
                identity: if cfg.no_match == NoMatch::Public {
                    Vec::new()
                } else {
                    order
                },
                conditions: Vec::new(),
            }),
        };
        Ok(Policy {
            rules,
            by_name,
            no_match,
        })
    }

    /// The first rule matching the request, or the no-match rule (`None` means deny).
    pub fn select(&self, host: &str, path: &str, method: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.matches(host, path, method))
            .or(self.no_match.as_ref())
    }

    /// A rule by name (for `context_extensions` overrides).
    pub fn by_name(&self, name: &str) -> Option<&Rule> {
        self.by_name.get(name).map(|&i| &self.rules[i])
    }
}

fn compile_condition(c: &ConditionConfig) -> Condition {
    if let Some(s) = &c.scope {
        return Condition::Scope(s.clone());
    }
    let path = c
        .claim
        .as_deref()
        .unwrap_or_default()
        .split('.')
        .map(str::to_string)
        .collect();
    let op = if let Some(v) = &c.equals {
        ClaimOp::Equals(v.clone())
    } else if let Some(v) = &c.contains {
        ClaimOp::Contains(v.clone())
    } else {
        ClaimOp::OneOf(c.one_of.clone().unwrap_or_default())
    };
    Condition::Claim { path, op }
}

impl Rule {
    fn matches(&self, host: &str, path: &str, method: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.matches_host(host)
            && match &self.path {
                PathMatch::Any => true,
                PathMatch::Exact(p) => path == p,
                PathMatch::Prefix(p) => path.starts_with(p.as_str()),
                PathMatch::Regex(re) => re.is_match(path),
            }
    }

    fn matches_host(&self, host: &str) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        let host = bare_host(host);
        self.hosts.iter().any(|h| match h {
            HostMatch::Exact(e) => host.eq_ignore_ascii_case(e),
            HostMatch::Suffix(s) => {
                host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        })
    }

    /// The first condition the identity does not meet.
    pub fn unmet<'a>(&'a self, id: &Identity, extra_scopes: &'a [&'a str]) -> Option<Unmet<'a>> {
        for s in extra_scopes {
            if !id.has_scope(s) {
                return Some(Unmet::Scope(s));
            }
        }
        for c in &self.conditions {
            match c {
                Condition::Scope(s) => {
                    if !id.has_scope(s) {
                        return Some(Unmet::Scope(s));
                    }
                }
                Condition::Claim { path, op } => {
                    if !claim_holds(id, path, op) {
                        return Some(Unmet::Claim);
                    }
                }
            }
        }
        None
    }
}

/// A `Host` as the rules compare it: without a port (but not from inside a bracketed IPv6
/// literal) and without the trailing dot of a fully qualified name, which name the same host.
fn bare_host(host: &str) -> &str {
    let host = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    host.strip_suffix('.').unwrap_or(host)
}

fn claim_holds(id: &Identity, path: &[String], op: &ClaimOp) -> bool {
    let owned;
    let value: &Value = match (path.len(), path[0].as_str()) {
        // The identity's own fields, even when the token also has a claim of that name: the
        // decision must be about what the upstream is told (x-tollgate-tenant, ...).
        (1, "subject") => {
            owned = Value::String(id.subject.clone());
            &owned
        }
        (1, "tenant") => match &id.tenant {
            Some(t) => {
                owned = Value::String(t.clone());
                &owned
            }
            None => return false,
        },
        (1, "plan") => match &id.plan {
            Some(p) => {
                owned = Value::String(p.clone());
                &owned
            }
            None => return false,
        },
        _ => {
            let mut cur = match id.claims.get(&path[0]) {
                Some(v) => v,
                None => return false,
            };
            for seg in &path[1..] {
                cur = match cur.get(seg.as_str()) {
                    Some(v) => v,
                    None => return false,
                };
            }
            cur
        }
    };
    match op {
        ClaimOp::Equals(want) => value == want,
        ClaimOp::OneOf(set) => set.iter().any(|w| w == value),
        ClaimOp::Contains(want) => match value {
            Value::Array(items) => items.iter().any(|i| i == want),
            Value::String(s) => match want {
                Value::String(w) => s.split(' ').any(|part| part == w),
                _ => false,
            },
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(yaml: &str) -> Policy {
        let cfg: PolicyConfig = serde_yaml::from_str(yaml).unwrap();
        let mut e = Errors::default();
        cfg.validate("policy", &mut e);
        assert!(e.is_empty(), "{e:?}");
        Policy::compile(&cfg, &[Method::Jwt, Method::ApiKey]).unwrap()
    }

    const P: &str = r#"
rules:
  - name: health
    path: {exact: /healthz}
    public: true
  - name: admin
    hosts: ["*.example.com"]
    path: {regex: "/admin/[0-9]+"}
    methods: [POST]
    identity: [api_key]
    conditions:
      - scope: admin
      - claim: tenant
        equals: acme
  - name: api
    path: {prefix: /v1/}
    conditions:
      - claim: groups
        contains: ops
      - claim: org.tier
        one_of: [gold, silver]
"#;

    #[test]
    fn first_matching_rule_wins_and_unmatched_is_denied() {
        let p = policy(P);
        assert_eq!(&*p.select("a", "/healthz", "GET").unwrap().name, "health");
        assert!(p.select("a", "/healthz/x", "GET").is_none());
        assert_eq!(
            &*p.select("x.example.com:8080", "/admin/12", "POST")
                .unwrap()
                .name,
            "admin"
        );
        assert!(
            p.select("example.com", "/admin/12", "POST").is_none(),
            "wildcard needs a label"
        );
        assert!(p.select("x.example.com", "/admin/12", "GET").is_none());
        assert!(
            p.select("x.example.com", "/admin/12/x", "POST").is_none(),
            "regex is anchored"
        );
        assert!(p.select("evil.com", "/admin/12", "POST").is_none());
        assert_eq!(
            p.select("h", "/v1/x", "GET").unwrap().identity,
            vec![Method::Jwt, Method::ApiKey]
        );
        assert_eq!(
            p.select("x.EXAMPLE.com", "/admin/1", "POST")
                .unwrap()
                .identity,
            vec![Method::ApiKey]
        );
    }

    #[test]
    fn hosts_match_without_case_port_or_trailing_dot() {
        let p = policy(
            "rules:\n  - name: secure\n    hosts: [secure.example.com, \"*.internal.example.\"]\n  - name: rest\n    public: true\n",
        );
        for host in [
            "secure.example.com",
            "SECURE.Example.COM",
            "secure.example.com.",
            "secure.example.com:443",
            "Secure.Example.Com.:8443",
            "db.internal.example.com",
            "DB.internal.example.com.:5432",
        ] {
            let want = if host.to_ascii_lowercase().contains("internal") {
                "rest"
            } else {
                "secure"
            };
            assert_eq!(&*p.select(host, "/", "GET").unwrap().name, want, "{host}");
        }
        assert_eq!(
            &*p.select("x.internal.example", "/", "GET").unwrap().name,
            "secure",
            "a rule's own trailing dot is dropped too"
        );
        assert_eq!(
            &*p.select("x.internal.example.", "/", "GET").unwrap().name,
            "secure"
        );
        for host in [
            "secure.example.com..",
            "secure.example.com.evil",
            "[::1]:443",
        ] {
            assert_eq!(&*p.select(host, "/", "GET").unwrap().name, "rest", "{host}");
        }
    }

    #[test]
    fn identity_fields_win_over_raw_claims_of_the_same_name() {
        let p = policy(
            "rules:\n  - name: acme\n    conditions:\n      - claim: tenant\n        equals: acme\n      - claim: subject\n        equals: alice\n",
        );
        let rule = p.by_name("acme").unwrap();
        let mut id = Identity::new(Method::Jwt, "alice");
        id.tenant = Some("globex".into());
        id.claims = json!({"tenant": "acme", "subject": "alice", "sub": "mallory"})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            rule.unmet(&id, &[]),
            Some(Unmet::Claim),
            "the raw `tenant` claim is not the tenant the upstream is told"
        );
        id.tenant = Some("acme".into());
        id.subject = "mallory".into();
        assert_eq!(rule.unmet(&id, &[]), Some(Unmet::Claim));
        id.subject = "alice".into();
        assert_eq!(rule.unmet(&id, &[]), None);

        let cfg: PolicyConfig = serde_yaml::from_str(
            "rules:\n  - name: a\n    conditions:\n      - claim: tenant.id\n        equals: x\n",
        )
        .unwrap();
        let mut e = Errors::default();
        cfg.validate("policy", &mut e);
        let errs = e.finish(()).unwrap_err().to_string();
        assert!(
            errs.contains(
                "policy.rules[0].conditions[0].claim: `tenant` is the identity's own tenant"
            ),
            "{errs}"
        );
    }

    #[test]
    fn no_match_can_be_public_or_authenticated() {
        let p = policy("no_match: public");
        assert!(p.select("h", "/x", "GET").unwrap().public);
        let p = policy("no_match: authenticated\nidentity_order: [api_key, introspection]");
        let r = p.select("h", "/x", "GET").unwrap();
        assert!(!r.public);
        assert_eq!(
            r.identity,
            vec![Method::ApiKey],
            "unconfigured methods are dropped"
        );
    }

    #[test]
    fn conditions_on_scopes_and_claims() {
        let p = policy(P);
        let admin = p.by_name("admin").unwrap();
        let mut id = Identity::new(Method::ApiKey, "u");
        assert_eq!(admin.unmet(&id, &[]), Some(Unmet::Scope("admin")));
        id.scopes = vec!["admin".into()];
        assert_eq!(admin.unmet(&id, &[]), Some(Unmet::Claim));
        id.tenant = Some("acme".into());
        assert_eq!(admin.unmet(&id, &[]), None);
        assert_eq!(admin.unmet(&id, &["write"]), Some(Unmet::Scope("write")));

        let api = p.by_name("api").unwrap();
        let mut id = Identity::new(Method::Jwt, "u");
        id.claims = json!({"groups": ["dev", "ops"], "org": {"tier": "gold"}})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(api.unmet(&id, &[]), None);
        id.claims = json!({"groups": "dev ops", "org": {"tier": "bronze"}})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(api.unmet(&id, &[]), Some(Unmet::Claim));
        id.claims = json!({"groups": "devops", "org": {"tier": "gold"}})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            api.unmet(&id, &[]),
            Some(Unmet::Claim),
            "contains is per word, not substring"
        );
    }

    #[test]
    fn invalid_rules_are_all_reported() {
        let cfg: PolicyConfig = serde_yaml::from_str(
            r#"
rules:
  - name: a
    path: {regex: "("}
    methods: [get]
  - name: a
    hosts: ["ex*ample.com"]
    path: {prefix: "v1"}
    conditions:
      - claim: x
      - scope: a
        equals: b
"#,
        )
        .unwrap();
        let mut e = Errors::default();
        cfg.validate("policy", &mut e);
        let errs = e.finish(()).unwrap_err().to_string();
        for want in [
            "policy.rules[0].path.regex",
            "policy.rules[0].methods[0]",
            "policy.rules[1].name: duplicate",
            "policy.rules[1].hosts[0]",
            "policy.rules[1].path: `prefix` must start",
            "policy.rules[1].conditions[0]",
            "policy.rules[1].conditions[1]",
        ] {
            assert!(errs.contains(want), "missing {want} in\n{errs}");
        }
    }
}
