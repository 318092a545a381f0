//! TLS termination: rustls (ring), TLS 1.2 and 1.3 only, ALPN h2 and http/1.1, certificates
//! chosen by SNI, stateless session resumption, and certificates that reload without
//! dropping connections (the resolver swaps its set; handshakes in progress keep theirs).

mod failure;

pub use failure::HandshakeFailure;

use crate::config::{CertConfig, TlsConfig};
use arc_swap::ArcSwap;
use rustls::crypto::ring as ring_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why certificates or the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read certificates from {}: {detail}", .path.display())]
    Certs { path: PathBuf, detail: String },
    #[error("cannot read the private key from {}: {detail}", .path.display())]
    Key { path: PathBuf, detail: String },
    #[error("the key {} does not match the certificate {}: {detail}", .key.display(), .cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificates by server name, plus the default.
struct CertSet {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

/// Picks the certificate for a handshake by SNI. Cheap to read (one atomic load), swapped
/// whole on reload.
pub struct CertStore {
    set: ArcSwap<CertSet>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.set.load();
        f.debug_struct("CertStore")
            .field("names", &set.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CertStore {
    pub fn load(certs: &[CertConfig]) -> Result<Self, TlsError> {
        Ok(Self {
            set: ArcSwap::from_pointee(load_set(certs)?),
        })
    }

    /// New handshakes use `loaded`'s certificates (a reload loads and checks them before
    /// anything changes, then swaps them in here); open connections keep theirs.
    pub fn replace_with(&self, loaded: CertStore) {
        self.set.store(loaded.set.into_inner());
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.set.load();
        if let Some(name) = hello.server_name() {
            // rustls hands us the name already lower-cased and validated.
            if let Some(ck) = set.by_name.get(name) {
                return Some(ck.clone());
            }
        }
        Some(set.default.clone())
    }
}

/// Loads one certificate chain and its key exactly as serving would, and drops them:
/// `gateway config check` uses it to find unreadable, unparsable or mismatched files.
pub fn check_certificate(cert: &CertConfig) -> Result<(), TlsError> {
    load_certified_key(&cert.cert, &cert.key).map(drop)
}

fn load_set(certs: &[CertConfig]) -> Result<CertSet, TlsError> {
    let mut by_name = HashMap::new();
    let mut default = None;
    for c in certs {
        let ck = Arc::new(load_certified_key(&c.cert, &c.key)?);
        for name in &c.server_names {
            by_name.insert(name.to_ascii_lowercase(), ck.clone());
        }
        default.get_or_insert(ck);
    }
    let default = default.ok_or_else(|| TlsError::Certs {
        path: PathBuf::new(),
        detail: "no certificate configured".into(),
    })?;
    Ok(CertSet { by_name, default })
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Certs {
            path: cert.to_path_buf(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Certs {
            path: cert.to_path_buf(),
            detail: "no CERTIFICATE block in the file".into(),
        });
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        detail: e.to_string(),
    })?;
    let signing = ring_provider::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::Key {
            path: key.to_path_buf(),
            detail: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(ck)
}

/// The server configuration for the HTTPS listeners.
pub fn server_config(cfg: &TlsConfig, store: Arc<CertStore>) -> Result<ServerConfig, TlsError> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(ring_provider::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our cipher-suite order (AES-256-GCM, AES-128-GCM, ChaCha20; all AEAD with forward
    // secrecy), not the client's: a scanner (testssl.sh) rates a server without an order of
    // its own as a finding.
    config.ignore_client_order = true;
    // Stateful resumption (session ids) for TLS 1.2 clients without ticket support.
    config.session_storage = ServerSessionMemoryCache::new(16_384);
    if cfg.session_tickets {
        config.ticketer = ring_provider::Ticketer::new()?;
    }
    Ok(config)
}
