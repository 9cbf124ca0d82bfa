//! Step 6: secrets through the cache — missing, rotated, stale within the
//! bound, then refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

fn short_ttl(stale_s: i64) -> impl FnOnce(&mut toml::Table) {
    move |d| {
        let s = table(d, "secrets");
        s.insert("cache_ttl_s".into(), 1.into());
        s.insert("stale_if_error_s".into(), stale_s.into());
    }
}

#[tokio::test]
async fn a_missing_project_secret_fails_only_that_project_and_leaves_the_pod_ready() {
    let mut w = World::new().await;
    w.projects.retain(|p| p.alias != "sales-prod");
    w.write_secrets();
    let gw = w.start().await;
    let r = gw.delete_new(&w.token("ops"), Some("sales-prod")).await;
    r.assert_gateway_error(503, "secrets_unavailable", "2");
    assert_eq!(w.audit_records()[0]["detail"], json!("secret_missing"));
    let r = gw.delete_new(&w.token("ops"), Some("marketing-prod")).await;
    assert_eq!(r.status, 204);
    assert_eq!(w.batch().count(), 1);
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.json()["checks"]["secrets"]["sales-prod"],
        json!("missing")
    );
    assert_eq!(
        ready.json()["checks"]["secrets"]["marketing-prod"],
        json!("ok")
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_malformed_project_key_makes_the_project_unavailable() {
    let mut w = World::new().await;
    w.projects[0].project_key = "project_NOT-VALID".into();
    w.write_secrets();
    let gw = w.start().await;
    let r = gw.delete_new(&w.token("growth"), None).await;
    r.assert_gateway_error(503, "secrets_unavailable", "2");
    assert_eq!(w.audit_records()[0]["detail"], json!("secret_invalid"));
    assert_eq!(w.batch().count(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn a_rotated_key_is_used_after_the_ttl_and_the_fingerprint_changes() {
    let mut w = World::new().await;
    let gw = w.start_with(short_ttl(3600)).await;
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    let new_key = "rk_rotated_0123456789".to_string();
    w.batch()
        .state
        .lock()
        .unwrap()
        .keys
        .insert(new_key.clone(), w.projects[0].project_key.clone());
    w.projects[0].rest_key = new_key.clone();
    w.write_secrets();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    let seen = w.batch().seen();
    assert_eq!(
        seen[1].all("authorization"),
        vec![format!("Bearer {new_key}")]
    );
    let attempts: Vec<_> = w
        .audit_records()
        .into_iter()
        .filter(|r| r["phase"] == json!("attempt"))
        .collect();
    assert_ne!(attempts[0]["key_fp"], attempts[1]["key_fp"]);
    assert_eq!(attempts[1]["secret_source"], json!("fresh"));
    gw.stop().await;
}

#[tokio::test]
async fn a_broken_secrets_file_is_served_stale_within_the_bound() {
    let w = World::new().await;
    let gw = w.start_with(short_ttl(3600)).await;
    w.write("secrets.toml", "this is [not toml");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    let attempt = &w.audit_records()[0];
    assert_eq!(attempt["secret_source"], json!("stale"));
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(
        ready.json()["checks"]["secrets"]["marketing-prod"],
        json!("stale")
    );
    // The stale copy never leaks the file's broken content into logs or answers.
    gw.stop().await;
}

#[tokio::test]
async fn past_the_stale_bound_nothing_is_forwarded() {
    let w = World::new().await;
    let gw = w.start_with(short_ttl(1)).await;
    std::fs::remove_file(w.path("secrets.toml")).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Within ttl + stale: still served.
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = gw.delete_new(&w.token("growth"), None).await;
    r.assert_gateway_error(503, "secrets_unavailable", "2");
    assert_eq!(w.batch().count(), 1);
    // No project has a usable secret: the pod is not ready.
    assert_eq!(gw.admin_get("/readyz").await.status, 503);
    gw.stop().await;
}
