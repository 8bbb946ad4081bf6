//! The key service through a key store outage, against a real `redis-server`: frozen with
//! SIGSTOP (a hung Redis), or cut off for one replica only by taking its ACL permissions away
//! (a partition: the other replica still reaches Redis and changes keys meanwhile).

use std::time::{Duration, Instant};

use tollgate_common::testing::RedisServer;

use super::tests::{new_key, redis_config, with_store};
use super::*;

/// Polls `f` every 5 ms until it is true; the time it took, or `None` after `within`.
async fn within<F, Fut>(within: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Verifies `key` until this replica holds it in its cache (a key's own creation message may
/// evict the first read).
async fn cache(keys: &ApiKeys, key: &Secret) {
    let cached = within(Duration::from_secs(2), || async {
        let before = keys.cached_entries();
        keys.verify(key.expose()).await.is_ok() && before >= 1 && keys.cached_entries() >= 1
    })
    .await;
    assert!(cached.is_some(), "the key was never cached");
}

fn is_store_error<T>(r: &Result<T, ApiKeyError>) -> bool {
    matches!(r, Err(ApiKeyError::Store(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_store_keeps_known_keys_working_and_refuses_the_rest_fast() {
    let redis = RedisServer::start();
    let keys = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    let (_, known) = keys.create(new_key("known")).await.unwrap();
    let (_, unseen) = keys.create(new_key("unseen")).await.unwrap();
    cache(&keys, &known).await;

    redis.freeze();
    // The feed notices within about a second; from then on the known key is accepted from
    // memory, and a key this replica never read gets the store's error.
    let stale = within(Duration::from_secs(5), || async {
        keys.verify(known.expose()).await.is_ok() && keys.stale_decisions() > 0
    })
    .await;
    assert!(stale.is_some(), "the known key was not served from memory");
    assert!(is_store_error(&keys.verify(unseen.expose()).await));
    // Once the store counts as down, Checks stop waiting for it: far under its timeout.
    let tripped = within(Duration::from_secs(5), || async {
        let t = Instant::now();
        is_store_error(&keys.verify(unseen.expose()).await)
            && t.elapsed() < Duration::from_millis(50)
    })
    .await;
    assert!(
        tripped.is_some(),
        "unknown keys kept waiting for a frozen store"
    );
    for _ in 0..20 {
        assert!(keys.verify(known.expose()).await.is_ok());
    }

    redis.thaw();
    let back = within(Duration::from_secs(2), || async {
        keys.verify(unseen.expose()).await.is_ok()
    })
    .await;
    assert!(
        back.is_some(),
        "not recovered within 2s of the store's return"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stale_window_is_bounded_and_zero_fails_closed() {
    let redis = RedisServer::start();
    let short = ApiKeysConfig {
        serve_stale: Duration::from_millis(1500),
        ..redis_config(&redis)
    };
    let closed = ApiKeysConfig {
        serve_stale: Duration::ZERO,
        ..redis_config(&redis)
    };
    let a = ApiKeys::open(&short).await.unwrap();
    let b = ApiKeys::open(&closed).await.unwrap();
    let (_, key) = a.create(new_key("k")).await.unwrap();
    cache(&a, &key).await;
    cache(&b, &key).await;

    redis.freeze();
    let frozen = Instant::now();
    // Fail-closed: refused as soon as the feed is known lost, never accepted from memory.
    let refused = within(Duration::from_secs(5), || async {
        is_store_error(&b.verify(key.expose()).await)
    })
    .await;
    assert!(refused.is_some());
    assert_eq!(b.stale_decisions(), 0);
    // The short window: accepted from memory, then refused once the window has passed.
    let served = within(Duration::from_secs(5), || async {
        a.verify(key.expose()).await.is_ok() && a.stale_decisions() > 0
    })
    .await;
    assert!(served.is_some());
    let ended = within(Duration::from_secs(5), || async {
        is_store_error(&a.verify(key.expose()).await)
    })
    .await;
    assert!(ended.is_some(), "still accepted long after serve_stale");
    assert!(
        frozen.elapsed() >= Duration::from_millis(1500),
        "refused before the window was over"
    );
    redis.thaw();
}

/// Redis user `user` with every permission (`on`) or none (`off`: new connections refused,
/// commands of existing ones denied, its subscriptions cut).
fn acl(redis: &RedisServer, user: &str, on: bool) {
    let rules: &[&str] = if on {
        &["on", ">replica-a-password", "~*", "&*", "+@all"]
    } else {
        &["resetchannels", "-@all"]
    };
    let mut args = vec!["ACL", "SETUSER", user];
    args.extend(rules);
    let out = redis.cli(&args).unwrap();
    assert!(out.contains("OK"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_while_a_replica_was_cut_off_applies_as_soon_as_its_feed_is_back() {
    let redis = RedisServer::start();
    acl(&redis, "replica-a", true);
    let url = format!(
        "redis://replica-a:replica-a-password@127.0.0.1:{}",
        redis.port()
    );
    let a = ApiKeys::open(&with_store(RedisStoreConfig::standalone(url)))
        .await
        .unwrap();
    let b = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    let (info, key) = b.create(new_key("k")).await.unwrap();
    cache(&a, &key).await;

    // Replica A is cut off from Redis; B is not, and revokes the key meanwhile.
    acl(&redis, "replica-a", false);
    let stale = within(Duration::from_secs(5), || async {
        a.verify(key.expose()).await.is_ok() && a.stale_decisions() > 0
    })
    .await;
    assert!(stale.is_some(), "A did not fall back on what it knew");
    b.revoke(&info.id).await.unwrap();
    // A missed the message: it still accepts the key from memory (within serve_stale).
    assert!(a.verify(key.expose()).await.is_ok());

    // A's link comes back. Wait for its feed without asking it anything, so that its first
    // answer can only come from its cache: a replica that kept what it knew would accept.
    acl(&redis, "replica-a", true);
    let back = Instant::now();
    let live = within(Duration::from_secs(3), || async {
        a.inner.caches.is_live()
    })
    .await;
    assert!(live.is_some(), "A's feed did not come back");
    assert!(
        matches!(a.verify(key.expose()).await, Err(ApiKeyError::Revoked)),
        "the revocation made during the outage was not applied when the feed came back"
    );
    assert!(
        back.elapsed() < Duration::from_secs(1),
        "{:?}",
        back.elapsed()
    );
}

/// Cost of a Check while the store is down (a measurement, not an assertion): a known key
/// served from memory, and a key refused at once instead of after the store's timeout.
/// `cargo test --release -p tollgate-authz --lib outage_cost -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run in release"]
async fn outage_cost() {
    let redis = RedisServer::start();
    let keys = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    let (_, known) = keys.create(new_key("known")).await.unwrap();
    let (_, unseen) = keys.create(new_key("unseen")).await.unwrap();
    cache(&keys, &known).await;
    redis.freeze();
    let down = within(Duration::from_secs(10), || async {
        keys.verify(known.expose()).await.is_ok()
            && keys.stale_decisions() > 0
            && keys.inner.outage.is_down()
    })
    .await;
    assert!(down.is_some());
    let n = 200_000u32;
    let start = Instant::now();
    for _ in 0..n {
        keys.verify(known.expose()).await.unwrap();
    }
    let stale = start.elapsed() / n;
    let start = Instant::now();
    for _ in 0..n {
        assert!(is_store_error(&keys.verify(unseen.expose()).await));
    }
    let fail_fast = start.elapsed() / n;
    println!(
        "store down: known key accepted from memory in {stale:?} per call; unknown key refused \
         in {fail_fast:?} per call on average (its probes, one per 200 ms, included)"
    );
    redis.thaw();
}
