//! What the upstream is told about an allowed caller: the identity headers, built from exactly
//! the values the decision used, or a refusal when a value cannot be forwarded faithfully.
//!
//! A header value is the identity's value byte for byte, or nothing: a control character
//! (which Envoy refuses in a header, and which a sanitiser would have to drop, turning
//! `admin\u{1}` into `admin`), a value over `headers.max_value_bytes` (which a cut would turn
//! into a prefix of someone else's) or a scope outside RFC 6749's scope-token grammar (which the
//! space-separated scopes header would split in two) rejects the credential instead. List claims
//! are joined with `,`; inside an element `%` and `,` are percent-encoded, so one element never
//! reads as two.

use std::sync::Arc;

use crate::config::HeadersConfig;
use crate::identity::{Identity, Method};
use crate::reason::Reason;

/// Names of the identity headers, resolved once (shared with every answer, never copied).
#[derive(Debug)]
pub(super) struct HeaderPlan {
    subject: Arc<str>,
    tenant: Arc<str>,
    plan: Arc<str>,
    scopes: Arc<str>,
    method: Arc<str>,
    key_id: Arc<str>,
    claims: Vec<(Vec<String>, Arc<str>)>,
    pub(super) remove_credential: bool,
    max_value: usize,
}

/// The identity headers of one allowed request: each name either set or removed, so a client
/// can never pass its own copy through.
#[derive(Debug)]
pub(super) struct Forwarded {
    pub(super) set: Vec<(Arc<str>, String)>,
    pub(super) remove: Vec<Arc<str>>,
}

/// Why an identity cannot be forwarded (the bounded reason of the 401).
pub(super) type Unforwardable = Reason;

impl HeaderPlan {
    pub(super) fn new(cfg: &HeadersConfig) -> Self {
        let lower = |s: &String| Arc::<str>::from(s.to_ascii_lowercase());
        Self {
            subject: lower(&cfg.subject),
            tenant: lower(&cfg.tenant),
            plan: lower(&cfg.plan),
            scopes: lower(&cfg.scopes),
            method: lower(&cfg.method),
            key_id: lower(&cfg.key_id),
            claims: cfg
                .claims
                .iter()
                .map(|(c, h)| (c.split('.').map(str::to_string).collect(), lower(h)))
                .collect(),
            remove_credential: cfg.remove_credential,
            max_value: cfg.max_value_bytes,
        }
    }

    /// The headers for `id`, or why they cannot be sent.
    pub(super) fn forward(&self, id: &Identity) -> Result<Forwarded, Unforwardable> {
        let mut out = Forwarded {
            set: Vec::with_capacity(6 + self.claims.len()),
            remove: Vec::with_capacity(6 + self.claims.len()),
        };
        let anonymous = id.method == Method::Anonymous;
        let scopes = scopes_value(&id.scopes)?;
        let fields = [
            (&self.subject, (!anonymous).then_some(id.subject.as_str())),
            (&self.method, Some(id.method.as_str())),
            (&self.tenant, id.tenant.as_deref()),
            (&self.plan, id.plan.as_deref()),
            (&self.key_id, id.key_id.as_deref()),
            (&self.scopes, scopes.as_deref()),
        ];
        for (name, value) in fields {
            self.put(&mut out, name, value)?;
        }
        for (path, name) in &self.claims {
            let v = claim_value(id, path)?;
            self.put(&mut out, name, v.as_deref())?;
        }
        Ok(out)
    }

    fn put(
        &self,
        out: &mut Forwarded,
        name: &Arc<str>,
        value: Option<&str>,
    ) -> Result<(), Unforwardable> {
        match value {
            Some(v) if !v.is_empty() => {
                check_value(v, self.max_value)?;
                out.set.push((name.clone(), v.to_string()));
            }
            _ => out.remove.push(name.clone()),
        }
        Ok(())
    }
}

/// Refuses what a header could not carry as it is.
fn check_value(v: &str, max: usize) -> Result<(), Unforwardable> {
    if v.chars().any(char::is_control) {
        return Err(Reason::ControlCharacter);
    }
    if v.len() > max {
        return Err(Reason::ValueTooLarge);
    }
    Ok(())
}

/// RFC 6749 §3.3 scope-token: printable ASCII except space, `"` and `\`.
pub(crate) fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

/// The scopes header (space-separated), `None` without scopes.
fn scopes_value(scopes: &[String]) -> Result<Option<String>, Unforwardable> {
    if scopes.is_empty() {
        return Ok(None);
    }
    if !scopes.iter().all(|s| is_scope_token(s)) {
        return Err(Reason::MalformedScope);
    }
    Ok(Some(scopes.join(" ")))
}

/// A claim as a header value: strings as they are, numbers and booleans as JSON text, lists
/// of those joined with `,` (elements encoded, see the module doc); objects and absent claims
/// are `None` (the header is removed).
fn claim_value(id: &Identity, path: &[String]) -> Result<Option<String>, Unforwardable> {
    let Some(mut cur) = id.claims.get(&path[0]) else {
        return Ok(None);
    };
    for seg in &path[1..] {
        match cur.get(seg.as_str()) {
            Some(v) => cur = v,
            None => return Ok(None),
        }
    }
    Ok(match cur {
        serde_json::Value::Array(items) => {
            let mut joined = String::new();
            for item in items {
                let Some(text) = scalar_text(item) else {
                    continue;
                };
                if text.chars().any(char::is_control) {
                    return Err(Reason::ControlCharacter);
                }
                if !joined.is_empty() {
                    joined.push(',');
                }
                encode_element(&text, &mut joined);
            }
            (!joined.is_empty()).then_some(joined)
        }
        other => scalar_text(other),
    })
}

fn scalar_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Appends a list element with its `%` and `,` percent-encoded.
fn encode_element(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            ',' => out.push_str("%2C"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(claims: &[(&str, &str)]) -> HeaderPlan {
        let mut cfg = HeadersConfig::default();
        for (c, h) in claims {
            cfg.claims.insert(c.to_string(), h.to_string());
        }
        HeaderPlan::new(&cfg)
    }

    fn set(f: &Forwarded, name: &str) -> Option<String> {
        f.set
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn list_elements_never_read_as_two() {
        let p = plan(&[("groups", "x-groups")]);
        let mut id = Identity::new(Method::Jwt, "alice");
        id.claims = json!({"groups": ["users,admin", "100%", "ops", 7, true, {"x": 1}]})
            .as_object()
            .unwrap()
            .clone();
        let f = p.forward(&id).unwrap();
        assert_eq!(
            set(&f, "x-groups").as_deref(),
            Some("users%2Cadmin,100%25,ops,7,true")
        );
    }

    #[test]
    fn scopes_outside_the_grammar_are_refused() {
        let p = plan(&[]);
        let mut id = Identity::new(Method::Jwt, "alice");
        id.scopes = vec!["read".into(), "write".into()];
        assert_eq!(
            set(&p.forward(&id).unwrap(), "x-tollgate-scopes").as_deref(),
            Some("read write")
        );
        for bad in ["read admin", "a\"b", "a\\b", "", "caf\u{e9}", "a\tb"] {
            id.scopes = vec!["read".into(), bad.into()];
            assert_eq!(
                p.forward(&id).err(),
                Some(Reason::MalformedScope),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_control_character_is_refused_and_nothing_is_cut() {
        let p = plan(&[("email", "x-email"), ("groups", "x-groups")]);
        let controls = (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32);
        for c in controls {
            let mut id = Identity::new(Method::Jwt, format!("al{c}ice"));
            assert_eq!(
                p.forward(&id).err(),
                Some(Reason::ControlCharacter),
                "{c:?}"
            );
            id.subject = "alice".into();
            id.claims = json!({"email": format!("a{c}@b")})
                .as_object()
                .unwrap()
                .clone();
            assert_eq!(
                p.forward(&id).err(),
                Some(Reason::ControlCharacter),
                "{c:?}"
            );
            id.claims = json!({"groups": ["ok", format!("a{c}")]})
                .as_object()
                .unwrap()
                .clone();
            assert_eq!(
                p.forward(&id).err(),
                Some(Reason::ControlCharacter),
                "{c:?}"
            );
        }
        let mut id = Identity::new(Method::Jwt, "a".repeat(1025));
        assert_eq!(p.forward(&id).err(), Some(Reason::ValueTooLarge));
        id.subject = "a".repeat(1024);
        assert!(p.forward(&id).is_ok());
        // Printable non-ASCII is a value like any other.
        id.subject = "j\u{f6}rg \u{2028}".into();
        assert_eq!(
            set(&p.forward(&id).unwrap(), "x-tollgate-subject").as_deref(),
            Some("j\u{f6}rg \u{2028}")
        );
    }

    #[test]
    fn every_name_is_set_or_removed() {
        let p = plan(&[("email", "x-email")]);
        let f = p.forward(&Identity::new(Method::Anonymous, "")).unwrap();
        assert_eq!(
            set(&f, "x-tollgate-auth-method").as_deref(),
            Some("anonymous")
        );
        let mut removed: Vec<&str> = f.remove.iter().map(|n| &**n).collect();
        removed.sort();
        assert_eq!(
            removed,
            [
                "x-email",
                "x-tollgate-key-id",
                "x-tollgate-plan",
                "x-tollgate-scopes",
                "x-tollgate-subject",
                "x-tollgate-tenant"
            ]
        );
    }
}
