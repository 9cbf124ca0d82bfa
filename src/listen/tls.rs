//! Inbound TLS (and mTLS) for the data plane: rustls, ALPN h2 and
//! http/1.1, certificate and client-CA reload without a restart.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Builds the server config from the files `cfg` names.
pub fn server_config(cfg: &TlsConfig) -> Result<rustls::ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cert_file {}: {e}", cfg.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "cert_file {}: no certificate",
            cfg.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file)
        .map_err(|e| format!("key_file {}: {e}", cfg.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in crate::forward::load_ca_file(ca).map_err(|e| e.to_string())? {
                roots
                    .add(cert)
                    .map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("cert_file/key_file do not match or are unusable: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The live TLS config; `reload` swaps it for new connections.
pub struct Tls {
    cfg: TlsConfig,
    current: ArcSwap<rustls::ServerConfig>,
}

impl Tls {
    pub fn new(cfg: &TlsConfig) -> Result<Tls, String> {
        Ok(Tls {
            cfg: cfg.clone(),
            current: ArcSwap::from_pointee(server_config(cfg)?),
        })
    }

    /// Re-reads the certificate, key and client CA; keeps the old ones on error.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = server_config(&self.cfg)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

/// The subject of the client's certificate (mTLS), as `CN=…, O=…`.
pub fn client_subject(conn: &rustls::ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject().to_string();
    Some(crate::common::bounded(&subject, 256).to_string())
}
