//! A real Prometheus scrapes Envoy's `/stats/prometheus` and both services' `/metrics` while
//! traffic flows through Envoy; PromQL answers the allow / deny / over-limit counts the traffic
//! produced, and every expression of the Grafana dashboard and of the shipped Prometheus rules
//! names only series that exist.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tollgate_tests::echo::EchoUpstream;
use tollgate_tests::envoy::{Backends, Envoy};
use tollgate_tests::paths::project_root;
use tollgate_tests::process::{ChildProcess, free_port, wait_for};

use crate::observability::Service;

const AUTHZ: &str = r#"
log: { format: json, level: info }
policy:
  no_match: deny
  rules:
    - name: public
      path: { prefix: /public }
      public: true
    - name: limited
      path: { prefix: /limited }
      public: true
"#;

struct Prometheus {
    port: u16,
    _process: ChildProcess,
}

impl Prometheus {
    async fn start(dir: &std::path::Path, targets: &[(&str, String, &str)]) -> Prometheus {
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n",
            project_root()
                .join("deploy/prometheus/tollgate-rules.yaml")
                .display()
        );
        for (job, target, path) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    metrics_path: {path}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let port = free_port();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir);
        let process = ChildProcess::spawn("prometheus", cmd, &dir.join("prometheus.log")).unwrap();
        let url = format!("http://127.0.0.1:{port}/-/ready");
        wait_for("prometheus ready", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                match reqwest::get(&url).await {
                    Ok(r) if r.status().is_success() => Some(()),
                    _ => None,
                }
            }
        })
        .await;
        Prometheus {
            port,
            _process: process,
        }
    }

    /// Runs an instant query; the `result` array (panics on a PromQL error).
    async fn query(&self, promql: &str) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let body: Value = reqwest::Client::new()
            .get(url)
            .query(&[("query", promql)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single value of a scalar-like query, if any series answered.
    async fn value(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql).await;
        r.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok())
    }

    /// Waits until `promql` evaluates to `want`.
    async fn expect(&self, promql: &str, want: f64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.value(promql).await;
            if got == Some(want) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{promql}: want {want}, last {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Metric names in a PromQL expression: identifiers with our or Envoy's prefix.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Grouping clauses list label names, not series.
    let mut expr = expr.to_string();
    for clause in ["by (", "without ("] {
        while let Some(start) = expr.find(clause) {
            let end = expr[start..]
                .find(')')
                .map_or(expr.len(), |e| start + e + 1);
            expr.replace_range(start..end, "");
        }
    }
    let expr = expr.as_str();
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start =
            i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if at_word_start && (expr[i..].starts_with("tollgate_") || expr[i..].starts_with("envoy_"))
        {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(expr.len(), |e| i + e);
            let name = &expr[i..end];
            // Label names (`envoy_cluster_name="..."`) are not metric names.
            if !expr[end..].trim_start().starts_with('=')
                && !expr[end..].trim_start().starts_with("!=")
            {
                names.insert(name.to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

#[tokio::test]
async fn prometheus_counts_decisions_and_the_dashboard_names_real_series() {
    let dir = tempfile::tempdir().unwrap();
    let authz = Service::start("tollgate-authz", AUTHZ, &[], dir.path())
        .await
        .unwrap();
    let ratelimit = Service::start(
        "tollgate-ratelimit",
        &format!(
            "log: {{ format: json, level: info }}\nlimits: {{ path: {} }}\n",
            project_root().join("deploy/config/limits").display()
        ),
        &[],
        dir.path(),
    )
    .await
    .unwrap();
    let echo = EchoUpstream::start().await;
    let envoy = Envoy::start_example(Backends {
        upstream: echo.port(),
        authz: authz.grpc_port(),
        ratelimit: ratelimit.grpc_port(),
    })
    .await
    .unwrap();
    let prometheus = Prometheus::start(
        dir.path(),
        &[
            (
                "envoy",
                format!("127.0.0.1:{}", envoy.admin_port),
                "/stats/prometheus",
            ),
            ("tollgate-authz", authz.http.to_string(), "/metrics"),
            ("tollgate-ratelimit", ratelimit.http.to_string(), "/metrics"),
        ],
    )
    .await;
    // Every target is scraped before traffic starts, so counters are seen from zero.
    prometheus.expect("count(up == 1)", 3.0).await;

    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for path in ["/public/a"; 4]
        .into_iter()
        .chain(["/nowhere"; 3])
        .chain(["/limited"; 8])
    {
        statuses.push(
            client
                .get(envoy.url(path))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        statuses,
        [
            200, 200, 200, 200, 403, 403, 403, 200, 200, 200, 200, 200, 429, 429, 429
        ]
    );

    // The services' own counts.
    prometheus
        .expect(
            r#"sum(tollgate_authz_checks_total{decision="allow"})"#,
            12.0,
        )
        .await;
    prometheus
        .expect(
            r#"sum(tollgate_authz_checks_total{decision="deny",reason="no_rule"})"#,
            3.0,
        )
        .await;
    prometheus
        .expect(
            r#"sum(tollgate_ratelimit_decisions_total{decision="over_limit",limit="demo-limited"})"#,
            3.0,
        )
        .await;
    prometheus
        .expect(
            r#"sum(tollgate_ratelimit_decisions_total{limit="demo-limited"})"#,
            8.0,
        )
        .await;
    prometheus
        .expect("sum(tollgate_authz_check_duration_seconds_count)", 15.0)
        .await;
    // Envoy's view of the same traffic.
    prometheus
        .expect("sum(envoy_http_ext_authz_denied)", 3.0)
        .await;
    prometheus
        .expect("sum(envoy_http_ext_authz_ok)", 12.0)
        .await;
    prometheus
        .expect(
            r#"sum(envoy_cluster_ratelimit_over_limit{envoy_cluster_name="upstream"})"#,
            3.0,
        )
        .await;
    prometheus
        .expect(
            r#"sum(envoy_http_downstream_rq_xx{envoy_response_code_class="4"})"#,
            6.0,
        )
        .await;

    // The dashboard: every expression is valid PromQL and names only series that exist.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(project_root().join("deploy/grafana/tollgate.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 20, "{exprs:?}");
    let mut missing = Vec::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no series in {expr}");
        prometheus
            .query(&expr.replace("$__rate_interval", "1m"))
            .await;
        for name in names {
            if prometheus.query(&format!("count({name})")).await.is_empty() {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "series named by the dashboard but not exported: {missing:?}"
    );

    // The shipped rules load, evaluate without error and name only exported series.
    let url = format!("http://127.0.0.1:{}/api/v1/rules", prometheus.port);
    let rules = wait_for("every rule evaluated", Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            let body: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
            let rules: Vec<Value> = body["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            (!rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown")).then_some(rules)
        }
    })
    .await;
    assert_eq!(rules.len(), 11, "{rules:#?}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule:#}");
        for name in metric_names(rule["query"].as_str().unwrap()) {
            assert!(
                !prometheus.query(&format!("count({name})")).await.is_empty(),
                "rule {} names {name}, which is not exported",
                rule["name"]
            );
        }
    }
    drop(envoy);
}

#[test]
fn finds_metric_names_but_not_label_names() {
    let names = metric_names(
        r#"sum by (envoy_response_code_class) (rate(envoy_cluster_ratelimit_ok{envoy_cluster_name="x"}[1m])) / sum(tollgate_a_total)"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["envoy_cluster_ratelimit_ok", "tollgate_a_total"]
    );
}
