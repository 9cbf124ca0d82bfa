//! rustls both ways, for every TLS the gateway speaks: trust roots from
//! PEM files, the client config and HTTPS connector (Batch, the JWKS
//! fetcher, Vault), and the data plane's server config with certificate
//! and client-CA reload, ALPN h2 and http/1.1, and the client subject.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    Empty { path: String },
    #[error("{path}: a certificate cannot be used as a trust root")]
    Bad { path: String },
    /// Config validation already requires a host; never printed with the
    /// URL, which could carry user info.
    #[error("upstream.base_url: no usable host")]
    BadUrl,
}

/// Reads PEM certificates to trust as roots.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: shown.clone(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Bad {
            path: shown.clone(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: shown });
    }
    Ok(certs)
}

/// A TLS client configuration trusting the webpki roots plus `ca_file`.
pub fn tls_client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca_file {
        for cert in load_ca_file(ca)? {
            roots.add(cert).map_err(|_| TlsError::Bad {
                path: ca.display().to_string(),
            })?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| TlsError::Bad {
            path: "(rustls protocol versions)".into(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An HTTPS-only connector trusting the webpki roots plus `ca_file`, for
/// the JWKS fetcher and the Vault client.
pub fn https_connector(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, TlsError> {
    let tls = tls_client_config(ca_file)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

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
            for cert in load_ca_file(ca).map_err(|e| e.to_string())? {
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
