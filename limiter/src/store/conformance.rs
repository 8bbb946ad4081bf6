//! The one conformance suite every store passes: each algorithm's boundaries with an injected
//! clock, all-or-nothing requests, and the admitted total under concurrent load from three
//! replicas (three store instances sharing one backend).
//!
//! Run against the memory store, a real standalone Redis and a real 3-node Redis Cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use tollgate_common::secret::Secret;
use tollgate_common::testing::{RedisCluster, RedisServer};

use crate::algorithm::{Algorithm, Rule};

/// An aligned instant (a multiple of every window used here) in 2027.
const T0: u64 = 1_800_000_000 * 1_000_000;
const S: u64 = 1_000_000;

const ALL: [Algorithm; 4] = [
    Algorithm::SlidingWindow,
    Algorithm::FixedWindow,
    Algorithm::TokenBucket,
    Algorithm::Gcra,
];

fn at(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// A namespace that keeps runs (and tests sharing a Redis) apart.
fn ns(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn rule(algorithm: Algorithm, limit: u64, window: Duration) -> Rule {
    Rule::new(algorithm, limit, window)
}

async fn one(s: &dyn Store, key: &str, rule: Rule, cost: u64, now_us: u64) -> Outcome {
    let hits = [Hit {
        key,
        rule,
        cost,
        shadow: false,
    }];
    s.hit(&hits, at(now_us))
        .await
        .expect("store call")
        .remove(0)
}

fn admitted(o: &[Outcome], hits: &[Hit<'_>]) -> bool {
    o.iter().zip(hits).all(|(o, h)| o.admitted || h.shadow)
}

/// Every boundary claim of `docs/algorithms.md`, against one store instance.
pub(crate) async fn boundaries(s: &dyn Store, ns: &str) {
    fixed_window(s, &format!("{ns}:fw")).await;
    sliding_window(s, &format!("{ns}:sw")).await;
    token_bucket(s, &format!("{ns}:tb")).await;
    gcra(s, &format!("{ns}:gcra")).await;
    monthly_meters(s, &format!("{ns}:month")).await;
    all_or_nothing(s, &format!("{ns}:aon")).await;
    shadow_and_costs(s, &format!("{ns}:cost")).await;
}

/// A pseudo-random sequence of requests (one hit, two keys, one key twice; costs 0 to 3 and
/// beyond the limit; shadow hits; a clock that moves on, lags within the sliding window's skew
/// and beyond it), answered exactly as the reference arithmetic answers it: a fresh memory store
/// fed the same sequence. Every shape the Redis script treats on its own path is in it. (Not
/// run on the memory store itself, whose background sweep runs on the latest clock any call
/// brought, so a clock lagging beyond a counter's expiry may find it gone.)
async fn agrees_with_the_reference(s: &dyn Store, k: &str) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    for alg in ALL {
        let reference = MemoryStore::new(&MemoryOptions::default());
        let r = rule(alg, 5, Duration::from_secs(1));
        let (a, b) = (
            format!("{k}:{}:a", alg.name()),
            format!("{k}:{}:b", alg.name()),
        );
        let mut now = T0 + 37;
        for step in 0..600 {
            now = match next(20) {
                0 => now - 150_000 - next(100_000), // a lagging replica, within the skew
                1 => now - 400_000 - next(1_000_000), // beyond it
                2 => now + 1_000_000 + next(3_000_000),
                _ => now + next(120_000),
            };
            let cost = |c: u64| if c == 4 { 6 } else { c };
            let hit = |key, c| Hit {
                key,
                rule: r,
                cost: cost(c),
                shadow: c == 3 && step % 3 == 0,
            };
            let hits = match next(10) {
                0 | 1 => vec![hit(&a, next(5)), hit(&b, next(3))],
                2 => vec![hit(&a, next(3)), hit(&a, next(5))],
                _ => vec![hit(&a, next(5))],
            };
            let want = reference.hit_now(&hits, now);
            let got = s.hit(&hits, at(now)).await.expect("store call");
            assert_eq!(got, want, "{alg:?} step {step} at {now}: {hits:?}");
        }
    }
}

async fn fixed_window(s: &dyn Store, k: &str) {
    let r = rule(Algorithm::FixedWindow, 3, Duration::from_secs(10));
    let t = T0 + 4 * S;
    for left in [2, 1, 0] {
        let o = one(s, k, r, 1, t).await;
        assert!(o.admitted, "{o:?}");
        assert_eq!((o.remaining, o.reset_after), (left, Duration::from_secs(6)));
    }
    let o = one(s, k, r, 1, t).await;
    assert!(!o.admitted);
    assert_eq!(
        (o.remaining, o.retry_after),
        (0, Some(Duration::from_secs(6)))
    );
    let o = one(s, k, r, 1, T0 + 10 * S - 1).await;
    assert_eq!(
        o.retry_after,
        Some(Duration::from_micros(1)),
        "still the old window 1 µs before its end"
    );
    let o = one(s, k, r, 1, T0 + 10 * S).await;
    assert!(o.admitted, "a new window at its first microsecond");
    assert_eq!(o.remaining, 2);
    // A replica whose clock lags (still in the old window) can no longer count.
    let o = one(s, k, r, 1, T0 + 10 * S - 1).await;
    assert!(!o.admitted);
    assert_eq!(
        (o.remaining, o.retry_after),
        (2, Some(Duration::from_micros(1)))
    );
    assert!(
        one(s, k, r, 0, T0 + 10 * S - 1).await.admitted,
        "but it can check"
    );
}

async fn sliding_window(s: &dyn Store, k: &str) {
    // 3 per second, 100 ms sub-windows.
    let r = rule(Algorithm::SlidingWindow, 3, Duration::from_secs(1));
    let t = T0 + 30_000;
    for left in [2, 1, 0] {
        let o = one(s, k, r, 1, t).await;
        assert!(o.admitted);
        assert_eq!(o.remaining, left);
        assert_eq!(o.reset_after, Duration::from_micros(1_100_000 - 30_000));
    }
    let o = one(s, k, r, 1, t).await;
    assert!(!o.admitted);
    // The sub-window [0, 100ms) counts until 1.1 s: no 1 s interval ever holds 4.
    assert_eq!(
        o.retry_after,
        Some(Duration::from_micros(1_100_000 - 30_000))
    );
    assert!(!one(s, k, r, 1, T0 + 1_100_000 - 1).await.admitted);
    assert!(one(s, k, r, 1, T0 + 1_100_000).await.admitted);

    // Partial expiry: 1 hit at 0 ms and 2 at 500 ms; at 1.1 s exactly one more fits.
    let k2 = format!("{k}:partial");
    assert!(one(s, &k2, r, 1, T0).await.admitted);
    assert!(one(s, &k2, r, 2, T0 + 500_000).await.admitted);
    let o = one(s, &k2, r, 1, T0 + 1_050_000).await;
    assert_eq!(o.retry_after, Some(Duration::from_micros(50_000)));
    assert!(one(s, &k2, r, 1, T0 + 1_100_000).await.admitted);
    let o = one(s, &k2, r, 1, T0 + 1_100_000).await;
    assert!(!o.admitted);
    assert_eq!(
        o.retry_after,
        Some(Duration::from_micros(500_000)),
        "the 500 ms sub-window counts until 1.6 s"
    );

    // A caller whose clock lags the newest writer by up to 2 sub-windows is judged on its own
    // window; beyond that it may only check until its clock catches up.
    let k3 = format!("{k}:lagging");
    assert!(one(s, &k3, r, 1, T0 + S).await.admitted);
    let o = one(s, &k3, r, 1, T0 + 750_000).await;
    assert!(!o.admitted);
    assert_eq!(o.retry_after, Some(Duration::from_micros(50_000)));
    assert!(one(s, &k3, r, 0, T0 + 750_000).await.admitted);
    let o = one(s, &k3, r, 1, T0 + 850_000).await;
    assert!(o.admitted);
    assert_eq!(
        o.remaining, 1,
        "the newer hit counts for the lagging one too"
    );
}

async fn token_bucket(s: &dyn Store, k: &str) {
    let r = Rule {
        algorithm: Algorithm::TokenBucket,
        limit: 1,
        window: Duration::from_secs(1),
        burst: Some(5),
        period: None,
    };
    let t = T0 + 7 * S;
    for left in (0..5).rev() {
        assert_eq!(one(s, k, r, 1, t).await.remaining, left);
    }
    let o = one(s, k, r, 1, t).await;
    assert!(!o.admitted);
    assert_eq!(o.retry_after, Some(Duration::from_secs(1)));
    assert!(!one(s, k, r, 1, t + S - 1).await.admitted);
    assert!(
        one(s, k, r, 1, t + S).await.admitted,
        "one token refilled per second"
    );
    let o = one(s, k, r, 0, t + S).await;
    assert_eq!(
        (o.admitted, o.remaining, o.reset_after),
        (true, 0, Duration::from_secs(5))
    );
    let o = one(s, k, r, 3, t + 4 * S).await;
    assert!(o.admitted, "three tokens after three more seconds: {o:?}");
}

async fn gcra(s: &dyn Store, k: &str) {
    // 3 per second: an emission interval of 333333.33 µs, kept exact.
    let r = rule(Algorithm::Gcra, 3, Duration::from_secs(1));
    let t = T0 + 9 * S;
    for _ in 0..3 {
        assert!(one(s, k, r, 1, t).await.admitted);
    }
    let o = one(s, k, r, 1, t).await;
    assert_eq!(o.retry_after, Some(Duration::from_micros(333_334)));
    assert!(!one(s, k, r, 1, t + 333_333).await.admitted);
    assert!(one(s, k, r, 1, t + 333_334).await.admitted);
    // Three intervals later (1 s after the burst) the bucket admits exactly one per third.
    assert!(one(s, k, r, 1, t + 666_667).await.admitted);
    assert!(!one(s, k, r, 1, t + 999_999).await.admitted);
    assert!(one(s, k, r, 1, t + S).await.admitted);
}

/// Meters of a realistic monthly size (a million, a billion per 30 days) count exactly: the
/// whole burst, then one request per emission interval, with no rounding in either direction.
async fn monthly_meters(s: &dyn Store, k: &str) {
    const MONTH: u64 = 30 * 86_400 * S;
    for (limit, interval_us) in [(1_000_000u64, 2_592_000u64), (1_000_000_000, 2_592)] {
        for alg in [Algorithm::TokenBucket, Algorithm::Gcra] {
            let key = format!("{k}:{}:{limit}", alg.name());
            let r = rule(alg, limit, Duration::from_micros(MONTH));
            // Inside a tick, so the arithmetic's tick rounding shows if it is wrong.
            let t = T0 + 11 * S + 123_456;
            let o = one(s, &key, r, limit - 1, t).await;
            assert!(o.admitted && o.remaining == 1, "{alg:?} {limit}: {o:?}");
            assert!(one(s, &key, r, 1, t).await.admitted);
            let o = one(s, &key, r, 1, t).await;
            assert!(!o.admitted && o.remaining == 0, "{alg:?} {limit}: {o:?}");
            let tick = r.meter_tick_us().unwrap();
            let next = (t / tick) * tick + interval_us.div_ceil(tick) * tick;
            assert_eq!(o.retry_after, Some(Duration::from_micros(next - t)));
            assert_eq!(
                o.reset_after,
                Duration::from_micros((t / tick) * tick + MONTH - t)
            );
            assert!(!one(s, &key, r, 1, next - 1).await.admitted);
            assert!(one(s, &key, r, 1, next).await.admitted, "{alg:?} {limit}");
            // A day later exactly the tokens of the ticks since the burst are back, less the
            // one taken at `next` (with one-second ticks, the burst's own tick counts whole).
            let day = next + 86_400 * S;
            let ticks = (day / tick - t / tick) as u128;
            let refilled = (ticks * limit as u128 / (MONTH / tick) as u128) as u64 - 1;
            assert!(refilled >= 86_400 * S / interval_us, "{refilled}");
            let o = one(s, &key, r, refilled + 1, day).await;
            assert!(!o.admitted, "{alg:?} {limit}: {o:?}");
            let o = one(s, &key, r, refilled, day).await;
            assert!(o.admitted, "{alg:?} {limit}: {o:?}");
        }
    }
}

async fn all_or_nothing(s: &dyn Store, ns: &str) {
    for alg in ALL {
        let a = format!("{ns}:{}:a", alg.name());
        let b = format!("{ns}:{}:b", alg.name());
        let big = rule(alg, 5, Duration::from_secs(10));
        let small = rule(Algorithm::FixedWindow, 1, Duration::from_secs(10));
        let hits = [
            Hit {
                key: &a,
                rule: big,
                cost: 1,
                shadow: false,
            },
            Hit {
                key: &b,
                rule: small,
                cost: 1,
                shadow: false,
            },
        ];
        let o = s.hit(&hits, at(T0)).await.unwrap();
        assert!(admitted(&o, &hits));
        assert_eq!((o[0].remaining, o[1].remaining), (4, 0));
        for _ in 0..3 {
            let o = s.hit(&hits, at(T0)).await.unwrap();
            assert!(!admitted(&o, &hits), "{alg:?}");
            assert!(o[0].admitted && !o[1].admitted);
            assert_eq!(
                o[0].remaining, 4,
                "{alg:?}: a rejected request reports the other counter as stored"
            );
        }
        assert_eq!(
            one(s, &a, big, 0, T0).await.remaining,
            4,
            "{alg:?}: rejected requests ate none of `a`"
        );
        // The same counter twice in one request: the second sees the first.
        let c = format!("{ns}:{}:dup", alg.name());
        let one_per = rule(alg, 1, Duration::from_secs(10));
        let dup = [Hit {
            key: &c,
            rule: one_per,
            cost: 1,
            shadow: false,
        }; 2];
        let o = s.hit(&dup, at(T0)).await.unwrap();
        assert!(o[0].admitted && !o[1].admitted, "{alg:?}: {o:?}");
        assert_eq!(
            one(s, &c, one_per, 0, T0).await.remaining,
            1,
            "{alg:?}: nothing counted"
        );
        // Two rules on one key are two counters.
        let r2 = rule(alg, 1, Duration::from_secs(20));
        let both = [
            Hit {
                key: &c,
                rule: one_per,
                cost: 1,
                shadow: false,
            },
            Hit {
                key: &c,
                rule: r2,
                cost: 1,
                shadow: false,
            },
        ];
        assert!(admitted(&s.hit(&both, at(T0)).await.unwrap(), &both));
    }
}

async fn shadow_and_costs(s: &dyn Store, ns: &str) {
    for alg in ALL {
        let k = format!("{ns}:{}", alg.name());
        let sk = format!("{ns}:{}:shadow", alg.name());
        let r = rule(alg, 3, Duration::from_secs(10));
        let shadowed = rule(alg, 1, Duration::from_secs(10));
        let hits = |cost| {
            [
                Hit {
                    key: &k,
                    rule: r,
                    cost,
                    shadow: false,
                },
                Hit {
                    key: &sk,
                    rule: shadowed,
                    cost: 1,
                    shadow: true,
                },
            ]
        };
        let h = hits(2);
        let o = s.hit(&h, at(T0)).await.unwrap();
        assert!(admitted(&o, &h) && o[1].admitted);
        let h = hits(1);
        let o = s.hit(&h, at(T0)).await.unwrap();
        assert!(
            admitted(&o, &h),
            "{alg:?}: a shadow hit over its limit never blocks"
        );
        assert!(
            !o[1].admitted && o[1].retry_after.is_some(),
            "{alg:?}: but it is reported"
        );
        assert_eq!(one(s, &sk, shadowed, 0, T0).await.remaining, 0);
        let o = one(s, &k, r, 1, T0).await;
        assert!(!o.admitted, "{alg:?}: cost 2 + 1 used the limit of 3");
        let o = one(s, &k, r, 0, T0).await;
        assert!(
            o.admitted && o.remaining == 0,
            "{alg:?}: cost 0 checks without counting: {o:?}"
        );
        let fresh = format!("{k}:fresh");
        let o = one(s, &fresh, r, 4, T0).await;
        assert!(!o.admitted, "{alg:?}: a cost above the limit never fits");
        assert_eq!(o.retry_after, Some(Duration::from_secs(10)));
        assert_eq!(
            one(s, &fresh, r, 3, T0).await.remaining,
            0,
            "{alg:?}: and counted nothing"
        );
    }
}

/// Replicas hammer one counter at one instant: the admitted total is exactly the limit, and
/// requests rejected by the shared limit ate none of each client's own limit.
pub(crate) async fn contention(replicas: &[Arc<dyn Store>], ns: &str) {
    const LIMIT: u64 = 50;
    const OWN: u64 = 10;
    const TASKS: usize = 8;
    const ATTEMPTS: usize = 30;
    for alg in ALL {
        let shared_key: Arc<str> = format!("{ns}:{}:shared", alg.name()).into();
        let shared = rule(alg, LIMIT, Duration::from_secs(60));
        let own = rule(Algorithm::FixedWindow, OWN, Duration::from_secs(60));
        let mut tasks = Vec::new();
        for (r, store) in replicas.iter().enumerate() {
            for t in 0..TASKS {
                let store = store.clone();
                let shared_key = shared_key.clone();
                let own_key = format!("{ns}:{}:own:{r}:{t}", alg.name());
                tasks.push(tokio::spawn(async move {
                    let mut n = 0;
                    for _ in 0..ATTEMPTS {
                        let hits = [
                            Hit {
                                key: &shared_key,
                                rule: shared,
                                cost: 1,
                                shadow: false,
                            },
                            Hit {
                                key: &own_key,
                                rule: own,
                                cost: 1,
                                shadow: false,
                            },
                        ];
                        let o = store
                            .hit(&hits, at(T0))
                            .await
                            .expect("store call under load");
                        n += u64::from(admitted(&o, &hits));
                    }
                    let check = [Hit {
                        key: &own_key,
                        rule: own,
                        cost: 0,
                        shadow: false,
                    }];
                    let left = store.hit(&check, at(T0)).await.unwrap()[0].remaining;
                    (n, left)
                }));
            }
        }
        let mut total = 0;
        for t in tasks {
            let (n, left) = t.await.unwrap();
            assert!(n <= OWN);
            assert_eq!(
                left,
                OWN - n,
                "{alg:?}: only admitted requests counted against the client's own limit"
            );
            total += n;
        }
        assert_eq!(
            total,
            LIMIT,
            "{alg:?}: {} replicas admitted {total} against a limit of {LIMIT}",
            replicas.len()
        );
    }
}

/// Replicas share a moving clock; the admitted hits satisfy each algorithm's guarantee over
/// every interval, and the limit is actually reached (the bound is not met by starving).
pub(crate) async fn moving_clock(replicas: &[Arc<dyn Store>], ns: &str) {
    const LIMIT: u64 = 20;
    let w = S;
    for alg in ALL {
        let key: Arc<str> = format!("{ns}:{}:clock", alg.name()).into();
        let r = rule(alg, LIMIT, Duration::from_micros(w));
        let clock = Arc::new(AtomicU64::new(T0));
        let mut tasks = Vec::new();
        for store in replicas {
            for _ in 0..4 {
                let (store, key, clock) = (store.clone(), key.clone(), clock.clone());
                tasks.push(tokio::spawn(async move {
                    let mut admitted_at = Vec::new();
                    for _ in 0..150 {
                        let now = clock.fetch_add(7_919, Ordering::Relaxed);
                        let hits = [Hit {
                            key: &key,
                            rule: r,
                            cost: 1,
                            shadow: false,
                        }];
                        if store.hit(&hits, at(now)).await.expect("store call")[0].admitted {
                            admitted_at.push(now);
                        }
                    }
                    admitted_at
                }));
            }
        }
        let mut times = Vec::new();
        for t in tasks {
            times.extend(t.await.unwrap());
        }
        times.sort_unstable();
        let span = clock.load(Ordering::Relaxed) - T0;
        match alg {
            Algorithm::FixedWindow => {
                let mut per_window = BTreeMap::new();
                for t in &times {
                    *per_window.entry(t / w).or_insert(0u64) += 1;
                }
                assert!(
                    per_window.values().all(|&n| n <= LIMIT),
                    "fixed: {per_window:?}"
                );
            }
            Algorithm::SlidingWindow => {
                for (i, &end) in times.iter().enumerate() {
                    let n = times[..=i]
                        .iter()
                        .rev()
                        .take_while(|&&s| s + w > end)
                        .count() as u64;
                    assert!(
                        n <= LIMIT,
                        "sliding: {n} admitted in the second ending at {end}"
                    );
                }
            }
            Algorithm::TokenBucket | Algorithm::Gcra => {
                for i in 0..times.len() {
                    for j in i..times.len() {
                        let n = (j - i + 1) as u64;
                        let bound = LIMIT + (times[j] - times[i]) * LIMIT / w;
                        assert!(
                            n <= bound,
                            "{alg:?}: {n} admitted in [{}, {}]",
                            times[i],
                            times[j]
                        );
                    }
                }
            }
        }
        // Not starved: at least 85% of N per W over the span (sliding windows give ~91%).
        let floor = (span / w) * LIMIT * 85 / 100;
        assert!(
            times.len() as u64 >= floor,
            "{alg:?}: only {} admitted over {span} µs",
            times.len()
        );
    }
}

/// Calendar quotas through the engine, with an injected clock: a UTC month ends on the 1st at
/// midnight, a Berlin day across the spring clock change lasts 23 hours, and the denial's
/// `retry_after` / `reset_after` are the exact time to the reset.
pub(crate) async fn calendar_quotas(store: Arc<dyn Store>, ns: &str) {
    use crate::descriptor::Descriptor;
    use crate::engine::{Code, Engine, EngineOptions};
    use crate::limits::Limits;
    use tollgate_common::clock::ManualClock;

    let yaml = format!(
        "domain: {ns}
descriptors:
  - key: plan
    value: monthly
    rate_limit: {{unit: month, requests_per_unit: 3, calendar: true}}
  - key: plan
    value: daily
    rate_limit: {{unit: day, requests_per_unit: 2, calendar: true, time_zone: Europe/Berlin}}
"
    );
    let utc = |y, mo, d, h, mi, s| {
        use chrono::TimeZone;
        let t = chrono::Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap();
        at(t.timestamp_micros() as u64)
    };
    let clock = Arc::new(ManualClock::new(utc(2027, 1, 31, 23, 59, 58)));
    let engine = Engine::new(
        Limits::parse(&yaml, Algorithm::SlidingWindow).unwrap(),
        store,
        clock.clone(),
        EngineOptions::default(),
    );
    let call = |plan: &'static str| {
        let engine = &engine;
        async move {
            let d = [Descriptor::new([("plan", plan)])];
            let mut dec = engine.should_rate_limit(ns, &d, 0).await.unwrap();
            dec.statuses.remove(0)
        }
    };
    for left in [2, 1, 0] {
        let s = call("monthly").await;
        assert_eq!((s.code, s.remaining), (Code::Ok, left));
        assert_eq!(s.reset_after, Duration::from_secs(2));
    }
    let s = call("monthly").await;
    assert_eq!(s.code, Code::OverLimit);
    assert_eq!(
        s.retry_after,
        Some(Duration::from_secs(2)),
        "until February 1st"
    );
    clock.set(utc(2027, 1, 31, 23, 59, 59) + Duration::from_micros(999_999));
    assert_eq!(call("monthly").await.code, Code::OverLimit);
    clock.set(utc(2027, 2, 1, 0, 0, 0));
    let s = call("monthly").await;
    assert_eq!((s.code, s.remaining), (Code::Ok, 2), "a new month");
    assert_eq!(s.reset_after, Duration::from_secs(28 * 86_400));

    // Berlin, Sunday 28 March 2027 (clocks go from 02:00 to 03:00): the day starts at 23:00
    // UTC on Saturday and ends at 22:00 UTC on Sunday.
    clock.set(utc(2027, 3, 27, 23, 30, 0));
    assert_eq!(call("daily").await.code, Code::Ok);
    assert_eq!(call("daily").await.code, Code::Ok);
    let s = call("daily").await;
    assert_eq!(s.code, Code::OverLimit);
    assert_eq!(s.retry_after, Some(Duration::from_secs(22 * 3600 + 1800)));
    clock.set(utc(2027, 3, 28, 21, 59, 59));
    assert_eq!(call("daily").await.code, Code::OverLimit);
    clock.set(utc(2027, 3, 28, 22, 0, 0));
    let s = call("daily").await;
    assert_eq!((s.code, s.remaining), (Code::Ok, 1), "Monday in Berlin");
    assert_eq!(s.reset_after, Duration::from_secs(24 * 3600));
}

async fn whole_suite(single: &dyn Store, replicas: &[Arc<dyn Store>], test: &str) {
    boundaries(single, &ns(test)).await;
    contention(replicas, &ns(test)).await;
    moving_clock(replicas, &ns(test)).await;
    // Last: its clock runs months past T0, and the memory store sweeps what has expired by the
    // latest time it was shown.
    calendar_quotas(replicas[0].clone(), &ns(test)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(&MemoryOptions::default()));
    // In memory the replicas are one process' tasks sharing the store. The boundaries run on
    // a store of their own: their clock runs a day past T0 (monthly meters), and a memory store
    // sweeps what has expired by the latest time it was shown, which the replicas' T0 counters
    // would then be.
    let single = MemoryStore::new(&MemoryOptions::default());
    let replicas = vec![store.clone(), store.clone(), store.clone()];
    whole_suite(&single, &replicas, "memory").await;
}

/// Test configs allow more than the production default of 50 ms: the machine running the
/// suite also runs the three replicas' load and Redis.
fn test_config(mut cfg: RedisConfig) -> RedisConfig {
    cfg.timeout = Duration::from_secs(5);
    cfg
}

async fn replicas_of(cfg: &RedisConfig) -> Vec<Arc<dyn Store>> {
    let mut out = Vec::new();
    for _ in 0..3 {
        // `build` as the service does: with the local over-limit cache in front.
        out.push(
            build(&StoreConfig::Redis(cfg.clone()))
                .await
                .expect("build redis store"),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_standalone_conforms() {
    let server = RedisServer::start();
    let cfg = test_config(RedisConfig::standalone(server.url()));
    let single = RedisStore::connect(&cfg).await.unwrap();
    whole_suite(&single, &replicas_of(&cfg).await, "standalone").await;
    agrees_with_the_reference(&single, &format!("{{{}}}", ns("standalone"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_conforms() {
    let topology = tollgate_common::testing::RedisSentinel::start();
    let cfg = test_config(RedisConfig::sentinel(
        topology.master_name(),
        topology.sentinel_urls(),
    ));
    let single = RedisStore::connect(&cfg).await.unwrap();
    whole_suite(&single, &replicas_of(&cfg).await, "sentinel").await;
    assert!(
        topology.master().command_calls("evalsha") > 0,
        "the scripts ran on the master the sentinels name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_conforms() {
    let cluster = RedisCluster::start(3);
    let cfg = test_config(RedisConfig::cluster(cluster.urls()));
    let single = RedisStore::connect(&cfg).await.unwrap();
    whole_suite(&single, &replicas_of(&cfg).await, "cluster").await;
    agrees_with_the_reference(&single, &format!("{{{}}}", ns("cluster"))).await;
    // The keys really were spread over the nodes (so cross-slot requests were exercised).
    let busy = cluster
        .nodes()
        .iter()
        .filter(|n| n.command_calls("evalsha") > 0)
        .count();
    assert_eq!(busy, 3, "every node ran scripts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_one_command_per_call_and_noscript_reload() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&test_config(RedisConfig::standalone(server.url())))
        .await
        .unwrap();
    let ns = ns("commands");
    let keys: Vec<String> = (0..5).map(|i| format!("{ns}:{i}")).collect();
    let hits: Vec<Hit<'_>> = keys
        .iter()
        .zip(ALL.iter().cycle())
        .map(|(k, &alg)| Hit {
            key: k,
            rule: rule(alg, 100, Duration::from_secs(60)),
            cost: 1,
            shadow: false,
        })
        .collect();
    // The first call loads the script (EVALSHA answered NOSCRIPT, then EVAL).
    store.hit(&hits, at(T0)).await.unwrap();
    assert_eq!(server.command_calls("eval"), 1);
    server.cli(&["CONFIG", "RESETSTAT"]).unwrap();
    for _ in 0..10 {
        store.hit(&hits, at(T0)).await.unwrap();
    }
    assert_eq!(
        server.command_calls("evalsha"),
        10,
        "one script call per store call of 5 hits"
    );
    assert_eq!(server.command_calls("eval"), 0);
    // A flushed script cache costs one EVAL, once.
    server.cli(&["SCRIPT", "FLUSH"]).unwrap();
    let o = store.hit(&hits, at(T0)).await.unwrap();
    assert_eq!(o[0].remaining, 100 - 12);
    store.hit(&hits, at(T0)).await.unwrap();
    assert_eq!(server.command_calls("eval"), 1);
    // Keys expire once they can no longer matter.
    let ttl: i64 = server
        .cli(&[
            "PTTL",
            &format!("tollgate:{{{}}}:v2:1:60000000:100", keys[1]),
        ])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000 + 1, "pttl {ttl}");
}

/// A key expires once it can no longer matter, and a busy key's hits leave its expiry alone: a
/// window's counter keeps the expiry its window's first hit set (its end), and a meter carries
/// its own in the value, a window past its state, renewed only once less than half a window of
/// that margin is left. A meter value without one (as the previous script wrote them) is read
/// as it is, and renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_expire_once_they_no_longer_matter() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&test_config(RedisConfig::standalone(server.url())))
        .await
        .unwrap();
    let ns = ns("expiry");
    let minute = Duration::from_secs(60);
    let stored = |name: &str| {
        let keys = server.cli(&["KEYS", &format!("*{ns}:{name}*")]).unwrap();
        let keys: Vec<&str> = keys.lines().collect();
        assert_eq!(keys.len(), 1, "{name}: {keys:?}");
        keys[0].to_string()
    };
    let pttl = |key: &str| -> i64 { server.cli(&["PTTL", key]).unwrap().trim().parse().unwrap() };
    // A meter's stored expiry (µs, the writer's clock), or "none".
    let expiry = |key: &str| {
        let lua = "local v = redis.call('GET', KEYS[1]) if #v < 25 then return 'none' end \
                   return string.format('%.0f', struct.unpack('<d', v, 18))";
        server
            .cli(&["EVAL", lua, "1", key])
            .unwrap()
            .trim()
            .to_string()
    };

    // fixed_window: the second hit, half a window later, counts in place.
    let fixed = rule(Algorithm::FixedWindow, 100, minute);
    let f = format!("{ns}:fixed");
    assert_eq!(one(&store, &f, fixed, 1, T0).await.remaining, 99);
    let fkey = stored("fixed");
    assert!((59_000..=60_000).contains(&pttl(&fkey)), "{}", pttl(&fkey));
    assert_eq!(one(&store, &f, fixed, 1, T0 + 30 * S).await.remaining, 98);
    assert!(
        pttl(&fkey) > 45_000,
        "the window's end, not 30 s on: {}",
        pttl(&fkey)
    );

    // token_bucket, 10 a minute: one token back every 6 s.
    let bucket = rule(Algorithm::TokenBucket, 10, minute);
    let (m, control) = (format!("{ns}:meter"), format!("{ns}:control"));
    let o = one(&store, &m, bucket, 1, T0).await;
    one(&store, &control, bucket, 1, T0).await;
    let mkey = stored("meter");
    let e1 = T0 + o.reset_after.as_micros() as u64 + 60 * S;
    assert_eq!(expiry(&mkey), e1.to_string());
    assert!((65_000..=66_000).contains(&pttl(&mkey)), "{}", pttl(&mkey));
    // A second of later hits: well within the margin, the expiry stays.
    for i in 1..=3 {
        let o = one(&store, &m, bucket, 1, T0 + i * S / 3).await;
        assert_eq!(o, one(&store, &control, bucket, 1, T0 + i * S / 3).await);
    }
    assert_eq!(
        expiry(&mkey),
        e1.to_string(),
        "unchanged by the hits in place"
    );
    // 40 s on, less than half the margin is left: renewed from this hit's state.
    let o = one(&store, &m, bucket, 1, T0 + 40 * S).await;
    assert_eq!(o, one(&store, &control, bucket, 1, T0 + 40 * S).await);
    let e2 = T0 + 40 * S + o.reset_after.as_micros() as u64 + 60 * S;
    assert_eq!(expiry(&mkey), e2.to_string());
    // Written without its expiry (17 bytes, as before): read as it is, renewed on the next hit.
    let cut = "redis.call('SET', KEYS[1], redis.call('GET', KEYS[1]):sub(1, 17), 'PX', 10000)";
    server.cli(&["EVAL", cut, "1", &mkey]).unwrap();
    assert_eq!(expiry(&mkey), "none");
    let o = one(&store, &m, bucket, 1, T0 + 41 * S).await;
    assert_eq!(o, one(&store, &control, bucket, 1, T0 + 41 * S).await);
    assert_eq!(
        expiry(&mkey),
        (T0 + 41 * S + o.reset_after.as_micros() as u64 + 60 * S).to_string()
    );
    assert!(pttl(&mkey) > 60_000, "{}", pttl(&mkey));
}

/// Calls queued on the connection together go to Redis as one merged script call, and each is
/// answered exactly as if it had been a call of its own: in order, each seeing what the ones
/// before it counted, all-or-nothing per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_merges_queued_calls_and_answers_each_as_its_own() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&test_config(RedisConfig::standalone(server.url())))
        .await
        .unwrap();
    let ns = ns("merged");
    let shared = format!("{ns}:shared");
    let own: Vec<String> = (0..64).map(|i| format!("{ns}:own:{i}")).collect();
    let sliding = rule(Algorithm::SlidingWindow, 20, Duration::from_secs(60));
    let fixed = rule(Algorithm::FixedWindow, 100, Duration::from_secs(60));
    let requests: Vec<[Hit<'_>; 2]> = own
        .iter()
        .map(|k| {
            [
                Hit {
                    key: &shared,
                    rule: sliding,
                    cost: 1,
                    shadow: false,
                },
                Hit {
                    key: k,
                    rule: fixed,
                    cost: 1,
                    shadow: false,
                },
            ]
        })
        .collect();
    // Loads the script, so that the calls below are EVALSHAs.
    one(&store, &format!("{ns}:warm"), fixed, 1, T0).await;
    let before = server.command_calls("evalsha");
    let answers = futures::future::join_all(requests.iter().map(|h| store.hit(h, at(T0)))).await;
    let scripts = server.command_calls("evalsha") - before;
    assert!(
        scripts < 32,
        "64 calls queued together took {scripts} script calls"
    );

    let mut seen = Vec::new();
    for (i, a) in answers.into_iter().enumerate() {
        let a = a.expect("store call");
        let counted = admitted(&a, &requests[i]);
        if counted {
            seen.push(a[0].remaining);
        }
        // The request's own counter moved only if the whole request was admitted.
        let after = one(&store, &own[i], fixed, 0, T0).await;
        assert_eq!(
            after.remaining,
            if counted { 99 } else { 100 },
            "request {i}"
        );
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..20).collect::<Vec<u64>>(),
        "each admitted call saw the ones before it"
    );
}

/// Calls made on a thread that holds the driver's wake-ups wait for the release and then go to
/// Redis together, as one merged script call: what an Envoy worker does with the requests of
/// one turn of its event loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_held_wakes_send_the_calls_of_a_turn_as_one_script_call() {
    use crate::store::redis::{hold_wakes, holds_wakes, release_wakes};
    let server = RedisServer::start();
    let store = RedisStore::connect(&test_config(RedisConfig::standalone(server.url())))
        .await
        .unwrap();
    let ns = ns("held");
    let keys: Vec<String> = (0..8).map(|i| format!("{ns}:{i}")).collect();
    let fixed = rule(Algorithm::FixedWindow, 10, Duration::from_secs(60));
    // Loads the script, so that the calls below are EVALSHAs.
    one(&store, &format!("{ns}:warm"), fixed, 1, T0).await;
    let before = server.command_calls("evalsha");

    hold_wakes();
    let store_ref = &store;
    let mut calls: Vec<_> = keys
        .iter()
        .map(|key| {
            Box::pin(async move {
                one(store_ref, key, fixed, 1, T0).await;
            })
        })
        .collect();
    // Each call queues itself on its first poll, one after the other, as a worker's requests do.
    for call in &mut calls {
        assert!(futures::poll!(call.as_mut()).is_pending());
    }
    assert!(holds_wakes());
    release_wakes();
    assert!(!holds_wakes());
    futures::future::join_all(calls).await;

    assert_eq!(server.command_calls("evalsha") - before, 1);
    for key in &keys {
        assert_eq!(one(&store, key, fixed, 0, T0).await.remaining, 9, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_fast_then_reconnects() {
    let mut server = RedisServer::start();
    let port = server.port();
    let mut cfg = RedisConfig::standalone(server.url());
    cfg.timeout = Duration::from_millis(200);
    let store = RedisStore::connect(&cfg).await.unwrap();
    let r = rule(Algorithm::FixedWindow, 10, Duration::from_secs(60));
    let hits = [Hit {
        key: "k",
        rule: r,
        cost: 1,
        shadow: false,
    }];
    store.hit(&hits, at(T0)).await.unwrap();
    server.kill();
    let started = std::time::Instant::now();
    let e = store.hit(&hits, at(T0)).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Unavailable(_) | StoreError::Timeout),
        "{e:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "failed within the timeout"
    );
    // A new Redis on the same port: the store reconnects by itself.
    let _again = RedisServer::start_on(port);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if store.hit(&hits, at(T0)).await.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids of the store's connections, from `CLIENT LIST` (they are named on connect).
fn store_connections(server: &RedisServer) -> Vec<String> {
    let list = server.cli(&["CLIENT", "LIST"]).unwrap_or_default();
    list.lines()
        .filter(|l| l.contains(" name=tollgate-ratelimit "))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_late_replies_never_reach_the_next_caller_and_never_count() {
    let server = RedisServer::start();
    let mut cfg = RedisConfig::standalone(server.url());
    cfg.timeout = Duration::from_millis(100);
    let store = RedisStore::connect(&cfg).await.unwrap();
    let ns = ns("late");
    let (k1, k2) = (format!("{ns}:1"), format!("{ns}:2"));
    let small = rule(Algorithm::FixedWindow, 10, Duration::from_secs(60));
    let large = rule(Algorithm::FixedWindow, 100, Duration::from_secs(60));
    let first = [Hit {
        key: &k2,
        rule: large,
        cost: 1,
        shadow: false,
    }];
    assert_eq!(
        super::outage_tests::until_answered(&store, &first).await[0].remaining,
        99
    );
    let scripts_before = server.command_calls("evalsha");
    // Writes (scripts included) wait while reads such as INFO still answer. The pause is
    // shorter than the stall limit (1 s here), so the connection is kept.
    server.cli(&["CLIENT", "PAUSE", "600", "WRITE"]).unwrap();
    let hit = |key, rule, cost| {
        [Hit {
            key,
            rule,
            cost,
            shadow: false,
        }]
    };
    for (key, r) in [(&k1, small), (&k2, large)] {
        let e = store.hit(&hit(key, r, 1), at(T0)).await.unwrap_err();
        assert!(matches!(e, StoreError::Timeout), "{e:?}");
    }
    // Once Redis answers again, both late replies are read and dropped, and a check (cost 0)
    // gets its own answer. Both late scripts ran after their callers had given up, so they
    // counted nothing: k2 reads 99 (98 had the timed-out call counted; 9 or 10 were it
    // handed k1's late reply).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let o = loop {
        match store.hit(&hit(&k2, large, 0), at(T0)).await {
            Ok(o) => break o,
            Err(StoreError::Timeout | StoreError::CircuitOpen)
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(o[0].remaining, 99);
    assert_eq!(one(&store, &k1, small, 0, T0).await.remaining, 10);
    assert!(
        server.command_calls("evalsha") >= scripts_before + 2,
        "the late scripts did run, after the pause"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_connection_is_replaced() {
    let server = RedisServer::start();
    let mut cfg = RedisConfig::standalone(server.url());
    cfg.timeout = Duration::from_millis(100);
    let store = RedisStore::connect(&cfg).await.unwrap();
    let r = rule(Algorithm::FixedWindow, 10, Duration::from_secs(60));
    let key = ns("hung");
    assert_eq!(one(&store, &key, r, 1, T0).await.remaining, 9);
    let before = store_connections(&server);
    assert_eq!(before.len(), 1, "one pipelined connection");
    server.cli(&["CLIENT", "PAUSE", "3000", "WRITE"]).unwrap();
    let hits = [Hit {
        key: &key,
        rule: r,
        cost: 1,
        shadow: false,
    }];
    let e = store.hit(&hits, at(T0)).await.unwrap_err();
    assert!(matches!(e, StoreError::Timeout), "{e:?}");
    // No reply for the stall limit (1 s): the store gives the connection up and opens another.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while store_connections(&server) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the hung connection was kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.cli(&["CLIENT", "UNPAUSE"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.hit(&hits, at(T0)).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_in_flight_bound_fails_fast() {
    let server = RedisServer::start();
    let mut cfg = RedisConfig::standalone(server.url());
    cfg.timeout = Duration::from_millis(100);
    cfg.max_in_flight = 1;
    let store = RedisStore::connect(&cfg).await.unwrap();
    let key = ns("in-flight");
    let r = rule(Algorithm::FixedWindow, 10, Duration::from_secs(60));
    let hits = [Hit {
        key: &key,
        rule: r,
        cost: 1,
        shadow: false,
    }];
    // The first call connects and loads the script: on a busy machine that may take longer
    // than this test's short timeout.
    super::outage_tests::until_answered(&store, &hits).await;
    server.freeze();
    // The first call is written, then given up: its command stays in flight (Redis has not
    // answered it), and so does its permit. The next call fails fast instead of queueing
    // behind it.
    let e = store.hit(&hits, at(T0)).await.unwrap_err();
    assert!(matches!(e, StoreError::Timeout), "{e:?}");
    let e = store.hit(&hits, at(T0)).await.unwrap_err();
    assert!(matches!(e, StoreError::Overloaded), "{e:?}");
    server.thaw();
    // The late reply frees the permit; the late command counted nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let o = loop {
        match store.hit(&hits, at(T0)).await {
            Ok(o) => break o,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(
                    matches!(e, StoreError::Overloaded | StoreError::Timeout),
                    "{e:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(o[0].remaining, 8, "only the two answered calls counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_auth_db_and_tls() {
    let r = rule(Algorithm::FixedWindow, 10, Duration::from_secs(60));
    let hits = [Hit {
        key: "k",
        rule: r,
        cost: 1,
        shadow: false,
    }];
    // A password from the config (not the URL) and database 3.
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let mut cfg = test_config(RedisConfig::standalone(format!("{}/3", server.url())));
    cfg.password = Some(Secret::new("s3cret"));
    let store = RedisStore::connect(&cfg).await.unwrap();
    assert_eq!(store.hit(&hits, at(T0)).await.unwrap()[0].remaining, 9);
    let keys = server
        .cli(&["-a", "s3cret", "--no-auth-warning", "-n", "3", "DBSIZE"])
        .unwrap();
    assert_eq!(keys.trim(), "1", "the counter lives in db 3");
    cfg.password = Some(Secret::new("wrong"));
    cfg.timeout = Duration::from_millis(300);
    let e = RedisStore::connect(&cfg)
        .await
        .unwrap()
        .hit(&hits, at(T0))
        .await
        .unwrap_err();
    // A refused login fails the call with Redis' reason (and never the password).
    match e {
        StoreError::Unavailable(why) => {
            assert!(why.contains("refused AUTH"), "{why}");
            assert!(!why.contains("wrong"), "{why}");
        }
        e => panic!("{e:?}"),
    }

    // rediss:// with a private CA.
    let server = RedisServer::start_tls();
    let mut cfg = test_config(RedisConfig::standalone(format!(
        "rediss://127.0.0.1:{}",
        server.tls_port().unwrap()
    )));
    cfg.ca_file = server.ca_file();
    let store = RedisStore::connect(&cfg).await.unwrap();
    assert_eq!(store.hit(&hits, at(T0)).await.unwrap()[0].remaining, 9);
    // Without the CA the server is not trusted.
    cfg.ca_file = None;
    cfg.timeout = Duration::from_millis(300);
    assert!(
        RedisStore::connect(&cfg)
            .await
            .unwrap()
            .hit(&hits, at(T0))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_start_is_not_fatal() {
    // Nothing listens on a port just released; the service still starts, and calls fail fast.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let r = rule(Algorithm::SlidingWindow, 10, Duration::from_secs(1));
    let hits = [Hit {
        key: "k",
        rule: r,
        cost: 1,
        shadow: false,
    }];
    for mut cfg in [
        RedisConfig::standalone(url.clone()),
        RedisConfig::cluster([url.clone()]),
    ] {
        cfg.timeout = Duration::from_millis(200);
        let store = build(&StoreConfig::Redis(cfg))
            .await
            .expect("no connection at build time");
        let started = std::time::Instant::now();
        let e = store.hit(&hits, at(T0)).await.unwrap_err();
        assert!(
            matches!(e, StoreError::Unavailable(_) | StoreError::Timeout),
            "{e:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "failed within the call's deadline"
        );
    }
}

/// This process' CPU time (user + system), from `/proc/self/stat`.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at state = field 3.
    let rest = stat.rsplit(") ").next().unwrap_or("");
    let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state field; in ticks of 10 ms.
    Duration::from_millis((f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) * 10)
}

fn redis_cpu(server: &RedisServer) -> Duration {
    let info = server.cli(&["INFO", "cpu"]).unwrap_or_default();
    let secs: f64 = info
        .lines()
        .filter(|l| l.starts_with("used_cpu_user:") || l.starts_with("used_cpu_sys:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum();
    Duration::from_secs_f64(secs)
}

/// `cargo test --release -p tollgate-ratelimit redis_cost_per_call -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn redis_cost_per_call() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&test_config(RedisConfig::standalone(server.url())))
        .await
        .unwrap();
    let store = Arc::new(store);
    for (n_hits, alg) in [
        (1, Algorithm::SlidingWindow),
        (1, Algorithm::FixedWindow),
        (1, Algorithm::Gcra),
        (3, Algorithm::SlidingWindow),
    ] {
        let keys: Vec<String> = (0..1000)
            .map(|i| format!("domain|remote_address=10.0.{}.{}", i / 256, i % 256))
            .collect();
        let rule = rule(alg, 1_000_000, Duration::from_secs(60));
        let calls = 20_000u64;
        let (cpu0, rcpu0, wall0, cmd0) = (
            process_cpu(),
            redis_cpu(&server),
            std::time::Instant::now(),
            server.command_calls("evalsha"),
        );
        // 16 concurrent callers, as a service under load would be.
        let mut tasks = Vec::new();
        for t in 0..16u64 {
            let (store, keys) = (store.clone(), keys.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..calls / 16 {
                    let j = ((t * 7919 + i) % 1000) as usize;
                    let hits: Vec<Hit<'_>> = (0..n_hits)
                        .map(|h| Hit {
                            key: &keys[(j + h * 331) % 1000],
                            rule,
                            cost: 1,
                            shadow: false,
                        })
                        .collect();
                    store.hit(&hits, at(T0 + i)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let n = calls as u32;
        println!(
            "{alg:?} x{n_hits}: client CPU {:?}/call, Redis CPU {:?}/call, wall {:?}/call, {} EVALSHA/call",
            (process_cpu() - cpu0) / n,
            (redis_cpu(&server) - rcpu0) / n,
            wall0.elapsed() / n,
            (server.command_calls("evalsha") - cmd0) as f64 / calls as f64,
        );
    }
}

/// Calls made on dedicated server threads (`tollgate_common::local_runtime`) go through each
/// thread's own connection, driven on that thread, and count one limit exactly together with
/// the calls through the shared connection; dropping the store closes every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dedicated_threads_have_their_own_connections_and_count_exactly() {
    const LIMIT: u64 = 40;
    const THREADS: usize = 2;
    const CALLS: usize = 30;
    let server = RedisServer::start();
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect(&test_config(RedisConfig::standalone(server.url())))
            .await
            .unwrap(),
    );
    let key: Arc<str> = ns("dedicated").into();
    let limit = rule(Algorithm::SlidingWindow, LIMIT, Duration::from_secs(60));
    let clients = || {
        let list = server.cli(&["CLIENT", "LIST"]).unwrap();
        list.lines()
            .filter(|l| l.contains("name=tollgate-ratelimit"))
            .count()
    };
    let calls = move |store: Arc<dyn Store>, key: Arc<str>| async move {
        let mut n = 0;
        for _ in 0..CALLS {
            let hits = [Hit {
                key: &key,
                rule: limit,
                cost: 1,
                shadow: false,
            }];
            let o = store.hit(&hits, at(T0)).await.expect("store call");
            n += u64::from(admitted(&o, &hits));
        }
        n
    };
    let (done_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut threads = Vec::new();
    for _ in 0..THREADS {
        let (store, key, mut done) = (store.clone(), key.clone(), done_tx.subscribe());
        let (counted_tx, counted_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            tollgate_common::local_runtime::mark_dedicated();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let _ = counted_tx.send(calls(store, key).await);
                // Keeps the runtime (and the connection's driver) running until the end.
                let _ = done.recv().await;
            });
        });
        threads.push((thread, counted_rx));
    }
    let mut total = calls(store.clone(), key.clone()).await;
    for (_, counted) in &mut threads {
        total += counted.await.unwrap();
    }
    assert_eq!(total, LIMIT, "one limit over every connection");
    assert_eq!(
        clients(),
        1 + THREADS,
        "the shared connection and one per dedicated thread"
    );
    drop(store);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while clients() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "connections left open after the store was dropped: {}",
            clients()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = done_tx.send(());
    for (thread, _) in threads {
        thread.join().unwrap();
    }
}
