//! The memory store's byte bound, measured as the operating system sees it: a flood of
//! distinct keys in a process of its own (this test binary) grows its resident memory by
//! about `max_bytes`, not by what the keys would take unbounded (about 450 bytes each).

// The test binary shares its package's dependencies; the lint is for the library's.
#![allow(unused_crate_dependencies)]

use std::time::Duration;

use tollgate_limiter::algorithm::{Algorithm, Rule};
use tollgate_limiter::store::{Hit, MemoryOptions, MemoryStore};

/// This process' resident set, in bytes (`VmRSS` of `/proc/self/status`).
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .expect("VmRSS")
        * 1024
}

#[test]
fn a_flood_of_distinct_keys_stays_within_max_bytes_of_resident_memory() {
    let max_bytes = 16 << 20;
    let store = MemoryStore::new(&MemoryOptions {
        max_bytes,
        ..MemoryOptions::default()
    });
    let rule = Rule::new(Algorithm::SlidingWindow, 100, Duration::from_secs(3600));
    let before = rss();
    let now = 1_800_000_000 * 1_000_000;
    let mut key = String::new();
    // 300,000 keys: unbounded, about 135 MB.
    for i in 0..300_000u64 {
        key.clear();
        use std::fmt::Write as _;
        let _ = write!(
            key,
            "rl|api|remote_address=10.{}.{}.{}|user=u{i}",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        );
        store.hit_now(
            &[Hit {
                key: &key,
                rule,
                cost: 1,
                shadow: false,
            }],
            now + i,
        );
    }
    let grown = rss().saturating_sub(before);
    assert!(store.bytes() <= max_bytes, "accounted {}", store.bytes());
    // The allocator keeps some slack of its own (freed keys, fragmentation): a quarter more.
    assert!(
        grown <= max_bytes + max_bytes / 4,
        "resident memory grew by {} MiB for a bound of {} MiB ({} counters)",
        grown >> 20,
        max_bytes >> 20,
        store.len()
    );
    assert!(store.len() > 25_000, "{} counters kept", store.len());
    eprintln!(
        "{} counters, {} MiB accounted, resident memory +{} MiB",
        store.len(),
        store.bytes() >> 20,
        grown >> 20
    );
}
