//! Operator endpoints on the side listener, off unless `server.debug` is configured and always
//! behind their own bearer credential (like the admin API): `PUT /loglevel` changes the log
//! filter of the running process; `GET /debug/pprof/profile?seconds=N` samples the CPU for N
//! seconds and answers a profile in pprof's protobuf format (`go tool pprof` reads it);
//! `/debug/pprof/folded` answers the same as collapsed stacks (`frame;frame;frame count`
//! lines, what flame graph tools read) and `/debug/pprof/flamegraph` as an SVG flame graph.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Deserialize;

use crate::telemetry;
use tollgate_common::config::{Env, Errors, Validate};
use tollgate_common::credential;
use tollgate_common::secret::Secret;

/// The environment variable that may hold the debug credential.
pub const TOKEN_ENV: &str = "TOLLGATE_DEBUG_TOKEN";
/// Shortest credential accepted.
pub const MIN_TOKEN_LEN: usize = credential::MIN_LEN;
/// Longest CPU profile one request may ask for.
pub const MAX_PROFILE: Duration = Duration::from_secs(60);

/// The `server.debug:` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DebugConfig {
    /// A file holding the bearer credential; wins over `TOLLGATE_DEBUG_TOKEN`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Serve the CPU profile endpoints (sampling costs CPU only while a profile runs).
    #[serde(default)]
    pub pprof: bool,
}

impl Validate for DebugConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        credential::validate(errors, at, self.token_file.as_deref(), TOKEN_ENV);
    }
}

/// Why the debug endpoints cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    #[error("server.debug needs a bearer credential: set server.debug.token_file or {TOKEN_ENV}")]
    NoCredential,
    #[error("the debug credential must be at least {MIN_TOKEN_LEN} characters")]
    WeakCredential,
    #[error("cannot read the debug token file {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn load_token(cfg: &DebugConfig, env: &Env) -> Result<Secret, DebugError> {
    credential::load(cfg.token_file.as_deref(), env, TOKEN_ENV).map_err(|e| match e {
        credential::LoadError::Missing => DebugError::NoCredential,
        credential::LoadError::Weak => DebugError::WeakCredential,
        credential::LoadError::File { path, source } => DebugError::TokenFile { path, source },
    })
}

/// The debug routes with their credential check; `Err` when there is no usable credential.
pub fn router(cfg: &DebugConfig, env: &Env) -> Result<Router, DebugError> {
    let token = Arc::new(load_token(cfg, env)?);
    let mut router = Router::new().route("/loglevel", put(set_level));
    if cfg.pprof {
        router = router
            .route("/debug/pprof/profile", get(profile_pprof))
            .route("/debug/pprof/folded", get(profile_folded))
            .route("/debug/pprof/flamegraph", get(profile_svg));
    }
    Ok(router.layer(axum::middleware::from_fn_with_state(token, authenticate)))
}

async fn authenticate(State(token): State<Arc<Secret>>, req: Request, next: Next) -> Response {
    match credential::presented_bearer(req.headers()) {
        Some(p) if token.matches(p) => next.run(req).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"tollgate-debug\"")],
            "unauthorized\n",
        )
            .into_response(),
    }
}

async fn set_level(body: String) -> Response {
    let directives = body.trim();
    match telemetry::set_log_level(directives) {
        Ok(()) => {
            tracing::info!(filter = %directives, "log level changed");
            (StatusCode::OK, format!("log level: {directives}\n")).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("invalid log filter: {e}\n"),
        )
            .into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct ProfileParams {
    #[serde(default = "default_seconds")]
    seconds: u64,
}

fn default_seconds() -> u64 {
    10
}

/// One profile at a time: the sampler is process-wide.
static PROFILING: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy)]
enum Format {
    Pprof,
    Folded,
    Svg,
}

async fn profile_pprof(Query(p): Query<ProfileParams>) -> Response {
    profile(p, Format::Pprof).await
}

async fn profile_folded(Query(p): Query<ProfileParams>) -> Response {
    profile(p, Format::Folded).await
}

async fn profile_svg(Query(p): Query<ProfileParams>) -> Response {
    profile(p, Format::Svg).await
}

async fn profile(p: ProfileParams, format: Format) -> Response {
    let secs = Duration::from_secs(p.seconds.max(1));
    if secs > MAX_PROFILE {
        return (
            StatusCode::BAD_REQUEST,
            format!("seconds must be at most {}\n", MAX_PROFILE.as_secs()),
        )
            .into_response();
    }
    if PROFILING.swap(true, Ordering::SeqCst) {
        return (StatusCode::CONFLICT, "a profile is already running\n").into_response();
    }
    // The sampler and its report live on a blocking thread: sampling is signal-driven and the
    // guard is not meant to move between tasks.
    let result = tokio::task::spawn_blocking(move || capture(secs, format)).await;
    PROFILING.store(false, Ordering::SeqCst);
    match result {
        Ok(Ok((content_type, body))) => {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn capture(secs: Duration, format: Format) -> Result<(&'static str, Vec<u8>), String> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(99)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(secs);
    let report = guard.report().build().map_err(|e| e.to_string())?;
    match format {
        Format::Pprof => Ok((
            "application/octet-stream",
            pprof_format::encode(&report, secs),
        )),
        Format::Svg => {
            let mut svg = Vec::new();
            report.flamegraph(&mut svg).map_err(|e| e.to_string())?;
            Ok(("image/svg+xml", svg))
        }
        Format::Folded => {
            let mut lines: Vec<String> = report
                .data
                .iter()
                .map(|(frames, count)| {
                    let mut stack = frames.thread_name_or_id();
                    for frame in frames.frames.iter().rev() {
                        for symbol in frame.iter().rev() {
                            stack.push(';');
                            stack.push_str(&symbol.name());
                        }
                    }
                    format!("{stack} {count}")
                })
                .collect();
            lines.sort();
            let mut out = lines.join("\n");
            out.push('\n');
            Ok(("text/plain; charset=utf-8", out.into_bytes()))
        }
    }
}

/// pprof's `profile.proto`, the subset a CPU profile uses, encoded with the workspace's prost
/// (pprof-rs's own encoder would bring a second prost version).
mod pprof_format {
    use std::collections::HashMap;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use prost::Message;

    const FREQUENCY_HZ: i64 = 99;

    #[derive(Clone, PartialEq, Message)]
    pub(super) struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub(super) sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub(super) sample: Vec<Sample>,
        #[prost(message, repeated, tag = "4")]
        pub(super) location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub(super) function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub(super) string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub(super) time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub(super) duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub(super) period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub(super) period: i64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub(super) struct ValueType {
        #[prost(int64, tag = "1")]
        pub(super) r#type: i64,
        #[prost(int64, tag = "2")]
        pub(super) unit: i64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub(super) struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub(super) location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub(super) value: Vec<i64>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub(super) struct Location {
        #[prost(uint64, tag = "1")]
        pub(super) id: u64,
        #[prost(message, repeated, tag = "4")]
        pub(super) line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub(super) struct Line {
        #[prost(uint64, tag = "1")]
        pub(super) function_id: u64,
        #[prost(int64, tag = "2")]
        pub(super) line: i64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub(super) struct Function {
        #[prost(uint64, tag = "1")]
        pub(super) id: u64,
        #[prost(int64, tag = "2")]
        pub(super) name: i64,
        #[prost(int64, tag = "3")]
        pub(super) system_name: i64,
        #[prost(int64, tag = "4")]
        pub(super) filename: i64,
    }

    /// Interns strings: index 0 is the empty string, as the format requires.
    struct Strings {
        table: Vec<String>,
        index: HashMap<String, i64>,
    }

    impl Strings {
        fn id(&mut self, s: &str) -> i64 {
            if let Some(i) = self.index.get(s) {
                return *i;
            }
            let i = self.table.len() as i64;
            self.table.push(s.to_string());
            self.index.insert(s.to_string(), i);
            i
        }
    }

    pub(super) fn encode(report: &pprof::Report, duration: Duration) -> Vec<u8> {
        let mut strings = Strings {
            table: vec![String::new()],
            index: HashMap::from([(String::new(), 0)]),
        };
        let period = 1_000_000_000 / FREQUENCY_HZ;
        let samples = ValueType {
            r#type: strings.id("samples"),
            unit: strings.id("count"),
        };
        let cpu = ValueType {
            r#type: strings.id("cpu"),
            unit: strings.id("nanoseconds"),
        };
        let mut functions: HashMap<(String, String), u64> = HashMap::new();
        let mut locations: HashMap<(u64, i64), u64> = HashMap::new();
        let mut profile = Profile {
            sample_type: vec![samples, cpu.clone()],
            period_type: Some(cpu),
            period,
            duration_nanos: duration.as_nanos() as i64,
            time_nanos: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64)
                - duration.as_nanos() as i64,
            ..Default::default()
        };
        for (frames, count) in &report.data {
            let mut ids = Vec::new();
            // Leaf first, as the format wants; inlined symbols of a frame are separate entries.
            for frame in &frames.frames {
                for symbol in frame {
                    let name = symbol.name();
                    let file = symbol.filename().into_owned();
                    let fid = match functions.get(&(name.clone(), file.clone())) {
                        Some(id) => *id,
                        None => {
                            let id = profile.function.len() as u64 + 1;
                            let n = strings.id(&name);
                            let sys = strings.id(&symbol.sys_name());
                            let f = strings.id(&file);
                            profile.function.push(Function {
                                id,
                                name: n,
                                system_name: sys,
                                filename: f,
                            });
                            functions.insert((name, file), id);
                            id
                        }
                    };
                    let line = i64::from(symbol.lineno.unwrap_or(0));
                    let lid = *locations.entry((fid, line)).or_insert_with(|| {
                        let id = profile.location.len() as u64 + 1;
                        profile.location.push(Location {
                            id,
                            line: vec![Line {
                                function_id: fid,
                                line,
                            }],
                        });
                        id
                    });
                    ids.push(lid);
                }
            }
            let count = *count as i64;
            profile.sample.push(Sample {
                location_id: ids,
                value: vec![count, count * period],
            });
        }
        profile.string_table = strings.table;
        profile.encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    const TOKEN: &str = "debug-credential-0123456789";

    /// The sampler is process-wide: profiling tests take turns.
    static PROFILER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn env() -> Env {
        [(TOKEN_ENV.to_string(), TOKEN.to_string())].into()
    }

    fn pprof_router() -> Router {
        router(
            &DebugConfig {
                pprof: true,
                ..Default::default()
            },
            &env(),
        )
        .unwrap()
    }

    /// Something to sample: a thread spinning for 1.5 s.
    /// A thread that keeps one core busy until dropped, so a profile has something to sample.
    struct Busy {
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<u64>>,
    }

    impl Busy {
        fn start() -> Busy {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut x = 0u64;
                // The flag is read seldom: the loop is almost all arithmetic, so samples land
                // in this thread's own frames rather than in an atomic load.
                while !flag.load(Ordering::Relaxed) {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                }
                x
            });
            Busy {
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for Busy {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Profiles for one second at a time until `sampled` accepts the body: on a loaded
    /// machine the process may get no CPU time at all in one second, and an empty profile
    /// says nothing about the profiler.
    async fn profile_until(app: &Router, path: &str, sampled: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let _busy = Busy::start();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let resp = app.clone().oneshot(authed_get(path)).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec();
            if sampled(&body) || std::time::Instant::now() > deadline {
                return body;
            }
        }
    }

    /// `GET path` with the credential.
    fn authed_get(path: &str) -> Request<Body> {
        Request::get(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn refuses_without_a_strong_credential() {
        let cfg = DebugConfig::default();
        assert!(matches!(
            router(&cfg, &Env::new()),
            Err(DebugError::NoCredential)
        ));
        let weak: Env = [(TOKEN_ENV.to_string(), "short".to_string())].into();
        assert!(matches!(
            router(&cfg, &weak),
            Err(DebugError::WeakCredential)
        ));
    }

    #[tokio::test]
    async fn every_route_needs_the_credential() {
        let app = pprof_router();
        for (method, path) in [
            ("PUT", "/loglevel"),
            ("GET", "/debug/pprof/profile?seconds=1"),
            ("GET", "/debug/pprof/folded?seconds=1"),
            ("GET", "/debug/pprof/flamegraph?seconds=1"),
        ] {
            for auth in [None, Some("Bearer wrong-credential-000000000")] {
                let mut req = Request::builder().method(method).uri(path);
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let resp = app
                    .clone()
                    .oneshot(req.body(Body::from("debug")).unwrap())
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            }
        }
    }

    #[tokio::test]
    async fn pprof_routes_exist_only_when_asked_for() {
        let app = router(&DebugConfig::default(), &env()).unwrap();
        let resp = app
            .oneshot(authed_get("/debug/pprof/profile?seconds=1"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn profiles_the_cpu_in_pprof_format() {
        let _turn = PROFILER.lock().await;
        use prost::Message;
        let app = pprof_router();
        let body = profile_until(&app, "/debug/pprof/profile?seconds=1", |b| {
            pprof_format::Profile::decode(b).is_ok_and(|p| !p.sample.is_empty())
        })
        .await;
        let p = pprof_format::Profile::decode(body.as_slice()).unwrap();
        assert_eq!(p.string_table[0], "");
        let s = |i: i64| p.string_table[i as usize].as_str();
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
        assert!(!p.sample.is_empty());
        let sampled: i64 = p.sample.iter().map(|x| x.value[0]).sum();
        assert!(sampled > 0);
        for sample in &p.sample {
            assert_eq!(sample.value[1], sample.value[0] * p.period);
            for id in &sample.location_id {
                let loc = &p.location[*id as usize - 1];
                assert_eq!(loc.id, *id);
                let f = &p.function[loc.line[0].function_id as usize - 1];
                assert_eq!(f.id, loc.line[0].function_id);
            }
        }
        assert!(p.function.iter().any(|f| !s(f.name).is_empty()));
    }

    #[tokio::test]
    async fn profiles_the_cpu_as_collapsed_stacks() {
        let _turn = PROFILER.lock().await;
        let app = pprof_router();
        let body = profile_until(&app, "/debug/pprof/folded?seconds=1", |b| {
            b.iter().any(|c| !c.is_ascii_whitespace())
        })
        .await;
        let text = String::from_utf8(body).unwrap();
        let first = text.lines().next().expect("at least one sample");
        let (_, count) = first.rsplit_once(' ').unwrap_or_else(|| panic!("{text:?}"));
        assert!(count.parse::<u64>().unwrap() > 0, "{first}");
        let too_long = app
            .oneshot(authed_get("/debug/pprof/profile?seconds=600"))
            .await
            .unwrap();
        assert_eq!(too_long.status(), StatusCode::BAD_REQUEST);
    }
}
