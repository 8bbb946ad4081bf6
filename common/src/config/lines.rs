//! Dotted field paths (`policy.rules[2].identity[0]`) as steps, and the line such a path sits
//! on in a YAML text, so that every error can point at its line.

use std::fmt::Write;

/// One step of a field path: a mapping key or a list index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Step {
    Key(String),
    Index(usize),
}

/// `a.b[2].c` as steps; a malformed index is dropped.
pub(crate) fn parse(field: &str) -> Vec<Step> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let mut rest = part;
        if let Some(b) = rest.find('[') {
            if b > 0 {
                out.push(Step::Key(rest[..b].to_string()));
            }
            rest = &rest[b..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(end) = stripped.find(']') else { break };
                if let Ok(n) = stripped[..end].parse() {
                    out.push(Step::Index(n));
                }
                rest = &stripped[end + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Step::Key(rest.to_string()));
        }
    }
    out
}

/// Steps back as `a.b[2].c`.
pub(crate) fn render(steps: &[Step]) -> String {
    let mut out = String::new();
    for s in steps {
        match s {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

/// Where the walk through the text stands after a step.
#[derive(Clone, Copy)]
enum At {
    /// At the top of the document.
    Root,
    /// On the line of a key at `indent`; `inline` when its value follows on the same line.
    Key {
        line: usize,
        indent: usize,
        inline: bool,
    },
    /// On the line of a list item whose `-` is at `indent`.
    Item {
        line: usize,
        indent: usize,
        inline: bool,
    },
}

impl At {
    fn line(self) -> Option<usize> {
        match self {
            At::Root => None,
            At::Key { line, .. } | At::Item { line, .. } => Some(line + 1),
        }
    }
}

/// A non-blank, non-comment line: its indentation and its text.
fn content(line: &str) -> Option<(usize, &str)> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        None
    } else {
        Some((line.len() - trimmed.len(), trimmed))
    }
}

fn is_item(trimmed: &str) -> bool {
    trimmed == "-" || trimmed.starts_with("- ")
}

/// The text of a line after any `- ` markers, and its column.
fn body(indent: usize, trimmed: &str) -> (usize, &str) {
    let mut col = indent;
    let mut rest = trimmed;
    while let Some(r) = rest.strip_prefix("- ") {
        let r2 = r.trim_start();
        col += rest.len() - r2.len();
        rest = r2;
    }
    (col, rest)
}

/// Whether `text` starts with the key `k` (plain or quoted); then whether a value follows on
/// the same line.
fn key_here(text: &str, k: &str) -> Option<bool> {
    let rest = [format!("{k}:"), format!("\"{k}\":"), format!("'{k}':")]
        .into_iter()
        .find_map(|p| text.strip_prefix(p.as_str()).map(str::to_string))?;
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    let value = rest.trim();
    Some(!(value.is_empty() || value.starts_with('#')))
}

/// Best-effort line of a dotted field path (`a.b[2].c`) in YAML text: follows keys by
/// indentation and block list items by their `- ` markers. Items of a flow list
/// (`[a, b]`) and keys of a flow mapping are reported on the line that opens them. When the
/// path goes deeper than the text (a default, a missing field), the deepest line found.
pub fn line_of(text: &str, field: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut at = At::Root;
    for step in parse(field) {
        let next = match (at, &step) {
            (At::Key { inline: true, .. } | At::Item { inline: true, .. }, _) => None,
            (_, Step::Key(k)) => find_key(&lines, at, k),
            (At::Key { line, indent, .. }, Step::Index(n)) => {
                find_item(&lines, line + 1, indent, *n)
            }
            (_, Step::Index(_)) => None,
        };
        match next {
            Some(n) => at = n,
            None => break,
        }
    }
    at.line()
}

/// The key `k` directly inside the node `at`.
fn find_key(lines: &[&str], at: At, k: &str) -> Option<At> {
    // Where the block starts, and the indentation its lines must exceed.
    let (start, parent) = match at {
        At::Root => (0, None),
        At::Key { line, indent, .. } => (line + 1, Some(indent)),
        // The item's own line holds its first key (`- name: a`).
        At::Item { line, indent, .. } => (line, Some(indent)),
    };
    let mut child = None;
    for (i, l) in lines.iter().enumerate().skip(start) {
        let Some((indent, trimmed)) = content(l) else {
            continue;
        };
        let first_of_item = matches!(at, At::Item { line, .. } if line == i);
        if !first_of_item && parent.is_some_and(|p| indent <= p) {
            return None;
        }
        let (col, text) = if first_of_item {
            body(indent, trimmed)
        } else {
            (indent, trimmed)
        };
        let level = *child.get_or_insert(col);
        if col != level {
            continue;
        }
        if let Some(inline) = key_here(text, k) {
            return Some(At::Key {
                line: i,
                indent: col,
                inline,
            });
        }
    }
    None
}

/// Item `n` of the block list that is the value of the key at `key_indent`, searched from
/// line `start` (a block list may sit at its key's own indentation).
fn find_item(lines: &[&str], start: usize, key_indent: usize, n: usize) -> Option<At> {
    let mut item_indent = None;
    let mut count = 0;
    for (i, l) in lines.iter().enumerate().skip(start) {
        let Some((indent, trimmed)) = content(l) else {
            continue;
        };
        let item = is_item(trimmed);
        match item_indent {
            None if !item || indent < key_indent => return None,
            None => item_indent = Some(indent),
            Some(ii) if indent < ii || (indent == ii && !item) => return None,
            Some(ii) if indent > ii => continue,
            Some(_) => {}
        }
        if count == n {
            let (_, text) = body(indent, trimmed);
            // `- jwt` is a scalar item; `- name: a` opens a mapping that continues below.
            let inline = !text.is_empty() && !text.contains(':') && text != "-";
            return Some(At::Item {
                line: i,
                indent,
                inline,
            });
        }
        count += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "\
policy:
  identity_order: [jwt, api_key]
  rules:
    # comment
    - name: first
      methods: [GET, BREW]
      identity:
        - jwt
        - bogus
    - name: second
      methods:
      - GET
      - BREW
      identity: [api_key, nope]
      path: {prefix: /x}
jwt:
  issuers:
  - issuer: a
    audiences: []
";

    #[test]
    fn paths_round_trip() {
        for p in ["a", "a.b[2].c", "rules[0][1]", "x.y"] {
            assert_eq!(render(&parse(p)), p);
        }
    }

    #[test]
    fn keys_and_block_list_items_get_their_own_line() {
        for (field, line) in [
            ("policy", 1),
            ("policy.identity_order", 2),
            ("policy.rules", 3),
            ("policy.rules[0]", 5),
            ("policy.rules[0].name", 5),
            ("policy.rules[0].identity[0]", 8),
            ("policy.rules[0].identity[1]", 9),
            ("policy.rules[1]", 10),
            ("policy.rules[1].methods[0]", 12),
            ("policy.rules[1].methods[1]", 13),
            ("jwt.issuers[0].issuer", 18),
            ("jwt.issuers[0].audiences", 19),
        ] {
            assert_eq!(line_of(POLICY, field), Some(line), "{field}");
        }
    }

    #[test]
    fn flow_items_are_on_the_line_that_opens_them() {
        for (field, line) in [
            ("policy.identity_order[1]", 2),
            ("policy.rules[0].methods[1]", 6),
            ("policy.rules[1].identity[1]", 14),
            ("policy.rules[1].path.prefix", 15),
        ] {
            assert_eq!(line_of(POLICY, field), Some(line), "{field}");
        }
    }

    #[test]
    fn a_path_deeper_than_the_text_stops_at_the_deepest_line() {
        assert_eq!(line_of(POLICY, "policy.rules[1].public"), Some(10));
        assert_eq!(line_of(POLICY, "policy.rules[7].name"), Some(3));
        assert_eq!(line_of(POLICY, "server.grpc_addr"), None);
        // A same-named key deeper down is not the one asked for.
        assert_eq!(line_of("a:\n  b:\n    c: 1\n  c: 2\n", "a.c"), Some(4));
    }
}
