//! JWT signature verification backed by `ring`, installed as jsonwebtoken's process-wide crypto
//! provider: several times faster than the pure-Rust RSA backend on the uncached path, refuses
//! RSA keys under 2048 bits, and has no HMAC verifier at all, so a shared-secret algorithm cannot
//! verify anything even if one slipped past the key and config checks. Signing (used only by
//! tests and tools) stays with the RustCrypto backend.

use std::sync::OnceLock;

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::signature as rs;

/// Installs the provider once per process; returns whether ours is the one in use.
pub fn install() -> bool {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    let provider = PROVIDER.get_or_init(|| {
        let mut p = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.clone();
        p.verifier_factory = verifier;
        p
    });
    match provider.install_default() {
        Ok(()) => true,
        Err(current) => std::ptr::eq(current, provider),
    }
}

enum Key {
    /// RSA modulus and exponent (from a JWK).
    RsaComponents { n: Vec<u8>, e: Vec<u8> },
    /// PKCS#1 RSAPublicKey DER (from a PEM), or an EC point / Ed25519 key.
    Bytes(Vec<u8>),
}

struct RingVerifier {
    alg: Algorithm,
    key: Key,
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    if key.family() != alg.family() {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    let key = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => Key::RsaComponents {
            n: n.clone(),
            e: e.clone(),
        },
        DecodingKeyKind::SecretOrDer(b) => Key::Bytes(b.clone()),
    };
    Ok(Box::new(RingVerifier { alg: *alg, key }))
}

impl RingVerifier {
    fn rsa_params(&self) -> Option<&'static rs::RsaParameters> {
        Some(match self.alg {
            Algorithm::RS256 => &rs::RSA_PKCS1_2048_8192_SHA256,
            Algorithm::RS384 => &rs::RSA_PKCS1_2048_8192_SHA384,
            Algorithm::RS512 => &rs::RSA_PKCS1_2048_8192_SHA512,
            Algorithm::PS256 => &rs::RSA_PSS_2048_8192_SHA256,
            Algorithm::PS384 => &rs::RSA_PSS_2048_8192_SHA384,
            Algorithm::PS512 => &rs::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let ok = match (self.rsa_params(), &self.key) {
            (Some(params), Key::RsaComponents { n, e }) => rs::RsaPublicKeyComponents { n, e }
                .verify(params, msg, sig)
                .is_ok(),
            (Some(params), Key::Bytes(der)) => rs::UnparsedPublicKey::new(params, der)
                .verify(msg, sig)
                .is_ok(),
            (None, Key::Bytes(point)) => {
                let alg: &dyn rs::VerificationAlgorithm = match self.alg {
                    Algorithm::ES256 => &rs::ECDSA_P256_SHA256_FIXED,
                    Algorithm::ES384 => &rs::ECDSA_P384_SHA384_FIXED,
                    Algorithm::EdDSA => &rs::ED25519,
                    _ => return Err(signature::Error::new()),
                };
                rs::UnparsedPublicKey::new(alg, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            (None, Key::RsaComponents { .. }) => false,
        };
        if ok {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}
