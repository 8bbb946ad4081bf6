//! The probe filter (`filter_name: probe`): the test vehicle for the FFI layer, not a product
//! feature. Each setting exercises one capability of the module end to end through real Envoy:
//! reading headers (one and all values) and request attributes, setting / adding / removing
//! request headers, response headers, dynamic metadata (string, number, struct), a local reply,
//! a verdict computed on the background runtime after a delay, and a panic on demand.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{self, ConfigError, FieldError};
use crate::filter::{
    Counts, FailureMode, Filter, LocalReply, Metadata, MetadataValue, Mutations, Pending, Request,
    Verdict,
};

/// The longest `pending.delay` accepted: a probe that holds requests longer is a mistake.
const MAX_DELAY: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeConfig {
    #[serde(default)]
    failure_mode: FailureMode,
    /// Answer locally when the request carries `deny.header`.
    #[serde(default)]
    deny: Option<DenyRule>,
    #[serde(default)]
    set_headers: BTreeMap<String, String>,
    #[serde(default)]
    add_headers: BTreeMap<String, String>,
    #[serde(default)]
    remove_headers: Vec<String>,
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
    /// Copy what the module read about the request into `x-probe-*` request headers.
    #[serde(default)]
    echo: bool,
    #[serde(default = "default_namespace")]
    metadata_namespace: String,
    /// Set the dynamic metadata below (off: the probe touches nothing, the module's floor).
    #[serde(default = "config::yes")]
    metadata: bool,
    /// Pause the request and decide after `pending.delay` when it carries `pending.header`.
    #[serde(default)]
    pending: Option<PendingRule>,
    /// Panic in the filter when the request carries this header.
    #[serde(default)]
    panic_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyRule {
    header: String,
    status: u16,
    #[serde(default)]
    body: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingRule {
    header: String,
    #[serde(with = "humantime_serde")]
    delay: Duration,
}

fn default_namespace() -> String {
    "tollgate.probe".into()
}

/// The probe filter built from its config.
#[derive(Debug)]
pub(crate) struct ProbeFilter {
    config: ProbeConfig,
}

impl ProbeFilter {
    pub(crate) fn from_config(name: &str, text: &[u8]) -> Result<ProbeFilter, ConfigError> {
        let config: ProbeConfig = config::parse(name, text)?;
        let errors = validate(&config);
        if errors.is_empty() {
            Ok(ProbeFilter { config })
        } else {
            Err(ConfigError::Invalid {
                filter: name.to_string(),
                errors,
            })
        }
    }

    pub(crate) fn failure_mode(&self) -> FailureMode {
        self.config.failure_mode
    }

    fn mutations(&self, request: &dyn Request) -> Mutations {
        let c = &self.config;
        let pairs = |m: &BTreeMap<String, String>| -> Vec<(Arc<str>, String)> {
            m.iter()
                .map(|(k, v)| (k.as_str().into(), v.clone()))
                .collect()
        };
        let mut m = Mutations {
            remove_headers: c.remove_headers.iter().map(|h| h.as_str().into()).collect(),
            set_headers: pairs(&c.set_headers),
            add_headers: pairs(&c.add_headers),
            response_headers: c
                .response_headers
                .iter()
                .map(|(k, v)| (Cow::Owned(k.clone()), v.clone()))
                .collect(),
            metadata: Vec::new(),
            counts: Counts::default(),
        };
        if !c.metadata && !c.echo {
            return m;
        }
        let values = request.header_values("x-probe-multi");
        if c.echo {
            m.set_headers.extend(echo_headers(request, &values));
        }
        if !c.metadata {
            return m;
        }
        let ns = &c.metadata_namespace;
        let entry = |key: &str, value| Metadata {
            namespace: ns.clone().into(),
            key: key.to_owned().into(),
            value,
        };
        let mut summary = BTreeMap::new();
        summary.insert(
            "method".to_string(),
            MetadataValue::String(request.method().unwrap_or_default().into()),
        );
        summary.insert(
            "path".to_string(),
            MetadataValue::String(request.path().unwrap_or_default().into()),
        );
        let pending = c
            .pending
            .as_ref()
            .is_some_and(|p| request.header(&p.header).is_some());
        let multi = values
            .iter()
            .map(|v| MetadataValue::String(String::from_utf8_lossy(v).into_owned()))
            .collect();
        m.metadata = vec![
            entry("verdict", MetadataValue::String("continue".into())),
            entry("multi_count", MetadataValue::Number(values.len() as f64)),
            entry("pending", MetadataValue::Bool(pending)),
            entry("multi", MetadataValue::List(multi)),
            entry("request", MetadataValue::Struct(summary)),
        ];
        m
    }
}

/// The `x-probe-*` headers `echo` sets: what the module read about the request.
fn echo_headers(request: &dyn Request, multi: &[&[u8]]) -> Vec<(Arc<str>, String)> {
    let mut out = Vec::new();
    let mut put = |name: &str, value: Option<&str>| {
        if let Some(v) = value {
            out.push((name.into(), v.to_string()));
        }
    };
    put("x-probe-method", request.method());
    put("x-probe-path", request.path());
    put("x-probe-host", request.host());
    put("x-probe-source", request.source_address());
    put("x-probe-rule", request.route_rule());
    if let Some(peer) = request.tls_peer() {
        put("x-probe-peer-subject", peer.subject);
        put("x-probe-peer-dns-san", peer.dns_san);
        put("x-probe-peer-uri-san", peer.uri_san);
        put("x-probe-peer-sha256", peer.sha256);
    }
    let joined: Vec<String> = multi
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    if !joined.is_empty() {
        put("x-probe-multi", Some(&joined.join(",")));
    }
    out
}

impl Filter for ProbeFilter {
    fn on_request(&self, request: &dyn Request) -> Verdict {
        let c = &self.config;
        if let Some(h) = &c.panic_header
            && request.header(h).is_some()
        {
            panic!("probe: panic requested by the {h} header");
        }
        if let Some(deny) = &c.deny
            && request.header(&deny.header).is_some()
        {
            return Verdict::Respond(LocalReply {
                status: deny.status,
                headers: deny
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                body: deny.body.clone(),
                details: "tollgate_probe_denied",
            });
        }
        let mutations = self.mutations(request);
        match &c.pending {
            Some(rule) if request.header(&rule.header).is_some() => {
                let deny = request.header(&rule.header) == Some(b"deny".as_slice());
                Verdict::Pending(Pending::new(resolve_later(rule.delay, deny, mutations)))
            }
            _ => Verdict::Continue(mutations),
        }
    }
}

/// The waiting half of a pending probe verdict: waits, then continues (marking the request with
/// the thread that finished it: the worker that polled it, once the timer woke the stream) or
/// answers 429.
async fn resolve_later(delay: Duration, deny: bool, mut mutations: Mutations) -> Verdict {
    tokio::time::sleep(delay).await;
    if deny {
        return Verdict::Respond(LocalReply {
            status: 429,
            headers: vec![("retry-after".into(), "1".into())],
            body: "slow down\n".into(),
            details: "tollgate_probe_pending_denied",
        });
    }
    // Envoy names its threads itself (Rust knows no name for them): ask the kernel.
    let thread = std::thread::current().name().map_or_else(
        || {
            std::fs::read_to_string("/proc/thread-self/comm")
                .map_or_else(|_| "unnamed".into(), |n| n.trim().to_string())
        },
        str::to_string,
    );
    mutations
        .set_headers
        .push(("x-probe-resumed-by".into(), thread));
    Verdict::Continue(mutations)
}

fn validate(c: &ProbeConfig) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |field: &str, reason: String| {
        errors.push(FieldError {
            line: None,
            field: field.into(),
            reason,
        })
    };
    if let Some(d) = &c.deny {
        if !(200..=599).contains(&d.status) {
            err(
                "deny.status",
                format!("{} is not an HTTP status (200-599)", d.status),
            );
        }
        if d.header.is_empty() {
            err("deny.header", "must not be empty".into());
        }
    }
    if let Some(p) = &c.pending {
        if p.delay > MAX_DELAY {
            err("pending.delay", format!("must be at most {MAX_DELAY:?}"));
        }
        if p.header.is_empty() {
            err("pending.header", "must not be empty".into());
        }
    }
    if c.metadata_namespace.is_empty() {
        err("metadata_namespace", "must not be empty".into());
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testing::FakeRequest;

    fn probe(yaml: &str) -> ProbeFilter {
        ProbeFilter::from_config("probe", yaml.as_bytes()).unwrap()
    }

    #[test]
    fn without_metadata_and_settings_the_probe_changes_nothing() {
        let Verdict::Continue(m) = probe("metadata: false\n").on_request(&FakeRequest::get("/"))
        else {
            panic!("continue expected")
        };
        assert_eq!(m, Mutations::default());
        let Verdict::Continue(m) = probe("{}").on_request(&FakeRequest::get("/")) else {
            panic!("continue expected")
        };
        assert_eq!(m.metadata.len(), 5, "{m:?}");
    }

    #[test]
    fn denies_with_the_configured_reply_when_the_header_is_present() {
        let p = probe("deny: {header: x-deny, status: 403, body: no, headers: {x-why: test}}\n");
        match p.on_request(&FakeRequest::get("/").with("x-deny", "1")) {
            Verdict::Respond(r) => {
                assert_eq!(r.status, 403);
                assert_eq!(r.body, "no");
                assert_eq!(r.headers, vec![("x-why".into(), "test".into())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p.on_request(&FakeRequest::get("/")),
            Verdict::Continue(_)
        ));
    }

    #[test]
    fn echo_reports_attributes_and_every_value_of_a_header() {
        let p = probe("echo: true\nset_headers: {x-set: v}\nremove_headers: [x-gone]\n");
        let mut req = FakeRequest::get("/a?b=1")
            .with("x-probe-multi", "one")
            .with("x-probe-multi", "two");
        req.rule = Some("admin".into());
        let Verdict::Continue(m) = p.on_request(&req) else {
            panic!("continue expected")
        };
        let get = |n: &str| {
            m.set_headers
                .iter()
                .find(|(k, _)| &**k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("x-set"), Some("v"));
        assert_eq!(get("x-probe-path"), Some("/a?b=1"));
        assert_eq!(get("x-probe-method"), Some("GET"));
        assert_eq!(get("x-probe-source"), Some("127.0.0.1:4000"));
        assert_eq!(get("x-probe-rule"), Some("admin"));
        assert_eq!(get("x-probe-multi"), Some("one,two"));
        assert_eq!(m.remove_headers, vec![Arc::from("x-gone")]);
        assert!(m.metadata.contains(&Metadata {
            namespace: "tollgate.probe".into(),
            key: "multi_count".into(),
            value: MetadataValue::Number(2.0),
        }));
    }

    #[test]
    fn pending_resolves_on_the_background_after_the_delay() {
        let p = probe("pending: {header: x-wait, delay: 5ms}\n");
        let Verdict::Pending(pending) = p.on_request(&FakeRequest::get("/").with("x-wait", "1"))
        else {
            panic!("pending expected")
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let Verdict::Continue(m) = rt.block_on(pending.0) else {
            panic!("continue expected")
        };
        assert!(
            m.set_headers
                .iter()
                .any(|(k, _)| &**k == "x-probe-resumed-by")
        );
        let Verdict::Pending(deny) = p.on_request(&FakeRequest::get("/").with("x-wait", "deny"))
        else {
            panic!("pending expected")
        };
        assert!(matches!(rt.block_on(deny.0), Verdict::Respond(r) if r.status == 429));
    }

    #[test]
    fn every_invalid_setting_is_reported_at_once() {
        let err = ProbeFilter::from_config(
            "probe",
            b"deny: {header: '', status: 42}\npending: {header: x, delay: 1h}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("deny.status: 42 is not an HTTP status"),
            "{err}"
        );
        assert!(err.contains("deny.header: must not be empty"), "{err}");
        assert!(err.contains("pending.delay: must be at most"), "{err}");
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_line() {
        let err = ProbeFilter::from_config("probe", b"echo: true\ndenny: {}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2: "), "{err}");
        assert!(err.contains("unknown field `denny`"), "{err}");
    }

    #[test]
    #[should_panic(expected = "panic requested")]
    fn panics_on_demand() {
        probe("panic_header: x-boom\n").on_request(&FakeRequest::get("/").with("x-boom", "1"));
    }
}
