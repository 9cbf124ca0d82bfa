//! The audit trail: complete, chained, durable before upstream, continuous
//! across restarts, honest about torn lines, and fail-closed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use batch_gateway::audit::verify;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use support::*;

fn fp(key: &str, data: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    m.update(data.as_bytes());
    hex::encode(&m.finalize().into_bytes()[..8])
}

#[tokio::test]
async fn records_carry_fingerprints_and_never_a_secret() {
    let w = World::new().await;
    let gw = w.start().await;
    let token = w.token("growth");
    let r = gw.delete_new(&token, None).await;
    assert_eq!(r.status, 204);
    let denied = gw
        .delete(&w.token("support"), Some("marketing-prod"), b"{}")
        .await;
    denied.assert_gateway_error(403, "forbidden", "12");
    gw.stop().await;

    let text = std::fs::read_to_string(w.audit_path()).unwrap();
    let p = w.project("marketing-prod");
    for secret in [p.rest_key.as_str(), token.as_str(), w.hmac_key.as_str()] {
        assert!(!text.contains(secret));
    }
    let recs = w.audit_records();
    assert_eq!(recs[0]["key_fp"], json!(fp(&w.hmac_key, &p.rest_key)));
    assert_eq!(
        recs[0]["caller"]["token_fp"],
        json!(fp(&w.hmac_key, &token))
    );
    assert_eq!(recs[0]["caller"]["team"], json!("growth"));
    assert_eq!(recs[2]["phase"], json!("denied"));
    assert_eq!(recs[2]["detail"], json!("no_grant"));
    assert_eq!(recs[2]["caller"]["team"], json!("support"));
}

/// The caller recorded for a token the gateway has verified before is
/// built once and kept with it: every record still names its own token.
#[tokio::test]
async fn reused_tokens_keep_their_own_fingerprint_in_every_record() {
    let w = World::new().await;
    let gw = w.start().await;
    let (a, b) = (w.token("growth"), w.token("growth"));
    assert_ne!(a, b);
    let sent = [&a, &b, &a, &b, &a];
    for t in sent {
        assert_eq!(gw.delete_new(t, None).await.status, 204);
    }
    gw.stop().await;
    let recs = w.audit_records();
    let p = w.project("marketing-prod");
    assert_eq!(recs.len(), 2 * sent.len());
    for (i, t) in sent.iter().enumerate() {
        for rec in &recs[2 * i..2 * i + 2] {
            assert_eq!(rec["caller"]["token_fp"], json!(fp(&w.hmac_key, t)));
            assert_eq!(rec["key_fp"], json!(fp(&w.hmac_key, &p.rest_key)));
        }
    }
}

#[tokio::test]
async fn the_chain_continues_across_a_restart() {
    let w = World::new().await;
    let gw = w.start().await;
    for _ in 0..2 {
        assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    }
    gw.stop().await;
    let gw = w.start().await;
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    gw.stop().await;
    let v = verify::verify(&[w.audit_path()], &Default::default()).unwrap();
    assert_eq!((v.records, v.first_seq, v.last_seq), (6, Some(1), Some(6)));
}

#[tokio::test]
async fn a_torn_last_line_is_cut_and_sealed_by_a_repair_record() {
    let w = World::new().await;
    let gw = w.start().await;
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    gw.stop().await;
    // A crash mid-write leaves half a record.
    let mut text = std::fs::read_to_string(w.audit_path()).unwrap();
    text.push_str("{\"v\":1,\"seq\":3,\"ts\":\"2026-");
    std::fs::write(w.audit_path(), &text).unwrap();
    assert!(
        verify::verify(&[w.audit_path()], &Default::default()).is_err(),
        "a torn file must not verify"
    );

    let gw = w.start().await;
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    gw.stop().await;
    let recs = w.audit_records();
    assert_eq!(recs[2]["phase"], json!("repair"));
    assert_eq!(recs[2]["seq"], json!(3));
    assert_eq!(recs[2]["found"]["torn_bytes"], json!(26));
    assert_eq!(
        recs[2]["found"]["torn_text"],
        json!("{\"v\":1,\"seq\":3,\"ts\":\"2026-")
    );
    let v = verify::verify(&[w.audit_path()], &Default::default()).unwrap();
    assert_eq!(v.records, 5);
}

#[tokio::test]
async fn an_unwritable_audit_file_refuses_everything_then_recovers_by_itself() {
    let w = World::new().await;
    // A regular file where the audit folder should be: binds root too.
    w.write("audit", "not a folder");
    let gw = w.start().await;
    let r = gw.delete_new(&w.token("growth"), None).await;
    r.assert_gateway_error(503, "audit_unavailable", "2");
    let r = gw.delete("garbage", None, b"not json").await;
    r.assert_gateway_error(503, "audit_unavailable", "2");
    assert_eq!(w.batch().count(), 0);
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["checks"]["audit_file"], json!("unwritable"));

    std::fs::remove_file(w.path("audit")).unwrap();
    let r = gw.delete_new(&w.token("growth"), None).await;
    assert_eq!(r.status, 204);
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    gw.stop().await;
    let v = verify::verify(&[w.audit_path()], &Default::default()).unwrap();
    assert_eq!(v.records, 3);
    assert_eq!(v.repairs[0].1, "unwritable", "the gap is recorded first");
}

#[tokio::test]
async fn audit_verify_names_the_first_bad_record_and_query_filters() {
    let w = World::new().await;
    let gw = w.start().await;
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    gw.delete(&w.token("support"), Some("marketing-prod"), b"{}")
        .await;
    gw.delete(&w.token("ops"), None, b"{}").await;
    assert_eq!(
        gw.delete_new(&w.token("ops"), Some("sales-prod"))
            .await
            .status,
        204
    );
    gw.stop().await;

    let bin = binary();
    let audit = w.audit_path();
    let ok = std::process::Command::new(bin)
        .args(["audit", "verify"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("6 records"));

    let mut lines = w.audit_lines();
    lines[2] = lines[2].replace("\"support\"", "\"growth\"");
    let bad = w.write("tampered.jsonl", &(lines.join("\n") + "\n"));
    let out = std::process::Command::new(bin)
        .args(["audit", "verify"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stdout);
    assert!(msg.contains("tampered.jsonl:4 (seq 4)"), "{msg}");
    assert!(msg.contains("line 3 was changed"), "{msg}");

    let q = std::process::Command::new(bin)
        .args(["audit", "query"])
        .arg(&audit)
        .args(["--decision", "deny", "--team", "ops"])
        .output()
        .unwrap();
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&q.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["detail"], json!("ambiguous_project"));
    let t = std::process::Command::new(bin)
        .args(["audit", "query"])
        .arg(w.path("audit"))
        .args(["--project", "sales-prod", "--format", "table"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&t.stdout);
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.starts_with("SEQ"));
}

/// The report's deletions are the deletes Batch was sent: dry runs and
/// refusals are not, a 404 is listed but not counted as deleted, and each
/// entry says who, what, where and what Batch answered.
#[tokio::test]
async fn the_report_lists_every_forwarded_delete_with_batchs_answer() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            grant_of(d, 2).insert("dry_run".into(), true.into());
        })
        .await;
    let ids: Vec<String> = (0..4).map(|_| campaign_id()).collect();
    for id in &ids[..2] {
        assert_eq!(
            gw.delete(&w.token("growth"), None, &delete_body(id))
                .await
                .status,
            204
        );
    }
    let ops = gw
        .delete(&w.token("ops"), Some("sales-prod"), &delete_body(&ids[2]))
        .await;
    assert_eq!(ops.status, 204);
    // A dry run, a refusal and a request without a token: not deletions.
    assert_eq!(gw.delete_new(&w.token("support"), None).await.status, 200);
    assert_eq!(
        gw.delete_new(&w.token("support"), Some("marketing-prod"))
            .await
            .status,
        403
    );
    assert_eq!(gw.delete_new("", None).await.status, 401);
    w.batch().force(
        404,
        &[("content-type", "application/json")],
        br#"{"error_code":"21"}"#,
    );
    let missing = gw
        .delete(&w.token("growth"), None, &delete_body(&ids[3]))
        .await;
    assert_eq!(missing.status, 404);
    gw.stop().await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_batch-gateway"))
        .args(["audit", "report", "--format", "json"])
        .arg(w.audit_path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &r["deletions"];
    assert_eq!(d["deleted"], 3, "{d}");
    let list = d["list"].as_array().unwrap();
    let got: Vec<(&str, &str, &str, serde_json::Value)> = list
        .iter()
        .map(|e| {
            (
                e["campaign_id"].as_str().unwrap(),
                e["team"].as_str().unwrap(),
                e["project"].as_str().unwrap(),
                e["status"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (ids[0].as_str(), "growth", "marketing-prod", json!(204)),
            (ids[1].as_str(), "growth", "marketing-prod", json!(204)),
            (ids[2].as_str(), "ops", "sales-prod", json!(204)),
            (ids[3].as_str(), "growth", "marketing-prod", json!(404)),
        ]
    );
    let rid = ops.header("x-request-id").unwrap();
    assert_eq!(list[2]["request_id"], rid);
    assert_eq!(list[2]["sub"], "svc-cleaner");
    assert_eq!(
        d["per_project"],
        json!({"marketing-prod": 2, "sales-prod": 1})
    );
    // Refusals: the 403, then the 401 by client address (no port).
    let refusals: u64 = r["refusals_per_day"]
        .as_object()
        .unwrap()
        .values()
        .map(|by| by["forbidden"].as_u64().unwrap_or(0) + by["token_missing"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(refusals, 2, "{}", r["refusals_per_day"]);
    assert_eq!(
        r["unauthenticated_by_client_addr"],
        json!([["127.0.0.1", 1]])
    );
    // Per day as each deletion's own ts says (the test may cross midnight).
    let mut want = serde_json::Map::new();
    for e in &list[..3] {
        let day = e["ts"].as_str().unwrap()[..10].to_string();
        let team = e["team"].as_str().unwrap().to_string();
        let per = want.entry(day).or_insert_with(|| json!({}));
        per[&team] = json!(per[&team].as_u64().unwrap_or(0) + 1);
    }
    assert_eq!(d["per_day_team"], serde_json::Value::Object(want));
}
