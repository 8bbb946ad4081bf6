//! The four counting algorithms as pure functions of (rule, stored state, time, cost).
//!
//! Every store evaluates hits with exactly this arithmetic: the memory store calls
//! [`evaluate`] directly and the Redis script (`store/redis/script.lua`) is a line-by-line mirror of
//! it. All time is integer microseconds since the Unix epoch, passed in by the caller (an
//! injected clock), so tests control time and replicas sharing Redis agree within their clock
//! skew. The guarantees each algorithm gives are in `docs/algorithms.md`.
//!
//! - `fixed_window`: one counter per aligned window (`[k·W, (k+1)·W)` since the epoch), or, with
//!   a calendar [`Period`], one per billing period (its bounds computed by the caller).
//! - `sliding_window`: [`SLIDING_BUCKETS`] sub-window counters; a hit counts against the limit
//!   until every instant of the window it could belong to has passed, so no interval of length
//!   `W` ever holds more than `limit` admitted hits.
//! - `token_bucket` and `gcra`: one exact meter (the theoretical arrival time, TAT) with an
//!   emission interval of `W / limit` kept as an exact fraction; they are the same meter seen
//!   as tokens (capacity + refill) or as a leaky bucket with a burst tolerance. The meter counts
//!   time in ticks of [`Rule::meter_tick_us`] (1 µs, or a coarser power of ten for long windows
//!   with large limits) so that every product it forms stays below 2^52, where the doubles of
//!   the Redis script are exact.

use std::time::Duration;

use crate::period::Period;

/// Which algorithm counts a limit.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    SlidingWindow,
    FixedWindow,
    TokenBucket,
    Gcra,
}

impl Algorithm {
    /// A short stable code, used in store keys and the Redis script's arguments.
    pub fn code(self) -> u8 {
        match self {
            Algorithm::SlidingWindow => 0,
            Algorithm::FixedWindow => 1,
            Algorithm::TokenBucket => 2,
            Algorithm::Gcra => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::Gcra => "gcra",
        }
    }
}

/// One limit: `limit` per `window`, counted by `algorithm`.
///
/// - windows: at most `limit` per window (see `docs/algorithms.md` for what "per window" means
///   for each); `burst` is ignored.
/// - `token_bucket`: capacity `burst.unwrap_or(limit)`, refilled at `limit` tokens per `window`.
/// - `gcra`: emission interval `window / limit`, burst tolerance `burst.unwrap_or(limit)`
///   requests (the number admitted at once from idle).
///
/// - with a `period`: `fixed_window` counted per calendar period (`window` is then the
///   longest such period, used only where no counter answers, e.g. a store failure).
///
/// Call [`Rule::check`] when loading config: stores assume a checked rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub algorithm: Algorithm,
    pub limit: u64,
    pub window: Duration,
    pub burst: Option<u64>,
    pub period: Option<Period>,
}

/// Why a [`Rule`] cannot be counted exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("the limit must be at least 1 (use `unlimited` for no limit)")]
    ZeroLimit,
    #[error("burst must be at least 1")]
    ZeroBurst,
    #[error("the window must be between 1ms and {MAX_WINDOW_DAYS} days")]
    Window,
    #[error("a calendar period is counted by fixed_window only")]
    PeriodAlgorithm,
    #[error(
        "limit/burst too large for this window: for token_bucket and gcra, (burst or limit) × window in seconds must stay below 2^52 (e.g. at most 1.7 billion per 30 days); use a window algorithm or a shorter window"
    )]
    TooLarge,
}

/// Longest accepted window.
pub const MAX_WINDOW_DAYS: u64 = 366;

/// Every quantity the Redis script computes stays below this, so Lua's doubles are exact.
const EXACT: u128 = 1 << 52;
/// The coarsest meter tick: one second.
const MAX_TICK_US: u64 = 1_000_000;

impl Rule {
    /// A rule with no burst.
    pub fn new(algorithm: Algorithm, limit: u64, window: Duration) -> Self {
        Self {
            algorithm,
            limit,
            window,
            burst: None,
            period: None,
        }
    }

    /// The code the stores' counters and the Redis script know the rule's counting by: the
    /// algorithm's, or 4 for a calendar period.
    pub fn store_code(&self) -> u8 {
        if self.period.is_some() {
            4
        } else {
            self.algorithm.code()
        }
    }

    /// The window in microseconds (at least 1).
    pub fn window_us(&self) -> u64 {
        (self.window.as_micros() as u64).max(1)
    }

    /// The most that can be admitted at once: the limit for windows, the bucket capacity /
    /// burst tolerance for meters.
    pub fn capacity(&self) -> u64 {
        match self.algorithm {
            Algorithm::SlidingWindow | Algorithm::FixedWindow => self.limit,
            Algorithm::TokenBucket | Algorithm::Gcra => self.burst.unwrap_or(self.limit),
        }
    }

    /// Checks the bounds within which every store counts exactly (Lua numbers are doubles).
    pub fn check(&self) -> Result<(), RuleError> {
        if self.limit == 0 {
            return Err(RuleError::ZeroLimit);
        }
        if self.burst == Some(0) {
            return Err(RuleError::ZeroBurst);
        }
        if self.window < Duration::from_millis(1)
            || self.window > Duration::from_secs(MAX_WINDOW_DAYS * 86_400)
        {
            return Err(RuleError::Window);
        }
        if self.period.is_some() && self.algorithm != Algorithm::FixedWindow {
            return Err(RuleError::PeriodAlgorithm);
        }
        // Windows only compare counts and timestamps, both far below 2^52. Meters keep the
        // theoretical arrival time as `t + f/limit` ticks, computing `limit × window` products.
        let too_large = match self.algorithm {
            Algorithm::SlidingWindow | Algorithm::FixedWindow => self.limit as u128 >= EXACT,
            Algorithm::TokenBucket | Algorithm::Gcra => self.meter_tick_us().is_none(),
        };
        if too_large {
            return Err(RuleError::TooLarge);
        }
        Ok(())
    }

    /// The meter's time step in µs: the smallest power of ten (1 µs up to 1 s) that divides the
    /// window and keeps `max(capacity, limit) × window / tick` below 2^52, so the meter's
    /// arithmetic is exact in doubles. Rules that were exact in microseconds keep 1 µs (their
    /// stored state reads unchanged); a million per 30 days counts in milliseconds. `None`
    /// when even one-second ticks are too fine. The Redis script derives the same tick.
    pub fn meter_tick_us(&self) -> Option<u64> {
        let (w, scale) = (self.window_us(), self.capacity().max(self.limit) as u128);
        let mut tick = 1;
        while tick <= MAX_TICK_US && w % tick == 0 {
            if scale * ((w / tick) as u128) < EXACT {
                return Some(tick);
            }
            tick *= 10;
        }
        None
    }
}

/// Number of sub-windows of a sliding window. A hit stops counting between `W` and
/// `W·(1 + 1/SLIDING_BUCKETS)` after it was admitted.
pub const SLIDING_BUCKETS: u64 = 10;
/// Extra sub-windows a sliding window keeps for callers whose clock lags (2 = W/5).
pub const SLIDING_SKEW_BUCKETS: u64 = 2;
const RING: usize = (SLIDING_BUCKETS + SLIDING_SKEW_BUCKETS + 1) as usize;

/// The stored state of one counter (one key under one rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum State {
    /// Nothing counted (a new or expired key).
    #[default]
    Empty,
    /// `count` hits in aligned window number `window`.
    Fixed { window: u64, count: u64 },
    /// Counts of the sub-windows `newest-SLIDING_BUCKETS-SLIDING_SKEW_BUCKETS ..= newest`,
    /// ring-indexed by `index % (SLIDING_BUCKETS+SLIDING_SKEW_BUCKETS+1)`.
    Sliding { newest: u64, counts: [u64; RING] },
    /// `count` hits in the calendar period starting at `start_us`.
    Period { start_us: u64, count: u64 },
    /// Theoretical arrival time `tat + frac/limit` meter ticks ([`Rule::meter_tick_us`]) since
    /// the epoch.
    Meter { tat: u64, frac: u64 },
}

/// The answer for one hit, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub admitted: bool,
    /// What is left after this hit (after counting it, when admitted).
    pub remaining: u64,
    /// Until the counter would be back to its full limit with no further hits; 0 when unused.
    pub reset_after_us: u64,
    /// When rejected: until the same hit would be admitted, absent other hits. A cost larger
    /// than [`Rule::capacity`] can never be admitted and reports the window.
    pub retry_after_us: Option<u64>,
}

/// A decision and the state to store if the hit is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evaluation {
    pub decision: Decision,
    /// The state after counting the hit (equal to the input when it changes nothing).
    pub next: State,
    /// When `next` stops mattering (µs since the epoch): the key may be dropped then.
    pub expires_at_us: u64,
}

/// Evaluates a hit of `cost` at `now_us` against `state`. `cost == 0` checks without
/// counting: admitted unless the counter is already beyond its limit (as Envoy's
/// ratelimit and Limitador treat `hits_addend: 0`).
pub fn evaluate(rule: &Rule, state: &State, now_us: u64, cost: u64) -> Evaluation {
    if let Some(p) = rule.period {
        return period_window(rule.limit, p.bounds(now_us), state, now_us, cost);
    }
    match rule.algorithm {
        Algorithm::FixedWindow => fixed_window(rule, state, now_us, cost),
        Algorithm::SlidingWindow => sliding_window(rule, state, now_us, cost),
        Algorithm::TokenBucket => token_bucket(rule, state, now_us, cost),
        Algorithm::Gcra => gcra(rule, state, now_us, cost),
    }
}

/// Fixed window: admitted while the window's count plus `cost` is at most the limit.
pub fn fixed_window(rule: &Rule, state: &State, now_us: u64, cost: u64) -> Evaluation {
    let (l, w_us) = (rule.limit, rule.window_us());
    let window = now_us / w_us;
    let count = match *state {
        State::Fixed { window: w, count } if w == window => count,
        // The counter is already in a later window: this caller's clock lags another
        // replica's. Its own window's count is gone, so it may only check; it can count once
        // its clock reaches the stored window. This keeps every window, by the callers' own
        // timestamps, at most `limit`.
        State::Fixed { window: w, count } if w > window => {
            let (start, end) = (w * w_us, (w + 1) * w_us);
            return Evaluation {
                decision: Decision {
                    admitted: cost == 0 && count <= l,
                    remaining: l.saturating_sub(count),
                    reset_after_us: end - now_us,
                    retry_after_us: (cost > 0).then(|| (start - now_us).max(1)),
                },
                next: *state,
                expires_at_us: end,
            };
        }
        _ => 0,
    };
    let admitted = count.saturating_add(cost) <= l;
    let after = if admitted { count + cost } else { count };
    let end = (window + 1) * w_us;
    let until_end = end - now_us;
    let retry_after_us = match (admitted, cost > l) {
        (true, _) => None,
        (false, true) => Some(w_us),
        (false, false) => Some(until_end),
    };
    Evaluation {
        decision: Decision {
            admitted,
            remaining: l.saturating_sub(after),
            reset_after_us: if after > 0 { until_end } else { 0 },
            retry_after_us,
        },
        next: State::Fixed {
            window,
            count: after,
        },
        expires_at_us: end,
    }
}

/// A calendar period's fixed window: admitted while the period's count plus `cost` is at most
/// the limit. The period `[start, end)` is the caller's (see [`Period::bounds`]), so the Redis
/// script never does calendar math; a counter already in a later period (this caller's clock
/// lags) is only checked, as for a fixed window.
pub fn period_window(
    l: u64,
    (start, end): (u64, u64),
    state: &State,
    now_us: u64,
    cost: u64,
) -> Evaluation {
    let count = match *state {
        State::Period { start_us, count } if start_us == start => count,
        State::Period { start_us, count } if start_us > start => {
            return Evaluation {
                decision: Decision {
                    admitted: cost == 0 && count <= l,
                    remaining: l.saturating_sub(count),
                    reset_after_us: end - now_us,
                    retry_after_us: (cost > 0).then(|| (start_us - now_us).max(1)),
                },
                next: *state,
                expires_at_us: end,
            };
        }
        _ => 0,
    };
    let admitted = count.saturating_add(cost) <= l;
    let after = if admitted { count + cost } else { count };
    let until_end = end - now_us;
    Evaluation {
        decision: Decision {
            admitted,
            remaining: l.saturating_sub(after),
            reset_after_us: if after > 0 { until_end } else { 0 },
            // A cost above the limit is never admitted; the next period is still the answer
            // a client can act on.
            retry_after_us: (!admitted).then_some(until_end),
        },
        next: State::Period {
            start_us: start,
            count: after,
        },
        expires_at_us: end,
    }
}

/// The sub-window width of a sliding window: `ceil(W / SLIDING_BUCKETS)` µs, so that
/// `SLIDING_BUCKETS` sub-windows cover at least `W`.
pub fn sliding_bucket_us(rule: &Rule) -> u64 {
    rule.window_us().div_ceil(SLIDING_BUCKETS)
}

/// Sliding window: counts every sub-window that overlaps `(now - W, now]`, so that the
/// admitted hits of any interval of length `W` never exceed the limit.
///
/// Sub-windows are kept for [`SLIDING_SKEW_BUCKETS`] more than the window needs, for callers
/// whose clock lags the newest writer's (another replica's): within that lag a hit is judged
/// on its own window exactly; beyond it, it may only check (cost 0) until its clock catches
/// up, since the sub-windows it would need are gone.
pub fn sliding_window(rule: &Rule, state: &State, now_us: u64, cost: u64) -> Evaluation {
    let l = rule.limit;
    let b = sliding_bucket_us(rule);
    let (k, d, ring) = (SLIDING_BUCKETS, SLIDING_SKEW_BUCKETS, RING as u64);
    let slot = |i: u64| (i % ring) as usize;
    let expires = |i: u64| (i + k + 1) * b;
    let keep = |i: u64| (i + k + 1 + d) * b;
    let cur = now_us / b;
    let (mut top, mut counts) = match *state {
        State::Sliding { newest, counts } => (newest, counts),
        _ => (cur, [0; RING]),
    };
    if cur > top {
        // Sub-windows that slid out are reused for the new ones.
        for i in 1..=(cur - top).min(ring) {
            counts[slot(top + i)] = 0;
        }
        top = cur;
    }
    let held_from = top.saturating_sub(k + d);
    let newest_in =
        |counts: &[u64; RING], from: u64| (from..=top).rev().find(|&i| counts[slot(i)] > 0);
    if cur + d < top {
        let counted: u64 = counts.iter().sum();
        let newest = newest_in(&counts, held_from);
        return Evaluation {
            decision: Decision {
                admitted: cost == 0 && counted <= l,
                remaining: l.saturating_sub(counted),
                reset_after_us: newest.map_or(0, |i| expires(i).saturating_sub(now_us)),
                retry_after_us: (cost > 0).then(|| ((top - d) * b - now_us).max(1)),
            },
            next: *state,
            expires_at_us: newest.map_or(now_us, keep),
        };
    }
    let from = cur.saturating_sub(k);
    let counted: u64 = (from..=top).map(|i| counts[slot(i)]).sum();
    let admitted = counted.saturating_add(cost) <= l;
    let mut after_counts = counts;
    if admitted && cost > 0 {
        after_counts[slot(cur)] += cost;
    }
    let after = if admitted { counted + cost } else { counted };
    let reset_after_us =
        newest_in(&after_counts, from).map_or(0, |i| expires(i).saturating_sub(now_us));
    let retry_after_us = if admitted {
        None
    } else if cost > l {
        Some(rule.window_us())
    } else {
        // The earliest time enough old sub-windows have slid out to make room for `cost`.
        let need = counted + cost - l;
        let mut freed = 0;
        let mut at = None;
        for i in from..=top {
            freed += counts[slot(i)];
            if freed >= need {
                at = Some(expires(i).saturating_sub(now_us));
                break;
            }
        }
        at.or(Some(rule.window_us()))
    };
    Evaluation {
        decision: Decision {
            admitted,
            remaining: l.saturating_sub(after),
            reset_after_us,
            retry_after_us,
        },
        next: State::Sliding {
            newest: top,
            counts: after_counts,
        },
        expires_at_us: newest_in(&after_counts, held_from).map_or(now_us, keep),
    }
}

/// Token bucket: capacity `burst.unwrap_or(limit)`, refilled at `limit` per `window`.
/// Implemented as the GCRA meter, which it is equivalent to.
pub fn token_bucket(rule: &Rule, state: &State, now_us: u64, cost: u64) -> Evaluation {
    meter(rule, state, now_us, cost)
}

/// GCRA: emission interval `window / limit`, burst tolerance `burst.unwrap_or(limit)`.
pub fn gcra(rule: &Rule, state: &State, now_us: u64, cost: u64) -> Evaluation {
    meter(rule, state, now_us, cost)
}

/// The exact meter, in ticks of `g` µs ([`Rule::meter_tick_us`]). Distances from `now` are
/// kept in units of `1/l` ticks, so the emission interval `w/l` ticks is exact: a hit of
/// `cost` moves the TAT by `cost·w` units, and the meter admits while the TAT is at most
/// `cap·w` units ahead of now. Every admitted distance stays below `cap·w < 2^52`.
fn meter(rule: &Rule, state: &State, now_us: u64, cost: u64) -> Evaluation {
    let g = rule.meter_tick_us().unwrap_or(MAX_TICK_US);
    let (l, cap) = (rule.limit as u128, rule.capacity());
    let w = (rule.window_us() / g) as u128;
    let now = now_us / g;
    let (base, base_frac) = match *state {
        State::Meter { tat, frac } if (tat, frac) > (now, 0) => (tat, frac),
        _ => (now, 0),
    };
    let dist = (base - now) as u128 * l + base_frac as u128;
    let full = cap as u128 * w;
    let new_dist = dist + cost as u128 * w;
    let admitted = cost <= cap && new_dist <= full;
    let after = if admitted { new_dist } else { dist };
    let next = if admitted && cost > 0 {
        State::Meter {
            tat: now + (new_dist / l) as u64,
            frac: (new_dist % l) as u64,
        }
    } else {
        *state
    };
    // Ticks from `now` back to µs from `now_us` (which may sit inside the tick).
    let until = |ticks: u128| (now + ticks as u64) * g - now_us;
    let retry_after_us = match (admitted, cost > cap) {
        (true, _) => None,
        (false, true) => Some(rule.window_us()),
        (false, false) => Some(until((new_dist - full).div_ceil(l)).max(1)),
    };
    let reset_after_us = if after == 0 {
        0
    } else {
        until(after.div_ceil(l))
    };
    Evaluation {
        decision: Decision {
            admitted,
            remaining: (full.saturating_sub(after) / w) as u64,
            reset_after_us,
            retry_after_us,
        },
        next,
        expires_at_us: now_us + reset_after_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn run(rule: &Rule, state: &mut State, now: u64, cost: u64) -> Decision {
        let ev = evaluate(rule, state, now, cost);
        if ev.decision.admitted {
            *state = ev.next;
        }
        ev.decision
    }

    #[test]
    fn fixed_window_resets_at_the_aligned_boundary() {
        let r = Rule::new(Algorithm::FixedWindow, 3, Duration::from_secs(1));
        let mut st = State::Empty;
        let t0 = 100 * S + 400_000;
        for left in [2, 1, 0] {
            let d = run(&r, &mut st, t0, 1);
            assert!(d.admitted);
            assert_eq!(d.remaining, left);
            assert_eq!(d.reset_after_us, 600_000);
        }
        let d = run(&r, &mut st, 101 * S - 1, 1);
        assert!(!d.admitted);
        assert_eq!(d.retry_after_us, Some(1));
        assert!(run(&r, &mut st, 101 * S, 1).admitted);
    }

    #[test]
    fn sliding_window_never_exceeds_limit_in_any_interval() {
        // A deterministic pseudo-random arrival pattern, then a brute-force check of every
        // interval of length W that ends at an admitted hit.
        let w = S;
        let r = Rule::new(Algorithm::SlidingWindow, 7, Duration::from_micros(w));
        let mut st = State::Empty;
        let mut t = 50 * S;
        let mut x: u64 = 12345;
        let mut admitted = Vec::new();
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t += (x >> 33) % 60_000;
            let cost = 1 + (x >> 20) % 2;
            if run(&r, &mut st, t, cost).admitted {
                admitted.push((t, cost));
            }
        }
        assert!(admitted.len() > 1000, "the pattern must exercise admission");
        for (i, &(end, _)) in admitted.iter().enumerate() {
            let total: u64 = admitted[..=i]
                .iter()
                .rev()
                .take_while(|(s, _)| *s + w > end)
                .map(|(_, c)| c)
                .sum();
            assert!(total <= 7, "{total} admitted in the window ending at {end}");
        }
    }

    #[test]
    fn sliding_window_retry_after_is_exact() {
        let r = Rule::new(Algorithm::SlidingWindow, 3, Duration::from_secs(1));
        let mut st = State::Empty;
        let t0 = 10 * S + 30_000; // sub-window 100 (100 ms wide)
        for _ in 0..3 {
            assert!(run(&r, &mut st, t0, 1).admitted);
        }
        let d = run(&r, &mut st, t0, 1);
        assert!(!d.admitted);
        // Sub-window 100 stops counting when sub-window 111 starts: 11.1 s.
        assert_eq!(d.retry_after_us, Some(11_100_000 - t0));
        assert_eq!(d.reset_after_us, 11_100_000 - t0);
        assert!(!run(&r, &mut st, 11_100_000 - 1, 1).admitted);
        assert!(run(&r, &mut st, 11_100_000, 1).admitted);
    }

    #[test]
    fn meter_spacing_is_exact_with_fractional_intervals() {
        // 3 per second: the emission interval is 333333.33 µs, never rounded.
        let r = Rule::new(Algorithm::Gcra, 3, Duration::from_secs(1));
        let mut st = State::Empty;
        let t0 = 7 * S;
        for _ in 0..3 {
            assert!(run(&r, &mut st, t0, 1).admitted);
        }
        let d = run(&r, &mut st, t0, 1);
        assert_eq!(d.retry_after_us, Some(333_334));
        assert!(!run(&r, &mut st, t0 + 333_333, 1).admitted);
        assert!(run(&r, &mut st, t0 + 333_334, 1).admitted);
        // Over 3000 seconds of saturation exactly 3 per second get through, no drift.
        let mut st = State::Empty;
        let mut n = 0;
        for ms in 0..3_000_000u64 {
            if run(&r, &mut st, t0 + ms * 1000, 1).admitted {
                n += 1;
            }
        }
        assert_eq!(n, 3 + 3 * 3000 - 1);
    }

    #[test]
    fn meter_ticks_stay_exact_and_keep_microseconds_where_they_fit() {
        let rule = |limit, secs| Rule::new(Algorithm::Gcra, limit, Duration::from_secs(secs));
        assert_eq!(rule(3, 1).meter_tick_us(), Some(1));
        assert_eq!(rule(50_000, 86_400).meter_tick_us(), Some(1));
        assert_eq!(rule(1_000_000, 30 * 86_400).meter_tick_us(), Some(1000));
        assert_eq!(rule(1_000_000_000, 30 * 86_400).meter_tick_us(), Some(S));
        assert_eq!(rule(2_000_000_000, 30 * 86_400).meter_tick_us(), None);
    }

    #[test]
    fn a_million_a_month_is_admitted_exactly_and_refills_at_its_rate() {
        // 1,000,000 per 30 days: one request every 2.592 s, a burst of 1,000,000 from idle.
        let month = 30 * 86_400 * S;
        let r = Rule::new(
            Algorithm::TokenBucket,
            1_000_000,
            Duration::from_micros(month),
        );
        let t0 = 1_800_000_000 * S + 123_456;
        let mut st = State::Empty;
        let d = run(&r, &mut st, t0, 999_999);
        assert!(d.admitted);
        assert_eq!(d.remaining, 1);
        assert!(run(&r, &mut st, t0, 1).admitted);
        let d = run(&r, &mut st, t0, 1);
        assert!(!d.admitted);
        assert_eq!(d.remaining, 0);
        // The next token is one emission interval (2.592 s) ahead, counted in whole ms.
        assert_eq!(d.retry_after_us, Some(2_592_000 - 456));
        assert_eq!(d.reset_after_us, month - 123_456 + 123_000);
        assert!(!run(&r, &mut st, t0 + 2_592_000 - 457, 1).admitted);
        assert!(run(&r, &mut st, t0 + 2_592_000 - 456, 1).admitted);
        // Saturated for a day, exactly 86,400 / 2.592 = 33,333 more tokens get through.
        let mut n = 0;
        for s in 1..=86_400u64 {
            if run(&r, &mut st, t0 + 2_592_000 - 456 + s * S, 1).admitted {
                n += 1;
            }
        }
        assert_eq!(n, 33_333);
    }

    #[test]
    fn token_bucket_capacity_and_refill() {
        let r = Rule {
            algorithm: Algorithm::TokenBucket,
            limit: 1,
            window: Duration::from_secs(1),
            burst: Some(5),
            period: None,
        };
        let mut st = State::Empty;
        for left in (0..5).rev() {
            assert_eq!(run(&r, &mut st, S, 1).remaining, left);
        }
        assert!(!run(&r, &mut st, S, 1).admitted);
        assert!(run(&r, &mut st, 2 * S, 1).admitted);
        let d = run(&r, &mut st, 2 * S, 0);
        assert!(d.admitted);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.reset_after_us, 5 * S);
        let d = run(&r, &mut st, 2 * S, 6);
        assert_eq!(
            d.retry_after_us,
            Some(S),
            "a cost above capacity reports the window"
        );
    }

    #[test]
    fn rule_check_bounds() {
        assert_eq!(
            Rule::new(Algorithm::Gcra, 0, Duration::from_secs(1)).check(),
            Err(RuleError::ZeroLimit)
        );
        assert_eq!(
            Rule::new(Algorithm::Gcra, 1, Duration::from_micros(10)).check(),
            Err(RuleError::Window)
        );
        assert_eq!(
            Rule::new(Algorithm::Gcra, 1 << 40, Duration::from_secs(86_400)).check(),
            Err(RuleError::TooLarge)
        );
        // A window that no coarser tick divides keeps microseconds, and its bound.
        assert_eq!(
            Rule::new(
                Algorithm::Gcra,
                1_000_000,
                Duration::from_micros(86_400_000_001)
            )
            .check(),
            Err(RuleError::TooLarge)
        );
        // Monthly and yearly meters of realistic size are exact.
        for (limit, days) in [(1_000_000, 30), (1_000_000_000, 30), (100_000_000, 365)] {
            for alg in [Algorithm::TokenBucket, Algorithm::Gcra] {
                let r = Rule::new(alg, limit, Duration::from_secs(days * 86_400));
                assert_eq!(r.check(), Ok(()), "{limit} per {days} days");
            }
        }
        // envoyproxy/ratelimit configs with large daily limits load unchanged (window algorithms).
        for alg in [Algorithm::SlidingWindow, Algorithm::FixedWindow] {
            assert!(
                Rule::new(alg, 100_000_000, Duration::from_secs(86_400))
                    .check()
                    .is_ok()
            );
        }
        assert!(
            Rule::new(
                Algorithm::SlidingWindow,
                1_000_000,
                Duration::from_secs(3600)
            )
            .check()
            .is_ok()
        );
    }
}
