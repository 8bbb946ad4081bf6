//! The Helm chart (`helm/tollgate`) proven without a cluster. Helm's own Go SDK (PyPI
//! `helm-python-sdk`, driven by `tests/helm/chart.py`) lints and renders it, with the default
//! values and with `helm/examples/production.yaml`; every manifest validates against the
//! Kubernetes 1.37 schemas; the rendered Envoy config passes `envoy --mode validate` and the
//! rendered service configs pass the binaries' own `check-config`; bad values are refused by
//! `values.schema.json` with the offending field named. Finally the rendered Envoy config,
//! policy, limits, commands, mounts and environment run here with the real binaries (addresses
//! rewritten to loopback) and a request is allowed, denied and rate-limited through Envoy; an
//! upgraded limits ConfigMap swapped into the running volume as the kubelet does takes effect.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use tempfile::TempDir;
use tollgate_tests::echo::{Echo, EchoUpstream};
use tollgate_tests::envoy::{Envoy, validate};
use tollgate_tests::paths::{project_root, workspace_bin};
use tollgate_tests::pki;
use tollgate_tests::process::{ChildProcess, free_addr, free_port, wait_for};
use tollgate_tests::redis::RedisServer;
use tollgate_tests::stack::wait_ready;

const PRODUCTION: &str = "helm/examples/production.yaml";
/// The Redis the production example points at, replaced by a local one.
const PRODUCTION_REDIS: &str = "redis-master.data.svc.cluster.local:6379";
/// Values of the Secrets the production example expects the operator to have created.
const ADMIN_TOKEN: &str = "chart-e2e-admin-credential-0123456789";
const REDIS_PASSWORD: &str = "chart-e2e-redis-password";
const HOST: &str = "api.example.com";

/// Runs `tests/helm/chart.py <command> <args>` with the project virtualenv's Python.
fn helper(command: &str, args: &[&str]) -> std::process::Output {
    Command::new(project_root().join(".venv/bin/python"))
        .arg(project_root().join("tests/helm/chart.py"))
        .arg(command)
        .args(args)
        .current_dir(project_root())
        .output()
        .expect("run tests/helm/chart.py (scripts/setup.sh --with helm installs its packages)")
}

fn stdout_json(out: &std::process::Output) -> Json {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "chart.py printed no JSON ({e}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `-f FILE` / `--set PATH=VALUE` arguments.
fn value_args(files: &[&str], sets: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for f in files {
        args.extend(["-f".to_string(), f.to_string()]);
    }
    for s in sets {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    args
}

/// One container of a rendered workload, as `chart.py render` describes it.
#[derive(Debug, Deserialize)]
pub(crate) struct Workload {
    command: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    mounts: Vec<Mount>,
    unresolved: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Mount {
    path: String,
    local: String,
}

impl Workload {
    /// Replaces every mount path in `text` by the local directory holding that volume, in one
    /// pass (local directories may themselves lie under a mounted path such as `/tmp`).
    pub(crate) fn localise(&self, text: &str) -> String {
        let mut mounts: Vec<&Mount> = self.mounts.iter().collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.path.len()));
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        'scan: while i < text.len() {
            for m in &mounts {
                if text[i..].starts_with(&m.path)
                    && text[i + m.path.len()..]
                        .chars()
                        .next()
                        .is_none_or(|c| c == '/' || c.is_whitespace() || c == '"')
                {
                    out.push_str(&m.local);
                    i += m.path.len();
                    continue 'scan;
                }
            }
            let c = text[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
        out
    }

    /// The rendered `--config` file, with mount paths made local and `hosts` rewritten.
    pub(crate) fn config_file(&self, hosts: &[(&str, String)]) -> PathBuf {
        let at = self
            .command
            .iter()
            .position(|a| a == "--config")
            .expect("the container runs with --config");
        let path = PathBuf::from(self.localise(&self.command[at + 1]));
        // The rendered text is kept aside, so that spawning the workload again (a second pod)
        // localises it once more from the original.
        let rendered = path.with_extension("rendered");
        if !rendered.exists() {
            std::fs::copy(&path, &rendered).unwrap();
        }
        let mut text = self.localise(&std::fs::read_to_string(&rendered).unwrap());
        for (from, to) in hosts {
            text = text.replace(from, to);
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts the container's command with the workspace binary, its localised arguments and
    /// environment (with `hosts` rewritten) plus `extra` arguments.
    pub(crate) fn spawn(
        &self,
        dir: &Path,
        hosts: &[(&str, String)],
        extra: &[String],
    ) -> ChildProcess {
        assert!(self.unresolved.is_empty(), "{:?}", self.unresolved);
        let bin = &self.command[0];
        let config = self.config_file(hosts);
        let mut cmd = Command::new(workspace_bin(bin));
        let mut args: Vec<String> = self.command[1..].iter().map(|a| self.localise(a)).collect();
        let at = args.iter().position(|a| a == "--config").unwrap();
        args[at + 1] = config.display().to_string();
        cmd.args(args).args(extra).env_clear();
        for (k, v) in &self.env {
            let mut v = v.clone();
            for (from, to) in hosts {
                v = v.replace(from, to);
            }
            cmd.env(k, v);
        }
        ChildProcess::spawn(bin, cmd, &dir.join(format!("{bin}.log"))).unwrap()
    }
}

/// A rendered release in a temp dir.
pub(crate) struct Rendered {
    dir: TempDir,
    summary: Json,
}

impl Rendered {
    /// A rendered ConfigMap's file.
    pub(crate) fn file(&self, configmap: &str, key: &str) -> PathBuf {
        self.dir.path().join("files").join(configmap).join(key)
    }

    pub(crate) fn workload(&self, name: &str) -> Workload {
        let w = self.summary["workloads"]
            .get(name)
            .unwrap_or_else(|| panic!("no workload {name}"));
        serde_json::from_value(w.clone()).unwrap()
    }

    pub(crate) fn manifests(&self) -> Vec<Yaml> {
        let text = std::fs::read_to_string(self.dir.path().join("manifests.yaml")).unwrap();
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| Yaml::deserialize(d).unwrap())
            .collect()
    }

    pub(crate) fn find(&self, kind: &str, name: &str) -> Yaml {
        self.manifests()
            .into_iter()
            .find(|m| m["kind"] == kind && m["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    /// `Kind/name` of every manifest.
    pub(crate) fn resources(&self) -> Vec<String> {
        self.summary["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{}/{}",
                    r["kind"].as_str().unwrap(),
                    r["name"].as_str().unwrap()
                )
            })
            .collect()
    }
}

/// Renders release `edge` in namespace `tollgate`; `secrets` (`name/key=value`) stand for
/// Secrets the values expect to exist already. Err carries chart.py's explanation.
pub(crate) fn render(files: &[&str], sets: &[&str], secrets: &[&str]) -> Result<Rendered, String> {
    let dir = tempfile::tempdir().unwrap();
    let mut args = value_args(files, sets);
    args.extend(["--out".into(), dir.path().display().to_string()]);
    for s in secrets {
        args.extend(["--secret".into(), s.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = helper("render", &args);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(Rendered {
        summary: stdout_json(&out),
        dir,
    })
}

fn production_secrets() -> [String; 2] {
    [
        format!("tollgate-admin/token={ADMIN_TOKEN}"),
        format!("tollgate-redis/password={REDIS_PASSWORD}"),
    ]
}

fn render_production(sets: &[&str]) -> Rendered {
    let secrets = production_secrets();
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    render(&[PRODUCTION], sets, &secrets).unwrap_or_else(|e| panic!("{e}"))
}

fn render_default() -> Rendered {
    render(&[], &[], &[]).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn helm_lint_is_clean_with_default_and_production_values() {
    for files in [&[][..], &[PRODUCTION][..]] {
        let args = value_args(files, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = helper("lint", &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = stdout_json(&out);
        assert_eq!(report["total_charts_linted"], 1, "{report}");
        assert_eq!(report["errors"], Json::Array(vec![]), "{report}");
        // Severity 2 is a warning, 3 an error; only informational notes may remain.
        let findings: Vec<&Json> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
            .collect();
        assert!(
            findings.is_empty(),
            "lint findings with {files:?}: {findings:?}"
        );
    }
}

#[test]
fn every_rendered_manifest_validates_against_the_kubernetes_schemas() {
    // chart.py fails the render when any manifest violates its schema (strict: unknown fields
    // are errors too), so rendering at all is the proof; the lists show what was checked.
    let default = render_default();
    let resources = default.resources();
    for want in [
        "Deployment/edge-tollgate-authz",
        "Deployment/edge-tollgate-ratelimit",
        "Deployment/edge-tollgate-envoy",
        "StatefulSet/edge-tollgate-redis",
        "Secret/edge-tollgate-admin",
        "Secret/edge-tollgate-redis",
        "Service/edge-tollgate-authz-headless",
        "Service/edge-tollgate-admin",
        "ConfigMap/edge-tollgate-limits",
        "ConfigMap/edge-tollgate-dashboard",
        "NetworkPolicy/edge-tollgate-authz",
        "NetworkPolicy/edge-tollgate-redis",
        "PodDisruptionBudget/edge-tollgate-authz",
    ] {
        assert!(
            resources.iter().any(|r| r == want),
            "{want} missing: {resources:?}"
        );
    }
    assert_eq!(default.summary["errors"], Json::Array(vec![]));

    let production = render_production(&[]);
    let resources = production.resources();
    for want in [
        "HorizontalPodAutoscaler/edge-tollgate-authz",
        "HorizontalPodAutoscaler/edge-tollgate-envoy",
        "ServiceMonitor/edge-tollgate-ratelimit",
    ] {
        assert!(
            resources.iter().any(|r| r == want),
            "{want} missing: {resources:?}"
        );
    }
    // External Redis and operator-made Secrets: the chart creates neither.
    for absent in ["StatefulSet/", "Secret/"] {
        assert!(
            !resources.iter().any(|r| r.starts_with(absent)),
            "{resources:?}"
        );
    }
    let schemas: Vec<&str> = production.summary["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["schema"].as_str().unwrap())
        .collect();
    assert!(
        schemas
            .iter()
            .all(|s| s.starts_with("kubernetes 1.37") || s.starts_with("servicemonitor"))
    );

    // The public gateway Service carries only the gateway port; readiness and metrics stay on
    // a ClusterIP Service.
    let gateway = production.find("Service", "edge-tollgate-envoy");
    assert_eq!(gateway["spec"]["type"], "LoadBalancer");
    let ports = gateway["spec"]["ports"].as_sequence().unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["name"], "http");
    let ops = production.find("Service", "edge-tollgate-envoy-ops");
    assert_eq!(ops["spec"]["type"], "ClusterIP");
    // An HPA owns the replica count; the Deployment must not fight it.
    let authz = production.find("Deployment", "edge-tollgate-authz");
    assert!(authz["spec"].get("replicas").is_none());
    let dashboard = default.find("ConfigMap", "edge-tollgate-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    // The project's dashboard (deploy/grafana, whose every series is checked against a real
    // Prometheus by the observability tests), byte for byte: Helm cannot read outside the
    // chart, so the chart carries a copy that must not drift.
    let shipped =
        std::fs::read_to_string(project_root().join("deploy/grafana/tollgate.json")).unwrap();
    assert_eq!(
        dashboard["data"]["tollgate.json"]
            .as_str()
            .unwrap()
            .trim_end(),
        shipped.trim_end(),
        "helm/tollgate/dashboards/tollgate.json differs from deploy/grafana/tollgate.json: copy it over"
    );
}

#[test]
fn pods_are_hardened_and_outlive_their_drain() {
    let r = render_default();
    for name in [
        "edge-tollgate-authz",
        "edge-tollgate-ratelimit",
        "edge-tollgate-envoy",
    ] {
        let d = r.find("Deployment", name);
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        assert_eq!(
            pod["enableServiceLinks"], false,
            "{name}: no TOLLGATE_* from Services"
        );
        let c = &pod["containers"][0];
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{name}");
        assert!(c["resources"]["requests"]["cpu"].is_string(), "{name}");
    }
    for (name, service) in [
        ("edge-tollgate-authz", "authz"),
        ("edge-tollgate-ratelimit", "ratelimit"),
    ] {
        let d = r.find("Deployment", name);
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert!(c["livenessProbe"]["grpc"]["port"].is_number());
        // The grace period covers the service's own not-ready delay plus drain.
        let config: Yaml = serde_yaml::from_str(
            &std::fs::read_to_string(r.file(name, &format!("{service}.yaml"))).unwrap(),
        )
        .unwrap();
        let secs = |v: &Yaml| {
            v.as_str()
                .unwrap()
                .trim_end_matches('s')
                .parse::<u64>()
                .unwrap()
        };
        let needed =
            secs(&config["server"]["shutdown_delay"]) + secs(&config["server"]["drain_timeout"]);
        assert!(
            pod["terminationGracePeriodSeconds"].as_u64().unwrap() > needed,
            "{name}"
        );
    }
    let redis = r.find("StatefulSet", "edge-tollgate-redis");
    assert_eq!(
        redis["spec"]["template"]["spec"]["enableServiceLinks"],
        false
    );
    // A grace period shorter than the drain is refused at render time, with the reason.
    let err = render(&[], &["ratelimit.terminationGracePeriodSeconds=20"], &[])
        .err()
        .expect("a grace period shorter than the drain is refused");
    assert!(
        err.contains("ratelimit.terminationGracePeriodSeconds (20) must exceed shutdownDelaySeconds + drainTimeoutSeconds (25)"),
        "{err}"
    );
}

#[test]
fn network_policies_keep_grpc_to_the_gateway_and_the_admin_api_internal() {
    let r = render_production(&[]);
    let envoy_pods = serde_yaml::from_str::<Yaml>(
        "{app.kubernetes.io/name: tollgate, app.kubernetes.io/instance: edge, app.kubernetes.io/component: envoy}",
    )
    .unwrap();
    let rules = |name: &str| -> BTreeMap<String, Yaml> {
        let np = r.find("NetworkPolicy", name);
        assert_eq!(np["spec"]["policyTypes"][0], "Ingress");
        np["spec"]["ingress"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|rule| {
                let port = rule["ports"][0]["port"].as_str().unwrap().to_string();
                (port, rule["from"].clone())
            })
            .collect()
    };
    for name in ["edge-tollgate-authz", "edge-tollgate-ratelimit"] {
        let rules = rules(name);
        let grpc = rules["grpc"].as_sequence().unwrap();
        assert_eq!(grpc.len(), 1, "{name}: only the gateway: {grpc:?}");
        assert_eq!(grpc[0]["podSelector"]["matchLabels"], envoy_pods);
        // Metrics only from the monitoring namespace (production's metricsFrom).
        assert_eq!(
            rules["http"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "monitoring"
        );
    }
    let authz = rules("edge-tollgate-authz");
    assert_eq!(
        authz["admin"][0]["podSelector"]["matchLabels"]["tollgate.io/admin-client"],
        "true"
    );
    assert!(!rules("edge-tollgate-ratelimit").contains_key("admin"));
    // The admin Service is never exposed outside the cluster.
    let admin = r.find("Service", "edge-tollgate-admin");
    assert_eq!(admin["spec"]["type"], "ClusterIP");
    // Own gateways are let in by configuration.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("istio.yaml");
    std::fs::write(
        &f,
        "envoy: { enabled: false }\nnetworkPolicy:\n  gatewayFrom:\n    - namespaceSelector: { matchLabels: { kubernetes.io/metadata.name: istio-system } }\n",
    )
    .unwrap();
    let byo = render(&[f.to_str().unwrap()], &[], &[]).unwrap();
    let np = byo.find("NetworkPolicy", "edge-tollgate-ratelimit");
    let grpc = &np["spec"]["ingress"][0];
    assert_eq!(grpc["ports"][0]["port"], "grpc");
    assert_eq!(
        grpc["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "istio-system"
    );
    assert_eq!(grpc["from"].as_sequence().unwrap().len(), 1);
    // The trial Redis answers only the two services.
    let redis = render_default().find("NetworkPolicy", "edge-tollgate-redis");
    let from = redis["spec"]["ingress"][0]["from"].as_sequence().unwrap();
    let components: Vec<&str> = from
        .iter()
        .map(|p| {
            p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(components, ["authz", "ratelimit"]);
}

#[test]
fn config_changes_roll_the_pods_but_limit_and_policy_changes_are_hot_reloaded() {
    let checksum = |r: &Rendered, name: &str| {
        r.find("Deployment", name)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let base = render_production(&[]);
    let limits = render_with_reports_limit(10);
    let policy = render_production(&["authz.policy.no_match=authenticated"]);
    let routes = render_production(&["envoy.extAuthz.timeout=0.75s"]);
    let (authz, ratelimit, envoy) = (
        "edge-tollgate-authz",
        "edge-tollgate-ratelimit",
        "edge-tollgate-envoy",
    );
    // New limits reach running pods through the mounted ConfigMap: no pod restarts.
    assert_ne!(
        std::fs::read_to_string(base.file("edge-tollgate-limits", "gateway.yaml")).unwrap(),
        std::fs::read_to_string(limits.file("edge-tollgate-limits", "gateway.yaml")).unwrap()
    );
    for d in [authz, ratelimit, envoy] {
        assert_eq!(checksum(&base, d), checksum(&limits, d), "{d}");
    }
    // The authz policy is hot-reloaded from the mounted ConfigMap: its rendered file changes,
    // the pods stay.
    assert_ne!(
        std::fs::read_to_string(base.file("edge-tollgate-authz", "authz.yaml")).unwrap(),
        std::fs::read_to_string(policy.file("edge-tollgate-authz", "authz.yaml")).unwrap()
    );
    assert_eq!(checksum(&base, authz), checksum(&policy, authz));
    assert_eq!(checksum(&base, ratelimit), checksum(&policy, ratelimit));
    // Settings read at start roll exactly the pods that read them.
    let authz_log = render_production(&["authz.log.level=debug"]);
    assert_ne!(checksum(&base, authz), checksum(&authz_log, authz));
    assert_eq!(checksum(&base, ratelimit), checksum(&authz_log, ratelimit));
    assert_ne!(checksum(&base, envoy), checksum(&routes, envoy));
    assert_eq!(checksum(&base, authz), checksum(&routes, authz));
}

#[test]
fn rendered_envoy_configs_pass_envoy_validate() {
    for r in [render_default(), render_production(&[])] {
        let path = r.file("edge-tollgate-envoy", "envoy.yaml");
        validate(&path).unwrap_or_else(|e| panic!("{e:#}"));
    }
    // The install line of the README (docs/helm.md): one route from --set flags.
    let readme = render(
        &[],
        &[
            "image.repository=registry.example.com/platform/tollgate",
            "image.tag=0.1.0",
            "envoy.routes[0].name=api",
            "envoy.routes[0].pathPrefix=/",
            "envoy.routes[0].upstream.address=api.default.svc.cluster.local",
            "envoy.routes[0].upstream.port=8080",
        ],
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(readme.file("edge-tollgate-envoy", "envoy.yaml")).unwrap();
    assert!(text.contains("cluster: upstream_api") && !text.contains("upstream_default"));
    validate(&readme.file("edge-tollgate-envoy", "envoy.yaml")).unwrap();
    // Bring-your-own Envoy: the snippet ConfigMap, pasted into someone else's minimal config.
    let byo = render(&[], &["envoy.enabled=false"], &[]).unwrap();
    let snippet = |key: &str| -> Yaml {
        serde_yaml::from_str(
            &std::fs::read_to_string(byo.file("edge-tollgate-envoy-snippet", key)).unwrap(),
        )
        .unwrap()
    };
    let mut mine: Yaml = serde_yaml::from_str(OWN_ENVOY).unwrap();
    let hcm = &mut mine["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["rate_limits"] =
        snippet("route_rate_limits.yaml");
    let router = hcm["http_filters"][0].clone();
    let mut filters = snippet("http_filters.yaml").as_sequence().unwrap().clone();
    let names: Vec<&str> = filters
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.header_mutation",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.ratelimit"
        ],
        "identity headers are stripped before ext_authz"
    );
    filters.push(router);
    hcm["http_filters"] = Yaml::Sequence(filters);
    let clusters = mine["static_resources"]["clusters"]
        .as_sequence_mut()
        .unwrap();
    clusters.extend(
        snippet("clusters.yaml")
            .as_sequence()
            .unwrap()
            .iter()
            .cloned(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("own-envoy.yaml");
    std::fs::write(&path, serde_yaml::to_string(&mine).unwrap()).unwrap();
    validate(&path).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!byo.file("edge-tollgate-envoy", "envoy.yaml").exists());

    // Without the services in the chart, their filters go too and the config is still valid.
    let r = render(&[], &["authz.enabled=false"], &[]).unwrap();
    let text = std::fs::read_to_string(r.file("edge-tollgate-envoy", "envoy.yaml")).unwrap();
    assert!(!text.contains("ext_authz.v3.ExtAuthz\n"), "{text}");
    validate(&r.file("edge-tollgate-envoy", "envoy.yaml")).unwrap();
}

/// A user's own Envoy, before the chart's snippet is pasted in.
const OWN_ENVOY: &str = r#"
static_resources:
  listeners:
    - name: mine
      address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: mine
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: { prefix: / }
                          route: { cluster: app }
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: app
      type: STRICT_DNS
      load_assignment:
        cluster_name: app
        endpoints:
          - lb_endpoints:
              - endpoint: { address: { socket_address: { address: app.shop.svc, port_value: 8080 } } }
"#;

/// Runs `<bin> check-config` on a rendered config, with its mounted paths made local.
pub(crate) fn check_config(r: &Rendered, workload: &str) -> std::process::Output {
    let w = r.workload(workload);
    let config = w.config_file(&[]);
    Command::new(workspace_bin(&w.command[0]))
        .args(["check-config", "--config"])
        .arg(config)
        .env_clear()
        .envs(&w.env)
        .output()
        .unwrap()
}

#[test]
fn rendered_service_configs_pass_check_config() {
    let cluster = [
        "redis.mode=cluster",
        "redis.clusterNodes={redis://redis-0.redis:6379,redis://redis-1.redis:6379}",
        "redis.keyStoreUrl=redis://keys.data.svc:6379/0",
    ];
    let none = [
        "redis.mode=none",
        "authz.replicas=1",
        "ratelimit.replicas=1",
    ];
    let sentinel = [
        "redis.mode=sentinel",
        "redis.sentinel.master=tollgate",
        "redis.sentinel.nodes={redis://sentinel-0.redis:26379,redis://sentinel-1.redis:26379}",
        "redis.password=s3cret",
    ];
    let renders = [
        ("default", render_default()),
        ("production", render_production(&[])),
        ("cluster", render(&[], &cluster, &[]).unwrap()),
        ("no redis", render(&[], &none, &[]).unwrap()),
        ("sentinel", render(&[], &sentinel, &[]).unwrap()),
    ];
    for (what, r) in &renders {
        for workload in [
            "edge-tollgate-authz/authz",
            "edge-tollgate-ratelimit/ratelimit",
        ] {
            let out = check_config(r, workload);
            assert!(
                out.status.success(),
                "{what} {workload}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let cluster_config = std::fs::read_to_string(
        renders[2]
            .1
            .file("edge-tollgate-ratelimit", "ratelimit.yaml"),
    )
    .unwrap();
    assert!(
        cluster_config.contains("cluster_nodes:"),
        "{cluster_config}"
    );
    // Sentinel: both stores name the master and the sentinels, nothing else.
    for (configmap, file, at) in [
        ("edge-tollgate-ratelimit", "ratelimit.yaml", &["store"][..]),
        (
            "edge-tollgate-authz",
            "authz.yaml",
            &["api_keys", "store"][..],
        ),
    ] {
        let text = std::fs::read_to_string(renders[4].1.file(configmap, file)).unwrap();
        let cfg: Yaml = serde_yaml::from_str(&text).unwrap();
        let store = at.iter().fold(&cfg, |v, k| &v[*k]);
        assert_eq!(store["sentinel_master"], "tollgate", "{text}");
        assert_eq!(
            store["sentinel_nodes"][1], "redis://sentinel-1.redis:26379",
            "{text}"
        );
        assert!(
            store["url"].is_null() && store["cluster_nodes"].is_null(),
            "{text}"
        );
    }
    let Err(e) = render(&[], &["redis.mode=sentinel"], &[]) else {
        panic!("sentinel mode without sentinels must be refused");
    };
    assert!(e.contains("sentinel"), "{e}");

    // The check has teeth: a limit with an unknown unit in the values is named by file and field.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-limits.yaml");
    std::fs::write(
        &bad,
        "ratelimit:\n  limits:\n    gateway:\n      domain: gateway\n      descriptors:\n        - key: route\n          rate_limit: { unit: fortnight, requests_per_unit: 1 }\n",
    )
    .unwrap();
    let r = render(&[bad.to_str().unwrap()], &[], &[]).unwrap();
    let out = check_config(&r, "edge-tollgate-ratelimit/ratelimit");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway.yaml") && err.contains("unit"),
        "{err}"
    );
}

#[test]
fn every_switch_renders_valid_manifests_envoy_and_service_configs() {
    let pki_dir = tempfile::tempdir().unwrap();
    let ca = std::fs::read_to_string(pki::generate(pki_dir.path(), "redis-ca").ca_cert).unwrap();
    let ca_secret = format!("redis-ca/ca.crt={ca}");
    let variants: [(&[&str], &[&str]); 9] = [
        (&["envoy.enabled=false"], &[]),
        (&["authz.enabled=false"], &[]),
        (&["ratelimit.enabled=false"], &[]),
        // JWT only: the service's own sections pass through the values unchanged.
        (
            &[
                "authz.admin.enabled=false",
                "authz.apiKeys.enabled=false",
                "authz.jwt.issuers[0].issuer=https://id.example.com",
                "authz.jwt.issuers[0].discovery=true",
                "authz.jwt.issuers[0].audiences[0]=api",
            ],
            &[],
        ),
        (
            &[
                "redis.mode=none",
                "authz.replicas=1",
                "ratelimit.replicas=1",
                "authz.apiKeys.embedded.existingClaim=keys",
            ],
            &[],
        ),
        (
            &[
                "networkPolicy.enabled=false",
                "serviceAccount.create=false",
                "metrics.dashboard.enabled=false",
                "envoy.podDisruptionBudget.enabled=false",
            ],
            &[],
        ),
        (
            &[
                "redis.url=rediss://redis.data.svc:6380/0",
                "redis.tls.caSecret=redis-ca",
                "redis.password=s3cret",
            ],
            &[&ca_secret],
        ),
        (&["debug.enabled=true", "debug.pprof=true"], &[]),
        (
            &[
                "authz.autoscaling.enabled=true",
                "ratelimit.autoscaling.enabled=true",
                "envoy.autoscaling.enabled=true",
                "metrics.serviceMonitor.enabled=true",
            ],
            &[],
        ),
    ];
    for (sets, secrets) in variants {
        // Rendering validates every manifest (see above); a failure names it.
        let r = render(&[], sets, secrets).unwrap_or_else(|e| panic!("{sets:?}: {e}"));
        let workloads = r.summary["workloads"].as_object().unwrap();
        for (workload, _) in workloads {
            let w = r.workload(workload);
            assert!(
                w.unresolved.is_empty(),
                "{sets:?} {workload}: {:?}",
                w.unresolved
            );
            if w.command.iter().any(|a| a == "--config") {
                let out = check_config(&r, workload);
                assert!(
                    out.status.success(),
                    "{sets:?} {workload}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let envoy = r.file("edge-tollgate-envoy", "envoy.yaml");
        assert_eq!(envoy.exists(), !sets.contains(&"envoy.enabled=false"));
        if envoy.exists() {
            validate(&envoy).unwrap_or_else(|e| panic!("{sets:?}: {e:#}"));
        }
    }
    // What only the service can judge is caught by its check-config: no identity method left
    // for a policy that needs one.
    let r = render(
        &[],
        &["authz.admin.enabled=false", "authz.apiKeys.enabled=false"],
        &[],
    )
    .unwrap();
    let out = check_config(&r, "edge-tollgate-authz/authz");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("policy.identity_order: none of these identity methods is configured"),
        "{err}"
    );
}

#[test]
fn the_memory_store_is_bounded_by_half_the_pods_memory_limit() {
    let memory = [
        "redis.mode=none",
        "authz.replicas=1",
        "ratelimit.replicas=1",
        "authz.apiKeys.embedded.existingClaim=keys",
    ];
    let rendered = |extra: &[&str]| {
        let sets: Vec<&str> = memory.iter().chain(extra).copied().collect();
        render(&[], &sets, &[])
    };
    let max_bytes = |extra: &[&str]| -> Option<u64> {
        let r = rendered(extra).unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        let file = r.file("edge-tollgate-ratelimit", "ratelimit.yaml");
        let cfg: Yaml = serde_yaml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        assert_eq!(cfg["store"]["type"], "memory");
        cfg["store"]["max_bytes"].as_u64()
    };
    // The default pod limit is 256Mi.
    assert_eq!(max_bytes(&[]), Some(128 << 20));
    assert_eq!(
        max_bytes(&["ratelimit.resources.limits.memory=1Gi"]),
        Some(512 << 20)
    );
    assert_eq!(
        max_bytes(&["ratelimit.resources.limits.memory=300M"]),
        Some(150_000_000)
    );
    assert_eq!(
        max_bytes(&["ratelimit.memoryStore.maxBytes=10485760"]),
        Some(10 << 20)
    );
    let Err(e) = rendered(&["ratelimit.resources.limits.memory=1.5Gi"]) else {
        panic!("a fractional quantity must be refused");
    };
    assert!(e.contains("not a whole memory quantity"), "{e}");
}

#[test]
fn schema_rejects_bad_values_with_a_clear_message() {
    for (set, want) in [
        (
            "authz.replicas=-1",
            "at '/authz/replicas': minimum: got -1, want 1",
        ),
        (
            "redis.mode=replicated",
            "at '/redis/mode': value must be one of 'standalone', 'sentinel', 'cluster', 'none'",
        ),
        (
            "redis.mode=sentinel",
            "at '/redis/sentinel/nodes': minItems: got 0, want 1",
        ),
        (
            "authz.replicaCount=3",
            "at '/authz': additional properties 'replicaCount' not allowed",
        ),
        (
            "envoy.extAuthz.timeout=250ms",
            "at '/envoy/extAuthz/timeout'",
        ),
        ("ratelimit.failureMode=maybe", "at '/ratelimit/failureMode'"),
        // The password belongs in a Secret, never in a URL in the values.
        ("redis.url=redis://:pw@redis:6379", "at '/redis/url'"),
        (
            "redis.mode=cluster",
            "at '/redis/clusterNodes': minItems: got 0, want 1",
        ),
    ] {
        let out = helper("schema", &["--set", set]);
        let report = stdout_json(&out);
        assert_eq!(report["valid"], false, "{set} was accepted");
        let message = report["error"].as_str().unwrap();
        assert!(message.contains(want), "{set}: {message}");
        // Rendering (what `helm install` does) refuses them the same way.
        let err = render(&[], &[set], &[]).err().expect("refused");
        assert!(
            err.contains("values rejected by values.schema.json") && err.contains(want),
            "{err}"
        );
    }
    // A route needs an upstream.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("route.yaml");
    std::fs::write(
        &f,
        "envoy:\n  routes:\n    - name: api\n      pathPrefix: /\n",
    )
    .unwrap();
    let err = render(&[f.to_str().unwrap()], &[], &[])
        .err()
        .expect("refused");
    assert!(
        err.contains("at '/envoy/routes/0': missing property 'upstream'"),
        "{err}"
    );
    // Cross-field rules the schema cannot express are refused while rendering.
    std::fs::write(
        &f,
        "envoy:\n  routes:\n    - { name: api, pathPrefix: /a, upstream: { address: a, port: 80 } }\n    - { name: api, pathPrefix: /b, upstream: { address: b, port: 80 } }\n",
    )
    .unwrap();
    let err = render(&[f.to_str().unwrap()], &[], &[])
        .err()
        .expect("refused");
    assert!(
        err.contains("envoy.routes: the name \"api\" is used twice"),
        "{err}"
    );
    let err = render(&[], &["redis.mode=none"], &[])
        .err()
        .expect("refused");
    assert!(
        err.contains("redis.mode is none") && err.contains("replicas must be 1"),
        "{err}"
    );
}

/// Points the rendered Envoy config at loopback: its listeners and admin on free ports, the
/// Tollgate clusters at the local services, every upstream at `upstream`.
pub(crate) fn loopback_envoy(config: &str, ports: &EnvoyPorts) -> String {
    let mut v: Yaml = serde_yaml::from_str(config).unwrap();
    let set = |sa: &mut Yaml, port: u16| {
        sa["address"] = Yaml::from("127.0.0.1");
        sa["port_value"] = Yaml::from(port);
    };
    set(&mut v["admin"]["address"]["socket_address"], ports.admin);
    for l in v["static_resources"]["listeners"]
        .as_sequence_mut()
        .unwrap()
    {
        let port = match l["name"].as_str().unwrap() {
            "gateway" => ports.listener,
            "ops" => ports.ops,
            other => panic!("unexpected listener {other}"),
        };
        set(&mut l["address"]["socket_address"], port);
    }
    for c in v["static_resources"]["clusters"].as_sequence_mut().unwrap() {
        let name = c["name"].as_str().unwrap().to_string();
        let port = match name.as_str() {
            "envoy_admin" => ports.admin,
            "tollgate_authz" => ports.authz,
            "tollgate_ratelimit" => ports.ratelimit,
            n if n.starts_with("upstream_") => ports.upstream,
            other => panic!("unexpected cluster {other}"),
        };
        for e in c["load_assignment"]["endpoints"].as_sequence_mut().unwrap() {
            for lb in e["lb_endpoints"].as_sequence_mut().unwrap() {
                set(&mut lb["endpoint"]["address"]["socket_address"], port);
            }
        }
    }
    serde_yaml::to_string(&v).unwrap()
}

pub(crate) struct EnvoyPorts {
    pub(crate) listener: u16,
    pub(crate) ops: u16,
    pub(crate) admin: u16,
    pub(crate) authz: u16,
    pub(crate) ratelimit: u16,
    pub(crate) upstream: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_release_allows_denies_and_rate_limits_through_envoy() {
    let r = render_production(&["debug.enabled=true"]);
    let dir = tempfile::tempdir().unwrap();

    // The operator's Redis, with the password of the `tollgate-redis` Secret.
    let (redis, mut conn) = redis_with_password(REDIS_PASSWORD).await;
    let hosts = [(PRODUCTION_REDIS, format!("127.0.0.1:{}", redis.port()))];

    let (rl_grpc, rl_http) = (free_addr(), free_addr());
    let _ratelimit = r.workload("edge-tollgate-ratelimit/ratelimit").spawn(
        dir.path(),
        &hosts,
        &listen_args(rl_grpc, rl_http),
    );
    let (authz_grpc, authz_http, admin) = (free_addr(), free_addr(), free_addr());
    let mut authz_args = listen_args(authz_grpc, authz_http);
    authz_args.extend(["--set".into(), format!("admin.addr={admin}")]);
    let _authz = r
        .workload("edge-tollgate-authz/authz")
        .spawn(dir.path(), &hosts, &authz_args);
    wait_ready(rl_http).await;
    wait_ready(authz_http).await;

    let upstream = EchoUpstream::start().await;
    let ports = EnvoyPorts {
        listener: free_port(),
        ops: free_port(),
        admin: free_port(),
        authz: authz_grpc.port(),
        ratelimit: rl_grpc.port(),
        upstream: upstream.port(),
    };
    let envoy_config =
        std::fs::read_to_string(r.file("edge-tollgate-envoy", "envoy.yaml")).unwrap();
    let envoy = Envoy::start_raw(
        &loopback_envoy(&envoy_config, &ports),
        ports.listener,
        ports.admin,
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let get = |host: &'static str, path: &str, key: Option<&str>| {
        let mut req = http.get(envoy.url(path)).header("host", host);
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        req.send()
    };

    // The ops listener serves Envoy's readiness for the kubelet, nothing else of the admin API.
    let ops = |path: &str| reqwest::get(format!("http://127.0.0.1:{}{path}", ports.ops));
    assert_eq!(ops("/ready").await.unwrap().status(), 200);
    assert_eq!(ops("/stats/prometheus").await.unwrap().status(), 200);
    assert_eq!(ops("/quitquitquit").await.unwrap().status(), 404);

    // Allowed without a credential: the health route skips authz, /docs is a public rule.
    assert_eq!(get(HOST, "/healthz", None).await.unwrap().status(), 200);
    assert_eq!(get(HOST, "/docs/intro", None).await.unwrap().status(), 200);
    // Denied: the API needs a key; an unknown host has no route at all.
    let denied = get(HOST, "/orders/1", None).await.unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(
        get("evil.example.com", "/orders/1", None)
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        get("partners.example.com", "/", None)
            .await
            .unwrap()
            .status(),
        401
    );

    // A key from the admin API (credential from the mounted Secret, keys kept in Redis).
    let body = serde_json::json!({"name": "e2e", "owner": "alice", "plan": "silver"});
    let created =
        tollgate_tests::stack::create_key(&format!("http://{admin}"), ADMIN_TOKEN, &body).await;
    let key = created["secret"].as_str().unwrap().to_string();
    let allowed = get(HOST, "/orders/1", Some(&key)).await.unwrap();
    assert_eq!(allowed.status(), 200);
    let echo: Echo = allowed.json().await.unwrap();
    assert_eq!(echo.header("x-tollgate-subject"), Some("alice"));
    assert_eq!(
        echo.header("x-api-key"),
        None,
        "the credential is not forwarded"
    );

    // Rate-limited: /reports allows 3 a minute (counted in Redis), then 429 with Retry-After.
    for i in 0..3 {
        let res = get(HOST, "/reports/daily", Some(&key)).await.unwrap();
        assert_eq!(res.status(), 200, "report {i}");
    }
    let limited = get(HOST, "/reports/daily", Some(&key)).await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    // Other routes are unaffected by that limit.
    assert_eq!(
        get(HOST, "/orders/2", Some(&key)).await.unwrap().status(),
        200
    );

    // `helm upgrade` with a higher /reports limit: the kubelet swaps the limits volume's `..data`
    // link and the running ratelimit reloads it, without a restart.
    let upgraded = render_with_reports_limit(10);
    swap_configmap_volume(
        &r.workload("edge-tollgate-ratelimit/ratelimit"),
        "/etc/tollgate/limits",
        &upgraded.dir.path().join("files/edge-tollgate-limits"),
    );
    wait_for("the upgraded limits", Duration::from_secs(10), || async {
        let res = get(HOST, "/reports/daily", Some(&key)).await.ok()?;
        (res.status() == 200).then_some(())
    })
    .await;

    // The operator endpoints answer only the generated debug credential, mounted from its Secret.
    let ratelimit = r.workload("edge-tollgate-ratelimit/ratelimit");
    let debug_token =
        std::fs::read_to_string(ratelimit.localise("/etc/tollgate/debug/token")).unwrap();
    assert!(debug_token.len() >= 32);
    let loglevel = format!("http://{rl_http}/loglevel");
    let anonymous = http.put(&loglevel).body("debug").send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let operator = http
        .put(&loglevel)
        .bearer_auth(debug_token.trim_end())
        .body("info")
        .send()
        .await
        .unwrap();
    assert_eq!(operator.status(), 200, "{}", operator.text().await.unwrap());

    let counters: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert!(
        counters > 0,
        "counters and keys live in the configured Redis"
    );
    assert!(
        envoy
            .stat("cluster.upstream_reports.ratelimit.over_limit")
            .await
            >= 1
    );
}

/// The production release with `reports` allowing `n` calls a minute instead of 3.
fn render_with_reports_limit(n: u64) -> Rendered {
    let production: Yaml =
        serde_yaml::from_str(&std::fs::read_to_string(project_root().join(PRODUCTION)).unwrap())
            .unwrap();
    let mut limits = production["ratelimit"]["limits"].clone();
    let reports = limits["gateway"]["descriptors"]
        .as_sequence_mut()
        .unwrap()
        .iter_mut()
        .find(|d| d["value"] == "reports")
        .expect("a reports descriptor");
    reports["rate_limit"]["requests_per_unit"] = Yaml::from(n);
    let dir = tempfile::tempdir().unwrap();
    let update = dir.path().join("upgrade.yaml");
    let mut values = serde_yaml::Mapping::new();
    let mut ratelimit = serde_yaml::Mapping::new();
    ratelimit.insert("limits".into(), limits);
    values.insert("ratelimit".into(), Yaml::Mapping(ratelimit));
    std::fs::write(&update, serde_yaml::to_string(&values).unwrap()).unwrap();
    let secrets = production_secrets();
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    render(&[PRODUCTION, update.to_str().unwrap()], &[], &secrets).unwrap_or_else(|e| panic!("{e}"))
}

/// Updates a mounted ConfigMap volume the way the kubelet does: the new files in a fresh hidden
/// directory, then `..data` replaced by one rename.
fn swap_configmap_volume(w: &Workload, mount_path: &str, new_files: &Path) {
    let volume = PathBuf::from(w.localise(mount_path));
    let fresh = volume.join("..upgrade");
    std::fs::create_dir(&fresh).unwrap();
    for entry in std::fs::read_dir(new_files).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), fresh.join(entry.file_name())).unwrap();
        let visible = volume.join(entry.file_name());
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(entry.file_name()), visible)
                .unwrap();
        }
    }
    let tmp = volume.join("..data_tmp");
    std::os::unix::fs::symlink("..upgrade", &tmp).unwrap();
    std::fs::rename(&tmp, volume.join("..data")).unwrap();
    std::fs::remove_dir_all(volume.join("..initial")).unwrap();
}

/// A Redis that asks for `password`, as an operator's does, and a connection to it opened
/// before (so authenticated).
pub(crate) async fn redis_with_password(
    password: &str,
) -> (RedisServer, redis::aio::MultiplexedConnection) {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(password)
        .query_async(&mut conn)
        .await
        .unwrap();
    (redis, conn)
}

pub(crate) fn listen_args(grpc: SocketAddr, http: SocketAddr) -> Vec<String> {
    vec![
        "--grpc-addr".into(),
        grpc.to_string(),
        "--http-addr".into(),
        http.to_string(),
    ]
}

/// The CI check of docs/helm.md: each rendered service config, exactly as rendered (mount paths
/// as in the pod, where nothing is mounted here) with the pod's environment plus the service
/// links Kubernetes injects, passes `check-config --no-file-checks`; the links are ignored with
/// a warning; without the option the missing mounted files are refused.
#[test]
fn rendered_configs_pass_check_config_without_the_clusters_files() {
    let service_links = [
        ("TOLLGATE_ADMIN_PORT", "tcp://10.96.0.12:9092"),
        ("TOLLGATE_ADMIN_SERVICE_HOST", "10.96.0.12"),
        ("TOLLGATE_AUTHZ_PORT_9001_TCP_ADDR", "10.96.0.13"),
    ];
    for (what, r) in [
        ("default", render_default()),
        ("production", render_production(&[])),
    ] {
        for (workload, configmap, file) in [
            (
                "edge-tollgate-authz/authz",
                "edge-tollgate-authz",
                "authz.yaml",
            ),
            (
                "edge-tollgate-ratelimit/ratelimit",
                "edge-tollgate-ratelimit",
                "ratelimit.yaml",
            ),
        ] {
            let w = r.workload(workload);
            let run = |extra: &[&str]| {
                Command::new(workspace_bin(&w.command[0]))
                    .arg("check-config")
                    .args(extra)
                    .arg("--config")
                    .arg(r.file(configmap, file))
                    .env_clear()
                    .envs(&w.env)
                    .envs(service_links)
                    .output()
                    .unwrap()
            };
            let out = run(&["--no-file-checks"]);
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            assert!(out.status.success(), "{what} {workload}: {stdout}{stderr}");
            assert!(
                stdout.contains("config ok (files it refers to not checked)"),
                "{stdout}"
            );
            for (name, _) in service_links {
                assert!(
                    stderr.contains(&format!("warning: ignoring environment variable {name}:")),
                    "{what} {workload}: {stderr}"
                );
            }
            if workload.ends_with("authz") {
                // The admin credential file is mounted only in the pod.
                let out = run(&[]);
                let err = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(2), "{what}: {err}");
                assert!(
                    err.contains("admin.token_file: cannot read /etc/tollgate/admin/token"),
                    "{what}: {err}"
                );
            }
        }
    }
}

/// `mode: singleCall`: no tollgate-ratelimit and no ratelimit filter; tollgate-authz gets the
/// limits ConfigMap, the counter store, the domain and the default descriptors the routes
/// would have sent, and its config passes check-config (limits files included).
#[test]
fn single_call_mode_moves_the_limits_into_authz_and_drops_the_ratelimit_filter() {
    {
        let r = render(&[], &["mode=singleCall"], &[]).unwrap_or_else(|e| panic!("{e}"));
        let resources = r.resources();
        assert!(
            !resources.iter().any(|x| x.contains("ratelimit")),
            "{resources:?}"
        );
        assert!(resources.contains(&"ConfigMap/edge-tollgate-limits".to_string()));
        let envoy = std::fs::read_to_string(r.file("edge-tollgate-envoy", "envoy.yaml")).unwrap();
        for gone in [
            "envoy.filters.http.ratelimit",
            "rate_limits:",
            "cluster_name: tollgate_ratelimit",
        ] {
            assert!(!envoy.contains(gone), "{gone} in\n{envoy}");
        }
        assert!(envoy.contains("envoy.filters.http.ext_authz"));
        validate(&r.file("edge-tollgate-envoy", "envoy.yaml")).unwrap_or_else(|e| panic!("{e:#}"));

        let authz: Yaml = serde_yaml::from_str(
            &std::fs::read_to_string(r.file("edge-tollgate-authz", "authz.yaml")).unwrap(),
        )
        .unwrap();
        let rl = &authz["rate_limit"];
        assert_eq!(rl["domain"], "gateway");
        assert_eq!(rl["limits"]["path"], "/etc/tollgate/limits");
        assert_eq!(rl["store"]["type"], "redis");
        // The pair's default (`error`, Envoy lets traffic through) made here.
        assert_eq!(rl["failure_mode"], "allow");
        assert_eq!(
            authz["policy"]["rate_limits"][0]["actions"][0]["remote_address"],
            Yaml::Mapping(Default::default())
        );
        // A key's own limit, as the pair's routes send it: the Check reads the same entries.
        let own = &authz["policy"]["rate_limits"][1];
        assert_eq!(
            own["limit"]["dynamic_metadata"]["metadata_key"]["path"][0]["key"],
            "key_limit"
        );
        assert_eq!(
            own["actions"][2]["metadata"]["metadata_key"]["path"][1]["key"],
            "key_id"
        );
        let out = check_config(&r, "edge-tollgate-authz/authz");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The (in-chart) Redis password reaches the counter store too.
        let w = r.workload("edge-tollgate-authz/authz");
        assert!(
            w.env.contains_key("TOLLGATE_RATE_LIMIT__STORE__PASSWORD"),
            "{:?}",
            w.env
        );
    }
    // A route's own rateLimits are Envoy's; in one call they belong to a policy rule.
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        "mode: singleCall\nenvoy:\n  routes:\n    - name: search\n      pathPrefix: /\n      upstream: { address: backend, port: 8080 }\n      rateLimits: [{actions: [{remote_address: {}}]}]\n",
    )
    .unwrap();
    let e = render(&[routes.to_str().unwrap()], &[], &[]).err().unwrap();
    assert!(
        e.contains("route search sets rateLimits")
            && e.contains("authz.policy.rules[].rate_limits"),
        "{e}"
    );
    // The pair is untouched by the value's default.
    let pair = render_default();
    assert!(
        pair.resources()
            .contains(&"Deployment/edge-tollgate-ratelimit".to_string())
    );
}
