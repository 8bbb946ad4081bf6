//! Request descriptors as the engine reads them: a trait over whatever the caller holds (a
//! protobuf message, a plain struct) so that no entry is copied, and a plain owned form.

use crate::unit::Unit;

/// A request descriptor: an ordered list of `(key, value)` entries, plus what a caller may send
/// with it.
pub trait DescriptorSource {
    /// Number of `(key, value)` entries.
    fn entry_count(&self) -> usize;
    /// `(key, value)` of entry `i < entry_count()`.
    fn entry(&self, i: usize) -> (&str, &str);
    /// A limit sent with the request, used instead of the configured ones.
    fn limit_override(&self) -> Option<LimitOverride> {
        None
    }
    /// This descriptor's own hits_addend; `Some(0)` checks without counting.
    fn hits_addend(&self) -> Option<u64> {
        None
    }
}

/// A limit sent by the caller (Envoy's `limit` descriptor field), used instead of the
/// configured ones for that descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOverride {
    pub requests_per_unit: u32,
    /// `None` for a unit the caller named but that has no window (Envoy's `UNKNOWN`): such an
    /// override applies no limit at all, as in envoyproxy/ratelimit.
    pub unit: Option<Unit>,
}

/// A plain descriptor: owned (`String` entries, the default), or borrowing whatever its
/// builder holds (any `AsRef<str>` keys and values, e.g. `&str` and `Cow<str>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor<K = String, V = String> {
    pub entries: Vec<(K, V)>,
    pub limit: Option<LimitOverride>,
    pub hits_addend: Option<u64>,
}

impl Descriptor {
    pub fn new<K: Into<String>, V: Into<String>>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            ..Default::default()
        }
    }
}

impl<K: AsRef<str>, V: AsRef<str>> DescriptorSource for Descriptor<K, V> {
    fn entry_count(&self) -> usize {
        self.entries.len()
    }
    fn entry(&self, i: usize) -> (&str, &str) {
        let (k, v) = &self.entries[i];
        (k.as_ref(), v.as_ref())
    }
    fn limit_override(&self) -> Option<LimitOverride> {
        self.limit
    }
    fn hits_addend(&self) -> Option<u64> {
        self.hits_addend
    }
}

/// So that a slice of descriptors (`&[D]`) is a list of sources as it is.
impl<T: DescriptorSource + ?Sized> DescriptorSource for &T {
    fn entry_count(&self) -> usize {
        (**self).entry_count()
    }
    fn entry(&self, i: usize) -> (&str, &str) {
        (**self).entry(i)
    }
    fn limit_override(&self) -> Option<LimitOverride> {
        (**self).limit_override()
    }
    fn hits_addend(&self) -> Option<u64> {
        (**self).hits_addend()
    }
}
