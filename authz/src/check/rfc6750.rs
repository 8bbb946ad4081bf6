//! The denials a client sees, as RFC 6750 §3 asks: a `WWW-Authenticate` challenge with the
//! scheme the route expects (`Bearer`, or `ApiKey` on key-only routes), an error code only when
//! a credential was presented, the missing scope for `insufficient_scope`, and a small JSON
//! body naming the same error code. Nothing in them says more than the error code.

use crate::identity::Method;
use crate::reason::Reason;

use super::decision::Deny;

const REALM: &str = "tollgate";

/// The scheme named in the challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheme {
    Bearer,
    ApiKey,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Bearer => "Bearer",
            Scheme::ApiKey => "ApiKey",
        }
    }

    /// The scheme of a credential accepted by `method`.
    pub(super) fn of(method: Method) -> Self {
        if method == Method::ApiKey {
            Scheme::ApiKey
        } else {
            Scheme::Bearer
        }
    }
}

/// The kinds of denial.
#[derive(Debug, Clone, Copy)]
pub(super) enum Denial<'a> {
    /// No credential: 401 with a bare challenge (§3.1: no error code).
    Unauthenticated(Scheme),
    /// 400 invalid_request.
    BadRequest(Scheme),
    /// 401 invalid_token.
    InvalidToken(Scheme),
    /// 403 insufficient_scope, naming the missing scope when there is one.
    InsufficientScope(Scheme, Option<&'a str>),
    /// 403: no rule allows this request.
    Forbidden,
    /// 400: a path that could resolve to another route (a dot segment in any spelling).
    BadPath,
    /// 503: the credential could not be checked now (issuer, introspection or key store down).
    Unavailable,
}

impl Denial<'_> {
    /// The answer for this denial, with its method and reason for metrics and logs.
    pub(super) fn answer(self, method: Option<Method>, reason: Reason) -> Deny {
        let (status, error, scheme, scope) = match self {
            Denial::Unauthenticated(s) => (401, None, Some(s), None),
            Denial::BadRequest(s) => (400, Some("invalid_request"), Some(s), None),
            Denial::InvalidToken(s) => (401, Some("invalid_token"), Some(s), None),
            Denial::InsufficientScope(s, scope) => {
                (403, Some("insufficient_scope"), Some(s), scope)
            }
            Denial::BadPath => (400, Some("invalid_request"), None, None),
            Denial::Forbidden => (403, Some("access_denied"), None, None),
            Denial::Unavailable => (503, Some("temporarily_unavailable"), None, None),
        };
        let mut headers = Vec::with_capacity(4);
        if let Some(s) = scheme {
            headers.push(("www-authenticate", challenge(s, error, scope)));
        }
        if status == 503 {
            headers.push(("retry-after", "5".to_string()));
        }
        let body = match error {
            Some(e) => format!("{{\"error\":\"{e}\"}}"),
            None => "{\"error\":\"unauthorized\"}".to_string(),
        };
        json_denial(status, headers, body, method, reason)
    }
}

/// A denial with a JSON body, which must not be cached.
pub(super) fn json_denial(
    status: u16,
    mut headers: Vec<(&'static str, String)>,
    body: String,
    method: Option<Method>,
    reason: Reason,
) -> Deny {
    headers.push(("content-type", "application/json".to_string()));
    headers.push(("cache-control", "no-store".to_string()));
    Deny {
        status,
        headers,
        body,
        method,
        rate_limit: None,
        reason,
    }
}

fn challenge(scheme: Scheme, error: Option<&str>, scope: Option<&str>) -> String {
    let mut c = format!("{} realm=\"{REALM}\"", scheme.name());
    if let Some(e) = error {
        c.push_str(&format!(", error=\"{e}\""));
    }
    if let Some(sc) = scope {
        // Scopes are config values (validated: no spaces); quotes are dropped defensively.
        c.push_str(&format!(", scope=\"{}\"", sc.replace(['"', '\\'], "")));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(d: &'a Deny, name: &str) -> Option<&'a str> {
        d.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn challenges_name_the_error_only_for_a_presented_credential() {
        let d = Denial::Unauthenticated(Scheme::Bearer).answer(None, Reason::NoCredential);
        assert_eq!(d.status, 401);
        assert_eq!(
            header(&d, "www-authenticate"),
            Some("Bearer realm=\"tollgate\"")
        );
        assert_eq!(d.body, "{\"error\":\"unauthorized\"}");
        let d = Denial::InsufficientScope(Scheme::ApiKey, Some("ad\"min"))
            .answer(Some(Method::ApiKey), Reason::InsufficientScope);
        assert_eq!(d.status, 403);
        assert_eq!(
            header(&d, "www-authenticate"),
            Some("ApiKey realm=\"tollgate\", error=\"insufficient_scope\", scope=\"admin\"")
        );
        let d = Denial::Unavailable.answer(None, Reason::KeyStoreError);
        assert_eq!((d.status, header(&d, "retry-after")), (503, Some("5")));
        assert_eq!(header(&d, "www-authenticate"), None);
        assert_eq!(header(&d, "cache-control"), Some("no-store"));
    }
}
