//! What Batch sees and what the caller gets back (steps 8-9).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use support::*;

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn a_signed_delete_reaches_batch_once_with_the_secret_key_and_canonical_body() {
    let w = World::new().await;
    let gw = w.start().await;
    let id = campaign_id();
    let raw = format!("{{\n  \"id\" :\t\"{id}\"  \n}}\n");
    let r = gw
        .delete(&w.token("growth"), Some("marketing-prod"), raw.as_bytes())
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r.header("x-gateway-error").is_none());
    let rid = r.header("x-request-id").unwrap().to_string();

    let seen = w.batch().seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    let p = w.project("marketing-prod");
    assert_eq!((s.method.as_str(), s.target.as_str()), ("POST", DELETE));
    assert_eq!(
        s.all("authorization"),
        vec![format!("Bearer {}", p.rest_key)]
    );
    assert_eq!(s.all("x-batch-project"), vec![p.project_key.clone()]);
    assert_eq!(s.all("content-type"), vec!["application/json".to_string()]);
    assert_eq!(s.all("x-request-id"), vec![rid.clone()]);
    // Origin-form target (above) and the base URL's authority as Host.
    assert_eq!(s.all("host"), vec![w.batch().addr.to_string()]);
    assert_eq!(s.body, delete_body(&id));

    // The audit trail has the attempt and the outcome under the same id.
    let recs = w.audit_records();
    let phases: Vec<_> = recs.iter().map(|r| r["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["attempt", "outcome"]);
    assert!(recs.iter().all(|r| r["request_id"] == json!(rid)));
    assert_eq!(recs[1]["upstream"]["status"], json!(204));
    assert_eq!(recs[0]["campaign_id"], json!(id));
    assert_eq!(recs[0]["secret_source"], json!("cached"));
    gw.stop().await;
}

#[tokio::test]
async fn only_allowlisted_caller_headers_travel_and_connection_cannot_strip_ours() {
    let w = World::new().await;
    let gw = w.start().await;
    let token = w.token("growth");
    let headers = h(&[
        ("Authorization", &format!("Bearer {token}")),
        ("X-Batch-Project", "marketing-prod"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("Cookie", "session=secret-cookie"),
        ("X-Forwarded-For", "203.0.113.7"),
        ("Proxy-Authorization", "Basic c2VjcmV0"),
        ("X-Foo", "hop-marker"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Upgrade", "h2c"),
        (
            "Connection",
            "close, X-Foo, Authorization, X-Batch-Project, X-Request-Id, Content-Type",
        ),
    ]);
    let id = campaign_id();
    let r = gw
        .request("POST", DELETE, &headers, &delete_body(&id))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    let s = &w.batch().seen()[0];
    let names: Vec<String> = s.headers.iter().map(|(k, _)| k.to_lowercase()).collect();
    for gone in [
        "cookie",
        "x-forwarded-for",
        "proxy-authorization",
        "x-foo",
        "keep-alive",
        "te",
        "upgrade",
    ] {
        assert!(!names.contains(&gone.to_string()), "{gone} reached Batch");
    }
    assert_eq!(s.all("accept"), vec!["application/json".to_string()]);
    assert_eq!(s.all("traceparent").len(), 1);
    assert_eq!(s.all("authorization").len(), 1);
    assert_eq!(s.all("x-batch-project").len(), 1);
    assert_eq!(s.all("x-request-id").len(), 1);
    let blob = format!("{:?}", s.headers);
    assert!(!blob.contains(&token), "the caller's token reached Batch");
    assert!(!blob.contains("secret-cookie"));
    gw.stop().await;
}

#[tokio::test]
async fn batch_errors_pass_through_untouched_with_allowed_headers_only() {
    let w = World::new().await;
    let gw = w.start().await;
    let body = br#"{"error_code":60,"error_message":"Too many requests"}"#;
    w.batch().force(
        429,
        &[
            ("content-type", "application/json"),
            ("retry-after", "7"),
            ("x-ratelimit-remaining", "0"),
            ("set-cookie", "lb=1"),
            ("location", "https://elsewhere.invalid/"),
        ],
        body,
    );
    let r = gw.delete_new(&w.token("growth"), None).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body, body);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(r.header("set-cookie").is_none());
    assert!(r.header("location").is_none());
    assert!(r.header("x-gateway-error").is_none());
    let out = w.audit_records().pop().unwrap();
    assert_eq!(out["phase"], json!("outcome"));
    assert_eq!(out["reason"], json!("ok"));
    assert_eq!(out["upstream"]["error_code"], json!("60"));
    gw.stop().await;
}

#[tokio::test]
async fn redirects_are_answered_not_followed() {
    let w = World::new().await;
    let gw = w.start().await;
    w.batch().force(
        307,
        &[("location", "https://127.0.0.1:1/2.8/campaigns/delete")],
        b"",
    );
    let r = gw.delete_new(&w.token("growth"), None).await;
    assert_eq!(r.status, 307);
    assert!(r.header("location").is_none());
    assert_eq!(w.batch().count(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_rest_key_echoed_by_batch_is_redacted() {
    let w = World::new().await;
    let gw = w.start().await;
    let key = w.project("marketing-prod").rest_key.clone();
    let body = format!(r#"{{"error_code":"0","error_message":"bad key {key}"}}"#);
    w.batch().force(
        500,
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    let r = gw.delete_new(&w.token("growth"), None).await;
    assert_eq!(r.status, 500);
    let text = String::from_utf8_lossy(&r.body);
    assert!(!text.contains(&key));
    assert!(text.contains("[REDACTED]"));
    gw.stop().await;
}

#[tokio::test]
async fn base_url_path_prefix_is_kept_and_version_forwarded_as_received() {
    let w = World::new().await;
    let addr = w.batch().addr;
    let gw = w
        .start_with(|d| {
            table(d, "upstream")
                .insert("base_url".into(), format!("https://{addr}/prefix/").into());
        })
        .await;
    let headers = h(&[("Authorization", &format!("Bearer {}", w.token("growth")))]);
    let r = gw
        .request(
            "POST",
            "/2.13/campaigns/delete",
            &headers,
            &delete_body(&campaign_id()),
        )
        .await;
    // The fake routes only /2.N/...: a prefixed path is its 404, passed through.
    assert_eq!(r.status, 404);
    assert!(r.header("x-gateway-error").is_none());
    assert_eq!(w.batch().seen()[0].target, "/prefix/2.13/campaigns/delete");
    gw.stop().await;
}

#[tokio::test]
async fn the_alias_selects_the_project_and_its_own_key() {
    let w = World::new().await;
    let gw = w.start().await;
    let r = gw.delete_new(&w.token("ops"), Some("sales-prod")).await;
    assert_eq!(r.status, 204);
    let s = &w.batch().seen()[0];
    let p = w.project("sales-prod");
    assert_eq!(
        s.all("authorization"),
        vec![format!("Bearer {}", p.rest_key)]
    );
    assert_eq!(s.all("x-batch-project"), vec![p.project_key.clone()]);
    gw.stop().await;
}

#[tokio::test]
async fn a_dry_run_grant_is_checked_and_audited_but_never_forwarded() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            let teams = d.get_mut("teams").unwrap().as_array_mut().unwrap();
            let grants = teams[0].get_mut("grants").unwrap().as_array_mut().unwrap();
            grants[0]
                .as_table_mut()
                .unwrap()
                .insert("dry_run".into(), true.into());
        })
        .await;
    let r = gw.delete_new(&w.token("growth"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-gateway-dry-run"), Some("true"));
    assert_eq!(r.json(), json!({}));
    assert_eq!(w.batch().count(), 0);
    let recs = w.audit_records();
    assert_eq!(recs.len(), 2);
    assert!(recs.iter().all(|r| r["dry_run"] == json!(true)));
    // Other teams' grants are live.
    let r = gw.delete_new(&w.token("ops"), Some("sales-prod")).await;
    assert_eq!(r.status, 204);
    assert_eq!(w.batch().count(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_trace_context_is_propagated_or_started() {
    let w = World::new().await;
    let gw = w.start().await;
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let headers = h(&[
        ("Authorization", &format!("Bearer {}", w.token("growth"))),
        ("traceparent", tp),
        ("tracestate", "vendor=1"),
    ]);
    assert_eq!(
        gw.request("POST", DELETE, &headers, &delete_body(&campaign_id()))
            .await
            .status,
        204
    );
    let bad = h(&[
        ("Authorization", &format!("Bearer {}", w.token("growth"))),
        ("traceparent", "not-a-trace"),
        ("tracestate", "vendor=1"),
    ]);
    assert_eq!(
        gw.request("POST", DELETE, &bad, &delete_body(&campaign_id()))
            .await
            .status,
        204
    );
    let seen = w.batch().seen();
    assert_eq!(seen[0].all("traceparent"), vec![tp.to_string()]);
    assert_eq!(seen[0].all("tracestate"), vec!["vendor=1".to_string()]);
    let started = &seen[1].all("traceparent")[0];
    assert!(
        batch_gateway::forward::valid_traceparent(started.as_bytes()),
        "{started}"
    );
    assert!(
        seen[1].all("tracestate").is_empty(),
        "another trace's state must not travel"
    );
    gw.stop().await;
}
