//! The script call: its arguments (`script.lua`'s header says what each means) and its reply.

use std::sync::LazyLock;
use std::time::Duration;

use super::super::{Hit, Outcome, StoreError};

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

/// One argument of a script call.
pub(super) enum Arg<'a> {
    Str(&'a str),
    Num(u64),
}

/// One script call for the hits `sel` of a request (all, or one Redis Cluster slot's).
pub(super) struct Call<'a, S> {
    pub(super) hits: &'a [Hit<'a>],
    pub(super) keys: &'a [String],
    pub(super) sel: S,
    pub(super) mode: Mode,
    pub(super) now_us: u64,
    /// On Redis' clock; the script changes nothing after it.
    pub(super) deadline_us: u64,
}

/// Arguments after the script body or SHA, besides the key count.
pub(super) const FIXED_ARGS: usize = 3;
/// Arguments per hit.
pub(super) const PER_HIT: usize = 6;

impl<'a, S: Iterator<Item = usize> + Clone> Call<'a, S> {
    /// How many hits the call carries.
    pub(super) fn len(&self) -> usize {
        self.sel.clone().count()
    }

    /// Every argument after the body or SHA: the key count, the keys, mode, now, deadline, then
    /// six per hit.
    pub(super) fn args(&self, mut arg: impl FnMut(Arg<'a>)) {
        arg(Arg::Num(self.len() as u64));
        for i in self.sel.clone() {
            arg(Arg::Str(&self.keys[i]));
        }
        arg(Arg::Num(self.mode as u64));
        arg(Arg::Num(self.now_us));
        arg(Arg::Num(self.deadline_us));
        for i in self.sel.clone() {
            let h = &self.hits[i];
            arg(Arg::Num(h.rule.store_code().into()));
            arg(Arg::Num(h.rule.limit));
            match h.rule.period {
                // The script does no calendar math: a period's bounds take the window's and
                // the capacity's places.
                Some(p) => {
                    let (start, end) = p.bounds(self.now_us);
                    arg(Arg::Num(start));
                    arg(Arg::Num(end));
                }
                None => {
                    arg(Arg::Num(h.rule.window_us()));
                    arg(Arg::Num(h.rule.capacity()));
                }
            }
            arg(Arg::Num(h.cost));
            arg(Arg::Num(u8::from(h.shadow).into()));
        }
    }
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

/// The reply's integers, from the string of little-endian doubles the script answers (each
/// an integer below 2^53, so exact).
pub(super) fn values(bytes: &[u8]) -> Result<Vec<i64>, StoreError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(StoreError::Unavailable(format!(
            "script reply of {} bytes",
            bytes.len()
        )));
    }
    bytes
        .chunks_exact(8)
        .map(|c| {
            let v = f64::from_le_bytes(c.try_into().expect("8 bytes"));
            if v.fract() == 0.0 && v.abs() < (1u64 << 53) as f64 {
                Ok(v as i64)
            } else {
                Err(StoreError::Unavailable(
                    "script reply value out of range".into(),
                ))
            }
        })
        .collect()
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
    fn reply_values_are_little_endian_doubles() {
        let bytes: Vec<u8> = [1.8e15, 1.0, -1.0, 0.0]
            .iter()
            .flat_map(|v: &f64| v.to_le_bytes())
            .collect();
        assert_eq!(values(&bytes).unwrap(), [1_800_000_000_000_000, 1, -1, 0]);
        assert!(values(&bytes[1..]).is_err(), "not whole doubles");
        assert!(values(&0.5f64.to_le_bytes()).is_err());
        assert!(values(&f64::NAN.to_le_bytes()).is_err());
        assert!(values(&[]).unwrap().is_empty());
    }
}
