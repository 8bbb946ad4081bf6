//! The counter key: which counter a hit counts on, built once per matched descriptor.
//!
//! A key names the domain, every request entry that selected the limit (in request order) and
//! the limit's position on its descriptor: `{rl|<domain>|<key>=<value>|…}#<position>`. The
//! braces are the Redis Cluster hash tag, so every limit on one descriptor value (a burst and a
//! sustained rate) lives in one slot. Stores append the rule (algorithm, window, limit,
//! burst), so a changed rule starts a fresh counter. These bytes are a stored format: replicas
//! of two versions sharing one Redis must agree on them.
//!
//! Every part is escaped so that the separators (`|`, `=`, `#`) and the braces never appear
//! unescaped: two different descriptors never share a key and no value opens a hash tag.

/// One counter's key, and where its descriptor part lies (for `detailed_metric` series).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CounterKey {
    text: String,
    /// Byte range of the descriptor part (`<key>=<value>|…`) in `text`.
    descriptor: (usize, usize),
}

impl CounterKey {
    /// The key as stores count on it.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The descriptor part: the escaped `key=value` entries, `|`-separated.
    pub(crate) fn descriptor(&self) -> &str {
        &self.text[self.descriptor.0..self.descriptor.1]
    }
}

/// The keys of one request descriptor: the domain, then one entry per matched level, then one
/// key per limit on the selected descriptor.
#[derive(Debug)]
pub(crate) struct KeyBuilder {
    text: String,
    /// Where the entries start (after the domain).
    entries_at: usize,
}

impl KeyBuilder {
    pub(crate) fn new(domain: &str) -> Self {
        let mut text = String::with_capacity(64);
        text.push_str("{rl|");
        escape_into(&mut text, domain);
        let entries_at = text.len();
        Self { text, entries_at }
    }

    /// Appends a request entry `(key, value)`.
    pub(crate) fn entry(&mut self, key: &str, value: &str) {
        self.text.push('|');
        escape_into(&mut self.text, key);
        self.text.push('=');
        escape_into(&mut self.text, value);
    }

    /// Appends an entry whose counter every value matching `pattern` shares (a wildcard with
    /// `share_threshold`); marked so that it never collides with a literal value equal to it.
    pub(crate) fn shared_entry(&mut self, key: &str, pattern: &str) {
        self.text.push('|');
        escape_into(&mut self.text, key);
        self.text.push_str("=#");
        escape_into(&mut self.text, pattern);
    }

    /// The key of the limit at `position` (its suffix, `#0`, `#1`, `#o`), keeping the builder
    /// for the descriptor's other limits.
    pub(crate) fn key(&self, position: &str) -> CounterKey {
        let mut text = String::with_capacity(self.text.len() + 1 + position.len());
        text.push_str(&self.text);
        finish(text, self.entries_at, position)
    }

    /// As [`Self::key`], reusing the buffer (the descriptor's last limit).
    pub(crate) fn into_key(self, position: &str) -> CounterKey {
        finish(self.text, self.entries_at, position)
    }
}

fn finish(mut text: String, entries_at: usize, position: &str) -> CounterKey {
    let end = text.len();
    // Past the `|` that opens the first entry, if any.
    let start = (entries_at + 1).min(end);
    text.push('}');
    text.push_str(position);
    CounterKey {
        text,
        descriptor: (start, end),
    }
}

/// Appends `s` to `out` so that the separators of a counter key (`|`, `=`, `#`) and Redis hash
/// tag braces never appear unescaped: every `\` starts a two-character escape, so the mapping
/// is injective and two different descriptors never share a key.
fn escape_into(out: &mut String, s: &str) {
    if !s
        .bytes()
        .any(|b| matches!(b, b'\\' | b'|' | b'=' | b'#' | b'{' | b'}'))
    {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\p"),
            '=' => out.push_str("\\e"),
            '#' => out.push_str("\\h"),
            '{' => out.push_str("\\o"),
            '}' => out.push_str("\\c"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_domain_entries_and_position_and_know_their_descriptor_part() {
        let mut b = KeyBuilder::new("web");
        b.entry("client", "c1");
        b.shared_entry("path", "/api/*");
        let first = b.key("#0");
        let last = b.into_key("#1");
        assert_eq!(first.as_str(), "{rl|web|client=c1|path=#/api/*}#0");
        assert_eq!(last.as_str(), "{rl|web|client=c1|path=#/api/*}#1");
        assert_eq!(first.descriptor(), "client=c1|path=#/api/*");
        assert_eq!(KeyBuilder::new("web").into_key("#o").descriptor(), "");
    }

    #[test]
    fn separators_and_braces_are_escaped_so_keys_never_collide() {
        let key = |entries: &[(&str, &str)]| {
            let mut b = KeyBuilder::new("d|x");
            for (k, v) in entries {
                b.entry(k, v);
            }
            b.into_key("#0")
        };
        let a = key(&[("a", "x|b=y"), ("b", "z")]);
        let b = key(&[("a", "x"), ("b", "y|b=z")]);
        assert_ne!(a, b);
        assert_eq!(a.descriptor(), "a=x\\pb\\ey|b=z");
        let braces = key(&[("k", "{t}\\#")]);
        assert_eq!(braces.as_str(), "{rl|d\\px|k=\\ot\\c\\\\\\h}#0");
    }
}
