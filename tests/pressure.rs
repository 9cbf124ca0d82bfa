//! Under pressure: Batch's 429/503 cool-downs, no blind retries, per-grant
//! rate limits and quotas, hot reload, graceful shutdown, inbound TLS/mTLS,
//! policy explain.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

#[tokio::test]
async fn a_429_storm_reaches_batch_once_and_other_projects_keep_working() {
    let w = World::new().await;
    let gw = w.start().await;
    w.batch().force(
        429,
        &[("content-type", "application/json"), ("retry-after", "7")],
        br#"{"error_code":"60","error_message":"Too many requests"}"#,
    );
    let r = gw.delete_new(&w.token("growth"), None).await;
    assert_eq!(r.status, 429);
    assert!(
        r.header("x-gateway-error").is_none(),
        "Batch's own 429 passes through"
    );
    w.batch().state.lock().unwrap().forced = None;

    let mut tasks = Vec::new();
    for _ in 0..100 {
        let token = w.token("growth");
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move { delete_at(addr, &token).await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        r.assert_gateway_error(429, "upstream_cooldown", "60");
        let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=7).contains(&after), "Retry-After {after}");
    }
    assert_eq!(w.batch().count(), 1, "nothing is sent during the cool-down");
    // Another project is not cooling down.
    let r = gw.delete_new(&w.token("ops"), Some("sales-prod")).await;
    assert_eq!(r.status, 204);
    let m = gw.metrics().await;
    assert!(
        m.contains("batch_gateway_upstream_cooldowns_total{project=\"marketing-prod\"} 1"),
        "{m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_503_from_batch_cools_the_project_down_with_a_503() {
    let w = World::new().await;
    let gw = w.start().await;
    w.batch().force(
        503,
        &[("content-type", "application/json")],
        br#"{"error_code":"2","error_message":"Maintenance"}"#,
    );
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 503);
    let r = gw.delete_new(&w.token("growth"), None).await;
    r.assert_gateway_error(503, "upstream_cooldown", "2");
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(w.batch().count(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_delete_is_never_retried_once_sent() {
    let w = World::new().await;
    let gw = w.start().await;
    w.batch().state.lock().unwrap().drop_connection = true;
    let r = gw.delete_new(&w.token("growth"), None).await;
    r.assert_gateway_error(502, "upstream_unreachable", "0");
    assert_eq!(w.batch().count(), 1, "the request was sent again");
    gw.stop().await;
}

#[tokio::test]
async fn rate_limits_and_daily_quotas_answer_429_with_retry_after_and_are_audited() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            grant_of(d, 0).insert("rate_per_minute".into(), 2.into());
            grant_of(d, 2).insert("daily_quota".into(), 3.into());
        })
        .await;
    for _ in 0..2 {
        assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    }
    let r = gw.delete_new(&w.token("growth"), None).await;
    r.assert_gateway_error(429, "rate_limited", "60");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    let rec = w.audit_records().pop().unwrap();
    assert_eq!(rec["reason"], json!("rate_limited"));
    assert!(
        rec["detail"]
            .as_str()
            .unwrap()
            .contains("rate_per_minute 2"),
        "{rec}"
    );

    // support: daily_quota 3 on sales-prod, reached mid-run.
    let mut statuses = vec![];
    for _ in 0..5 {
        statuses.push(gw.delete_new(&w.token("support"), None).await);
    }
    assert_eq!(
        statuses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [204, 204, 204, 429, 429]
    );
    statuses[3].assert_gateway_error(429, "quota_exceeded", "60");
    let left: u64 = statuses[3].header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&left));
    assert_eq!(w.batch().count(), 5);
    gw.stop().await;
}

#[tokio::test]
async fn a_reload_swaps_grants_and_refuses_an_invalid_config() {
    let w = World::new().await;
    let gw = w.start().await;
    let forbidden = gw
        .delete_new(&w.token("support"), Some("marketing-prod"))
        .await;
    forbidden.assert_gateway_error(403, "forbidden", "12");

    // Invalid: refused, the running config stays.
    let good = std::fs::read_to_string(w.path("gateway.toml")).unwrap();
    w.write("gateway.toml", "[server]\nbogus = 1\n");
    let problems = gw.app.reload().await.unwrap_err();
    assert!(
        problems.iter().any(|p| p.key == "server.bogus"),
        "{problems:?}"
    );
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    assert_eq!(gw.admin_get("/readyz").await.status, 200);

    // Valid: support now holds marketing-prod too.
    let mut doc: toml::Table = good.parse().unwrap();
    let teams = doc.get_mut("teams").unwrap().as_array_mut().unwrap();
    let grants = teams[2].get_mut("grants").unwrap().as_array_mut().unwrap();
    grants.push(toml::Value::Table(
        toml::from_str("project = \"marketing-prod\"\nactions = [\"campaigns.delete\"]").unwrap(),
    ));
    w.write("gateway.toml", &toml::to_string(&doc).unwrap());
    gw.app.reload().await.unwrap();
    let r = gw
        .delete_new(&w.token("support"), Some("marketing-prod"))
        .await;
    assert_eq!(r.status, 204);
    let m = gw.metrics().await;
    assert!(
        m.contains("batch_gateway_config_reloads_total{kind=\"rejected\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("batch_gateway_config_reloads_total{kind=\"ok\"} 1"),
        "{m}"
    );
    gw.stop().await;
}

fn kill(child: &std::process::Child, sig: &str) {
    Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
}

/// 8 callers sending deletes for `secs`; returns (ok, other statuses).
fn load(
    addr: std::net::SocketAddr,
    token: String,
    secs: u64,
) -> tokio::task::JoinHandle<(usize, Vec<u16>)> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut bad) = (0, vec![]);
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(secs) {
                    let raw = delete_request(&token, "", &delete_body(&campaign_id()));
                    match try_exchange(addr, &raw).await {
                        Some(r) if r.status == 204 => ok += 1,
                        Some(r) => bad.push(r.status),
                        None => break,
                    }
                }
                (ok, bad)
            }));
        }
        let (mut ok, mut bad) = (0, vec![]);
        for t in tasks {
            let (o, b) = t.await.unwrap();
            ok += o;
            bad.extend(b);
        }
        (ok, bad)
    })
}

#[tokio::test]
async fn sighup_with_an_invalid_config_under_traffic_fails_no_request_and_sigterm_drops_none() {
    let w = World::new().await;
    let (data, admin) = (free_port(), free_port());
    let cfg = w.config(|d| {
        let s = table(d, "server");
        s.insert("listen".into(), format!("127.0.0.1:{data}").into());
        s.insert("admin_listen".into(), format!("127.0.0.1:{admin}").into());
    });
    let good = std::fs::read_to_string(&cfg.source).unwrap();
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&cfg.source)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_up(admin);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{data}").parse().unwrap();
    let traffic = load(addr, w.token("growth"), 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&cfg.source, "[server]\nbogus = 1\n").unwrap();
    kill(&child, "-HUP");
    let (ok, bad) = traffic.await.unwrap();
    assert!(ok > 0);
    assert!(
        bad.is_empty(),
        "requests failed during an invalid reload: {bad:?}"
    );
    let metrics = raw_exchange(
        format!("127.0.0.1:{admin}").parse().unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        String::from_utf8_lossy(&metrics.body)
            .contains("batch_gateway_config_reloads_total{kind=\"rejected\"}")
    );
    std::fs::write(&cfg.source, &good).unwrap();

    // SIGTERM in the middle of traffic to a slow Batch.
    w.batch().set_delay(Duration::from_millis(300));
    let traffic = load(addr, w.token("growth"), 3);
    tokio::time::sleep(Duration::from_millis(800)).await;
    kill(&child, "-TERM");
    // Wait without blocking the runtime: the Batch fake runs on it.
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
    let (ok, bad) = traffic.await.unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    // Every request that reached Batch was answered: none dropped in flight.
    let forwarded = w.batch().count();
    let records = w.audit_records();
    let attempts = records
        .iter()
        .filter(|r| r["phase"] == json!("attempt"))
        .count();
    let outcomes = records
        .iter()
        .filter(|r| r["phase"] == json!("outcome"))
        .count();
    assert_eq!(attempts, forwarded);
    assert_eq!(outcomes, forwarded, "a forwarded request lost its outcome");
    assert!(ok > 0);
    let v = batch_gateway::audit::verify::verify(&[w.audit_path()], &Default::default()).unwrap();
    assert_eq!(v.records as usize, records.len());
}

#[tokio::test]
async fn policy_explain_names_the_decision_and_the_grant() {
    let w = World::without_batch();
    let cfg = w.config(|d| {
        grant_of(d, 0).insert("daily_quota".into(), 200.into());
    });
    let path = cfg.source.display().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(binary()).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = run(&[
        "policy",
        "explain",
        "--config",
        &path,
        "--team",
        "growth",
        "--project",
        "marketing-prod",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("decision: allow")
            && text.contains("teams[0].grants[0]")
            && text.contains("daily_quota 200"),
        "{text}"
    );
    let (code, text) = run(&[
        "policy",
        "explain",
        "--config",
        &path,
        "--team",
        "support",
        "--project",
        "marketing-prod",
    ]);
    assert_eq!(code, 1);
    assert!(text.contains("decision: deny"), "{text}");
    let (code, text) = run(&["policy", "explain", "--config", &path, "--team", "ops"]);
    assert_eq!(code, 1);
    assert!(text.contains("X-Batch-Project"), "{text}");
    let token = w.token("ops");
    let (code, text) = run(&[
        "policy",
        "explain",
        "--config",
        &path,
        "--token",
        &token,
        "--project",
        "sales-prod",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("teams: ops"), "{text}");
    let stranger = SigningKey::generate(jsonwebtoken::Algorithm::EdDSA).sign(&claims(ISS, "ops"));
    let (code, text) = run(&[
        "policy",
        "explain",
        "--config",
        &path,
        "--token",
        &stranger,
        "--project",
        "sales-prod",
    ]);
    assert_eq!(code, 1);
    assert!(text.contains("bad_signature"), "{text}");
}

#[tokio::test]
async fn upstream_pacing_holds_a_project_to_its_rate() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            let projects = d.get_mut("projects").unwrap().as_array_mut().unwrap();
            projects[0]
                .as_table_mut()
                .unwrap()
                .insert("upstream_rate_per_s".into(), 1.into());
        })
        .await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let token = w.token("growth");
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move { delete_at(addr, &token).await }));
    }
    let mut paced = 0;
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 429 {
            r.assert_gateway_error(429, "rate_limited", "60");
            paced += 1;
        } else {
            assert_eq!(r.status, 204);
        }
    }
    assert!(
        paced >= 2,
        "4 requests at once against 1/s: at most 2 can go within the 1 s wait"
    );
    assert_eq!(w.batch().count(), 4 - paced);
    let detail = w
        .audit_records()
        .into_iter()
        .find(|r| r["reason"] == json!("rate_limited"))
        .unwrap()["detail"]
        .clone();
    assert!(
        detail.as_str().unwrap().contains("upstream_rate_per_s 1"),
        "{detail}"
    );
    // Other projects are not paced.
    assert_eq!(
        gw.delete_new(&w.token("ops"), Some("sales-prod"))
            .await
            .status,
        204
    );
    gw.stop().await;
}
