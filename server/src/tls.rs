//! TLS for the listeners: a rustls server config built from PEM files, with optional client
//! certificate verification (mTLS), rebuilt when the files change.
//!
//! The files are watched through their parent directories, because Kubernetes updates mounted
//! Secrets by swapping a `..data` symlink, which a watch on the file itself never sees. A reload
//! that fails (half-written file, mismatched key) keeps the previous config and logs why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig as RustlsConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use tollgate_common::config::{Errors, Validate};

/// The `tls:` section of a listener.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl Validate for TlsConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        if let Err(e) = build(self, &[]) {
            errors.push(at.to_string(), e.to_string());
        }
    }
}

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

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a rustls server config offering `alpn` protocols.
pub fn build(cfg: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<RustlsConfig>, TlsError> {
    let chain = certs(&cfg.cert_file)?;
    let key = key(&cfg.key_file)?;
    let builder = RustlsConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &cfg.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| TlsError::Pem {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Rustls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A TLS acceptor whose config is swapped in place when the certificate files change.
#[derive(Clone)]
pub struct ReloadingAcceptor {
    current: Arc<ArcSwap<RustlsConfig>>,
    // Keeps the file watcher alive as long as the acceptor.
    _watcher: Arc<Option<notify::RecommendedWatcher>>,
}

impl std::fmt::Debug for ReloadingAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingAcceptor").finish_non_exhaustive()
    }
}

impl ReloadingAcceptor {
    /// Builds the initial config (failing if it is invalid) and starts watching the files.
    pub fn new(cfg: &TlsConfig, alpn: &'static [&'static [u8]]) -> Result<Self, TlsError> {
        let current = Arc::new(ArcSwap::new(build(cfg, alpn)?));
        let watcher = watch(cfg.clone(), alpn, current.clone());
        Ok(Self {
            current,
            _watcher: Arc::new(watcher),
        })
    }

    /// An acceptor for the config in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

fn watch(
    cfg: TlsConfig,
    alpn: &'static [&'static [u8]],
    current: Arc<ArcSwap<RustlsConfig>>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = match notify::recommended_watcher(
        move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.try_send(());
            }
        },
    ) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch TLS files; certificates will not be reloaded");
            return None;
        }
    };
    let mut dirs: Vec<PathBuf> = [
        Some(&cfg.cert_file),
        Some(&cfg.key_file),
        cfg.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        p.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    })
    .map(|p| {
        if p.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            p
        }
    })
    .collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot watch TLS directory");
        }
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Writers often replace cert and key in two steps: let them finish.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            match build(&cfg, alpn) {
                Ok(new) => {
                    current.store(new);
                    tracing::info!(cert = %cfg.cert_file.display(), "TLS certificates reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the previous certificates")
                }
            }
        }
    });
    Some(watcher)
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
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let config = if verify_hostname {
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
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
    /// (ca file, server config).
    fn pki(dir: &Path, tag: &str) -> (PathBuf, TlsConfig) {
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
        let server = TlsConfig {
            cert_file: write("cert.pem", leaf.pem()),
            key_file: write("key.pem", key.serialize_pem()),
            client_ca_file: None,
        };
        (ca_file, server)
    }

    /// Whether a client with `client` completes a handshake with `server`, asking for `name`.
    async fn handshake(client: Arc<rustls::ClientConfig>, server: &TlsConfig, name: &str) -> bool {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(build(server, &[]).unwrap());
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
