//! The Redis key store on Redis Sentinel and Redis Cluster, with real processes: a failover
//! under load, and keys spread over a Cluster's nodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tollgate_common::testing::{RedisCluster, RedisSentinel};

use super::tests::{new_key, with_store};
use super::*;

/// What a Check may answer for a key of each kind; anything else is a wrong answer.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Valid,
    Revoked,
    Unknown,
}

fn judge(expect: Expect, got: &Result<Arc<Identity>, ApiKeyError>) -> Result<bool, String> {
    match (expect, got) {
        (_, Err(ApiKeyError::Store(_))) => Ok(false),
        (Expect::Valid, Ok(_))
        | (Expect::Revoked, Err(ApiKeyError::Revoked))
        | (Expect::Unknown, Err(ApiKeyError::Unknown)) => Ok(true),
        (e, g) => Err(format!("expected {e:?}, got {g:?}")),
    }
}

/// A replica whose cache holds keys only briefly, so that Checks keep reading the store.
fn short_cache(store: RedisStoreConfig) -> ApiKeysConfig {
    ApiKeysConfig {
        cache: KeyCacheConfig {
            capacity: 1000,
            ttl: Duration::from_millis(20),
            negative_ttl: Duration::from_millis(20),
        },
        ..with_store(store)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stay_right_through_a_sentinel_failover_under_load() {
    let sentinel = RedisSentinel::start();
    let store = || RedisStoreConfig::sentinel(sentinel.master_name(), sentinel.sentinel_urls());
    let checker = ApiKeys::open(&short_cache(store())).await.unwrap();
    let admin = ApiKeys::open(&with_store(store())).await.unwrap();
    let mut cases: Vec<(Expect, String)> = Vec::new();
    for i in 0..10 {
        let (info, key) = admin.create(new_key(&format!("k{i}"))).await.unwrap();
        if i % 3 == 0 {
            admin.revoke(&info.id).await.unwrap();
            cases.push((Expect::Revoked, key.expose().to_string()));
        } else {
            cases.push((Expect::Valid, key.expose().to_string()));
        }
    }
    cases.push((
        Expect::Unknown,
        format::generate_key(&format::generate_id()),
    ));
    // Everything written reached the replica before the failover (no write may be lost).
    let master = sentinel.master().port();
    tollgate_common::testing::poll("replication", Duration::from_secs(10), || {
        let offset = |p: u16| {
            let node = sentinel.nodes().iter().find(|n| n.port() == p).unwrap();
            node.cli(&["INFO", "replication"]).ok().and_then(|i| {
                i.lines()
                    .find_map(|l| l.strip_prefix("master_repl_offset:"))
                    .map(|v| v.trim().to_string())
            })
        };
        offset(master) == offset(sentinel.replica().port())
    });

    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let (checker, cases, done) = (checker.clone(), cases.clone(), done.clone());
        tokio::spawn(async move {
            let (mut checks, mut unavailable) = (0u64, Vec::new());
            let start = Instant::now();
            while !done.load(Ordering::Relaxed) {
                for (expect, key) in &cases {
                    // A Check answered from memory never waits: let the connections' tasks run.
                    tokio::task::yield_now().await;
                    let got = checker.verify(key).await;
                    checks += 1;
                    match judge(*expect, &got) {
                        Ok(true) => {}
                        Ok(false) => unavailable.push(start.elapsed()),
                        Err(wrong) => return Err(wrong),
                    }
                }
            }
            Ok((checks, unavailable))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    // The helper polls with a blocking sleep; the load keeps running on the other worker.
    let port = tokio::task::block_in_place(|| sentinel.failover());
    let failover_took = started.elapsed();
    assert_ne!(port, master);

    // Writes go to the new master, and the checker hears of them there.
    let created = Instant::now();
    let (_, fresh) = loop {
        match admin.create(new_key("after")).await {
            Ok(k) => break k,
            Err(_) if created.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no write after the failover: {e}"),
        }
    };
    let seen = Instant::now();
    while checker.verify(fresh.expose()).await.is_err() {
        assert!(
            seen.elapsed() < Duration::from_secs(3),
            "a key created after the failover is not verified"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    done.store(true, Ordering::Relaxed);
    let (checks, unavailable) = load.await.unwrap().unwrap_or_else(|w| panic!("{w}"));
    assert!(checks > 100, "only {checks} checks ran");
    // At most a short burst of "unavailable" around the failover, none after it.
    if let (Some(first), Some(last)) = (unavailable.first(), unavailable.last()) {
        assert!(
            *last - *first < Duration::from_secs(3),
            "503s for {:?} ({} of {checks}); the failover took {failover_took:?}",
            *last - *first,
            unavailable.len()
        );
    }
    for (expect, key) in &cases {
        assert_eq!(
            judge(*expect, &checker.verify(key).await),
            Ok(true),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_key_store_spreads_keys_and_revocations_reach_other_replicas() {
    let cluster = RedisCluster::start(3);
    let store = || RedisStoreConfig::cluster(cluster.urls());
    let a = ApiKeys::open(&with_store(store())).await.unwrap();
    let b = ApiKeys::open(&with_store(store())).await.unwrap();
    let mut made = Vec::new();
    for i in 0..24 {
        made.push(b.create(new_key(&format!("k{i}"))).await.unwrap());
    }
    // The records live on more than one node.
    let holding = cluster
        .nodes()
        .iter()
        .filter(|n| {
            n.cli(&["DBSIZE"])
                .is_ok_and(|s| s.trim().parse::<u64>().unwrap_or(0) > 0)
        })
        .count();
    assert!(holding >= 2, "keys on {holding} node(s)");
    for (info, key) in &made {
        assert_eq!(
            a.verify(key.expose()).await.unwrap().key_id.as_deref(),
            Some(info.id.as_str())
        );
    }
    // A verified (and cached) them all; a revocation through B reaches A within a second.
    let (victim, key) = &made[7];
    b.revoke(&victim.id).await.unwrap();
    let start = Instant::now();
    while !matches!(a.verify(key.expose()).await, Err(ApiKeyError::Revoked)) {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "replica A still accepts a key revoked on B"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Rotation, paging and last-use work across slots too.
    let (_, rotated) = b.rotate(&made[3].0.id, Duration::ZERO).await.unwrap();
    let start = Instant::now();
    while a.verify(rotated.expose()).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the new secret is refused on A"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = a.list(cursor.as_deref(), 5).await.unwrap();
        seen.extend(page.keys.iter().map(|k| k.id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let mut want: Vec<String> = made.iter().map(|(i, _)| i.id.clone()).collect();
    want.sort();
    assert_eq!(seen, want);
    a.flush_last_used().await.unwrap();
    assert!(b.get(&made[0].0.id).await.unwrap().last_used_at.is_some());
}
