//! Engine behaviour against the real memory store, with an injected clock: statuses in request
//! order, hits_addend, overrides, replaces, shadow mode, unlimited and zero limits, failure modes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;

use super::*;
use crate::descriptor::{Descriptor, LimitOverride};
use crate::store::{MemoryOptions, MemoryStore};
use crate::unit::Unit;
use tollgate_common::clock::ManualClock;
use tollgate_common::log_throttle::LogThrottle;

const LIMITS: &str = "
domain: d
descriptors:
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: b
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: open
    rate_limit: {unlimited: true}
  - key: blocked
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: watch
    shadow_mode: true
    rate_limit: {name: watched, unit: minute, requests_per_unit: 1}
  - key: two
    rate_limit: {name: burst, unit: second, requests_per_unit: 2}
    rate_limits:
      - {name: sustained, unit: minute, requests_per_unit: 3}
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        rate_limit: {name: specific_limit, unit: minute, requests_per_unit: 5}
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        rate_limit:
          replaces: [{name: specific_limit}]
          unit: minute
          requests_per_unit: 10
";

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn engine_with(yaml: &str, options: EngineOptions) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let store = Arc::new(MemoryStore::new(&MemoryOptions::default()));
    let limits = Limits::parse(yaml, Algorithm::SlidingWindow).unwrap();
    (Engine::new(limits, store, clock.clone(), options), clock)
}

fn engine() -> (Engine, Arc<ManualClock>) {
    engine_with(LIMITS, EngineOptions::default())
}

fn d(entries: &[(&str, &str)]) -> Descriptor {
    Descriptor::new(entries.iter().copied())
}

async fn call(e: &Engine, ds: &[Descriptor]) -> Decision {
    e.should_rate_limit("d", ds, 0).await.unwrap()
}

fn summary(dec: &Decision) -> Vec<(Code, Option<String>, u64)> {
    dec.statuses
        .iter()
        .map(|s| {
            (
                s.code,
                s.limit.as_ref().map(|l| l.name.to_string()),
                s.remaining,
            )
        })
        .collect()
}

#[tokio::test]
async fn one_status_per_descriptor_in_request_order() {
    let (e, _) = engine();
    let dec = call(
        &e,
        &[d(&[("b", "1")]), d(&[("nothing", "x")]), d(&[("a", "1")])],
    )
    .await;
    assert_eq!(dec.code, Code::Ok);
    assert_eq!(
        summary(&dec),
        [
            (Code::Ok, Some("b".into()), 2),
            (Code::Ok, None, 0),
            (Code::Ok, Some("a".into()), 1)
        ]
    );
    assert!(
        e.should_rate_limit("d", &[] as &[Descriptor], 0)
            .await
            .unwrap()
            .statuses
            .is_empty()
    );
}

#[tokio::test]
async fn over_limit_descriptor_denies_and_eats_no_quota_of_the_others() {
    let (e, clock) = engine();
    for _ in 0..2 {
        assert_eq!(call(&e, &[d(&[("a", "1")])]).await.code, Code::Ok);
    }
    let dec = call(&e, &[d(&[("b", "1")]), d(&[("a", "1")])]).await;
    assert_eq!(dec.code, Code::OverLimit);
    assert_eq!(summary(&dec)[1], (Code::OverLimit, Some("a".into()), 0));
    assert_eq!(dec.statuses[0].code, Code::Ok);
    assert!(
        dec.statuses[1]
            .retry_after
            .is_some_and(|r| r > Duration::ZERO && r <= Duration::from_secs(66))
    );
    assert_eq!(
        dec.fired().map(|(i, l)| (i, l.name.to_string())),
        Some((1, "a".to_string()))
    );
    // The rejected request did not count against `b`.
    let dec = call(&e, &[d(&[("b", "1")])]).await;
    assert_eq!(dec.statuses[0].remaining, 2);
    // Another value has its own counter.
    assert_eq!(call(&e, &[d(&[("a", "2")])]).await.code, Code::Ok);
    // After the window (and the sliding window's last sub-window), `a` is admitted again.
    clock.advance(Duration::from_secs(67));
    assert_eq!(call(&e, &[d(&[("a", "1")])]).await.code, Code::Ok);
}

#[tokio::test]
async fn hits_addend_request_level_and_per_descriptor() {
    let (e, _) = engine();
    // Request level 0 means 1.
    assert_eq!(
        e.should_rate_limit("d", &[d(&[("b", "0")])], 0)
            .await
            .unwrap()
            .statuses[0]
            .remaining,
        2
    );
    // Request level 2 counts 2.
    assert_eq!(
        e.should_rate_limit("d", &[d(&[("b", "1")])], 2)
            .await
            .unwrap()
            .statuses[0]
            .remaining,
        1
    );
    // A descriptor's own addend wins; an explicit 0 checks without counting.
    let mut check = d(&[("b", "1")]);
    check.hits_addend = Some(0);
    let dec = e.should_rate_limit("d", &[check.clone()], 5).await.unwrap();
    assert_eq!((dec.code, dec.statuses[0].remaining), (Code::Ok, 1));
    let mut one = d(&[("b", "1")]);
    one.hits_addend = Some(1);
    let dec = e.should_rate_limit("d", &[one], 5).await.unwrap();
    assert_eq!((dec.code, dec.statuses[0].remaining), (Code::Ok, 0));
    // More than what is left is denied and counts nothing.
    let dec = e
        .should_rate_limit("d", &[d(&[("b", "2")])], 4)
        .await
        .unwrap();
    assert_eq!(dec.code, Code::OverLimit);
    assert_eq!(call(&e, &[d(&[("b", "2")])]).await.statuses[0].remaining, 2);
}

#[tokio::test]
async fn limit_override_is_used_whenever_the_domain_is_known() {
    let (e, _) = engine();
    let mut o = d(&[("anything", "x")]);
    o.limit = Some(LimitOverride {
        requests_per_unit: 1,
        unit: Some(Unit::Second),
    });
    let dec = call(&e, &[o.clone()]).await;
    let l = dec.statuses[0].limit.as_ref().unwrap();
    assert_eq!(
        (l.requests_per_unit, l.unit, dec.code),
        (1, Some(Unit::Second), Code::Ok)
    );
    assert_eq!(call(&e, &[o.clone()]).await.code, Code::OverLimit);
    // An override replaces the configured limit of a matching descriptor.
    let mut a = d(&[("a", "9")]);
    a.limit = Some(LimitOverride {
        requests_per_unit: 7,
        unit: Some(Unit::Hour),
    });
    assert_eq!(call(&e, &[a]).await.statuses[0].remaining, 6);
    // Window algorithms count any override exactly, however large.
    let mut huge = d(&[("x", "y")]);
    huge.limit = Some(LimitOverride {
        requests_per_unit: u32::MAX,
        unit: Some(Unit::Year),
    });
    assert_eq!(
        summary(&call(&e, &[huge]).await),
        [(
            Code::Ok,
            Some("override".to_string()),
            u64::from(u32::MAX) - 1
        )]
    );
    // Unknown domain: no limits at all, overrides included.
    let dec = e.should_rate_limit("other", &[o], 0).await.unwrap();
    assert_eq!(summary(&dec), [(Code::Ok, None, 0)]);
}

// envoyproxy/ratelimit's README example 7.
#[tokio::test]
async fn replaced_limits_are_not_checked_nor_counted() {
    let (e, _) = engine();
    let both = [
        d(&[("key_1", "value_1"), ("user", "bkthomps")]),
        d(&[("key_2", "value_2"), ("user", "bkthomps")]),
    ];
    for _ in 0..7 {
        let dec = call(&e, &both).await;
        assert_eq!(dec.code, Code::Ok);
        assert_eq!(
            summary(&dec)[0],
            (Code::Ok, None, 0),
            "the replaced limit does not apply"
        );
    }
    // The 5/min limit alone is untouched by the 7 requests above.
    let dec = call(&e, &[d(&[("key_1", "value_1"), ("user", "bkthomps")])]).await;
    assert_eq!(
        summary(&dec),
        [(Code::Ok, Some("specific_limit".into()), 4)]
    );
}

#[tokio::test]
async fn shadow_mode_limits_count_but_never_deny() {
    let (e, _) = engine();
    assert!(
        call(&e, &[d(&[("watch", "x")])]).await.statuses[0]
            .shadow_fired
            .is_none()
    );
    let dec = call(&e, &[d(&[("watch", "x")])]).await;
    assert_eq!(dec.code, Code::Ok);
    assert_eq!(
        dec.statuses[0]
            .shadow_fired
            .as_ref()
            .map(|l| l.name.to_string())
            .as_deref(),
        Some("watched")
    );
    assert!(dec.fired().is_none());
    // Global shadow mode turns every limit into a shadow limit.
    let (e, _) = engine_with(
        LIMITS,
        EngineOptions {
            shadow_mode: true,
            ..Default::default()
        },
    );
    for _ in 0..5 {
        assert_eq!(call(&e, &[d(&[("a", "1")])]).await.code, Code::Ok);
    }
}

#[tokio::test]
async fn unlimited_and_zero_limits() {
    let (e, _) = engine();
    let dec = call(&e, &[d(&[("open", "x")])]).await;
    assert_eq!(
        (
            dec.code,
            dec.statuses[0].unlimited,
            dec.statuses[0].remaining
        ),
        (Code::Ok, true, u64::from(u32::MAX))
    );
    assert!(dec.statuses[0].limit.is_none());
    let dec = call(&e, &[d(&[("b", "1")]), d(&[("blocked", "x")])]).await;
    assert_eq!(dec.code, Code::OverLimit);
    assert_eq!(
        summary(&dec)[1],
        (Code::OverLimit, Some("blocked".into()), 0)
    );
    assert_eq!(
        call(&e, &[d(&[("b", "1")])]).await.statuses[0].remaining,
        2,
        "nothing counted"
    );
}

#[tokio::test]
async fn a_rejected_burst_does_not_consume_the_sustained_limit() {
    let (e, clock) = engine();
    let two = [d(&[("two", "x")])];
    assert_eq!(call(&e, &two).await.code, Code::Ok);
    assert_eq!(call(&e, &two).await.code, Code::Ok);
    for _ in 0..5 {
        let dec = call(&e, &two).await;
        assert_eq!(dec.code, Code::OverLimit);
        assert_eq!(
            dec.statuses[0].limit.as_ref().unwrap().name.as_ref(),
            "burst"
        );
    }
    clock.advance(Duration::from_millis(1200));
    let dec = call(&e, &two).await;
    assert_eq!(dec.code, Code::Ok, "the sustained limit still has one left");
    assert_eq!(summary(&dec)[0], (Code::Ok, Some("sustained".into()), 0));
    clock.advance(Duration::from_millis(1200));
    let dec = call(&e, &two).await;
    assert_eq!(
        summary(&dec)[0],
        (Code::OverLimit, Some("sustained".into()), 0)
    );
}

#[tokio::test]
async fn a_changed_rule_starts_a_fresh_counter() {
    let (e, _) = engine_with(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 2}\n",
        EngineOptions::default(),
    );
    let k = [d(&[("k", "v")])];
    call(&e, &k).await;
    call(&e, &k).await;
    assert_eq!(call(&e, &k).await.code, Code::OverLimit);
    e.set_limits(Limits::parse("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 3}\n", Algorithm::SlidingWindow).unwrap());
    assert_eq!(
        summary(&call(&e, &k).await),
        [(Code::Ok, Some("k".into()), 2)]
    );
}

/// A store that always fails, as an unreachable Redis does.
struct Down;

impl Store for Down {
    fn hit<'a>(
        &'a self,
        _: &'a [Hit<'a>],
        _: SystemTime,
    ) -> BoxFuture<'a, Result<Vec<Outcome>, StoreError>> {
        Box::pin(async { Err(StoreError::Timeout) })
    }
}

fn failing(mode: FailureMode) -> Engine {
    let limits = Limits::parse(LIMITS, Algorithm::SlidingWindow).unwrap();
    let options = EngineOptions {
        failure_mode: mode,
        ..Default::default()
    };
    Engine::new(
        limits,
        Arc::new(Down),
        Arc::new(ManualClock::new(t0())),
        options,
    )
}

#[tokio::test]
async fn a_key_longer_than_max_key_bytes_is_refused_and_counts_nothing() {
    let (e, _) = engine_with(
        LIMITS,
        EngineOptions {
            max_key_bytes: 64,
            ..EngineOptions::default()
        },
    );
    let long = "x".repeat(1 << 20);
    let dec = call(&e, &[d(&[("a", "1")]), d(&[("b", &long)])]).await;
    assert_eq!(dec.code, Code::OverLimit);
    assert_eq!(
        summary(&dec),
        [
            (Code::Ok, Some("a".into()), 2),
            (Code::OverLimit, Some("b".into()), 0)
        ],
        "the refused request counted nothing"
    );
    // Within the bound, it counts as usual.
    let dec = call(&e, &[d(&[("a", "1")]), d(&[("b", &long[..32])])]).await;
    assert_eq!(
        summary(&dec),
        [
            (Code::Ok, Some("a".into()), 1),
            (Code::Ok, Some("b".into()), 2)
        ]
    );
}

/// A `MakeWriter` into a shared buffer, to read log lines back.
#[derive(Clone, Default)]
struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn an_outage_logs_one_line_per_interval_with_a_count() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let req = [d(&[("a", "1")])];
    // Callsites first met by a test running in parallel without a subscriber may keep a stale
    // interest: register them, rebuild the cache, then count.
    let _ = failing(FailureMode::Allow)
        .should_rate_limit("d", &req, 0)
        .await;
    tracing::callsite::rebuild_interest_cache();
    captured.0.lock().clear();

    let mut engine = failing(FailureMode::Allow);
    engine.store_failures = LogThrottle::new(Duration::from_millis(200));
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        engine.should_rate_limit("d", &req, 0).await.unwrap();
    }
    let lines = |c: &Captured| -> Vec<serde_json::Value> {
        String::from_utf8(c.0.lock().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &serde_json::Value| v["fields"]["message"] == "counter store failed")
            .collect()
    };
    if started.elapsed() < Duration::from_millis(200) {
        let first = lines(&captured);
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(first[0]["fields"]["times"], 1);
    }
    // After the interval, the next failure's line stands for every call held back.
    let ended = std::time::Instant::now();
    while ended.elapsed() < Duration::from_millis(250) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine.should_rate_limit("d", &req, 0).await.unwrap();
    let all = lines(&captured);
    let total: u64 = all
        .iter()
        .map(|l| l["fields"]["times"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 1001, "every failure is counted once: {all:?}");
    assert!(all.len() <= 3, "{} lines for 1001 failures", all.len());
}

#[tokio::test]
async fn failure_modes() {
    let req = [
        d(&[("a", "1")]),
        d(&[("nothing", "x")]),
        d(&[("watch", "x")]),
    ];
    let err = failing(FailureMode::Error)
        .should_rate_limit("d", &req, 0)
        .await;
    assert!(matches!(err, Err(EngineError::Store(StoreError::Timeout))));
    let dec = failing(FailureMode::Allow)
        .should_rate_limit("d", &req, 0)
        .await
        .unwrap();
    assert!(dec.degraded);
    assert_eq!(dec.code, Code::Ok);
    let dec = failing(FailureMode::Deny)
        .should_rate_limit("d", &req, 0)
        .await
        .unwrap();
    assert_eq!(dec.code, Code::OverLimit);
    let codes: Vec<_> = dec.statuses.iter().map(|s| s.code).collect();
    assert_eq!(
        codes,
        [Code::OverLimit, Code::Ok, Code::Ok],
        "only enforced limits deny"
    );
    // Requests that need no store are answered normally.
    let dec = failing(FailureMode::Error)
        .should_rate_limit("d", &[d(&[("open", "x")])], 0)
        .await
        .unwrap();
    assert!(!dec.degraded);
}

/// A store that answers "admitted" and records the counter keys it was sent.
#[derive(Default)]
struct Recording(parking_lot::Mutex<Vec<String>>);

impl Store for Recording {
    fn hit<'a>(
        &'a self,
        hits: &'a [Hit<'a>],
        _: SystemTime,
    ) -> BoxFuture<'a, Result<Vec<Outcome>, StoreError>> {
        let mut keys = self.0.lock();
        keys.extend(
            hits.iter()
                .map(|h| crate::store::redis::key_of("tollgate:", h)),
        );
        let out = hits
            .iter()
            .map(|h| Outcome {
                admitted: true,
                remaining: h.rule.limit,
                reset_after: Duration::ZERO,
                retry_after: None,
                cached: false,
            })
            .collect();
        Box::pin(async move { Ok(out) })
    }
}

/// The Redis keys of counters are a stored format: replicas of different versions sharing one
/// Redis (a rolling upgrade) must count on the same keys. These are the keys as released.
#[tokio::test]
async fn counter_keys_on_the_store_are_stable() {
    let limits = "
domain: web|1
descriptors:
  - key: client
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: two
    rate_limit: {name: burst, unit: second, requests_per_unit: 2, algorithm: gcra, burst: 4}
    rate_limits:
      - {name: sustained, unit: hour, requests_per_unit: 3, algorithm: fixed_window}
  - key: path
    value: '/api/*'
    share_threshold: true
    descriptors:
      - key: user
        rate_limit: {unit: second, requests_per_unit: 7, algorithm: token_bucket}
  - key: host
    value: 'a*'
    rate_limit: {window: 90s, requests_per_unit: 5}
";
    let store = Arc::new(Recording::default());
    let engine = Engine::new(
        Limits::parse(limits, Algorithm::SlidingWindow).unwrap(),
        store.clone(),
        Arc::new(ManualClock::new(t0())),
        EngineOptions::default(),
    );
    let mut overridden = d(&[("anything", "x=y"), ("b", "{c}")]);
    overridden.limit = Some(LimitOverride {
        requests_per_unit: 9,
        unit: Some(Unit::Minute),
    });
    let request = [
        d(&[("client", "a|b=c#d\\e{f}")]),
        d(&[("two", "t")]),
        d(&[("path", "/api/v1"), ("user", "u1")]),
        d(&[("host", "abc")]),
        overridden,
    ];
    engine
        .should_rate_limit("web|1", &request, 0)
        .await
        .unwrap();
    assert_eq!(
        *store.0.lock(),
        [
            "tollgate:{rl|web\\p1|client=a\\pb\\ec\\hd\\\\e\\of\\c}#0:v2:0:60000000:2",
            "tollgate:{rl|web\\p1|two=t}#0:v2:3:1000000:2:4",
            "tollgate:{rl|web\\p1|two=t}#1:v2:1:3600000000:3",
            "tollgate:{rl|web\\p1|path=#/api/*|user=u1}#0:v2:2:1000000:7",
            "tollgate:{rl|web\\p1|host=abc}#0:v2:0:90000000:5",
            "tollgate:{rl|web\\p1|anything=x\\ey|b=\\oc\\c}#o:v2:0:60000000:9",
        ]
    );
}

/// envoyproxy/ratelimit's `quota_mode`: a quota-mode descriptor over its limit lets the request
/// through, flagged, until every quota-mode descriptor of the request is over; a normal
/// descriptor still denies on its own.
#[tokio::test]
async fn quota_mode_passes_until_every_quota_descriptor_is_over() {
    let (e, _) = engine_with(
        "
domain: d
descriptors:
  - key: backend
    value: a
    quota_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1}
  - key: backend
    value: b
    quota_mode: true
    rate_limit: {unit: hour, requests_per_unit: 2}
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 10}
",
        EngineOptions::default(),
    );
    let req = [
        d(&[("backend", "a")]),
        d(&[("backend", "b")]),
        d(&[("user", "u")]),
    ];
    let flags = |dec: &Decision| {
        dec.statuses
            .iter()
            .map(|s| s.quota_exceeded)
            .collect::<Vec<_>>()
    };
    let dec = call(&e, &req).await;
    assert_eq!(dec.code, Code::Ok);
    assert_eq!(flags(&dec), [false, false, false]);
    let dec = call(&e, &req).await;
    assert_eq!(dec.code, Code::Ok, "b still has quota");
    assert_eq!(flags(&dec), [true, false, false]);
    assert_eq!(dec.statuses[0].code, Code::Ok);
    let md = crate::response::metadata("d", &dec).unwrap();
    assert!(md.quota_mode);
    assert_eq!(md.quota_violations, [0]);
    let dec = call(&e, &req).await;
    assert_eq!(dec.code, Code::OverLimit, "every quota is over");
    assert_eq!(
        dec.statuses.iter().map(|s| s.code).collect::<Vec<_>>(),
        [Code::OverLimit, Code::OverLimit, Code::Ok]
    );
    assert!(dec.statuses[0].retry_after.is_some());
    // A request whose only quota-mode descriptor is over is denied.
    assert_eq!(
        call(&e, &[d(&[("backend", "a")]), d(&[("user", "u")])])
            .await
            .code,
        Code::OverLimit
    );
}
