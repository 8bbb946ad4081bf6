//! CEL conditions: compile errors, each variable, and the failure modes.

use std::time::{Duration, SystemTime};

use serde_json::json;

use super::*;
use crate::identity::Method;

const HEADERS: [(&str, &str); 2] = [("x-org", "acme"), ("authorization", "Bearer t")];

fn lookup(name: &str) -> Option<&'static str> {
    HEADERS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn facts(method: &'static str, query: &'static str) -> Facts<'static> {
    Facts {
        method,
        host: "API.example.com",
        path: "/orders/7",
        query,
        source: Some("203.0.113.9"),
        now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        headers: &lookup,
    }
}

fn alice() -> Identity {
    let mut id = Identity::new(Method::Jwt, "alice");
    id.issuer = Some("https://issuer.test".into());
    id.tenant = Some("acme".into());
    id.scopes = vec!["orders:read".into(), "admin".into()];
    id.claims =
        json!({"org": "acme", "groups": ["dev", "ops"], "level": 3, "nested": {"a": {"b": true}}})
            .as_object()
            .unwrap()
            .clone();
    id
}

fn eval(expr: &str) -> Result<bool, EvalError> {
    CelCondition::compile(expr)
        .unwrap_or_else(|e| panic!("{expr}: {e}"))
        .eval(&facts("GET", "page=2&q=a%20b"), &alice())
}

fn compile_error(expr: &str) -> String {
    match CelCondition::compile(expr) {
        Ok(_) => panic!("{expr} compiled"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_typical_condition() {
    let c = r#"request.method == "GET" && "admin" in identity.scopes && claims.org == "acme""#;
    assert_eq!(eval(c), Ok(true));
    let c = CelCondition::compile(c).unwrap();
    assert_eq!(c.eval(&facts("POST", ""), &alice()), Ok(false));
    let mut other = alice();
    other.claims.insert("org".into(), json!("globex"));
    assert_eq!(c.eval(&facts("GET", ""), &other), Ok(false));
    other.scopes.clear();
    other.claims.insert("org".into(), json!("acme"));
    assert_eq!(c.eval(&facts("GET", ""), &other), Ok(false));
}

#[test]
fn every_request_variable() {
    for (expr, want) in [
        (r#"request.method == "GET""#, true),
        (r#"request.path.startsWith("/orders/")"#, true),
        (r#"request.host == "api.example.com""#, true),
        (r#"request.source == "203.0.113.9""#, true),
        (r#"request.time > timestamp("2023-01-01T00:00:00Z")"#, true),
        (r#"request.time < timestamp("2023-11-14T00:00:00Z")"#, false),
        (r#"request.headers["x-org"] == "acme""#, true),
        (r#"has(request.headers.authorization)"#, true),
        (r#""x-missing" in request.headers"#, false),
        (r#"request.query.page == "2""#, true),
        (r#"request.query["q"] == "a b""#, true),
        (r#"has(request.query.nope)"#, false),
    ] {
        assert_eq!(eval(expr), Ok(want), "{expr}");
    }
}

#[test]
fn every_identity_variable_and_claims() {
    for (expr, want) in [
        (r#"identity.method == "jwt""#, true),
        (r#"identity.subject == "alice""#, true),
        (r#"identity.issuer == "https://issuer.test""#, true),
        (r#"identity.tenant == "acme""#, true),
        (r#"has(identity.plan)"#, false),
        (r#"has(identity.key_id)"#, false),
        (
            r#"identity.scopes.exists(s, s.startsWith("orders:"))"#,
            true,
        ),
        (r#"size(identity.scopes) == 2"#, true),
        (r#"has(identity.cert)"#, false),
        (r#"claims.org == "acme""#, true),
        (r#""ops" in claims.groups"#, true),
        (r#"claims.level >= 3"#, true),
        (r#"claims.nested.a.b"#, true),
        (r#"claims["org"] == "acme" && "groups" in claims"#, true),
        (r#"has(claims.missing)"#, false),
    ] {
        assert_eq!(eval(expr), Ok(want), "{expr}");
    }
}

#[test]
fn certificate_fields() {
    let mut id = Identity::new(Method::ApiKey, "spiffe://acme.test/web");
    id.cert = Some(std::sync::Arc::new(PeerCert {
        subject: "CN=web".into(),
        principal: "spiffe://acme.test/web".into(),
        dns: vec!["web.acme.test".into()],
        uris: vec!["spiffe://acme.test/web".into()],
        emails: vec![],
        spiffe_id: Some("spiffe://acme.test/web".into()),
        fingerprint: "ab".repeat(32),
    }));
    let c = CelCondition::compile(
        r#"identity.cert.spiffe_id.startsWith("spiffe://acme.test/") && "web.acme.test" in identity.cert.dns && identity.cert.subject == "CN=web" && size(identity.cert.fingerprint) == 64"#,
    )
    .unwrap();
    assert_eq!(c.eval(&facts("GET", ""), &id), Ok(true));
}

#[test]
fn compile_errors_say_what_is_wrong() {
    for (expr, want) in [
        ("request.method ==", "syntax error at line 1"),
        ("user.name == 'x'", "unknown variable `user`"),
        ("request.verb == 'GET'", "`request` has no field `verb`"),
        ("identity.email == 'x'", "`identity` has no field `email`"),
        ("size(claims) > 0", "`claims` is read by name"),
        ("request == {}", "`request` is read by field"),
        (
            "size(request.headers) > 0",
            "request.headers is read by name",
        ),
        (
            "request.headers[identity.subject] == 'x'",
            "read by a constant name",
        ),
        (
            "request.headers['X-Org'] == 'x'",
            "header names are lower case",
        ),
        ("", "an empty expression"),
    ] {
        let e = compile_error(expr);
        assert!(e.contains(want), "{expr}: {e}");
    }
    // Comprehension variables are known inside their macro only.
    assert!(CelCondition::compile("identity.scopes.all(s, s != '')").is_ok());
    assert!(
        compile_error("identity.scopes.all(s, s != '') && s == ''")
            .contains("unknown variable `s`")
    );
}

#[test]
fn expressions_over_the_caps_do_not_compile() {
    let long = format!("request.method == '{}'", "x".repeat(MAX_EXPRESSION_BYTES));
    assert!(compile_error(&long).contains("longer than"));
    let deep = format!(
        "{}true{}",
        "(".repeat(MAX_NESTING + 1),
        ")".repeat(MAX_NESTING + 1)
    );
    assert!(compile_error(&deep).contains("nested deeper than"));
    // Field selections nest without brackets (`&&` chains are balanced by the parser).
    let chain = format!("claims{} == 1", ".a".repeat(80));
    assert!(
        compile_error(&chain).contains("nested deeper than"),
        "{}",
        compile_error(&chain)
    );
    assert!(CelCondition::compile(&vec!["true"; 200].join(" && ")).is_ok());
    let macros = "identity.scopes.all(a, identity.scopes.all(b, identity.scopes.all(c, a == b)))";
    assert!(compile_error(macros).contains("nested macros"));
    // What stays under the caps compiles.
    let ok = format!("{}true{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
    assert!(CelCondition::compile(&ok).is_ok());
}

#[test]
fn anything_but_a_bool_denies() {
    assert_eq!(eval("request.path"), Err(EvalError::NotBool));
    assert_eq!(eval("claims.level"), Err(EvalError::NotBool));
    assert_eq!(eval("claims.missing == 'x'"), Err(EvalError::Failed));
    assert_eq!(eval("identity.plan == 'gold'"), Err(EvalError::Failed));
    assert_eq!(eval("1 / 0 == 1"), Err(EvalError::Failed));
    assert_eq!(eval("claims.org > 1"), Err(EvalError::Failed));
    // CEL's own error absorption: `true || error` is true, `false && error` false.
    assert_eq!(eval("true || claims.missing == 'x'"), Ok(true));
    assert_eq!(eval("false && claims.missing == 'x'"), Ok(false));
}

#[test]
fn a_repeated_query_parameter_denies() {
    let c = CelCondition::compile("request.query.page == '2'").unwrap();
    for q in ["page=2&page=3", "page=2&pag%65=3"] {
        assert_eq!(
            c.eval(&facts("GET", q), &alice()),
            Err(EvalError::Input),
            "{q}"
        );
    }
}

#[test]
fn hostile_claims_are_capped_not_converted() {
    let c = CelCondition::compile("size(claims.big) > 0").unwrap();
    let mut id = alice();
    id.claims
        .insert("big".into(), json!(vec!["x"; MAX_CONVERTED_VALUES + 1]));
    assert_eq!(c.eval(&facts("GET", ""), &id), Err(EvalError::Input));
    id.claims
        .insert("big".into(), json!("y".repeat(MAX_CONVERTED_BYTES + 1)));
    assert_eq!(c.eval(&facts("GET", ""), &id), Err(EvalError::Input));
    let mut deep = json!(1);
    for _ in 0..=MAX_CLAIM_DEPTH {
        deep = json!([deep]);
    }
    id.claims.insert("big".into(), deep);
    assert_eq!(c.eval(&facts("GET", ""), &id), Err(EvalError::Input));
    // Claims the expression does not read are never converted, however large.
    id.claims.insert("big".into(), json!("ok"));
    id.claims.insert(
        "other".into(),
        json!(vec!["z".repeat(1024); MAX_CONVERTED_VALUES]),
    );
    assert_eq!(c.eval(&facts("GET", ""), &id), Ok(true));
}

#[test]
fn certificate_fields_are_checked_at_load() {
    for expr in [
        "identity.cert.spiffe == 'x'",
        "has(identity.cert.sans)",
        "identity.cert['issuer'] == 'x'",
        "'serial' in identity.cert",
    ] {
        let e = compile_error(expr);
        assert!(e.contains("`identity.cert` has no field"), "{expr}: {e}");
        assert!(e.contains("spiffe_id"), "names the fields there are: {e}");
    }
    assert!(
        compile_error("identity.cert[identity.subject] == 'x'").contains("constant field name")
    );
    for expr in [
        "has(identity.cert.spiffe_id)",
        "'dns' in identity.cert",
        "identity.cert['fingerprint'] != ''",
        "has(identity.cert)",
        // A comprehension variable of that name is not the identity.
        "[{'cert': {'x': 1}}].all(identity, identity.cert.x == 1)",
    ] {
        assert!(CelCondition::compile(expr).is_ok(), "{expr}");
    }
}
