//! The Envoy dynamic module (`libtollgate_envoy.so`) in real Envoy 1.40, driven by its probe
//! filter: every symbol it needs is in the pinned binary, headers and attributes read and set
//! reach the upstream, local replies and response headers reach the client, dynamic metadata is
//! visible to Envoy, per-route config is honoured, paused requests resume from the background
//! runtime under concurrency, a panic answers 503 while Envoy keeps serving, and a bad config is
//! refused with the module's reason in Envoy's log.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use futures::future::join_all;
use tollgate_tests::echo::{Echo, EchoUpstream};
use tollgate_tests::envoy::{Backends, Envoy};
use tollgate_tests::module::{module_path, start_envoy, validate};
use tollgate_tests::paths::{envoy_bin, project_root};
use tollgate_tests::pki::{self, Pki};
use tollgate_tests::process::wait_for;

/// The probe filter's settings used by these tests (see `envoy-module/src/probe.rs`).
const PROBE: &str = r#"
                  echo: true
                  deny: {header: x-probe-deny, status: 403, body: "denied by probe\n", headers: {x-probe-denied: "yes"}}
                  set_headers: {x-probe-seen: "1"}
                  add_headers: {x-probe-added: by-probe}
                  remove_headers: [x-probe-secret]
                  response_headers: {x-probe-response: "1"}
                  pending: {header: x-probe-wait, delay: 50ms}
                  panic_header: x-probe-panic
"#;

/// An Envoy config in the example's port conventions (10000 listener, 9901 admin, 8000
/// upstream) with the module in the HTTP filter chain; `{PROBE}`, `{ROUTE}` and `{TLS}` are
/// replaced.
const CONFIG: &str = r#"
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 9901 } }
static_resources:
  listeners:
  - name: gateway
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - {TLS}filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/off" }
                route: { cluster: upstream }
                typed_per_filter_config:
                  envoy.filters.http.dynamic_modules:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute
                    dynamic_module_config: { name: tollgate_envoy }
                    filter_name: probe
                    filter_config:
                      "@type": type.googleapis.com/google.protobuf.StringValue
                      value: "disabled: true"
              - match: { prefix: "/rule" }
                route: { cluster: upstream }
                typed_per_filter_config:
                  envoy.filters.http.dynamic_modules:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute
                    dynamic_module_config: { name: tollgate_envoy }
                    filter_name: probe
                    filter_config:
                      "@type": type.googleapis.com/google.protobuf.StringValue
                      value: "{ROUTE}"
              - match: { prefix: "/" }
                route: { cluster: upstream }
                # The module's dynamic metadata, as Envoy formats it, reaches the upstream.
                request_headers_to_add:
                - header: { key: x-md-verdict, value: "%DYNAMIC_METADATA(tollgate.probe:verdict)%" }
                - header: { key: x-md-count, value: "%DYNAMIC_METADATA(tollgate.probe:multi_count)%" }
                - header: { key: x-md-pending, value: "%DYNAMIC_METADATA(tollgate.probe:pending)%" }
                - header: { key: x-md-multi, value: "%DYNAMIC_METADATA(tollgate.probe:multi)%" }
                - header: { key: x-md-method, value: "%DYNAMIC_METADATA(tollgate.probe:request:method)%" }
          http_filters:
          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: { name: tollgate_envoy, metrics_namespace: tollgate }
              filter_name: probe
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: |{PROBE}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 8000 } } }
"#;

fn config(probe: &str, route: &str) -> String {
    CONFIG
        .replace("{PROBE}", probe)
        .replace("{ROUTE}", route)
        .replace("{TLS}", "")
}

/// [`config`] with a listener that requires a client certificate from `pki`'s CA.
fn mtls_config(pki: &Pki) -> String {
    let tls = format!(
        "transport_socket: {{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": \
         type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, \
         require_client_certificate: true, common_tls_context: {{tls_certificates: \
         [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}], \
         validation_context: {{trusted_ca: {{filename: {}}}}}}}}}}}\n      ",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca_cert.display()
    );
    CONFIG
        .replace("{PROBE}", PROBE)
        .replace("{ROUTE}", "rule: admin")
        .replace("{TLS}", &tls)
}

/// The module behind Envoy, with an echo upstream.
struct Gateway {
    envoy: Envoy,
    _upstream: EchoUpstream,
}

impl Gateway {
    async fn start() -> Gateway {
        Self::start_on(&config(PROBE, "rule: admin")).await
    }

    async fn start_on(config: &str) -> Gateway {
        let upstream = EchoUpstream::start().await;
        let backends = Backends {
            upstream: upstream.port(),
            authz: 0,
            ratelimit: 0,
        };
        let envoy = start_envoy(config, backends).await.unwrap();
        Gateway {
            envoy,
            _upstream: upstream,
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        client().get(self.envoy.url(path))
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `readelf --dyn-syms` of a file: (defined, undefined) symbol names with `prefix`.
fn dynamic_symbols(file: &std::path::Path, prefix: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new("readelf")
        .args(["--dyn-syms", "--wide"])
        .arg(file)
        .output()
        .expect("readelf (binutils) runs");
    assert!(out.status.success(), "readelf {}", file.display());
    let (mut defined, mut undefined) = (BTreeSet::new(), BTreeSet::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Num: Value Size Type Bind Vis Ndx Name
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 8 || !cols[7].starts_with(prefix) {
            continue;
        }
        let name = cols[7].split('@').next().unwrap().to_string();
        if cols[6] == "UND" {
            undefined.insert(name);
        } else {
            defined.insert(name);
        }
    }
    (defined, undefined)
}

#[test]
fn module_imports_only_what_envoy_exports_and_exports_every_hook_envoy_requires() {
    let (envoy_exports, _) = dynamic_symbols(&envoy_bin(), "envoy_dynamic_module_callback_");
    assert!(envoy_exports.len() > 700, "{}", envoy_exports.len());
    let (_, imports) = dynamic_symbols(&module_path(), "envoy_dynamic_module_callback_");
    assert!(!imports.is_empty());
    let missing: Vec<_> = imports.difference(&envoy_exports).collect();
    assert!(
        missing.is_empty(),
        "not exported by Envoy 1.40: {missing:?}"
    );

    let (hooks, _) = dynamic_symbols(&module_path(), "envoy_dynamic_module_on_");
    let stream_hooks = [
        "config_new",
        "config_destroy",
        "new",
        "destroy",
        "stream_complete",
        "request_headers",
        "request_body",
        "request_trailers",
        "response_headers",
        "response_body",
        "response_trailers",
        "http_callout_done",
        "http_stream_headers",
        "http_stream_data",
        "http_stream_trailers",
        "http_stream_complete",
        "http_stream_reset",
        "scheduled",
        "downstream_above_write_buffer_high_watermark",
        "downstream_below_write_buffer_low_watermark",
        "per_route_config_new",
        "per_route_config_destroy",
    ];
    let mut required: Vec<String> = stream_hooks
        .iter()
        .map(|h| format!("envoy_dynamic_module_on_http_filter_{h}"))
        .collect();
    required.push("envoy_dynamic_module_on_program_init".into());
    let absent: Vec<_> = required.iter().filter(|h| !hooks.contains(*h)).collect();
    assert!(
        absent.is_empty(),
        "hooks the module does not export: {absent:?}"
    );
}

#[tokio::test]
async fn headers_attributes_and_metadata_reach_the_upstream() {
    let gw = Gateway::start().await;
    let resp = gw
        .get("/hello?x=1")
        .header("x-probe-multi", "a")
        .header("x-probe-multi", "b")
        .header("x-probe-secret", "from-client")
        .header("x-probe-added", "from-client")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A header added for the client's response.
    assert_eq!(resp.headers()["x-probe-response"], "1");
    let echo: Echo = resp.json().await.unwrap();
    let h = |n: &str| echo.header(n).map(str::to_string);
    assert_eq!(h("x-probe-seen").as_deref(), Some("1"), "{echo:?}");
    // Every value of a header was read; attributes were read.
    assert_eq!(h("x-probe-multi").as_deref(), Some("a,b"), "{echo:?}");
    assert_eq!(h("x-probe-method").as_deref(), Some("GET"));
    assert_eq!(h("x-probe-path").as_deref(), Some("/hello?x=1"));
    assert!(
        h("x-probe-host").is_some_and(|v| v.starts_with("127.0.0.1:")),
        "{echo:?}"
    );
    assert!(
        h("x-probe-source").is_some_and(|v| v.starts_with("127.0.0.1:")),
        "{echo:?}"
    );
    // No TLS on this listener: no peer certificate headers; no route rule on this route.
    assert_eq!(h("x-probe-peer-sha256"), None);
    assert_eq!(h("x-probe-rule"), None);
    // Removed, and appended after the client's value.
    assert_eq!(h("x-probe-secret"), None, "{echo:?}");
    assert_eq!(
        echo.headers
            .get("x-probe-added")
            .cloned()
            .unwrap_or_default(),
        vec!["from-client".to_string(), "by-probe".to_string()]
    );
    // Dynamic metadata: string, number, bool, list and struct values as Envoy formats them.
    assert_eq!(h("x-md-verdict").as_deref(), Some("continue"));
    assert_eq!(h("x-md-count").as_deref(), Some("2"));
    assert_eq!(h("x-md-pending").as_deref(), Some("false"));
    assert_eq!(h("x-md-multi").as_deref(), Some(r#"["a","b"]"#));
    assert_eq!(h("x-md-method").as_deref(), Some("GET"));
    assert_eq!(gw.envoy.stat("tollgate.requests.verdict.continue").await, 1);
}

#[tokio::test]
async fn the_client_certificate_reaches_the_filter_on_an_mtls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::generate(dir.path(), "module-test-ca");
    let gw = Gateway::start_on(&mtls_config(&pki)).await;
    let pem = |p: &std::path::Path| std::fs::read(p).unwrap();
    let mut identity = pem(&pki.client_cert);
    identity.extend(pem(&pki.client_key));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem(&pki.ca_cert)).unwrap())
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/tls", gw.envoy.port);
    let echo: Echo = client.get(url).send().await.unwrap().json().await.unwrap();
    let subject = echo.header("x-probe-peer-subject").unwrap_or_default();
    assert!(subject.contains("CN=envoy-gateway"), "{echo:?}");
    assert_eq!(echo.header("x-probe-peer-dns-san"), Some("envoy-gateway"));
    assert_eq!(echo.header("x-probe-peer-uri-san"), None);
    let digest = echo.header("x-probe-peer-sha256").unwrap_or_default();
    assert!(
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "{echo:?}"
    );
}

#[tokio::test]
async fn a_local_reply_reaches_the_client_with_status_headers_and_body() {
    let gw = Gateway::start().await;
    let resp = gw
        .get("/orders")
        .header("x-probe-deny", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-probe-denied"], "yes");
    assert_eq!(resp.text().await.unwrap(), "denied by probe\n");
    assert_eq!(gw.envoy.stat("cluster.upstream.upstream_rq_total").await, 0);
    assert_eq!(gw.envoy.stat("tollgate.requests.verdict.respond").await, 1);
}

#[tokio::test]
async fn per_route_config_disables_the_filter_or_names_the_rule() {
    let gw = Gateway::start().await;
    // Disabled on /off: the deny header has no effect and nothing is set.
    let resp = gw
        .get("/off/x")
        .header("x-probe-deny", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.header("x-probe-seen"), None, "{echo:?}");
    assert_eq!(gw.envoy.stat("tollgate.requests.verdict.disabled").await, 1);
    // /rule carries `rule: admin`, which reaches the filter.
    let echo: Echo = gw
        .get("/rule/x")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo.header("x-probe-rule"), Some("admin"), "{echo:?}");
    assert_eq!(echo.header("x-probe-seen"), Some("1"));
}

#[tokio::test]
async fn paused_requests_resume_from_the_background_runtime_under_concurrency() {
    let gw = Gateway::start().await;
    const N: usize = 200;
    let requests = (0..N).map(|i| {
        let mut req = client()
            .post(gw.envoy.url("/slow"))
            .header("x-probe-id", i.to_string())
            .header("x-probe-wait", if i % 10 == 0 { "deny" } else { "1" });
        // Some carry a body, which Envoy holds while the request is paused.
        if i % 2 == 1 {
            req = req.body(vec![b'x'; 4096]);
        }
        async move { (i, req.send().await.unwrap()) }
    });
    for (i, resp) in join_all(requests).await {
        if i % 10 == 0 {
            assert_eq!(resp.status(), 429, "request {i}");
            assert_eq!(resp.headers()["retry-after"], "1");
            continue;
        }
        assert_eq!(resp.status(), 200, "request {i}");
        // The resumed verdict's response header reaches the client too.
        assert_eq!(resp.headers()["x-probe-response"], "1", "request {i}");
        let echo: Echo = resp.json().await.unwrap();
        assert_eq!(echo.header("x-probe-id"), Some(i.to_string().as_str()));
        // Woken by its timer on the module's background runtime, finished on Envoy's worker.
        assert!(
            echo.header("x-probe-resumed-by")
                .is_some_and(|t| t.starts_with("wrk:worker_")),
            "{echo:?}"
        );
        assert_eq!(echo.header("x-md-pending"), Some("true"));
        let expected_length = if i % 2 == 1 { "4096" } else { "0" };
        assert_eq!(
            echo.header("content-length"),
            Some(expected_length),
            "{echo:?}"
        );
    }
    assert_eq!(
        gw.envoy.stat("tollgate.paused.verdict.pending").await,
        N as u64
    );
    assert_eq!(
        gw.envoy.stat("tollgate.requests.verdict.respond").await,
        (N / 10) as u64
    );
    assert_eq!(
        gw.envoy.stat("tollgate.requests.verdict.continue").await,
        (N - N / 10) as u64
    );
}

#[tokio::test]
async fn a_panic_in_the_filter_answers_503_and_envoy_keeps_serving() {
    let gw = Gateway::start().await;
    let resp = gw
        .get("/x")
        .header("x-probe-panic", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let ok = gw.get("/x").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(gw.envoy.stat("tollgate.failures.stage.decide").await, 1);
    // The panic is reported in Envoy's own log.
    let log = wait_for("the panic in Envoy's log", Duration::from_secs(5), || {
        let log = gw.envoy.log();
        async move { log.contains("tollgate: panic at").then_some(log) }
    })
    .await;
    assert!(
        log.contains("probe: panic requested by the x-probe-panic header"),
        "{log}"
    );
}

#[test]
fn the_config_in_the_module_docs_loads() {
    let doc = std::fs::read_to_string(project_root().join("docs/envoy-module.md")).unwrap();
    let start = doc.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    validate(&doc[start..end]).unwrap();
}

#[test]
fn a_bad_filter_config_is_refused_with_the_reason_in_envoys_log() {
    let bad = config(
        "\n                  echo: true\n                  deny: {header: x, status: 42}\n",
        "rule: admin",
    );
    let err = validate(&bad).unwrap_err().to_string();
    assert!(err.contains("tollgate: filter config rejected"), "{err}");
    assert!(
        err.contains("deny.status: 42 is not an HTTP status"),
        "{err}"
    );

    let unknown = config(
        "\n                  echo: true\n                  denny: {}\n",
        "rule: admin",
    );
    let err = validate(&unknown).unwrap_err().to_string();
    assert!(
        err.contains("line 2: denny: unknown field `denny`"),
        "{err}"
    );

    let bad_route = config(PROBE, "disabld: true");
    let err = validate(&bad_route).unwrap_err().to_string();
    assert!(err.contains("tollgate: per-route config rejected"), "{err}");
    assert!(err.contains("unknown field `disabld`"), "{err}");

    // The good config passes the same check.
    validate(&config(PROBE, "rule: admin")).unwrap();
}
