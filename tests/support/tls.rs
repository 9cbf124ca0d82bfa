//! TLS clients of the gateway's data plane: a rustls client config (with
//! ALPN and an optional client certificate), the gateway's own certificate
//! and `[server.tls]` table, and one delete over HTTP/1.1 or h2.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{Ca, DELETE, World, campaign_id, delete_body};

/// A TLS connection to the gateway at `addr`.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    cfg: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

pub fn client_config(
    ca_pem: &str,
    client: Option<&(String, String)>,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(cert.as_bytes())
                .map(|c| c.unwrap())
                .collect();
            b.with_client_auth_cert(
                certs,
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap()
        }
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg
}

/// Writes a server certificate for 127.0.0.1 (from the world's CA), and
/// the client CA when given; returns the `[server.tls]` table naming them.
pub fn server_tls(w: &World, client_ca: Option<&Ca>) -> toml::Table {
    let (cert, key) = w.ca.server(&["127.0.0.1"], false);
    w.write("tls/gw.pem", &cert);
    w.write("tls/gw.key", &key);
    let mut t: toml::Table =
        toml::from_str("cert_file = \"tls/gw.pem\"\nkey_file = \"tls/gw.key\"").unwrap();
    if let Some(ca) = client_ca {
        w.write("tls/clients.pem", &ca.pem);
        t.insert("client_ca_file".into(), "tls/clients.pem".into());
    }
    t
}

/// One delete over TLS; `h2` picks the protocol by ALPN.
pub async fn tls_delete(
    addr: std::net::SocketAddr,
    cfg: rustls::ClientConfig,
    h2: bool,
    token: &str,
) -> Result<(u16, Option<String>), String> {
    let tls = tls_connect(addr, cfg).await?;
    let io = hyper_util::rt::TokioIo::new(tls);
    // HTTP/1.1 sends origin-form (an absolute-form target is refused);
    // h2 carries scheme and authority beside :path.
    let uri = if h2 {
        format!("https://127.0.0.1:{}{DELETE}", addr.port())
    } else {
        DELETE.to_string()
    };
    let req = hyper::Request::post(uri)
        .header("host", format!("127.0.0.1:{}", addr.port()))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(delete_body(&campaign_id()))))
        .unwrap();
    let resp = if h2 {
        let (mut send, c) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2: {e}"))?;
        tokio::spawn(c);
        send.send_request(req)
            .await
            .map_err(|e| format!("h2 request: {e}"))?
    } else {
        let (mut send, c) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("h1: {e}"))?;
        tokio::spawn(c);
        send.send_request(req)
            .await
            .map_err(|e| format!("h1 request: {e}"))?
    };
    let status = resp.status().as_u16();
    let version = format!("{:?}", resp.version());
    let _ = resp.into_body().collect().await;
    Ok((status, Some(version)))
}
