//! RESP2, as much as the store speaks: commands encoded straight into a buffer, replies parsed
//! incrementally with bounds that garbage cannot push into unbounded allocation.

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Nil,
    Int(i64),
    Simple(String),
    Bulk(Vec<u8>),
    Array(Vec<Value>),
    /// An error reply (`-ERR ...`): a complete answer, so the connection stays usable.
    Error(String),
}

impl Value {
    /// What kind of reply this is, for error messages (never its content).
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Int(_) => "an integer",
            Value::Simple(_) => "a status",
            Value::Bulk(_) => "a string",
            Value::Array(_) => "an array",
            Value::Error(_) => "an error",
        }
    }

    /// A bulk or status reply as text.
    pub(super) fn text(&self) -> Option<&str> {
        match self {
            Value::Bulk(b) => std::str::from_utf8(b).ok(),
            Value::Simple(s) => Some(s),
            _ => None,
        }
    }
}

/// Writes a command whose arguments are all plain strings.
pub(super) fn command(buf: &mut Vec<u8>, args: &[&[u8]]) {
    array(buf, args.len());
    for a in args {
        bulk(buf, a);
    }
}

/// Writes a RESP array header of `n` elements.
pub(super) fn array(buf: &mut Vec<u8>, n: usize) {
    head(buf, b'*', n);
}

/// Writes one bulk string.
pub(super) fn bulk(buf: &mut Vec<u8>, bytes: &[u8]) {
    head(buf, b'$', bytes.len());
    buf.extend_from_slice(bytes);
    buf.extend_from_slice(b"\r\n");
}

/// A type byte, a length and CRLF: the head of an array or a bulk string. Written with itoa,
/// not `write!`: every counter call writes several (`core::fmt` showed in the worker's profile).
pub(super) fn head(buf: &mut Vec<u8>, kind: u8, n: usize) {
    let mut digits = itoa::Buffer::new();
    buf.push(kind);
    buf.extend_from_slice(digits.format(n).as_bytes());
    buf.extend_from_slice(b"\r\n");
}

/// Writes an integer as a bulk string (how commands carry numbers).
pub(super) fn int(buf: &mut Vec<u8>, v: impl itoa::Integer) {
    let mut digits = itoa::Buffer::new();
    bulk(buf, digits.format(v).as_bytes());
}

/// Most nesting and element counts accepted in a reply: far beyond any script reply, small
/// enough that garbage cannot make the parser allocate without bound.
const MAX_DEPTH: usize = 8;
const MAX_LEN: i64 = 1 << 24;

/// Parses one RESP2 value from the start of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the value and the bytes it used.
pub(super) fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Value, usize)>, String> {
    if depth > MAX_DEPTH {
        return Err("reply nested too deeply".into());
    }
    let Some(end) = find_crlf(buf, at) else {
        return Ok(None);
    };
    if end == at {
        return Err("empty line".into());
    }
    let line = &buf[at + 1..end];
    let next = end + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not a number: {:?}", String::from_utf8_lossy(line)))
    };
    Ok(Some(match buf[at] {
        b'+' => (Value::Simple(text()), next),
        b'-' => (Value::Error(text()), next),
        b':' => (Value::Int(number()?), next),
        b'$' => {
            let len = number()?;
            if len == -1 {
                return Ok(Some((Value::Nil, next)));
            }
            if !(0..=MAX_LEN * 32).contains(&len) {
                return Err(format!("bad bulk length {len}"));
            }
            let stop = next + len as usize;
            if buf.len() < stop + 2 {
                return Ok(None);
            }
            if &buf[stop..stop + 2] != b"\r\n" {
                return Err("bulk string not terminated".into());
            }
            (Value::Bulk(buf[next..stop].to_vec()), stop + 2)
        }
        b'*' => {
            let len = number()?;
            if len == -1 {
                return Ok(Some((Value::Nil, next)));
            }
            if !(0..=MAX_LEN).contains(&len) {
                return Err(format!("bad array length {len}"));
            }
            let mut items = Vec::with_capacity((len as usize).min(64));
            let mut pos = next;
            for _ in 0..len {
                match parse_at(buf, pos, depth + 1)? {
                    Some((v, p)) => {
                        items.push(v);
                        pos = p;
                    }
                    None => return Ok(None),
                }
            }
            (Value::Array(items), pos)
        }
        other => return Err(format!("unknown type byte {other:#04x}")),
    }))
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> Value {
        let (v, used) = parse(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        v
    }

    #[test]
    fn parses_every_reply_kind() {
        assert_eq!(whole(b"+OK\r\n"), Value::Simple("OK".into()));
        assert_eq!(
            whole(b"-NOSCRIPT No matching script\r\n"),
            Value::Error("NOSCRIPT No matching script".into())
        );
        assert_eq!(whole(b":-42\r\n"), Value::Int(-42));
        assert_eq!(whole(b"$3\r\na\r\n\r\n"), Value::Bulk(b"a\r\n".to_vec()));
        assert_eq!(whole(b"$-1\r\n"), Value::Nil);
        assert_eq!(whole(b"*-1\r\n"), Value::Nil);
        assert_eq!(
            whole(b"*3\r\n:1\r\n*1\r\n$0\r\n\r\n:3\r\n"),
            Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![Value::Bulk(Vec::new())]),
                Value::Int(3)
            ])
        );
    }

    #[test]
    fn waits_for_every_byte_of_a_reply() {
        let full = b"*2\r\n:10\r\n$5\r\nhello\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(full).unwrap().is_some());
    }

    #[test]
    fn rejects_what_is_not_resp() {
        for bad in [
            &b"HTTP/1.1 400\r\n"[..],
            b":12x\r\n",
            b"$-5\r\n",
            b"*99999999999\r\n",
            b"$1\r\nab\r\n",
            b"\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn encodes_commands_as_resp_arrays() {
        let mut b = Vec::new();
        array(&mut b, 3);
        bulk(&mut b, b"SELECT");
        int(&mut b, 3u8);
        int(&mut b, -7i64);
        assert_eq!(b, b"*3\r\n$6\r\nSELECT\r\n$1\r\n3\r\n$2\r\n-7\r\n");
    }
}
