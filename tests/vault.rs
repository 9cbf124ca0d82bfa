//! Secrets from Vault (KV v2) through the cache, against the in-process
//! fake of Vault's API (`support/vault.rs`). What a real server can do is
//! tested against OpenBao in `tests/openbao.rs` (token file and
//! VAULT_TOKEN, AppRole, Kubernetes, namespaces, rotation, seal, restart,
//! freeze, revocation, deletion, withdrawn policies). These cases stay on
//! the fake because a real server cannot be made to do them on cue:
//! * answering every call but slowly, by a set delay (a frozen server only
//!   hangs), and down at the gateway's start then up at a given moment;
//! * an outage within, then past, a stale bound of a second or two,
//!   checked against the exact calls made (the fake records each);
//! * counting that a hundred concurrent requests make exactly one read;
//! * leases of a second with renewal answered or refused on cue, for each
//!   auth method (real servers round TTLs and refuse renewals only at
//!   their max TTL).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::vault::{FakeVault, vault_backend};
use support::*;

async fn vault(w: &World) -> FakeVault {
    let (cert, key) = w.ca.server(&["127.0.0.1"], false);
    let v = FakeVault::start(&cert, &key).await;
    {
        let mut s = v.state.lock().unwrap();
        for p in &w.projects {
            s.put(&p.secret_path, &p.rest_key, &p.project_key);
        }
    }
    v
}

/// `[secrets] backend = "vault"` on the fake (500 ms timeout unless given).
fn use_vault(
    v: &FakeVault,
    vault_keys: &str,
    ttl_s: i64,
    stale_s: i64,
) -> impl FnOnce(&mut toml::Table) {
    vault_backend(
        &format!("https://{}", v.addr),
        vault_keys,
        500,
        ttl_s,
        stale_s,
    )
}

fn token_auth(w: &World, v: &FakeVault, renewable: bool) -> String {
    let t = v.state.lock().unwrap().issue(renewable);
    w.write("vault-token", &format!("{t}\n"));
    "auth = \"token\"\ntoken_file = \"vault-token\"\nnamespace = \"team-a\"".to_string()
}

async fn ok(gw: &Running, w: &World) -> Resp {
    gw.delete_new(&w.token("growth"), None).await
}

#[tokio::test]
async fn vault_down_at_start_means_not_ready_and_nothing_forwarded() {
    let w = World::new().await;
    let v = vault(&w).await;
    let keys = token_auth(&w, &v, false);
    v.state.lock().unwrap().down = true;
    let gw = w.start_with(use_vault(&v, &keys, 300, 3600)).await;
    assert_eq!(gw.admin_get("/readyz").await.status, 503);
    ok(&gw, &w)
        .await
        .assert_gateway_error(503, "secrets_unavailable", "2");
    assert_eq!(w.batch().count(), 0);
    v.state.lock().unwrap().down = false;
    // Failed fetches back off (at most 5 s, with jitter): Vault is asked
    // again once it ends, without a restart.
    let started = Instant::now();
    while ok(&gw, &w).await.status != 204 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.admin_get("/readyz").await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn an_outage_after_warm_up_is_bridged_until_the_stale_bound_then_refused() {
    let w = World::new().await;
    let v = vault(&w).await;
    let keys = token_auth(&w, &v, false);
    let gw = w.start_with(use_vault(&v, &keys, 1, 2)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    v.state.lock().unwrap().down = true;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    ok(&gw, &w)
        .await
        .assert_gateway_error(503, "secrets_unavailable", "2");
    let sources: Vec<String> = w
        .audit_records()
        .iter()
        .filter(|r| r["phase"] == json!("attempt"))
        .map(|r| r["secret_source"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sources,
        ["cached", "stale"],
        "the reviewer sees which request used a stale key"
    );
    assert_eq!(w.batch().count(), 2, "nothing forwarded past the bound");
    let m = gw.metrics().await;
    assert!(
        m.contains("batch_gateway_secret_cache_total{kind=\"stale\"}"),
        "{m}"
    );
    assert!(
        m.contains("batch_gateway_vault_calls_total{op=\"read\",result=\"error\"}"),
        "{m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_slow_vault_is_bounded_by_the_request_timeout() {
    let w = World::new().await;
    let v = vault(&w).await;
    let keys = token_auth(&w, &v, false);
    let gw = w.start_with(use_vault(&v, &keys, 1, 0)).await;
    v.state.lock().unwrap().delay = Duration::from_secs(5);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t = Instant::now();
    ok(&gw, &w)
        .await
        .assert_gateway_error(503, "secrets_unavailable", "2");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "waited {:?}",
        t.elapsed()
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_hundred_concurrent_requests_for_an_expired_secret_cause_one_vault_read() {
    let w = World::new().await;
    let v = vault(&w).await;
    // A generous Vault timeout: on a loaded machine a timed-out read would
    // (rightly) let the next waiter try again.
    let keys = token_auth(&w, &v, false) + "\nrequest_timeout_ms = 5000";
    // A TTL long enough that the burst ends before refresh-ahead (the last
    // fifth of the TTL) would fetch again.
    let gw = w.start_with(use_vault(&v, &keys, 4, 3600)).await;
    tokio::time::sleep(Duration::from_millis(4100)).await;
    v.state.lock().unwrap().delay = Duration::from_millis(100);
    let before = v
        .state
        .lock()
        .unwrap()
        .count("GET", "secret/data/batch/marketing-prod");
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let token = w.token("growth");
        let addr = gw.addr;
        tasks.push(tokio::spawn(
            async move { delete_at(addr, &token).await.status },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 204);
    }
    let reads = v
        .state
        .lock()
        .unwrap()
        .count("GET", "secret/data/batch/marketing-prod")
        - before;
    assert_eq!(
        reads,
        1,
        "{reads} Vault reads for 100 concurrent requests: {:?}",
        v.state.lock().unwrap().calls
    );
    gw.stop().await;
}

async fn renewal_then_relogin(w: &World, v: &FakeVault, keys: String) {
    v.state.lock().unwrap().lease_s = 3;
    let gw = w.start_with(use_vault(v, &keys, 1, 3600)).await;
    assert_eq!(ok(&gw, w).await.status, 204);
    // Two thirds into the 3 s lease: the next fetch renews.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(ok(&gw, w).await.status, 204);
    let renewals = v
        .state
        .lock()
        .unwrap()
        .count("POST", "auth/token/renew-self");
    assert!(renewals >= 1, "no renewal");
    // Vault forgets every token: renewal is refused, the gateway logs in again.
    v.state.lock().unwrap().tokens.clear();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(ok(&gw, w).await.status, 204);
    let m = gw.metrics().await;
    assert!(m.contains("batch_gateway_vault_renewals_total"), "{m}");
    gw.stop().await;
}

#[tokio::test]
async fn kubernetes_auth_logs_in_renews_and_logs_in_again() {
    let w = World::new().await;
    let v = vault(&w).await;
    v.state.lock().unwrap().kubernetes = Some(("batch-gateway".into(), "sa-jwt-123".into()));
    w.write("sa-token", "sa-jwt-123\n");
    let keys = "auth = \"kubernetes\"\nkubernetes_role = \"batch-gateway\"\nkubernetes_jwt_file = \"sa-token\"".to_string();
    renewal_then_relogin(&w, &v, keys).await;
    let logins = v
        .state
        .lock()
        .unwrap()
        .count("POST", "auth/kubernetes/login");
    assert!(logins >= 2, "{logins} logins");
}

#[tokio::test]
async fn approle_auth_logs_in_renews_and_logs_in_again() {
    let w = World::new().await;
    let v = vault(&w).await;
    v.state.lock().unwrap().approle = Some(("role-1".into(), "secret-id-1".into()));
    w.write("secret-id", "secret-id-1\n");
    let keys =
        "auth = \"approle\"\napprole_role_id = \"role-1\"\napprole_secret_id_file = \"secret-id\""
            .to_string();
    renewal_then_relogin(&w, &v, keys).await;
    let logins = v.state.lock().unwrap().count("POST", "auth/approle/login");
    assert!(logins >= 2, "{logins} logins");
}

#[tokio::test]
async fn token_auth_renews_and_rereads_a_changed_token_file() {
    let w = World::new().await;
    let v = vault(&w).await;
    v.state.lock().unwrap().lease_s = 3;
    let keys = token_auth(&w, &v, true);
    let gw = w.start_with(use_vault(&v, &keys, 1, 3600)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    assert!(
        v.state
            .lock()
            .unwrap()
            .count("POST", "auth/token/renew-self")
            >= 1
    );
    // An agent writes a new token; the old one is revoked.
    let fresh = {
        let mut s = v.state.lock().unwrap();
        s.lease_s = 3600;
        s.tokens.clear();
        s.issue(false)
    };
    w.write("vault-token", &fresh);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    gw.stop().await;
}
