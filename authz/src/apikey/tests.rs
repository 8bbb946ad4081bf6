//! Unit tests of the API key service against the embedded store.
