//! Overrides of the config file: `TOLLGATE_*` environment variables and `--set path=value`
//! flags, parsed, applied to the YAML document, and remembered so that an error in a value
//! they set names them rather than the file.
//!
//! The documented form of a variable is `TOLLGATE_` + the field's path in upper case with `__`
//! between levels (`TOLLGATE_SERVER__GRPC_ADDR` sets `server.grpc_addr`). Whether a variable in
//! that form names a real field is decided by the config's own schema while loading (see
//! `super::load_noting`): Kubernetes service links (`TOLLGATE_ADMIN_PORT=tcp://...`) and other
//! tools' variables name none and are ignored.

use serde_yaml::{Mapping, Value};

use super::lines::Step;
#[cfg(test)]
use super::lines::render;
use super::{ENV_PREFIX, Env, FieldError, IgnoredVar};

/// Environment variables that configure the binaries themselves rather than a config field.
const ENV_RESERVED: &[&str] = &[
    "TOLLGATE_CONFIG",
    "TOLLGATE_LOG",
    "TOLLGATE_ADMIN_TOKEN",
    "TOLLGATE_DEBUG_TOKEN",
];

/// An override that was applied.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    /// How errors name it: `environment variable TOLLGATE_X` or `--set x`.
    pub(crate) label: String,
    /// The variable's name, for environment overrides.
    pub(crate) var: Option<String>,
    /// The field it sets.
    pub(crate) path: Vec<Step>,
    /// The topmost node it created (or `path` when it replaced a value): every error at or
    /// below it is the override's.
    pub(crate) root: Vec<Step>,
}

/// What applying the overrides did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) origins: Vec<Origin>,
    /// Malformed overrides: clear errors, never applied.
    pub(crate) errors: Vec<FieldError>,
    /// Variables ignored because they are not in the documented form.
    pub(crate) ignored: Vec<IgnoredVar>,
}

/// How one environment variable is read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum EnvName {
    /// Not `TOLLGATE_*`, or one of the binaries' own variables.
    NotOurs,
    /// Not in the documented form: ignored, with this reason.
    Foreign(&'static str),
    /// In the documented form but broken (`TOLLGATE_SERVER__`): an error with this reason.
    Malformed(&'static str),
    /// The field path it names.
    Path(Vec<String>),
}

/// Reads a variable name as an override.
pub(crate) fn env_name(name: &str) -> EnvName {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return EnvName::NotOurs;
    };
    if ENV_RESERVED.contains(&name) {
        return EnvName::NotOurs;
    }
    if rest.is_empty() {
        return EnvName::Foreign("no field follows TOLLGATE_");
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return EnvName::Foreign("only upper-case letters, digits and `_` name a field");
    }
    let segs: Vec<&str> = rest.split("__").collect();
    if segs
        .iter()
        .any(|s| s.is_empty() || s.starts_with('_') || s.ends_with('_'))
    {
        return EnvName::Malformed(
            "expected TOLLGATE_<FIELD> or TOLLGATE_<SECTION>__<FIELD>, with `__` between levels and no empty level",
        );
    }
    EnvName::Path(segs.iter().map(|s| s.to_ascii_lowercase()).collect())
}

/// Reads `--set path=value`: the path's keys and the raw value.
pub(crate) fn set_flag(s: &str) -> Result<(Vec<String>, &str), String> {
    let Some((p, v)) = s.split_once('=') else {
        return Err("expected PATH=VALUE, e.g. --set server.drain_timeout=5s".into());
    };
    let p = p.trim();
    if p.is_empty() {
        return Err("no field path before `=`".into());
    }
    let segs: Vec<&str> = p.split('.').collect();
    if segs.iter().any(|s| s.trim().is_empty()) {
        return Err(format!(
            "`{p}` has an empty level (two dots, or a dot at an end)"
        ));
    }
    if p.contains(['[', ']']) {
        return Err(format!(
            "`{p}`: list items cannot be set one by one; set the whole list, e.g. `field=[a, b]`"
        ));
    }
    Ok((segs.iter().map(|s| s.trim().to_string()).collect(), v))
}

/// Applies the environment (except the variables in `skip`), then the flags, to `tree`.
pub(crate) fn apply(
    tree: &mut Value,
    env: &Env,
    sets: &[String],
    skip: &std::collections::BTreeSet<String>,
) -> Applied {
    let mut out = Applied::default();
    for (name, raw) in env {
        if skip.contains(name) {
            continue;
        }
        let label = format!("environment variable {name}");
        match env_name(name) {
            EnvName::NotOurs => {}
            EnvName::Foreign(why) => out.ignored.push(IgnoredVar {
                name: name.clone(),
                reason: why.into(),
            }),
            EnvName::Malformed(why) => out.errors.push(flag_error(format!("{label}: {why}"))),
            EnvName::Path(path) => match set_path(tree, &path, raw) {
                Ok(o) => out.origins.push(Origin {
                    label,
                    var: Some(name.clone()),
                    ..o
                }),
                Err(why) => out.errors.push(flag_error(format!("{label}: {why}"))),
            },
        }
    }
    for s in sets {
        match set_flag(s) {
            Ok((path, raw)) => {
                let label = format!("--set {}", path.join("."));
                match set_path(tree, &path, raw) {
                    Ok(o) => out.origins.push(Origin { label, ..o }),
                    Err(why) => out.errors.push(flag_error(format!("{label}: {why}"))),
                }
            }
            Err(why) => out.errors.push(flag_error(format!("--set {s}: {why}"))),
        }
    }
    out
}

/// An error in an override itself: no file, no line, no field.
fn flag_error(reason: String) -> FieldError {
    FieldError {
        file: None,
        line: None,
        field: String::new(),
        reason,
    }
}

/// The value of an override: YAML (so `true`, `10` and `30s` keep their types, and `[a, b]`
/// is a list), or the text itself when it is not valid YAML or is a number or boolean that
/// would not print back the same (`0123`, `+1`, `True`): a password or name must arrive as
/// typed.
fn parse_value(raw: &str) -> Value {
    let text = || Value::String(raw.to_string());
    match serde_yaml::from_str::<Value>(raw) {
        Ok(Value::Number(n)) if n.to_string() != raw.trim() => text(),
        Ok(Value::Bool(b)) if b.to_string() != raw.trim() => text(),
        Ok(v) => v,
        Err(_) => text(),
    }
}

/// Sets `path` in the mapping `root` to the parsed `raw`, creating sections on the way.
fn set_path(root: &mut Value, path: &[String], raw: &str) -> Result<Origin, String> {
    let steps: Vec<Step> = path.iter().cloned().map(Step::Key).collect();
    let mut created: Option<usize> = None;
    let mut cur = root;
    for (i, seg) in path.iter().enumerate() {
        if cur.is_null() {
            *cur = Value::Mapping(Mapping::new());
            created.get_or_insert(i);
        }
        let Value::Mapping(map) = cur else {
            return Err(if i == 0 {
                "the config file is not a mapping of sections".into()
            } else {
                format!("`{}` is a value, not a section", path[..i].join("."))
            });
        };
        let key = Value::String(seg.clone());
        if !map.contains_key(&key) {
            created.get_or_insert(i + 1);
        }
        if i == path.len() - 1 {
            map.insert(key, parse_value(raw));
            break;
        }
        cur = map.entry(key).or_insert(Value::Null);
    }
    let root_len = created.unwrap_or(steps.len()).clamp(1, steps.len());
    Ok(Origin {
        label: String::new(),
        var: None,
        root: steps[..root_len].to_vec(),
        path: steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names() {
        assert_eq!(
            env_name("TOLLGATE_SERVER__GRPC_ADDR"),
            EnvName::Path(vec!["server".into(), "grpc_addr".into()])
        );
        assert_eq!(env_name("TOLLGATE_CONFIG"), EnvName::NotOurs);
        assert_eq!(env_name("HOME"), EnvName::NotOurs);
        assert!(matches!(env_name("TOLLGATE_server"), EnvName::Foreign(_)));
        assert!(matches!(env_name("TOLLGATE_"), EnvName::Foreign(_)));
        assert!(matches!(env_name("TOLLGATE_A-B"), EnvName::Foreign(_)));
        for bad in [
            "TOLLGATE_SERVER__",
            "TOLLGATE___X",
            "TOLLGATE_A____B",
            "TOLLGATE_A___B",
            "TOLLGATE__",
            "TOLLGATE_A_",
        ] {
            assert!(matches!(env_name(bad), EnvName::Malformed(_)), "{bad}");
        }
    }

    #[test]
    fn set_flags() {
        assert_eq!(
            set_flag("server.drain_timeout=5s").unwrap(),
            (vec!["server".into(), "drain_timeout".into()], "5s")
        );
        assert_eq!(set_flag("a=b=c").unwrap().1, "b=c");
        for bad in ["foo", "=x", "a..b=1", ".a=1", "a.=1", "a[0]=1", " = "] {
            assert!(set_flag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_keep_their_yaml_type_unless_that_would_change_their_text() {
        assert_eq!(parse_value("10"), Value::from(10));
        assert_eq!(parse_value("true"), Value::from(true));
        assert_eq!(parse_value("30s"), Value::from("30s"));
        assert!(parse_value("[a, b]").is_sequence());
        for text in ["0123", "+1", "True", "1_000", "0x1f", "[", "@x"] {
            assert_eq!(parse_value(text), Value::from(text), "{text}");
        }
    }

    #[test]
    fn created_sections_are_remembered() {
        let mut tree: Value = serde_yaml::from_str("server: {grpc_addr: x}").unwrap();
        let o = set_path(&mut tree, &["server".into(), "grpc_addr".into()], "y").unwrap();
        assert_eq!(render(&o.root), "server.grpc_addr");
        let o = set_path(&mut tree, &["jwt".into(), "max_token_bytes".into()], "9").unwrap();
        assert_eq!(render(&o.root), "jwt");
        assert_eq!(tree["jwt"]["max_token_bytes"], Value::from(9));
        let e = set_path(
            &mut tree,
            &["server".into(), "grpc_addr".into(), "x".into()],
            "1",
        )
        .unwrap_err();
        assert!(e.contains("`server.grpc_addr` is a value"), "{e}");
    }
}
