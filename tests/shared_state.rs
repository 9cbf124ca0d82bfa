//! Several replicas, one gateway: real gateway processes on one real Redis
//! (Debian's redis-server, started here on a free port), and that Redis
//! hung, killed, restarted empty and flushed under them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::redis::{Redis, Replica, Sentinel, shared_state};
use support::*;

/// growth: single-use tokens; ops on marketing-prod: `quota` a day. The
/// store's timeout is 10× the default: debug builds of three replicas on
/// a shared two-core machine miss 25 ms now and then, and a call that
/// times out here answers 503, not the verdict these tests check.
fn fleet_config(url: String, quota: i64) -> impl Fn(&mut toml::Table) {
    move |d| {
        shared_state(
            d,
            &url,
            &[
                ("fallback_replicas", 2.into()),
                ("timeout_ms", 250.into()),
                ("key_prefix", "bgw:test:".into()),
            ],
        );
        grant_of(d, 0).insert("single_use_tokens".into(), true.into());
        grant_of(d, 1).insert("daily_quota".into(), quota.into());
    }
}

fn single_use_token(w: &World) -> String {
    w.ed.sign(&with(
        claims(ISS, "growth"),
        json!({"jti": uuid::Uuid::new_v4().to_string()}),
    ))
}

async fn delete(r: &Replica, token: &str) -> Resp {
    delete_at(r.addr, token).await
}

fn replicas(w: &World, n: usize, edit: impl Fn(&mut toml::Table)) -> Vec<Replica> {
    (0..n)
        .map(|i| Replica::start(w, &format!("gw-{i}"), &edit))
        .collect()
}

#[tokio::test]
async fn a_single_use_token_raced_at_every_replica_is_forwarded_exactly_once() {
    let w = World::new().await;
    let redis = Redis::start(w.dir.path());
    let fleet = replicas(&w, 3, fleet_config(redis.url(), 100));
    // A fleet started on an empty store trusts it from its first request:
    // each replica waited out the new epoch's settle time before serving.
    for r in &fleet {
        assert_eq!(r.readyz().1["shared_state"], "ok", "{}", r.name);
    }
    for round in 0..10 {
        let token = single_use_token(&w);
        let body = delete_body(&campaign_id());
        let raw = delete_request(&token, "", &body);
        // Four copies at each replica, all at once.
        let sends = fleet
            .iter()
            .flat_map(|r| std::iter::repeat_n(r.addr, 4))
            .map(|addr| {
                let raw = raw.clone();
                tokio::spawn(async move { raw_exchange(addr, &raw).await })
            })
            .collect::<Vec<_>>();
        let mut ok = 0;
        for s in sends {
            let resp = s.await.unwrap();
            match resp.status {
                204 => ok += 1,
                _ => resp.assert_gateway_error(401, "token_replayed", "10"),
            }
        }
        assert_eq!(ok, 1, "round {round}: accepted {ok} times");
        assert_eq!(
            w.batch().count(),
            round + 1,
            "round {round}: forwarded more than once"
        );
    }
    // Each attempt names its replica and says the fleet decided it.
    let attempts: Vec<_> = fleet
        .iter()
        .flat_map(|r| {
            r.audit_records(&w)
                .into_iter()
                .map(move |rec| (r.name.clone(), rec))
        })
        .filter(|(_, rec)| rec["phase"] == "attempt")
        .collect();
    assert_eq!(attempts.len(), 10);
    for (name, rec) in &attempts {
        assert_eq!(rec["replica"], name.as_str());
        assert_eq!(rec["limits"], "shared");
    }
    // Nothing secret in the store: no key, token or project key.
    let dump = format!("{:?}", redis.keys());
    for p in &w.projects {
        assert!(!dump.contains(&p.rest_key) && !dump.contains(&p.project_key));
    }
    assert!(redis.keys().iter().all(|k| k.starts_with("bgw:test:")));
}

#[tokio::test]
async fn a_daily_quota_of_3_allows_exactly_3_deletions_across_the_fleet() {
    let w = World::new().await;
    let redis = Redis::start(w.dir.path());
    let fleet = replicas(&w, 3, fleet_config(redis.url(), 3));
    for r in &fleet {
        r.wait_shared_state("ok", Duration::from_secs(5));
    }
    let token = w.token("ops");
    let sends = (0..12)
        .map(|i| {
            let addr = fleet[i % 3].addr;
            let raw = delete_request(
                &token,
                "X-Batch-Project: marketing-prod\r\n",
                &delete_body(&campaign_id()),
            );
            tokio::spawn(async move { raw_exchange(addr, &raw).await })
        })
        .collect::<Vec<_>>();
    let mut ok = 0;
    for s in sends {
        let resp = s.await.unwrap();
        if resp.status == 204 {
            ok += 1;
        } else {
            resp.assert_gateway_error(429, "quota_exceeded", "60");
            let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=86_400).contains(&retry));
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(w.batch().count(), 3);
}

#[tokio::test]
async fn a_429_at_one_replica_makes_the_others_answer_upstream_cooldown_at_once() {
    let w = World::new().await;
    let redis = Redis::start(w.dir.path());
    let fleet = replicas(&w, 2, fleet_config(redis.url(), 100));
    for r in &fleet {
        r.wait_shared_state("ok", Duration::from_secs(5));
    }
    let token = w.token("ops");
    w.batch()
        .force(429, &[("Retry-After", "30")], br#"{"error_code":"60"}"#);
    let first = delete_at_project(&fleet[0], &token, "marketing-prod").await;
    assert_eq!(first.status, 429);
    assert_eq!(first.header("x-gateway-error"), None, "Batch's own 429");
    assert_eq!(w.batch().count(), 1);
    // The other replica, right away: nothing sent, Retry-After from the
    // store's cool-down.
    let other = delete_at_project(&fleet[1], &token, "marketing-prod").await;
    other.assert_gateway_error(429, "upstream_cooldown", "60");
    let retry: u64 = other.header("retry-after").unwrap().parse().unwrap();
    assert!((25..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(w.batch().count(), 1);
    // Another project is not cooling down. ops has no limit there and
    // the token is not single-use: the request pays the cool-down check
    // and nothing more.
    let admits =
        fleet[1].metric("batch_gateway_shared_state_calls_total{op=\"admit\",result=\"ok\"}");
    let sales = delete_at_project(&fleet[1], &token, "sales-prod").await;
    assert_eq!(sales.status, 429, "still forced");
    assert_eq!(w.batch().count(), 2);
    assert_eq!(
        fleet[1].metric("batch_gateway_shared_state_calls_total{op=\"admit\",result=\"ok\"}"),
        admits
    );
    assert!(
        fleet[1]
            .metric("batch_gateway_shared_state_calls_total{op=\"cooldown_check\",result=\"ok\"}")
            >= 1.0
    );
}

async fn delete_at_project(r: &Replica, token: &str, project: &str) -> Resp {
    raw_exchange(
        r.addr,
        &delete_request(
            token,
            &format!("X-Batch-Project: {project}\r\n"),
            &delete_body(&campaign_id()),
        ),
    )
    .await
}

/// What every outage must look like: single-use tokens refused with 503
/// shared_state_unavailable and nothing sent, plain tokens served within
/// this replica's share of the quota (`limits: "local"`), ready but
/// degraded.
async fn assert_degraded(w: &World, fleet: &[Replica]) {
    for r in fleet {
        let before = w.batch().count();
        let started = Instant::now();
        let resp = delete(r, &single_use_token(w)).await;
        resp.assert_gateway_error(503, "shared_state_unavailable", "2");
        assert!(resp.header("retry-after").is_some());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(w.batch().count(), before, "nothing sent");
        let (ready, body) = r.readyz();
        assert!(ready, "/readyz stays 200");
        assert_eq!(body["shared_state"], "degraded");
    }
}

/// Waits for every replica to trust the store again (no restart).
fn wait_recovered(fleet: &[Replica]) {
    for r in fleet {
        r.wait_shared_state("ok", Duration::from_secs(10));
    }
}

/// One plain ops delete on marketing-prod at `r`, forwarded.
async fn ops_forwarded(r: &Replica, ops: &str) {
    let resp = delete_at_project(r, ops, "marketing-prod").await;
    assert_eq!(resp.status, 204, "{:?}", resp.body);
}

/// A fresh single-use token spent at `r`.
async fn spend(w: &World, r: &Replica) -> String {
    let token = single_use_token(w);
    assert_eq!(delete(r, &token).await.status, 204);
    token
}

/// ops requests at `r` until one is refused; the number accepted.
async fn ops_until_refused(r: &Replica, token: &str, most: usize) -> usize {
    for n in 0..most {
        let resp = delete_at_project(r, token, "marketing-prod").await;
        if resp.status != 204 {
            resp.assert_gateway_error(429, "quota_exceeded", "60");
            return n;
        }
    }
    most
}

#[tokio::test]
async fn a_hung_redis_fails_single_use_closed_and_quotas_to_a_share_then_recovers() {
    let w = World::new().await;
    let redis = Redis::start(w.dir.path());
    let fleet = replicas(&w, 2, fleet_config(redis.url(), 6));
    wait_recovered(&fleet);
    let spent = spend(&w, &fleet[0]).await;
    let ops = w.token("ops");
    ops_forwarded(&fleet[0], &ops).await;
    redis.pause();
    assert_degraded(&w, &fleet).await;
    // Quota 6 over 2 replicas: 3 each, minus what the replica spent
    // before the outage (1 at gw-0).
    assert_eq!(ops_until_refused(&fleet[0], &ops, 10).await, 2);
    assert_eq!(ops_until_refused(&fleet[1], &ops, 10).await, 3);
    let local: Vec<_> = fleet[1]
        .audit_records(&w)
        .into_iter()
        .filter(|r| r["phase"] == "attempt")
        .collect();
    assert!(local.iter().all(|r| r["limits"] == "local"));
    // The refusal's record says a replica's share decided it.
    let refused = fleet[1]
        .audit_records(&w)
        .into_iter()
        .rfind(|r| r["reason"] == "quota_exceeded")
        .unwrap();
    assert_eq!(
        refused["detail"],
        "daily_quota 6 for team ops on marketing-prod (this replica's share 3 while the shared state is unavailable)"
    );
    let metrics = fleet[0].metrics();
    assert!(metrics.contains("batch_gateway_shared_state_breaker_open 1"));
    assert!(metrics.contains("batch_gateway_shared_state_fallbacks_total{kind=\"single_use\"}"));
    // Calls timed out (the background epoch check or an admission), then
    // the open breaker refused them without trying.
    assert!(metrics.contains("result=\"timeout\"}"), "{metrics}");
    assert!(
        metrics.contains("batch_gateway_shared_state_calls_total{op=\"admit\",result=\"open\"}")
    );
    redis.resume();
    wait_recovered(&fleet);
    // The spent token stays spent everywhere; the fleet's quota is the
    // store's again (1 used in it before the outage).
    for r in &fleet {
        delete(r, &spent)
            .await
            .assert_gateway_error(401, "token_replayed", "10");
    }
    spend(&w, &fleet[1]).await;
    assert!(
        fleet[0]
            .metrics()
            .contains("batch_gateway_shared_state_breaker_open 0")
    );
}

#[tokio::test]
async fn a_killed_redis_is_an_outage_and_one_restarted_empty_is_re_seeded_from_the_trails() {
    let w = World::new().await;
    let mut redis = Redis::start(w.dir.path());
    let fleet = replicas(&w, 2, fleet_config(redis.url(), 4));
    wait_recovered(&fleet);
    let spent = [spend(&w, &fleet[0]).await, spend(&w, &fleet[1]).await];
    let ops = w.token("ops");
    for r in &fleet {
        ops_forwarded(r, &ops).await;
    }
    let reseeds: Vec<f64> = fleet
        .iter()
        .map(|r| r.metric("batch_gateway_shared_state_reseeds_total"))
        .collect();
    redis.kill();
    assert_degraded(&w, &fleet).await;
    let sent = w.batch().count();
    redis.restart_empty();
    wait_recovered(&fleet);
    // Each replica re-published its own spent jtis: replays are refused
    // at the other replica, which never saw them.
    delete(&fleet[1], &spent[0])
        .await
        .assert_gateway_error(401, "token_replayed", "10");
    delete(&fleet[0], &spent[1])
        .await
        .assert_gateway_error(401, "token_replayed", "10");
    // And today's counts: 2 of the 4 were used before.
    let more =
        ops_until_refused(&fleet[0], &ops, 10).await + ops_until_refused(&fleet[1], &ops, 10).await;
    assert_eq!(more, 2);
    assert_eq!(w.batch().count(), sent + 2);
    for (r, before) in fleet.iter().zip(reseeds) {
        assert_eq!(
            r.metric("batch_gateway_shared_state_reseeds_total"),
            before + 1.0
        );
    }
}

#[tokio::test]
async fn a_flushall_mid_run_forgets_nothing_that_matters() {
    let w = World::new().await;
    let redis = Redis::start(w.dir.path());
    let fleet = replicas(&w, 2, fleet_config(redis.url(), 3));
    wait_recovered(&fleet);
    let spent = spend(&w, &fleet[0]).await;
    let ops = w.token("ops");
    ops_forwarded(&fleet[1], &ops).await;
    redis.cmd(&["FLUSHALL"]);
    // Whatever each replica answers while it notices and re-seeds, the
    // spent token is never forwarded again and the quota never passes 3.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut replayed_ok = 0;
    while Instant::now() < deadline {
        for r in &fleet {
            let resp = delete(r, &spent).await;
            assert_ne!(
                resp.status, 204,
                "a spent token was accepted after FLUSHALL"
            );
            if resp.status == 401 {
                replayed_ok += 1;
            }
        }
    }
    assert!(replayed_ok > 0);
    wait_recovered(&fleet);
    let more =
        ops_until_refused(&fleet[0], &ops, 10).await + ops_until_refused(&fleet[1], &ops, 10).await;
    assert_eq!(
        more, 2,
        "3 a day across the fleet, 1 spent before the flush"
    );
}

#[tokio::test]
async fn a_redis_down_at_start_means_degraded_not_dead_and_recovers_without_restart() {
    let w = World::new().await;
    let dead = free_port();
    let fleet = replicas(&w, 1, fleet_config(format!("redis://127.0.0.1:{dead}"), 10));
    assert_degraded(&w, &fleet).await;
    ops_forwarded(&fleet[0], &w.token("ops")).await;
    let _redis = Redis::start_on(w.dir.path(), dead);
    wait_recovered(&fleet);
    spend(&w, &fleet[0]).await;
}

/// The fleet's config over `rediss://` trusting `ca_file`, as the ACL
/// user `gateway`.
fn tls_user(url: String, ca_file: &'static str) -> impl Fn(&mut toml::Table) {
    move |d| {
        fleet_config(url.clone(), 10)(d);
        let s = d.get_mut("shared_state").unwrap().as_table_mut().unwrap();
        s.insert("ca_file".into(), ca_file.into());
        s.insert("username".into(), "gateway".into());
        s.insert("password_file".into(), "redis/password".into());
    }
}

#[tokio::test]
async fn over_tls_with_an_acl_user_limited_to_the_prefix() {
    let w = World::new().await;
    let (cert, key) = w.ca.server(&["127.0.0.1"], false);
    let cert = w.write("redis/cert.pem", &cert);
    let key = w.write("redis/key.pem", &key);
    let redis = Redis::start_tls(w.dir.path(), w.path("tls/ca.pem"), cert, key);
    // The ACL user is set over TLS with redis-cli (the server has no plain port).
    let acl = std::process::Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(w.path("tls/ca.pem"))
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string()])
        // The runbook's user (docs/operations.md): its prefix, the
        // scripts and the commands they run, nothing else.
        .args([
            "ACL",
            "SETUSER",
            "gateway",
            "on",
            ">s3cret-pw",
            "~bgw:test:*",
            "resetchannels",
            "-@all",
            "+eval",
            "+evalsha",
            "+script|load",
            "+get",
            "+set",
            "+del",
            "+exists",
            "+time",
            "+ping",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&acl.stdout).contains("OK"),
        "{acl:?}"
    );
    w.write("redis/password", "s3cret-pw\n");
    let fleet = replicas(&w, 2, tls_user(redis.url(), "tls/ca.pem"));
    wait_recovered(&fleet);
    let token = spend(&w, &fleet[0]).await;
    delete(&fleet[1], &token)
        .await
        .assert_gateway_error(401, "token_replayed", "10");
    // The scripts run as this user for every kind of request: a plain
    // token on a grant without limits (the cool-down check) and on one
    // with a quota (the admission), not only single-use ones.
    let ops = w.token("ops");
    assert_eq!(
        delete_at_project(&fleet[0], &ops, "sales-prod")
            .await
            .status,
        204
    );
    ops_forwarded(&fleet[1], &ops).await;
    for r in &fleet {
        assert_eq!(
            r.metric("batch_gateway_shared_state_calls_total{op=\"admit\",result=\"error\"}"),
            0.0
        );
        assert_eq!(
            r.metric(
                "batch_gateway_shared_state_calls_total{op=\"cooldown_check\",result=\"error\"}"
            ),
            0.0
        );
        assert_eq!(r.readyz().1["shared_state"], "ok");
    }
    // The password reaches no log, record or metric.
    for r in &fleet {
        assert!(!r.metrics().contains("s3cret"));
        assert!(!r.admin_get("/readyz").contains("s3cret"));
        for rec in r.audit_records(&w) {
            assert!(!rec.to_string().contains("s3cret"));
        }
    }
    // A CA that does not sign the server's certificate: no connection,
    // single-use tokens refused.
    let other = Ca::new("some other CA");
    w.write("tls/other-ca.pem", &other.pem);
    let wrong = Replica::start(&w, "gw-wrong-ca", tls_user(redis.url(), "tls/other-ca.pem"));
    assert_degraded(&w, std::slice::from_ref(&wrong)).await;
}

/// The store's scripts, driven directly: a refund releases a jti only for
/// the request holding it, and a cool-down is extended, never shortened.
#[tokio::test]
async fn a_refund_releases_only_its_own_jti_and_a_cool_down_is_never_shortened() {
    use batch_gateway::config::{RedisTarget, SharedStateConfig};
    use batch_gateway::shared::{Ask, SharedState, Trail, Verdict};
    let w = World::without_batch();
    let redis = Redis::start(w.dir.path());
    let cfg = SharedStateConfig {
        target: RedisTarget::Url(redis.url()),
        ca_file: None,
        username: None,
        password_file: None,
        key_prefix: "t:".into(),
        timeout: Duration::from_millis(500),
        fallback_replicas: 2,
    };
    let trail = Trail {
        live: w.path("audit/audit.jsonl"),
        window_s: 960,
        leeway_s: 30,
    };
    let metrics = std::sync::Arc::new(batch_gateway::metrics::Metrics::new());
    let store = SharedState::new(&cfg, "gw-0", trail, metrics).unwrap();
    store.start().await;
    let started = Instant::now();
    while !store.healthy() {
        assert!(started.elapsed() < Duration::from_secs(10), "never trusted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let until = now() + 600;
    let ask = |rid: &'static str| Ask {
        project: "p",
        rates: vec![],
        quotas: vec![("growth", "campaigns.delete", 5)],
        pace_per_s: None,
        jti: Some(("iss", "j-1", until)),
        request_id: rid,
    };
    let Ok(Verdict::Admitted { refund, .. }) = store.admit(&ask("r-1")).await else {
        panic!("not admitted");
    };
    assert!(matches!(
        store.admit(&ask("r-2")).await,
        Ok(Verdict::Replayed)
    ));
    let jti_key = redis
        .keys()
        .into_iter()
        .find(|k| k.starts_with("t:jti:"))
        .unwrap();
    let quota_key = "t:{p:p}:quota:growth:campaigns.delete";
    // Another request holds the jti by now: this refund must not free it,
    // but it gives its quota unit back.
    redis.cmd(&["SET", &jti_key, "r-other"]);
    store.refund(refund);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(redis.get(&jti_key).as_deref(), Some("r-other"));
    let used = redis.get(quota_key).unwrap();
    assert!(used.ends_with(":0"), "{used}");
    // Its own holder's refund does free it.
    redis.cmd(&["DEL", &jti_key]);
    let Ok(Verdict::Admitted { refund, .. }) = store.admit(&ask("r-3")).await else {
        panic!("not admitted");
    };
    store.refund(refund);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(redis.keys().iter().all(|k| !k.starts_with("t:jti:")));
    // Every key expires by itself (the epoch and the seeded marker aside).
    assert!(matches!(
        store.admit(&ask("r-4")).await,
        Ok(Verdict::Admitted { .. })
    ));
    for k in redis.keys() {
        let ttl = redis.pttl(&k);
        assert!(ttl > 0 || k == "t:epoch", "{k} never expires ({ttl})");
    }
    // A 30 s cool-down is not shortened by a later 1 s one.
    store
        .extend_cooldown("p", Duration::from_secs(30), false)
        .await;
    store
        .extend_cooldown("p", Duration::from_secs(1), true)
        .await;
    let free = Ask {
        quotas: vec![],
        jti: None,
        ..ask("r-5")
    };
    match store.admit(&free).await {
        Ok(Verdict::Cooldown {
            retry_after,
            unavailable,
        }) => {
            assert!(retry_after > Duration::from_secs(28), "{retry_after:?}");
            assert!(!unavailable, "still the 429's cool-down");
        }
        other => panic!("{other:?}"),
    }
}

/// `upstream_rate_per_s` paces the fleet, not each replica: at 1 a second,
/// of four requests at once across two replicas, one goes now, one waits
/// its slot (at most 1 s), two are refused.
#[tokio::test]
async fn the_upstream_pace_is_the_fleets() {
    let w = World::new().await;
    let redis = Redis::start(w.dir.path());
    let url = redis.url();
    let fleet = replicas(&w, 2, move |d| {
        fleet_config(url.clone(), 100)(d);
        let projects = d.get_mut("projects").unwrap().as_array_mut().unwrap();
        projects[1]
            .as_table_mut()
            .unwrap()
            .insert("upstream_rate_per_s".into(), 1.into());
    });
    wait_recovered(&fleet);
    let token = w.token("support");
    let sends = (0..4)
        .map(|i| {
            let addr = fleet[i % 2].addr;
            let raw = delete_request(&token, "", &delete_body(&campaign_id()));
            tokio::spawn(async move { raw_exchange(addr, &raw).await })
        })
        .collect::<Vec<_>>();
    let mut statuses = vec![];
    for s in sends {
        let resp = s.await.unwrap();
        if resp.status != 204 {
            resp.assert_gateway_error(429, "rate_limited", "60");
        }
        statuses.push(resp.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 204).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(w.batch().count(), 2);
}

fn cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_batch-gateway"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A reviewer handed the folder of every replica's folder: `audit verify`
/// checks each chain on its own (one replica's tampering names that
/// replica, the other stays ok), `audit query` and `audit report` merge
/// the chains by `ts`.
#[tokio::test]
async fn the_reviewers_commands_read_every_replicas_chain() {
    let w = World::new().await;
    let redis = Redis::start(w.dir.path());
    let fleet = replicas(&w, 2, fleet_config(redis.url(), 100));
    let ops = w.token("ops");
    for i in 0..6 {
        ops_forwarded(&fleet[i % 2], &ops).await;
        delete(&fleet[i % 2], "not-a-token").await;
    }
    drop(fleet);
    let audit = w.path("audit");
    let audit = audit.to_str().unwrap();
    let (code, out) = cli(&["audit", "verify", audit]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: gw-0: ") && out.contains("ok: gw-1: "),
        "{out}"
    );
    // Each chain checked alone: both start at seq 1 with 64 zeros.
    let (code, out) = cli(&["audit", "query", "--format", "json", audit]);
    assert_eq!(code, 0, "{out}");
    let recs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ts: Vec<&str> = recs.iter().map(|r| r["ts"].as_str().unwrap()).collect();
    let mut sorted = ts.clone();
    sorted.sort();
    assert_eq!(ts, sorted, "merged by ts");
    for name in ["gw-0", "gw-1"] {
        assert!(recs.iter().any(|r| r["replica"] == name));
    }
    let (code, out) = cli(&["audit", "query", "--format", "table", audit]);
    assert_eq!(code, 0);
    assert!(out.lines().next().unwrap().contains("REPLICA"), "{out}");
    let (code, out) = cli(&["audit", "report", "--format", "json", audit]);
    assert_eq!(code, 0, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["requests"]["allow"], 6);
    assert_eq!(report["requests"]["deny"], 6);
    assert_eq!(report["by_replica"]["gw-0"]["allow"], 3);
    assert_eq!(report["by_replica"]["gw-1"]["deny"], 3);
    // One replica's trail edited: that chain fails, by name; the other is ok.
    let file = w.path("audit/gw-1/audit.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("\"deny\"", "\"allow\"", 1)).unwrap();
    let (code, out) = cli(&["audit", "verify", audit]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("ok: gw-0: ") && out.contains("FAILED: gw-1: "),
        "{out}"
    );
    let (_, out) = cli(&["audit", "report", audit]);
    assert!(
        out.contains("gw-0: ok") && out.contains("gw-1: BROKEN"),
        "{out}"
    );
}

/// The master found through Redis Sentinel (`sentinel_urls`,
/// `sentinel_master`): the fleet shares its state there.
#[tokio::test]
async fn through_sentinel() {
    let w = World::new().await;
    let redis = Redis::start(w.dir.path());
    let sentinel = Sentinel::start(w.dir.path(), &redis, "bgw-master");
    let url = format!("redis://127.0.0.1:{}", sentinel.port);
    let fleet = replicas(&w, 2, move |d| {
        fleet_config(url.clone(), 10)(d);
        let s = d.get_mut("shared_state").unwrap().as_table_mut().unwrap();
        s.remove("url");
        s.insert("sentinel_urls".into(), vec![url.clone()].into());
        s.insert("sentinel_master".into(), "bgw-master".into());
    });
    wait_recovered(&fleet);
    let token = spend(&w, &fleet[0]).await;
    delete(&fleet[1], &token)
        .await
        .assert_gateway_error(401, "token_replayed", "10");
    assert!(redis.keys().iter().any(|k| k.starts_with("bgw:test:jti:")));
}
