//! What a hostile caller can do to the audit trail: oversized inputs,
//! floods without a token, a full budget, terminal escapes in recorded
//! strings, and the files' modes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use batch_gateway::audit::verify::{self, VerifyOptions};
use serde_json::{Value, json};
use support::*;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn audit_opts(d: &mut toml::Table, pairs: &[(&str, toml::Value)]) {
    let a = table(d, "audit");
    for (k, v) in pairs {
        a.insert(k.to_string(), v.clone());
    }
}

/// Every string anywhere in `v`, with its path.
fn strings(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::String(s) => out.push((at.to_string(), s.clone())),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| strings(x, &format!("{at}[{i}]"), out)),
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| strings(x, &format!("{at}.{k}"), out)),
        _ => {}
    }
}

async fn send(gw: &Running, raw: Vec<u8>) -> Option<Resp> {
    try_exchange(gw.addr, &raw).await
}

/// For each input that reaches a record, the largest value the HTTP layer
/// takes (the head is bounded by max_header_bytes, 16 KiB): no recorded
/// string is over 512 characters, and a record of a request without a
/// verified token stays under 4 KiB, escapes and multi-byte text included.
#[tokio::test]
async fn every_caller_controlled_member_of_a_record_is_bounded() {
    let w = World::new().await;
    let gw = w.start().await;
    let big = |c: &str, n: usize| c.repeat(n);
    let head = |method: &str, target: &str, extra: &str| {
        format!(
            "{method} {target} HTTP/1.1\r\nHost: g\r\n{extra}Connection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    };
    // The method, the path (plain, escaped and multi-byte), the caller's
    // request id, each unverified token member.
    send(&gw, head(&big("A", 15_000), DELETE, "")).await;
    send(&gw, head("POST", &format!("/{}", big("a", 15_000)), "")).await;
    send(&gw, head("POST", &format!("/{}", big("\\", 7_000)), "")).await;
    send(&gw, head("POST", &format!("/{}", big("é", 7_000)), "")).await;
    send(
        &gw,
        head(
            "POST",
            DELETE,
            &format!("X-Request-Id: {}\r\n", big("r", 15_000)),
        ),
    )
    .await;
    // Tokens up to the largest the gateway reads (8 KiB), their members
    // as long, escaped and wide as fits.
    for (hdr, payload) in [
        (
            json!({"alg": big("A", 1500), "kid": big("k", 1500), "typ": "JWT"}),
            json!({"iss": big("\u{1}", 400), "sub": "x"}),
        ),
        (
            json!({"alg": "EdDSA", "kid": big("\"", 1500)}),
            json!({"iss": big("ü", 1000)}),
        ),
    ] {
        let tok = sign_raw(&w.ed, &hdr.to_string(), &payload.to_string());
        assert!(tok.len() <= 8192, "{}", tok.len());
        send(
            &gw,
            head("POST", DELETE, &format!("Authorization: Bearer {tok}\r\n")),
        )
        .await;
    }
    // A verified caller's claims: a long sub, many long teams.
    let teams: Vec<String> = (0..40).map(|i| format!("t{i}{}", big("x", 40))).collect();
    let tok = w.ed.sign(&with(
        claims(ISS, "growth"),
        json!({"sub": big("s", 2500), "team": teams}),
    ));
    gw.delete_new(&tok, None).await;
    gw.stop().await;
    let lines = w.audit_lines();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    // What hyper took reached a record, each bounded.
    assert!(has("\"method\":\"AAAA"), "the long method");
    assert!(has("\"path\":\"/aaaa"), "the long path");
    assert!(has("\"kid\":\"kkkk"), "the long kid");
    assert!(has("\"sub\":\"ssss"), "the long verified sub");
    assert!(has("(+8 more)"), "teams past the first 32 are counted");
    for line in &lines {
        let rec: Value = serde_json::from_str(line).unwrap();
        let mut all = Vec::new();
        strings(&rec, "", &mut all);
        for (at, s) in &all {
            assert!(
                s.chars().count() <= 512,
                "{at}: {} characters in seq {}",
                s.chars().count(),
                rec["seq"]
            );
        }
        if rec.get("caller").is_none() {
            assert!(
                line.len() < 4096,
                "a record without a verified token is {} bytes: {}",
                line.len(),
                &line[..300]
            );
        }
    }
    let v = verify::verify(&[w.audit_path()], &VerifyOptions::default()).unwrap();
    assert_eq!(v.records, lines.len() as u64);
}

/// A flood of tokenless requests writes at most the per-second budget of
/// `denied` records, the rest counted into one `summary` a second; a
/// verified caller's denials are all recorded one by one, however many.
#[tokio::test]
async fn a_tokenless_flood_is_summarized_and_verified_denials_are_all_recorded() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| audit_opts(d, &[("unauthenticated_records_per_s", 5.into())]))
        .await;
    let flood = 120;
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let first_second = unix();
    let mut tasks = Vec::new();
    for i in 0..flood {
        let addr = gw.addr;
        let bad = if i % 2 == 0 {
            String::new()
        } else {
            "Authorization: Bearer not.a.token\r\n".into()
        };
        tasks.push(tokio::spawn(async move {
            try_exchange(addr, &delete_request_without_token(&bad)).await
        }));
    }
    let mut answered = 0;
    for t in tasks {
        if let Some(r) = t.await.unwrap() {
            assert_eq!(r.status, 401);
            answered += 1;
        }
    }
    assert_eq!(answered, flood, "every tokenless request is answered");
    let seconds = unix() - first_second + 1;
    // Verified callers denied (a project they have no grant for): each one
    // on the record, past any budget.
    for _ in 0..12 {
        let r = gw.delete_new(&w.token("growth"), Some("sales-prod")).await;
        assert_eq!(r.status, 403);
    }
    // The last second's counts are written at shutdown at the latest.
    gw.stop().await;
    let recs = w.audit_records();
    let one_by_one: Vec<&Value> = recs
        .iter()
        .filter(|r| r["phase"] == json!("denied") && r.get("caller").is_none())
        .collect();
    let summaries: Vec<&Value> = recs
        .iter()
        .filter(|r| r["phase"] == json!("summary"))
        .collect();
    assert!(!summaries.is_empty(), "no summary for a flood");
    let counted: u64 = summaries.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(one_by_one.len() as u64 + counted, flood as u64);
    // At most the budget in each second the flood took (a record's `ts`
    // is when it was written, which may fall in the next second).
    assert!(
        one_by_one.len() as u64 <= 5 * seconds,
        "{} recorded in {seconds} s",
        one_by_one.len()
    );
    for s in &summaries {
        let by_reason: u64 = s["by_reason"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(by_reason, s["count"].as_u64().unwrap(), "{s}");
        assert_eq!(
            s["by_client_addr"]["127.0.0.1"], s["count"],
            "all from one address: {s}"
        );
        assert!(s["window_start"].as_str().unwrap() < s["window_end"].as_str().unwrap());
    }
    let forbidden = recs
        .iter()
        .filter(|r| r["reason"] == json!("forbidden"))
        .count();
    assert_eq!(forbidden, 12, "every verified caller's denial is recorded");
    let v = verify::verify(&[w.audit_path()], &VerifyOptions::default()).unwrap();
    assert_eq!(v.summaries, summaries.len() as u64);
}

fn delete_request_without_token(extra: &str) -> Vec<u8> {
    format!(
        "POST {DELETE} HTTP/1.1\r\nHost: g\r\n{extra}Connection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Past `max_total_bytes` every request gets 503 `audit_unavailable`, the
/// pod turns not ready, nothing is forwarded and no record is deleted;
/// room made by the operator lifts it.
#[tokio::test]
async fn a_full_budget_refuses_requests_and_never_deletes_a_record() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            audit_opts(
                d,
                &[
                    ("rotate_bytes", 4096.into()),
                    ("max_total_bytes", 12_288.into()),
                ],
            )
        })
        .await;
    let mut ok = 0;
    let mut refused = None;
    for _ in 0..100 {
        let r = gw.delete_new(&w.token("growth"), None).await;
        if r.status == 204 {
            ok += 1;
        } else {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the budget was never reached");
    r.assert_gateway_error(503, "audit_unavailable", "2");
    assert_eq!(w.batch().count(), ok, "nothing forwarded once refused");
    // Every kind of request is refused now, tokenless ones too.
    let r = try_exchange(gw.addr, &delete_request_without_token(""))
        .await
        .unwrap();
    r.assert_gateway_error(503, "audit_unavailable", "2");
    assert_eq!(gw.admin_get("/readyz").await.status, 503);
    let m = gw.metrics().await;
    assert!(m.contains("batch_gateway_audit_over_budget 1"), "{m}");
    // Nothing was deleted: the chain still starts at seq 1, whole.
    let dir = w.path("audit");
    let files = verify::collect_files(std::slice::from_ref(&dir)).unwrap();
    let v = verify::verify(&files, &VerifyOptions::default()).unwrap();
    assert_eq!(v.first_seq, Some(1));
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(total <= 12_288 + 4096, "{total} bytes");
    // The operator archives the rotated files elsewhere: room again.
    let archive = w.path("archive");
    std::fs::create_dir_all(&archive).unwrap();
    for f in batch_gateway::audit::rotated_files(&w.audit_path()) {
        std::fs::rename(&f, archive.join(f.file_name().unwrap())).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = gw.delete_new(&w.token("growth"), None).await;
    assert_eq!(r.status, 204);
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    gw.stop().await;
}

/// A signed `sub` full of terminal escapes is recorded as JSON escapes,
/// and printed escaped by `audit query --format table` and `audit report`.
#[tokio::test]
async fn terminal_escapes_in_recorded_strings_never_reach_the_terminal_raw() {
    let w = World::new().await;
    let gw = w.start().await;
    let evil = "svc\u{1b}[2J\u{1b}]0;owned\u{7}\u{9b}31m\u{202e}x";
    let tok =
        w.ed.sign(&with(claims(ISS, "growth"), json!({"sub": evil})));
    // Denied (no grant for that project), so it counts as a denied caller.
    gw.delete_new(&tok, Some("sales-prod")).await;
    assert_eq!(gw.delete_new(&tok, None).await.status, 204);
    gw.stop().await;
    let a = w.audit_path();
    let a = a.to_str().unwrap();
    for args in [
        vec!["audit", "query", a, "--format", "table"],
        vec!["audit", "report", a],
    ] {
        let out = Command::new(binary()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        for c in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'] {
            assert!(!text.contains(c), "{args:?} printed {c:?} raw:\n{text}");
        }
        assert!(text.contains("svc\\u{1b}[2J"), "{args:?}:\n{text}");
    }
}

/// Audit files are 0600 in a 0700 folder; a key file anyone may read is
/// refused by check-config and serve, naming it and its mode; a
/// group-readable one is a warning.
#[tokio::test]
async fn audit_files_are_private_and_world_readable_keys_are_refused() {
    let w = World::new().await;
    let gw = w.start().await;
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    gw.stop().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&w.audit_path()), 0o600);
    assert_eq!(mode(&w.path("audit")), 0o700);

    let cfg = w.config(|_| {});
    let c = cfg.source.to_str().unwrap();
    let key = w.path("audit-hmac.key");
    let set = |m| std::fs::set_permissions(&key, std::fs::Permissions::from_mode(m)).unwrap();
    set(0o644);
    let (code, text) = run(&["check-config", "--config", c]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("audit.hmac_key_file") && text.contains("0644"),
        "{text}"
    );
    let (code, text) = run(&["serve", "--config", c]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("readable by anyone"), "{text}");
    set(0o640);
    let (code, text) = run(&["check-config", "--config", c]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("warning") && text.contains("0640"), "{text}");
    // The secrets file holds every REST key: the same rule.
    set(0o600);
    std::fs::set_permissions(
        w.path("secrets.toml"),
        std::fs::Permissions::from_mode(0o604),
    )
    .unwrap();
    let (code, text) = run(&["check-config", "--config", c]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("secrets.file"), "{text}");
}
