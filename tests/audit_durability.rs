//! The audit trail under rotation, signed checkpoints, tampering, crashes
//! and a failing disk.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use batch_gateway::audit::verify::{self, VerifyOptions};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use sha2::Digest;
use support::*;

fn audit_opts(d: &mut toml::Table, pairs: &[(&str, toml::Value)]) {
    let a = table(d, "audit");
    for (k, v) in pairs {
        a.insert(k.to_string(), v.clone());
    }
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

async fn traffic(gw: &Running, w: &World, n: usize) {
    for i in 0..n {
        let team = if i % 3 == 0 { "support" } else { "growth" };
        let project = if i % 3 == 0 {
            Some("marketing-prod")
        } else {
            None
        };
        gw.delete(&w.token(team), project, &delete_body(&campaign_id()))
            .await;
    }
}

#[tokio::test]
async fn files_rotate_by_size_and_the_chain_runs_across_them() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| audit_opts(d, &[("rotate_bytes", 4096.into())]))
        .await;
    traffic(&gw, &w, 30).await;
    gw.stop().await;
    let rotated = batch_gateway::audit::rotated_files(&w.audit_path());
    assert!(rotated.len() >= 2, "{rotated:?}");
    // Each rotated file is named after its first seq and ends where the next begins.
    for f in &rotated {
        let first: Value =
            serde_json::from_str(std::fs::read_to_string(f).unwrap().lines().next().unwrap())
                .unwrap();
        let suffix = f.extension().unwrap().to_str().unwrap();
        assert_eq!(suffix, format!("{:012}", first["seq"].as_u64().unwrap()));
    }
    let files = verify::collect_files(&[w.path("audit")]).unwrap();
    let v = verify::verify(&files, &VerifyOptions::default()).unwrap();
    assert_eq!(v.first_seq, Some(1));
    assert_eq!(v.files, rotated.len() + 1);
    let (code, text) = run(&["audit", "verify", w.path("audit").to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
}

fn signing_key(w: &World) -> SigningKey {
    let k = SigningKey::generate(Algorithm::EdDSA);
    w.write("audit-signing.pem", &k.private_pem);
    w.write("audit-signing.pub.pem", &k.public_pem);
    k
}

#[tokio::test]
async fn signed_checkpoints_catch_a_forged_record_and_a_truncated_tail() {
    let w = World::new().await;
    signing_key(&w);
    let gw = w
        .start_with(|d| {
            audit_opts(
                d,
                &[
                    ("signing_key_file", "audit-signing.pem".into()),
                    ("checkpoint_interval_s", 1.into()),
                ],
            )
        })
        .await;
    traffic(&gw, &w, 3).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    traffic(&gw, &w, 3).await;
    gw.stop().await; // a final checkpoint at shutdown
    let recs = w.audit_records();
    let cps: Vec<&Value> = recs
        .iter()
        .filter(|r| r["phase"] == json!("checkpoint"))
        .collect();
    assert!(cps.len() >= 2, "{} checkpoints", cps.len());
    assert_eq!(recs.last().unwrap()["phase"], json!("checkpoint"));
    let audit = w.audit_path();
    let pubkey = w.path("audit-signing.pub.pem");
    let (a, k) = (audit.to_str().unwrap(), pubkey.to_str().unwrap());
    let (code, text) = run(&["audit", "verify", a, "--public-key", k]);
    assert_eq!(code, 0, "{text}");
    let last_head = cps.last().unwrap()["head"].as_str().unwrap().to_string();

    // A forger changes a record and recomputes every later prev.
    let mut lines = w.audit_lines();
    let denied = lines
        .iter()
        .position(|l| l.contains("\"phase\":\"denied\""))
        .unwrap();
    lines[denied] = lines[denied].replace("\"support\"", "\"growth\"");
    for i in denied + 1..lines.len() {
        let prev = hex::encode(sha2::Sha256::digest(lines[i - 1].as_bytes()));
        let mut rec: serde_json::Map<String, Value> = serde_json::from_str(&lines[i]).unwrap();
        rec.insert("prev".into(), json!(prev));
        if rec["phase"] == json!("checkpoint") {
            // The forger fixes head too; only the signature cannot follow.
            rec.insert("head".into(), json!(prev));
        }
        lines[i] = serde_json::to_string(&rec).unwrap();
    }
    let forged = w.write("forged.jsonl", &(lines.join("\n") + "\n"));
    let forged = forged.to_str().unwrap();
    let (plain, _) = run(&["audit", "verify", forged]);
    // Our re-serialization may reorder members but the chain is consistent:
    assert_eq!(
        plain, 0,
        "plain chain verification cannot see a recomputed chain"
    );
    let (code, text) = run(&["audit", "verify", forged, "--public-key", k]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("checkpoint"), "{text}");

    // The tail (with the last checkpoint) is cut off.
    let lines = w.audit_lines();
    let cut = lines.len() - 3;
    let truncated = w.write("truncated.jsonl", &(lines[..cut].join("\n") + "\n"));
    let t = truncated.to_str().unwrap();
    assert_eq!(run(&["audit", "verify", t]).0, 0);
    let (code, text) = run(&[
        "audit",
        "verify",
        t,
        "--public-key",
        k,
        "--expect-head",
        &last_head,
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("truncated"), "{text}");
    assert_eq!(
        run(&[
            "audit",
            "verify",
            a,
            "--public-key",
            k,
            "--expect-head",
            &last_head
        ])
        .0,
        0
    );
}

/// Writes `records` as a chain continuing (seq, prev): what a gateway of
/// an earlier day wrote. Returns where the chain stands after them.
fn write_chain(path: &std::path::Path, records: &[Value], seq: u64, prev: &str) -> (u64, String) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let (mut seq, mut prev) = (seq, prev.to_string());
    for r in records {
        let mut r = r.as_object().unwrap().clone();
        seq += 1;
        r.insert("seq".into(), json!(seq));
        r.insert("prev".into(), json!(prev));
        let line = serde_json::to_string(&r).unwrap();
        prev = hex::encode(sha2::Sha256::digest(line.as_bytes()));
        writeln!(f, "{line}").unwrap();
    }
    (seq, prev)
}

fn old_denials(n: usize, days_ago: i64) -> Vec<Value> {
    let ts = time::OffsetDateTime::now_utc() - time::Duration::days(days_ago);
    let ts = ts
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    (0..n)
        .map(|i| {
            json!({"v": 1, "ts": ts, "request_id": format!("old-{days_ago}-{i}"),
                   "phase": "denied", "decision": "deny", "reason": "token_missing"})
        })
        .collect()
}

const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Retention removes files past their age, never by count, and says so:
/// the prune record lets `audit verify` accept the missing start with no
/// flag. A start cut any other way (a file removed by hand, lines cut off
/// the front) is refused, with or without a public key.
#[tokio::test]
async fn retention_removes_old_files_with_a_prune_record_and_any_other_cut_start_fails() {
    let w = World::new().await;
    signing_key(&w);
    let dir = w.path("audit");
    std::fs::create_dir_all(&dir).unwrap();
    let live = w.audit_path();
    let name = |seq: u64| dir.join(format!("audit.jsonl.{seq:012}"));
    // Three files from ten days ago, one from two days ago.
    let (s1, h1) = write_chain(&name(1), &old_denials(5, 10), 0, ZERO);
    let (s2, h2) = write_chain(&name(s1 + 1), &old_denials(5, 10), s1, &h1);
    let (s3, h3) = write_chain(&name(s2 + 1), &old_denials(5, 10), s2, &h2);
    let (s4, h4) = write_chain(&name(s3 + 1), &old_denials(5, 2), s3, &h3);
    write_chain(&live, &old_denials(2, 2), s4, &h4);
    let gw = w
        .start_with(|d| {
            audit_opts(
                d,
                &[
                    ("retention_days", 5.into()),
                    ("signing_key_file", "audit-signing.pem".into()),
                ],
            )
        })
        .await;
    // The syncer looks for files past their retention soon after start.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while name(1).exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    traffic(&gw, &w, 4).await;
    gw.stop().await;
    for seq in [1, s1 + 1, s2 + 1] {
        assert!(!name(seq).exists(), "file {seq} is past its retention");
    }
    assert!(name(s3 + 1).exists(), "two days old: kept");
    let recs: Vec<Value> = verify::collect_files(std::slice::from_ref(&dir))
        .unwrap()
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let prune = recs.iter().find(|r| r["phase"] == json!("prune")).unwrap();
    let removed = prune["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 3, "{prune}");
    assert_eq!(removed[0]["first_seq"], json!(1));
    assert_eq!(removed[2]["last_seq"], json!(s3));
    assert_eq!(removed[2]["last_hash"], json!(h3));
    assert_eq!(prune["pruned_through"], json!({"seq": s3, "hash": h3}));
    let d = dir.to_str().unwrap();
    let k = w.path("audit-signing.pub.pem");
    let k = k.to_str().unwrap();
    let (code, text) = run(&["audit", "verify", d]);
    assert_eq!(code, 0, "accounted for by the prune record: {text}");
    assert!(text.contains("removed by retention"), "{text}");
    assert_eq!(run(&["audit", "verify", d, "--public-key", k]).0, 0);

    // Someone removes the oldest remaining file by hand: no prune record
    // covers that, and a signed checkpoint anchors nothing.
    std::fs::remove_file(name(s3 + 1)).unwrap();
    let (code, text) = run(&["audit", "verify", d]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("the chain starts at seq"), "{text}");
    let (code, text) = run(&["audit", "verify", d, "--public-key", k]);
    assert_eq!(code, 1, "a checkpoint is no anchor for a cut start: {text}");
    let (code, text) = run(&["audit", "verify", d, "--allow-pruned-start"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("--allow-pruned-start"), "{text}");
}

/// The reviewer's reproduction: the first four lines of a live file (two
/// allowed deletes) are cut off. Without a key and with one, verify fails.
#[tokio::test]
async fn lines_cut_off_the_front_fail_with_and_without_a_public_key() {
    let w = World::new().await;
    signing_key(&w);
    let gw = w
        .start_with(|d| audit_opts(d, &[("signing_key_file", "audit-signing.pem".into())]))
        .await;
    for _ in 0..4 {
        assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    }
    gw.stop().await;
    let lines = w.audit_lines();
    let cut = w.write("cut.jsonl", &(lines[4..].join("\n") + "\n"));
    let (c, k) = (cut.to_str().unwrap(), w.path("audit-signing.pub.pem"));
    let (code, text) = run(&["audit", "verify", c]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("starts at seq 5"), "{text}");
    let (code, text) = run(&["audit", "verify", c, "--public-key", k.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
}

/// A checkpoint's signature covers its seq and ts as well as its head: one
/// moved to another seq or time no longer verifies; checkpoints of the
/// scheme before (head only) still verify and are named as such.
#[tokio::test]
async fn checkpoint_signatures_cover_seq_ts_and_head_and_old_ones_still_read() {
    let w = World::new().await;
    signing_key(&w);
    let gw = w
        .start_with(|d| audit_opts(d, &[("signing_key_file", "audit-signing.pem".into())]))
        .await;
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    gw.stop().await;
    let k = w.path("audit-signing.pub.pem");
    let k = k.to_str().unwrap();
    let lines = w.audit_lines();
    let cp: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(cp["phase"], json!("checkpoint"));
    assert_eq!(cp["sig_format"], json!(2));
    let (code, text) = run(&[
        "audit",
        "verify",
        w.audit_path().to_str().unwrap(),
        "--public-key",
        k,
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("signed over their seq, ts and head"),
        "{text}"
    );
    // The same checkpoint with another ts (and its chain kept whole).
    let mut moved = lines.clone();
    let last = moved.len() - 1;
    let ts = cp["ts"].as_str().unwrap();
    moved[last] = moved[last].replace(ts, "2020-01-01T00:00:00.000Z");
    let m = w.write("moved.jsonl", &(moved.join("\n") + "\n"));
    let (code, text) = run(&["audit", "verify", m.to_str().unwrap(), "--public-key", k]);
    assert_eq!(code, 1, "{text}");
    // A checkpoint of the old scheme: signed over the head's ASCII alone.
    let head = cp["head"].as_str().unwrap();
    let old_sig = {
        use base64::Engine;
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(w.path("audit-signing.pem")).unwrap();
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).unwrap();
        let kp =
            ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
                .unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.sign(head.as_bytes()).as_ref())
    };
    let mut legacy: serde_json::Map<String, Value> = serde_json::from_str(&lines[last]).unwrap();
    legacy.remove("sig_format");
    legacy.insert("sig".into(), json!(old_sig));
    let mut old = lines.clone();
    old[last] = serde_json::to_string(&legacy).unwrap();
    let o = w.write("old.jsonl", &(old.join("\n") + "\n"));
    let (code, text) = run(&["audit", "verify", o.to_str().unwrap(), "--public-key", k]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("older scheme"), "{text}");
}

/// The reviewer's reproduction of a lost record: a restart right after a
/// rotation (the live file holds only its rotate record, or nothing at
/// all) continues seq and prev from the newest record on disk; the next
/// rotations never replace a file; verify passes on the folder.
#[tokio::test]
async fn a_restart_right_after_a_rotation_continues_the_chain_and_replaces_nothing() {
    let w = World::new().await;
    let (data, admin) = (free_port(), free_port());
    let cfg = w.config(|d| {
        fixed_ports(d, data, admin);
        audit_opts(d, &[("rotate_bytes", 4096.into())]);
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{data}").parse().unwrap();
    let serve = || {
        let child = spawn_serve(&cfg.source);
        wait_up(admin);
        child
    };
    let tokenless = |n: usize| async move {
        for _ in 0..n {
            let raw =
                b"POST /2.8/campaigns/delete HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
            try_exchange(addr, raw).await;
        }
    };
    let dir = w.path("audit");
    let mut seen_first: std::collections::HashMap<String, String> = Default::default();
    for round in 0..3 {
        let mut child = serve();
        tokenless(13).await;
        // Stop right after the rotation: wait until one happened.
        let before = batch_gateway::audit::rotated_files(&w.audit_path()).len();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while batch_gateway::audit::rotated_files(&w.audit_path()).len() == before
            && std::time::Instant::now() < deadline
        {
            tokenless(1).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        if round == 1 {
            // The harshest case: the live file is gone or empty.
            std::fs::write(w.audit_path(), "").unwrap();
        }
        // No rotated file ever changes its first line once written.
        for f in batch_gateway::audit::rotated_files(&w.audit_path()) {
            let first = std::fs::read_to_string(&f)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .to_string();
            let name = f.display().to_string();
            if let Some(was) = seen_first.get(&name) {
                assert_eq!(was, &first, "{name} was replaced");
            }
            seen_first.insert(name, first);
        }
    }
    let mut child = serve();
    tokenless(3).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, text) = run(&["audit", "verify", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let files = verify::collect_files(&[dir]).unwrap();
    let v = verify::verify(&files, &VerifyOptions::default()).unwrap();
    assert_eq!(v.first_seq, Some(1));
    // Every file after the first opens with a rotate record naming the
    // file before it.
    for pair in files.windows(2) {
        let first: Value = serde_json::from_str(
            std::fs::read_to_string(&pair[1])
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(first["phase"], json!("rotate"), "{}", pair[1].display());
        assert_eq!(
            first["follows"],
            json!(pair[0].file_name().unwrap().to_str().unwrap())
        );
    }
}

/// A chain that starts again at seq 1 in a later file (what the old
/// writer did after a restart) is broken, not ok.
#[test]
fn a_trail_whose_chain_restarts_is_reported_broken() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("audit.jsonl.000000000001");
    let live = dir.path().join("audit.jsonl");
    write_chain(&a, &old_denials(3, 1), 0, ZERO);
    write_chain(&live, &old_denials(3, 1), 0, ZERO);
    let (code, text) = run(&["audit", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    // A rotated file whose name does not match its first seq is broken too.
    let dir = tempfile::tempdir().unwrap();
    let (s, h) = write_chain(
        &dir.path().join("audit.jsonl.000000000001"),
        &old_denials(3, 1),
        0,
        ZERO,
    );
    write_chain(
        &dir.path().join("audit.jsonl.000000000009"),
        &old_denials(3, 1),
        s,
        &h,
    );
    let (code, text) = run(&["audit", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("named for seq 9"), "{text}");
}

#[tokio::test]
async fn a_full_disk_refuses_everything_and_recovery_keeps_the_chain() {
    let w = World::new().await;
    std::fs::create_dir_all(w.path("audit")).unwrap();
    let gw = w.start().await;
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    // The disk fills: the live file now points at /dev/full (ENOSPC on write).
    let saved = std::fs::read(w.audit_path()).unwrap();
    std::fs::remove_file(w.audit_path()).unwrap();
    std::os::unix::fs::symlink("/dev/full", w.audit_path()).unwrap();
    let r = gw.delete_new(&w.token("growth"), None).await;
    r.assert_gateway_error(503, "audit_unavailable", "2");
    let r = gw.delete_new(&w.token("growth"), None).await;
    r.assert_gateway_error(503, "audit_unavailable", "2");
    assert_eq!(
        w.batch().count(),
        1,
        "nothing forwarded while the audit cannot be written"
    );
    assert_eq!(gw.admin_get("/readyz").await.status, 503);
    let m = gw.metrics().await;
    assert!(!m.contains("batch_gateway_audit_failures_total 0"), "{m}");
    // Space comes back.
    std::fs::remove_file(w.audit_path()).unwrap();
    std::fs::write(w.audit_path(), &saved).unwrap();
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    gw.stop().await;
    let v = verify::verify(&[w.audit_path()], &VerifyOptions::default()).unwrap();
    // The gap is on the record: the live file was replaced, and writing
    // failed from some time until it worked again.
    let reasons: Vec<&str> = v.repairs.iter().map(|(_, r)| r.as_str()).collect();
    assert!(reasons.contains(&"unwritable"), "{reasons:?}");
    assert_eq!(v.records, 4 + v.repairs.len() as u64, "{:?}", v.repairs);
}

#[tokio::test]
async fn a_removed_live_file_is_noticed_and_the_chain_goes_on_in_a_new_one() {
    let w = World::new().await;
    let gw = w.start().await;
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    let old = std::fs::read_to_string(w.audit_path()).unwrap();
    std::fs::remove_file(w.audit_path()).unwrap();
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    gw.stop().await;
    let recs = w.audit_records();
    assert_eq!(recs[0]["phase"], json!("repair"));
    assert_eq!(recs[0]["reason"], json!("file_replaced"));
    assert_eq!(recs[0]["seq"], json!(3));
    // The saved old file and the new one still form one chain.
    let saved = w.write("audit-old.jsonl", &old);
    let v = verify::verify(&[saved, w.audit_path()], &VerifyOptions::default()).unwrap();
    assert_eq!(v.records, 5);
}

#[tokio::test]
async fn audit_report_summarises_a_period_for_reviewers() {
    let w = World::new().await;
    let gw = w.start().await;
    traffic(&gw, &w, 6).await;
    gw.delete("garbage", None, b"{}").await;
    gw.stop().await;
    let (code, text) = run(&[
        "audit",
        "report",
        w.audit_path().to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0, "{text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["requests"], json!({"allow": 4, "deny": 3}));
    assert_eq!(r["by_team"]["growth"], json!({"allow": 4, "deny": 0}));
    assert_eq!(r["by_team"]["support"], json!({"allow": 0, "deny": 2}));
    assert_eq!(r["denial_reasons"][0], json!(["forbidden", 2]));
    assert_eq!(r["most_denied_callers"][0], json!(["svc-cleaner", 2]));
    assert!(r["chain"].as_str().unwrap().starts_with("ok"));
    let (code, text) = run(&["audit", "report", w.audit_path().to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        text.contains("top denial reasons:") && text.contains("stale secret uses: 0"),
        "{text}"
    );
    let (_, none) = run(&[
        "audit",
        "report",
        w.audit_path().to_str().unwrap(),
        "--since",
        "2999-01-01T00:00:00Z",
        "--format",
        "json",
    ]);
    assert_eq!(
        serde_json::from_str::<Value>(&none).unwrap()["requests"],
        json!({"allow": 0, "deny": 0})
    );
}

#[tokio::test]
async fn after_kill_9_under_load_every_forwarded_request_has_its_attempt_and_the_chain_verifies() {
    let w = World::new().await;
    let (data, admin) = (free_port(), free_port());
    let cfg = w.config(|d| {
        fixed_ports(d, data, admin);
        audit_opts(d, &[("stdout", true.into())]);
    });
    let spawn = || spawn_serve(&cfg.source);
    let mut child = spawn();
    wait_up(admin);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{data}").parse().unwrap();
    let mut load = Vec::new();
    for _ in 0..8 {
        let token = w.token("growth");
        load.push(tokio::spawn(async move {
            for _ in 0..200 {
                let raw = delete_request(&token, "", &delete_body(&campaign_id()));
                if try_exchange(addr, &raw).await.is_none() {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        w.batch().count() > 0,
        "no load reached Batch before the kill"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for l in load {
        let _ = l.await;
    }
    let forwarded: Vec<String> = w
        .batch()
        .seen()
        .iter()
        .map(|s| s.all("x-request-id")[0].clone())
        .collect();

    let mut child = spawn();
    wait_up(admin);
    child.kill().unwrap();
    child.wait().unwrap();
    let (code, text) = run(&["audit", "verify", w.audit_path().to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let attempts: std::collections::HashSet<String> = w
        .audit_records()
        .into_iter()
        .filter(|r| r["phase"] == json!("attempt"))
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    for rid in &forwarded {
        assert!(
            attempts.contains(rid),
            "request {rid} reached Batch without an attempt record"
        );
    }
    assert!(attempts.len() >= forwarded.len());
}

#[tokio::test]
async fn the_stdout_mirror_carries_exactly_the_files_lines() {
    let w = World::new().await;
    let (data, admin) = (free_port(), free_port());
    let cfg = w.config(|d| {
        fixed_ports(d, data, admin);
        audit_opts(d, &[("stdout", true.into())]);
    });
    let child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&cfg.source)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_up(admin);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{data}").parse().unwrap();
    for team in ["growth", "support"] {
        let raw = delete_request(
            &w.token(team),
            "X-Batch-Project: marketing-prod\r\n",
            &delete_body(&campaign_id()),
        );
        raw_exchange(addr, &raw).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let mirrored = String::from_utf8(out.stdout).unwrap();
    let file = std::fs::read_to_string(w.audit_path()).unwrap();
    assert_eq!(mirrored, file);
    assert_eq!(file.lines().count(), 3);
}

/// `audit report` puts integrity first: per chain its state, seq and time
/// span, checkpoints (verified against --public-key when given) and its
/// silences; one verdict names the first broken chain.
#[tokio::test]
async fn the_report_states_each_chains_integrity_and_one_verdict() {
    let w = World::new().await;
    signing_key(&w);
    let gw = w
        .start_with(|d| audit_opts(d, &[("signing_key_file", "audit-signing.pem".into())]))
        .await;
    for _ in 0..3 {
        assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    }
    gw.stop().await;
    let lines = w.audit_lines();
    let k = w.path("audit-signing.pub.pem");
    let k = k.to_str().unwrap();
    // Two replicas: gw-0 as written, gw-1 the same trail with one record's
    // team changed, and a silence of two hours planted by re-chaining.
    std::fs::create_dir_all(w.path("fleet/gw-0")).unwrap();
    std::fs::copy(w.audit_path(), w.path("fleet/gw-0/audit.jsonl")).unwrap();
    let tampered: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == 2 {
                l.replacen("growth", "ops", 1)
            } else {
                l.clone()
            }
        })
        .collect();
    w.write("fleet/gw-1/audit.jsonl", &(tampered.join("\n") + "\n"));
    let report = |args: &[&str]| {
        let mut all = vec!["audit", "report", "--format", "json"];
        all.extend_from_slice(args);
        let (code, text) = run(&all);
        assert_eq!(code, 0, "{text}");
        serde_json::from_str::<Value>(&text).unwrap()
    };
    let fleet = w.path("fleet");
    let r = report(&[fleet.to_str().unwrap(), "--public-key", k]);
    let by: std::collections::HashMap<String, Value> = r["integrity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["chain"].as_str().unwrap().to_string(), c.clone()))
        .collect();
    assert_eq!(by["gw-0"]["state"], "ok", "{r}");
    assert_eq!(by["gw-0"]["signatures_verified"], true);
    assert_eq!(by["gw-0"]["first_seq"], 1);
    assert_eq!(by["gw-0"]["last_seq"], json!(lines.len()));
    assert!(by["gw-0"]["checkpoints"].as_u64().unwrap() >= 1);
    assert_eq!(
        by["gw-0"]["first_ts"],
        serde_json::from_str::<Value>(&lines[0]).unwrap()["ts"]
    );
    assert_eq!(by["gw-1"]["state"], "broken", "{r}");
    assert_eq!(by["gw-1"]["signatures_verified"], false);
    assert!(
        by["gw-1"]["broken_at"].as_str().unwrap().contains("seq 4"),
        "{r}"
    );
    assert!(
        r["verdict"].as_str().unwrap().starts_with("BROKEN: gw-1"),
        "{r}"
    );
    // Without a key nothing is claimed about signatures.
    let r = report(&[w.path("fleet/gw-0").to_str().unwrap()]);
    assert_eq!(r["verdict"], "intact", "{r}");
    assert!(r["integrity"][0].get("signatures_verified").is_none());
    assert_eq!(r["integrity"][0]["gaps"], json!([]));

    // A two-hour silence: records re-chained with their times moved.
    let text = rechain(&lines, |i| match i {
        0..=1 => "2030-01-01T09:59:00.000Z",
        2 => "2030-01-01T10:00:00.000Z",
        _ => "2030-01-01T12:00:00.000Z",
    });
    let silent = w.write("silent/audit.jsonl", &text);
    let r = report(&[silent.to_str().unwrap()]);
    assert_eq!(r["integrity"][0]["state"], "ok", "{r}");
    assert_eq!(
        r["integrity"][0]["gaps"],
        json!([{"after_seq": 3, "from": "2030-01-01T10:00:00.000Z", "to": "2030-01-01T12:00:00.000Z", "seconds": 7200}])
    );
    let (_, t) = run(&["audit", "report", silent.to_str().unwrap()]);
    assert!(t.contains("silent 7200 s after seq 3"), "{t}");
}

/// The trail's records without its checkpoints (they sign the heads they
/// saw), renumbered and re-chained with each record's ts from `ts(i)`.
fn rechain(lines: &[String], ts: impl Fn(usize) -> &'static str) -> String {
    let records: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["phase"] != "checkpoint")
        .collect();
    let mut prev = "0".repeat(64);
    let mut text = String::new();
    for (i, mut v) in records.into_iter().enumerate() {
        v["seq"] = json!(i + 1);
        v["ts"] = ts(i).into();
        v["prev"] = prev.clone().into();
        let line = v.to_string();
        use sha2::Digest;
        prev = hex::encode(sha2::Sha256::digest(line.as_bytes()));
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// Without --since the report covers the trail's last 7 days; the records
/// before are only the history its anomalies compare with.
#[tokio::test]
async fn the_report_defaults_to_the_last_seven_days_of_the_trail() {
    let w = World::new().await;
    let gw = w.start().await;
    for _ in 0..4 {
        assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    }
    gw.stop().await;
    // Attempt/outcome pairs: the first two deletes three weeks earlier.
    let text = rechain(&w.audit_lines(), |i| {
        if i < 4 {
            "2030-01-01T10:00:00.000Z"
        } else {
            "2030-01-22T10:00:00.000Z"
        }
    });
    let trail = w.write("moved/audit.jsonl", &text);
    let t = trail.to_str().unwrap();
    let json_of = |args: &[&str]| -> Value {
        let mut all = vec!["audit", "report", "--format", "json", t];
        all.extend_from_slice(args);
        let (code, out) = run(&all);
        assert_eq!(code, 0, "{out}");
        serde_json::from_str(&out).unwrap()
    };
    let recent = json_of(&[]);
    assert_eq!(recent["deletions"]["deleted"], 2, "{recent}");
    assert_eq!(recent["requests"]["allow"], 2);
    let all = json_of(&["--since", "2029-12-01T00:00:00Z"]);
    assert_eq!(all["deletions"]["deleted"], 4, "{all}");
    let early = json_of(&["--until", "2030-01-02T00:00:00Z"]);
    assert_eq!(early["deletions"]["deleted"], 2, "{early}");
    // The integrity section is the whole chain's either way.
    assert_eq!(
        recent["integrity"][0]["first_ts"],
        "2030-01-01T10:00:00.000Z"
    );
}
