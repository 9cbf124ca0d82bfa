//! Inbound TLS and mTLS on the data plane: HTTP/1.1 and h2 by ALPN, the
//! client certificate's subject in the audit record, certificate reload.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls_pki_types::ServerName;
use serde_json::json;
use support::*;

/// A gateway whose data plane asks for client certificates of a CA of
/// its own, returned with it.
async fn start_mtls(w: &World) -> (Running, Ca) {
    let client_ca = Ca::new("client CA");
    let t = server_tls(w, Some(&client_ca));
    let gw = w
        .start_with(|d| {
            table(d, "server").insert("tls".into(), t.into());
        })
        .await;
    (gw, client_ca)
}

#[tokio::test]
async fn mtls_admits_only_clients_of_the_ca_and_records_their_subject() {
    let w = World::new().await;
    let (gw, client_ca) = start_mtls(&w).await;
    let token = w.token("growth");
    let alice = client_ca.client("svc-cleaner.growth");
    // h2 and HTTP/1.1 both work for a client of the CA.
    let (st, v) = tls_delete(
        gw.addr,
        client_config(&w.ca.pem, Some(&alice), &[b"h2"]),
        true,
        &token,
    )
    .await
    .unwrap();
    assert_eq!((st, v.as_deref()), (204, Some("HTTP/2.0")));
    let (st, v) = tls_delete(
        gw.addr,
        client_config(&w.ca.pem, Some(&alice), &[b"http/1.1"]),
        false,
        &token,
    )
    .await
    .unwrap();
    assert_eq!((st, v.as_deref()), (204, Some("HTTP/1.1")));
    assert_eq!(
        w.batch().seen()[0].target,
        DELETE,
        "h2 requests forward the path only"
    );
    // No client certificate, or one from another CA: no HTTP at all.
    assert!(
        tls_delete(
            gw.addr,
            client_config(&w.ca.pem, None, &[b"h2"]),
            true,
            &token
        )
        .await
        .is_err()
    );
    let mallory = Ca::new("rogue").client("mallory");
    assert!(
        tls_delete(
            gw.addr,
            client_config(&w.ca.pem, Some(&mallory), &[b"http/1.1"]),
            false,
            &token
        )
        .await
        .is_err()
    );
    assert_eq!(w.batch().count(), 2);
    let attempt = w
        .audit_records()
        .into_iter()
        .find(|r| r["phase"] == json!("attempt"))
        .unwrap();
    assert_eq!(attempt["client_cert"], json!("CN=svc-cleaner.growth"));
    gw.stop().await;
}

/// HTTP/2 streams without a valid token whose bodies never end are
/// answered 401 at once and hold no in-flight slot: many of them on one
/// connection leave a valid delete on the same connection unaffected.
#[tokio::test]
async fn h2_tokenless_streams_with_endless_bodies_hold_no_slot() {
    use futures_util::StreamExt;
    let w = World::new().await;
    let t = server_tls(&w, None);
    let gw = w
        .start_with(|d| {
            let s = table(d, "server");
            s.insert("tls".into(), t.into());
            s.insert("max_concurrent_requests".into(), 2.into());
            s.insert("body_read_timeout_ms".into(), 10_000.into());
        })
        .await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(client_config(&w.ca.pem, None, &[b"h2"])));
    let tls = conn
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let (send, c) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(c);
    type Endless = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
    let endless = || -> Endless {
        let first = futures_util::stream::once(async {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(b"{")))
        });
        BodyExt::boxed(http_body_util::StreamBody::new(
            first.chain(futures_util::stream::pending()),
        ))
    };
    let uri = format!("https://127.0.0.1:{}{DELETE}", gw.addr.port());
    let mut streams = Vec::new();
    for i in 0..8 {
        let mut b = hyper::Request::post(uri.as_str()).header("content-length", "100");
        if i % 2 == 1 {
            b = b.header("authorization", "Bearer not.a.token");
        }
        let req = b.body(endless()).unwrap();
        let mut send = send.clone();
        streams.push(tokio::spawn(async move {
            send.ready().await.unwrap();
            send.send_request(req).await.map(|r| r.status().as_u16())
        }));
    }
    for s in streams {
        let st = tokio::time::timeout(std::time::Duration::from_secs(3), s)
            .await
            .expect("answered without waiting for the body")
            .unwrap()
            .unwrap();
        assert_eq!(st, 401);
    }
    // And more left pending while a valid delete runs on the connection.
    let mut pending = Vec::new();
    for _ in 0..4 {
        let req = hyper::Request::post(uri.as_str())
            .header("content-length", "100")
            .body(endless())
            .unwrap();
        let mut send = send.clone();
        pending.push(tokio::spawn(
            async move { send.send_request(req).await.is_ok() },
        ));
    }
    let body: Endless = Full::new(Bytes::from(delete_body(&campaign_id())))
        .map_err(|e| match e {})
        .boxed();
    let req = hyper::Request::post(uri.as_str())
        .header("authorization", format!("Bearer {}", w.token("growth")))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let mut s = send.clone();
    let resp = s.send_request(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(w.batch().count(), 1);
    gw.stop().await;
}

/// A client certificate's subject is caller-chosen text: a very long one
/// (with escapes) is recorded bounded, and the tokenless request's record
/// stays under 4 KiB.
#[tokio::test]
async fn a_huge_client_certificate_subject_is_recorded_bounded() {
    let w = World::new().await;
    let (gw, client_ca) = start_mtls(&w).await;
    let cn = format!("{}\u{1b}[31m{}", "\"".repeat(2000), "é".repeat(2000));
    let client = client_ca.client(&cn);
    let (st, _) = tls_delete(
        gw.addr,
        client_config(&w.ca.pem, Some(&client), &[b"http/1.1"]),
        false,
        "not-a-token",
    )
    .await
    .unwrap();
    assert_eq!(st, 401);
    gw.stop().await;
    let lines = w.audit_lines();
    let denied = lines
        .iter()
        .find(|l| l.contains("\"phase\":\"denied\""))
        .unwrap();
    assert!(denied.len() < 4096, "{} bytes", denied.len());
    let rec: serde_json::Value = serde_json::from_str(denied).unwrap();
    let subject = rec["client_cert"].as_str().unwrap();
    assert!(subject.starts_with("CN="), "{subject}");
    assert!(subject.chars().count() <= 512);
}

#[tokio::test]
async fn a_renewed_certificate_is_served_after_a_reload_without_a_restart() {
    let w = World::new().await;
    let t = server_tls(&w, None);
    let gw = w
        .start_with(|d| {
            table(d, "server").insert("tls".into(), t.into());
        })
        .await;
    let token = w.token("growth");
    assert_eq!(
        tls_delete(
            gw.addr,
            client_config(&w.ca.pem, None, &[b"http/1.1"]),
            false,
            &token
        )
        .await
        .unwrap()
        .0,
        204
    );
    // The certificate is renewed under a new CA; clients trusting only the
    // new CA connect once the gateway reloads.
    let next = Ca::new("next CA");
    let (cert, key) = next.server(&["127.0.0.1"], false);
    w.write("tls/gw.pem", &cert);
    w.write("tls/gw.key", &key);
    assert!(
        tls_delete(
            gw.addr,
            client_config(&next.pem, None, &[b"http/1.1"]),
            false,
            &token
        )
        .await
        .is_err()
    );
    gw.app.reload().await.unwrap();
    assert_eq!(
        tls_delete(
            gw.addr,
            client_config(&next.pem, None, &[b"http/1.1"]),
            false,
            &token
        )
        .await
        .unwrap()
        .0,
        204
    );
    gw.stop().await;
}
