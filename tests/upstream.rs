//! Step 8 against a Batch that cannot be reached, is slow, or presents a
//! certificate the gateway must not trust. Each still gets its outcome
//! record. And the connections to Batch: kept alive, reused, and given up
//! when Batch closes them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn last_outcome(w: &World) -> serde_json::Value {
    w.audit_records()
        .into_iter()
        .rev()
        .find(|r| r["phase"] == json!("outcome"))
        .unwrap()
}

#[tokio::test]
async fn an_unreachable_batch_is_502_with_an_outcome_record() {
    let w = World::without_batch();
    let gw = w.start().await;
    let r = gw.delete_new(&w.token("growth"), None).await;
    r.assert_gateway_error(502, "upstream_unreachable", "0");
    let out = last_outcome(&w);
    assert_eq!(out["reason"], json!("upstream_unreachable"));
    assert_eq!(out["detail"], json!("connect"));
    assert!(out["upstream"]["latency_ms"].is_u64());
    gw.stop().await;
}

#[tokio::test]
async fn a_slow_batch_is_504_within_the_request_timeout() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            table(d, "upstream").insert("request_timeout_ms".into(), 500.into());
        })
        .await;
    w.batch().set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let r = gw.delete_new(&w.token("growth"), None).await;
    r.assert_gateway_error(504, "upstream_timeout", "0");
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert_eq!(last_outcome(&w)["reason"], json!("upstream_timeout"));
    gw.stop().await;
}

async fn refused_tls(cert: (String, String)) {
    let mut w = World::without_batch();
    w.start_batch(&cert.0, &cert.1).await;
    let gw = w.start().await;
    let r = gw.delete_new(&w.token("growth"), None).await;
    r.assert_gateway_error(502, "upstream_unreachable", "0");
    assert_eq!(
        w.batch().count(),
        0,
        "an HTTP request reached an untrusted server"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    let rogue = Ca::new("rogue");
    refused_tls(rogue.server(&["127.0.0.1"], false)).await;
}

#[tokio::test]
async fn a_certificate_for_another_host_is_refused() {
    let w = World::without_batch();
    refused_tls(w.ca.server(&["api.batch.invalid"], false)).await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let w = World::without_batch();
    refused_tls(w.ca.server(&["127.0.0.1"], true)).await;
}

#[tokio::test]
async fn connections_to_batch_are_kept_alive_and_reused() {
    let w = World::new().await;
    let gw = w.start().await;
    let token = w.token("growth");
    for _ in 0..5 {
        assert_eq!(gw.delete_new(&token, None).await.status, 204);
    }
    assert_eq!(w.batch().count(), 5);
    assert_eq!(w.batch().connections(), 1, "one keep-alive connection");

    // Concurrent requests open what they need, and those connections
    // serve what comes next.
    let many = futures_util::future::join_all((0..8).map(|_| gw.delete_new(&token, None))).await;
    assert!(many.iter().all(|r| r.status == 204), "{many:?}");
    let opened = w.batch().connections();
    assert!((1..=8).contains(&opened), "{opened} connections");
    for _ in 0..5 {
        assert_eq!(gw.delete_new(&token, None).await.status, 204);
    }
    assert_eq!(w.batch().connections(), opened, "idle connections reused");
    assert_eq!(w.batch().count(), 18);
    gw.stop().await;
}

#[tokio::test]
async fn a_connection_batch_closed_is_not_used_again() {
    let w = World::new().await;
    let gw = w.start().await;
    let token = w.token("growth");
    // Batch drops idle connections: each request finds its connection
    // closed and goes out, once, on a new one. (The margins leave a slow
    // test machine time for a handshake and a request per connection.)
    w.batch().set_close_after(Duration::from_millis(500));
    for _ in 0..3 {
        assert_eq!(gw.delete_new(&token, None).await.status, 204);
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    assert_eq!(w.batch().count(), 3, "no request was sent twice");
    assert_eq!(w.batch().connections(), 3);

    // An answer saying `Connection: close` ends its connection.
    let w2 = World::new().await;
    let gw2 = w2.start().await;
    let token = w2.token("growth");
    w2.batch().force(204, &[("connection", "close")], b"");
    for _ in 0..3 {
        assert_eq!(gw2.delete_new(&token, None).await.status, 204);
    }
    assert_eq!(w2.batch().connections(), 3);
    gw.stop().await;
    gw2.stop().await;
}

#[tokio::test]
async fn a_connection_that_breaks_mid_answer_is_502_and_not_retried() {
    let w = World::new().await;
    let gw = w.start().await;
    let token = w.token("growth");
    assert_eq!(gw.delete_new(&token, None).await.status, 204);
    // Batch reads the request on the kept-alive connection, then drops it.
    w.batch().state.lock().unwrap().drop_connection = true;
    let r = gw.delete_new(&token, None).await;
    r.assert_gateway_error(502, "upstream_unreachable", "0");
    assert_eq!(last_outcome(&w)["detail"], json!("exchange"));
    assert_eq!(
        w.batch().count(),
        2,
        "a request Batch may have seen is not resent"
    );
    // The next request gets a new connection.
    w.batch().state.lock().unwrap().drop_connection = false;
    assert_eq!(gw.delete_new(&token, None).await.status, 204);
    assert_eq!(w.batch().connections(), 2);
    gw.stop().await;
}
