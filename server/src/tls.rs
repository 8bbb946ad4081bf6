//! TLS for the listeners: a rustls server config built from PEM files, with optional client
//! certificate verification (mTLS), rebuilt when the files change.
//!
//! The files are watched through their parent directories (`tollgate_common::watch`), because
//! Kubernetes updates mounted Secrets by swapping a `..data` symlink, which a watch on the file
//! itself never sees; SIGHUP reloads them too. A reload that fails (half-written file,
//! mismatched key) keeps the previous config and logs why.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig as RustlsConfig;
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;
use tollgate_common::config::{Errors, Validate};
use tollgate_common::tls::{TlsError, certs, crypto_provider, private_key};
use tollgate_common::watch::Watcher;

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
        if errors.checks_files()
            && let Err(e) = build(self, &[])
        {
            errors.push(at.to_string(), e.to_string());
        }
    }
}

/// Builds a rustls server config offering `alpn` protocols.
pub fn build(cfg: &TlsConfig, alpn: &[&[u8]]) -> Result<Arc<RustlsConfig>, TlsError> {
    let chain = certs(&cfg.cert_file)?;
    let key = private_key(&cfg.key_file)?;
    let builder = RustlsConfig::builder_with_provider(crypto_provider())
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
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
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

/// A TLS acceptor whose config is swapped in place when the certificate files change (or on
/// SIGHUP).
#[derive(Clone)]
pub struct ReloadingAcceptor {
    current: Arc<ArcSwap<RustlsConfig>>,
    // Stops the reload task with the last clone of the acceptor.
    _reload: Option<Arc<AbortOnDrop>>,
}

impl std::fmt::Debug for ReloadingAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingAcceptor").finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ReloadingAcceptor {
    /// Builds the initial config (failing if it is invalid) and starts watching the files.
    pub fn new(cfg: &TlsConfig, alpn: &'static [&'static [u8]]) -> Result<Self, TlsError> {
        let current = Arc::new(ArcSwap::new(build(cfg, alpn)?));
        let reload = watch(cfg.clone(), alpn, current.clone());
        Ok(Self {
            current,
            _reload: reload.map(Arc::new),
        })
    }

    /// An acceptor for the config in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

/// Rebuilds the config on every change to the files' directories and on SIGHUP.
fn watch(
    cfg: TlsConfig,
    alpn: &'static [&'static [u8]],
    current: Arc<ArcSwap<RustlsConfig>>,
) -> Option<AbortOnDrop> {
    let files = [
        Some(&cfg.cert_file),
        Some(&cfg.key_file),
        cfg.client_ca_file.as_ref(),
    ];
    let mut watcher = match Watcher::new(files.into_iter().flatten()) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch TLS files; certificates will not be reloaded");
            return None;
        }
    };
    let task = tokio::spawn(async move {
        loop {
            // The watcher waits for the writes to settle: writers often replace cert and
            // key in two steps.
            watcher.changed().await;
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
    Some(AbortOnDrop(task.abort_handle()))
}
