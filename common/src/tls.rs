//! TLS for a listener (the gateway; the webhook and token service), with the certificate
//! reloaded when its files change (cert-manager renews by rewriting the Secret volume): new
//! handshakes get the new certificate, open connections keep theirs. A bad pair on disk keeps
//! the last good one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate file {path}: {why}")]
    Cert { path: PathBuf, why: String },
    #[error("cannot read the TLS key file {path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error("the TLS key in {0} is not usable (RSA, ECDSA or Ed25519 PKCS#8/PKCS#1/SEC1 expected)")]
    Unsupported(PathBuf),
    #[error("cannot configure TLS: {0}")]
    Config(String),
}

fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |why: String| TlsError::Cert { path: cert.to_owned(), why };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("it holds no PEM certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.to_owned(), why: e.to_string() })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|_| TlsError::Unsupported(key.to_owned()))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Modification time and size of a file, or `None` when it cannot be read.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: std::sync::Mutex<(Stamp, Stamp)>,
}

impl ReloadingCert {
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Self, TlsError> {
        let stamps = (stamp(&cert), stamp(&key));
        let loaded = load(&cert, &key)?;
        Ok(Self {
            cert,
            key,
            current: RwLock::new(Arc::new(loaded)),
            stamps: std::sync::Mutex::new(stamps),
        })
    }

    /// Reloads when either file changed. Returns whether a new pair is in use.
    pub fn reload_if_changed(&self) -> bool {
        let now = (stamp(&self.cert), stamp(&self.key));
        {
            let mut last = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if *last == now {
                return false;
            }
            *last = now;
        }
        match load(&self.cert, &self.key) {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(error) => {
                // Often a half-written pair (cert renewed, key not yet): the next poll retries.
                tracing::warn!(%error, "TLS certificate changed but cannot be loaded; keeping the old one");
                *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = (None, None);
                false
            }
        }
    }

    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let me = me.clone();
                let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
            }
        });
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

pub fn acceptor(cert: Arc<ReloadingCert>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
