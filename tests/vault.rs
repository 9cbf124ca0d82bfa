//! Secrets from Vault (KV v2) through the cache: auth methods, renewal and
//! re-login, outages within and past the stale bound, revocation, rotation,
//! single flight.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::vault::FakeVault;
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

/// `[secrets] backend = "vault"` with `vault_keys`, cache TTL and stale bound.
fn use_vault(
    v: &FakeVault,
    vault_keys: &str,
    ttl_s: i64,
    stale_s: i64,
) -> impl FnOnce(&mut toml::Table) {
    let mut vt: toml::Table = toml::from_str(vault_keys).unwrap();
    vt.insert("address".into(), format!("https://{}", v.addr).into());
    vt.insert("ca_file".into(), "tls/ca.pem".into());
    if !vt.contains_key("request_timeout_ms") {
        vt.insert("request_timeout_ms".into(), 500.into());
    }
    move |d| {
        let s = table(d, "secrets");
        s.remove("file");
        s.insert("backend".into(), "vault".into());
        s.insert("cache_ttl_s".into(), ttl_s.into());
        s.insert("stale_if_error_s".into(), stale_s.into());
        s.insert("vault".into(), vt.into());
    }
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
async fn keys_come_from_kv_v2_with_their_version_and_the_namespace_header() {
    let w = World::new().await;
    let v = vault(&w).await;
    let keys = token_auth(&w, &v, false);
    let gw = w.start_with(use_vault(&v, &keys, 300, 3600)).await;
    let r = ok(&gw, &w).await;
    assert_eq!(r.status, 204, "{r:?}");
    let p = w.project("marketing-prod");
    assert_eq!(
        w.batch().seen()[0].all("authorization"),
        vec![format!("Bearer {}", p.rest_key)]
    );
    let attempt = &w.audit_records()[0];
    assert_eq!(attempt["secret_version"], json!(1));
    {
        let s = v.state.lock().unwrap();
        assert!(
            s.calls
                .iter()
                .all(|(_, _, ns)| ns.as_deref() == Some("team-a"))
        );
        assert!(s.count("GET", "secret/data/batch/marketing-prod") >= 1);
    }
    let text = std::fs::read_to_string(w.audit_path()).unwrap();
    assert!(
        !text.contains("hvs."),
        "a Vault token reached the audit trail"
    );
    gw.stop().await;
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
async fn a_403_for_a_cached_secret_evicts_it_at_once() {
    let w = World::new().await;
    let v = vault(&w).await;
    let keys = token_auth(&w, &v, false);
    let gw = w.start_with(use_vault(&v, &keys, 1, 3600)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    v.state
        .lock()
        .unwrap()
        .denied
        .insert("batch/marketing-prod".into());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Despite a long stale bound, a revoked key is not used again.
    ok(&gw, &w)
        .await
        .assert_gateway_error(503, "secrets_unavailable", "2");
    assert_eq!(
        w.audit_records().pop().unwrap()["detail"],
        json!("secret_missing")
    );
    v.state.lock().unwrap().down = true;
    ok(&gw, &w)
        .await
        .assert_gateway_error(503, "secrets_unavailable", "2");
    assert_eq!(w.batch().count(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_key_rotated_in_vault_is_used_after_the_ttl() {
    let w = World::new().await;
    let v = vault(&w).await;
    let keys = token_auth(&w, &v, false);
    let gw = w.start_with(use_vault(&v, &keys, 1, 3600)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    let p = w.project("marketing-prod");
    v.state
        .lock()
        .unwrap()
        .put(&p.secret_path, "rk_rotated_in_vault", &p.project_key);
    w.batch()
        .state
        .lock()
        .unwrap()
        .keys
        .insert("rk_rotated_in_vault".into(), p.project_key.clone());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(ok(&gw, &w).await.status, 204);
    assert_eq!(
        w.batch().seen()[1].all("authorization"),
        vec!["Bearer rk_rotated_in_vault".to_string()]
    );
    let attempts: Vec<_> = w
        .audit_records()
        .into_iter()
        .filter(|r| r["phase"] == json!("attempt"))
        .collect();
    assert_ne!(attempts[0]["key_fp"], attempts[1]["key_fp"]);
    assert_eq!(attempts[1]["secret_version"], json!(2));
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
