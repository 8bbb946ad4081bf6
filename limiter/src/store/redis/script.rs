//! The script call: its arguments (`script.lua`'s header says what each means) and its reply.

use std::sync::LazyLock;
use std::time::Duration;

use super::super::{Hit, Outcome, StoreError};
use super::pipeline::ScriptPart;
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

    /// `ARGV[1]` of a call carrying this request alone: the count of requests (1), then
    /// [`Call::request_args`].
    pub(super) fn argv(&self) -> Result<Vec<u8>, StoreError> {
        let args = self.request_args()?;
        let mut b = Vec::with_capacity(2 + args.len());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&args);
        Ok(b)
    }

    /// This request's share of `ARGV[1]`: mode, its number of keys, now, the deadline on
    /// Redis' clock (0: none), then seven values per hit (`script.lua`'s header says what
    /// each is). Numbers go as doubles, exact for every quantity a valid rule has (all below
    /// 2^52, see `Rule::check`).
    pub(super) fn request_args(&self) -> Result<Vec<u8>, StoreError> {
        let n = u16::try_from(self.len())
            .map_err(|_| StoreError::Unavailable(format!("{} hits in one request", self.len())))?;
        let mut b = Vec::with_capacity(32 + PER_HIT * usize::from(n));
        b.push(self.mode as u8);
        b.extend_from_slice(&n.to_le_bytes());
        put(&mut b, self.now_us);
        put(&mut b, self.deadline_us);
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
        Ok(b)
    }

    /// What this request's part of the reply holds (see [`split`]).
    pub(super) fn shape(&self) -> Shape {
        Shape {
            hits: self.len(),
            mode: self.mode,
        }
    }
}

/// What one request's part of a reply holds: after its flag byte, four doubles per hit if it
/// was a hit evaluated in time, nothing otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape {
    pub(super) hits: usize,
    pub(super) mode: Mode,
}

/// Splits the reply of a call carrying several requests (`shapes`, in the order of the call)
/// into one reply per request, each as a call of its own would have had it: Redis' clock, then
/// its doubles (none if it was a refund or ran late).
pub(super) fn split(
    bytes: &[u8],
    shapes: impl ExactSizeIterator<Item = Shape>,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let bad = |what: &str| StoreError::Unavailable(format!("script reply: {what}"));
    let clock_len = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == 0)
        .nth(1)
        .map(|(i, _)| i + 1)
        .ok_or_else(|| bad("no clock"))?;
    let (clock, mut rest) = bytes.split_at(clock_len);
    let mut out = Vec::with_capacity(shapes.len());
    for s in shapes {
        let Some((&flag, after)) = rest.split_first() else {
            return Err(bad("fewer requests than sent"));
        };
        let len = match (flag, s.mode) {
            (0, _) => 0,
            (1, Mode::Hit) => 32 * s.hits,
            _ => return Err(bad("bad request flag")),
        };
        if after.len() < len {
            return Err(bad("a request's values cut short"));
        }
        let (mine, next) = after.split_at(len);
        let mut one = Vec::with_capacity(clock.len() + len);
        one.extend_from_slice(clock);
        one.extend_from_slice(mine);
        out.push(one);
        rest = next;
    }
    if !rest.is_empty() {
        return Err(bad("more requests than sent"));
    }
    Ok(out)
}

/// Writes one script call carrying every request of `parts`, in order: `verb` is `EVALSHA`
/// (`body` the SHA) or `EVAL` (`body` the script).
pub(super) fn encode_merged<'p>(
    buf: &mut Vec<u8>,
    verb: &[u8],
    body: &[u8],
    parts: impl Iterator<Item = &'p ScriptPart> + Clone,
) {
    let (mut requests, mut keys, mut args) = (0u16, 0usize, 0usize);
    for p in parts.clone() {
        requests += 1;
        keys += p.shape.hits;
        args += p.args.len();
    }
    super::resp::array(buf, 4 + keys);
    super::resp::bulk(buf, verb);
    super::resp::bulk(buf, body);
    super::resp::int(buf, keys);
    for p in parts.clone() {
        buf.extend_from_slice(&p.keys);
    }
    super::resp::head(buf, b'$', 2 + args);
    buf.extend_from_slice(&requests.to_le_bytes());
    for p in parts {
        buf.extend_from_slice(&p.args);
    }
    buf.extend_from_slice(b"\r\n");
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
        let mut want = vec![1, 0, 0, 1, 0];
        want.extend(d(1.800_000_000_000_123e15));
        want.extend(d(1.800_000_000_050_007e15));
        want.extend([0, 1]);
        for v in [5.0, 1e6, 5.0, 2.0, 1e5] {
            want.extend(d(v));
        }
        assert_eq!(call.argv().unwrap(), want);
        assert_eq!(call.request_args().unwrap(), want[2..]);
        assert_eq!(call.keys().collect::<Vec<_>>(), ["t:{k}"]);
        call.deadline_us = 0;
        assert_eq!(call.argv().unwrap()[13..21], d(0.0), "no deadline: zero");
    }

    #[test]
    fn a_merged_reply_splits_into_each_request_s_own() {
        let clock = b"1800000000\x0012\0";
        let d = |v: f64| v.to_le_bytes();
        let (hit1, late, refund, hit2) = (
            Shape {
                hits: 1,
                mode: Mode::Hit,
            },
            Shape {
                hits: 2,
                mode: Mode::Hit,
            },
            Shape {
                hits: 1,
                mode: Mode::Refund,
            },
            Shape {
                hits: 2,
                mode: Mode::Hit,
            },
        );
        let mut bytes = clock.to_vec();
        bytes.push(1);
        for v in [1.0, 4.0, 10.0, -1.0] {
            bytes.extend(d(v));
        }
        bytes.extend([0, 0, 1]);
        for v in [1.0, 3.0, 10.0, -1.0, 0.0, 0.0, 7.0, 7.0] {
            bytes.extend(d(v));
        }
        let parts = split(&bytes, [hit1, late, refund, hit2].into_iter()).unwrap();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            values(&parts[0]).unwrap(),
            [1_800_000_000_000_012, 1, 4, 10, -1]
        );
        assert_eq!(parts[1], clock, "late: the clock alone");
        assert_eq!(parts[2], clock, "refund: the clock alone");
        assert_eq!(values(&parts[3]).unwrap()[1..], [1, 3, 10, -1, 0, 0, 7, 7]);
        assert!(
            split(&bytes, [hit1, late, refund].into_iter()).is_err(),
            "one too few"
        );
        assert!(
            split(&bytes, [hit1, late, refund, hit2, hit1].into_iter()).is_err(),
            "one too many"
        );
        assert!(
            split(
                &bytes[..bytes.len() - 8],
                [hit1, late, refund, hit2].into_iter()
            )
            .is_err()
        );
        assert!(split(b"1\0", [hit1].into_iter()).is_err(), "no clock");
        let mut bad_flag = clock.to_vec();
        bad_flag.push(1);
        assert!(
            split(&bad_flag, [refund].into_iter()).is_err(),
            "a refund has no values"
        );
    }

    #[test]
    fn a_merged_call_is_one_evalsha_with_every_request_s_keys_and_arguments_in_order() {
        let part = |keys: &[u8], hits, args: &[u8]| ScriptPart {
            keys: keys.to_vec(),
            args: args.to_vec(),
            shape: Shape {
                hits,
                mode: Mode::Hit,
            },
        };
        let parts = [
            part(b"$1\r\na\r\n", 1, b"AA"),
            part(b"$1\r\nb\r\n$1\r\nc\r\n", 2, b"BBB"),
        ];
        let mut buf = Vec::new();
        encode_merged(&mut buf, b"EVALSHA", SCRIPT_SHA.as_bytes(), parts.iter());
        let want = format!(
            "*7\r\n$7\r\nEVALSHA\r\n$40\r\n{}\r\n$1\r\n3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$7\r\n\x02\x00AABBB\r\n",
            *SCRIPT_SHA
        );
        assert_eq!(String::from_utf8_lossy(&buf), want);
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

    /// A merged call answers each request, and leaves every counter, exactly as the same
    /// requests sent one call each in the same order: checked byte for byte on a real Redis,
    /// over requests that mix every algorithm, shared and repeated keys, one and two hits,
    /// refunds, costs of 0 to beyond the limit and callers whose clocks lag.
    #[test]
    fn a_merged_call_answers_and_counts_as_its_requests_one_by_one() {
        let server = tollgate_common::testing::RedisServer::start();
        let mut conn = redis::Client::open(server.url())
            .unwrap()
            .get_connection()
            .unwrap();
        let algs = [
            Algorithm::SlidingWindow,
            Algorithm::FixedWindow,
            Algorithm::TokenBucket,
            Algorithm::Gcra,
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        // (algorithm, key) per hit, cost, mode, now.
        type Request = (Vec<(usize, String)>, u64, Mode, u64);
        let key = |a: usize, j: u64| format!("{a}:{j}");
        let mut t = 1_800_000_000_000_000u64;
        let mut requests: Vec<Request> = Vec::new();
        for _ in 0..600 {
            let a = rand(4) as usize;
            // Mostly the algorithm's shared key, sometimes one of its others.
            let mut hits = vec![(a, key(a, if rand(4) == 0 { 1 + rand(2) } else { 0 }))];
            if rand(10) < 3 {
                let b = rand(4) as usize;
                hits.push((b, key(b, rand(3))));
            }
            let cost = [1, 1, 1, 1, 0, 2, 6][rand(7) as usize];
            let mode = if rand(20) == 0 {
                Mode::Refund
            } else {
                Mode::Hit
            };
            t += rand(60_000);
            let now = if rand(7) == 0 { t - rand(250_000) } else { t };
            requests.push((hits, cost, mode, now));
        }
        let rule = |a: usize| Rule::new(algs[a], 5, Duration::from_secs(1));
        let args = |(hits, cost, mode, now): &Request, ns: &str| {
            let rules: Vec<Rule> = hits.iter().map(|(a, _)| rule(*a)).collect();
            let keys: Vec<String> = hits.iter().map(|(_, k)| format!("{ns}:{k}")).collect();
            let hits: Vec<Hit<'_>> = rules
                .iter()
                .map(|r| Hit {
                    key: "",
                    rule: *r,
                    cost: *cost,
                    shadow: false,
                })
                .collect();
            let call = Call {
                hits: &hits,
                keys: &keys,
                sel: 0..hits.len(),
                mode: *mode,
                now_us: *now,
                deadline_us: 0,
            };
            (keys.clone(), call.request_args().unwrap(), call.shape())
        };
        let eval = |conn: &mut redis::Connection, reqs: &[&Request], ns: &str| {
            let (mut keys, mut argv, mut shapes) = (vec![], vec![], vec![]);
            argv.extend_from_slice(&(reqs.len() as u16).to_le_bytes());
            for r in reqs {
                let (k, a, s) = args(r, ns);
                keys.extend(k);
                argv.extend(a);
                shapes.push(s);
            }
            let bytes: Vec<u8> = redis::cmd("EVAL")
                .arg(SCRIPT)
                .arg(keys.len())
                .arg(&keys)
                .arg(argv)
                .query(conn)
                .unwrap();
            // Each request's part, without Redis' clock.
            split(&bytes, shapes.into_iter())
                .unwrap()
                .into_iter()
                .map(|p| p[p.iter().position(|b| *b == 0).unwrap() + 1..].to_vec())
                .map(|p| p[p.iter().position(|b| *b == 0).unwrap() + 1..].to_vec())
                .collect::<Vec<_>>()
        };
        let mut merged = Vec::new();
        let mut rest: &[Request] = &requests;
        while !rest.is_empty() {
            let (now, later) = rest.split_at((1 + rand(8) as usize).min(rest.len()));
            merged.extend(eval(&mut conn, &now.iter().collect::<Vec<_>>(), "m"));
            rest = later;
        }
        let alone: Vec<Vec<u8>> = requests
            .iter()
            .flat_map(|r| eval(&mut conn, &[r], "a"))
            .collect();
        for (i, (m, a)) in merged.iter().zip(&alone).enumerate() {
            assert_eq!(m, a, "request {i}: {:?}", requests[i]);
        }
        for a in 0..4 {
            for j in 0..3 {
                let get = |conn: &mut redis::Connection, ns: &str| -> (Option<Vec<u8>>, i64) {
                    let k = format!("{ns}:{}", key(a, j));
                    let v = redis::cmd("GET").arg(&k).query(conn).unwrap();
                    (v, redis::cmd("PTTL").arg(&k).query(conn).unwrap())
                };
                let ((vm, tm), (va, ta)) = (get(&mut conn, "m"), get(&mut conn, "a"));
                assert_eq!(vm, va, "counter {}", key(a, j));
                assert!(
                    (tm - ta).abs() < 2_000,
                    "{}: pttl {tm} against {ta}",
                    key(a, j)
                );
            }
        }
    }
}
