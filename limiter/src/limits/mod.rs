//! The limits configuration: envoyproxy/ratelimit's domain files compiled into lookup trees, and
//! descriptor matching exactly as envoyproxy/ratelimit does it.
//!
//! # Matching (per request descriptor, entry by entry, one config level per entry)
//! At each level the entry `(key, value)` selects, in this order:
//! 1. the config descriptor with that key and exactly that value;
//! 2. else the first (in file order) config descriptor with that key whose value is a wildcard
//!    pattern matching the value (`*` matches any run of characters, anywhere in the value;
//!    envoyproxy/ratelimit itself only supports a trailing `*`, which behaves identically here);
//! 3. else the config descriptor with that key and no value (a per-value default).
//!
//! If nothing is selected, matching stops with no limit. A limit applies only when it sits on the
//! descriptor selected by the *last* request entry (the request's depth equals the config's
//! depth); a limit on an intermediate level never applies to a deeper request, and a request
//! shorter than the config's nesting matches no limit. Matching also stops, with no limit, when
//! the selected descriptor has no nested list and request entries remain.
//!
//! # Counters
//! A matched limit counts per distinct request value: the counter key holds the domain and every
//! request entry (the request's own value also for wildcard and key-only matches, except that a
//! wildcard level with `share_threshold: true` contributes its pattern, so all values share one
//! counter) and the limit's position on its descriptor. Stores append the rule (algorithm,
//! window, limit, burst), so changing a limit's unit, size or algorithm starts a fresh counter.

mod load;
mod raw;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tollgate_common::config::{ConfigErrors, Errors, FieldError, line_of};

pub use load::{FileError, FileStatus, LimitsSource, LoadReport, Loader};

use crate::algorithm::{Algorithm, Rule, RuleError};
use crate::descriptor::DescriptorSource;
use crate::key::{CounterKey, KeyBuilder};
use crate::metrics::LimitMetrics;
use crate::period::{CalendarUnit, Period};
use crate::unit::Unit;
use raw::{RawDescriptor, RawDomain, RawRateLimit};

/// Every domain currently configured. Immutable; replaced as a whole on reload.
#[derive(Debug, Default)]
pub struct Limits {
    domains: HashMap<Box<str>, Arc<Domain>>,
}

/// One domain (one file).
#[derive(Debug)]
pub struct Domain {
    pub name: Arc<str>,
    /// The file it was loaded from.
    pub file: PathBuf,
    root: Level,
    summary: Vec<LimitSummary>,
    /// Shared by every limit Envoy sends for this domain.
    override_metrics: LimitMetrics,
}

#[derive(Debug, Default)]
struct Level {
    by_key: HashMap<Box<str>, KeyNodes>,
}

/// The config descriptors of one level that share a key.
#[derive(Debug, Default)]
struct KeyNodes {
    exact: HashMap<Box<str>, Node>,
    /// In file order: the first matching pattern wins.
    wildcards: Vec<(Glob, Node)>,
    any_value: Option<Box<Node>>,
}

#[derive(Debug)]
struct Node {
    /// The configured limits, in order (`rate_limit` first, then `rate_limits`).
    limits: Vec<Arc<Limit>>,
    children: Option<Box<Level>>,
    share_threshold: bool,
}

/// One configured limit.
#[derive(Debug)]
pub struct Limit {
    /// The `name` given in the file, or the descriptor path (`key_value.key`, `#n` appended for
    /// the n-th extra limit on one descriptor).
    pub name: Arc<str>,
    /// Whether `name` was given in the file (only named limits can be replaced).
    pub named: bool,
    pub replaces: Box<[Box<str>]>,
    pub unlimited: bool,
    pub rule: Rule,
    /// As reported to Envoy in `current_limit`.
    pub requests_per_unit: u32,
    /// As reported to the caller; `None` when the window is not exactly one unit.
    pub unit: Option<Unit>,
    pub shadow: bool,
    /// envoyproxy/ratelimit's `quota_mode` (see the engine's decision).
    pub quota_mode: bool,
    pub detailed_metric: bool,
    pub domain: Arc<str>,
    /// The end of its counter keys: the limit's position on its descriptor (`#0`, `#1`; `#o`
    /// for a limit sent by the caller). The store appends the rule.
    position: Box<str>,
    /// Its items in the IETF headers, rendered once: the quoted name (`RateLimit`'s item,
    /// before its parameters) and `RateLimit-Policy`'s whole item.
    pub(crate) ietf: crate::response::IetfItems,
    pub(crate) metrics: LimitMetrics,
}

impl Limit {
    /// A limit sent by Envoy in a descriptor's `limit` field. `None` for an unknown unit, and
    /// for a limit too large to count exactly (which is, in practice, no limit).
    pub(crate) fn from_override(
        domain: &Domain,
        requests_per_unit: u32,
        unit: Option<Unit>,
        algorithm: Algorithm,
    ) -> Option<Self> {
        let window = unit?.window();
        let rule = Rule {
            algorithm,
            limit: u64::from(requests_per_unit),
            window,
            burst: None,
            period: None,
        };
        if requests_per_unit > 0 && rule.check().is_err() {
            return None;
        }
        let name: Arc<str> = Arc::from("override");
        Some(Self {
            ietf: crate::response::IetfItems::new(&name, &rule),
            name,
            named: false,
            replaces: Box::new([]),
            unlimited: false,
            rule,
            requests_per_unit,
            unit,
            shadow: false,
            quota_mode: false,
            detailed_metric: false,
            domain: domain.name.clone(),
            position: "#o".into(),
            metrics: domain.override_metrics.clone(),
        })
    }

    /// This limit's counter key on the descriptor `key` was built for, keeping the builder
    /// for the descriptor's other limits.
    pub(crate) fn counter_key(&self, key: &KeyBuilder) -> CounterKey {
        key.key(&self.position)
    }

    /// As [`Self::counter_key`], reusing the builder's buffer (the descriptor's last limit).
    pub(crate) fn finish_key(&self, key: KeyBuilder) -> CounterKey {
        key.into_key(&self.position)
    }
}

/// What `/config` shows for one limit.
#[derive(Debug, Clone, Serialize)]
pub struct LimitSummary {
    pub descriptor: String,
    pub name: String,
    pub unlimited: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// A calendar period's unit and zone (`month@Europe/Berlin`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    pub shadow_mode: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub quota_mode: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub replaces: Vec<String>,
}

/// A wildcard value: literal parts separated by `*`.
#[derive(Debug, Clone)]
struct Glob {
    pattern: Box<str>,
    parts: Box<[Box<str>]>,
}

impl Glob {
    fn new(pattern: &str) -> Self {
        Self {
            pattern: pattern.into(),
            parts: pattern.split('*').map(Into::into).collect(),
        }
    }

    fn matches(&self, value: &str) -> bool {
        let parts = &self.parts;
        let (first, last) = (&parts[0], &parts[parts.len() - 1]);
        if value.len() < first.len() + last.len()
            || !value.starts_with(&**first)
            || !value.ends_with(&**last)
        {
            return false;
        }
        let mut rest = &value[first.len()..value.len() - last.len()];
        for mid in &parts[1..parts.len() - 1] {
            match rest.find(&**mid) {
                Some(i) => rest = &rest[i + mid.len()..],
                None => return false,
            }
        }
        true
    }
}

impl Limits {
    /// An empty configuration (every request allowed).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Builds the limits from already compiled domains.
    pub(crate) fn from_domains(domains: impl IntoIterator<Item = Arc<Domain>>) -> Self {
        Self {
            domains: domains
                .into_iter()
                .map(|d| (Box::from(&*d.name), d))
                .collect(),
        }
    }

    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name).map(|d| &**d)
    }

    pub fn domains(&self) -> impl Iterator<Item = &Arc<Domain>> {
        self.domains.values()
    }

    /// Parses and compiles one YAML domain file from memory (tests, tools).
    pub fn parse(text: &str, default_algorithm: Algorithm) -> Result<Self, ConfigErrors> {
        Ok(Self::from_domains([Arc::new(Domain::parse(
            None,
            text,
            default_algorithm,
        )?)]))
    }
}

impl Domain {
    /// Parses and validates one domain file; every problem is reported with file, line and field.
    pub fn parse(
        file: Option<&Path>,
        text: &str,
        default_algorithm: Algorithm,
    ) -> Result<Self, ConfigErrors> {
        let at = |line: Option<usize>, field: String, reason: String| {
            ConfigErrors(vec![FieldError {
                file: file.map(Path::to_path_buf),
                line,
                field,
                reason,
            }])
        };
        let value: serde_yaml::Value = if text.trim().is_empty() {
            serde_yaml::Value::Mapping(Default::default())
        } else {
            serde_yaml::from_str(text).map_err(|e| {
                at(
                    e.location().map(|l| l.line()),
                    String::new(),
                    format!("invalid YAML: {e}"),
                )
            })?
        };
        let raw: RawDomain = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            let line = line_or_parent(text, &field);
            at(line, field, e.into_inner().to_string())
        })?;
        let mut errors = Errors::for_file(file, Some(text));
        let domain = compile(
            raw,
            text,
            file.map(Path::to_path_buf).unwrap_or_default(),
            default_algorithm,
            &mut errors,
        );
        errors.finish(domain)
    }

    /// The limits of this domain, for `/config`.
    pub fn summary(&self) -> &[LimitSummary] {
        &self.summary
    }

    /// Finds the node a request descriptor selects and adds each entry to its counter key.
    /// Returns the node's limits; an empty slice when the descriptor matches no limit.
    pub(crate) fn find<'a, D: DescriptorSource + ?Sized>(
        &'a self,
        d: &D,
        key: &mut KeyBuilder,
    ) -> &'a [Arc<Limit>] {
        let n = d.entry_count();
        let mut level = &self.root;
        for i in 0..n {
            let (k, v) = d.entry(i);
            let Some(nodes) = level.by_key.get(k) else {
                return &[];
            };
            let (node, shared) = if let Some(node) = nodes.exact.get(v) {
                (node, None)
            } else if let Some((g, node)) = nodes.wildcards.iter().find(|(g, _)| g.matches(v)) {
                (node, node.share_threshold.then_some(&*g.pattern))
            } else if let Some(node) = nodes.any_value.as_deref() {
                (node, None)
            } else {
                return &[];
            };
            match shared {
                // A shared pattern must not collide with a literal value equal to it.
                Some(p) => key.shared_entry(k, p),
                None => key.entry(k, v),
            }
            if i + 1 == n {
                return &node.limits;
            }
            match node.children.as_deref() {
                Some(c) => level = c,
                None => return &[],
            }
        }
        &[]
    }
}

fn compile(
    raw: RawDomain,
    text: &str,
    file: PathBuf,
    default_algorithm: Algorithm,
    errors: &mut Errors,
) -> Domain {
    if raw.domain.is_empty() {
        errors.push("domain", "config file cannot have empty domain");
    }
    let name: Arc<str> = Arc::from(raw.domain.as_str());
    let mut summary = Vec::new();
    let mut cx = Compiler {
        domain: &name,
        default_algorithm,
        errors,
        error_count: 0,
        summary: &mut summary,
        text,
    };
    let root = cx.level(&raw.descriptors, "descriptors", "");
    let override_metrics = LimitMetrics::new(&name, "override");
    Domain {
        name,
        file,
        root,
        summary,
        override_metrics,
    }
}

struct Compiler<'a> {
    domain: &'a Arc<str>,
    default_algorithm: Algorithm,
    errors: &'a mut Errors,
    error_count: usize,
    summary: &'a mut Vec<LimitSummary>,
    text: &'a str,
}

impl Compiler<'_> {
    fn err(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.error_count += 1;
        let field = field.into();
        let line = line_or_parent(self.text, &field);
        self.errors.push_at(line, field, reason);
    }

    fn level(&mut self, list: &[RawDescriptor], field: &str, parent_path: &str) -> Level {
        let mut level = Level::default();
        for (i, d) in list.iter().enumerate() {
            let at = format!("{field}[{i}]");
            if d.key.is_empty() {
                self.err(format!("{at}.key"), "descriptor has empty key");
                continue;
            }
            let mut path = String::from(parent_path);
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&d.key);
            if !d.value.is_empty() {
                path.push('_');
                path.push_str(&d.value);
            }
            let node = self.node(d, &at, &path);
            let nodes = level.by_key.entry(d.key.as_str().into()).or_default();
            let duplicate = if d.value.is_empty() {
                nodes.any_value.replace(Box::new(node)).is_some()
            } else if d.value.contains('*') {
                if nodes.wildcards.iter().any(|(g, _)| *g.pattern == *d.value) {
                    true
                } else {
                    nodes.wildcards.push((Glob::new(&d.value), node));
                    false
                }
            } else {
                nodes.exact.insert(d.value.as_str().into(), node).is_some()
            };
            if duplicate {
                self.err(
                    at,
                    format!(
                        "duplicate descriptor composite key '{}.{path}'",
                        self.domain
                    ),
                );
            }
        }
        level
    }

    fn node(&mut self, d: &RawDescriptor, at: &str, path: &str) -> Node {
        let mut limits = Vec::new();
        let blocks = d
            .rate_limit
            .iter()
            .map(|r| (r, format!("{at}.rate_limit")))
            .chain(
                d.rate_limits
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (r, format!("{at}.rate_limits[{i}]"))),
            );
        for (position, (r, field)) in blocks.enumerate() {
            if let Some(l) = self.limit(d, r, &field, path, position) {
                limits.push(Arc::new(l));
            }
        }
        let children = if d.descriptors.is_empty() {
            None
        } else {
            Some(Box::new(self.level(
                &d.descriptors,
                &format!("{at}.descriptors"),
                path,
            )))
        };
        Node {
            limits,
            children,
            share_threshold: d.share_threshold && d.value.contains('*'),
        }
    }

    fn limit(
        &mut self,
        d: &RawDescriptor,
        r: &RawRateLimit,
        at: &str,
        path: &str,
        position: usize,
    ) -> Option<Limit> {
        let errors_before = self.error_count;
        let unit = (!r.unit.is_empty()).then(|| Unit::parse(&r.unit));
        for (i, rep) in r.replaces.iter().enumerate() {
            if rep.name.is_empty() {
                self.err(
                    format!("{at}.replaces[{i}].name"),
                    "should not have an empty replaces entry",
                );
            } else if rep.name == r.name {
                self.err(
                    format!("{at}.replaces[{i}].name"),
                    "replaces should not contain name of same descriptor",
                );
            }
        }
        let requests = r.requests_per_unit.unwrap_or(0);
        if requests > u64::from(u32::MAX) {
            self.err(format!("{at}.requests_per_unit"), "must fit in 32 bits");
        }
        let (window, exact_unit) = if r.unlimited {
            if matches!(unit, Some(Some(_))) || r.window.is_some() {
                self.err(
                    format!("{at}.unit"),
                    "should not specify rate limit unit when unlimited",
                );
            }
            (Duration::ZERO, None)
        } else {
            match (unit, r.window) {
                (Some(_), Some(_)) => {
                    self.err(
                        format!("{at}.window"),
                        "give either `unit` or `window`, not both",
                    );
                    (Duration::ZERO, None)
                }
                (None, Some(w)) => {
                    if w.is_zero() {
                        self.err(format!("{at}.window"), "must be longer than zero");
                    }
                    if r.unit_multiplier.is_some() {
                        self.err(format!("{at}.unit_multiplier"), "applies only with `unit`");
                    }
                    (w, None)
                }
                (Some(Some(u)), None) => {
                    let base = u.window();
                    match r.unit_multiplier {
                        None | Some(1) => (base, Some(u)),
                        Some(0) => {
                            self.err(format!("{at}.unit_multiplier"), "must be at least 1");
                            (base, Some(u))
                        }
                        Some(m) => match u32::try_from(m).ok().and_then(|m| base.checked_mul(m)) {
                            Some(w) => (w, None),
                            None => {
                                self.err(format!("{at}.unit_multiplier"), "window too long");
                                (base, Some(u))
                            }
                        },
                    }
                }
                (Some(None), None) | (None, None) => {
                    self.err(
                        format!("{at}.unit"),
                        format!("invalid rate limit unit '{}'", r.unit),
                    );
                    (Duration::ZERO, None)
                }
            }
        };
        let period = self.period(r, exact_unit, at);
        let algorithm = match (period, r.algorithm) {
            (_, Some(a)) => a,
            (Some(_), None) => Algorithm::FixedWindow,
            (None, None) => self.default_algorithm,
        };
        if let Some(b) = r.burst {
            if matches!(algorithm, Algorithm::SlidingWindow | Algorithm::FixedWindow) {
                self.err(
                    format!("{at}.burst"),
                    "applies only to the token_bucket and gcra algorithms",
                );
            } else if b == 0 {
                self.err(format!("{at}.burst"), "must be at least 1");
            }
        }
        if self.error_count != errors_before {
            return None;
        }
        let rule = Rule {
            algorithm,
            limit: requests,
            window,
            burst: r.burst,
            period,
        };
        // A zero limit is envoyproxy/ratelimit's block list: the engine denies it without a
        // store, so the store's bounds only apply from 1 up.
        if !r.unlimited
            && let Err(e) = (Rule {
                limit: requests.max(1),
                ..rule
            })
            .check()
        {
            let field = match e {
                RuleError::Window => "window",
                RuleError::ZeroBurst => "burst",
                RuleError::PeriodAlgorithm => "algorithm",
                _ => "requests_per_unit",
            };
            self.err(format!("{at}.{field}"), e.to_string());
            return None;
        }
        let named = !r.name.is_empty();
        let name: Arc<str> = if named {
            Arc::from(r.name.as_str())
        } else if position == 0 {
            Arc::from(path)
        } else {
            Arc::from(format!("{path}#{position}"))
        };
        self.summary.push(LimitSummary {
            descriptor: path.to_string(),
            name: name.to_string(),
            unlimited: r.unlimited,
            algorithm: (!r.unlimited).then_some(algorithm),
            limit: (!r.unlimited).then_some(requests),
            window: (!r.unlimited).then(|| humantime::format_duration(window).to_string()),
            burst: r.burst,
            period: period.map(|p| p.key_part()),
            shadow_mode: d.shadow_mode,
            quota_mode: d.quota_mode,
            replaces: r.replaces.iter().map(|x| x.name.clone()).collect(),
        });
        Some(Limit {
            metrics: LimitMetrics::new(self.domain, &name),
            ietf: crate::response::IetfItems::new(&name, &rule),
            name,
            named,
            replaces: r
                .replaces
                .iter()
                .map(|x| Box::from(x.name.as_str()))
                .collect(),
            unlimited: r.unlimited,
            rule,
            requests_per_unit: requests.min(u64::from(u32::MAX)) as u32,
            unit: exact_unit,
            shadow: d.shadow_mode,
            quota_mode: d.quota_mode,
            detailed_metric: d.detailed_metric || d.value_to_metric,
            domain: self.domain.clone(),
            position: format!("#{position}").into(),
        })
    }
}

impl Compiler<'_> {
    /// The calendar period of a `calendar: true` limit (its unit must be one unit of day,
    /// week, month or year), in `time_zone` or UTC.
    fn period(&mut self, r: &RawRateLimit, unit: Option<Unit>, at: &str) -> Option<Period> {
        let zone = match r.time_zone.as_deref() {
            None => Some(chrono_tz::Tz::UTC),
            Some(_) if !r.calendar => {
                self.err(
                    format!("{at}.time_zone"),
                    "applies only with `calendar: true`",
                );
                None
            }
            Some(name) => match name.parse::<chrono_tz::Tz>() {
                Ok(z) => Some(z),
                Err(_) => {
                    self.err(
                        format!("{at}.time_zone"),
                        format!("unknown time zone '{name}' (an IANA name such as Europe/Berlin, or UTC)"),
                    );
                    None
                }
            },
        };
        if !r.calendar {
            return None;
        }
        let Some(cal) = unit.and_then(CalendarUnit::of) else {
            self.err(
                format!("{at}.calendar"),
                "needs `unit` day, week, month or year (no `window`, no `unit_multiplier`, not unlimited)",
            );
            return None;
        };
        zone.map(|zone| Period { unit: cal, zone })
    }
}

/// The line of the `domain:` key in a file (for errors found after parsing).
fn line_of_domain(file: &Path) -> Option<usize> {
    line_of(&std::fs::read_to_string(file).ok()?, "domain")
}

/// The line of `field`, or of its closest enclosing field that can be located (keys inside a
/// flow mapping such as `rate_limit: {unit: x}` are found through their parent).
fn line_or_parent(text: &str, field: &str) -> Option<usize> {
    let mut f = field;
    loop {
        if let Some(l) = line_of(text, f) {
            return Some(l);
        }
        let cut = f.rfind(['.', '['])?;
        f = &f[..cut];
    }
}
