//! The admin plane: never behind JWT auth, readiness that names its checks,
//! metrics in Prometheus text.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::*;

#[tokio::test]
async fn health_readiness_and_metrics_answer_without_credentials() {
    let w = World::new().await;
    let gw = w.start().await;
    assert_eq!(gw.admin_get("/healthz").await.status, 200);
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.json(),
        json!({"ready": true, "checks": {
            "config": "ok", "audit_file": "ok", "secrets_backend": "ok",
            "secrets": {"marketing-prod": "ok", "sales-prod": "ok"},
            "issuers": {ISS: "ok", ISS2: "ok"}}})
    );
    assert_eq!(gw.admin_get("/nope").await.status, 404);
    // The data plane does not serve admin paths.
    let r = gw.request("GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 401);

    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    gw.delete(&w.token("support"), Some("marketing-prod"), b"{}")
        .await;
    let m = gw.admin_get("/metrics").await;
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(m.body).unwrap();
    for line in [
        "batch_gateway_requests_total{action=\"campaigns.delete\",decision=\"allow\",reason=\"ok\",status_class=\"2xx\"} 1",
        "batch_gateway_requests_total{action=\"campaigns.delete\",decision=\"deny\",reason=\"forbidden\",status_class=\"4xx\"} 1",
        "batch_gateway_upstream_duration_seconds_count 1",
        "batch_gateway_request_duration_seconds_count 3",
        "batch_gateway_audit_write_duration_seconds_count 1",
    ] {
        assert!(text.contains(line), "missing {line}\n{text}");
    }
    let secrets = [
        w.project("marketing-prod").rest_key.as_str(),
        w.hmac_key.as_str(),
    ];
    for s in secrets {
        assert!(!text.contains(s));
        assert!(!String::from_utf8_lossy(&ready.body).contains(s));
    }
    gw.stop().await;
}
