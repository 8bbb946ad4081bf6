//! The npm oidc-provider server, spawned per test.
