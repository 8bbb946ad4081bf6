//! Configuration loading: a YAML file, overridden by `TOLLGATE_*` environment variables and
//! `--set path=value` flags, deserialised strictly, then validated with every error reported
//! at once as `file:line: field: reason`.
//!
//! Two stages, so that a typo and a bad value are both caught before any port is bound:
//! 1. serde with `deny_unknown_fields` turns the merged YAML into the raw config types;
//! 2. each config type's [`Validate`] impl pushes every semantic problem into [`Errors`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml::Value;

/// One problem in a configuration: where, which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The file the field came from (`None` for environment/flag-only configs).
    pub file: Option<PathBuf>,
    /// 1-based line in that file, when known.
    pub line: Option<usize>,
    /// Dotted path of the field, e.g. `server.tls.cert_file` or `descriptors[2].rate_limit.unit`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display())?,
            (Some(file), None) => write!(f, "{}: ", file.display())?,
            (None, _) => {}
        }
        if self.field.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// Every problem found in a configuration; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<FieldError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// A single error.
    pub fn one(file: Option<&Path>, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self(vec![FieldError {
            file: file.map(Path::to_path_buf),
            line: None,
            field: field.into(),
            reason: reason.into(),
        }])
    }
}

/// Collects validation errors for one file; line numbers are looked up from the file's text.
#[derive(Debug, Default)]
pub struct Errors {
    file: Option<PathBuf>,
    text: Option<String>,
    list: Vec<FieldError>,
}

impl Errors {
    /// A collector for errors in `file`, whose `text` is used to find line numbers.
    pub fn for_file(file: Option<&Path>, text: Option<&str>) -> Self {
        Self {
            file: file.map(Path::to_path_buf),
            text: text.map(str::to_string),
            list: Vec::new(),
        }
    }

    /// Records that `field` is wrong because of `reason`.
    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        let field = field.into();
        let line = self.text.as_deref().and_then(|t| line_of(t, &field));
        self.list.push(FieldError {
            file: self.file.clone(),
            line,
            field,
            reason: reason.into(),
        });
    }

    /// Records an error with a known line.
    pub fn push_at(
        &mut self,
        line: Option<usize>,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.list.push(FieldError {
            file: self.file.clone(),
            line,
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// Records an error at `at.field` when `path` is set but is not a readable file.
    pub fn require_file(&mut self, at: &str, field: &str, path: Option<&Path>) {
        if let Some(p) = path
            && !p.is_file()
        {
            self.push(
                join(at, field),
                format!("{} is not a readable file", p.display()),
            );
        }
    }

    /// Adds errors found elsewhere (another file).
    pub fn extend(&mut self, other: ConfigErrors) {
        self.list.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// `Ok(v)` when nothing was recorded.
    pub fn finish<T>(self, v: T) -> Result<T, ConfigErrors> {
        if self.list.is_empty() {
            Ok(v)
        } else {
            Err(ConfigErrors(self.list))
        }
    }
}

/// Semantic validation of a deserialised config section; `at` is the section's dotted path.
pub trait Validate {
    fn validate(&self, at: &str, errors: &mut Errors);
}

/// Joins a parent path and a field name (`""` + `server` = `server`).
pub fn join(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_string()
    } else {
        format!("{at}.{field}")
    }
}

/// The environment as a map, so that tests can pass their own instead of the process's.
pub type Env = BTreeMap<String, String>;

/// The process environment.
pub fn process_env() -> Env {
    std::env::vars().collect()
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The YAML file; `None` means defaults plus overrides only.
    pub file: Option<PathBuf>,
    /// Environment (only `TOLLGATE_*` keys are read).
    pub env: Env,
    /// `path=value` overrides from flags, applied last.
    pub sets: Vec<String>,
}

/// The prefix of environment overrides: `TOLLGATE_SERVER__GRPC_ADDR=0.0.0.0:9000` sets
/// `server.grpc_addr`. `__` separates path segments; names are lower-cased.
pub const ENV_PREFIX: &str = "TOLLGATE_";

/// Environment variables that configure the binaries themselves rather than a config field.
const ENV_RESERVED: &[&str] = &[
    "TOLLGATE_CONFIG",
    "TOLLGATE_LOG",
    "TOLLGATE_ADMIN_TOKEN",
    "TOLLGATE_DEBUG_TOKEN",
    "TOLLGATE_ENVOY",
    "TOLLGATE_REDIS_SERVER",
];

/// Loads a config: reads and parses the file, merges env and flag overrides, deserialises
/// strictly and validates. Returns the config and the file text (for later line lookups).
pub fn load<T>(sources: &Sources) -> Result<T, ConfigErrors>
where
    T: DeserializeOwned + Validate,
{
    let file = sources.file.as_deref();
    let text = match file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(Some(path), "", format!("cannot read config file: {e}"))
        })?),
        None => None,
    };
    let mut value = match text.as_deref() {
        Some(t) if !t.trim().is_empty() => serde_yaml::from_str::<Value>(t).map_err(|e| {
            ConfigErrors(vec![FieldError {
                file: file.map(Path::to_path_buf),
                line: e.location().map(|l| l.line()),
                field: String::new(),
                reason: format!("invalid YAML: {e}"),
            }])
        })?,
        _ => Value::Mapping(Default::default()),
    };
    if value.is_null() {
        value = Value::Mapping(Default::default());
    }
    let mut errors = Errors::for_file(file, text.as_deref());
    for (k, v) in &sources.env {
        let Some(rest) = k.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if ENV_RESERVED.contains(&k.as_str()) || rest.is_empty() {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if let Err(reason) = set_path(&mut value, &path, v) {
            errors.push(format!("${k}"), reason);
        }
    }
    for s in &sources.sets {
        match s.split_once('=') {
            Some((p, v)) if !p.is_empty() => {
                let path: Vec<String> = p.split('.').map(str::to_string).collect();
                if let Err(reason) = set_path(&mut value, &path, v) {
                    errors.push(format!("--set {p}"), reason);
                }
            }
            _ => errors.push(format!("--set {s}"), "expected path=value"),
        }
    }
    if !errors.is_empty() {
        return errors.finish(unreachable_value());
    }
    let cfg: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        let line = text.as_deref().and_then(|t| line_of(t, &field));
        ConfigErrors(vec![FieldError {
            file: file.map(Path::to_path_buf),
            line,
            field,
            reason: e.into_inner().to_string(),
        }])
    })?;
    let mut errors = Errors::for_file(file, text.as_deref());
    cfg.validate("", &mut errors);
    errors.finish(cfg)
}

fn unreachable_value<T>() -> T {
    unreachable!("finish is only called with errors here")
}

/// Sets `path` in a YAML mapping to `raw`, parsed as a YAML scalar (so `true` and `10` keep
/// their types, and `a,b` stays a string).
fn set_path(root: &mut Value, path: &[String], raw: &str) -> Result<(), String> {
    let parsed: Value =
        serde_yaml::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let mut cur = root;
    for (i, seg) in path.iter().enumerate() {
        if seg.is_empty() {
            return Err("empty path segment".into());
        }
        let map = match cur {
            Value::Mapping(m) => m,
            Value::Null => {
                *cur = Value::Mapping(Default::default());
                match cur {
                    Value::Mapping(m) => m,
                    _ => unreachable!(),
                }
            }
            _ => return Err(format!("`{}` is not a mapping", path[..i].join("."))),
        };
        let key = Value::String(seg.clone());
        if i == path.len() - 1 {
            map.insert(key, parsed);
            return Ok(());
        }
        cur = map.entry(key).or_insert(Value::Null);
    }
    Err("empty path".into())
}

/// Best-effort line of a dotted field path (`a.b[2].c`) in YAML text: follows keys by
/// indentation and list items by their `- ` markers. Falls back to the deepest key found.
pub fn line_of(text: &str, field: &str) -> Option<usize> {
    let segs = parse_path(field);
    if segs.is_empty() {
        return None;
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0usize;
    let mut min_indent = 0usize;
    let mut found: Option<usize> = None;
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                let mut hit = None;
                for (i, l) in lines.iter().enumerate().skip(start) {
                    let trimmed = l.trim_start();
                    if trimmed.is_empty() || trimmed.starts_with('#') {
                        continue;
                    }
                    let indent = l.len() - trimmed.len();
                    if found.is_some() && indent < min_indent && i > start {
                        break;
                    }
                    let body = trimmed.strip_prefix("- ").unwrap_or(trimmed);
                    let body_indent = l.len() - body.len();
                    if body_indent >= min_indent
                        && (body.starts_with(&format!("{k}:"))
                            || body.starts_with(&format!("\"{k}\":")))
                    {
                        hit = Some((i, body_indent));
                        break;
                    }
                }
                let (i, ind) = hit?;
                found = Some(i + 1);
                start = i + 1;
                min_indent = ind + 1;
            }
            Seg::Index(n) => {
                let mut count = 0usize;
                let mut hit = None;
                let mut item_indent = None;
                for (i, l) in lines.iter().enumerate().skip(start) {
                    let trimmed = l.trim_start();
                    if trimmed.is_empty() || trimmed.starts_with('#') {
                        continue;
                    }
                    let indent = l.len() - trimmed.len();
                    if trimmed.starts_with("- ") || trimmed == "-" {
                        match item_indent {
                            None => item_indent = Some(indent),
                            Some(ii) if ii != indent => {
                                if indent < ii {
                                    break;
                                }
                                continue;
                            }
                            _ => {}
                        }
                        if count == n {
                            hit = Some((i, indent));
                            break;
                        }
                        count += 1;
                    } else if item_indent.is_some_and(|ii| indent <= ii) && indent < min_indent {
                        break;
                    }
                }
                let (i, ind) = hit?;
                found = Some(i + 1);
                start = i;
                min_indent = ind + 1;
            }
        }
    }
    found
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn parse_path(field: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let mut rest = part;
        if let Some(b) = rest.find('[') {
            if b > 0 {
                out.push(Seg::Key(&rest[..b]));
            }
            rest = &rest[b..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(end) = stripped.find(']') else { break };
                if let Ok(n) = stripped[..end].parse() {
                    out.push(Seg::Index(n));
                }
                rest = &stripped[end + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Seg::Key(rest));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(default)]
        server: Server,
        #[serde(default)]
        items: Vec<Item>,
    }
    #[derive(Debug, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Server {
        #[serde(default)]
        port: u16,
        #[serde(default)]
        name: String,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        n: i64,
    }
    impl Validate for Cfg {
        fn validate(&self, at: &str, e: &mut Errors) {
            if self.server.port == 0 {
                e.push(join(&join(at, "server"), "port"), "must not be 0");
            }
            for (i, it) in self.items.iter().enumerate() {
                if it.n < 0 {
                    e.push(format!("items[{i}].n"), "must be positive");
                }
            }
        }
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn reports_every_semantic_error_with_file_and_line() {
        let f = write("server:\n  port: 0\nitems:\n  - n: 1\n  - n: -2\n  - n: -3\n");
        let err = load::<Cfg>(&Sources {
            file: Some(f.path().into()),
            ..Default::default()
        })
        .unwrap_err();
        let lines: Vec<_> = err.0.iter().map(|e| (e.field.clone(), e.line)).collect();
        assert_eq!(
            lines,
            vec![
                ("server.port".to_string(), Some(2)),
                ("items[1].n".to_string(), Some(5)),
                ("items[2].n".to_string(), Some(6))
            ]
        );
        assert!(err.to_string().contains(&format!(
            "{}:2: server.port: must not be 0",
            f.path().display()
        )));
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let f = write("server:\n  port: 1\n  nmae: x\n");
        let err = load::<Cfg>(&Sources {
            file: Some(f.path().into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].field, "server.nmae");
        assert_eq!(err.0[0].line, Some(3));
        assert!(
            err.0[0].reason.contains("unknown field `nmae`"),
            "{}",
            err.0[0].reason
        );
    }

    #[test]
    fn env_and_flags_override_the_file_in_that_order() {
        let f = write("server:\n  port: 1\n  name: file\n");
        let env: Env = [
            ("TOLLGATE_SERVER__PORT".to_string(), "2".to_string()),
            ("TOLLGATE_SERVER__NAME".to_string(), "env".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ]
        .into();
        let cfg = load::<Cfg>(&Sources {
            file: Some(f.path().into()),
            env,
            sets: vec!["server.name=flag".into()],
        })
        .unwrap();
        assert_eq!(cfg.server.port, 2);
        assert_eq!(cfg.server.name, "flag");
    }

    #[test]
    fn invalid_yaml_reports_its_line() {
        let f = write("server:\n  port: 1\n bad: [\n");
        let err = load::<Cfg>(&Sources {
            file: Some(f.path().into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.0[0].line.is_some());
        assert!(err.0[0].reason.starts_with("invalid YAML"));
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err = load::<Cfg>(&Sources {
            file: Some("/nonexistent/tollgate.yaml".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/tollgate.yaml: cannot read")
        );
    }
}
