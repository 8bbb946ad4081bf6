//! CEL conditions on a policy rule (`conditions: [{cel: "..."}]`): compiled once when the
//! policy loads, evaluated on every Check of the rule over the request and the identity.
//!
//! Variables (documented in docs/authz.md, "CEL conditions"):
//! - `request`: `method`, `path` (as the policy matched it), `host` (lower case, no port),
//!   `source` (the client address the proxy trusts), `time` (a timestamp), `headers` and
//!   `query` (read by name: `request.headers["x-org"]`, `request.query.page`);
//! - `identity`: `method`, `subject`, `issuer`, `tenant`, `plan`, `key_id`, `scopes`, `cert`
//!   (the client certificate of an `mtls` identity); a field the identity has no value for is
//!   absent (`has(identity.tenant)`);
//! - `claims`: the token's claims, read by name (`claims.org`, `claims["realm_access"]`).
//!
//! Bounds, because a condition runs on what a client sends: the expression's length and nesting
//! are capped at load; headers, query parameters and claims are read by a name written in the
//! expression (never iterated whole), so an evaluation converts only those, and what it
//! converts of the claims is capped in values and bytes (a hostile token cannot make it
//! allocate without bound); the interpreter runs under `catch_unwind`. Anything but a `true`
//! or `false` result (an error, another type, an input over the caps) denies.

use std::collections::{BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp,
    CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, Program, Value};

use crate::identity::{Identity, PeerCert};

/// Longest expression accepted.
pub const MAX_EXPRESSION_BYTES: usize = 2048;
/// Deepest bracket nesting (`(`, `[`, `{`) accepted, checked before parsing.
pub const MAX_NESTING: usize = 24;
/// Deepest expression tree accepted (operators nest without brackets: `a && b && c ...`).
const MAX_TREE_DEPTH: usize = 64;
/// Comprehensions (`all`, `exists`, `map`, `filter`) nested in one another: each multiplies
/// the work by the size of what it iterates.
const MAX_COMPREHENSION_NESTING: usize = 2;
/// What one evaluation converts of the claims (and scopes) at most: values, and string bytes.
const MAX_CONVERTED_VALUES: usize = 2048;
const MAX_CONVERTED_BYTES: usize = 64 * 1024;
/// Deepest claim value converted.
const MAX_CLAIM_DEPTH: usize = 16;

/// The top-level variables.
const ROOTS: [&str; 3] = ["request", "identity", "claims"];
const REQUEST_FIELDS: [&str; 7] = [
    "method", "path", "host", "source", "time", "headers", "query",
];
const IDENTITY_FIELDS: [&str; 8] = [
    "method", "subject", "issuer", "tenant", "plan", "key_id", "scopes", "cert",
];
/// The fields of `identity.cert` (see `cert`).
const CERT_FIELDS: [&str; 7] = [
    "subject",
    "principal",
    "fingerprint",
    "dns",
    "uris",
    "emails",
    "spiffe_id",
];
/// Identifiers CEL itself defines (type names for `type(x) == string`).
const CEL_IDENTS: [&str; 10] = [
    "bool",
    "bytes",
    "double",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// The standard environment, built once.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| Arc::new(Env::stdlib()));

/// A compiled condition.
pub struct CelCondition {
    source: String,
    program: Program,
    uses: Uses,
}

impl std::fmt::Debug for CelCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CelCondition").field(&self.source).finish()
    }
}

/// What an expression reads, found at compile time: only that is built for an evaluation.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Uses {
    request: BTreeSet<&'static str>,
    identity: BTreeSet<&'static str>,
    headers: BTreeSet<String>,
    query: BTreeSet<String>,
    claims: BTreeSet<String>,
}

/// Why an expression does not compile; the message is for the operator (the config error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(String);

/// Why an evaluation denied without a `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The expression failed (a missing key, a type mismatch, ...).
    #[error("the condition failed to evaluate")]
    Failed,
    /// It gave something other than a bool.
    #[error("the condition did not give a bool")]
    NotBool,
    /// What it reads is over the conversion caps, or ambiguous (a query parameter twice).
    #[error("the condition's input is too large or ambiguous")]
    Input,
}

impl EvalError {
    /// The bounded label for logs.
    pub fn kind(self) -> &'static str {
        match self {
            EvalError::Failed => "failed",
            EvalError::NotBool => "not_bool",
            EvalError::Input => "input",
        }
    }
}

/// The request as a condition reads it.
pub struct Facts<'a> {
    pub method: &'a str,
    /// Without a port, as the policy compares it.
    pub host: &'a str,
    /// The path the policy matched.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    pub source: Option<&'a str>,
    pub now: SystemTime,
    /// Header lookup by lower-case name.
    pub headers: &'a dyn Fn(&str) -> Option<&'a str>,
}

impl CelCondition {
    /// Compiles `source`, refusing what is over the caps, does not parse, or reads a variable
    /// or field that does not exist.
    pub fn compile(source: &str) -> Result<CelCondition, CompileError> {
        let err = |m: String| Err(CompileError(m));
        if source.trim().is_empty() {
            return err("an empty expression".into());
        }
        if source.len() > MAX_EXPRESSION_BYTES {
            return err(format!(
                "longer than {MAX_EXPRESSION_BYTES} bytes ({})",
                source.len()
            ));
        }
        if nesting(source) > MAX_NESTING {
            return err(format!("nested deeper than {MAX_NESTING} brackets"));
        }
        // The parser is not known to panic, but a config must never take the service down.
        let parsed = catch_unwind(|| ENV.compile(source))
            .map_err(|_| CompileError("the expression could not be parsed".into()))?;
        let program = match parsed {
            Ok(p) => p,
            Err(e) => {
                let msg = e
                    .errors
                    .first()
                    .map(|e| {
                        format!(
                            "syntax error at line {} column {}: {}",
                            e.pos.0,
                            e.pos.1 + 1,
                            e.msg
                        )
                    })
                    .unwrap_or_else(|| "syntax error".into());
                return err(msg);
            }
        };
        let mut uses = Uses::default();
        let mut walk = Walk {
            uses: &mut uses,
            bound: Vec::new(),
            comprehensions: 0,
        };
        walk.expr(program.expression(), 0).map_err(CompileError)?;
        Ok(CelCondition {
            source: source.to_string(),
            program,
            uses,
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the condition: `Ok(true)` allows, anything else denies.
    pub fn eval(&self, facts: &Facts<'_>, id: &Identity) -> Result<bool, EvalError> {
        let mut budget = Budget::default();
        let activation = Activation {
            request: self.wanted(&self.uses.request, || self.request(facts))?,
            identity: self.wanted(&self.uses.identity, || self.identity(id, &mut budget))?,
            claims: match self.uses.claims.is_empty() {
                true => None,
                false => Some(self.claims(id, &mut budget)?),
            },
        };
        let mut ctx = Context::with_env(ENV.clone());
        ctx.set_variable_resolver(&activation);
        let run = || {
            Value::resolve_val(self.program.expression(), &ctx)
                .map(|v| v.downcast_ref::<CelBool>().map(|b| *b.inner()))
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(Ok(Some(b))) => Ok(b),
            Ok(Ok(None)) => Err(EvalError::NotBool),
            Ok(Err(_)) | Err(_) => Err(EvalError::Failed),
        }
    }

    /// Builds a variable only when the expression reads one of its fields.
    fn wanted<'v, T>(
        &self,
        fields: &BTreeSet<T>,
        build: impl FnOnce() -> Result<Lent<'v>, EvalError>,
    ) -> Result<Option<Lent<'v>>, EvalError> {
        match fields.is_empty() {
            true => Ok(None),
            false => build().map(Some),
        }
    }

    fn request<'v>(&'v self, f: &'v Facts<'_>) -> Result<Lent<'v>, EvalError> {
        let mut m = Fields::with_capacity(self.uses.request.len());
        for field in &self.uses.request {
            let v: Lent<'v> = match *field {
                "method" => lend(f.method),
                "path" => lend(f.path),
                "host" if f.host.bytes().any(|b| b.is_ascii_uppercase()) => {
                    Box::new(CelString::from(f.host.to_ascii_lowercase()))
                }
                "host" => lend(f.host),
                "source" => match f.source {
                    Some(s) => lend(s),
                    None => continue,
                },
                "time" => {
                    let t: chrono::DateTime<chrono::Utc> = f.now.into();
                    Box::new(CelTimestamp::from(t.fixed_offset()))
                }
                "headers" => {
                    let h = self.uses.headers.iter();
                    record(h.filter_map(|n| (f.headers)(n).map(|v| (n.as_str(), lend(v)))))
                }
                "query" => {
                    let mut q = Fields::with_capacity(self.uses.query.len());
                    for n in &self.uses.query {
                        if let Some(v) = query_param(f.query, n)? {
                            q.push((n.as_str(), Box::new(CelString::from(v))));
                        }
                    }
                    record(q)
                }
                _ => continue,
            };
            m.push((field, v));
        }
        Ok(record(m))
    }

    fn identity<'v>(&self, id: &'v Identity, budget: &mut Budget) -> Result<Lent<'v>, EvalError> {
        let mut m = Fields::with_capacity(self.uses.identity.len());
        for field in &self.uses.identity {
            let v = match *field {
                "method" => Some(lend(id.method.as_str())),
                "subject" => Some(lend(&id.subject)),
                "issuer" => id.issuer.as_deref().map(lend),
                "tenant" => id.tenant.as_deref().map(lend),
                "plan" => id.plan.as_deref().map(lend),
                "key_id" => id.key_id.as_deref().map(lend),
                "scopes" => {
                    let mut l = Vec::with_capacity(id.scopes.len().min(budget.values));
                    for s in &id.scopes {
                        budget.take(s.len())?;
                        l.push(lend(s));
                    }
                    Some(Box::new(CelList::from(l)) as Lent<'v>)
                }
                "cert" => id.cert.as_deref().map(cert),
                _ => None,
            };
            if let Some(v) = v {
                m.push((field, v));
            }
        }
        Ok(record(m))
    }

    /// The claims the expression names, and only those.
    fn claims<'v>(&'v self, id: &'v Identity, budget: &mut Budget) -> Result<Lent<'v>, EvalError> {
        let mut m = Fields::with_capacity(self.uses.claims.len());
        for name in &self.uses.claims {
            if let Some(v) = id.claims.get(name) {
                m.push((name.as_str(), json(v, budget, 0)?));
            }
        }
        Ok(record(m))
    }
}

/// A CEL value that borrows from the request, the identity or the compiled condition for one
/// evaluation: strings are lent, not copied.
type Lent<'v> = Box<dyn Val + 'v>;
type Fields<'v> = Vec<(&'v str, Lent<'v>)>;

/// The three variables of one evaluation, looked up by the interpreter by name.
struct Activation<'v> {
    request: Option<Lent<'v>>,
    identity: Option<Lent<'v>>,
    claims: Option<Lent<'v>>,
}

impl VariableResolver for Activation<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        let v = match name {
            "request" => &self.request,
            "identity" => &self.identity,
            "claims" => &self.claims,
            _ => return None,
        };
        v.as_deref().map(CowVal::Borrowed)
    }
}

fn lend(s: &str) -> Lent<'_> {
    Box::new(CelString::from(s))
}

/// A CEL map with string keys.
fn record<'v>(fields: impl IntoIterator<Item = (&'v str, Lent<'v>)>) -> Lent<'v> {
    let m: HashMap<CelMapKey<'v>, Lent<'v>> = fields
        .into_iter()
        .map(|(k, v)| (CelMapKey::String(CelString::from(k)), v))
        .collect();
    Box::new(CelMap::from(m))
}

/// The client certificate as `identity.cert`.
fn cert(c: &PeerCert) -> Lent<'_> {
    fn list(l: &[String]) -> Lent<'_> {
        Box::new(CelList::from(l.iter().map(|s| lend(s)).collect::<Vec<_>>()))
    }
    let mut m: Fields<'_> = vec![
        ("subject", lend(&c.subject)),
        ("principal", lend(&c.principal)),
        ("fingerprint", lend(&c.fingerprint)),
        ("dns", list(&c.dns)),
        ("uris", list(&c.uris)),
        ("emails", list(&c.emails)),
    ];
    if let Some(s) = &c.spiffe_id {
        m.push(("spiffe_id", lend(s)));
    }
    record(m)
}

/// What is left to convert in one evaluation.
struct Budget {
    values: usize,
    bytes: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            values: MAX_CONVERTED_VALUES,
            bytes: MAX_CONVERTED_BYTES,
        }
    }
}

impl Budget {
    fn take(&mut self, bytes: usize) -> Result<(), EvalError> {
        self.values = self.values.checked_sub(1).ok_or(EvalError::Input)?;
        self.bytes = self.bytes.checked_sub(bytes).ok_or(EvalError::Input)?;
        Ok(())
    }
}

/// A JSON claim as a CEL value, within the budget (its strings lent, but a huge claim still
/// costs a value per element: the budget bounds that work).
fn json<'v>(
    v: &'v serde_json::Value,
    budget: &mut Budget,
    depth: usize,
) -> Result<Lent<'v>, EvalError> {
    use serde_json::Value as J;
    if depth > MAX_CLAIM_DEPTH {
        return Err(EvalError::Input);
    }
    Ok(match v {
        J::Null => {
            budget.take(0)?;
            Box::new(CelNull)
        }
        J::Bool(b) => {
            budget.take(0)?;
            Box::new(CelBool::from(*b))
        }
        J::Number(n) => {
            budget.take(0)?;
            if let Some(i) = n.as_i64() {
                Box::new(CelInt::from(i))
            } else if let Some(u) = n.as_u64() {
                Box::new(CelUInt::from(u))
            } else {
                Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN)))
            }
        }
        J::String(s) => {
            budget.take(s.len())?;
            lend(s)
        }
        J::Array(items) => {
            budget.take(0)?;
            let mut l = Vec::with_capacity(items.len().min(budget.values));
            for i in items {
                l.push(json(i, budget, depth + 1)?);
            }
            Box::new(CelList::from(l))
        }
        J::Object(o) => {
            budget.take(0)?;
            let mut m = Fields::with_capacity(o.len().min(budget.values));
            for (k, v) in o {
                budget.take(k.len())?;
                m.push((k.as_str(), json(v, budget, depth + 1)?));
            }
            record(m)
        }
    })
}

/// The value of query parameter `name`, percent-decoded; `Err` when it is there more than
/// once (or in a spelling that decodes to `name`): the upstream may read the other one.
fn query_param(query: &str, name: &str) -> Result<Option<String>, EvalError> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name || (k.contains('%') && decode(k) == name) {
            if found.is_some() || k != name {
                return Err(EvalError::Input);
            }
            found = Some(decode(v));
        }
    }
    Ok(found)
}

fn decode(s: &str) -> String {
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
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The deepest bracket nesting of `s` (brackets inside string literals count too: a cap, not
/// a parse).
fn nesting(s: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for b in s.bytes() {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Where a name is read from by `x.name`, `x["name"]` or `"name" in x`.
#[derive(Clone, Copy)]
enum Named {
    Headers,
    Query,
    Claims,
}

/// The compile-time walk: checks every variable and field, and records what is read.
struct Walk<'u> {
    uses: &'u mut Uses,
    /// Comprehension variables in scope.
    bound: Vec<String>,
    comprehensions: usize,
}

impl Walk<'_> {
    fn expr(&mut self, e: &IdedExpr, depth: usize) -> Result<(), String> {
        if depth > MAX_TREE_DEPTH {
            return Err(format!("nested deeper than {MAX_TREE_DEPTH} operations"));
        }
        let d = depth + 1;
        match &e.expr {
            Expr::Ident(name) => self.ident(name),
            Expr::Select(s) => {
                if let Some(n) = self.named(&s.operand) {
                    return self.read(n, &s.field);
                }
                if self.is_cert(&s.operand) {
                    cert_field(&s.field)?;
                    return self.field("identity", "cert");
                }
                if let Expr::Ident(root) = &s.operand.expr
                    && !self.is_bound(root)
                {
                    return self.field(root, &s.field);
                }
                self.expr(&s.operand, d)
            }
            Expr::Call(c) => {
                let f = c.func_name.as_str();
                if matches!(
                    f,
                    operators::INDEX | operators::OPT_INDEX | operators::OPT_SELECT
                ) && c.args.len() == 2
                    && let Some(n) = self.named(&c.args[0])
                {
                    return match literal(&c.args[1]) {
                        Some(name) => self.read(n, name),
                        None => Err(format!("{} are read by a constant name", n.what())),
                    };
                }
                if f == operators::IN
                    && c.args.len() == 2
                    && let Some(n) = self.named(&c.args[1])
                {
                    return match literal(&c.args[0]) {
                        Some(name) => self.read(n, name),
                        None => Err(format!("{} are read by a constant name", n.what())),
                    };
                }
                // `identity.cert["dns"]`, `"dns" in identity.cert`: a field named at load too.
                let at = match f {
                    operators::INDEX | operators::OPT_INDEX | operators::OPT_SELECT => Some((0, 1)),
                    operators::IN => Some((1, 0)),
                    _ => None,
                };
                if let Some((container, name)) = at
                    && c.args.len() == 2
                    && self.is_cert(&c.args[container])
                {
                    return match literal(&c.args[name]) {
                        Some(field) => {
                            cert_field(field)?;
                            self.field("identity", "cert")
                        }
                        None => Err("identity.cert is read by a constant field name".into()),
                    };
                }
                if let Some(t) = &c.target {
                    self.expr(t, d)?;
                }
                c.args.iter().try_for_each(|a| self.expr(a, d))
            }
            Expr::Comprehension(c) => {
                self.comprehensions += 1;
                if self.comprehensions > MAX_COMPREHENSION_NESTING {
                    return Err(format!(
                        "more than {MAX_COMPREHENSION_NESTING} nested macros (all, exists, map, filter)"
                    ));
                }
                self.expr(&c.iter_range, d)?;
                self.expr(&c.accu_init, d)?;
                let n = self.bound.len();
                self.bound.push(c.iter_var.clone());
                self.bound.extend(c.iter_var2.clone());
                self.bound.push(c.accu_var.clone());
                self.expr(&c.loop_cond, d)?;
                self.expr(&c.loop_step, d)?;
                self.expr(&c.result, d)?;
                self.bound.truncate(n);
                self.comprehensions -= 1;
                Ok(())
            }
            Expr::List(l) => l.elements.iter().try_for_each(|x| self.expr(x, d)),
            Expr::Map(m) => m.entries.iter().try_for_each(|x| match &x.expr {
                cel::common::ast::EntryExpr::MapEntry(me) => {
                    self.expr(&me.key, d)?;
                    self.expr(&me.value, d)
                }
                cel::common::ast::EntryExpr::StructField(sf) => self.expr(&sf.value, d),
            }),
            Expr::Struct(_) => Err("message literals are not supported".into()),
            Expr::Literal(_) | Expr::Unspecified => Ok(()),
        }
    }

    /// Whether `e` is `identity.cert`.
    fn is_cert(&self, e: &IdedExpr) -> bool {
        matches!(&e.expr, Expr::Select(s) if !s.test && s.field == "cert"
            && matches!(&s.operand.expr, Expr::Ident(r) if r == "identity" && !self.is_bound(r)))
    }

    fn is_bound(&self, name: &str) -> bool {
        self.bound.iter().any(|b| b == name)
    }

    fn ident(&mut self, name: &str) -> Result<(), String> {
        if self.is_bound(name) || CEL_IDENTS.contains(&name) {
            Ok(())
        } else if ROOTS.contains(&name) {
            Err(match name {
                "claims" => {
                    "`claims` is read by name (`claims.org`, `claims[\"org\"]`), not whole".into()
                }
                _ => format!("`{name}` is read by field (`{name}.<field>`), not whole"),
            })
        } else {
            Err(format!(
                "unknown variable `{name}` (known: request, identity, claims)"
            ))
        }
    }

    /// `root.field` on a top-level variable.
    fn field(&mut self, root: &str, field: &str) -> Result<(), String> {
        let (fields, set): (&[&'static str], &mut BTreeSet<&'static str>) = match root {
            "request" => (&REQUEST_FIELDS, &mut self.uses.request),
            "identity" => (&IDENTITY_FIELDS, &mut self.uses.identity),
            "claims" => {
                self.uses.claims.insert(field.to_string());
                return Ok(());
            }
            other => return self.ident(other),
        };
        match fields.iter().find(|f| **f == field) {
            Some(f) if root == "request" && matches!(*f, "headers" | "query") => Err(format!(
                "request.{f} is read by name (`request.{f}[\"name\"]`), not whole"
            )),
            Some(f) => {
                set.insert(f);
                Ok(())
            }
            None => Err(format!(
                "`{root}` has no field `{field}` (fields: {})",
                fields.join(", ")
            )),
        }
    }

    /// Whether `e` is one of the name-read containers (`request.headers`, `request.query`,
    /// `claims`).
    fn named(&self, e: &IdedExpr) -> Option<Named> {
        match &e.expr {
            Expr::Ident(n) if n == "claims" && !self.is_bound(n) => Some(Named::Claims),
            Expr::Select(s) if !s.test => match (&s.operand.expr, s.field.as_str()) {
                (Expr::Ident(r), "headers") if r == "request" && !self.is_bound(r) => {
                    Some(Named::Headers)
                }
                (Expr::Ident(r), "query") if r == "request" && !self.is_bound(r) => {
                    Some(Named::Query)
                }
                _ => None,
            },
            _ => None,
        }
    }

    fn read(&mut self, n: Named, name: &str) -> Result<(), String> {
        match n {
            Named::Headers => {
                if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(format!("header names are lower case: `{name}`"));
                }
                self.uses.request.insert("headers");
                self.uses.headers.insert(name.to_string());
            }
            Named::Query => {
                self.uses.request.insert("query");
                self.uses.query.insert(name.to_string());
            }
            Named::Claims => {
                self.uses.claims.insert(name.to_string());
            }
        }
        Ok(())
    }
}

impl Named {
    fn what(self) -> &'static str {
        match self {
            Named::Headers => "request.headers",
            Named::Query => "request.query",
            Named::Claims => "claims",
        }
    }
}

/// A field of `identity.cert`, or the load error naming the ones there are.
fn cert_field(field: &str) -> Result<(), String> {
    match CERT_FIELDS.contains(&field) {
        true => Ok(()),
        false => Err(format!(
            "`identity.cert` has no field `{field}` (fields: {})",
            CERT_FIELDS.join(", ")
        )),
    }
}

fn literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

#[cfg(test)]
#[path = "cel_tests.rs"]
mod tests;
