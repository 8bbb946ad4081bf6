//! Why a Check was answered the way it was: one closed list, so that the `reason` label of the
//! metrics is bounded by construction and every adapter reports the same words.
//!
//! A reason goes to metrics, traces and logs only; the client learns no more than the RFC 6750
//! error code of its answer.

/// The reason of one decision (allowed or denied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    // Allowed.
    /// Authenticated and every condition met.
    Allowed,
    /// The rule is public.
    Public,
    /// The route switched the checks off (its per-route settings say `disabled`).
    RouteDisabled,

    // The request itself.
    /// The check carried no HTTP request.
    NoHttpAttributes,
    /// A path with a dot segment in some spelling.
    DotSegment,
    /// The route names a rule the policy does not have.
    UnknownRule,
    /// No rule matches and `no_match` denies.
    NoRule,
    /// The route's identity override is not a list of methods.
    BadRouteOverride,
    /// `Authorization: Bearer` with something that is not a token.
    MalformedAuthorization,
    /// Two credentials, or one credential twice.
    AmbiguousCredentials,
    /// No credential a method of the rule understands.
    NoCredential,
    /// The chosen method has no section in the config.
    NotConfigured,
    /// A state the decision flow should never reach.
    Internal,

    // The credential.
    Malformed,
    TokenTooLarge,
    BadSignature,
    UnsupportedCrit,
    MissingIss,
    UnknownIssuer,
    AlgorithmNotAllowed,
    UnknownKid,
    NoKeys,
    WrongAudience,
    WrongIssuer,
    MissingExp,
    MalformedExp,
    MalformedNbf,
    Expired,
    NotYetValid,
    MissingSubject,
    Inactive,
    IntrospectionError,
    IntrospectionTimeout,
    /// No such API key, or not its secret.
    Unknown,
    Revoked,
    /// The key store failed and the key was not known from before.
    KeyStoreError,

    // The identity, against the rule.
    /// A value that cannot be sent as a header as it is.
    ControlCharacter,
    ValueTooLarge,
    MalformedScope,
    InsufficientScope,
    ClaimCondition,

    // Rate limiting (single-call mode).
    /// Over a limit.
    RateLimited,
    /// The counter store failed and the failure mode is `error`.
    RateLimitStoreError,
}

impl Reason {
    /// How many reasons there are.
    pub const COUNT: usize = Reason::RateLimitStoreError as usize + 1;

    /// Every reason, in declaration order.
    pub const ALL: [Reason; Reason::COUNT] = [
        Reason::Allowed,
        Reason::Public,
        Reason::RouteDisabled,
        Reason::NoHttpAttributes,
        Reason::DotSegment,
        Reason::UnknownRule,
        Reason::NoRule,
        Reason::BadRouteOverride,
        Reason::MalformedAuthorization,
        Reason::AmbiguousCredentials,
        Reason::NoCredential,
        Reason::NotConfigured,
        Reason::Internal,
        Reason::Malformed,
        Reason::TokenTooLarge,
        Reason::BadSignature,
        Reason::UnsupportedCrit,
        Reason::MissingIss,
        Reason::UnknownIssuer,
        Reason::AlgorithmNotAllowed,
        Reason::UnknownKid,
        Reason::NoKeys,
        Reason::WrongAudience,
        Reason::WrongIssuer,
        Reason::MissingExp,
        Reason::MalformedExp,
        Reason::MalformedNbf,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::MissingSubject,
        Reason::Inactive,
        Reason::IntrospectionError,
        Reason::IntrospectionTimeout,
        Reason::Unknown,
        Reason::Revoked,
        Reason::KeyStoreError,
        Reason::ControlCharacter,
        Reason::ValueTooLarge,
        Reason::MalformedScope,
        Reason::InsufficientScope,
        Reason::ClaimCondition,
        Reason::RateLimited,
        Reason::RateLimitStoreError,
    ];

    /// A dense index (`0..COUNT`), for tables of metric handles.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::Public => "public",
            Reason::RouteDisabled => "route_disabled",
            Reason::NoHttpAttributes => "no_http_attributes",
            Reason::DotSegment => "dot_segment",
            Reason::UnknownRule => "unknown_rule",
            Reason::NoRule => "no_rule",
            Reason::BadRouteOverride => "bad_route_override",
            Reason::MalformedAuthorization => "malformed_authorization",
            Reason::AmbiguousCredentials => "ambiguous_credentials",
            Reason::NoCredential => "no_credential",
            Reason::NotConfigured => "not_configured",
            Reason::Internal => "internal",
            Reason::Malformed => "malformed",
            Reason::TokenTooLarge => "token_too_large",
            Reason::BadSignature => "bad_signature",
            Reason::UnsupportedCrit => "unsupported_crit",
            Reason::MissingIss => "missing_iss",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::UnknownKid => "unknown_kid",
            Reason::NoKeys => "no_keys",
            Reason::WrongAudience => "wrong_audience",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::MissingExp => "missing_exp",
            Reason::MalformedExp => "malformed_exp",
            Reason::MalformedNbf => "malformed_nbf",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::MissingSubject => "missing_subject",
            Reason::Inactive => "inactive",
            Reason::IntrospectionError => "introspection_error",
            Reason::IntrospectionTimeout => "introspection_timeout",
            Reason::Unknown => "unknown",
            Reason::Revoked => "revoked",
            Reason::KeyStoreError => "key_store_error",
            Reason::ControlCharacter => "control_character",
            Reason::ValueTooLarge => "value_too_large",
            Reason::MalformedScope => "malformed_scope",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::ClaimCondition => "claim_condition",
            Reason::RateLimited => "rate_limited",
            Reason::RateLimitStoreError => "rate_limit_store_error",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_with_its_own_label() {
        let mut labels = std::collections::HashSet::new();
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?} out of order in ALL");
            assert!(labels.insert(r.as_str()), "{r:?}: label used twice");
            assert!(
                r.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{r:?}"
            );
        }
    }
}
