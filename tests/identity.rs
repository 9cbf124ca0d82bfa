//! Caller identity you can bet a deletion on: JWKS rotation and outages,
//! request-bound and single-use tokens, and RFC 8725's attacks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::*;

/// An identity provider serving a JWKS over TLS (the Batch fake, forced).
async fn idp(w: &World) -> FakeBatch {
    let (cert, key) = w.ca.server(&["127.0.0.1"], false);
    FakeBatch::start(&cert, &key, HashMap::new()).await
}

fn serve_keys(idp: &FakeBatch, keys: &[Value]) {
    let body = json!({ "keys": keys }).to_string();
    idp.force(
        200,
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
}

/// Issuer 1 takes its keys from `idp` only.
fn use_jwks(idp: &FakeBatch, refresh_s: i64, stale_s: i64) -> impl FnOnce(&mut toml::Table) {
    let url = format!("https://{}/.well-known/jwks.json", idp.addr);
    move |d| {
        let auth = table(d, "auth");
        let issuers = auth.get_mut("issuers").unwrap().as_array_mut().unwrap();
        let iss = issuers[0].as_table_mut().unwrap();
        iss.remove("public_keys");
        iss.insert("jwks_url".into(), url.into());
        iss.insert("jwks_ca_file".into(), "tls/ca.pem".into());
        iss.insert("jwks_refresh_s".into(), refresh_s.into());
        iss.insert("jwks_min_refetch_s".into(), 1.into());
        iss.insert("jwks_stale_max_s".into(), stale_s.into());
    }
}

#[tokio::test]
async fn keys_rotate_through_the_jwks_with_an_overlap_then_the_old_key_stops() {
    let w = World::new().await;
    let idp = idp(&w).await;
    let old = SigningKey::generate(Algorithm::EdDSA);
    let new = SigningKey::generate(Algorithm::EdDSA);
    serve_keys(&idp, &[jwk(&old, "k-old")]);
    let gw = w.start_with(use_jwks(&idp, 1, 3600)).await;
    let body = delete_body(&campaign_id());
    let c = || claims(ISS, "growth");
    let first = gw.delete(&sign_kid(&old, "k-old", &c()), None, &body).await;
    assert_eq!(first.status, 204, "{:?}", w.audit_records());

    // Overlap: both keys published. The new kid is unknown to the cached
    // set, so (once jwks_min_refetch_s has passed) it triggers a refetch.
    serve_keys(&idp, &[jwk(&old, "k-old"), jwk(&new, "k-new")]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        gw.delete(&sign_kid(&new, "k-new", &c()), None, &body)
            .await
            .status,
        204
    );
    assert_eq!(
        gw.delete(&sign_kid(&old, "k-old", &c()), None, &body)
            .await
            .status,
        204
    );

    // The old key leaves the set: after the next refresh it no longer verifies.
    serve_keys(&idp, &[jwk(&new, "k-new")]);
    let n = idp.count();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(idp.count() > n, "no refresh while waiting");
    let r = gw.delete(&sign_kid(&old, "k-old", &c()), None, &body).await;
    r.assert_gateway_error(401, "token_invalid", "10");
    assert_eq!(
        gw.delete(&sign_kid(&new, "k-new", &c()), None, &body)
            .await
            .status,
        204
    );
    let denied = w
        .audit_records()
        .into_iter()
        .find(|r| r["phase"] == json!("denied"))
        .unwrap();
    assert_eq!(denied["detail"], json!("unknown_kid"));
    assert_eq!(denied["unverified"]["kid"], json!("k-old"));
    // One key in the set: a token without kid is checked against it.
    assert_eq!(gw.delete(&new.sign(&c()), None, &body).await.status, 204);
    // Several keys and no kid: the token must say which.
    serve_keys(&idp, &[jwk(&new, "k-new"), jwk(&old, "k-old")]);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = gw.delete(&new.sign(&c()), None, &body).await;
    r.assert_gateway_error(401, "token_invalid", "10");
    let last = w.audit_records().pop().unwrap();
    assert_eq!(last["detail"], json!("kid_required"));
    gw.stop().await;
}

#[tokio::test]
async fn while_the_idp_is_down_the_last_good_set_serves_until_the_stale_bound() {
    let w = World::new().await;
    let idp = idp(&w).await;
    let key = SigningKey::generate(Algorithm::EdDSA);
    serve_keys(&idp, &[jwk(&key, "k1")]);
    let gw = w.start_with(use_jwks(&idp, 1, 3)).await;
    let body = delete_body(&campaign_id());
    let tok = || sign_kid(&key, "k1", &claims(ISS, "growth"));
    assert_eq!(gw.delete(&tok(), None, &body).await.status, 204);

    idp.force(503, &[], b"down");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        gw.delete(&tok(), None, &body).await.status,
        204,
        "stale set within the bound"
    );
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(
        ready.status, 200,
        "one issuer's stale key set leaves the pod ready"
    );
    assert_eq!(ready.json()["checks"]["issuers"][ISS], json!("stale"));

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = gw.delete(&tok(), None, &body).await;
    r.assert_gateway_error(401, "token_invalid", "10");
    assert_eq!(
        w.audit_records().pop().unwrap()["detail"],
        json!("jwks_unavailable")
    );
    let ready = gw.admin_get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["checks"]["issuers"][ISS], json!("unavailable"));
    // The other issuer is unaffected.
    let es = w.es.sign(&claims(ISS2, "growth"));
    assert_eq!(gw.delete(&es, None, &body).await.status, 204);

    // The IdP comes back: the next refresh restores the issuer.
    serve_keys(&idp, &[jwk(&key, "k1")]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gw.delete(&tok(), None, &body).await.status, 204);
    gw.stop().await;
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_one_fetch_per_interval() {
    let w = World::new().await;
    let idp = idp(&w).await;
    let key = SigningKey::generate(Algorithm::EdDSA);
    serve_keys(&idp, &[jwk(&key, "k1")]);
    // Long refresh so that only kid misses cause fetches.
    let gw = w.start_with(use_jwks(&idp, 3600, 3600)).await;
    let before = idp.count();
    let body = delete_body(&campaign_id());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let tok = sign_kid(&key, &format!("random-{i}"), &claims(ISS, "growth"));
        let gw_addr = gw.addr;
        let raw = delete_request(&tok, "", &body);
        tasks.push(tokio::spawn(async move {
            raw_exchange(gw_addr, &raw).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    let fetched = idp.count() - before;
    // 200 misses within a second or two: at most one fetch per started second.
    assert!(
        (1..=3).contains(&fetched),
        "{fetched} fetches for 200 unknown kids"
    );
    assert_eq!(
        gw.app.state().authn.key_set_fetches(ISS),
        fetched as u64 + before as u64
    );
    gw.stop().await;
}

fn single_use_growth(d: &mut toml::Table) {
    let teams = d.get_mut("teams").unwrap().as_array_mut().unwrap();
    let grants = teams[0].get_mut("grants").unwrap().as_array_mut().unwrap();
    grants[0]
        .as_table_mut()
        .unwrap()
        .insert("single_use_tokens".into(), true.into());
}

#[tokio::test]
async fn a_spent_jti_stays_spent_across_a_restart() {
    let w = World::new().await;
    let gw = w.start_with(single_use_growth).await;
    let tok = w.token("growth");
    assert_eq!(gw.delete_new(&tok, None).await.status, 204);
    gw.stop().await;
    // The attempt carries what a restart needs: the token's own exp.
    let attempt = w
        .audit_records()
        .into_iter()
        .find(|r| r["phase"] == "attempt")
        .unwrap();
    assert_eq!(attempt["caller"]["single_use"], true);
    assert!(attempt["caller"]["exp"].as_i64().unwrap() > now());

    let gw = w.start_with(single_use_growth).await;
    let r = gw.delete_new(&tok, None).await;
    r.assert_gateway_error(401, "token_replayed", "10");
    assert_eq!(w.batch().count(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_jti_is_spent_only_when_the_request_is_forwarded() {
    let mut w = World::new().await;
    w.projects.retain(|p| p.alias != "marketing-prod");
    w.write_secrets();
    let gw = w.start_with(single_use_growth).await;
    let tok = w.token("growth");
    // Secrets unavailable: nothing forwarded, the jti stays unspent.
    let r = gw.delete_new(&tok, None).await;
    r.assert_gateway_error(503, "secrets_unavailable", "2");
    let r = gw.delete_new(&tok, None).await;
    r.assert_gateway_error(503, "secrets_unavailable", "2");
    // A body error (step 4) comes before the jti is reserved at all.
    let r = gw.delete(&tok, None, b"{}").await;
    r.assert_gateway_error(400, "missing_parameter", "30");
    gw.stop().await;
}

#[tokio::test]
async fn a_full_replay_memory_refuses_new_single_use_tokens() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            single_use_growth(d);
            table(d, "auth").insert("replay_cache_size".into(), 2.into());
        })
        .await;
    for _ in 0..2 {
        assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    }
    let r = gw.delete_new(&w.token("growth"), None).await;
    r.assert_gateway_error(503, "overloaded", "2");
    // Plain bearer tokens on plain grants are unaffected.
    let ops = w.token("ops");
    for _ in 0..2 {
        assert_eq!(gw.delete_new(&ops, Some("sales-prod")).await.status, 204);
    }
    let m = gw.metrics().await;
    assert!(
        m.contains("batch_gateway_replay_rejections_total{kind=\"replay_memory_full\"} 1"),
        "{m}"
    );
    gw.stop().await;
}

fn secure_team(d: &mut toml::Table) {
    let teams = d.get_mut("teams").unwrap().as_array_mut().unwrap();
    let grant: toml::Table = toml::from_str(
        "project = \"marketing-prod\"\nactions = [\"campaigns.delete\"]\nrequire_bound_token = true",
    )
    .unwrap();
    let mut team = toml::Table::new();
    team.insert("name".into(), "secure".into());
    team.insert("grants".into(), toml::Value::Array(vec![grant.into()]));
    teams.push(team.into());
}

#[tokio::test]
async fn a_grant_requiring_bound_tokens_takes_only_fully_bound_single_use_ones() {
    let w = World::new().await;
    let gw = w.start_with(secure_team).await;
    let body = delete_body(&campaign_id());
    let bh = b64(&{
        use sha2::Digest;
        sha2::Sha256::digest(&body)
    });
    let bound = with(
        claims(ISS, "secure"),
        json!({"htm": "POST", "htu": DELETE, "bh": bh}),
    );
    for (drop, detail) in [
        ("bh", "bound_token_required"),
        ("jti", "bound_token_required"),
    ] {
        let tok = w.ed.sign(&with(bound.clone(), json!({ drop: null })));
        gw.delete(&tok, None, &body).await.assert_gateway_error(
            401,
            "token_binding_mismatch",
            "10",
        );
        assert_eq!(w.audit_records().pop().unwrap()["detail"], json!(detail));
    }
    let tok = w.ed.sign(&bound);
    assert_eq!(gw.delete(&tok, None, &body).await.status, 204);
    gw.delete(&tok, None, &body)
        .await
        .assert_gateway_error(401, "token_replayed", "10");
    let attempt = w
        .audit_records()
        .into_iter()
        .find(|r| r["phase"] == json!("attempt"))
        .unwrap();
    assert_eq!(attempt["caller"]["single_use"], json!(true));
    assert_eq!(w.batch().count(), 1);
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// RFC 8725 §3, item by item (where it applies to a verifier).
// ---------------------------------------------------------------------------

#[tokio::test]
async fn rfc8725_attacks_are_refused_before_anything_is_forwarded() {
    let w = World::new().await;
    let gw = w.start().await;
    let payload = claims(ISS, "growth").to_string();
    let attacker = SigningKey::generate(Algorithm::EdDSA);
    let attacker_jwk = jwk(&attacker, "evil");
    let cases: Vec<(&str, String, &str)> = vec![
        // §3.1 algorithm verification: none, and HMAC keyed with the public key.
        (
            "none",
            format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(payload.as_bytes())),
            "malformed",
        ),
        (
            "hs256 with the public key",
            {
                use hmac::Mac;
                let input = format!("{}.{}", b64(br#"{"alg":"HS256"}"#), b64(payload.as_bytes()));
                let mut m =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(w.ed.public_pem.as_bytes()).unwrap();
                m.update(input.as_bytes());
                format!("{input}.{}", b64(&m.finalize().into_bytes()))
            },
            "alg_not_allowed",
        ),
        // §3.1/§3.10: keys the token points at are never used.
        (
            "embedded jwk",
            sign_raw(
                &attacker,
                &json!({"alg": "EdDSA", "jwk": attacker_jwk}).to_string(),
                &payload,
            ),
            "bad_signature",
        ),
        (
            "jku",
            sign_raw(
                &attacker,
                &json!({"alg": "EdDSA", "jku": "https://evil.example/jwks"}).to_string(),
                &payload,
            ),
            "bad_signature",
        ),
        (
            "x5u",
            sign_raw(
                &attacker,
                &json!({"alg": "EdDSA", "x5u": "https://evil.example/cert"}).to_string(),
                &payload,
            ),
            "bad_signature",
        ),
        (
            "kid injection",
            sign_raw(
                &attacker,
                &json!({"alg": "EdDSA", "kid": "../../dev/null"}).to_string(),
                &payload,
            ),
            "bad_signature",
        ),
        // §3.3: nested and encrypted tokens.
        (
            "nested",
            sign_raw(&w.ed, r#"{"alg":"EdDSA","cty":"JWT"}"#, &payload),
            "nested_token",
        ),
        (
            "jwe header",
            sign_raw(&w.ed, r#"{"alg":"EdDSA","enc":"A256GCM"}"#, &payload),
            "encrypted_token",
        ),
        // §3.4: ECDSA "psychic signature" (r = s = 0) on the ES256 issuer.
        (
            "psychic es256",
            format!(
                "{}.{}.{}",
                b64(br#"{"alg":"ES256"}"#),
                b64(claims(ISS2, "growth").to_string().as_bytes()),
                b64(&[0u8; 64])
            ),
            "bad_signature",
        ),
        // §3.6: no compression.
        (
            "zip",
            sign_raw(&w.ed, r#"{"alg":"EdDSA","zip":"DEF"}"#, &payload),
            "encrypted_token",
        ),
        // §3.7: UTF-8 only.
        (
            "latin-1 payload",
            sign_bytes(&w.ed, br#"{"alg":"EdDSA"}"#, b"{\"iss\":\"\xe9\"}"),
            "malformed",
        ),
        // §3.8, §3.9: issuer and audience.
        (
            "unknown issuer",
            w.ed.sign(&claims("https://evil.example", "growth")),
            "issuer",
        ),
        (
            "wrong audience",
            w.ed.sign(&with(claims(ISS, "growth"), json!({"aud": "other"}))),
            "audience",
        ),
        // Unknown critical extensions.
        (
            "crit",
            sign_raw(
                &w.ed,
                r#"{"alg":"EdDSA","crit":["b64"],"b64":false}"#,
                &payload,
            ),
            "crit_unsupported",
        ),
    ];
    for (name, token, detail) in cases {
        let r = gw.delete_new(&token, None).await;
        assert_eq!(r.status, 401, "{name}: {r:?}");
        let rec = w.audit_records().pop().unwrap();
        assert_eq!(rec["detail"], json!(detail), "{name}");
        assert!(rec.get("caller").is_none(), "{name}");
    }
    assert_eq!(w.batch().count(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn rfc8725_explicit_typing_when_the_issuer_sets_typ() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            let auth = table(d, "auth");
            let issuers = auth.get_mut("issuers").unwrap().as_array_mut().unwrap();
            issuers[0]
                .as_table_mut()
                .unwrap()
                .insert("typ".into(), "at+jwt".into());
        })
        .await;
    let payload = claims(ISS, "growth").to_string();
    for (header, ok) in [
        (r#"{"alg":"EdDSA","typ":"at+jwt"}"#, true),
        (r#"{"alg":"EdDSA","typ":"application/at+JWT"}"#, true),
        (r#"{"alg":"EdDSA","typ":"JWT"}"#, false),
        (r#"{"alg":"EdDSA"}"#, false),
    ] {
        let r = gw
            .delete_new(&sign_raw(&w.ed, header, &payload), None)
            .await;
        assert_eq!(r.status == 204, ok, "{header}: {r:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_remembered_token_is_verified_again_when_the_key_set_changes_or_goes_stale() {
    let w = World::new().await;
    let idp = idp(&w).await;
    let key = SigningKey::generate(Algorithm::EdDSA);
    let other = SigningKey::generate(Algorithm::EdDSA);
    serve_keys(&idp, &[jwk(&key, "k1")]);
    let gw = w.start_with(use_jwks(&idp, 1, 2)).await;
    let full = || {
        gw.app
            .state()
            .authn
            .full_verifications
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let tok = sign_kid(&key, "k1", &claims(ISS, "growth"));
    let body = delete_body(&campaign_id());
    assert_eq!(gw.delete(&tok, None, &body).await.status, 204);
    assert_eq!(gw.delete(&tok, None, &body).await.status, 204);
    assert_eq!(full(), 1);
    // The IdP publishes a changed set: the remembered token is checked again.
    serve_keys(&idp, &[jwk(&key, "k1"), jwk(&other, "k2")]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(gw.delete(&tok, None, &body).await.status, 204);
    assert_eq!(full(), 2);
    // The IdP goes away past the stale bound: the remembered token fails closed.
    idp.force(503, &[], b"down");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    gw.delete(&tok, None, &body)
        .await
        .assert_gateway_error(401, "token_invalid", "10");
    gw.stop().await;
}
