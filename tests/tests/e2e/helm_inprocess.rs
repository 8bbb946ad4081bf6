//! The chart with `envoy.mode: inprocess`: Envoy runs the image that carries the module, mounts
//! the limits ConfigMap and decides in its workers; no tollgate-ratelimit pods, no ext_authz or
//! ratelimit filter, no Tollgate cluster or route `rate_limits` are rendered (the module's authz
//! config, beside envoy.yaml, carries them). The rendered Envoy config then runs in real Envoy
//! 1.40 with the module: with `authz.enabled=false` a 429 with the rate-limit headers after the
//! rendered limit, `/healthz` skipped; with a JWT issuer and API keys in `authz.*`, the rendered
//! module authenticates as tollgate-authz would (401 without or with a bad credential, 200 with
//! a valid JWT or a key created through the rendered tollgate-authz's admin API on the shared
//! Redis, whose password both read from the same Secret), and a 429 past the limit.

use std::time::Duration;

use serde_json::json;
use serde_yaml::Value as Yaml;
use tollgate_tests::echo::{Echo, EchoUpstream};
use tollgate_tests::envoy::Envoy;
use tollgate_tests::issuer::{AUDIENCE, ISSUER, Issuer};
use tollgate_tests::module::{MODULE_NAME, module_path};
use tollgate_tests::paths::{envoy_bin, project_root};
use tollgate_tests::process::{free_addr, free_port};
use tollgate_tests::stack::wait_ready;

use crate::helm::{EnvoyPorts, listen_args, loopback_envoy, render};

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
    // The module where the image puts it, found as the image's environment says.
    let image = ImageLayout::new();
    let env = [(
        "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
        image.search_path.as_os_str(),
    )];
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

/// The operator's Redis in the values below, replaced by a local one.
const REDIS_HOST: &str = "redis.data.test:6379";
const ADMIN_TOKEN: &str = "inprocess-admin-credential-0123456789";
const REDIS_PASSWORD: &str = "inprocess-redis-password";

/// Values for the module with a JWT issuer and API keys: `authz.*` as for any other shape,
/// Redis from an existing Secret; JWT callers (plan `anonymous`) get 3 a minute, silver keys 100.
fn authz_values(jwks_url: &str) -> String {
    format!(
        r#"
envoy:
  mode: inprocess
  replicas: 1
redis:
  mode: standalone
  url: redis://{REDIS_HOST}/0
  existingSecret: tollgate-redis
  inChart: {{ enabled: false }}
authz:
  replicas: 1
  admin: {{ existingSecret: tollgate-admin }}
  jwt:
    issuers:
      - issuer: {ISSUER}
        jwks_url: {jwks_url}
        audiences: [{AUDIENCE}]
  policy:
    no_match: deny
    rules:
      - name: api
        path: {{ prefix: / }}
ratelimit:
  limits:
    gateway:
      domain: gateway
      descriptors:
        - key: plan
          value: anonymous
          descriptors:
            - key: subject
              rate_limit: {{ unit: minute, requests_per_unit: 3 }}
        - key: plan
          value: silver
          descriptors:
            - key: subject
              rate_limit: {{ unit: minute, requests_per_unit: 100 }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inprocess_mode_runs_the_charts_authz_jwt_and_api_keys_in_envoy() {
    let issuer = Issuer::start(&["k1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    std::fs::write(&values, authz_values(&issuer.jwks_url())).unwrap();
    let secrets = [
        format!("tollgate-admin/token={ADMIN_TOKEN}"),
        format!("tollgate-redis/password={REDIS_PASSWORD}"),
    ];
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let r = render(&[values.to_str().unwrap()], &[], &secrets).unwrap_or_else(|e| panic!("{e}"));

    let text = std::fs::read_to_string(r.file("edge-tollgate-envoy", "envoy.yaml")).unwrap();
    for gone in [
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.ratelimit",
        "tollgate_authz",
    ] {
        assert!(!text.contains(gone), "{gone} in {text}");
    }

    // The operator's Redis, with the password of the `tollgate-redis` Secret.
    let (redis, mut conn) = crate::helm::redis_with_password(REDIS_PASSWORD).await;
    let hosts = [(REDIS_HOST, format!("127.0.0.1:{}", redis.port()))];

    // The rendered tollgate-authz serves the admin API on the same key store.
    let (grpc, http_addr, admin) = (free_addr(), free_addr(), free_addr());
    let mut args = listen_args(grpc, http_addr);
    args.extend(["--set".into(), format!("admin.addr={admin}")]);
    let _authz = r
        .workload("edge-tollgate-authz/authz")
        .spawn(dir.path(), &hosts, &args);
    wait_ready(http_addr).await;

    // Envoy as its container runs: the rendered envoy.yaml and module config, their mounts
    // made local, the environment from the pod spec (the Redis password from its Secret).
    let envoy_pod = r.workload("edge-tollgate-envoy/envoy");
    let authz_file = envoy_pod.localise("/etc/envoy/tollgate-authz.yaml");
    let mut module_config = envoy_pod.localise(&std::fs::read_to_string(&authz_file).unwrap());
    for (from, to) in &hosts {
        module_config = module_config.replace(from, to);
    }
    assert!(
        !module_config.contains(REDIS_PASSWORD),
        "the password stays in its Secret"
    );
    std::fs::write(&authz_file, module_config).unwrap();
    let upstream = EchoUpstream::start().await;
    let ports = EnvoyPorts {
        listener: free_port(),
        ops: free_port(),
        admin: free_port(),
        authz: 0,
        ratelimit: 0,
        upstream: upstream.port(),
    };
    let config = loopback_envoy(&envoy_pod.localise(&text), &ports);
    let image = ImageLayout::new();
    let mut env: Vec<(&str, &std::ffi::OsStr)> = envoy_pod
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), std::ffi::OsStr::new(v)))
        .collect();
    assert!(
        envoy_pod
            .env
            .contains_key("TOLLGATE_API_KEYS__STORE__PASSWORD")
            && envoy_pod
                .env
                .contains_key("TOLLGATE_RATE_LIMIT__STORE__PASSWORD"),
        "{:?}",
        envoy_pod.env.keys()
    );
    env.push((
        "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
        image.search_path.as_os_str(),
    ));
    let envoy = Envoy::start_raw_with_env(&config, ports.listener, ports.admin, &env)
        .await
        .unwrap();

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let get = |path: &str, header: Option<(&str, String)>| {
        let mut req = http.get(envoy.url(path));
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        req.send()
    };
    let bearer = |token: &str| Some(("authorization", format!("Bearer {token}")));

    // No credential: the api rule needs one, answered with the challenge.
    let denied = get("/orders/1", None).await.unwrap();
    assert_eq!(denied.status(), 401);
    assert!(denied.headers().contains_key("www-authenticate"));
    // `/healthz` (authz.enabled false on the route) skips the module.
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);

    // A bad token (wrong audience) and an unknown key are refused.
    let wrong = issuer.token("k1", "alice", json!({"aud": "https://other.test"}));
    assert_eq!(
        get("/orders/1", bearer(&wrong)).await.unwrap().status(),
        401
    );
    let unknown = Some(("x-api-key", "tg_unknown0123456789abcdef".to_string()));
    assert_eq!(get("/orders/1", unknown).await.unwrap().status(), 401);

    // A valid JWT: allowed, the subject reaches the upstream, the client's spoofed one does not.
    let token = issuer.token("k1", "alice", json!({}));
    let allowed = http
        .get(envoy.url("/orders/1"))
        .bearer_auth(&token)
        .header("x-tollgate-subject", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let echo: Echo = allowed.json().await.unwrap();
    assert_eq!(echo.header("x-tollgate-subject"), Some("alice"));

    // A key created through the rendered admin API (credential from its Secret, kept in Redis).
    let body = json!({"name": "e2e", "owner": "bob", "plan": "silver"});
    let created =
        tollgate_tests::stack::create_key(&format!("http://{admin}"), ADMIN_TOKEN, &body).await;
    let key = created["secret"].as_str().unwrap().to_string();
    let with_key = get("/orders/1", Some(("x-api-key", key.clone())))
        .await
        .unwrap();
    assert_eq!(with_key.status(), 200);
    let echo: Echo = with_key.json().await.unwrap();
    assert_eq!(echo.header("x-tollgate-subject"), Some("bob"));

    // The JWT caller's limit (3 a minute, counted in Redis): two more, then 429.
    for i in 0..2 {
        let res = get("/orders/1", bearer(&token)).await.unwrap();
        assert_eq!(res.status(), 200, "request {i}");
    }
    let limited = get("/orders/1", bearer(&token)).await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    // The silver key has its own limit.
    assert_eq!(
        get("/orders/1", Some(("x-api-key", key)))
            .await
            .unwrap()
            .status(),
        200
    );
    let counters: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert!(
        counters > 0,
        "keys and counters live in the configured Redis"
    );
}

#[test]
fn inprocess_mode_refuses_api_keys_without_a_shared_store() {
    let err = render(
        &[],
        &[
            "envoy.mode=inprocess",
            "redis.mode=none",
            "envoy.replicas=1",
            "authz.replicas=1",
        ],
        &[],
    )
    .err()
    .expect("the module cannot share an embedded key file with the admin API");
    assert!(
        err.contains("the module serves no admin API")
            && err.contains("authz.apiKeys.enabled=false"),
        "{err}"
    );
}

/// Renders `envoy.mode=inprocess` with one route whose extra settings are `route` (YAML).
fn render_route(route: &str) -> Result<crate::helm::Rendered, String> {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.yaml");
    let text = format!(
        "envoy:\n  mode: inprocess\n  routes:\n    - name: api\n      pathPrefix: /\n      upstream: {{ address: backend, port: 80 }}\n{route}"
    );
    std::fs::write(&values, text).unwrap();
    render(&[values.to_str().unwrap()], &[], &[])
}

#[test]
fn inprocess_mode_refuses_route_limits_the_module_would_not_read() {
    let err = render_route("      rateLimits: [{ actions: [{ remote_address: {} }] }]\n")
        .err()
        .expect("route rateLimits are refused");
    assert!(
        err.contains("envoy.mode inprocess: route api sets rateLimits"),
        "{err}"
    );
    // Skipping the limits alone would skip authz too in the module: refused as well.
    let err = render_route("      rateLimits: []\n")
        .err()
        .expect("rateLimits: [] on an authorized route is refused");
    assert!(err.contains("skips both or neither"), "{err}");
    // The route's rule, identity and scopes become the module's per-route config.
    let r = render_route("      authz: { rule: api, scopes: write }\n").unwrap();
    let text = std::fs::read_to_string(r.file("edge-tollgate-envoy", "envoy.yaml")).unwrap();
    assert!(
        text.contains(r#"value: "{\"rule\":\"api\",\"scopes\":\"write\"}""#),
        "{text}"
    );
}

/// The Dockerfile's `envoy` stage, read as the image it builds: Envoy's version, where the
/// module is copied and the search path the image sets. No Docker daemon runs in the test
/// environment, so the stage is checked line by line and its file layout reproduced on disk.
struct ImageLayout {
    /// A temp dir standing for the image's root; the built module copied where the stage puts it.
    _root: tempfile::TempDir,
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH` of the image, under the temp root.
    search_path: std::path::PathBuf,
}

impl ImageLayout {
    fn new() -> ImageLayout {
        let dockerfile = std::fs::read_to_string(project_root().join("Dockerfile")).unwrap();
        let stage = dockerfile
            .split("\nFROM ")
            .find(|s| s.lines().next().is_some_and(|l| l.ends_with(" AS envoy")))
            .expect("a stage `FROM ... AS envoy`");
        let so = format!("lib{MODULE_NAME}.so");
        let copy = stage
            .lines()
            .find_map(|l| l.strip_prefix(&format!("COPY --from=build /module/{so} ")))
            .expect("the stage copies the module built in the build stage");
        let search = stage
            .lines()
            .find_map(|l| l.strip_prefix("ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH="))
            .expect("the stage sets the module search path");
        assert_eq!(
            copy.trim_end_matches('/'),
            search,
            "the module is copied into the directory Envoy searches"
        );
        assert!(
            dockerfile.contains("-p tollgate-envoy")
                && dockerfile.contains(&format!("target/release/{so}")),
            "the build stage builds the module and installs it into /module"
        );
        let root = tempfile::tempdir().unwrap();
        let search_path = root.path().join(search.trim_start_matches('/'));
        std::fs::create_dir_all(&search_path).unwrap();
        std::fs::copy(module_path(), search_path.join(&so)).unwrap();
        ImageLayout {
            _root: root,
            search_path,
        }
    }
}

#[test]
fn the_envoy_image_is_the_pinned_envoy_with_the_module_the_chart_loads() {
    let image = ImageLayout::new();
    assert!(
        image
            .search_path
            .join(format!("lib{MODULE_NAME}.so"))
            .exists()
    );
    let dockerfile = std::fs::read_to_string(project_root().join("Dockerfile")).unwrap();
    let base = dockerfile
        .lines()
        .find_map(|l| {
            l.strip_prefix("FROM envoyproxy/envoy:")?
                .strip_suffix(" AS envoy")
        })
        .expect("the envoy stage starts from the official Envoy image");
    // The same Envoy as the chart's default image and the binary the tests run.
    let values: Yaml = serde_yaml::from_str(
        &std::fs::read_to_string(project_root().join("helm/tollgate/values.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(values["envoy"]["image"]["tag"].as_str(), Some(base));
    let version = std::process::Command::new(envoy_bin())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.contains(&format!("/{}/", base.trim_start_matches('v'))),
        "{base} vs {version}"
    );
    // The chart's filter loads the module by that file's name.
    let r = render(&[], SETS, &[]).unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(r.file("edge-tollgate-envoy", "envoy.yaml")).unwrap();
    assert!(
        text.contains(&format!("dynamic_module_config: {{ name: {MODULE_NAME}, ")),
        "{text}"
    );
    // The module built on the build stage's Debian bookworm needs no glibc newer than the
    // oldest Ubuntu base Envoy's images have used (22.04: 2.35).
    let symbols = std::process::Command::new("objdump")
        .arg("-T")
        .arg(module_path())
        .output()
        .unwrap();
    let symbols = String::from_utf8_lossy(&symbols.stdout);
    let newest = symbols
        .split("GLIBC_")
        .skip(1)
        .filter_map(|s| {
            let v: String = s
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            Some((parts.next()?, parts.next().unwrap_or(0)))
        })
        .max()
        .expect("the module links glibc");
    assert!(
        newest <= (2, 35),
        "the module needs GLIBC_{}.{}",
        newest.0,
        newest.1
    );
}

/// The module's own settings in the rendered filter_config: dynamic metadata off unless
/// `envoy.inprocess.dynamicMetadata` asks for it, the failure mode as set.
#[test]
fn the_module_files_dynamic_metadata_only_when_the_values_ask() {
    fn module_config(sets: &[&str]) -> serde_json::Value {
        let r = render(&[], sets, &[]).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(r.file("edge-tollgate-envoy", "envoy.yaml")).unwrap();
        let parsed: Yaml = serde_yaml::from_str(&text).unwrap();
        let filters = &parsed["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"];
        let module = filters
            .as_sequence()
            .unwrap()
            .iter()
            .find(|f| f["name"] == "envoy.filters.http.dynamic_modules")
            .expect("the module's filter");
        let value = module["typed_config"]["filter_config"]["value"]
            .as_str()
            .unwrap();
        serde_json::from_str(value).unwrap()
    }
    let default = module_config(SETS);
    assert_eq!(default["dynamic_metadata"], false, "{default}");
    assert_eq!(default["failure_mode"], "deny", "{default}");
    let mut sets = SETS.to_vec();
    sets.push("envoy.inprocess.dynamicMetadata=true");
    let on = module_config(&sets);
    assert_eq!(on["dynamic_metadata"], true, "{on}");
}
