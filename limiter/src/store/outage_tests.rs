//! The Redis store under real failure: a frozen Redis (SIGSTOP) or a paused one
//! (`CLIENT PAUSE`) never counts a call whose caller gave up, and a circuit breaker makes a
//! hung Redis cost a call nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use tollgate_common::testing::{RedisCluster, RedisSentinel, RedisServer};

use super::redis::{RedisConfig, RedisStore};
use super::{Hit, Store, StoreError};
use crate::algorithm::{Algorithm, Rule};

const T0: u64 = 1_800_000_000 * 1_000_000;
const ALL: [Algorithm; 4] = [
    Algorithm::SlidingWindow,
    Algorithm::FixedWindow,
    Algorithm::TokenBucket,
    Algorithm::Gcra,
];

fn at(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// One hit per algorithm, each on its own key, limit 100 a minute.
fn hits_of<'a>(keys: &'a [String], cost: u64) -> Vec<Hit<'a>> {
    keys.iter()
        .zip(ALL)
        .map(|(key, alg)| Hit {
            key,
            rule: Rule::new(alg, 100, Duration::from_secs(60)),
            cost,
            shadow: false,
        })
        .collect()
}

fn keys(test: &str) -> Vec<String> {
    (0..ALL.len())
        .map(|i| format!("{test}-{}:{i}", std::process::id()))
        .collect()
}

/// Calls until the store answers (the first call connects and loads the script, which on a
/// busy machine may take longer than a test's short timeout).
pub(super) async fn until_answered(store: &dyn Store, hits: &[Hit<'_>]) -> Vec<super::Outcome> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.hit(hits, at(T0)).await {
            Ok(o) => return o,
            Err(e) => {
                assert!(Instant::now() < deadline, "the store never answered: {e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The remaining quota of every key, polled until the store answers again.
async fn remaining_once_back(store: &dyn Store, keys: &[String]) -> Vec<u64> {
    let check = hits_of(keys, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.hit(&check, at(T0)).await {
            Ok(o) => return o.iter().map(|o| o.remaining).collect(),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the store never came back: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// After a thawed Redis ran the abandoned merged call (`scripts`: the script calls before the
/// freeze), only the one call answered before the freeze has counted.
async fn only_the_answered_call_counted(
    server: &RedisServer,
    scripts: u64,
    store: &dyn Store,
    keys: &[String],
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.command_calls("evalsha") == scripts {
        assert!(
            Instant::now() < deadline,
            "Redis never ran the abandoned calls after it thawed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        remaining_once_back(store, keys).await,
        [99; 4],
        "only the call answered before the freeze counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_abandoned_while_redis_is_frozen_never_count() {
    let server = RedisServer::start();
    let mut cfg = RedisConfig::standalone(server.url());
    cfg.timeout = Duration::from_millis(50);
    // No call fails fast: each reaches Redis' socket in a merged call, or waits unsent for
    // that call's reply until its caller gives up.
    cfg.breaker.after_failures = 0;
    let store = RedisStore::connect(&cfg).await.unwrap();
    let keys = keys("frozen");
    until_answered(&store, &hits_of(&keys, 1)).await;
    let scripts = server.command_calls("evalsha");

    server.freeze();
    let hits = hits_of(&keys, 1);
    let calls = join_all((0..16).map(|_| store.hit(&hits, at(T0)))).await;
    for r in &calls {
        assert!(matches!(r, Err(StoreError::Timeout)), "{r:?}");
    }
    server.thaw();
    // The first merged call of the abandoned ones was written before its callers gave up (the
    // others waited for its reply and were dropped unsent): Redis runs it once it thaws, before
    // anything else, and it must change nothing.
    only_the_answered_call_counted(&server, scripts, &store, &keys).await;
}

/// The same on a dedicated server thread (its own connection and coarse deadlines,
/// `tollgate_common::local_runtime`): the calls fail with `Timeout` once the store's timeout has
/// passed, not before and not much after, and count nothing.
#[test]
fn on_a_dedicated_thread_calls_to_a_frozen_redis_time_out_in_time_and_never_count() {
    const TIMEOUT: Duration = Duration::from_millis(50);
    let server = RedisServer::start();
    let mut cfg = RedisConfig::standalone(server.url());
    cfg.timeout = TIMEOUT;
    cfg.breaker.after_failures = 0;
    let shared_rt = tokio::runtime::Runtime::new().unwrap();
    let store = shared_rt.block_on(RedisStore::connect(&cfg)).unwrap();
    let keys = keys("frozen-dedicated");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            tollgate_common::local_runtime::mark_dedicated();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                until_answered(&store, &hits_of(&keys, 1)).await;
                let scripts = server.command_calls("evalsha");
                server.freeze();
                let hits = hits_of(&keys, 1);
                let started = Instant::now();
                let calls = join_all((0..16).map(|_| store.hit(&hits, at(T0)))).await;
                let took = started.elapsed();
                for r in &calls {
                    assert!(matches!(r, Err(StoreError::Timeout)), "{r:?}");
                }
                assert!(took >= TIMEOUT, "gave up after {took:?}");
                let late = tollgate_common::local_runtime::GRAIN + Duration::from_millis(150);
                assert!(took < TIMEOUT + late, "gave up only after {took:?}");
                server.thaw();
                only_the_answered_call_counted(&server, scripts, &store, &keys).await;
            });
        });
    });
    drop(store);
    drop(shared_rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_trips_the_breaker_and_calls_fail_fast_until_it_answers() {
    let server = RedisServer::start();
    let mut cfg = RedisConfig::standalone(server.url());
    cfg.timeout = Duration::from_millis(50);
    cfg.breaker.after_failures = 3;
    cfg.breaker.probe_interval = Duration::from_millis(100);
    let store = RedisStore::connect(&cfg).await.unwrap();
    let keys = keys("breaker");
    let hits = hits_of(&keys, 1);
    until_answered(&store, &hits).await;
    assert_eq!(store.breaker_states(), ["closed"]);

    server.freeze();
    for _ in 0..3 {
        let e = store.hit(&hits, at(T0)).await.unwrap_err();
        assert!(matches!(e, StoreError::Timeout), "{e:?}");
    }
    assert_eq!(store.breaker_states(), ["open"]);
    // Open: 1,000 calls do not wait for Redis at all (each waiting would take 50 ms). The
    // probes let through meanwhile (one per interval) still time out.
    let started = Instant::now();
    let mut fast = 0;
    for _ in 0..1000 {
        match store.hit(&hits, at(T0)).await {
            Err(StoreError::CircuitOpen) => fast += 1,
            Err(StoreError::Timeout) => {}
            other => panic!("{other:?}"),
        }
    }
    let probes = 1000 - fast;
    assert!(
        started.elapsed() < Duration::from_millis(50) * (probes + 2),
        "{fast} calls failed fast, {probes} probed, in {:?}",
        started.elapsed()
    );
    assert!(fast >= 990, "{fast}");

    server.thaw();
    // A probe is answered: the breaker closes and counting resumes, exactly.
    assert_eq!(remaining_once_back(&store, &keys).await, [99; 4]);
    assert_eq!(store.breaker_states(), ["closed"]);
    // A call that timed out would have counted nothing, so retrying keeps it exact.
    let o = until_answered(&store, &hits).await;
    assert!(o.iter().all(|o| o.admitted && o.remaining == 98), "{o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_breaker_opens_for_the_frozen_master_only() {
    let cluster = RedisCluster::start(3);
    let mut cfg = RedisConfig::cluster(cluster.urls());
    cfg.timeout = Duration::from_millis(100);
    cfg.breaker.after_failures = 2;
    cfg.breaker.probe_interval = Duration::from_millis(100);
    let store = RedisStore::connect(&cfg).await.unwrap();
    // Keys on every master (distinct hash tags spread over the slots).
    let keys: Vec<String> = (0..24)
        .map(|i| format!("{{cl-{}-{i}}}", std::process::id()))
        .collect();
    let rule = Rule::new(Algorithm::FixedWindow, 100, Duration::from_secs(60));
    let one = |key: &str, cost| {
        [Hit {
            key: &keys[keys.iter().position(|k| k == key).unwrap()],
            rule,
            cost,
            shadow: false,
        }]
    };
    for k in &keys {
        until_answered(&store, &one(k, 1)).await;
    }
    let states = store.breaker_states();
    assert_eq!(states, ["closed"; 3], "{states:?}");

    cluster.nodes()[0].freeze();
    let frozen_port = cluster.nodes()[0].port();
    // Calls to the frozen master time out, then fail fast; the others keep counting.
    let mut failed = Vec::new();
    for _ in 0..3 {
        for k in &keys {
            if let Err(e) = store.hit(&one(k, 1), at(T0)).await {
                failed.push((k.clone(), e));
            }
        }
    }
    assert!(
        failed
            .iter()
            .any(|(_, e)| matches!(e, StoreError::CircuitOpen)),
        "{failed:?}"
    );
    let mut states = store.breaker_states();
    states.sort_unstable();
    assert_eq!(states, ["closed", "closed", "open"], "port {frozen_port}");
    let failing: std::collections::BTreeSet<_> = failed.iter().map(|(k, _)| k.clone()).collect();
    cluster.nodes()[0].thaw();

    // Back: every key counted exactly its answered calls (1 + 3 for the others, 1 for the
    // frozen master's).
    let deadline = Instant::now() + Duration::from_secs(10);
    for k in &keys {
        let o = loop {
            match store.hit(&one(k, 0), at(T0)).await {
                Ok(o) => break o,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{e:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let want = if failing.contains(k) { 99 } else { 96 };
        assert_eq!(o[0].remaining, want, "{k}");
    }
    assert_eq!(store.breaker_states(), ["closed"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_follows_a_failover_under_load() {
    let topology = RedisSentinel::start();
    let mut cfg = RedisConfig::sentinel(topology.master_name(), topology.sentinel_urls());
    cfg.timeout = Duration::from_millis(500);
    let store = Arc::new(RedisStore::connect(&cfg).await.unwrap());
    let key = format!("failover-{}", std::process::id());
    let limit = 1_000_000;
    let rule = Rule::new(Algorithm::FixedWindow, limit, Duration::from_secs(3600));
    let old_master = topology.master().port();
    until_answered(
        &*store,
        &[Hit {
            key: &key,
            rule,
            cost: 0,
            shadow: false,
        }],
    )
    .await;

    // Load: four callers, one hit each at a time, until the failover is over.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // The first and the last failure.
    let failures = Arc::new(parking_lot::Mutex::new(None::<(Instant, Instant)>));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (store, key, stop) = (store.clone(), key.clone(), stop.clone());
            let (ok, failed, failures) = (ok.clone(), failed.clone(), failures.clone());
            tokio::spawn(async move {
                let mut last = u64::MAX;
                while !stop.load(Ordering::Relaxed) {
                    let hits = [Hit {
                        key: &key,
                        rule,
                        cost: 1,
                        shadow: false,
                    }];
                    match store.hit(&hits, at(T0)).await {
                        Ok(o) => {
                            assert!(o[0].admitted, "{o:?}");
                            last = last.min(o[0].remaining);
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let now = Instant::now();
                            {
                                let mut f = failures.lock();
                                *f = Some(f.map_or((now, now), |(first, _)| (first, now)));
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
                last
            })
        })
        .collect();
    // Some load before, then the failover (a blocking helper), then some load after.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ok.load(Ordering::Relaxed) < 200 {
        assert!(Instant::now() < deadline, "no load");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failover_started = Instant::now();
    let new_master = {
        let topology = &topology;
        tokio::task::block_in_place(|| topology.failover())
    };
    let failover_done = Instant::now();
    assert_ne!(new_master, old_master);
    let after = ok.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ok.load(Ordering::Relaxed) < after + 200 {
        assert!(Instant::now() < deadline, "no load after the failover");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));

    // Bounded failures: only while the master moved (the store is back on the new master
    // within a sentinel poll and a reconnect backoff of the announcement).
    if let Some((first, last)) = *failures.lock() {
        assert!(
            first >= failover_started,
            "a call failed before the failover"
        );
        assert!(
            last <= failover_done + Duration::from_secs(2),
            "calls still failed {:?} after the failover",
            last - failover_done
        );
    }
    // No wrong answer: every answered hit was counted once, on the master that answered it,
    // and nothing else was (no call failed by the store counted, no write went to a master
    // being replaced).
    let check = [Hit {
        key: &key,
        rule,
        cost: 0,
        shadow: false,
    }];
    let remaining = until_answered(&*store, &check).await[0].remaining;
    eprintln!("failover under load: {ok} answered, {failed} failed, {remaining} left");
    assert_eq!(remaining, limit - ok, "after {ok} answered hits");
    // Counting is exact on the new master.
    let hits = [Hit {
        key: &key,
        rule,
        cost: 10,
        shadow: false,
    }];
    let o = until_answered(&*store, &hits).await;
    assert_eq!(o[0].remaining, remaining - 10);
    assert!(
        topology.master().command_calls("evalsha") > 0,
        "the new master runs the scripts"
    );
    assert_eq!(topology.master().port(), new_master);
}
