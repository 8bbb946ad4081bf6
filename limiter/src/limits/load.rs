//! Loading the limits from a file or a directory of domain files, keeping each file's last good
//! version when its new version is bad.
//!
//! In a directory, every `*.yaml` / `*.yml` entry is read, following symlinks, and names starting
//! with `.` are skipped: a Kubernetes ConfigMap volume holds its real files under `..data/` and
//! exposes them as symlinks, so a whole-volume swap is seen as new file contents on the next load.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tollgate_common::config::FieldError;

use super::{Domain, Limits};
use crate::algorithm::Algorithm;

/// Where the limits come from: one YAML file, or a directory with one domain per file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSource {
    pub path: PathBuf,
}

/// One problem found while loading, as shown on `/config` and in logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileError {
    pub file: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = FieldError {
            file: Some(self.file.clone()),
            line: self.line,
            field: self.field.clone(),
            reason: self.reason.clone(),
        };
        e.fmt(f)
    }
}

/// The state of one file after a load.
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    pub file: PathBuf,
    /// The domain now served from this file, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// `true` when the file's current contents are bad and its last good version is served.
    pub stale: bool,
    pub ok: bool,
}

/// The outcome of one load.
#[derive(Debug)]
pub struct LoadReport {
    pub limits: Limits,
    pub files: Vec<FileStatus>,
    /// Empty when every file loaded.
    pub errors: Vec<FileError>,
}

/// Loads the limits and remembers each file's last good domain between loads.
#[derive(Debug)]
pub struct Loader {
    source: LimitsSource,
    default_algorithm: Algorithm,
    last_good: HashMap<PathBuf, Arc<Domain>>,
}

impl Loader {
    pub fn new(source: LimitsSource, default_algorithm: Algorithm) -> Self {
        Self {
            source,
            default_algorithm,
            last_good: HashMap::new(),
        }
    }

    pub fn source(&self) -> &LimitsSource {
        &self.source
    }

    /// Reads every file now. Bad files keep their last good version (when there was one); a
    /// domain defined by two files is kept from the first in name order.
    pub fn load(&mut self) -> LoadReport {
        let mut errors = Vec::new();
        let files = match list_files(&self.source.path) {
            Ok(f) => f,
            Err(e) => {
                errors.push(FileError {
                    file: self.source.path.clone(),
                    line: None,
                    field: String::new(),
                    reason: format!("cannot read limits: {e}"),
                });
                // Keep serving what was loaded before: a transiently missing directory (a volume
                // being remounted) must not drop every limit.
                let mut kept: Vec<_> = self.last_good.iter().collect();
                kept.sort_by(|a, b| a.0.cmp(b.0));
                let files = kept
                    .iter()
                    .map(|(f, d)| FileStatus {
                        file: (*f).clone(),
                        domain: Some(d.name.to_string()),
                        stale: true,
                        ok: false,
                    })
                    .collect();
                return LoadReport {
                    limits: Limits::from_domains(kept.into_iter().map(|(_, d)| d.clone())),
                    files,
                    errors,
                };
            }
        };
        let mut chosen: BTreeMap<PathBuf, (Arc<Domain>, bool)> = BTreeMap::new();
        let mut statuses = Vec::new();
        let mut by_domain: HashMap<Arc<str>, PathBuf> = HashMap::new();
        for file in files {
            let parsed = std::fs::read_to_string(&file)
                .map_err(|e| {
                    vec![FileError {
                        file: file.clone(),
                        line: None,
                        field: String::new(),
                        reason: format!("cannot read: {e}"),
                    }]
                })
                .and_then(|text| {
                    Domain::parse(Some(&file), &text, self.default_algorithm)
                        .map_err(|e| e.0.into_iter().map(|fe| to_file_error(&file, fe)).collect())
                });
            let (mut candidate, mut fresh) = match parsed {
                Ok(d) => (Some(Arc::new(d)), true),
                Err(mut errs) => {
                    errors.append(&mut errs);
                    (self.last_good.get(&file).cloned(), false)
                }
            };
            if let Some(d) = &candidate
                && let Some(first) = by_domain.get(&d.name)
            {
                errors.push(FileError {
                    file: file.clone(),
                    line: super::line_of_domain(&file),
                    field: "domain".into(),
                    reason: format!(
                        "duplicate domain '{}' (already defined in {})",
                        d.name,
                        first.display()
                    ),
                });
                let previous = self
                    .last_good
                    .get(&file)
                    .filter(|p| !by_domain.contains_key(&p.name));
                candidate = if fresh { previous.cloned() } else { None };
                fresh = false;
            }
            statuses.push(FileStatus {
                file: file.clone(),
                domain: candidate.as_ref().map(|d| d.name.to_string()),
                stale: !fresh && candidate.is_some(),
                ok: fresh,
            });
            if let Some(d) = candidate {
                by_domain.insert(d.name.clone(), file.clone());
                chosen.insert(file, (d, fresh));
            }
        }
        self.last_good = chosen
            .iter()
            .map(|(f, (d, _))| (f.clone(), d.clone()))
            .collect();
        LoadReport {
            limits: Limits::from_domains(chosen.into_values().map(|(d, _)| d)),
            files: statuses,
            errors,
        }
    }
}

fn to_file_error(file: &Path, e: FieldError) -> FileError {
    FileError {
        file: e.file.unwrap_or_else(|| file.to_path_buf()),
        line: e.line,
        field: e.field,
        reason: e.reason,
    }
}

/// The YAML files to load, sorted by name.
fn list_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let p = entry.path();
        // Follows symlinks: ConfigMap files are links into `..data/`.
        if std::fs::metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}
