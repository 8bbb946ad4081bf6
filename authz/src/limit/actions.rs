//! The rate-limit descriptors of a request, built from the actions of a rule's `rate_limits`:
//! the same actions, spelled the same way, as Envoy's route `rate_limits`, so that a route's
//! list moves over as it is (docs/authz.md, "Single-call mode", has the table).
//!
//! Pure: a [`RequestView`] and the caller's [`Identity`] in, descriptors out. Every adapter
//! (gRPC Check, an Envoy dynamic module) builds the same descriptors from the same request.
//!
//! As in Envoy, each entry of `rate_limits` gives at most one descriptor, its actions' entries
//! in order. An action that finds nothing drops the whole descriptor, unless it says
//! `skip_if_absent` (then only the action is skipped); a descriptor left with no entries is
//! not sent.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::Deserialize;
use tollgate_common::config::{Errors, join};
use tollgate_limiter::{Descriptor, LimitOverride, Unit};

use crate::check::RequestView;
use crate::identity::{Identity, Method};

/// One entry of `rate_limits` (Envoy's `RateLimit`): the actions that make one descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub actions: Vec<ActionConfig>,
    /// Envoy's descriptor `limit` override. The one form a Check knows is the key's own limit,
    /// `dynamic_metadata` from ext_authz's `key_limit` entry: an API key with a `rate_limit`
    /// of its own is then counted at that limit instead of the configured one, as in the pair.
    #[serde(default)]
    pub limit: Option<LimitOverrideConfig>,
}

/// Envoy's `RateLimit.Override`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrideConfig {
    pub dynamic_metadata: DynamicMetadataOverrideConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamicMetadataOverrideConfig {
    pub metadata_key: MetadataKeyConfig,
}

/// One action, as Envoy's `RateLimit.Action` spells it (a map with one key naming the
/// action), plus `identity` (the verified caller, which Envoy routes read from ext_authz's
/// dynamic metadata).
#[derive(Debug, Clone)]
pub enum ActionConfig {
    GenericKey(GenericKeyConfig),
    RequestHeaders(RequestHeadersConfig),
    RemoteAddress(EmptyConfig),
    MaskedRemoteAddress(MaskedRemoteAddressConfig),
    HeaderValueMatch(HeaderValueMatchConfig),
    Metadata(MetadataConfig),
    DynamicMetadata(MetadataConfig),
    QueryParameters(QueryParametersConfig),
    QueryParameterValueMatch(QueryParameterValueMatchConfig),
    Identity(IdentityConfig),
}

/// The action names, as Envoy spells them.
const ACTIONS: &[&str] = &[
    "generic_key",
    "request_headers",
    "remote_address",
    "masked_remote_address",
    "header_value_match",
    "metadata",
    "dynamic_metadata",
    "query_parameters",
    "query_parameter_value_match",
    "identity",
];

/// A map with exactly one key, the action's name (serde_yaml reads a plain enum from a YAML
/// tag, which is not how Envoy's YAML spells it).
impl<'de> Deserialize<'de> for ActionConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct One;
        impl<'de> serde::de::Visitor<'de> for One {
            type Value = ActionConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("one rate-limit action, e.g. `{generic_key: {descriptor_value: x}}`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ActionConfig, A::Error> {
                use serde::de::Error;
                let Some(name) = map.next_key::<String>()? else {
                    return Err(A::Error::custom("expected one action, found none"));
                };
                let action = match name.as_str() {
                    "generic_key" => ActionConfig::GenericKey(map.next_value()?),
                    "request_headers" => ActionConfig::RequestHeaders(map.next_value()?),
                    "remote_address" => ActionConfig::RemoteAddress(map.next_value()?),
                    "masked_remote_address" => ActionConfig::MaskedRemoteAddress(map.next_value()?),
                    "header_value_match" => ActionConfig::HeaderValueMatch(map.next_value()?),
                    "metadata" => ActionConfig::Metadata(map.next_value()?),
                    "dynamic_metadata" => ActionConfig::DynamicMetadata(map.next_value()?),
                    "query_parameters" => ActionConfig::QueryParameters(map.next_value()?),
                    "query_parameter_value_match" => {
                        ActionConfig::QueryParameterValueMatch(map.next_value()?)
                    }
                    "identity" => ActionConfig::Identity(map.next_value()?),
                    other => return Err(A::Error::unknown_variant(other, ACTIONS)),
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(A::Error::custom("one action per list item"));
                }
                Ok(action)
            }
        }
        d.deserialize_map(One)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmptyConfig {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericKeyConfig {
    pub descriptor_value: String,
    #[serde(default = "generic_key")]
    pub descriptor_key: String,
}

fn generic_key() -> String {
    "generic_key".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestHeadersConfig {
    /// A header, or `:method`, `:path` (with the query), `:authority`.
    pub header_name: String,
    pub descriptor_key: String,
    #[serde(default)]
    pub skip_if_absent: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskedRemoteAddressConfig {
    #[serde(default = "v4_full")]
    pub v4_prefix_mask_len: u8,
    #[serde(default = "v6_full")]
    pub v6_prefix_mask_len: u8,
}

fn v4_full() -> u8 {
    32
}
fn v6_full() -> u8 {
    128
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueMatchConfig {
    #[serde(default = "header_match")]
    pub descriptor_key: String,
    pub descriptor_value: String,
    #[serde(default = "yes")]
    pub expect_match: bool,
    pub headers: Vec<HeaderMatcherConfig>,
}

fn header_match() -> String {
    "header_match".into()
}
fn query_match() -> String {
    "query_match".into()
}
fn yes() -> bool {
    true
}

/// Envoy's `HeaderMatcher`, in the forms that need no regex: exactly one of the matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcherConfig {
    pub name: String,
    #[serde(default)]
    pub exact_match: Option<String>,
    #[serde(default)]
    pub prefix_match: Option<String>,
    #[serde(default)]
    pub suffix_match: Option<String>,
    #[serde(default)]
    pub contains_match: Option<String>,
    #[serde(default)]
    pub present_match: Option<bool>,
    #[serde(default)]
    pub string_match: Option<StringMatchConfig>,
    #[serde(default)]
    pub invert_match: bool,
}

/// Envoy's `StringMatcher`: exactly one of `exact`, `prefix`, `suffix`, `contains`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatchConfig {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub ignore_case: bool,
}

/// Envoy's `metadata` action. Only ext_authz's own namespace is known here, and in it the
/// identity fields Tollgate files there: `method`, `subject`, `key_id`, `tenant`, `plan`, and
/// `key_limit.key_id` (the key id of a key with a limit of its own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    pub descriptor_key: String,
    pub metadata_key: MetadataKeyConfig,
    #[serde(default)]
    pub default_value: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub skip_if_absent: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataKeyConfig {
    pub key: String,
    pub path: Vec<PathSegmentConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSegmentConfig {
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParametersConfig {
    pub query_parameter_name: String,
    pub descriptor_key: String,
    #[serde(default)]
    pub skip_if_absent: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterValueMatchConfig {
    #[serde(default = "query_match")]
    pub descriptor_key: String,
    pub descriptor_value: String,
    #[serde(default = "yes")]
    pub expect_match: bool,
    pub query_parameters: Vec<QueryParameterMatcherConfig>,
}

/// Envoy's `QueryParameterMatcher`: `string_match` or `present_match`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterMatcherConfig {
    pub name: String,
    #[serde(default)]
    pub string_match: Option<StringMatchConfig>,
    #[serde(default)]
    pub present_match: Option<bool>,
}

/// The verified caller: one of its fields or one of its token's claims.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub descriptor_key: String,
    /// `subject`, `tenant`, `plan`, `key_id` or `method`.
    #[serde(default)]
    pub field: Option<String>,
    /// A dotted path into the token claims; strings, numbers and booleans give a value.
    #[serde(default)]
    pub claim: Option<String>,
    #[serde(default)]
    pub default_value: Option<String>,
    #[serde(default)]
    pub skip_if_absent: bool,
}

/// The namespace Envoy files ext_authz's dynamic metadata under.
const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// The compiled `rate_limits` of one rule (or the policy's default).
#[derive(Debug, Clone, Default)]
pub struct Descriptors {
    plans: Box<[Plan]>,
}

/// One compiled entry of `rate_limits`.
#[derive(Debug, Clone)]
struct Plan {
    actions: Box<[Action]>,
    /// The descriptor carries the caller's own limit (`key_limit`) when it has one.
    key_limit: bool,
}

#[derive(Debug, Clone)]
enum Action {
    Constant {
        key: Box<str>,
        value: Box<str>,
    },
    Header {
        name: Header,
        key: Box<str>,
        skip_if_absent: bool,
    },
    RemoteAddress,
    MaskedRemoteAddress {
        v4: u8,
        v6: u8,
    },
    HeaderMatch {
        key: Box<str>,
        value: Box<str>,
        expect: bool,
        matchers: Box<[HeaderMatcher]>,
    },
    Identity {
        field: Field,
        key: Box<str>,
        default: Option<Box<str>>,
        skip_if_absent: bool,
    },
    Query {
        name: Box<str>,
        key: Box<str>,
        skip_if_absent: bool,
    },
    QueryMatch {
        key: Box<str>,
        value: Box<str>,
        expect: bool,
        matchers: Box<[QueryMatcher]>,
    },
}

/// A request header, or one of the pseudo-headers the view answers itself.
#[derive(Debug, Clone)]
enum Header {
    Method,
    Path,
    Authority,
    Named(Box<str>),
}

#[derive(Debug, Clone)]
enum Field {
    Method,
    Subject,
    KeyId,
    Tenant,
    Plan,
    /// `key_limit.key_id`: the key id, only for a key with a limit of its own.
    KeyLimitId,
    Claim(Box<[Box<str>]>),
}

#[derive(Debug, Clone)]
struct HeaderMatcher {
    name: Header,
    kind: ValueMatch,
    invert: bool,
}

#[derive(Debug, Clone)]
struct QueryMatcher {
    name: Box<str>,
    kind: ValueMatch,
}

#[derive(Debug, Clone)]
enum ValueMatch {
    /// `present_match: true` (present) or `false` (absent).
    Present(bool),
    String(StringMatch),
}

#[derive(Debug, Clone)]
struct StringMatch {
    op: StringOp,
    /// Lower-cased when `ignore_case`.
    pattern: Box<str>,
    ignore_case: bool,
}

#[derive(Debug, Clone, Copy)]
enum StringOp {
    Exact,
    Prefix,
    Suffix,
    Contains,
}

/// What one action gave: a key of the action's own and a value borrowed from the request or
/// the identity where it is one of theirs as it is.
enum Entry<'a> {
    Value(&'a str, Cow<'a, str>),
    /// Nothing, and the action says `skip_if_absent`.
    Skip,
    /// Nothing: the descriptor is not sent.
    Absent,
}

/// Checks a `rate_limits` list, naming every bad field.
pub fn validate(list: &[RateLimitConfig], at: &str, errors: &mut Errors) {
    for (i, rl) in list.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if rl.actions.is_empty() {
            errors.push(join(&at, "actions"), "must list at least one action");
        }
        if let Some(l) = &rl.limit
            && !is_key_limit(l)
        {
            errors.push(
                join(&at, "limit.dynamic_metadata.metadata_key"),
                format!(
                    "the one override a Check knows is the key's own limit: `{{key: {EXT_AUTHZ_NAMESPACE}, path: [{{key: key_limit}}]}}`"
                ),
            );
        }
        for (j, a) in rl.actions.iter().enumerate() {
            if let Err((field, msg)) = compile_action(a) {
                let at = format!("{}[{j}]", join(&at, "actions"));
                errors.push(
                    if field.is_empty() {
                        at
                    } else {
                        join(&at, field)
                    },
                    msg,
                );
            }
        }
    }
}

impl Descriptors {
    /// Compiles a validated list (an invalid action, which validation reports, is left out).
    pub fn compile(list: &[RateLimitConfig]) -> Self {
        Self {
            plans: list
                .iter()
                .map(|rl| Plan {
                    actions: rl
                        .actions
                        .iter()
                        .filter_map(|a| compile_action(a).ok())
                        .collect(),
                    key_limit: rl.limit.as_ref().is_some_and(is_key_limit),
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// The descriptors of one request by `identity`.
    pub fn build<'a>(&'a self, req: &'a dyn RequestView, identity: &'a Identity) -> Vec<Built<'a>> {
        let mut out = Vec::with_capacity(self.plans.len());
        'plans: for plan in self.plans.iter() {
            let mut entries = Vec::with_capacity(plan.actions.len());
            for action in plan.actions.iter() {
                match action.entry(req, identity) {
                    Entry::Value(k, v) => entries.push((k, v)),
                    Entry::Skip => {}
                    Entry::Absent => continue 'plans,
                }
            }
            if !entries.is_empty() {
                out.push(Built {
                    entries,
                    limit: plan.key_limit.then(|| key_limit(identity)).flatten(),
                    hits_addend: None,
                });
            }
        }
        out
    }
}

/// One request's descriptor as the engine reads it: the keys are the actions', the values
/// borrowed from the request and the identity unless an action computes them (a masked
/// address, a number claim, a decoded query value), so building one copies next to nothing.
pub type Built<'a> = Descriptor<&'a str, Cow<'a, str>>;

/// Whether an override is the key's own limit from ext_authz's metadata.
fn is_key_limit(l: &LimitOverrideConfig) -> bool {
    let k = &l.dynamic_metadata.metadata_key;
    k.key == EXT_AUTHZ_NAMESPACE && matches!(&k.path[..], [one] if one.key == "key_limit")
}

/// The caller's own limit as the engine's descriptor override (API keys with a `rate_limit`).
fn key_limit(id: &Identity) -> Option<LimitOverride> {
    let limit = id.rate_limit.as_ref()?;
    id.key_id.as_ref()?;
    Some(LimitOverride {
        requests_per_unit: limit.requests_per_unit,
        unit: Unit::parse(limit.unit.name()),
    })
}

type Invalid = (&'static str, String);

fn compile_action(a: &ActionConfig) -> Result<Action, Invalid> {
    Ok(match a {
        ActionConfig::GenericKey(g) => Action::Constant {
            key: key(&g.descriptor_key)?,
            value: value("generic_key.descriptor_value", &g.descriptor_value)?,
        },
        ActionConfig::RequestHeaders(h) => Action::Header {
            name: header(&h.header_name).map_err(|m| ("request_headers.header_name", m))?,
            key: key(&h.descriptor_key)?,
            skip_if_absent: h.skip_if_absent,
        },
        ActionConfig::RemoteAddress(_) => Action::RemoteAddress,
        ActionConfig::MaskedRemoteAddress(m) => {
            if m.v4_prefix_mask_len > 32 {
                return Err((
                    "masked_remote_address.v4_prefix_mask_len",
                    "at most 32".into(),
                ));
            }
            if m.v6_prefix_mask_len > 128 {
                return Err((
                    "masked_remote_address.v6_prefix_mask_len",
                    "at most 128".into(),
                ));
            }
            Action::MaskedRemoteAddress {
                v4: m.v4_prefix_mask_len,
                v6: m.v6_prefix_mask_len,
            }
        }
        ActionConfig::HeaderValueMatch(h) => Action::HeaderMatch {
            key: key(&h.descriptor_key)?,
            value: value("header_value_match.descriptor_value", &h.descriptor_value)?,
            expect: h.expect_match,
            matchers: compile_header_matchers(&h.headers)?,
        },
        ActionConfig::Metadata(m) | ActionConfig::DynamicMetadata(m) => compile_metadata(m)?,
        ActionConfig::QueryParameters(q) => Action::Query {
            name: value(
                "query_parameters.query_parameter_name",
                &q.query_parameter_name,
            )?,
            key: key(&q.descriptor_key)?,
            skip_if_absent: q.skip_if_absent,
        },
        ActionConfig::QueryParameterValueMatch(q) => Action::QueryMatch {
            key: key(&q.descriptor_key)?,
            value: value(
                "query_parameter_value_match.descriptor_value",
                &q.descriptor_value,
            )?,
            expect: q.expect_match,
            matchers: compile_query_matchers(&q.query_parameters)?,
        },
        ActionConfig::Identity(i) => compile_identity(i)?,
    })
}

fn key(k: &str) -> Result<Box<str>, Invalid> {
    if k.is_empty() {
        return Err(("", "a `descriptor_key` must not be empty".into()));
    }
    Ok(k.into())
}

fn value(field: &'static str, v: &str) -> Result<Box<str>, Invalid> {
    if v.is_empty() {
        return Err((field, "must not be empty".into()));
    }
    Ok(v.into())
}

fn header(name: &str) -> Result<Header, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "" => return Err("must not be empty".into()),
        ":method" => Header::Method,
        ":path" => Header::Path,
        ":authority" | "host" => Header::Authority,
        n if n.starts_with(':') => {
            return Err(format!("`{n}` is not a pseudo-header a Check sees"));
        }
        n => Header::Named(n.into()),
    })
}

fn compile_header_matchers(list: &[HeaderMatcherConfig]) -> Result<Box<[HeaderMatcher]>, Invalid> {
    const AT: &str = "header_value_match.headers";
    if list.is_empty() {
        return Err((AT, "must list at least one header matcher".into()));
    }
    list.iter()
        .map(|m| {
            let name = header(&m.name).map_err(|e| (AT, format!("name: {e}")))?;
            let string = |op, p: &String| StringMatch {
                op,
                pattern: p.as_str().into(),
                ignore_case: false,
            };
            let mut kinds = Vec::new();
            if let Some(p) = &m.exact_match {
                kinds.push(ValueMatch::String(string(StringOp::Exact, p)));
            }
            if let Some(p) = &m.prefix_match {
                kinds.push(ValueMatch::String(string(StringOp::Prefix, p)));
            }
            if let Some(p) = &m.suffix_match {
                kinds.push(ValueMatch::String(string(StringOp::Suffix, p)));
            }
            if let Some(p) = &m.contains_match {
                kinds.push(ValueMatch::String(string(StringOp::Contains, p)));
            }
            if let Some(p) = m.present_match {
                kinds.push(ValueMatch::Present(p));
            }
            if let Some(s) = &m.string_match {
                kinds.push(ValueMatch::String(string_match(s).map_err(|e| (AT, e))?));
            }
            if kinds.len() != 1 {
                return Err((
                    AT,
                    format!(
                        "header `{}`: set exactly one of `exact_match`, `prefix_match`, \
                         `suffix_match`, `contains_match`, `present_match`, `string_match`",
                        m.name
                    ),
                ));
            }
            Ok(HeaderMatcher {
                name,
                kind: kinds.pop().expect("one"),
                invert: m.invert_match,
            })
        })
        .collect()
}

fn compile_query_matchers(
    list: &[QueryParameterMatcherConfig],
) -> Result<Box<[QueryMatcher]>, Invalid> {
    const AT: &str = "query_parameter_value_match.query_parameters";
    if list.is_empty() {
        return Err((AT, "must list at least one query parameter matcher".into()));
    }
    list.iter()
        .map(|m| {
            let kind = match (&m.string_match, m.present_match) {
                (Some(s), None) => ValueMatch::String(string_match(s).map_err(|e| (AT, e))?),
                (None, Some(p)) => ValueMatch::Present(p),
                _ => {
                    return Err((
                        AT,
                        format!(
                            "parameter `{}`: set exactly one of `string_match`, `present_match`",
                            m.name
                        ),
                    ));
                }
            };
            if m.name.is_empty() {
                return Err((AT, "a parameter name must not be empty".into()));
            }
            Ok(QueryMatcher {
                name: m.name.as_str().into(),
                kind,
            })
        })
        .collect()
}

fn string_match(s: &StringMatchConfig) -> Result<StringMatch, String> {
    let set: Vec<(StringOp, &String)> = [
        (StringOp::Exact, &s.exact),
        (StringOp::Prefix, &s.prefix),
        (StringOp::Suffix, &s.suffix),
        (StringOp::Contains, &s.contains),
    ]
    .into_iter()
    .filter_map(|(op, p)| p.as_ref().map(|p| (op, p)))
    .collect();
    let [(op, p)] = set[..] else {
        return Err(
            "string_match: set exactly one of `exact`, `prefix`, `suffix`, `contains`".into(),
        );
    };
    Ok(StringMatch {
        op,
        pattern: if s.ignore_case {
            p.to_lowercase().into()
        } else {
            p.as_str().into()
        },
        ignore_case: s.ignore_case,
    })
}

fn compile_metadata(m: &MetadataConfig) -> Result<Action, Invalid> {
    if m.source.as_deref().is_some_and(|s| s != "DYNAMIC") {
        return Err((
            "metadata.source",
            "only DYNAMIC (ext_authz's identity metadata) is known to a Check".into(),
        ));
    }
    if m.metadata_key.key != EXT_AUTHZ_NAMESPACE {
        return Err((
            "metadata.metadata_key.key",
            format!(
                "only `{EXT_AUTHZ_NAMESPACE}` (the identity this Check verified) is known here"
            ),
        ));
    }
    let field = match &m.metadata_key.path[..] {
        [one] => identity_field(&one.key),
        [a, b] if a.key == "key_limit" && b.key == "key_id" => Some(Field::KeyLimitId),
        _ => None,
    };
    let Some(field) = field else {
        return Err((
            "metadata.metadata_key.path",
            "expected one segment (method, subject, key_id, tenant or plan) or key_limit.key_id"
                .into(),
        ));
    };
    Ok(Action::Identity {
        field,
        key: key(&m.descriptor_key)?,
        default: m.default_value.as_deref().map(Into::into),
        skip_if_absent: m.skip_if_absent,
    })
}

fn compile_identity(i: &IdentityConfig) -> Result<Action, Invalid> {
    let field = match (&i.field, &i.claim) {
        (Some(f), None) => identity_field(f).ok_or((
            "identity.field",
            "expected method, subject, key_id, tenant or plan".to_string(),
        ))?,
        (None, Some(c)) if !c.is_empty() && !c.split('.').any(str::is_empty) => {
            Field::Claim(c.split('.').map(Into::into).collect())
        }
        (None, Some(_)) => return Err(("identity.claim", "expected a dotted claim path".into())),
        _ => return Err(("identity", "set exactly one of `field` or `claim`".into())),
    };
    Ok(Action::Identity {
        field,
        key: key(&i.descriptor_key)?,
        default: i.default_value.as_deref().map(Into::into),
        skip_if_absent: i.skip_if_absent,
    })
}

fn identity_field(name: &str) -> Option<Field> {
    Some(match name {
        "method" => Field::Method,
        "subject" => Field::Subject,
        "key_id" => Field::KeyId,
        "tenant" => Field::Tenant,
        "plan" => Field::Plan,
        _ => return None,
    })
}

impl Action {
    fn entry<'a>(&'a self, req: &'a dyn RequestView, id: &'a Identity) -> Entry<'a> {
        let found = |key: &'a str, v: Option<Cow<'a, str>>, skip: bool| match v {
            Some(v) => Entry::Value(key, v),
            None if skip => Entry::Skip,
            None => Entry::Absent,
        };
        match self {
            Action::Constant { key, value } => Entry::Value(key, Cow::Borrowed(value)),
            Action::Header {
                name,
                key,
                skip_if_absent,
            } => found(key, header_str(req, name), *skip_if_absent),
            Action::RemoteAddress => found(
                "remote_address",
                req.source_address().map(Cow::Borrowed),
                false,
            ),
            Action::MaskedRemoteAddress { v4, v6 } => found(
                "masked_remote_address",
                req.source_address()
                    .and_then(|a| masked(a, *v4, *v6))
                    .map(Cow::Owned),
                false,
            ),
            Action::HeaderMatch {
                key,
                value,
                expect,
                matchers,
            } => {
                let all = matchers.iter().all(|m| m.matches(req));
                matched(key, value, all == *expect)
            }
            Action::Identity {
                field,
                key,
                default,
                skip_if_absent,
            } => {
                let v = identity_value(id, field).or_else(|| default.as_deref().map(Cow::Borrowed));
                found(key, v, *skip_if_absent)
            }
            Action::Query {
                name,
                key,
                skip_if_absent,
            } => found(key, query_value(req.query(), name), *skip_if_absent),
            Action::QueryMatch {
                key,
                value,
                expect,
                matchers,
            } => {
                let all = matchers.iter().all(|m| m.matches(req.query()));
                matched(key, value, all == *expect)
            }
        }
    }
}

fn matched<'a>(key: &'a str, value: &'a str, yes: bool) -> Entry<'a> {
    if yes {
        Entry::Value(key, Cow::Borrowed(value))
    } else {
        Entry::Absent
    }
}

/// A header's value (`:path` with its query, as Envoy's header map holds it).
fn header_str<'a>(req: &'a dyn RequestView, name: &Header) -> Option<Cow<'a, str>> {
    match name {
        Header::Path => Some(match req.query() {
            "" => req.path().into(),
            q => format!("{}?{q}", req.path()).into(),
        }),
        Header::Method => Some(req.method().into()),
        Header::Authority => Some(req.host().into()),
        Header::Named(n) => req.header(n).map(Into::into),
    }
}

fn identity_value<'a>(id: &'a Identity, field: &Field) -> Option<Cow<'a, str>> {
    let anonymous = id.method == Method::Anonymous;
    let value = match field {
        Field::Method => id.method.as_str(),
        // As in the dynamic metadata: an anonymous caller has no subject.
        Field::Subject => return (!anonymous).then_some(Cow::Borrowed(&id.subject)),
        Field::KeyId => id.key_id.as_deref()?,
        Field::KeyLimitId => id.rate_limit.and(id.key_id.as_deref())?,
        Field::Tenant => id.tenant.as_deref()?,
        Field::Plan => id.plan.as_deref()?,
        Field::Claim(path) => {
            let mut cur = id.claims.get(&*path[0])?;
            for seg in &path[1..] {
                cur = cur.get(&**seg)?;
            }
            return match cur {
                serde_json::Value::String(s) => Some(Cow::Borrowed(s)),
                serde_json::Value::Number(n) => Some(Cow::Owned(n.to_string())),
                serde_json::Value::Bool(b) => {
                    Some(Cow::Borrowed(if *b { "true" } else { "false" }))
                }
                _ => None,
            };
        }
    };
    Some(Cow::Borrowed(value))
}

/// `addr` masked to its network, as Envoy writes it (`10.1.2.0/24`).
fn masked(addr: &str, v4: u8, v6: u8) -> Option<String> {
    Some(match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(a) => {
            let bits = u32::from(a) & u32::MAX.checked_shl(32 - u32::from(v4)).unwrap_or(0);
            format!("{}/{v4}", std::net::Ipv4Addr::from(bits))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a) & u128::MAX.checked_shl(128 - u32::from(v6)).unwrap_or(0);
            format!("{}/{v6}", std::net::Ipv6Addr::from(bits))
        }
    })
}

/// The first value of parameter `name`, percent-decoded (`+` is a space).
fn query_value<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

fn decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

impl HeaderMatcher {
    fn matches(&self, req: &dyn RequestView) -> bool {
        let v = header_str(req, &self.name);
        let hit = match (&self.kind, v) {
            (ValueMatch::Present(want), v) => v.is_some() == *want,
            (ValueMatch::String(s), Some(v)) => s.matches(&v),
            // An absent header matches no value, inverted or not (as in Envoy).
            (ValueMatch::String(_), None) => return false,
        };
        hit != self.invert
    }
}

impl QueryMatcher {
    fn matches(&self, query: &str) -> bool {
        let v = query_value(query, &self.name);
        match (&self.kind, v) {
            (ValueMatch::Present(want), v) => v.is_some() == *want,
            (ValueMatch::String(s), Some(v)) => s.matches(&v),
            (ValueMatch::String(_), None) => false,
        }
    }
}

impl StringMatch {
    fn matches(&self, v: &str) -> bool {
        let lowered;
        let v = if self.ignore_case {
            lowered = v.to_lowercase();
            lowered.as_str()
        } else {
            v
        };
        let p = &*self.pattern;
        match self.op {
            StringOp::Exact => v == p,
            StringOp::Prefix => v.starts_with(p),
            StringOp::Suffix => v.ends_with(p),
            StringOp::Contains => v.contains(p),
        }
    }
}

#[cfg(test)]
#[path = "actions_tests.rs"]
mod tests;
