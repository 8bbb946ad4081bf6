//! The stream layer against a recording host: verdicts applied in order, local replies, the
//! failure mode on panics, per-route disabling, and pause/resume through a scheduler committed
//! from the background runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::config::RouteSettings;
use crate::filter::{Counts, FailureMode, Filter, Metadata, MetadataValue, Request};
use crate::host::{Attribute, Counter, Histogram};

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Remove(String),
    Set(String, String),
    Add(String, String),
    Response(String, String),
    Meta(String),
    Reply(u16),
    Continue,
    Count(Counter, &'static str),
    Waited,
}

#[derive(Default)]
struct FakeHost {
    headers: Vec<(String, Vec<u8>)>,
    route: Option<Arc<RouteSettings>>,
    ops: Vec<Op>,
    no_scheduler: bool,
    commits: Arc<Mutex<Vec<u64>>>,
    released: Arc<AtomicUsize>,
}

impl FakeHost {
    fn did(&self, op: &Op) -> bool {
        self.ops.contains(op)
    }
}

struct FakeScheduler {
    commits: Arc<Mutex<Vec<u64>>>,
    released: Arc<AtomicUsize>,
}

impl Scheduler for FakeScheduler {
    fn commit(&self, event: u64) {
        self.commits.lock().unwrap().push(event);
    }
}

impl Drop for FakeScheduler {
    fn drop(&mut self) {
        self.released.fetch_add(1, Ordering::SeqCst);
    }
}

impl Host for FakeHost {
    type Scheduler = FakeScheduler;
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.header_values(name).into_iter().next()
    }
    fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }
    fn headers(&self) -> Vec<(&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_slice()))
            .collect()
    }
    fn attribute(&self, attribute: Attribute) -> Option<String> {
        (attribute == Attribute::Path).then(|| "/p".to_string())
    }
    fn route(&self) -> Option<Arc<RouteSettings>> {
        self.route.clone()
    }
    fn remove_header(&mut self, name: &str) {
        self.ops.push(Op::Remove(name.into()));
    }
    fn set_header(&mut self, name: &str, value: &str) {
        self.ops.push(Op::Set(name.into(), value.into()));
    }
    fn add_header(&mut self, name: &str, value: &str) {
        self.ops.push(Op::Add(name.into(), value.into()));
    }
    fn add_response_header(&mut self, name: &str, value: &str) {
        self.ops.push(Op::Response(name.into(), value.into()));
    }
    fn set_metadata(&mut self, entries: &[Metadata]) {
        let keys = entries.iter().map(|e| &*e.key);
        self.ops.push(Op::Meta(keys.collect::<Vec<_>>().join(",")));
    }
    fn send_response(&mut self, reply: &LocalReply) {
        self.ops.push(Op::Reply(reply.status));
    }
    fn continue_decoding(&mut self) {
        self.ops.push(Op::Continue);
    }
    fn scheduler(&mut self) -> Option<FakeScheduler> {
        (!self.no_scheduler).then(|| FakeScheduler {
            commits: Arc::clone(&self.commits),
            released: Arc::clone(&self.released),
        })
    }
    fn count(&mut self, counter: Counter, label: &'static str) {
        self.ops.push(Op::Count(counter, label));
    }
    fn record(&mut self, histogram: Histogram, _value: u64) {
        assert_eq!(histogram, Histogram::PendingMicros);
        self.ops.push(Op::Waited);
    }
}

struct FnFilter<F>(F);

impl<F: Fn(&dyn Request) -> Verdict + Send + Sync + 'static> Filter for FnFilter<F> {
    fn on_request(&self, request: &dyn Request) -> Verdict {
        (self.0)(request)
    }
}

fn stream(
    mode: FailureMode,
    f: impl Fn(&dyn Request) -> Verdict + Send + Sync + 'static,
) -> Stream<FakeScheduler> {
    Stream::new(Arc::new(FilterConfig {
        filter: Arc::new(FnFilter(f)),
        failure_mode: mode,
    }))
}

fn mutations() -> Mutations {
    Mutations {
        remove_headers: vec!["x-spoof".into()],
        set_headers: vec![("x-spoof".into(), "trusted".into())],
        add_headers: vec![("x-more".into(), "1".into())],
        response_headers: vec![("x-ratelimit-limit".into(), "10".into())],
        metadata: vec![Metadata {
            namespace: "ns".into(),
            key: "k".into(),
            value: MetadataValue::Bool(true),
        }],
        counts: {
            let mut counts = Counts::default();
            counts.push(Counter::RateLimit, "ok");
            counts
        },
    }
}

#[test]
fn continue_applies_removals_before_sets_and_adds_response_headers_later() {
    let s = stream(FailureMode::Deny, |_| Verdict::Continue(mutations()));
    let mut host = FakeHost::default();
    assert_eq!(s.request_headers(&mut host), Flow::Continue);
    let writes: Vec<_> = host
        .ops
        .iter()
        .filter(|o| !matches!(o, Op::Count(..)))
        .cloned()
        .collect();
    assert_eq!(
        writes,
        vec![
            Op::Remove("x-spoof".into()),
            Op::Set("x-spoof".into(), "trusted".into()),
            Op::Add("x-more".into(), "1".into()),
            Op::Meta("k".into()),
        ]
    );
    assert!(host.did(&Op::Count(Counter::Requests, "continue")));
    let mut back = FakeHost::default();
    s.response_headers(&mut back);
    assert_eq!(
        back.ops,
        vec![Op::Response("x-ratelimit-limit".into(), "10".into())]
    );
}

#[test]
fn respond_sends_one_local_reply_and_stops() {
    let s = stream(FailureMode::Deny, |_| match FailureMode::Deny.verdict() {
        Verdict::Respond(mut r) => {
            r.status = 429;
            Verdict::Respond(r)
        }
        _ => unreachable!(),
    });
    let mut host = FakeHost::default();
    assert_eq!(s.request_headers(&mut host), Flow::Stop);
    assert!(host.did(&Op::Reply(429)));
    // A failure after the reply does not answer twice.
    s.fail(&mut host, false);
    assert_eq!(
        host.ops
            .iter()
            .filter(|o| matches!(o, Op::Reply(_)))
            .count(),
        1
    );
}

#[test]
fn a_disabled_route_skips_the_filter() {
    let s = stream(FailureMode::Deny, |_| panic!("must not be called"));
    let mut host = FakeHost {
        route: Some(Arc::new(RouteSettings {
            disabled: true,
            ..RouteSettings::default()
        })),
        ..Default::default()
    };
    assert_eq!(s.request_headers(&mut host), Flow::Continue);
    assert_eq!(host.ops, vec![Op::Count(Counter::Requests, "disabled")]);
}

#[test]
fn the_route_settings_reach_the_filter() {
    let s = stream(FailureMode::Deny, |r| {
        assert_eq!(r.route_rule(), Some("admin"));
        assert_eq!(r.route_identity(), Some("api_key"));
        assert_eq!(r.route_scopes(), Some("orders:write"));
        assert_eq!(r.path(), Some("/p"));
        Verdict::Continue(Mutations::default())
    });
    let mut host = FakeHost {
        route: Some(Arc::new(RouteSettings {
            disabled: false,
            rule: Some("admin".into()),
            identity: Some("api_key".into()),
            scopes: Some("orders:write".into()),
        })),
        ..Default::default()
    };
    assert_eq!(s.request_headers(&mut host), Flow::Continue);
}

#[test]
fn a_panicking_filter_gets_the_failure_mode() {
    let deny = stream(FailureMode::Deny, |_| panic!("boom"));
    let mut host = FakeHost::default();
    assert_eq!(deny.request_headers(&mut host), Flow::Stop);
    assert!(host.did(&Op::Reply(503)));
    assert!(host.did(&Op::Count(Counter::Failures, "decide")));

    let allow = stream(FailureMode::Allow, |_| panic!("boom"));
    let mut host = FakeHost::default();
    assert_eq!(allow.request_headers(&mut host), Flow::Continue);
    assert!(!host.ops.iter().any(|o| matches!(o, Op::Reply(_))));
}

fn wait_for_commit(host: &FakeHost) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(id) = host.commits.lock().unwrap().first() {
            return *id;
        }
        assert!(Instant::now() < deadline, "no commit from the background");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn pending_pauses_then_resumes_with_the_background_verdict() {
    let s = stream(FailureMode::Deny, |_| {
        Verdict::Pending(Pending::new(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Verdict::Continue(mutations())
        }))
    });
    let mut host = FakeHost::default();
    assert_eq!(s.request_headers(&mut host), Flow::Stop);
    assert!(host.did(&Op::Count(Counter::Paused, "pending")));
    assert_eq!(s.request_data(), BodyFlow::Hold);
    let event = wait_for_commit(&host);
    // The timer woke the stream from the background runtime's thread; the scheduler is kept
    // until the verdict is in.
    assert_eq!(host.released.load(Ordering::SeqCst), 0);
    s.scheduled(&mut host, event);
    assert!(host.did(&Op::Set("x-spoof".into(), "trusted".into())));
    assert!(host.did(&Op::Continue));
    assert!(host.did(&Op::Waited));
    assert_eq!(host.released.load(Ordering::SeqCst), 1);
    assert_eq!(s.request_data(), BodyFlow::Continue);
}

#[test]
fn a_verdict_ready_at_the_pause_is_applied_at_once() {
    let s = stream(FailureMode::Deny, |_| {
        Verdict::Pending(Pending::new(async { Verdict::Continue(mutations()) }))
    });
    let mut host = FakeHost::default();
    assert_eq!(s.request_headers(&mut host), Flow::Continue);
    assert!(host.did(&Op::Set("x-spoof".into(), "trusted".into())));
    assert!(
        !host.did(&Op::Continue),
        "never paused, so nothing to resume"
    );
    assert!(!host.did(&Op::Count(Counter::Paused, "pending")));
    assert!(host.commits.lock().unwrap().is_empty());
    assert_eq!(host.released.load(Ordering::SeqCst), 1);
}

#[test]
fn a_future_woken_before_it_is_ready_stays_paused() {
    let s = stream(FailureMode::Deny, |_| {
        Verdict::Pending(Pending::new(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            Verdict::Continue(mutations())
        }))
    });
    let mut host = FakeHost::default();
    assert_eq!(s.request_headers(&mut host), Flow::Stop);
    // Each wake commits; the stream polls on each and resumes only once the verdict is in.
    let (deadline, mut woken) = (Instant::now() + Duration::from_secs(5), 0);
    while !host.did(&Op::Continue) {
        assert!(Instant::now() < deadline, "never resumed");
        let commits: Vec<u64> = host.commits.lock().unwrap().drain(..).collect();
        for event in commits {
            woken += 1;
            s.scheduled(&mut host, event);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(woken, 2, "one wake per sleep");
    assert_eq!(host.ops.iter().filter(|o| **o == Op::Continue).count(), 1);
    assert_eq!(s.request_data(), BodyFlow::Continue);
}

#[test]
fn a_background_panic_gets_the_failure_mode_on_resume() {
    let s = stream(FailureMode::Deny, |_| {
        Verdict::Pending(Pending::new(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            panic!("background boom")
        }))
    });
    let mut host = FakeHost::default();
    assert_eq!(s.request_headers(&mut host), Flow::Stop);
    let event = wait_for_commit(&host);
    s.scheduled(&mut host, event);
    assert!(host.did(&Op::Reply(503)));
    assert!(host.did(&Op::Count(Counter::Failures, "resume")));
    assert!(!host.did(&Op::Continue));

    // A panic at the first poll, in the hook: the failure mode at once.
    let s = stream(FailureMode::Deny, |_| {
        Verdict::Pending(Pending::new(async { panic!("early boom") }))
    });
    let mut host = FakeHost::default();
    assert_eq!(s.request_headers(&mut host), Flow::Stop);
    assert!(host.did(&Op::Reply(503)));
}

#[test]
fn a_stale_event_is_ignored() {
    let s = stream(FailureMode::Deny, |_| {
        Verdict::Pending(Pending::new(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Verdict::Continue(Mutations::default())
        }))
    });
    let mut host = FakeHost::default();
    s.request_headers(&mut host);
    let event = wait_for_commit(&host);
    s.scheduled(&mut host, event + 100);
    assert!(!host.did(&Op::Continue));
    s.scheduled(&mut host, event);
    assert!(host.did(&Op::Continue));
}

#[test]
fn without_a_scheduler_the_request_gets_the_failure_mode() {
    let s = stream(FailureMode::Deny, |_| {
        Verdict::Pending(Pending::new(async {
            Verdict::Continue(Mutations::default())
        }))
    });
    let mut host = FakeHost {
        no_scheduler: true,
        ..Default::default()
    };
    assert_eq!(s.request_headers(&mut host), Flow::Stop);
    assert!(host.did(&Op::Reply(503)));
    assert!(host.did(&Op::Count(Counter::Failures, "background")));
}

#[test]
fn a_destroyed_stream_is_never_woken() {
    let s = stream(FailureMode::Deny, |_| {
        Verdict::Pending(Pending::new(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Verdict::Continue(Mutations::default())
        }))
    });
    let mut host = FakeHost::default();
    s.request_headers(&mut host);
    drop(s);
    // The stream released the scheduler itself, while its future was still sleeping: the
    // timer, dropped with it, never fires, and no wake could reach the stream anyway.
    assert_eq!(host.released.load(Ordering::SeqCst), 1);
    assert!(host.commits.lock().unwrap().is_empty());
}

/// The streams of one worker turn that pause on Redis send their calls together: the first to
/// pause with the driver's wake held commits the release event, the others commit nothing;
/// and when that first stream is destroyed before its event runs, its drop releases the calls,
/// so the others are still answered and resumed.
#[test]
fn the_first_stream_paused_on_redis_in_a_turn_releases_the_calls_even_when_destroyed() {
    use tollgate_common::testing::RedisServer;
    use tollgate_limiter::algorithm::{Algorithm, Rule};
    use tollgate_limiter::store::redis::{RedisConfig, RedisStore};
    use tollgate_limiter::store::{Hit, Store};

    let server = RedisServer::start();
    let store = Arc::new(
        runtime::block_on(RedisStore::connect(&RedisConfig::standalone(server.url())))
            .unwrap()
            .unwrap(),
    );
    let rule = Rule::new(Algorithm::FixedWindow, 10, Duration::from_secs(60));
    // Connected, with the script loaded: the calls below are queued on their first poll.
    let warm = [Hit {
        key: "held:warm",
        rule,
        cost: 1,
        shadow: false,
    }];
    runtime::block_on(store.hit(&warm, std::time::SystemTime::now()))
        .unwrap()
        .unwrap();
    let counting = |key: &'static str| {
        let store = Arc::clone(&store);
        stream(FailureMode::Deny, move |_| {
            let store = Arc::clone(&store);
            Verdict::Pending(Pending::new(async move {
                let hits = [Hit {
                    key,
                    rule,
                    cost: 1,
                    shadow: false,
                }];
                match store.hit(&hits, std::time::SystemTime::now()).await {
                    Ok(_) => Verdict::Continue(Mutations::default()),
                    Err(_) => FailureMode::Deny.verdict(),
                }
            }))
        })
    };
    let (first, second) = (counting("held:first"), counting("held:second"));
    let (mut host1, mut host2) = (FakeHost::default(), FakeHost::default());
    assert_eq!(first.request_headers(&mut host1), Flow::Stop);
    assert_eq!(second.request_headers(&mut host2), Flow::Stop);
    assert_eq!(*host1.commits.lock().unwrap(), [RELEASE_EVENT]);
    assert!(host2.commits.lock().unwrap().is_empty());

    // Destroyed before its release event ran: the second's call goes out all the same.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while host2.commits.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the held call was never released"
        );
        std::thread::yield_now();
    }
    let event = host2.commits.lock().unwrap()[0];
    assert_ne!(event, RELEASE_EVENT);
    second.scheduled(&mut host2, event);
    assert!(host2.did(&Op::Continue), "{:?}", host2.ops);
}
