//! The reviewer's report over a trail the gateway itself wrote: two
//! replicas under a scripted mix of allowed, refused, replayed, stale,
//! over-quota and failing-upstream requests. The HTML page states the same
//! figures as `--format json` (each `data-figure` is the JSON Pointer of
//! its figure), finds what the mix planted, and is self-contained. The
//! page is left in target/tmp/report/ for CI to render in Chromium.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

fn replica(name: &'static str) -> impl FnOnce(&mut toml::Table) {
    move |d| {
        let a = table(d, "audit");
        a.insert("file".into(), format!("fleet/{name}/audit.jsonl").into());
        a.insert("replica".into(), name.into());
        let s = table(d, "secrets");
        s.insert("cache_ttl_s".into(), 1.into());
        // growth: at most 3 a day; support: single-use tokens.
        grant_of(d, 0).insert("daily_quota".into(), 3.into());
        grant_of(d, 2).insert("single_use_tokens".into(), true.into());
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Every (pointer, text) the page marks as a figure.
fn figures(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for part in html.split("data-figure=\"").skip(1) {
        let (pointer, rest) = part.split_once('"').unwrap();
        let text = rest.split_once('>').unwrap().1.split('<').next().unwrap();
        out.push((unescape(pointer), unescape(text)));
    }
    out
}

#[tokio::test]
async fn the_html_page_says_what_the_json_says_for_a_two_replica_trail() {
    let w = World::new().await;
    let gw0 = w.start_with(replica("gw-0")).await;
    let gw1 = w.start_with(replica("gw-1")).await;

    // Allowed: growth four times (gw-0 reaches its quota of 3), ops twice.
    for gw in [&gw0, &gw1, &gw0, &gw0] {
        assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    }
    for gw in [&gw0, &gw1] {
        assert_eq!(
            gw.delete_new(&w.token("ops"), Some("sales-prod"))
                .await
                .status,
            204
        );
    }
    // Over quota (per replica without shared state: gw-0 has spent 3).
    assert_eq!(gw0.delete_new(&w.token("growth"), None).await.status, 429);
    // Replayed: a single-use token twice at one replica.
    let once = w.token("support");
    assert_eq!(gw1.delete_new(&once, None).await.status, 204);
    assert_eq!(gw1.delete_new(&once, None).await.status, 401);
    // Refused: no grant, no token, and a burst of forged signatures.
    assert_eq!(
        gw0.delete_new(&w.token("support"), Some("marketing-prod"))
            .await
            .status,
        403
    );
    assert_eq!(gw0.delete_new("", None).await.status, 401);
    let forged = {
        let t = w.token("growth");
        let (head, _) = t.rsplit_once('.').unwrap();
        format!("{head}.{}", b64(&[7u8; 64]))
    };
    for _ in 0..12 {
        assert_eq!(gw1.delete_new(&forged, None).await.status, 401);
    }
    // Batch fails three times in a row at gw-1.
    w.batch().force(
        500,
        &[("content-type", "application/json")],
        br#"{"error_code":"0"}"#,
    );
    for _ in 0..3 {
        assert_eq!(
            gw1.delete_new(&w.token("ops"), Some("sales-prod"))
                .await
                .status,
            500
        );
    }
    // A stale secret: the backend breaks, the cached copy serves.
    w.batch().force(204, &[], b"");
    w.write("secrets.toml", "this is [not toml");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        gw0.delete_new(&w.token("ops"), Some("marketing-prod"))
            .await
            .status,
        204
    );
    gw0.stop().await;
    gw1.stop().await;

    let fleet = w.path("fleet");
    let run = |format: &str, out: &std::path::Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_batch-gateway"))
            .args(["audit", "report", "--format", format, "--output"])
            .arg(out)
            .arg(&fleet)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(out).unwrap()
    };
    let json: Value = serde_json::from_str(&run("json", &w.path("report.json"))).unwrap();
    let html = run("html", &w.path("report.html"));

    // What the mix planted, found.
    assert_eq!(json["verdict"], "intact", "{json:#}");
    assert_eq!(json["integrity"].as_array().unwrap().len(), 2);
    assert_eq!(json["deletions"]["deleted"], 8, "{:#}", json["deletions"]);
    let kinds: Vec<&str> = json["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "limit_refusal",
        "replay_or_binding",
        "signature_burst",
        "stale_secret",
        "batch_error_streak",
    ] {
        assert!(kinds.contains(&kind), "{kind}: {kinds:?}");
    }

    // Every figure on the page is the JSON's.
    let figs = figures(&html);
    assert!(figs.len() >= 20, "{figs:?}");
    for (pointer, text) in &figs {
        let (path, len) = match pointer.strip_suffix("#len") {
            Some(p) => (p, true),
            None => (pointer.as_str(), false),
        };
        let v = json
            .pointer(path)
            .unwrap_or_else(|| panic!("{pointer} is not in the JSON"));
        let want = match (len, v) {
            (true, Value::Array(a)) => a.len().to_string(),
            (_, Value::String(s)) => s.clone(),
            (_, other) => other.to_string(),
        };
        assert_eq!(text, &want, "{pointer}");
    }
    for must in [
        "/deletions/deleted",
        "/requests/allow",
        "/requests/deny",
        "/anomalies#len",
        "/integrity/1/state",
        "/deletions/list#len",
    ] {
        assert!(figs.iter().any(|(p, _)| p == must), "{must}");
    }
    assert!(
        figs.iter()
            .any(|(p, _)| p.starts_with("/deletions/per_day_team/"))
    );
    assert!(
        figs.iter()
            .any(|(p, _)| p.starts_with("/refusals_per_day/"))
    );
    // Charts inline, nothing fetched, every deletion listed.
    assert!(html.contains("<svg"));
    for fetch in ["http://", "https://", "<script", "<link", "url(", "@import"] {
        assert!(!html.contains(fetch), "{fetch}");
    }
    for d in json["deletions"]["list"].as_array().unwrap() {
        assert!(html.contains(d["request_id"].as_str().unwrap()));
    }

    // For CI's browser check.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("report");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report.html"), &html).unwrap();
    std::fs::write(dir.join("report.json"), json.to_string()).unwrap();
}
