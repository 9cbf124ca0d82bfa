//! The binary as operators run it: check-config, serve's refusals, signals,
//! serve --dev end to end, token mint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary())
        .args(args)
        .env_remove("BATCH_GATEWAY_CONFIG")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn check_config_opens_every_file_and_reports_each_problem() {
    let w = World::new().await;
    let cfg = w.config(|_| {});
    let path = cfg.source.display().to_string();
    assert_eq!(run(&["check-config", "--config", &path]).0, 0);

    std::fs::remove_file(w.path("keys/es.pub.pem")).unwrap();
    w.write("audit-hmac.key", "short");
    w.write("tls/ca.pem", "not a certificate");
    let (code, text) = run(&["check-config", "--config", &path]);
    assert_eq!(code, 1, "{text}");
    for key in [
        "auth.issuers[1].public_keys[0]",
        "audit.hmac_key_file",
        "upstream.ca_file",
    ] {
        assert!(text.contains(key), "{key} not named: {text}");
    }
    assert!(!text.contains(&w.hmac_key));
    // --skip-files checks the rest only.
    assert_eq!(
        run(&["check-config", "--config", &path, "--skip-files"]).0,
        0
    );
}

#[test]
fn a_public_key_of_the_wrong_type_for_the_pinned_algorithms_is_named() {
    let w = World::without_batch();
    w.write("keys/ed.pub.pem", &w.es.public_pem); // EC key for an EdDSA-only issuer
    let path = w.config(|_| {}).source.display().to_string();
    let (code, text) = run(&["check-config", "--config", &path]);
    assert_eq!(code, 1);
    assert!(
        text.contains("auth.issuers[0].public_keys[0]") && text.contains("EC key"),
        "{text}"
    );
}

#[test]
fn serve_refuses_an_invalid_or_missing_config_with_exit_2() {
    let w = World::without_batch();
    let path = w.write("bad.toml", "[server]\nbogus_knob = 1\n");
    let (code, text) = run(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(text.contains("server.bogus_knob"), "{text}");
    let (code, text) = run(&["serve"]);
    assert_eq!(code, 2, "{text}");
    let (code, _) = run(&["check-config", "--config", "/nonexistent/gateway.toml"]);
    assert_eq!(code, 1);
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["check-config", "--help"],
        &["audit", "verify", "--help"],
        &["audit", "query", "--help"],
        &["token", "mint", "--help"],
    ] {
        let (code, text) = run(args);
        assert_eq!(code, 0, "{args:?}");
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
}

fn wait_healthy(admin: u16) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", admin)) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("gateway not healthy on admin port {admin}");
}

fn sigterm(child: &std::process::Child, sig: &str) {
    Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
}

#[tokio::test]
async fn sigterm_drains_and_exits_0() {
    let w = World::new().await;
    let (data, admin) = (free_port(), free_port());
    let cfg = w.config(|d| {
        let s = table(d, "server");
        s.insert("listen".into(), format!("127.0.0.1:{data}").into());
        s.insert("admin_listen".into(), format!("127.0.0.1:{admin}").into());
    });
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&cfg.source)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_healthy(admin);
    // A request in flight when SIGTERM arrives still completes.
    w.batch().set_delay(Duration::from_millis(800));
    let token = w.token("growth");
    let inflight = tokio::spawn(async move {
        delete_at(format!("127.0.0.1:{data}").parse().unwrap(), &token).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&child, "-TERM");
    assert_eq!(inflight.await.unwrap().status, 204);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "no exit within 8 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn serve_dev_answers_its_own_curl_line_in_dry_run_and_stops_on_sigint() {
    let log = dev_round_trip(Command::new(binary()));
    assert!(log.contains("batch-gateway serving"), "{log}");
}

/// On one CPU (an affinity mask of one, as `taskset` or a pinned container
/// gives) the gateway runs on a current-thread runtime, and does all of it
/// there: the request, the audit trail, the drain on SIGINT.
#[test]
fn on_one_cpu_serve_runs_a_current_thread_runtime_end_to_end() {
    let mut pinned = Command::new("taskset");
    pinned.args(["-c", "0"]).arg(binary());
    let log = dev_round_trip(pinned);
    let serving = log
        .lines()
        .find(|l| l.contains("batch-gateway serving"))
        .unwrap_or_else(|| panic!("no start line in {log}"));
    assert!(serving.contains("cpus=1"), "{serving}");
    assert!(serving.contains("runtime=\"current_thread\""), "{serving}");
}

/// Runs `serve --dev` through `cmd`, sends the signed delete it prints,
/// stops it with SIGINT and checks its audit trail; returns its log.
fn dev_round_trip(mut cmd: Command) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let (data, admin) = (free_port(), free_port());
    let mut child = cmd
        .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{data}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}"), "--dev-dir"])
        .arg(tmp.path().join("dev"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining stdout: the gateway must not see a closed pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(t) = line.split("Authorization: Bearer ").nth(1) {
                let _ = tx.send(t.trim_end_matches(['\'', ' ', '\\']).to_string());
            }
        }
    });
    let token = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    wait_healthy(admin);
    let body = b"{\"id\": \"orchestration_0664hyh918hr1gnzka9py5t62nrc0e1f\"}";
    let raw = format!(
        "POST /2.8/campaigns/delete HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {token}\r\nX-Batch-Project: demo\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(raw_exchange(
        format!("127.0.0.1:{data}").parse().unwrap(),
        raw.as_bytes(),
    ));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-gateway-dry-run"), Some("true"));
    sigterm(&child, "-INT");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let audit = tmp.path().join("dev/audit/audit.jsonl");
    let (code, text) = run(&["audit", "verify", audit.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("2 records"), "{text}");
    // The dev private key stays in the dev folder, readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tmp.path().join("dev/dev-idp.key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0);
    log.join().unwrap()
}

#[tokio::test]
async fn token_mint_signs_what_the_gateway_verifies() {
    let w = World::without_batch();
    let key = w.write("idp.key.pem", &w.ed.private_pem);
    let (code, token) = run(&[
        "token",
        "mint",
        "--key",
        key.to_str().unwrap(),
        "--iss",
        ISS,
        "--sub",
        "svc",
        "--team",
        "growth",
        "--team",
        "ops",
        "--claim",
        "htm=POST",
        "--ttl-s",
        "120",
    ]);
    assert_eq!(code, 0, "{token}");
    let cfg = w.config(|_| {});
    let authn = batch_gateway::authn::Authenticator::new(&cfg.auth, &cfg.teams).unwrap();
    let p = authn.verify(token.trim(), now()).await.unwrap();
    assert_eq!(p.teams, vec!["growth", "ops"]);
    assert_eq!(p.binding.htm.as_deref(), Some("POST"));
    // --bind sets htm, htu and bh over the body file's exact bytes.
    let body = w.write("body.json", "{\"id\":\"x\"}\n");
    let (code, bound) = run(&[
        "token",
        "mint",
        "--key",
        key.to_str().unwrap(),
        "--iss",
        ISS,
        "--sub",
        "svc",
        "--team",
        "growth",
        "--bind",
        "POST",
        DELETE,
        body.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{bound}");
    let p = authn.verify(bound.trim(), now()).await.unwrap();
    let want = b64(&{
        use sha2::Digest;
        sha2::Sha256::digest(b"{\"id\":\"x\"}\n")
    });
    assert_eq!(p.binding.htu.as_deref(), Some(DELETE));
    assert_eq!(p.binding.bh, Some(want));
    let (code, text) = run(&[
        "token",
        "mint",
        "--key",
        key.to_str().unwrap(),
        "--alg",
        "HS256",
        "--iss",
        ISS,
        "--sub",
        "s",
        "--team",
        "t",
    ]);
    assert_eq!(code, 2, "{text}");
    // --count: single-use tokens for a load test, each with its own jti.
    let k = key.to_str().unwrap();
    let base = [
        "token", "mint", "--key", k, "--iss", ISS, "--sub", "s", "--team", "growth",
    ];
    let (code, many) = run(&[&base[..], &["--count", "3"]].concat());
    assert_eq!(code, 0, "{many}");
    let mut jtis = Vec::new();
    for line in many.lines() {
        let p = authn.verify(line, now()).await.unwrap();
        jtis.push(p.jti.clone().unwrap());
    }
    jtis.sort();
    jtis.dedup();
    assert_eq!(jtis.len(), 3, "{many}");
    let (code, text) = run(&[&base[..], &["--count", "2", "--no-jti"]].concat());
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("jti"), "{text}");
}

#[tokio::test]
async fn json_logs_carry_the_request_id_and_no_secret() {
    let w = World::without_batch();
    let (data, admin) = (free_port(), free_port());
    let cfg = w.config(|d| {
        let s = table(d, "server");
        s.insert("listen".into(), format!("127.0.0.1:{data}").into());
        s.insert("admin_listen".into(), format!("127.0.0.1:{admin}").into());
        let l = table(d, "log");
        l.insert("format".into(), "json".into());
        l.insert("level".into(), "info".into());
    });
    let child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&cfg.source)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_up(admin);
    let token = w.token("growth");
    // Batch is unreachable: the gateway logs a warning for this request.
    let r = delete_at(format!("127.0.0.1:{data}").parse().unwrap(), &token).await;
    assert_eq!(r.status, 502);
    let rid = r.header("x-request-id").unwrap().to_string();
    sigterm(&child, "-TERM");
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8(out.stderr).unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("upstream request failed"))
        .unwrap_or_else(|| panic!("no warning logged: {logs}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["span"]["request_id"], serde_json::json!(rid), "{line}");
    for secret in [
        token.as_str(),
        &w.project("marketing-prod").rest_key,
        &w.hmac_key,
    ] {
        assert!(!logs.contains(secret));
    }
}
