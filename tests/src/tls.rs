//! A test certificate authority (rcgen) that issues server certificates for `localhost` and
//! `127.0.0.1`, and rustls client configurations that trust only that CA.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

/// A self-signed CA, used as the only trust root of the test clients.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A server certificate issued by [`TestCa`], with its key.
#[derive(Clone)]
pub struct ServerCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// The leaf in DER: compare with what a client saw in the handshake.
    pub der: Vec<u8>,
    pub common_name: String,
}

impl TestCa {
    pub fn new() -> Result<Self> {
        let key = KeyPair::generate().context("CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "gateway test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).context("self-sign the CA")?;
        Ok(Self { cert, key })
    }

    /// The CA certificate in DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A certificate for `localhost` and `127.0.0.1` with the given common name and serial.
    pub fn issue(&self, common_name: &str, serial: u64) -> Result<ServerCert> {
        let key = KeyPair::generate().context("server key")?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_string()]).context("server params")?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .context("sign the server certificate")?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            common_name: common_name.to_string(),
        })
    }

    /// A client configuration trusting only this CA, offering `alpn` (e.g. `[b"h2"]`).
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der()).context("add the test CA")?;
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .context("TLS versions")?
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Every connection makes a full handshake: a resumed session shows the certificate
        // of the session it resumes, not the one the server would present now.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

impl ServerCert {
    /// Writes the certificate and key to `cert` and `key`, each replaced atomically (written
    /// beside, then renamed), so a reader never sees a half-written file.
    pub fn write(&self, cert: &Path, key: &Path) -> Result<()> {
        for (path, text) in [(cert, &self.cert_pem), (key, &self.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
            std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
        }
        Ok(())
    }
}
