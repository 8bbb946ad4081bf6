//! The script call: its arguments (`script.lua`'s header says what each means) and its reply.

use std::sync::LazyLock;
use std::time::Duration;

use std::io::Write as _;

use super::super::{Hit, Outcome, StoreError};
use crate::algorithm::{Algorithm, Rule, sliding_bucket_us};

/// The script source, and its SHA-1 as Redis computes it.
pub const SCRIPT: &str = include_str!("script.lua");
pub(super) static SCRIPT_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(SCRIPT).get_hash().to_string());

/// What a call asks of the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Evaluate and count.
    Hit = 0,
    /// Undo hits counted by an earlier call at the same `now` (Redis Cluster, cross-slot).
    Refund = 1,
}

/// One script call for the hits `sel` of a request (all, or one Redis Cluster slot's).
pub(super) struct Call<'a, S> {
    pub(super) hits: &'a [Hit<'a>],
    pub(super) keys: &'a [String],
    pub(super) sel: S,
    pub(super) mode: Mode,
    pub(super) now_us: u64,
    /// On Redis' clock; the script changes nothing after it. 0: none.
    pub(super) deadline_us: u64,
}

/// Bytes of one hit's arguments in `ARGV[1]` (struct format `<BBddddd`).
const PER_HIT: usize = 2 + 5 * 8;

impl<'a, S: Iterator<Item = usize> + Clone> Call<'a, S> {
    /// How many hits the call carries.
    pub(super) fn len(&self) -> usize {
        self.sel.clone().count()
    }

    /// The keys, one per hit.
    pub(super) fn keys(&self) -> impl Iterator<Item = &'a str> + use<'a, S> {
        let keys = self.keys;
        self.sel.clone().map(move |i| keys[i].as_str())
    }

    /// `ARGV[1]`, the script's only argument: mode, now, the deadline as Redis' `TIME` would
    /// print it, then seven values per hit (`script.lua`'s header says what each is). Numbers
    /// go as doubles, exact for every quantity a valid rule has (all below 2^52, see
    /// `Rule::check`).
    pub(super) fn argv(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32 + PER_HIT * self.len());
        b.push(self.mode as u8);
        put(&mut b, self.now_us);
        if self.deadline_us > 0 {
            let _ = write!(
                b,
                "{}\0{}\0",
                self.deadline_us / 1_000_000,
                self.deadline_us % 1_000_000
            );
        } else {
            b.extend_from_slice(b"\0\0");
        }
        for i in self.sel.clone() {
            let (h, r) = (&self.hits[i], &self.hits[i].rule);
            b.push(r.store_code());
            b.push(u8::from(h.shadow));
            put(&mut b, r.limit);
            match r.period {
                // A period's bounds take the window's and the capacity's places.
                Some(p) => {
                    let (start, end) = p.bounds(self.now_us);
                    put(&mut b, start);
                    put(&mut b, end);
                }
                None => {
                    put(&mut b, r.window_us());
                    put(&mut b, r.capacity());
                }
            }
            put(&mut b, h.cost);
            put(&mut b, step(r));
        }
        b
    }
}

/// The caller's part of the arithmetic: a sliding window's sub-window width, a meter's tick.
fn step(r: &Rule) -> u64 {
    match (r.period, r.algorithm) {
        (Some(_), _) | (None, Algorithm::FixedWindow) => 0,
        (None, Algorithm::SlidingWindow) => sliding_bucket_us(r),
        // A rule with no exact tick fails Rule::check and is never counted.
        (None, Algorithm::TokenBucket | Algorithm::Gcra) => r.meter_tick_us().unwrap_or(1_000_000),
    }
}

/// A number as the script reads it: a little-endian double.
fn put(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&(v as f64).to_le_bytes());
}

/// What the script answered.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Reply {
    /// Redis' clock when the script ran, in µs.
    pub(super) redis_us: i64,
    /// One per hit; `None` when the call came after its deadline (nothing changed) or was a
    /// refund.
    pub(super) outcomes: Option<Vec<Outcome>>,
}

/// The reply's integers: Redis' clock in µs (from its two decimal strings), then the
/// little-endian doubles after them (each an integer below 2^53, so exact).
pub(super) fn values(bytes: &[u8]) -> Result<Vec<i64>, StoreError> {
    let bad = |what: &str| StoreError::Unavailable(format!("script reply: {what}"));
    let mut fields = bytes.splitn(3, |&b| b == 0);
    let (Some(sec), Some(usec), Some(rest)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(bad("no clock"));
    };
    let num = |s: &[u8]| {
        std::str::from_utf8(s)
            .ok()
            .filter(|s| (1..=16).contains(&s.len()))
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| bad("clock not a number"))
    };
    let redis_us = num(sec)? * 1_000_000 + num(usec)?;
    if !rest.len().is_multiple_of(8) {
        return Err(bad(&format!("{} bytes after the clock", rest.len())));
    }
    let mut out = Vec::with_capacity(1 + rest.len() / 8);
    out.push(redis_us);
    for c in rest.chunks_exact(8) {
        let v = f64::from_le_bytes(c.try_into().expect("8 bytes"));
        if v.fract() != 0.0 || v.abs() >= (1u64 << 53) as f64 {
            return Err(bad("value out of range"));
        }
        out.push(v as i64);
    }
    Ok(out)
}

/// Reads the reply's integers: Redis' clock, then four per hit.
pub(super) fn reply(values: &[i64], hits: usize, mode: Mode) -> Result<Reply, StoreError> {
    let Some((&redis_us, rest)) = values.split_first() else {
        return Err(StoreError::Unavailable("empty script reply".into()));
    };
    if mode == Mode::Refund || rest.is_empty() {
        return Ok(Reply {
            redis_us,
            outcomes: None,
        });
    }
    if rest.len() != 4 * hits {
        return Err(StoreError::Unavailable(format!(
            "unexpected script reply of {} values",
            values.len()
        )));
    }
    let us = |v: i64| Duration::from_micros(v.max(0) as u64);
    let outcomes = rest
        .chunks_exact(4)
        .map(|v| Outcome {
            admitted: v[0] == 1,
            remaining: v[1].max(0) as u64,
            reset_after: us(v[2]),
            retry_after: (v[3] >= 0).then(|| us(v[3])),
            cached: false,
        })
        .collect();
    Ok(Reply {
        redis_us,
        outcomes: Some(outcomes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_the_clock_then_four_values_per_hit() {
        let r = reply(&[7, 1, 9, 1000, -1, 0, 0, 5, 5], 2, Mode::Hit).unwrap();
        assert_eq!(r.redis_us, 7);
        let o = r.outcomes.unwrap();
        assert!(o[0].admitted && !o[1].admitted);
        assert_eq!(o[1].retry_after, Some(Duration::from_micros(5)));
        assert_eq!(
            reply(&[7], 2, Mode::Hit).unwrap().outcomes,
            None,
            "late: nothing changed"
        );
        assert!(reply(&[7, 1, 2], 1, Mode::Hit).is_err());
        assert!(reply(&[], 1, Mode::Hit).is_err());
        assert_eq!(reply(&[7], 1, Mode::Refund).unwrap().outcomes, None);
    }

    #[test]
    fn argv_packs_the_header_then_seven_values_per_hit() {
        let rule = Rule::new(Algorithm::SlidingWindow, 5, Duration::from_secs(1));
        let hits = [Hit {
            key: "k",
            rule,
            cost: 2,
            shadow: true,
        }];
        let keys = ["t:{k}".to_string()];
        let mut call = Call {
            hits: &hits,
            keys: &keys,
            sel: 0..1,
            mode: Mode::Hit,
            now_us: 1_800_000_000_000_123,
            deadline_us: 1_800_000_000_050_007,
        };
        let d = |v: f64| v.to_le_bytes();
        let mut want = vec![0];
        want.extend(d(1.800_000_000_000_123e15));
        want.extend(b"1800000000\x0050007\x00");
        want.extend([0, 1]);
        for v in [5.0, 1e6, 5.0, 2.0, 1e5] {
            want.extend(d(v));
        }
        assert_eq!(call.argv(), want);
        assert_eq!(call.keys().collect::<Vec<_>>(), ["t:{k}"]);
        call.deadline_us = 0;
        assert_eq!(
            &call.argv()[9..11],
            b"\0\0",
            "no deadline: two empty strings"
        );
    }

    #[test]
    fn reply_values_are_the_clock_then_little_endian_doubles() {
        let mut bytes = b"1800000000\x0012\0".to_vec();
        for v in [1.0f64, -1.0, 0.0, 4e15] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let want = [1_800_000_000_000_012, 1, -1, 0, 4_000_000_000_000_000];
        assert_eq!(values(&bytes).unwrap(), want);
        assert_eq!(values(b"7\x000\0").unwrap(), [7_000_000], "the clock alone");
        assert!(
            values(&bytes[..bytes.len() - 1]).is_err(),
            "not whole doubles"
        );
        assert!(values(b"17\0").is_err(), "no microseconds");
        assert!(values(b"x\x001\0").is_err());
        let mut half = b"1\x001\0".to_vec();
        half.extend_from_slice(&0.5f64.to_le_bytes());
        assert!(values(&half).is_err());
        let mut nan = b"1\x001\0".to_vec();
        nan.extend_from_slice(&f64::NAN.to_le_bytes());
        assert!(values(&nan).is_err());
        assert!(values(&[]).is_err());
    }
}
