//! Step 8 against a Batch that cannot be reached, is slow, or presents a
//! certificate the gateway must not trust. Each still gets its outcome record.

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
