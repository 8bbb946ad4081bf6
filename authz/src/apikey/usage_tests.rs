//! Usage per key on every store (the embedded file; Redis standalone, Sentinel and Cluster, with
//! two replicas): exact counts under concurrent calls and flushes, totals per plan and tenant,
//! a write that timed out after Redis applied it, a store outage, retention.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tollgate_common::clock::ManualClock;
use tollgate_common::testing::{RedisCluster, RedisSentinel, RedisServer};

use super::tests::{eventually, new_key, redis_config, with_store};
use super::usage::Counts;
use super::*;

/// Calls made per key by each replica in [`counts_are_exact`].
const CALLS: u64 = 300;

fn embedded(dir: &std::path::Path) -> ApiKeysConfig {
    ApiKeysConfig {
        store: KeyStoreConfig::Embedded(EmbeddedStoreConfig {
            path: dir.join("keys.redb"),
        }),
        ..ApiKeysConfig::default()
    }
}

fn counts(allowed: u64, denied: u64, rate_limited: u64) -> Counts {
    Counts {
        allowed,
        denied,
        rate_limited,
    }
}

async fn totals(keys: &ApiKeys, id: &str) -> Counts {
    let today = keys.today();
    keys.usage(id, today.minus(1), today).await.unwrap().totals
}

/// Checks through every replica at once, each also flushing while the calls come in: every
/// replica's calls are counted once, per key, plan and tenant, whichever replica reads them.
async fn counts_are_exact(replicas: &[ApiKeys]) {
    let admin = &replicas[0];
    let (gold, gold_key) = admin.create(new_key("gold")).await.unwrap();
    let (bare, bare_key) = admin
        .create(NewKey {
            plan: None,
            tenant: None,
            ..new_key("bare")
        })
        .await
        .unwrap();
    let (revoked, revoked_key) = admin.create(new_key("revoked")).await.unwrap();
    admin.revoke(&revoked.id).await.unwrap();

    let mut tasks = Vec::new();
    for keys in replicas {
        for (secret, outcome) in [
            (gold_key.expose().to_string(), UsageOutcome::Allowed),
            (gold_key.expose().to_string(), UsageOutcome::RateLimited),
            (bare_key.expose().to_string(), UsageOutcome::Denied),
        ] {
            let keys = keys.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..CALLS {
                    let who = keys.verify(&secret).await.unwrap();
                    keys.record_usage(&who, outcome);
                }
            }));
        }
        let (checker, secret) = (keys.clone(), revoked_key.expose().to_string());
        tasks.push(tokio::spawn(async move {
            for _ in 0..CALLS {
                // Counted by verify itself.
                let refused = checker.verify(&secret).await;
                assert!(matches!(refused, Err(ApiKeyError::Revoked)), "{refused:?}");
            }
        }));
        let flusher = keys.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                flusher.flush_usage().await.unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for keys in replicas {
        keys.flush_usage().await.unwrap();
    }
    let n = CALLS * replicas.len() as u64;
    for keys in replicas {
        assert_eq!(totals(keys, &gold.id).await, counts(n, 0, n));
        assert_eq!(totals(keys, &bare.id).await, counts(0, n, 0));
        assert_eq!(totals(keys, &revoked.id).await, counts(0, n, 0));
    }
    let today = admin.today();
    let usage = admin.usage(&gold.id, today, today).await.unwrap();
    assert_eq!(usage.days.len(), 1);
    assert_eq!(usage.days[0].date, today);

    let plans = admin
        .usage_totals(UsageGroup::Plan, today, today)
        .await
        .unwrap();
    let by: Vec<(Option<&str>, Counts)> = plans
        .groups
        .iter()
        .map(|g| (g.name.as_deref(), g.counts))
        .collect();
    assert_eq!(
        by,
        [(None, counts(0, n, 0)), (Some("gold"), counts(n, n, n))]
    );
    let tenants = admin
        .usage_totals(UsageGroup::Tenant, today, today)
        .await
        .unwrap();
    assert_eq!(tenants.groups.len(), 2);
    assert_eq!(tenants.groups[1].name.as_deref(), Some("acme"));
    assert_eq!(tenants.groups[1].counts, counts(n, n, n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    counts_are_exact(&[ApiKeys::open(&embedded(dir.path())).await.unwrap()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_across_two_replicas_on_redis() {
    let redis = RedisServer::start();
    let a = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    let b = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    counts_are_exact(&[a, b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_across_two_replicas_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    let store = || with_store(RedisStoreConfig::cluster(cluster.urls()));
    let a = ApiKeys::open(&store()).await.unwrap();
    let b = ApiKeys::open(&store()).await.unwrap();
    counts_are_exact(&[a, b]).await;
    // The counters are spread over the nodes: no node holds them all.
    let holding = cluster
        .nodes()
        .iter()
        .filter(|n| {
            n.cli(&["--scan", "--pattern", "test:keys:usage*"])
                .is_ok_and(|o| !o.trim().is_empty())
        })
        .count();
    assert!(holding >= 2, "usage counters on {holding} node(s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_are_exact_across_two_replicas_on_sentinel() {
    let sentinel = RedisSentinel::start();
    let store = || {
        with_store(RedisStoreConfig::sentinel(
            sentinel.master_name(),
            sentinel.sentinel_urls(),
        ))
    };
    let a = ApiKeys::open(&store()).await.unwrap();
    let b = ApiKeys::open(&store()).await.unwrap();
    counts_are_exact(&[a, b]).await;
}

/// A write Redis applied but whose answer came too late: the retry of that batch does not
/// count it again, and calls made meanwhile are counted once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_write_that_redis_applied_is_not_counted_twice() {
    let redis = RedisServer::start();
    let keys = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    let (info, secret) = keys.create(new_key("k")).await.unwrap();
    let who = keys.verify(secret.expose()).await.unwrap();
    // A first write loads the script, so the one that times out needs no second round trip.
    keys.record_usage(&who, UsageOutcome::Allowed);
    keys.flush_usage().await.unwrap();
    for _ in 0..5 {
        keys.record_usage(&who, UsageOutcome::Allowed);
    }
    redis.freeze();
    assert!(
        keys.flush_usage().await.is_err(),
        "a frozen Redis times the write out"
    );
    keys.record_usage(&who, UsageOutcome::Denied);
    redis.thaw();
    // Redis now runs the write it had received: the batch is stored although the flush failed.
    let hash = format!("test:keys:usage:{}:{}", info.id, keys.today());
    tollgate_common::testing::poll("the late write", Duration::from_secs(5), || {
        redis
            .cli(&["HGET", &hash, "allowed"])
            .is_ok_and(|v| v.trim() == "6")
    });
    let flushed = eventually(Duration::from_secs(5), || async {
        keys.flush_usage().await.is_ok()
    });
    assert!(flushed.await.is_some(), "a flush after the thaw");
    assert_eq!(totals(&keys, &info.id).await, counts(6, 1, 0));
    let fresh = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    assert_eq!(totals(&fresh, &info.id).await, counts(6, 1, 0));
}

/// With Redis down, counts wait in memory (and show in this replica's answers); they are
/// written once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_a_store_outage() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let keys = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    let (info, secret) = keys.create(new_key("k")).await.unwrap();
    let who = keys.verify(secret.expose()).await.unwrap();
    keys.record_usage(&who, UsageOutcome::Allowed);
    redis.kill();
    keys.record_usage(&who, UsageOutcome::Allowed);
    assert!(keys.flush_usage().await.is_err());
    keys.record_usage(&who, UsageOutcome::Allowed);
    let redis = RedisServer::start_on(port);
    let flushed = eventually(Duration::from_secs(10), || async {
        keys.flush_usage().await.is_ok()
    });
    assert!(flushed.await.is_some(), "a flush once Redis is back");
    // The restarted Redis is empty (the key too): it holds what the failed flush held and what
    // came after, all three calls.
    let today = keys.today();
    let stored = keys.inner.store.key_usage(&info.id, today, today).await;
    assert_eq!(stored.unwrap(), [(today, counts(3, 0, 0))]);
    drop(redis);
}

#[tokio::test]
async fn days_past_retention_are_deleted_and_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(20_000 * 86_400),
    ));
    let cfg = ApiKeysConfig {
        usage: UsageConfig {
            retention_days: 3,
            ..UsageConfig::default()
        },
        ..embedded(dir.path())
    };
    let keys = ApiKeys::open_with_clock(&cfg, clock.clone()).await.unwrap();
    let (info, secret) = keys.create(new_key("k")).await.unwrap();
    let first = keys.today();
    for _ in 0..4 {
        let who = keys.verify(secret.expose()).await.unwrap();
        keys.record_usage(&who, UsageOutcome::Allowed);
        keys.flush_usage().await.unwrap();
        clock.advance(Duration::from_secs(86_400));
    }
    // Today is first + 4: kept are first + 2 ..= first + 4.
    let today = keys.today();
    assert_eq!(today, first.plus(4));
    let usage = keys.usage(&info.id, first, today).await.unwrap();
    let days: Vec<Day> = usage.days.iter().map(|d| d.date).collect();
    assert_eq!(days, [first.plus(2), first.plus(3)]);
    keys.flush_usage().await.unwrap();
    let stored = keys
        .inner
        .store
        .key_usage(&info.id, first, today)
        .await
        .unwrap();
    assert_eq!(stored.len(), 2, "expired days are deleted: {stored:?}");
    let plans = keys
        .inner
        .store
        .group_usage(UsageGroup::Plan, first, today)
        .await
        .unwrap();
    assert_eq!(plans.len(), 2, "{plans:?}");
}

#[tokio::test]
async fn redis_counters_expire_with_their_retention() {
    let redis = RedisServer::start();
    let cfg = ApiKeysConfig {
        usage: UsageConfig {
            retention_days: 7,
            ..UsageConfig::default()
        },
        ..redis_config(&redis)
    };
    let keys = ApiKeys::open(&cfg).await.unwrap();
    let (info, secret) = keys.create(new_key("k")).await.unwrap();
    let who = keys.verify(secret.expose()).await.unwrap();
    keys.record_usage(&who, UsageOutcome::Allowed);
    keys.flush_usage().await.unwrap();
    let today = keys.today();
    let want = today.plus(7).start();
    let want = want
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for hash in [
        format!("test:keys:usage:{}:{today}", info.id),
        format!("test:keys:usage_by_plan:{today}"),
        format!("test:keys:usage_by_tenant:{today}"),
    ] {
        let at = redis.cli(&["EXPIRETIME", &hash]).unwrap();
        assert_eq!(at.trim(), want.to_string(), "{hash}");
    }
}

#[tokio::test]
async fn usage_of_unknown_keys_and_with_counting_off() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ApiKeys::open(&embedded(dir.path())).await.unwrap();
    let today = keys.today();
    let unknown = format::generate_id();
    assert!(matches!(
        keys.usage(&unknown, today, today).await,
        Err(ManageError::NotFound)
    ));
    drop(keys);
    let cfg = ApiKeysConfig {
        usage: UsageConfig {
            enabled: false,
            ..UsageConfig::default()
        },
        ..embedded(dir.path())
    };
    let keys = ApiKeys::open(&cfg).await.unwrap();
    let (info, secret) = keys.create(new_key("k")).await.unwrap();
    let who = keys.verify(secret.expose()).await.unwrap();
    keys.record_usage(&who, UsageOutcome::Allowed);
    keys.flush_usage().await.unwrap();
    assert!(matches!(
        keys.usage(&info.id, today, today).await,
        Err(ManageError::UsageOff)
    ));
    assert!(matches!(
        keys.usage_totals(UsageGroup::Plan, today, today).await,
        Err(ManageError::UsageOff)
    ));
}

/// Not a test of speed (that is `bench/`): the Check path's usage count writes nothing.
#[tokio::test]
async fn recording_touches_no_store() {
    let redis = RedisServer::start();
    // No background flush during the test: only the one it makes.
    let cfg = ApiKeysConfig {
        last_used_flush: Duration::from_secs(3600),
        usage: UsageConfig {
            flush_interval: Duration::from_secs(3600),
            ..UsageConfig::default()
        },
        ..redis_config(&redis)
    };
    let keys = ApiKeys::open(&cfg).await.unwrap();
    let (_, secret) = keys.create(new_key("k")).await.unwrap();
    let who = Arc::new(keys.verify(secret.expose()).await.unwrap());
    // Loads the script: later writes are one EVALSHA each.
    keys.record_usage(&who, UsageOutcome::Allowed);
    keys.flush_usage().await.unwrap();
    let before = redis.command_calls("evalsha") + redis.command_calls("eval");
    for _ in 0..1000 {
        keys.record_usage(&who, UsageOutcome::Allowed);
    }
    let after = redis.command_calls("evalsha") + redis.command_calls("eval");
    assert_eq!(before, after);
    keys.flush_usage().await.unwrap();
    let flushed = redis.command_calls("evalsha") + redis.command_calls("eval");
    assert_eq!(
        flushed - after,
        3,
        "one script per hash: the key's day, its plan's, its tenant's"
    );
}
