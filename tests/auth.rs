//! Step 1: authentication, including what jsonwebtoken leaves to the caller
//! (claim JSON types, nbf, crit, size) and every pinned algorithm.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use batch_gateway::authn::{AuthFailure, Authenticator};
use jsonwebtoken::Algorithm;
use serde_json::json;
use support::*;

async fn detail(a: &Authenticator, token: &str) -> (AuthFailure, &'static str) {
    let e = a.verify(token, now()).await.unwrap_err();
    (e.kind, e.detail)
}

#[tokio::test]
async fn every_pinned_algorithm_verifies_its_own_tokens_and_no_other() {
    let w = World::without_batch();
    let algs = [
        Algorithm::EdDSA,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::RS256,
        Algorithm::PS256,
    ];
    for alg in algs {
        let key = SigningKey::generate(alg);
        let a = authenticator(&w, &key, &[alg]);
        let p = a
            .verify(&key.sign(&claims(ISS, "growth")), now())
            .await
            .unwrap();
        assert_eq!(
            (p.sub.as_str(), p.teams.clone()),
            ("svc-cleaner", vec!["growth".to_string()])
        );
        // A stranger's key of the same algorithm does not verify.
        let stranger = SigningKey::generate(alg);
        assert_eq!(
            detail(&a, &stranger.sign(&claims(ISS, "growth"))).await.1,
            "bad_signature",
            "{alg:?}"
        );
    }
}

#[tokio::test]
async fn rs256_key_cannot_be_used_with_ps256_when_only_rs256_is_pinned() {
    let w = World::without_batch();
    let key = SigningKey::generate(Algorithm::RS256);
    let a = authenticator(&w, &key, &[Algorithm::RS256]);
    let mut ps = key.clone();
    ps.alg = Algorithm::PS256;
    assert_eq!(
        detail(&a, &ps.sign(&claims(ISS, "growth"))).await.1,
        "alg_not_allowed"
    );
}

#[tokio::test]
async fn wrong_json_types_of_aud_and_iss_are_refused_not_skipped() {
    // jsonwebtoken skips aud/iss checks on wrong types unless required:
    // the gateway checks types itself.
    let w = World::without_batch();
    let a = authenticator(&w, &w.ed, &[Algorithm::EdDSA]);
    let c = claims(ISS, "growth");
    for (changes, want) in [
        (json!({"aud": 123}), "aud_type"),
        (json!({"aud": {"x": 1}}), "aud_type"),
        (json!({"aud": []}), "aud_type"),
        (json!({"aud": [1, "batch-gateway"]}), "aud_type"),
        (json!({"iss": [ISS]}), "iss_type"),
        (json!({"sub": 7}), "sub_type"),
        (json!({"exp": "soon"}), "exp_type"),
        (json!({"exp": 1.5e12}), "exp_type"),
        (json!({"nbf": "now"}), "nbf_type"),
        (json!({"iat": true}), "iat_type"),
        (json!({"jti": 5}), "jti_type"),
        (json!({"sub": null}), "missing_claim"),
        (json!({"aud": null}), "missing_claim"),
        (json!({"exp": null}), "missing_claim"),
        (json!({"team": null}), "team_claim"),
        (json!({"team": ""}), "team_claim"),
        (json!({"team": ["growth", 3]}), "team_claim"),
    ] {
        let tok = w.ed.sign(&with(c.clone(), changes.clone()));
        assert_eq!(
            detail(&a, &tok).await,
            (AuthFailure::Invalid, want),
            "{changes}"
        );
    }
}

/// The audience is checked by the gateway itself (jsonwebtoken only checks
/// the signature): one of the token's audiences must be one of ours, in a
/// string or anywhere in an array, compared exactly.
#[tokio::test]
async fn an_audience_must_be_ours_exactly_in_a_string_or_an_array() {
    let w = World::without_batch();
    let a = authenticator(&w, &w.ed, &[Algorithm::EdDSA]);
    let c = claims(ISS, "growth");
    for aud in [json!("batch-gateway"), json!(["other", "batch-gateway"])] {
        let tok = w.ed.sign(&with(c.clone(), json!({ "aud": aud })));
        assert!(a.verify(&tok, now()).await.is_ok(), "{aud}");
    }
    for aud in [
        json!("other"),
        json!(["other", "more"]),
        json!("Batch-Gateway"),
        json!("batch-gateway "),
        json!(["batch-gateway-x"]),
    ] {
        let tok = w.ed.sign(&with(c.clone(), json!({ "aud": aud })));
        assert_eq!(
            detail(&a, &tok).await,
            (AuthFailure::Invalid, "audience"),
            "{aud}"
        );
    }
}

#[tokio::test]
async fn nbf_iat_exp_and_lifetime_are_checked_with_leeway() {
    let w = World::without_batch();
    let a = authenticator(&w, &w.ed, &[Algorithm::EdDSA]);
    let n = now();
    let c = claims(ISS, "growth");
    let cases = [
        (
            json!({"nbf": n + 300}),
            Some((AuthFailure::Invalid, "nbf_future")),
        ),
        (json!({"nbf": n + 20}), None),
        (
            json!({"iat": n + 300, "nbf": null, "exp": n + 600}),
            Some((AuthFailure::Invalid, "iat_future")),
        ),
        (
            json!({"iat": n - 400, "nbf": null, "exp": n - 100}),
            Some((AuthFailure::Expired, "expired")),
        ),
        (json!({"iat": n - 290, "exp": n - 20}), None),
        (
            json!({"exp": n + 3600}),
            Some((AuthFailure::Invalid, "lifetime")),
        ),
        (
            json!({"iat": null, "exp": n + 86400}),
            Some((AuthFailure::Invalid, "lifetime")),
        ),
    ];
    for (changes, want) in cases {
        let tok = w.ed.sign(&with(c.clone(), changes.clone()));
        match want {
            None => assert!(a.verify(&tok, n).await.is_ok(), "{changes}"),
            Some(w) => assert_eq!(detail(&a, &tok).await, w, "{changes}"),
        }
    }
}

#[tokio::test]
async fn crit_duplicate_names_and_oversized_tokens_are_refused() {
    let w = World::without_batch();
    let a = authenticator(&w, &w.ed, &[Algorithm::EdDSA]);
    let payload = claims(ISS, "growth").to_string();
    let crit = sign_raw(&w.ed, r#"{"alg":"EdDSA","crit":["exp"],"exp":1}"#, &payload);
    assert_eq!(detail(&a, &crit).await.1, "crit_unsupported");
    let dup_header = sign_raw(&w.ed, r#"{"alg":"EdDSA","alg":"EdDSA"}"#, &payload);
    assert_eq!(detail(&a, &dup_header).await.1, "duplicate_member");
    let dup_payload = format!("{},\"team\":\"ops\"}}", payload.trim_end_matches('}'));
    let tok = sign_raw(&w.ed, r#"{"alg":"EdDSA"}"#, &dup_payload);
    assert_eq!(detail(&a, &tok).await.1, "duplicate_member");
    // Properly signed but over 8 KiB: refused before decoding.
    let big = w.ed.sign(&with(
        claims(ISS, "growth"),
        json!({"pad": "x".repeat(9000)}),
    ));
    assert_eq!(detail(&a, &big).await.1, "too_large");
    // Unsigned, HMAC-confused and JWE-shaped tokens.
    let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(payload.as_bytes()));
    assert_eq!(detail(&a, &none).await.1, "malformed");
    let hs = sign_raw(
        &SigningKey {
            alg: Algorithm::EdDSA,
            ..w.ed.clone()
        },
        r#"{"alg":"HS256"}"#,
        &payload,
    );
    assert_eq!(detail(&a, &hs).await.1, "alg_not_allowed");
    assert_eq!(detail(&a, "a.b.c.d.e").await.1, "malformed");
}

#[tokio::test]
async fn a_team_claim_may_be_an_array_of_teams() {
    let w = World::without_batch();
    let a = authenticator(&w, &w.ed, &[Algorithm::EdDSA]);
    let tok =
        w.ed.sign(&with(claims(ISS, "x"), json!({"team": ["growth", "ops"]})));
    assert_eq!(
        a.verify(&tok, now()).await.unwrap().teams,
        vec!["growth", "ops"]
    );
}

#[tokio::test]
async fn an_expired_token_is_rejected_before_any_upstream_call_and_audited() {
    let w = World::new().await;
    let gw = w.start().await;
    let n = now();
    let tok = w.ed.sign(&with(
        claims(ISS, "growth"),
        json!({"iat": n - 400, "nbf": n - 400, "exp": n - 100}),
    ));
    let r = gw.delete_new(&tok, None).await;
    r.assert_gateway_error(401, "token_expired", "10");
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(w.batch().count(), 0);
    let rec = &w.audit_records()[0];
    assert_eq!(rec["phase"], json!("denied"));
    assert_eq!(rec["reason"], json!("token_expired"));
    assert_eq!(rec["unverified"]["iss"], json!(ISS));
    assert!(rec.get("caller").is_none());
    gw.stop().await;
}

#[tokio::test]
async fn a_forged_signature_gives_no_identity_and_a_precise_detail() {
    let w = World::new().await;
    let gw = w.start().await;
    let stranger = SigningKey::generate(Algorithm::EdDSA);
    let r = gw
        .delete(&stranger.sign(&claims(ISS, "growth")), None, b"{}")
        .await;
    r.assert_gateway_error(401, "token_invalid", "10");
    let rec = &w.audit_records()[0];
    assert_eq!(rec["detail"], json!("bad_signature"));
    assert!(rec.get("caller").is_none());
    gw.stop().await;
}

#[tokio::test]
async fn missing_or_non_bearer_credentials_get_a_plain_challenge() {
    let w = World::new().await;
    let gw = w.start().await;
    for auth in [
        None,
        Some("Basic dXNlcjpw"),
        Some("Bearer "),
        Some("Bearer"),
    ] {
        let mut hdrs = vec![];
        if let Some(a) = auth {
            hdrs.push(("Authorization".to_string(), a.to_string()));
        }
        let r = gw
            .request("POST", DELETE, &hdrs, &delete_body(&campaign_id()))
            .await;
        r.assert_gateway_error(401, "token_missing", "10");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"batch-gateway\"")
        );
    }
    assert_eq!(w.batch().count(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn a_reused_token_is_verified_once_until_it_expires() {
    let w = World::without_batch();
    let a = authenticator(&w, &w.ed, &[Algorithm::EdDSA]);
    let full = || {
        a.full_verifications
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let tok = w.ed.sign(&claims(ISS, "growth"));
    let first = a.verify(&tok, now()).await.unwrap();
    let second = a.verify(&tok, now()).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(full(), 1, "the second use cost a signature check");
    // A changed token is a different key: verified (and refused) in full.
    let mut bad = tok.clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    assert!(
        a.verify(std::str::from_utf8(&bad).unwrap(), now())
            .await
            .is_err()
    );
    assert_eq!(full(), 2);
    // Past its exp (+ leeway) a remembered token is refused like any other.
    let e = a.verify(&tok, now() + 3600).await.unwrap_err();
    assert_eq!((e.kind, e.detail), (AuthFailure::Expired, "expired"));
    // A request-bound token is single-use: it is not remembered.
    let bound = w.ed.sign(&with(
        claims(ISS, "growth"),
        json!({"htm": "POST", "jti": "b-1"}),
    ));
    let before = full();
    a.verify(&bound, now()).await.unwrap();
    a.verify(&bound, now()).await.unwrap();
    assert_eq!(full(), before + 2, "checked in full both times");
}
