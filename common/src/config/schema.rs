//! Strict deserialisation that reports every schema error of a document at once.
//!
//! serde stops at the first unknown field or wrong type. To report them all, each error's node
//! is cut out of the document and deserialisation runs again, until it succeeds or nothing is
//! left to cut. Removing a list item shifts the items after it, so the indices removed so far
//! are kept to translate later errors back to the document as written.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use serde_yaml::Value;

use super::lines::Step;

/// At most this many schema errors are reported for one document.
const MAX_PROBLEMS: usize = 64;

/// One schema error, at its path in the document as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) path: Vec<Step>,
    pub(crate) reason: String,
    /// An unknown field (the path ends at it) rather than a wrong value.
    pub(crate) unknown: bool,
}

/// Deserialises `tree` into `T`, collecting every schema error. `Some` only without errors.
pub(crate) fn deserialize_all<T: DeserializeOwned>(mut tree: Value) -> (Option<T>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut removed = Removed::default();
    let mut cut = BTreeSet::new();
    while problems.len() < MAX_PROBLEMS {
        let err = match serde_path_to_error::deserialize::<_, T>(tree.clone()) {
            Ok(v) if problems.is_empty() => return (Some(v), problems),
            Ok(_) => return (None, problems),
            Err(e) => e,
        };
        let mut path = steps(err.path());
        let reason = err.into_inner().to_string();
        let unknown = unknown_field(&reason);
        if let Some(name) = &unknown
            && path.last() != Some(&Step::Key(name.clone()))
        {
            // Inside an internally tagged enum the path stops at the enum.
            path.push(Step::Key(name.clone()));
        }
        let original = removed.original(&path);
        // A field cut for an earlier error is not also reported missing.
        let consequence = missing_field(&reason).is_some_and(|f| {
            let mut p = original.clone();
            p.push(Step::Key(f));
            cut.contains(&p)
        });
        if !consequence {
            problems.push(Problem {
                path: original,
                reason,
                unknown: unknown.is_some(),
            });
        }
        match cut_nearest(&mut tree, &path, &mut removed) {
            Some(at) => {
                cut.insert(at);
            }
            None => break,
        }
    }
    (None, problems)
}

fn steps(path: &serde_path_to_error::Path) -> Vec<Step> {
    let mut out = Vec::new();
    for s in path {
        match s {
            Segment::Seq { index } => out.push(Step::Index(*index)),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push(Step::Key(key.clone()))
            }
            Segment::Unknown => break,
        }
    }
    out
}

/// The name in serde's "unknown field `x`, expected ..." message.
fn unknown_field(reason: &str) -> Option<String> {
    quoted_after(reason, "unknown field `")
}

/// The name in serde's "missing field `x`" message.
fn missing_field(reason: &str) -> Option<String> {
    quoted_after(reason, "missing field `")
}

fn quoted_after(reason: &str, prefix: &str) -> Option<String> {
    let rest = reason.strip_prefix(prefix)?;
    Some(rest[..rest.find('`')?].to_string())
}

/// List indices removed so far, per list (by its path as written).
#[derive(Default)]
struct Removed(BTreeMap<Vec<Step>, BTreeSet<usize>>);

impl Removed {
    /// A path in the current document as a path in the document as written.
    fn original(&self, path: &[Step]) -> Vec<Step> {
        let mut out = Vec::with_capacity(path.len());
        for s in path {
            let step = match s {
                Step::Index(i) => Step::Index(self.original_index(&out, *i)),
                k => k.clone(),
            };
            out.push(step);
        }
        out
    }

    /// The `i`-th index of the list at `list` (as written) that has not been removed.
    fn original_index(&self, list: &[Step], i: usize) -> usize {
        let Some(gone) = self.0.get(list) else {
            return i;
        };
        let mut kept = 0;
        let mut j = 0;
        loop {
            if !gone.contains(&j) {
                if kept == i {
                    return j;
                }
                kept += 1;
            }
            j += 1;
        }
    }
}

/// Removes the node at `path`, or its nearest existing ancestor; the path removed (as written),
/// or `None` when only the whole document is left to cut.
fn cut_nearest(tree: &mut Value, path: &[Step], removed: &mut Removed) -> Option<Vec<Step>> {
    for len in (1..=path.len()).rev() {
        let (parent, last) = (&path[..len - 1], &path[len - 1]);
        let Some(container) = node_mut(tree, parent) else {
            continue;
        };
        let original = removed.original(&path[..len]);
        let done = match (container, last) {
            (Value::Mapping(m), Step::Key(k)) => m.remove(k.as_str()).is_some(),
            (Value::Sequence(s), Step::Index(i)) if *i < s.len() => {
                s.remove(*i);
                if let Some(Step::Index(orig)) = original.last() {
                    let list = original[..original.len() - 1].to_vec();
                    removed.0.entry(list).or_default().insert(*orig);
                }
                true
            }
            _ => false,
        };
        if done {
            return Some(original);
        }
    }
    None
}

/// The node at `path`, looking through YAML tags (`!variant value`).
fn node_mut<'a>(mut cur: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    for s in path {
        while let Value::Tagged(t) = cur {
            cur = &mut t.value;
        }
        cur = match (cur, s) {
            (Value::Mapping(m), Step::Key(k)) => m.get_mut(k.as_str())?,
            (Value::Sequence(v), Step::Index(i)) => v.get_mut(*i)?,
            _ => return None,
        };
    }
    while let Value::Tagged(t) = cur {
        cur = &mut t.value;
    }
    Some(cur)
}

#[cfg(test)]
// The test types' fields are only deserialised, never read.
#[allow(dead_code)]
mod tests {
    use super::super::lines::{parse, render};
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        a: Option<Inner>,
        #[serde(default)]
        list: Vec<Item>,
        #[serde(default)]
        store: Option<Store>,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        n: u32,
        #[serde(default)]
        s: String,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        k: u8,
    }
    #[derive(Debug, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    enum Store {
        Memory { size: Option<u32> },
    }

    fn problems(yaml: &str) -> Vec<(String, bool)> {
        let v: Value = serde_yaml::from_str(yaml).unwrap();
        let (doc, p) = deserialize_all::<Doc>(v);
        assert_eq!(doc.is_some(), p.is_empty());
        p.into_iter()
            .map(|p| (render(&p.path), p.unknown))
            .collect()
    }

    #[test]
    fn every_unknown_field_and_wrong_value_at_once() {
        let p = problems(
            "a: {n: x, s: [1], zz: 1}\nlist:\n  - {k: 1}\n  - {k: 300}\n  - {k: 1, j: 2}\n  - {k: [3]}\nbad: 1\nstore: {type: memory, sizee: 1}\n",
        );
        let want = [
            ("a.n", false),
            ("list[1].k", false),
            ("list[2].j", true),
            ("list[3].k", false),
            ("bad", true),
            ("store.sizee", true),
        ];
        for w in want {
            assert!(p.contains(&(w.0.to_string(), w.1)), "{w:?} not in {p:?}");
        }
    }

    #[test]
    fn a_removed_list_item_does_not_shift_the_next_errors() {
        // Items 0 and 2 are wrong as a whole: after item 0 is cut, item 2 is still item 2.
        let p = problems("list:\n  - 5\n  - {k: 1}\n  - 6\n  - {k: 1, q: 1}\n");
        assert_eq!(
            p,
            vec![
                ("list[0]".to_string(), false),
                ("list[2]".to_string(), false),
                ("list[3].q".to_string(), true)
            ]
        );
    }

    #[test]
    fn a_cut_field_is_not_reported_missing_as_well() {
        let p = problems("a: {n: [1]}\n");
        assert_eq!(p, vec![("a.n".to_string(), false)]);
        let p = problems("- 1\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(parse(&p[0].0), vec![]);
    }
}
