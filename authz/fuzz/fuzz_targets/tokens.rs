//! Fuzzes everything that reads an attacker's credential before it is trusted: the
//! Authorization header, the JWT header and claims parsing, key selection and verification
//! against inline keys, as a bearer token and as raw bytes. None of it may panic, and nothing
//! that was not signed by the configured key may verify.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use tollgate_authz::check::bearer_token;
use tollgate_authz::identity::jwt::{JwtConfig, JwtVerifier};

/// An EC P-256 public key (test fixture); the fuzzer does not have its private half.
const KEY: &str = r#"{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

struct Target {
    rt: tokio::runtime::Runtime,
    verifier: JwtVerifier,
}

fn target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(|| {
        let cfg: JwtConfig = serde_yaml::from_str(&format!(
            "issuers:\n  - issuer: https://issuer.test\n    audiences: [https://api.test]\n    keys: [{KEY}]\n"
        ))
        .expect("fixture config");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let verifier = JwtVerifier::new(&cfg, reqwest::Client::new(), Arc::new(move || now)).expect("verifier");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        Target { rt, verifier }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let t = target();
    if let Ok(Some(token)) = bearer_token(Some(text)) {
        assert!(t.rt.block_on(t.verifier.verify(token)).is_err(), "a forged token verified");
    }
    let _ = JwtVerifier::looks_like_jwt(text);
    let _ = jsonwebtoken::decode_header(text);
    assert!(t.rt.block_on(t.verifier.verify(text)).is_err(), "a forged token verified");
});
