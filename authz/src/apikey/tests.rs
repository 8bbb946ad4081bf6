//! Tests of the API key service against both real stores: the embedded redb file and a
//! `redis-server` spawned per test ("two replicas" are two `ApiKeys` on one Redis).

use std::net::TcpListener;
use std::time::{Duration, Instant, SystemTime};

use tollgate_common::clock::ManualClock;
use tollgate_common::config::{Errors, Validate};
use tollgate_common::testing::RedisServer;

use super::*;
use crate::identity::Method;

fn embedded_config(dir: &std::path::Path) -> ApiKeysConfig {
    ApiKeysConfig {
        store: KeyStoreConfig::Embedded(EmbeddedStoreConfig {
            path: dir.join("keys.redb"),
        }),
        ..ApiKeysConfig::default()
    }
}

pub(crate) fn new_key(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        owner: "team-a".into(),
        tenant: Some("acme".into()),
        scopes: vec!["read".into(), "write".into()],
        plan: Some("gold".into()),
        rate_limit: None,
        expires_at: None,
    }
}

/// Polls `f` until it returns true or `within` has passed; returns the time it took.
pub(crate) async fn eventually<F, Fut>(within: Duration, mut f: F) -> Option<Duration>
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

#[tokio::test]
async fn a_created_key_verifies_to_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ApiKeys::open(&embedded_config(dir.path())).await.unwrap();
    let (info, secret) = keys.create(new_key("ci")).await.unwrap();
    assert!(secret.expose().starts_with("tgk_"));
    assert_eq!(format::parse(secret.expose()).unwrap().id(), info.id);

    let who = keys.verify(secret.expose()).await.unwrap();
    assert_eq!(who.method, Method::ApiKey);
    assert_eq!(who.subject, "team-a");
    assert_eq!(who.key_id.as_deref(), Some(info.id.as_str()));
    assert_eq!(who.tenant.as_deref(), Some("acme"));
    assert_eq!(who.plan.as_deref(), Some("gold"));
    assert_eq!(who.scopes, ["read", "write"]);
    assert_eq!(who.expires_at, None);
}

#[tokio::test]
async fn malformed_unknown_and_wrong_secret_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ApiKeys::open(&embedded_config(dir.path())).await.unwrap();
    let (info, _) = keys.create(new_key("ci")).await.unwrap();

    assert!(matches!(keys.verify("").await, Err(ApiKeyError::Malformed)));
    assert!(matches!(
        keys.verify("tgk_nope").await,
        Err(ApiKeyError::Malformed)
    ));
    // Well-formed, checksum valid, but no such id.
    let stranger = format::generate_key(&format::generate_id());
    assert!(matches!(
        keys.verify(&stranger).await,
        Err(ApiKeyError::Unknown)
    ));
    // The right id with a secret that was never issued.
    let forged = format::generate_key(&info.id);
    assert!(matches!(
        keys.verify(&forged).await,
        Err(ApiKeyError::Unknown)
    ));
}

#[tokio::test]
async fn the_embedded_store_keeps_keys_and_last_use_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = embedded_config(dir.path());
    let (info, secret) = {
        let keys = ApiKeys::open(&cfg).await.unwrap();
        let created = keys.create(new_key("ci")).await.unwrap();
        keys.verify(created.1.expose()).await.unwrap();
        assert!(
            keys.get(&created.0.id)
                .await
                .unwrap()
                .last_used_at
                .is_some(),
            "pending use is shown"
        );
        keys.flush_last_used().await.unwrap();
        created
    };
    let keys = ApiKeys::open(&cfg).await.unwrap();
    assert_eq!(
        keys.verify(secret.expose())
            .await
            .unwrap()
            .key_id
            .as_deref(),
        Some(info.id.as_str())
    );
    let again = keys.get(&info.id).await.unwrap();
    assert_eq!(again.name, "ci");
    assert!(again.last_used_at.is_some(), "last use was written to disk");
    assert_eq!(keys.list(None, 10).await.unwrap().keys.len(), 1);
}

#[tokio::test]
async fn one_process_owns_the_embedded_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = embedded_config(dir.path());
    let first = ApiKeys::open(&cfg).await.unwrap();
    let err = ApiKeys::open(&cfg).await.unwrap_err();
    assert!(matches!(err, KeyStoreError::Open { .. }), "{err}");
    assert!(err.to_string().contains("keys.redb"));
    assert!(
        err.to_string().contains("another process holds it"),
        "{err}"
    );
    drop(first);
    ApiKeys::open(&cfg)
        .await
        .expect("reopened once the owner is gone");
}

#[tokio::test]
async fn revocation_and_metadata_changes_apply_to_cached_keys_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ApiKeys::open(&embedded_config(dir.path())).await.unwrap();
    let (info, secret) = keys.create(new_key("ci")).await.unwrap();
    keys.verify(secret.expose()).await.unwrap();
    assert!(keys.cached_entries() >= 1);

    let patch = KeyPatch {
        plan: Some(Some("silver".into())),
        tenant: Some(None),
        ..KeyPatch::default()
    };
    keys.update(&info.id, patch).await.unwrap();
    let who = keys.verify(secret.expose()).await.unwrap();
    assert_eq!(who.plan.as_deref(), Some("silver"));
    assert_eq!(who.tenant, None);

    let revoked = keys.revoke(&info.id).await.unwrap();
    assert!(revoked.revoked);
    assert!(matches!(
        keys.verify(secret.expose()).await,
        Err(ApiKeyError::Revoked)
    ));
    // Revoking twice is fine; rotating a revoked key is not.
    keys.revoke(&info.id).await.unwrap();
    assert!(matches!(
        keys.rotate(&info.id, Duration::ZERO).await,
        Err(ManageError::Revoked)
    ));
}

#[tokio::test]
async fn expiry_follows_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let keys = ApiKeys::open_with_clock(&embedded_config(dir.path()), clock.clone())
        .await
        .unwrap();
    let new = NewKey {
        expires_at: Some(clock.now() + Duration::from_secs(10)),
        ..new_key("short")
    };
    let (_, secret) = keys.create(new).await.unwrap();
    assert!(keys.verify(secret.expose()).await.is_ok());
    clock.advance(Duration::from_secs(10));
    assert!(matches!(
        keys.verify(secret.expose()).await,
        Err(ApiKeyError::Expired)
    ));
}

async fn rotation_grace_is_honoured(keys: &ApiKeys, clock: &ManualClock) {
    let (info, old) = keys.create(new_key("rotating")).await.unwrap();
    keys.verify(old.expose()).await.unwrap();
    let (rotated, new) = keys
        .rotate(&info.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(rotated.id, info.id, "rotation keeps the id");
    assert_eq!(
        rotated.previous_secret_valid_until,
        Some(clock.now() + Duration::from_secs(60))
    );
    assert_ne!(old.expose(), new.expose());

    // Within the grace period both work, and the old one says when it ends.
    let during = keys.verify(old.expose()).await.unwrap();
    assert_eq!(
        during.expires_at,
        Some(clock.now() + Duration::from_secs(60))
    );
    assert!(keys.verify(new.expose()).await.is_ok());

    clock.advance(Duration::from_secs(59));
    assert!(keys.verify(old.expose()).await.is_ok());
    clock.advance(Duration::from_secs(1));
    assert!(matches!(
        keys.verify(old.expose()).await,
        Err(ApiKeyError::Expired)
    ));
    assert!(keys.verify(new.expose()).await.is_ok());
    assert_eq!(
        keys.get(&info.id)
            .await
            .unwrap()
            .previous_secret_valid_until,
        None
    );

    // Without a grace period the previous secret stops at once.
    let (_, newest) = keys.rotate(&info.id, Duration::ZERO).await.unwrap();
    assert!(matches!(
        keys.verify(new.expose()).await,
        Err(ApiKeyError::Unknown)
    ));
    assert!(keys.verify(newest.expose()).await.is_ok());
}

#[tokio::test]
async fn rotation_grace_period_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let keys = ApiKeys::open_with_clock(&embedded_config(dir.path()), clock.clone())
        .await
        .unwrap();
    rotation_grace_is_honoured(&keys, &clock).await;
}

async fn pages_cover_every_key_once(keys: &ApiKeys) {
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(keys.create(new_key(&format!("k{i}"))).await.unwrap().0.id);
    }
    created.sort();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = keys.list(cursor.as_deref(), 2).await.unwrap();
        assert!(page.keys.len() <= 2);
        seen.extend(page.keys.into_iter().map(|k| k.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, created, "id order, no gaps, no repeats");
    assert!(matches!(
        keys.list(Some("not a cursor"), 2).await,
        Err(ManageError::Invalid(_))
    ));
}

#[tokio::test]
async fn paging_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ApiKeys::open(&embedded_config(dir.path())).await.unwrap();
    pages_cover_every_key_once(&keys).await;
}

#[tokio::test]
async fn management_rejects_bad_input_and_unknown_ids() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ApiKeys::open(&embedded_config(dir.path())).await.unwrap();
    for bad in [
        NewKey {
            name: "".into(),
            ..new_key("x")
        },
        NewKey {
            owner: "a\r\nx-tollgate-subject: admin".into(),
            ..new_key("x")
        },
        NewKey {
            scopes: vec!["has space".into()],
            ..new_key("x")
        },
        NewKey {
            plan: Some("\0".into()),
            ..new_key("x")
        },
        NewKey {
            expires_at: Some(SystemTime::now() - Duration::from_secs(1)),
            ..new_key("x")
        },
    ] {
        assert!(matches!(
            keys.create(bad).await,
            Err(ManageError::Invalid(_))
        ));
    }
    let missing = format::generate_id();
    assert!(matches!(
        keys.get(&missing).await,
        Err(ManageError::NotFound)
    ));
    assert!(matches!(
        keys.revoke(&missing).await,
        Err(ManageError::NotFound)
    ));
    assert!(matches!(
        keys.get("../../etc").await,
        Err(ManageError::NotFound)
    ));
}

#[test]
fn config_defaults_and_validation() {
    let cfg: ApiKeysConfig = serde_yaml::from_str("{}").unwrap();
    assert_eq!(cfg.header, "x-api-key");
    assert!(matches!(cfg.store, KeyStoreConfig::Embedded(_)));
    let cfg: ApiKeysConfig =
        serde_yaml::from_str("store: {type: redis, url: 'redis://127.0.0.1:1', prefix: 'p:'}")
            .unwrap();
    assert!(matches!(cfg.store, KeyStoreConfig::Redis(ref r) if r.prefix == "p:"));
    assert_eq!(cfg.serve_stale, Duration::from_secs(300));
    assert!(serde_yaml::from_str::<ApiKeysConfig>("store: {type: embedded, pth: x}").is_err());
    assert!(serde_yaml::from_str::<ApiKeysConfig>("headr: x").is_err());

    let bad: ApiKeysConfig = serde_yaml::from_str(
        "header: 'X Bad'\nquery_param: ''\nstore: {type: redis, url: 'http://x'}\ncache: {capacity: 0}",
    )
    .unwrap();
    let mut errors = Errors::for_file(None, None);
    bad.validate("api_keys", &mut errors);
    let text = errors.finish(()).unwrap_err().to_string();
    for field in [
        "api_keys.header",
        "api_keys.query_param",
        "api_keys.store.url",
        "api_keys.cache.capacity",
    ] {
        assert!(text.contains(field), "{field} missing from {text}");
    }
    assert!(
        !format!("{cfg:?}").contains("127.0.0.1:1"),
        "the Redis URL is redacted"
    );
}

/// The key service's config for a test Redis.
pub(crate) fn redis_config(server: &RedisServer) -> ApiKeysConfig {
    with_store(RedisStoreConfig::standalone(server.url()))
}

/// The key service's config on a Redis store (test prefix, a test-friendly timeout).
pub(crate) fn with_store(store: RedisStoreConfig) -> ApiKeysConfig {
    ApiKeysConfig {
        store: KeyStoreConfig::Redis(RedisStoreConfig {
            prefix: "test:keys:".into(),
            timeout: Duration::from_millis(300),
            ..store
        }),
        ..ApiKeysConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_the_other_replica_within_a_second_despite_its_cache() {
    let redis = RedisServer::start();
    let a = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    let b = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    let (info, secret) = a.create(new_key("shared")).await.unwrap();

    // B verifies the key until it is cached (the creation's own invalidation message may
    // arrive after B's first read, which then is rightly not cached).
    assert_eq!(b.verify(secret.expose()).await.unwrap().subject, "team-a");
    let cached = eventually(Duration::from_secs(1), || async {
        b.verify(secret.expose()).await.is_ok() && b.cached_entries() >= 1
    })
    .await;
    assert!(cached.is_some());

    a.revoke(&info.id).await.unwrap();
    let took = eventually(Duration::from_secs(1), || async {
        matches!(b.verify(secret.expose()).await, Err(ApiKeyError::Revoked))
    })
    .await;
    assert!(
        took.is_some(),
        "replica B still accepted a revoked key after 1s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_reaches_the_other_replica_within_a_second() {
    let redis = RedisServer::start();
    let a = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    let b = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    let (info, old) = a.create(new_key("shared")).await.unwrap();
    assert!(b.verify(old.expose()).await.is_ok());

    let (_, new) = a.rotate(&info.id, Duration::ZERO).await.unwrap();
    let took = eventually(Duration::from_secs(1), || async {
        matches!(b.verify(old.expose()).await, Err(ApiKeyError::Unknown))
    })
    .await;
    assert!(
        took.is_some(),
        "replica B still accepted the rotated-out secret after 1s"
    );
    assert!(b.verify(new.expose()).await.is_ok());
    // A key created on A is not stuck as "unknown" in B's negative cache either.
    let stranger = format::generate_key(&format::generate_id());
    assert!(matches!(
        b.verify(&stranger).await,
        Err(ApiKeyError::Unknown)
    ));
    let (_, fresh) = a.create(new_key("fresh")).await.unwrap();
    let took = eventually(Duration::from_secs(1), || async {
        b.verify(fresh.expose()).await.is_ok()
    })
    .await;
    assert!(took.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_grace_period_on_redis() {
    let redis = RedisServer::start();
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    ));
    let keys = ApiKeys::open_with_clock(&redis_config(&redis), clock.clone())
        .await
        .unwrap();
    rotation_grace_is_honoured(&keys, &clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_and_last_use_on_redis() {
    let redis = RedisServer::start();
    let keys = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    pages_cover_every_key_once(&keys).await;

    let (info, secret) = keys.create(new_key("used")).await.unwrap();
    keys.verify(secret.expose()).await.unwrap();
    keys.flush_last_used().await.unwrap();
    let other = ApiKeys::open(&redis_config(&redis)).await.unwrap();
    let first = other.get(&info.id).await.unwrap().last_used_at.unwrap();
    // A replica flushing an older use later does not move the time back.
    let store = &other.inner.store;
    let older = first - Duration::from_secs(3600);
    store.touch(&[(info.id.clone(), older)]).await.unwrap();
    assert_eq!(other.get(&info.id).await.unwrap().last_used_at, Some(first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_serve_stale_redis_down_fails_closed_and_a_restart_is_picked_up() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let cfg = ApiKeysConfig {
        serve_stale: Duration::ZERO,
        ..redis_config(&redis)
    };
    let a = ApiKeys::open(&cfg).await.unwrap();
    let (_, secret) = a.create(new_key("k")).await.unwrap();
    assert!(a.verify(secret.expose()).await.is_ok());

    redis.kill();
    // The cached positive decision is not served once the invalidation feed is gone.
    let took = eventually(Duration::from_secs(3), || async {
        matches!(a.verify(secret.expose()).await, Err(ApiKeyError::Store(_)))
    })
    .await;
    assert!(
        took.is_some(),
        "a cached key was still accepted with Redis down"
    );
    assert_eq!(a.stale_decisions(), 0);
    // Malformed input is refused without asking the (dead) store.
    assert!(matches!(
        a.verify("tgk_garbage").await,
        Err(ApiKeyError::Malformed)
    ));

    // Same port, empty data: the replica resubscribes, drops its cache and sees the new state.
    drop(redis);
    let redis = RedisServer::start_on(port);
    let took = eventually(Duration::from_secs(10), || async {
        matches!(a.verify(secret.expose()).await, Err(ApiKeyError::Unknown))
    })
    .await;
    assert!(took.is_some(), "the replica did not reconnect");
    let (_, again) = a.create(new_key("after")).await.unwrap();
    assert!(a.verify(again.expose()).await.is_ok());
    drop(redis);
}

#[tokio::test]
async fn open_fails_when_redis_is_unreachable() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = with_store(RedisStoreConfig::standalone(format!(
        "redis://127.0.0.1:{port}"
    )));
    assert!(ApiKeys::open(&cfg).await.is_err());
}

/// Cost of a verification served from the cache, and of counting a call in the key's usage (a
/// measurement, not an assertion):
/// `cargo test --release -p tollgate-authz --lib verify_cost -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement; run in release"]
async fn verify_cost() {
    let dir = tempfile::tempdir().unwrap();
    let keys = ApiKeys::open(&embedded_config(dir.path())).await.unwrap();
    let (_, secret) = keys.create(new_key("bench")).await.unwrap();
    keys.verify(secret.expose()).await.unwrap();
    let n = 200_000u32;
    let start = Instant::now();
    for _ in 0..n {
        keys.verify(secret.expose()).await.unwrap();
    }
    let hit = start.elapsed() / n;
    let garbage = "tgk_0123456789ab_0123456789abcdefghijklmnABCDEF";
    let start = Instant::now();
    for _ in 0..n {
        assert!(keys.verify(garbage).await.is_err());
    }
    let malformed = start.elapsed() / n;
    println!("verify (cached key): {hit:?} per call; malformed key: {malformed:?} per call");
    let who = keys.verify(secret.expose()).await.unwrap();
    let start = Instant::now();
    for _ in 0..n {
        keys.record_usage(&who, UsageOutcome::Allowed);
    }
    let counted = start.elapsed() / n;
    println!("record_usage (one key, in memory): {counted:?} per call");
}
