//! Operator bearer credentials (the admin API's, the debug endpoints'): read from a file or an
//! environment variable, refused when too short, and read off a request's `Authorization`
//! header. Comparison is [`Secret::matches`] (constant time).

use std::path::{Path, PathBuf};

use http::{HeaderMap, header};

use crate::config::{Env, Errors, join};
use crate::secret::Secret;

/// Shortest credential accepted: a guessable one would open whatever it guards.
pub const MIN_LEN: usize = 16;

/// Why no usable credential could be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// Neither the file nor the variable gave one.
    Missing,
    /// Shorter than [`MIN_LEN`] characters.
    Weak,
    /// The configured file could not be read.
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The credential from `file` (which wins), else from `env[var]`; trailing whitespace ignored.
pub fn load(file: Option<&Path>, env: &Env, var: &str) -> Result<Secret, LoadError> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|source| LoadError::File {
                path: path.to_path_buf(),
                source,
            })?
            .trim_end()
            .to_string(),
        None => env
            .get(var)
            .map(|t| t.trim_end().to_string())
            .unwrap_or_default(),
    };
    if token.is_empty() {
        return Err(LoadError::Missing);
    }
    let token = Secret::new(token);
    check_strength(&token)?;
    Ok(token)
}

/// What loading the credential at start would refuse, as config errors: the section at `at`
/// takes it from its `token_file` (`file`) or the environment variable `var`. With file checks
/// off the file is not read.
pub fn validate(errors: &mut Errors, at: &str, file: Option<&Path>, var: &str) {
    if file.is_some() && !errors.checks_files() {
        return;
    }
    let field = join(at, "token_file");
    let (at, reason) = match load(file, errors.env(), var) {
        Ok(_) => return,
        Err(LoadError::Missing) if file.is_some() => (field, "the file is empty".to_string()),
        Err(LoadError::Missing) => (
            at.to_string(),
            format!("needs a bearer credential: set {field} or the environment variable {var}"),
        ),
        Err(LoadError::Weak) if file.is_some() => (
            field,
            format!("the credential in the file is shorter than {MIN_LEN} characters"),
        ),
        Err(LoadError::Weak) => (
            at.to_string(),
            format!("the environment variable {var} is shorter than {MIN_LEN} characters"),
        ),
        Err(LoadError::File { path, source }) => {
            (field, format!("cannot read {}: {source}", path.display()))
        }
    };
    errors.push(at, reason);
}

/// Refuses a credential shorter than [`MIN_LEN`] characters.
pub fn check_strength(token: &Secret) -> Result<(), LoadError> {
    if token.expose().chars().count() < MIN_LEN {
        Err(LoadError::Weak)
    } else {
        Ok(())
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn presented_bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_wins_and_short_or_missing_credentials_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-the-file-0123456789\n").unwrap();
        let env: Env = [("V".to_string(), "from-the-env-0123456789".to_string())].into();
        assert!(
            load(Some(&file), &env, "V")
                .unwrap()
                .matches("from-the-file-0123456789")
        );
        assert!(
            load(None, &env, "V")
                .unwrap()
                .matches("from-the-env-0123456789")
        );
        assert!(matches!(
            load(None, &Env::new(), "V"),
            Err(LoadError::Missing)
        ));
        let short: Env = [("V".to_string(), "short".to_string())].into();
        assert!(matches!(load(None, &short, "V"), Err(LoadError::Weak)));
        let gone = dir.path().join("gone");
        assert!(matches!(
            load(Some(&gone), &env, "V"),
            Err(LoadError::File { .. })
        ));
    }

    #[test]
    fn reads_bearer_tokens_only() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_bearer(&h), None);
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(presented_bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(presented_bearer(&h), None);
    }
}
