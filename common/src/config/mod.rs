//! Configuration loading: a YAML file, overridden by `TOLLGATE_*` environment variables and
//! `--set path=value` flags, deserialised strictly, then validated with every error reported
//! at once as `file:line: field: reason`.
//!
//! Two stages, so that a typo and a bad value are both caught before any port is bound:
//! 1. serde with `deny_unknown_fields` turns the merged YAML into the raw config types; every
//!    unknown field and wrong value is collected in one pass (`schema`);
//! 2. each config type's [`Validate`] impl pushes every semantic problem into [`Errors`],
//!    including what `serve` would refuse later (credentials, unreadable files), so that
//!    `check-config` is the whole pre-flight.
//!
//! An error in a value an override set names the override (`environment variable
//! TOLLGATE_X`, `--set x`), not the file. A `TOLLGATE_*` variable that names no config field
//! (Kubernetes service links such as `TOLLGATE_ADMIN_PORT=tcp://...`, other tools' variables)
//! is ignored and reported in [`Loaded::ignored`], so a service can warn once.
//!
//! # Layout
//! - this file: errors, the validation context, [`load`];
//! - `overrides`: environment and `--set` overrides;
//! - `schema`: deserialisation that reports every schema error;
//! - `lines`: field paths and their lines in the YAML text.

mod lines;
mod overrides;
mod schema;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml::Value;

pub use lines::line_of;
use lines::{Step, parse, render};
use overrides::Origin;

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
/// It also carries what validation may consult: the environment the config was loaded with
/// (credentials given as variables) and whether referenced files are checked.
#[derive(Debug)]
pub struct Errors {
    file: Option<PathBuf>,
    text: Option<String>,
    list: Vec<FieldError>,
    env: Env,
    file_checks: bool,
    origins: Vec<Origin>,
}

impl Default for Errors {
    fn default() -> Self {
        Self::for_file(None, None)
    }
}

impl Errors {
    /// A collector for errors in `file`, whose `text` is used to find line numbers; an empty
    /// environment, files checked.
    pub fn for_file(file: Option<&Path>, text: Option<&str>) -> Self {
        Self {
            file: file.map(Path::to_path_buf),
            text: text.map(str::to_string),
            list: Vec::new(),
            env: Env::new(),
            file_checks: true,
            origins: Vec::new(),
        }
    }

    /// Records that `field` is wrong because of `reason`. When an override set the field (or
    /// created its section), the error names the override instead of the file.
    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        let field = field.into();
        let reason = reason.into();
        if let Some(o) = self.origin_of(&parse(&field)) {
            let reason = format!("{reason} (from {})", o.label);
            self.list.push(FieldError {
                file: None,
                line: None,
                field,
                reason,
            });
            return;
        }
        let line = self.text.as_deref().and_then(|t| line_of(t, &field));
        self.list.push(FieldError {
            file: self.file.clone(),
            line,
            field,
            reason,
        });
    }

    /// The override whose created node holds `path` (the deepest, when several do).
    fn origin_of(&self, path: &[Step]) -> Option<&Origin> {
        self.origins
            .iter()
            .filter(|o| path.starts_with(&o.root))
            .max_by_key(|o| o.root.len())
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

    /// The environment the config is loaded with (for credentials given as variables).
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// Whether files the config refers to are checked (off for `check-config
    /// --no-file-checks`, where they exist only where the service runs).
    pub fn checks_files(&self) -> bool {
        self.file_checks
    }

    /// Records an error at `at.field` when `path` is set but is not a readable file (unless
    /// file checks are off).
    pub fn require_file(&mut self, at: &str, field: &str, path: Option<&Path>) {
        let Some(p) = path.filter(|_| self.file_checks) else {
            return;
        };
        let problem = match std::fs::File::open(p) {
            Ok(_) if p.is_file() => return,
            Ok(_) => "is not a file".to_string(),
            Err(e) => format!("cannot be read: {e}"),
        };
        self.push(join(at, field), format!("{} {problem}", p.display()));
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

/// Defaults a service gives to fields of a shared section (its own ports in `server:`),
/// merged under the file: whatever the file or an override sets wins, field by field. Only
/// sections that are always present belong here (a default in an optional section would
/// switch it on).
pub trait Defaults {
    /// A YAML mapping of those fields; `Null` for none.
    fn defaults() -> Value {
        Value::Null
    }
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
    /// Skip checks that files the config refers to exist and are readable (credentials, TLS
    /// material, CA bundles): for checking a config away from where it runs.
    pub skip_file_checks: bool,
}

/// The prefix of environment overrides: `TOLLGATE_SERVER__GRPC_ADDR=0.0.0.0:9000` sets
/// `server.grpc_addr`. `__` separates path segments; names are lower-cased.
pub const ENV_PREFIX: &str = "TOLLGATE_";

/// A loaded config and what the operator should hear about it.
#[derive(Debug)]
pub struct Loaded<T> {
    pub config: T,
    /// The `TOLLGATE_*` variables that were ignored.
    pub ignored: Vec<IgnoredVar>,
}

/// A `TOLLGATE_*` variable that configures nothing: its name and why (never its value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredVar {
    pub name: String,
    pub reason: String,
}

impl fmt::Display for IgnoredVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

/// Loads a config: reads and parses the file, merges the service's defaults, env and flag
/// overrides, deserialises strictly and validates.
pub fn load<T>(sources: &Sources) -> Result<T, ConfigErrors>
where
    T: DeserializeOwned + Validate + Defaults,
{
    load_noting(sources).map(|l| l.config)
}

/// [`load`], also returning the ignored variables.
pub fn load_noting<T>(sources: &Sources) -> Result<Loaded<T>, ConfigErrors>
where
    T: DeserializeOwned + Validate + Defaults,
{
    let file = sources.file.as_deref();
    let text = match file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(Some(path), "", format!("cannot read config file: {e}"))
        })?),
        None => None,
    };
    let mut document = parse_document(file, text.as_deref())?;
    merge_under(&mut document, &T::defaults());
    // Variables whose path the schema does not know; found one pass at a time, each pass
    // loading without them.
    let mut not_fields = BTreeSet::new();
    loop {
        let mut tree = document.clone();
        let applied = overrides::apply(&mut tree, &sources.env, &sources.sets, &not_fields);
        let (config, problems) = schema::deserialize_all::<T>(tree);
        let unknown: Vec<String> = problems
            .iter()
            .filter(|p| p.unknown)
            .flat_map(|p| {
                applied
                    .origins
                    .iter()
                    .filter(|o| o.path.starts_with(&p.path))
                    .filter_map(|o| o.var.clone())
            })
            .collect();
        if !unknown.is_empty() {
            not_fields.extend(unknown);
            continue;
        }
        let mut errors = Errors {
            file: file.map(Path::to_path_buf),
            text: text.clone(),
            list: applied.errors,
            env: sources.env.clone(),
            file_checks: !sources.skip_file_checks,
            origins: applied.origins,
        };
        for p in problems {
            errors.push(render(&p.path), p.reason);
        }
        let Some(config) = config.filter(|_| errors.is_empty()) else {
            return Err(ConfigErrors(errors.list));
        };
        config.validate("", &mut errors);
        let ignored = applied
            .ignored
            .into_iter()
            .chain(not_fields.into_iter().map(|name| IgnoredVar {
                name,
                reason: "names no config field".into(),
            }))
            .collect();
        return errors.finish(Loaded { config, ignored });
    }
}

/// The file's YAML (an empty file is an empty mapping).
fn parse_document(file: Option<&Path>, text: Option<&str>) -> Result<Value, ConfigErrors> {
    let value = match text {
        Some(t) if !t.trim().is_empty() => serde_yaml::from_str::<Value>(t).map_err(|e| {
            ConfigErrors(vec![FieldError {
                file: file.map(Path::to_path_buf),
                line: e.location().map(|l| l.line()),
                field: String::new(),
                reason: format!("invalid YAML: {e}"),
            }])
        })?,
        _ => Value::Null,
    };
    Ok(if value.is_null() {
        Value::Mapping(Default::default())
    } else {
        value
    })
}

/// Puts every field of `defaults` into `tree` where `tree` has none (`null` counts as none).
fn merge_under(tree: &mut Value, defaults: &Value) {
    let Value::Mapping(defaults) = defaults else {
        return;
    };
    if tree.is_null() {
        *tree = Value::Mapping(Default::default());
    }
    let Value::Mapping(map) = tree else {
        return;
    };
    for (k, d) in defaults {
        match map.get_mut(k) {
            Some(v) if !v.is_null() => merge_under(v, d),
            _ => {
                map.insert(k.clone(), d.clone());
            }
        }
    }
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
    impl Defaults for Cfg {
        fn defaults() -> Value {
            serde_yaml::from_str("server: {port: 7, name: dflt}").unwrap()
        }
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
            ..Default::default()
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

    fn env(vars: &[(&str, &str)]) -> Env {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_with(
        text: &str,
        env: Env,
        sets: &[&str],
    ) -> (tempfile::NamedTempFile, Result<Loaded<Cfg>, ConfigErrors>) {
        let f = write(text);
        let r = load_noting::<Cfg>(&Sources {
            file: Some(f.path().into()),
            env,
            sets: sets.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        });
        (f, r)
    }

    #[test]
    fn variables_that_name_no_field_are_ignored_with_one_note_each() {
        let (_f, r) = load_with(
            "server:\n  port: 1\n",
            env(&[
                // Kubernetes service links for a Service named `tollgate-admin`.
                ("TOLLGATE_ADMIN_PORT", "tcp://10.0.0.1:9092"),
                ("TOLLGATE_ADMIN_SERVICE_HOST", "10.0.0.1"),
                // Other tools' variables.
                ("TOLLGATE_ADMIN_TOKEN_FILE", "/run/token"),
                ("TOLLGATE_ADMIN_URL", "http://x"),
                ("TOLLGATE_AUTHZ_BIN", "/bin/x"),
                // A typo inside a real section, a section that does not exist, lower case.
                ("TOLLGATE_SERVER__NMAE", "x"),
                ("TOLLGATE_NOPE__PORT", "x"),
                ("TOLLGATE_server__port", "9"),
                // The binaries' own, and a real field.
                ("TOLLGATE_LOG", "debug"),
                ("TOLLGATE_SERVER__PORT", "3"),
            ]),
            &[],
        );
        let loaded = r.unwrap();
        assert_eq!(loaded.config.server.port, 3);
        assert_eq!(loaded.config.server.name, "dflt");
        let ignored: Vec<&str> = loaded.ignored.iter().map(|v| v.name.as_str()).collect();
        let mut want = vec![
            "TOLLGATE_ADMIN_PORT",
            "TOLLGATE_ADMIN_SERVICE_HOST",
            "TOLLGATE_ADMIN_TOKEN_FILE",
            "TOLLGATE_ADMIN_URL",
            "TOLLGATE_AUTHZ_BIN",
            "TOLLGATE_NOPE__PORT",
            "TOLLGATE_SERVER__NMAE",
            "TOLLGATE_server__port",
        ];
        want.sort();
        let mut got = ignored.clone();
        got.sort();
        assert_eq!(got, want, "{:?}", loaded.ignored);
        // Names only: a value may be a secret.
        assert!(
            !loaded
                .ignored
                .iter()
                .any(|v| v.to_string().contains("10.0.0.1")),
            "{:?}",
            loaded.ignored
        );
    }

    #[test]
    fn an_error_in_an_override_names_it_not_the_file() {
        let (f, r) = load_with(
            "server:\n  port: 1\n",
            env(&[("TOLLGATE_SERVER__PORT", "many")]),
            &[],
        );
        let e = r.unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].file, None);
        assert_eq!(e.0[0].field, "server.port");
        let text = e.to_string();
        assert!(
            text.contains("(from environment variable TOLLGATE_SERVER__PORT)"),
            "{text}"
        );
        assert!(!text.contains(&f.path().display().to_string()), "{text}");

        // Semantic errors too, and flags the same way.
        let (_f, r) = load_with("", env(&[("TOLLGATE_SERVER__PORT", "0")]), &[]);
        let text = r.unwrap_err().to_string();
        assert_eq!(
            text,
            "server.port: must not be 0 (from environment variable TOLLGATE_SERVER__PORT)"
        );
        let (_f, r) = load_with("", Env::new(), &["server.port=0"]);
        assert_eq!(
            r.unwrap_err().to_string(),
            "server.port: must not be 0 (from --set server.port)"
        );
        // A flag naming no field is an error (a flag is typed by hand, on purpose).
        let (_f, r) = load_with("", Env::new(), &["server.nmae=x"]);
        let text = r.unwrap_err().to_string();
        assert!(
            text.starts_with("server.nmae: unknown field `nmae`"),
            "{text}"
        );
        assert!(text.ends_with("(from --set server.nmae)"), "{text}");
    }

    #[test]
    fn every_schema_error_is_reported_at_once_on_its_line() {
        let (f, r) = load_with(
            "server:\n  port: x\n  nmae: 1\nitems:\n  - n: 1\n  - m: 2\n  - n: [3]\nextra: 1\n",
            Env::new(),
            &[],
        );
        let e = r.unwrap_err();
        let got: Vec<_> = e.0.iter().map(|e| (e.field.as_str(), e.line)).collect();
        for want in [
            ("server.port", Some(2)),
            ("server.nmae", Some(3)),
            ("items[1].m", Some(6)),
            ("items[2].n", Some(7)),
            ("extra", Some(8)),
        ] {
            assert!(got.contains(&want), "{want:?} not in {got:?}");
        }
        assert!(e.0.iter().all(|e| e.file.as_deref() == Some(f.path())));
    }

    #[test]
    fn service_defaults_fill_each_missing_field() {
        let (_f, r) = load_with("server:\n  port: 1\n", Env::new(), &[]);
        let c = r.unwrap().config;
        assert_eq!((c.server.port, c.server.name.as_str()), (1, "dflt"));
        let (_f, r) = load_with("server:\n", Env::new(), &[]);
        let c = r.unwrap().config;
        assert_eq!((c.server.port, c.server.name.as_str()), (7, "dflt"));
    }

    #[test]
    fn malformed_overrides_are_clear_errors() {
        for (env_vars, sets, want) in [
            (
                vec![("TOLLGATE_SERVER__", "x")],
                vec![],
                "environment variable TOLLGATE_SERVER__: expected",
            ),
            (
                vec![("TOLLGATE_SERVER____PORT", "1")],
                vec![],
                "TOLLGATE_SERVER____PORT",
            ),
            (vec![], vec!["foo"], "--set foo: expected PATH=VALUE"),
            (vec![], vec!["=1"], "--set =1: no field path"),
            (vec![], vec!["server..port=1"], "empty level"),
            (vec![], vec!["items[0].n=1"], "list items cannot be set"),
            (
                vec![],
                vec!["server.port.x=1"],
                "`server.port` is a value, not a section",
            ),
        ] {
            let (f, r) = load_with("server:\n  port: 1\n", env(&env_vars), &sets);
            let text = r.unwrap_err().to_string();
            assert!(text.contains(want), "{want:?} not in {text:?}");
            assert!(!text.contains(&f.path().display().to_string()), "{text}");
        }
    }

    /// Random override names, paths and values from a small alphabet: loading never panics,
    /// and every error has a reason.
    #[test]
    fn arbitrary_overrides_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let name_chars = ["S", "ERVER", "PORT", "_", "__", "ITEMS", "0", "a", "-", "N"];
        let set_chars = [
            "server", "port", ".", "=", "items", "[0]", "[", "]", " ", "name", "x", "..", "n",
        ];
        let values = [
            "1", "", "x", "[1, 2]", "{a: b}", "- a", "true", "~", "[", "'", "0", "\"a: b\"", "*x",
            "!!str 1", "65536",
        ];
        for _ in 0..2000 {
            let mut name = "TOLLGATE_".to_string();
            for _ in 0..next(6) {
                name.push_str(name_chars[next(name_chars.len())]);
            }
            let mut set = String::new();
            for _ in 0..next(6) {
                set.push_str(set_chars[next(set_chars.len())]);
            }
            let value = values[next(values.len())];
            let e = env(&[(name.as_str(), value)]);
            let (_f, r) = load_with("server:\n  port: 1\nitems:\n  - n: 1\n", e, &[&set]);
            if let Err(e) = r {
                assert!(!e.0.is_empty());
                assert!(
                    e.0.iter().all(|e| !e.reason.is_empty()),
                    "{name} {set:?}: {e}"
                );
            }
        }
    }

    #[test]
    fn file_checks_can_be_skipped() {
        let mut e = Errors::for_file(None, None);
        e.require_file("a", "f", Some(Path::new("/nonexistent/x")));
        e.require_file("a", "d", Some(Path::new("/")));
        let text = e.finish(()).unwrap_err().to_string();
        assert!(
            text.contains("a.f: /nonexistent/x cannot be read"),
            "{text}"
        );
        assert!(text.contains("a.d: / is not a file"), "{text}");
        let mut e = Errors::for_file(None, None);
        e.file_checks = false;
        e.require_file("a", "f", Some(Path::new("/nonexistent/x")));
        assert!(e.is_empty());
    }
}
