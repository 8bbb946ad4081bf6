//! The path the policy matches: the one an upstream acts on, whatever Envoy in front did.
//!
//! Upstreams differ in how they read a path: Tomcat, Spring and Jetty drop `;parameters` from
//! each segment, most servers percent-decode unreserved characters and merge repeated slashes,
//! some treat `\` as `/`. The policy therefore matches a normalised form (unreserved characters
//! decoded, parameters dropped, slashes merged), and a path with a dot segment in any spelling
//! (`..`, `%2e%2e`, `..;x`, `.%2e%3b`, `..\`) is refused outright: after Envoy's own
//! normalisation none is left in a legitimate request, and each could resolve to a route other
//! than the one the policy (or Envoy's route table) chose.

use std::borrow::Cow;

/// The normalised path, or `Err` when it holds a dot segment.
pub(super) fn normalise(path: &str) -> Result<Cow<'_, str>, ()> {
    if has_dot_segment(path) {
        return Err(());
    }
    if !path.contains(['%', ';']) && !path.contains("//") {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path);
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len() - 1;
    let mut out = String::with_capacity(decoded.len());
    for (i, segment) in segments.iter().enumerate() {
        let segment = segment.split(';').next().unwrap_or_default();
        if i == 0 {
            out.push_str(segment);
        } else if !segment.is_empty() || i == last {
            // Empty segments in the middle are repeated slashes: merged.
            out.push('/');
            out.push_str(segment);
        }
    }
    Ok(Cow::Owned(out))
}

/// Whether some segment, fully percent-decoded with `\` read as `/` and its `;parameters`
/// dropped, is `.` or `..`.
fn has_dot_segment(path: &str) -> bool {
    if !path.contains(['.', '%', '\\']) {
        return false;
    }
    let decoded = if path.contains('%') {
        Cow::Owned(decode_all(path))
    } else {
        Cow::Borrowed(path)
    };
    decoded
        .split(['/', '\\'])
        .map(|s| s.split(';').next().unwrap_or_default())
        .any(|s| s == "." || s == "..")
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Percent-decodes every valid escape (bytes as Latin-1 is enough to find `.` `/` `\` `;`).
fn decode_all(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            out.push(char::from(h * 16 + l));
            i += 3;
            continue;
        }
        out.push(char::from(b[i]));
        i += 1;
    }
    out
}

/// Percent-decodes RFC 3986 unreserved characters only (ALPHA DIGIT `-` `.` `_` `~`), which
/// mean the same encoded or not; reserved ones (`%2F`, `%3B`, ...) stay as they are.
fn decode_unreserved(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            let c = h * 16 + l;
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                out.push(c);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    // Only ASCII bytes replaced ASCII escapes: still UTF-8.
    Cow::Owned(String::from_utf8(out).expect("ASCII-for-ASCII replacement keeps UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_in_any_spelling_are_refused() {
        for p in [
            "/public/../admin",
            "/public/..;/admin/x",
            "/public/%2e%2e;/admin",
            "/public/%2E%2e%3b/admin",
            "/public/.%2e/admin",
            "/public/..;jsessionid=1/admin",
            "/public/..\\admin",
            "/public%2f..%2fadmin",
            "/public%5c..%5cadmin",
            "/./admin",
            "/admin/.",
            "/x/..",
        ] {
            assert_eq!(normalise(p), Err(()), "{p}");
        }
    }

    #[test]
    fn the_policy_sees_what_the_upstream_acts_on() {
        for (p, want) in [
            ("/admin/x", "/admin/x"),
            ("/admin;jsessionid=1/x", "/admin/x"),
            ("/admin/x;v=2", "/admin/x"),
            ("/%61dmin/%7Euser", "/admin/~user"),
            ("//admin///x", "/admin/x"),
            ("/a%2Fb", "/a%2Fb"),
            ("/files/report.v1..txt", "/files/report.v1..txt"),
            ("/...", "/..."),
            ("/", "/"),
            ("/x/", "/x/"),
            ("/%zz", "/%zz"),
        ] {
            assert_eq!(normalise(p).as_deref(), Ok(want), "{p}");
        }
    }
}
