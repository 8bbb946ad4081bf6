//! PEM files and the rustls client config: reading certificate chains and private keys, and
//! the config with which a client (the Redis store over `rediss://`) verifies a server. The
//! listeners' server configs build on the same readers in `tollgate-server`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("invalid TLS setup: {0}")]
    Rustls(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The certificates of a PEM file (at least one).
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_slice()).collect();
    let certs = certs.map_err(|e| TlsError::Pem {
        path: path.into(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.into(),
            reason: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Pem {
            path: path.into(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: path.into(),
            reason: "no private key found".into(),
        })
}

/// The one crypto provider every Tollgate TLS config uses (ring), passed explicitly so that no
/// process-wide default has to be installed.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client config for connecting to a server (e.g. Redis over `rediss://`): trusting
/// the CAs in `ca_file`, or the system's when `None`. With `verify_hostname: false` the chain
/// is still verified but a certificate issued for another name is accepted.
pub fn client_config(
    ca_file: Option<&Path>,
    verify_hostname: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(ca) => {
            for c in certs(ca)? {
                roots.add(c).map_err(|e| TlsError::Pem {
                    path: ca.into(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::Rustls(
                    "no system CA certificates found; set a CA file".into(),
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let config = if verify_hostname {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crypto_provider(),
        )
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(inner)))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Verifies the chain as WebPKI does but accepts a certificate for any name.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    /// A CA and a server certificate for `localhost` it signed, written to `dir`:
    /// (ca file, (cert file, key file)).
    fn pki(dir: &Path, tag: &str) -> (PathBuf, (PathBuf, PathBuf)) {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let write = |name: &str, text: String| {
            let p = dir.join(format!("{tag}-{name}"));
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_file = write("ca.pem", ca.pem());
        let server = (
            write("cert.pem", leaf.pem()),
            write("key.pem", key.serialize_pem()),
        );
        (ca_file, server)
    }

    /// Whether a client with `client` completes a handshake with `server`, asking for `name`.
    async fn handshake(
        client: Arc<rustls::ClientConfig>,
        (cert, key): &(PathBuf, PathBuf),
        name: &str,
    ) -> bool {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs(cert).unwrap(), private_key(key).unwrap())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let accept = tokio::spawn(async move { acceptor.accept(b).await.is_ok() });
        let name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
        let ok = tokio_rustls::TlsConnector::from(client)
            .connect(name, a)
            .await
            .is_ok();
        drop(accept);
        ok
    }

    #[tokio::test]
    async fn client_verifies_the_chain_and_optionally_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, server) = pki(dir.path(), "a");
        let (other_ca, _) = pki(dir.path(), "b");
        let strict = client_config(Some(&ca), true).unwrap();
        let any_name = client_config(Some(&ca), false).unwrap();
        assert!(handshake(strict.clone(), &server, "localhost").await);
        assert!(!handshake(strict, &server, "redis.example").await);
        assert!(handshake(any_name, &server, "redis.example").await);
        // Skipping the name check never skips the chain.
        let untrusted = client_config(Some(&other_ca), false).unwrap();
        assert!(!handshake(untrusted, &server, "localhost").await);
    }
}
