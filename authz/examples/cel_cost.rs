//! CPU cost of evaluating one CEL condition of a policy rule, in-process: the typical
//! `request.method == "GET" && "admin" in identity.scopes && claims.org == "acme"`, and the
//! same with a header and a larger token. `cargo run -p tollgate-authz --release --example cel_cost`
//!
//! The evaluation builds only what the expression reads (three fields here), lending the
//! request's and the identity's strings, then runs the interpreter; compiling happens once,
//! when the policy loads, and is not measured. Wall time and CPU time are both printed: on a
//! shared machine the CPU time is the figure to read.

// The example shares its package's dependencies; the lint is for the library's.
#![allow(unused_crate_dependencies)]

use std::hint::black_box;
use std::time::{Instant, SystemTime};

use serde_json::json;
use tollgate_authz::identity::{Identity, Method};
use tollgate_authz::policy::cel::{CelCondition, Facts};

const ROUNDS: u32 = 200_000;

fn headers(name: &str) -> Option<&'static str> {
    match name {
        "x-org" => Some("acme"),
        _ => None,
    }
}

fn measure(name: &str, expr: &str, id: &Identity) {
    let c = CelCondition::compile(expr).unwrap();
    let facts = Facts {
        method: "GET",
        host: "api.example.com",
        path: "/orders/7",
        query: "page=2",
        source: Some("203.0.113.9"),
        now: SystemTime::now(),
        headers: &headers,
    };
    assert_eq!(c.eval(&facts, id), Ok(true), "{expr}");
    for _ in 0..ROUNDS / 10 {
        black_box(c.eval(black_box(&facts), id).unwrap());
    }
    let (start, cpu) = (Instant::now(), cpu_seconds());
    for _ in 0..ROUNDS {
        black_box(c.eval(black_box(&facts), id).unwrap());
    }
    let per = start.elapsed() / ROUNDS;
    let cpu = cpu_seconds()
        .zip(cpu)
        .map(|(b, a)| (b - a) * 1e6 / f64::from(ROUNDS));
    println!(
        "{name:<40} {:>8.2} µs per evaluation (wall), {} µs CPU",
        per.as_nanos() as f64 / 1000.0,
        cpu.map_or("n/a".into(), |c| format!("{c:.2}"))
    );
}

/// The process's user + system CPU time (Linux `/proc/self/stat`, 100 ticks a second, the
/// kernel's USER_HZ): on a shared machine the wall time also counts the time others run.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() {
    let mut id = Identity::new(Method::Jwt, "alice");
    id.scopes = vec!["orders:read".into(), "admin".into()];
    id.claims = json!({"iss": "https://issuer.test", "sub": "alice", "org": "acme", "email": "alice@example.com"})
        .as_object()
        .unwrap()
        .clone();
    let typical =
        r#"request.method == "GET" && "admin" in identity.scopes && claims.org == "acme""#;
    measure("typical (method, scope, claim)", typical, &id);
    measure(
        "typical + header",
        r#"request.method == "GET" && "admin" in identity.scopes && claims.org == "acme" && request.headers["x-org"] == claims.org"#,
        &id,
    );
    // A token with 50 more claims and 40 scopes: only what the expression reads is converted.
    for i in 0..50 {
        id.claims
            .insert(format!("c{i}"), json!(vec!["x".repeat(40); 8]));
    }
    id.scopes.extend((0..40).map(|i| format!("scope:{i}")));
    measure("typical, large token", typical, &id);
}
