//! The chart with `envoy.mode: inprocess`: Envoy runs the image that carries the module, mounts
//! the limits ConfigMap and rate-limits in its workers; no tollgate-ratelimit pods, cluster or
//! route `rate_limits` are rendered (the module's authz config, beside envoy.yaml, carries
//! them). The rendered Envoy config then runs in real Envoy 1.40 with the module: a 429 with
//! the rate-limit headers after the rendered limit, `/healthz` skipped.

use std::time::Duration;

use serde_yaml::Value as Yaml;
use tollgate_tests::echo::EchoUpstream;
use tollgate_tests::envoy::Envoy;
use tollgate_tests::module::module_dir;
use tollgate_tests::process::free_port;

use crate::helm::{EnvoyPorts, loopback_envoy, render};

const SETS: &[&str] = &[
    "envoy.mode=inprocess",
    "envoy.replicas=1",
    "redis.mode=none",
    "authz.enabled=false",
    "ratelimit.limits.gateway.descriptors[0].key=remote_address",
    "ratelimit.limits.gateway.descriptors[0].rate_limit.unit=minute",
    "ratelimit.limits.gateway.descriptors[0].rate_limit.requests_per_unit=3",
    "ratelimit.limits.gateway.descriptors[0].rate_limit.algorithm=sliding_window",
];

#[tokio::test]
async fn inprocess_mode_runs_the_module_in_envoy_with_the_charts_limits() {
    let r = render(&[], SETS, &[]).unwrap_or_else(|e| panic!("{e}"));
    let resources = r.resources();
    assert!(resources.contains(&"ConfigMap/edge-tollgate-limits".to_string()));
    for gone in [
        "Deployment/edge-tollgate-ratelimit",
        "ConfigMap/edge-tollgate-ratelimit",
        "Service/edge-tollgate-ratelimit",
    ] {
        assert!(
            !resources.contains(&gone.to_string()),
            "{gone}: {resources:?}"
        );
    }
    let deployment = r.find("Deployment", "edge-tollgate-envoy");
    let pod = &deployment["spec"]["template"]["spec"];
    let envoy = &pod["containers"][0];
    let image = envoy["image"].as_str().unwrap();
    assert!(image.starts_with("tollgate-envoy:"), "{image}");
    assert!(
        envoy["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "limits" && m["mountPath"] == "/etc/tollgate/limits"),
        "{envoy:?}"
    );

    let text = std::fs::read_to_string(r.file("edge-tollgate-envoy", "envoy.yaml")).unwrap();
    assert!(
        text.contains("envoy.filters.http.dynamic_modules"),
        "{text}"
    );
    assert!(!text.contains("envoy.filters.http.ratelimit"), "{text}");
    assert!(!text.contains("rate_limits:"), "{text}");
    let parsed: Yaml = serde_yaml::from_str(&text).unwrap();
    let clusters: Vec<&str> = parsed["static_resources"]["clusters"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(!clusters.contains(&"tollgate_ratelimit"), "{clusters:?}");

    // The rendered config through real Envoy with the module, the limits from the rendered
    // ConfigMap in place of its mount, and the module's authz config beside envoy.yaml.
    let limits = r.file("edge-tollgate-limits", "gateway.yaml");
    let authz = r.file("edge-tollgate-envoy", "tollgate-authz.yaml");
    let authz_text = std::fs::read_to_string(&authz).unwrap().replace(
        "/etc/tollgate/limits",
        &limits.parent().unwrap().display().to_string(),
    );
    std::fs::write(&authz, authz_text).unwrap();
    assert!(text.contains("/etc/envoy/tollgate-authz.yaml"), "{text}");
    let text = text.replace(
        "/etc/envoy/tollgate-authz.yaml",
        &authz.display().to_string(),
    );
    let upstream = EchoUpstream::start().await;
    let ports = EnvoyPorts {
        listener: free_port(),
        ops: free_port(),
        admin: free_port(),
        authz: 0,
        ratelimit: 0,
        upstream: upstream.port(),
    };
    let config = loopback_envoy(&text, &ports);
    let dir = module_dir();
    let env = [("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dir.as_os_str())];
    let envoy = Envoy::start_raw_with_env(&config, ports.listener, ports.admin, &env)
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for _ in 0..3 {
        let resp = http.get(envoy.url("/orders")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().contains_key("ratelimit-policy"));
    }
    let resp = http.get(envoy.url("/orders")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    // `rateLimits: []` (the health route): the module is skipped.
    let health = http.get(envoy.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[test]
fn inprocess_mode_refuses_memory_counters_over_several_envoys() {
    let err = render(&[], &["envoy.mode=inprocess", "redis.mode=none"], &[])
        .err()
        .expect("two Envoy replicas with memory counters are refused");
    assert!(err.contains("envoy.replicas must be 1"), "{err}");
}

#[test]
fn inprocess_mode_and_single_call_mode_exclude_each_other() {
    let err = render(
        &[],
        &[
            "envoy.mode=inprocess",
            "mode=singleCall",
            "redis.mode=none",
            "envoy.replicas=1",
        ],
        &[],
    )
    .err()
    .expect("the module and single-call mode cannot both rate-limit");
    assert!(err.contains("exclude each other"), "{err}");
}
