//! Usage per key: allowed, denied and rate-limited calls per key and UTC day, and their totals
//! per plan and per tenant, counted off the Check path.
//!
//! A Check adds one to an in-memory slot (a lock on one of [`SHARDS`] small maps, no I/O).
//! Every `usage.flush_interval`, and at shutdown, the slots are swapped out whole and written as
//! one batch of additions. A batch carries a sequence number of this process (`replica`), and
//! the store applies a batch's addition to a counter only if it has not applied that or a later
//! sequence of this replica to it: a write that timed out after the store applied it is retried
//! without counting twice, and one that failed is retried without being lost. While a batch
//! is unwritten, new calls gather in the slots for the next one, so batches reach the store in
//! sequence order. Counts are exact across replicas: each adds only its own calls.
//!
//! Prometheus gets bounded aggregates only, per plan (at most [`MAX_PLAN_LABELS`] distinct
//! plans, the rest as `other`) and outcome, added when a batch is taken; never a key id.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::KeyStoreError;
use super::store::Store;

/// Independent maps a Check may add to; spreads replicas' worker threads over locks.
const SHARDS: usize = 16;
/// Distinct plan values given their own Prometheus label; later ones count as `other`.
pub const MAX_PLAN_LABELS: usize = 32;
/// The longest range one usage query covers.
pub const MAX_RANGE_DAYS: u32 = 366;
/// Kept at most ten years.
pub const MAX_RETENTION_DAYS: u32 = 3660;

const SECS_PER_DAY: u64 = 86_400;

/// What became of one call made with a key. A call counts once, with its final outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageOutcome {
    /// Let through (in the service pair, tollgate-ratelimit may still answer 429 afterwards).
    Allowed,
    /// Refused by tollgate-authz for this key: revoked, expired, missing scope or claim.
    Denied,
    /// Refused for being over a rate limit, where that is decided in this process.
    RateLimited,
}

impl UsageOutcome {
    /// The bounded label in metrics and the field name in the API.
    pub fn label(self) -> &'static str {
        match self {
            UsageOutcome::Allowed => "allowed",
            UsageOutcome::Denied => "denied",
            UsageOutcome::RateLimited => "rate_limited",
        }
    }
}

/// A UTC calendar day, as days since 1970-01-01; written `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub(crate) u32);

impl Day {
    /// The UTC day `t` falls on.
    pub fn of(t: SystemTime) -> Day {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Day((secs / SECS_PER_DAY) as u32)
    }

    /// A strict `YYYY-MM-DD` (a real date of 1970 or later).
    pub fn parse(text: &str) -> Option<Day> {
        let b = text.as_bytes();
        let shape = b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && b.iter()
                .enumerate()
                .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
        if !shape {
            return None;
        }
        let t = humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).ok()?;
        Some(Day::of(t))
    }

    /// Midnight UTC starting this day.
    pub fn start(self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(self.0) * SECS_PER_DAY)
    }

    /// The day `n` days earlier (1970-01-01 at the earliest).
    pub fn minus(self, n: u32) -> Day {
        Day(self.0.saturating_sub(n))
    }

    /// The day `n` days later.
    pub fn plus(self, n: u32) -> Day {
        Day(self.0.saturating_add(n))
    }

    /// Days from `self` to `to`, both included (0 when `to` is earlier).
    pub fn span_to(self, to: Day) -> u32 {
        (to.0 + 1).saturating_sub(self.0)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stamp = humantime::format_rfc3339_seconds(self.start()).to_string();
        f.write_str(&stamp[..10])
    }
}

impl Serialize for Day {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Day, D::Error> {
        let text = String::deserialize(d)?;
        Day::parse(&text).ok_or_else(|| serde::de::Error::custom("not a YYYY-MM-DD date"))
    }
}

/// Calls counted per outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub allowed: u64,
    pub denied: u64,
    pub rate_limited: u64,
}

impl Counts {
    fn add(&mut self, outcome: UsageOutcome) {
        match outcome {
            UsageOutcome::Allowed => self.allowed += 1,
            UsageOutcome::Denied => self.denied += 1,
            UsageOutcome::RateLimited => self.rate_limited += 1,
        }
    }

    pub(crate) fn merge(&mut self, other: Counts) {
        self.allowed += other.allowed;
        self.denied += other.denied;
        self.rate_limited += other.rate_limited;
    }

    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }

    /// `(label, count)` of each outcome.
    pub(crate) fn by_outcome(&self) -> [(&'static str, u64); 3] {
        [
            (UsageOutcome::Allowed.label(), self.allowed),
            (UsageOutcome::Denied.label(), self.denied),
            (UsageOutcome::RateLimited.label(), self.rate_limited),
        ]
    }
}

/// What totals are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageGroup {
    Plan,
    Tenant,
}

impl UsageGroup {
    pub fn name(self) -> &'static str {
        match self {
            UsageGroup::Plan => "plan",
            UsageGroup::Tenant => "tenant",
        }
    }
}

/// One day of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DayUsage {
    pub date: Day,
    #[serde(flatten)]
    pub counts: Counts,
}

/// A key's usage over a range of days: the days with calls, and their totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUsage {
    pub key_id: String,
    pub from: Day,
    pub to: Day,
    /// How many days back usage is kept; older days are deleted and never listed.
    pub retention_days: u32,
    /// Oldest first; a day without calls is not listed.
    pub days: Vec<DayUsage>,
    pub totals: Counts,
}

/// The totals of one plan or tenant (`name` null: keys without one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupUsage {
    pub name: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
}

/// Totals per plan or tenant over a range of days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub group_by: UsageGroup,
    pub from: Day,
    pub to: Day,
    pub retention_days: u32,
    /// By name; calls count under the plan and tenant their key had when they were made.
    pub groups: Vec<GroupUsage>,
}

/// One key's calls on one day under one plan and tenant.
#[derive(Debug)]
struct Slot {
    day: Day,
    plan: Option<Box<str>>,
    tenant: Option<Box<str>>,
    counts: Counts,
}

/// The calls not yet taken into a batch.
#[derive(Debug, Default)]
struct Accumulator {
    shards: [Mutex<HashMap<Box<str>, Vec<Slot>>>; SHARDS],
}

impl Accumulator {
    fn shard(&self, key_id: &str) -> &Mutex<HashMap<Box<str>, Vec<Slot>>> {
        // Ids are random base62: their last byte spreads keys evenly without hashing.
        let b = key_id.as_bytes().last().copied().unwrap_or(0);
        &self.shards[usize::from(b) % SHARDS]
    }

    fn record(&self, call: &Call<'_>, outcome: UsageOutcome) {
        let mut shard = self.shard(call.key_id).lock();
        if !shard.contains_key(call.key_id) {
            shard.insert(call.key_id.into(), Vec::with_capacity(1));
        }
        let slots = shard.get_mut(call.key_id).expect("inserted above");
        let found = slots.iter_mut().find(|s| {
            s.day == call.day
                && s.plan.as_deref() == call.plan
                && s.tenant.as_deref() == call.tenant
        });
        match found {
            Some(s) => s.counts.add(outcome),
            None => {
                let mut counts = Counts::default();
                counts.add(outcome);
                slots.push(Slot {
                    day: call.day,
                    plan: call.plan.map(Into::into),
                    tenant: call.tenant.map(Into::into),
                    counts,
                });
            }
        }
    }

    /// Everything gathered so far, leaving the maps empty.
    fn take(&self) -> Vec<(Box<str>, Slot)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let map = std::mem::take(&mut *shard.lock());
            out.extend(
                map.into_iter()
                    .flat_map(|(id, slots)| slots.into_iter().map(move |s| (id.clone(), s))),
            );
        }
        out
    }

    /// This key's calls not yet taken, per day.
    fn pending_for(&self, key_id: &str) -> Vec<(Day, Counts)> {
        let shard = self.shard(key_id).lock();
        shard
            .get(key_id)
            .map(|slots| slots.iter().map(|s| (s.day, s.counts)).collect())
            .unwrap_or_default()
    }

    /// Calls not yet taken, per name of `group`, on the days `from..=to`.
    fn pending_by(&self, group: UsageGroup, from: Day, to: Day) -> Vec<(String, Counts)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for slot in shard.lock().values().flatten() {
                if slot.day < from || slot.day > to {
                    continue;
                }
                let name = match group {
                    UsageGroup::Plan => slot.plan.as_deref(),
                    UsageGroup::Tenant => slot.tenant.as_deref(),
                };
                out.push((name.unwrap_or_default().to_string(), slot.counts));
            }
        }
        out
    }
}

/// One call as the accumulator files it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) key_id: &'a str,
    pub(crate) plan: Option<&'a str>,
    pub(crate) tenant: Option<&'a str>,
    pub(crate) day: Day,
}

/// Additions to write in one go, identified by `seq` for this replica.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    pub(crate) seq: u64,
    /// Per key and day.
    pub(crate) keys: Vec<(String, Day, Counts)>,
    /// Per group, day and name (`""`: keys without one).
    pub(crate) groups: Vec<(UsageGroup, Day, String, Counts)>,
}

impl Batch {
    /// Sums slots into per-key-day and per-group-day additions.
    fn of(seq: u64, slots: &[(Box<str>, Slot)]) -> Batch {
        let mut keys: BTreeMap<(&str, Day), Counts> = BTreeMap::new();
        let mut groups: BTreeMap<(UsageGroup, Day, &str), Counts> = BTreeMap::new();
        for (id, s) in slots {
            keys.entry((id, s.day)).or_default().merge(s.counts);
            let plan = s.plan.as_deref().unwrap_or_default();
            let tenant = s.tenant.as_deref().unwrap_or_default();
            groups
                .entry((UsageGroup::Plan, s.day, plan))
                .or_default()
                .merge(s.counts);
            groups
                .entry((UsageGroup::Tenant, s.day, tenant))
                .or_default()
                .merge(s.counts);
        }
        Batch {
            seq,
            keys: keys
                .into_iter()
                .map(|((id, day), c)| (id.to_string(), day, c))
                .collect(),
            groups: groups
                .into_iter()
                .map(|((g, day, name), c)| (g, day, name.to_string(), c))
                .collect(),
        }
    }

    /// Calls in the batch.
    fn calls(&self) -> u64 {
        self.keys
            .iter()
            .map(|(_, _, c)| c.allowed + c.denied + c.rate_limited)
            .sum()
    }
}

/// How a batch is written: whose it is and until when its days are kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Write<'a> {
    pub(crate) replica: &'a str,
    pub(crate) retention_days: u32,
}

impl Write<'_> {
    /// When the counters of `day` expire: `retention_days` after it began.
    pub(crate) fn expires_at(&self, day: Day) -> SystemTime {
        day.plus(self.retention_days).start()
    }
}

/// Plan values allowed as a metric label: the first [`MAX_PLAN_LABELS`] seen.
#[derive(Debug, Default)]
struct PlanLabels {
    seen: Mutex<HashSet<String>>,
}

impl PlanLabels {
    fn label(&self, plan: &str) -> String {
        if plan.is_empty() {
            return "none".into();
        }
        let mut seen = self.seen.lock();
        if seen.contains(plan) || seen.len() < MAX_PLAN_LABELS {
            seen.insert(plan.to_string());
            plan.to_string()
        } else {
            "other".into()
        }
    }
}

/// The usage of one process: the accumulator, the batch being written, the purge schedule.
#[derive(Debug)]
pub(crate) struct Usage {
    acc: Accumulator,
    /// The batch taken but not yet known written; held across a write, so flushes run one at a time.
    inflight: tokio::sync::Mutex<Option<Batch>>,
    next_seq: AtomicU64,
    /// This process's name in the store's sequence fields.
    replica: String,
    retention_days: u32,
    /// The last day expired counters were deleted (stores without expiry only).
    purged: Mutex<Option<Day>>,
    labels: PlanLabels,
}

impl Usage {
    pub(crate) fn new(retention_days: u32) -> Usage {
        let id: [u8; 8] = rand::random();
        Usage {
            acc: Accumulator::default(),
            inflight: tokio::sync::Mutex::new(None),
            next_seq: AtomicU64::new(1),
            replica: id.iter().map(|b| format!("{b:02x}")).collect(),
            retention_days,
            purged: Mutex::new(None),
            labels: PlanLabels::default(),
        }
    }

    pub(crate) fn retention_days(&self) -> u32 {
        self.retention_days
    }

    pub(crate) fn record(&self, call: &Call<'_>, outcome: UsageOutcome) {
        self.acc.record(call, outcome);
    }

    /// The oldest day still kept on `today`.
    pub(crate) fn oldest_kept(&self, today: Day) -> Day {
        today.minus(self.retention_days - 1)
    }

    /// Writes the batch left from a failed flush, then everything gathered since; deletes
    /// expired days once a day where the store does not expire them itself.
    pub(crate) async fn flush(&self, store: &Store, today: Day) -> Result<(), KeyStoreError> {
        let mut inflight = self.inflight.lock().await;
        let write = Write {
            replica: &self.replica,
            retention_days: self.retention_days,
        };
        if let Some(batch) = inflight.as_ref() {
            store.add_usage(batch, &write).await?;
            *inflight = None;
        }
        let slots = self.acc.take();
        if !slots.is_empty() {
            let batch = Batch::of(self.next_seq.fetch_add(1, Ordering::Relaxed), &slots);
            self.count_in_metrics(&batch);
            store.add_usage(inflight.insert(batch), &write).await?;
            *inflight = None;
        }
        drop(inflight);
        self.purge(store, today).await
    }

    async fn purge(&self, store: &Store, today: Day) -> Result<(), KeyStoreError> {
        if *self.purged.lock() == Some(today) {
            return Ok(());
        }
        store.purge_usage(self.oldest_kept(today)).await?;
        *self.purged.lock() = Some(today);
        Ok(())
    }

    /// Calls of a batch that will never be written (for the shutdown log line).
    pub(crate) async fn unwritten(&self) -> u64 {
        self.inflight.lock().await.as_ref().map_or(0, Batch::calls)
    }

    fn count_in_metrics(&self, batch: &Batch) {
        for (group, _, name, counts) in &batch.groups {
            if *group != UsageGroup::Plan {
                continue;
            }
            let plan = self.labels.label(name);
            for (outcome, n) in counts.by_outcome() {
                if n > 0 {
                    metrics::counter!(crate::metrics::API_KEY_USAGE, "plan" => plan.clone(), "outcome" => outcome)
                        .increment(n);
                }
            }
        }
    }

    /// `stored` (per day) plus this process's calls not yet written, for `key_id`.
    pub(crate) fn with_pending(
        &self,
        key_id: &str,
        from: Day,
        to: Day,
        stored: Vec<(Day, Counts)>,
    ) -> Vec<DayUsage> {
        let mut days: BTreeMap<Day, Counts> = stored.into_iter().collect();
        for (day, c) in self.acc.pending_for(key_id) {
            if day >= from && day <= to {
                days.entry(day).or_default().merge(c);
            }
        }
        days.into_iter()
            .filter(|(_, c)| !c.is_zero())
            .map(|(date, counts)| DayUsage { date, counts })
            .collect()
    }

    /// `stored` (per name) plus this process's calls not yet written.
    pub(crate) fn groups_with_pending(
        &self,
        group: UsageGroup,
        from: Day,
        to: Day,
        stored: Vec<(String, Counts)>,
    ) -> Vec<GroupUsage> {
        let mut names: BTreeMap<String, Counts> = BTreeMap::new();
        for (name, c) in stored
            .into_iter()
            .chain(self.acc.pending_by(group, from, to))
        {
            names.entry(name).or_default().merge(c);
        }
        names
            .into_iter()
            .filter(|(_, c)| !c.is_zero())
            .map(|(name, counts)| GroupUsage {
                name: (!name.is_empty()).then_some(name),
                counts,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(id: &'a str, plan: Option<&'a str>, day: u32) -> Call<'a> {
        Call {
            key_id: id,
            plan,
            tenant: Some("acme"),
            day: Day(day),
        }
    }

    #[test]
    fn days_are_utc_dates_both_ways() {
        let d = Day::parse("2025-03-01").unwrap();
        assert_eq!(d.to_string(), "2025-03-01");
        assert_eq!(Day::of(d.start() + Duration::from_secs(86_399)), d);
        assert_eq!(Day::of(d.start() + Duration::from_secs(86_400)), d.plus(1));
        assert_eq!(
            Day::parse("2024-02-29").unwrap().plus(1).to_string(),
            "2024-03-01"
        );
        assert_eq!(Day::parse("1970-01-01"), Some(Day(0)));
        assert_eq!(d.minus(1).span_to(d), 2);
        assert_eq!(d.span_to(d.minus(1)), 0);
        for bad in [
            "2025-3-01",
            "2025-02-30",
            "2025-13-01",
            "25-03-01",
            "2025-03-01T00:00:00Z",
            "2025/03/01",
            "+025-03-01",
            "",
        ] {
            assert_eq!(Day::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_batch_sums_per_key_day_and_per_plan_and_tenant() {
        let acc = Accumulator::default();
        for _ in 0..3 {
            acc.record(&call("k1", Some("gold"), 10), UsageOutcome::Allowed);
        }
        acc.record(&call("k1", Some("gold"), 10), UsageOutcome::Denied);
        // The plan changed mid-day: the key's day is one entry, the plans two.
        acc.record(&call("k1", Some("silver"), 10), UsageOutcome::RateLimited);
        acc.record(&call("k2", None, 11), UsageOutcome::Allowed);
        assert_eq!(acc.pending_for("k1").len(), 2);
        let batch = Batch::of(7, &acc.take());
        assert!(acc.take().is_empty(), "taking empties the accumulator");
        assert_eq!(batch.seq, 7);
        assert_eq!(batch.calls(), 6);
        let c = |a, d, r| Counts {
            allowed: a,
            denied: d,
            rate_limited: r,
        };
        assert_eq!(
            batch.keys,
            [
                ("k1".into(), Day(10), c(3, 1, 1)),
                ("k2".into(), Day(11), c(1, 0, 0)),
            ]
        );
        assert_eq!(
            batch.groups,
            [
                (UsageGroup::Plan, Day(10), "gold".into(), c(3, 1, 0)),
                (UsageGroup::Plan, Day(10), "silver".into(), c(0, 0, 1)),
                (UsageGroup::Plan, Day(11), String::new(), c(1, 0, 0)),
                (UsageGroup::Tenant, Day(10), "acme".into(), c(3, 1, 1)),
                (UsageGroup::Tenant, Day(11), "acme".into(), c(1, 0, 0)),
            ]
        );
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let acc = std::sync::Arc::new(Accumulator::default());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let acc = acc.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let id = format!("key{}", (t + i) % 5);
                        acc.record(&call(&id, Some("gold"), 1), UsageOutcome::Allowed);
                    }
                })
            })
            .collect();
        // Batches taken while the threads run lose nothing either.
        let mut total = 0;
        while threads.iter().any(|t| !t.is_finished()) {
            total += Batch::of(0, &acc.take()).calls();
        }
        for t in threads {
            t.join().unwrap();
        }
        total += Batch::of(0, &acc.take()).calls();
        assert_eq!(total, 8000);
    }

    #[test]
    fn plan_labels_are_capped_and_the_rest_is_other() {
        let labels = PlanLabels::default();
        assert_eq!(labels.label(""), "none");
        for i in 0..MAX_PLAN_LABELS {
            assert_eq!(labels.label(&format!("p{i}")), format!("p{i}"));
        }
        assert_eq!(labels.label("one-too-many"), "other");
        assert_eq!(
            labels.label("p0"),
            "p0",
            "a plan seen before keeps its label"
        );
    }

    #[test]
    fn pending_calls_join_stored_ones_in_answers() {
        let usage = Usage::new(30);
        usage.record(&call("k1", Some("gold"), 20), UsageOutcome::Allowed);
        usage.record(&call("k1", Some("gold"), 25), UsageOutcome::Denied);
        let stored = vec![(
            Day(20),
            Counts {
                allowed: 5,
                ..Counts::default()
            },
        )];
        let days = usage.with_pending("k1", Day(19), Day(21), stored);
        assert_eq!(days.len(), 1, "day 25 is outside the range");
        assert_eq!(days[0].counts.allowed, 6);
        let groups = usage.groups_with_pending(UsageGroup::Plan, Day(0), Day(30), Vec::new());
        assert_eq!(groups[0].name.as_deref(), Some("gold"));
        assert_eq!((groups[0].counts.allowed, groups[0].counts.denied), (1, 1));
        assert_eq!(usage.oldest_kept(Day(100)), Day(71));
        let write = Write {
            replica: "r",
            retention_days: 30,
        };
        assert_eq!(write.expires_at(Day(10)), Day(40).start());
    }
}
