//! The whole gateway for one test: the echo upstream, tollgate-ratelimit and tollgate-authz
//! in-process (loaded from the shipped example configs in `deploy/config/` unless a test
//! passes its own), and real Envoy on the shipped `deploy/envoy/envoy.yaml` — or, in the
//! single-call [`Shape`], tollgate-authz alone on `deploy/envoy/single-call.yaml`; in-process,
//! Envoy alone with the module on `deploy/envoy/envoy-module.yaml`; and for the HTTP ext_authz
//! [`Flavour`], `deploy/envoy/envoy-http-authz.yaml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tollgate_common::Shutdown;
use tollgate_common::config::{Sources, load};

use crate::echo::EchoUpstream;
use crate::envoy::{Backends, Envoy, example_config, example_http_authz_config, example_ports};
use crate::paths::project_root;
use crate::process::{free_port, wait_for};

/// Loads a service config from `file` with `--set`-style overrides, through the same loader
/// the binaries use. Tests always bind loopback port 0.
pub fn load_config<T>(file: &Path, sets: &[String]) -> anyhow::Result<T>
where
    T: serde::de::DeserializeOwned
        + tollgate_common::config::Validate
        + tollgate_common::config::Defaults,
{
    let mut all = vec![
        "server.grpc_addr=127.0.0.1:0".to_string(),
        "server.http_addr=127.0.0.1:0".to_string(),
        "server.shutdown_delay=0s".to_string(),
        "server.drain_timeout=5s".to_string(),
    ];
    all.extend(sets.iter().cloned());
    load::<T>(&Sources {
        file: Some(file.to_path_buf()),
        sets: all,
        ..Default::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// `deploy/config/<name>`.
pub fn example(name: &str) -> PathBuf {
    project_root().join("deploy/config").join(name)
}

/// A running ratelimit service.
#[derive(Debug)]
pub struct Ratelimit {
    pub running: tollgate_ratelimit::Running,
    pub shutdown: Shutdown,
}

impl Ratelimit {
    /// Starts the service on `config` (a parsed config whose listeners use port 0).
    pub async fn start(config: tollgate_ratelimit::Config) -> anyhow::Result<Ratelimit> {
        crate::init_test_logging();
        let shutdown = Shutdown::new();
        let running = tollgate_ratelimit::start(config, shutdown.clone())
            .await
            .context("starting tollgate-ratelimit")?;
        wait_ready(running.http_addr).await;
        Ok(Ratelimit { running, shutdown })
    }

    /// Starts the shipped example (`deploy/config/ratelimit.yaml`) with extra overrides.
    pub async fn example(sets: &[String]) -> anyhow::Result<Ratelimit> {
        let mut all = vec![format!("limits.path={}", example("limits").display())];
        all.extend(sets.iter().cloned());
        Self::start(load_config(&example("ratelimit.yaml"), &all)?).await
    }

    pub fn grpc_port(&self) -> u16 {
        self.running.grpc_addr.port()
    }
}

impl Drop for Ratelimit {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A running authz service.
#[derive(Debug)]
pub struct Authz {
    pub running: tollgate_authz::Running,
    pub shutdown: Shutdown,
    /// The admin API's bearer credential (when started from the example).
    pub admin_token: String,
    _state: Option<tempfile::TempDir>,
}

impl Authz {
    pub async fn start(config: tollgate_authz::Config) -> anyhow::Result<Authz> {
        crate::init_test_logging();
        let shutdown = Shutdown::new();
        let running = tollgate_authz::start(config, shutdown.clone())
            .await
            .context("starting tollgate-authz")?;
        wait_ready(running.http_addr).await;
        Ok(Authz {
            running,
            shutdown,
            admin_token: String::new(),
            _state: None,
        })
    }

    /// Starts the shipped example (`deploy/config/authz.yaml`) with extra overrides; its key
    /// store and admin credential live in a fresh temp dir, its admin API on a free port.
    pub async fn example(sets: &[String]) -> anyhow::Result<Authz> {
        Self::example_file("authz.yaml", sets).await
    }

    /// The shipped single-call example (`deploy/config/authz-single-call.yaml`): authz with
    /// the rate-limit engine inside, on the example limits.
    pub async fn example_single_call(sets: &[String]) -> anyhow::Result<Authz> {
        let mut all = vec![format!(
            "rate_limit.limits.path={}",
            example("limits").display()
        )];
        all.extend(sets.iter().cloned());
        Self::example_file("authz-single-call.yaml", &all).await
    }

    async fn example_file(file: &str, sets: &[String]) -> anyhow::Result<Authz> {
        let state = tempfile::tempdir()?;
        let token = format!("test-admin-credential-{}", std::process::id());
        let token_file = state.path().join("admin-token");
        std::fs::write(&token_file, &token)?;
        let mut all = vec![
            format!(
                "api_keys.store.path={}",
                state.path().join("keys.redb").display()
            ),
            format!("admin.token_file={}", token_file.display()),
            "admin.addr=127.0.0.1:0".to_string(),
        ];
        all.extend(sets.iter().cloned());
        let mut authz = Self::start(load_config(&example(file), &all)?).await?;
        authz.admin_token = token;
        authz._state = Some(state);
        Ok(authz)
    }

    /// `http://<admin addr>`.
    pub fn admin_url(&self) -> String {
        format!(
            "http://{}",
            self.running.admin_addr.expect("admin API configured")
        )
    }

    pub fn grpc_port(&self) -> u16 {
        self.running.grpc_addr.port()
    }

    /// The HTTP ext_authz listener's port (started with [`Flavour::Http`]'s overrides).
    pub fn http_authz_port(&self) -> u16 {
        self.running
            .http_authz_addr
            .expect("http_authz configured")
            .port()
    }
}

/// How Envoy asks tollgate-authz: the same expectations hold over either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `grpc_service`, `deploy/envoy/envoy.yaml`.
    Grpc,
    /// `http_service`, `deploy/envoy/envoy-http-authz.yaml`.
    Http,
}

impl Flavour {
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Grpc => "grpc",
            Flavour::Http => "http",
        }
    }

    /// The tollgate-authz overrides this flavour needs (the HTTP listener as the shipped
    /// Envoy config expects it).
    pub fn authz_sets(self) -> Vec<String> {
        match self {
            Flavour::Grpc => vec![],
            Flavour::Http => vec![
                "http_authz.addr=127.0.0.1:0".to_string(),
                "http_authz.path_prefix=/check".to_string(),
            ],
        }
    }

    /// The shipped Envoy config of this flavour with tollgate-authz's ports filled in (the
    /// others in the example's conventions, for [`Envoy::start_with`]); `claim_headers` are
    /// the test's `headers.claims` names, which the HTTP flavour must list to copy upstream
    /// (as its comments say).
    pub fn envoy_config(self, authz: &Authz, claim_headers: &[&str]) -> String {
        match self {
            Flavour::Grpc => example_config(),
            Flavour::Http => {
                let anchor = "                    - exact: x-tollgate-key-id\n";
                let mut listed = anchor.to_string();
                for h in claim_headers {
                    listed.push_str(&format!("                    - exact: {h}\n"));
                }
                let config = example_http_authz_config();
                assert!(config.contains(anchor), "the upstream header list moved");
                let ports = [
                    (example_ports::AUTHZ_HTTP, authz.http_authz_port()),
                    (example_ports::AUTHZ_SIDE, authz.running.http_addr.port()),
                ]
                .into();
                crate::envoy::rewrite_ports(&config.replacen(anchor, &listed, 1), &ports)
            }
        }
    }

    /// Real Envoy on this flavour's shipped config, in front of `authz`.
    pub async fn start_envoy(
        self,
        authz: &Authz,
        claim_headers: &[&str],
        upstream: u16,
        ratelimit: u16,
    ) -> anyhow::Result<Envoy> {
        let backends = Backends {
            upstream,
            authz: authz.grpc_port(),
            ratelimit,
        };
        Envoy::start_with(&self.envoy_config(authz, claim_headers), backends).await
    }
}

impl Drop for Authz {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Polls `/readyz` until it answers 200.
pub async fn wait_ready(http: std::net::SocketAddr) {
    let url = format!("http://{http}/readyz");
    wait_for(&url, Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            match reqwest::get(&url).await {
                Ok(r) if r.status().is_success() => Some(()),
                _ => None,
            }
        }
    })
    .await
}

/// Everything a request through the gateway touches.
#[derive(Debug)]
pub struct Stack {
    pub envoy: Envoy,
    pub authz: Option<Authz>,
    pub ratelimit: Option<Ratelimit>,
    pub upstream: EchoUpstream,
    /// In-process: the module's authz config and key store.
    _state: Option<tempfile::TempDir>,
}

/// How Envoy consults Tollgate: the shipped examples of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// ext_authz to tollgate-authz, then the ratelimit filter to tollgate-ratelimit
    /// (`deploy/envoy/envoy.yaml`).
    Pair,
    /// One ext_authz call: tollgate-authz authenticates and rate-limits
    /// (`deploy/envoy/single-call.yaml`, `deploy/config/authz-single-call.yaml`).
    SingleCall,
    /// No call: the Envoy module decides and rate-limits in Envoy's workers
    /// (`deploy/envoy/envoy-module.yaml`, `deploy/config/authz-inprocess.yaml`).
    InProcess,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Pair, Shape::SingleCall, Shape::InProcess];

    /// The shipped Envoy config of this shape (in-process: loading the shipped authz example
    /// from the project root; [`crate::module::example_in`] for a test's own copy).
    pub fn envoy_config(self) -> String {
        match self {
            Shape::Pair => crate::envoy::example_config(),
            Shape::SingleCall => crate::envoy::example_file("single-call.yaml"),
            Shape::InProcess => crate::envoy::example_file("envoy-module.yaml"),
        }
    }

    /// The shipped authz example of this shape, with extra overrides (in-process runs no
    /// service: the module loads its config itself).
    pub async fn authz(self, sets: &[String]) -> anyhow::Result<Authz> {
        match self {
            Shape::Pair => Authz::example(sets).await,
            Shape::SingleCall => Authz::example_single_call(sets).await,
            Shape::InProcess => anyhow::bail!("the in-process shape runs no tollgate-authz"),
        }
    }

    /// The Envoy counter that goes up by one for each 429 a limit answered.
    pub fn over_limit_stat(self) -> &'static str {
        match self {
            Shape::Pair => "cluster.upstream.ratelimit.over_limit",
            Shape::SingleCall => "http.gateway.ext_authz.denied",
            Shape::InProcess => "tollgate.replies.details.tollgate_rate_limited",
        }
    }

    /// The Envoy counter that goes up for each request Tollgate let through.
    pub fn allowed_stat(self) -> &'static str {
        match self {
            Shape::Pair | Shape::SingleCall => "cluster.tollgate_authz.upstream_rq_200",
            Shape::InProcess => "tollgate.requests.verdict.continue",
        }
    }
}

impl Stack {
    /// The shipped example end to end: Envoy + both services + the echo upstream.
    pub async fn example() -> anyhow::Result<Stack> {
        Self::example_shaped(Shape::Pair).await
    }

    /// The shipped example of `shape` end to end (no tollgate-ratelimit in single-call, no
    /// service at all in-process).
    pub async fn example_shaped(shape: Shape) -> anyhow::Result<Stack> {
        let upstream = EchoUpstream::start().await;
        if shape == Shape::InProcess {
            let state = tempfile::tempdir()?;
            let config = crate::module::example_in(state.path(), |text| text);
            let backends = Backends {
                upstream: upstream.port(),
                authz: 0,
                ratelimit: 0,
            };
            let envoy = crate::module::start_envoy(&config, backends).await?;
            return Ok(Stack {
                envoy,
                authz: None,
                ratelimit: None,
                upstream,
                _state: Some(state),
            });
        }
        let ratelimit = match shape {
            Shape::Pair => Some(Ratelimit::example(&[]).await?),
            Shape::SingleCall | Shape::InProcess => None,
        };
        let authz = shape.authz(&[]).await?;
        let envoy = Envoy::start_with(
            &shape.envoy_config(),
            Backends {
                upstream: upstream.port(),
                authz: authz.grpc_port(),
                ratelimit: ratelimit
                    .as_ref()
                    .map_or_else(free_port, Ratelimit::grpc_port),
            },
        )
        .await?;
        Ok(Stack {
            envoy,
            authz: Some(authz),
            ratelimit,
            upstream,
            _state: None,
        })
    }

    /// The example with either service replaced by a closed port (to see Envoy's failure modes).
    pub async fn example_without(authz: bool, ratelimit: bool) -> anyhow::Result<Stack> {
        let upstream = EchoUpstream::start().await;
        let rl = if ratelimit {
            Some(Ratelimit::example(&[]).await?)
        } else {
            None
        };
        let az = if authz {
            Some(Authz::example(&[]).await?)
        } else {
            None
        };
        let envoy = Envoy::start_example(Backends {
            upstream: upstream.port(),
            authz: az.as_ref().map_or_else(free_port, Authz::grpc_port),
            ratelimit: rl.as_ref().map_or_else(free_port, Ratelimit::grpc_port),
        })
        .await?;
        Ok(Stack {
            envoy,
            authz: az,
            ratelimit: rl,
            upstream,
            _state: None,
        })
    }

    pub fn url(&self, path: &str) -> String {
        self.envoy.url(path)
    }
}

/// `POST /v1/keys` with `body` to the admin API at `admin` (`http://host:port`), authenticated
/// with `token`: the issued key (`key.id`, `secret`), after checking the call succeeded.
pub async fn create_key(admin: &str, token: &str, body: &serde_json::Value) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .post(format!("{admin}/v1/keys"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("the admin API answers");
    assert!(
        resp.status().is_success(),
        "POST /v1/keys: {}",
        resp.status()
    );
    resp.json().await.expect("the issued key as JSON")
}
