//! Callers keep the identity their platform gives them: Kubernetes projected
//! service-account tokens, SPIFFE JWT-SVIDs, any OIDC provider through its
//! discovery document, mapped to teams by claim (a JSON Pointer) or by
//! `[[teams.members]]`. Tokens are shaped claim for claim like the real
//! ones; the key endpoints are real HTTPS servers on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::idp::FakeIdp;
use support::*;

const K8S: &str = "https://kubernetes.default.svc.cluster.local";
const SPIRE: &str = "https://oidc-discovery.example.org";
const JWKS_PATH: &str = "/openid/v1/jwks";

async fn idp(w: &World) -> FakeIdp {
    let (cert, key) = w.ca.server(&["127.0.0.1"], false);
    FakeIdp::start(&cert, &key).await
}

fn push_issuer(d: &mut toml::Table, issuer: Value) {
    let iss: toml::Table = toml::Table::try_from(issuer).unwrap();
    table(d, "auth")
        .get_mut("issuers")
        .unwrap()
        .as_array_mut()
        .unwrap()
        .push(toml::Value::Table(iss));
}

/// `teams[team]` (0 growth, 1 ops, 2 support) gets a member entry.
fn push_member(d: &mut toml::Table, team: usize, issuer: &str, subject: &str) {
    let teams = d.get_mut("teams").unwrap().as_array_mut().unwrap();
    let t = teams[team].as_table_mut().unwrap();
    let members = t
        .entry("members")
        .or_insert_with(|| toml::Value::Array(Vec::new()))
        .as_array_mut()
        .unwrap();
    let mut m = toml::Table::new();
    m.insert("issuer".into(), issuer.into());
    m.insert("subject".into(), subject.into());
    members.push(toml::Value::Table(m));
}

/// The cluster's issuer as the Helm chart configures it: keys from the
/// API server's `/openid/v1/jwks`, fetched with the gateway's own
/// service-account token, one hour of lifetime, the namespace as team.
fn kubernetes_issuer(api: &FakeIdp, team_claim: Option<&str>) -> Value {
    let mut iss = json!({
        "issuer": K8S,
        "algorithms": ["RS256", "ES256"],
        "jwks_url": api.url(JWKS_PATH),
        "jwks_ca_file": "tls/ca.pem",
        "jwks_bearer_token_file": "sa/token",
        "jwks_refresh_s": 1,
        "jwks_min_refetch_s": 1,
        "max_token_lifetime_s": 3600,
    });
    if let Some(c) = team_claim {
        iss["team_claim"] = c.into();
    }
    iss
}

/// A projected service-account token's claims, as the API server issues
/// them (the Kubernetes docs' example, audience `batch-gateway`).
fn k8s_claims(ns: &str, sa: &str, lifetime_s: i64) -> Value {
    let n = now();
    json!({
        "aud": ["batch-gateway"],
        "exp": n + lifetime_s,
        "iat": n,
        "iss": K8S,
        "jti": uuid::Uuid::new_v4().to_string(),
        "kubernetes.io": {
            "namespace": ns,
            "node": {"name": "worker-1", "uid": "58456cb0-dd00-45ed-b797-5578fdceaced"},
            "pod": {"name": format!("{sa}-69cbfb9798-jv9gn"), "uid": "778a530c-b3f4-47c0-9cd5-ab018fb64f33"},
            "serviceaccount": {"name": sa, "uid": "a087d5a0-e1dd-43ec-93ac-f13d89cd13af"},
            "warnafter": n + lifetime_s - 600
        },
        "nbf": n,
        "sub": format!("system:serviceaccount:{ns}:{sa}")
    })
}

/// Signed as the API server signs: `{"alg":"RS256","kid":…}`, no `typ`.
fn k8s_sign(key: &SigningKey, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": format!("{:?}", key.alg), "kid": kid}).to_string();
    sign_raw(key, &header, &claims.to_string())
}

fn jwk_for(key: &SigningKey, kid: &str, key_use: &str) -> Value {
    let mut j = jwk(key, kid);
    j["use"] = key_use.into();
    j
}

fn last_record(w: &World) -> Value {
    w.audit_records().pop().unwrap()
}

fn detail_of_last(w: &World) -> String {
    last_record(w)["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

struct Cluster {
    w: World,
    api: FakeIdp,
    key: SigningKey,
}

/// A cluster whose API server publishes `key` as `k-1` and demands the
/// gateway's service-account token `gw-token-1`.
async fn cluster() -> Cluster {
    let w = World::new().await;
    let api = idp(&w).await;
    let key = SigningKey::generate(Algorithm::RS256);
    api.publish(JWKS_PATH, &json!({"keys": [jwk_for(&key, "k-1", "sig")]}));
    api.require_bearer("gw-token-1");
    w.write("sa/token", "gw-token-1\n");
    Cluster { w, api, key }
}

#[tokio::test]
async fn kubernetes_tokens_verify_with_keys_fetched_with_the_gateways_own_rotating_token() {
    let Cluster { w, api, key } = cluster().await;
    let issuer = kubernetes_issuer(&api, Some("/kubernetes.io/namespace"));
    let gw = w.start_with(|d| push_issuer(d, issuer)).await;

    // One hour, exactly as the API server issues it: the namespace is the team.
    let token = k8s_sign(&key, "k-1", &k8s_claims("growth", "cleaner", 3600));
    let r = gw.delete_new(&token, None).await;
    assert_eq!(r.status, 204, "{:?}", w.audit_records());
    let rec = last_record(&w);
    assert_eq!(rec["caller"]["iss"], K8S);
    assert_eq!(rec["caller"]["sub"], "system:serviceaccount:growth:cleaner");
    assert_eq!(rec["caller"]["team"], "growth");
    // The key set was asked for with the gateway's token, and only that.
    let auths = api.authorizations(JWKS_PATH);
    assert!(!auths.is_empty());
    assert!(
        auths
            .iter()
            .all(|a| a.as_deref() == Some("Bearer gw-token-1"))
    );

    // The issuer's own cap: over an hour is refused; and it is this
    // issuer's only: an hour-long token of the company IdP is not.
    let long = k8s_sign(&key, "k-1", &k8s_claims("growth", "cleaner", 3700));
    assert_eq!(gw.delete_new(&long, None).await.status, 401);
    assert_eq!(detail_of_last(&w), "lifetime");
    let idp_hour =
        w.ed.sign(&with(claims(ISS, "growth"), json!({"exp": now() + 3600})));
    assert_eq!(gw.delete_new(&idp_hour, None).await.status, 401);
    assert_eq!(detail_of_last(&w), "lifetime");
    // A namespace that is no team holds no grant.
    let other = k8s_sign(&key, "k-1", &k8s_claims("payments", "cleaner", 3600));
    assert_eq!(gw.delete_new(&other, None).await.status, 403);

    // The kubelet rotates the gateway's token; the API server now wants the
    // new one, and the cluster rotates its signing key at the same time.
    let key2 = SigningKey::generate(Algorithm::ES256);
    w.write("sa/token", "gw-token-2\n");
    api.require_bearer("gw-token-2");
    api.publish(JWKS_PATH, &json!({"keys": [jwk_for(&key2, "k-2", "sig")]}));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let rotated = k8s_sign(&key2, "k-2", &k8s_claims("growth", "cleaner", 3600));
    assert_eq!(gw.delete_new(&rotated, None).await.status, 204);
    assert_eq!(
        api.authorizations(JWKS_PATH).last().unwrap().as_deref(),
        Some("Bearer gw-token-2")
    );
    // The old key left the set: it no longer verifies.
    assert_eq!(gw.delete_new(&token, None).await.status, 401);

    // The API server stops accepting the gateway's token: the last good set
    // stays in use, and /readyz says what is wrong without the token.
    api.require_bearer("gw-token-3");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let ready = gw.admin_get("/readyz").await;
    let body: Value = serde_json::from_slice(&ready.body).unwrap();
    assert_eq!(ready.status, 200, "{body}");
    assert_eq!(body["checks"]["issuers"][K8S], "stale", "{body}");
    let why = body["checks"]["issuer_errors"][K8S].as_str().unwrap();
    assert!(why.contains("401"), "{why}");
    assert!(!ready.body.windows(10).any(|w| w == b"gw-token-2"));
    assert_eq!(gw.delete_new(&rotated, None).await.status, 204);
}

#[tokio::test]
async fn forged_kubernetes_tokens_are_refused_and_nothing_is_sent() {
    let Cluster { w, api, key } = cluster().await;
    let issuer = kubernetes_issuer(&api, Some("/kubernetes.io/namespace"));
    let gw = w.start_with(|d| push_issuer(d, issuer)).await;
    let good = k8s_claims("growth", "cleaner", 3600);
    assert_eq!(
        gw.delete_new(&k8s_sign(&key, "k-1", &good), None)
            .await
            .status,
        204
    );
    let sent = w.batch().count();

    let attacker = SigningKey::generate(Algorithm::RS256);
    let public = key.public_pem.clone();
    let hs256 = {
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","kid":"k-1"}"#),
            b64(good.to_string().as_bytes())
        );
        let k = jsonwebtoken::EncodingKey::from_secret(public.as_bytes());
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k, Algorithm::HS256).unwrap();
        format!("{input}.{sig}")
    };
    let embedded = {
        let header = json!({"alg": "RS256", "kid": "k-1", "jwk": jwk(&attacker, "k-1")});
        sign_raw(&attacker, &header.to_string(), &good.to_string())
    };
    let tampered = {
        let t = k8s_sign(&key, "k-1", &k8s_claims("payments", "cleaner", 3600));
        let parts: Vec<&str> = t.split('.').collect();
        let swapped = good.to_string().replace("growth", "ops");
        format!("{}.{}.{}", parts[0], b64(swapped.as_bytes()), parts[2])
    };
    let forgeries: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","kid":"k-1"}"#),
                b64(good.to_string().as_bytes())
            ),
        ),
        ("HS256 keyed with the public key", hs256),
        (
            "an attacker's key under the real kid",
            k8s_sign(&attacker, "k-1", &good),
        ),
        ("the attacker's key embedded as jwk", embedded),
        ("namespace changed after signing", tampered),
        (
            "the API server's own audience",
            k8s_sign(&key, "k-1", &with(good.clone(), json!({"aud": [K8S]}))),
        ),
        (
            "expired",
            k8s_sign(
                &key,
                "k-1",
                &with(
                    good.clone(),
                    json!({"iat": now() - 4000, "nbf": now() - 4000, "exp": now() - 400}),
                ),
            ),
        ),
        (
            "the same claims from the company IdP",
            w.ed.sign(&with(good.clone(), json!({"iss": ISS}))),
        ),
    ];
    for (what, token) in forgeries {
        let r = gw.delete_new(&token, None).await;
        assert_eq!(r.status, 401, "{what}: {:?}", last_record(&w));
        assert_eq!(last_record(&w)["decision"], "deny", "{what}");
    }
    assert_eq!(w.batch().count(), sent, "a forgery reached Batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_map_subjects_to_teams_never_across_issuers_and_explain_says_why() {
    let Cluster { w, api, key } = cluster().await;
    // The cluster's tokens carry no team claim at all: membership decides.
    let issuer = kubernetes_issuer(&api, None);
    let gw = w
        .start_with(|d| {
            push_issuer(d, issuer);
            push_member(d, 0, K8S, "system:serviceaccount:growth:*");
            push_member(d, 1, K8S, "system:serviceaccount:platform:janitor");
            push_member(d, 2, ISS, "svc-reporting");
        })
        .await;
    let k8s = |ns: &str, sa: &str| k8s_sign(&key, "k-1", &k8s_claims(ns, sa, 3600));

    assert_eq!(
        gw.delete_new(&k8s("growth", "cleaner"), None).await.status,
        204
    );
    assert_eq!(last_record(&w)["caller"]["team"], "growth");
    // growth holds marketing-prod only.
    assert_eq!(
        gw.delete_new(&k8s("growth", "cleaner"), Some("sales-prod"))
            .await
            .status,
        403
    );
    // An exact subject; ops may delete on sales-prod.
    assert_eq!(
        gw.delete_new(&k8s("platform", "janitor"), Some("sales-prod"))
            .await
            .status,
        204
    );
    assert_eq!(last_record(&w)["caller"]["team"], "ops");
    // Exact means exact; a prefix is a prefix of the whole subject.
    for (ns, sa) in [
        ("platform", "janitor2"),
        ("growth-evil", "x"),
        ("default", "default"),
    ] {
        assert_eq!(
            gw.delete_new(&k8s(ns, sa), None).await.status,
            401,
            "{ns}:{sa}"
        );
        assert_eq!(detail_of_last(&w), "team_claim");
    }
    // The same subject from another issuer is nobody's member.
    let copy = w.ed.sign(&with(
        claims(ISS, "x"),
        json!({"team": null, "sub": "system:serviceaccount:growth:cleaner"}),
    ));
    assert_eq!(gw.delete_new(&copy, None).await.status, 401);
    assert_eq!(detail_of_last(&w), "team_claim");
    // A member entry adds to what the team claim says.
    let both = w.ed.sign(&with(
        claims(ISS, "growth"),
        json!({"sub": "svc-reporting"}),
    ));
    assert_eq!(gw.delete_new(&both, Some("sales-prod")).await.status, 204);
    assert_eq!(
        last_record(&w)["caller"]["team"],
        json!(["growth", "support"])
    );
    assert_eq!(
        gw.delete_new(&both, Some("marketing-prod")).await.status,
        204
    );

    // policy explain says which entry or claim made the caller a member.
    let config = w.path("gateway.toml");
    let explain = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_batch-gateway"))
            .args(["policy", "explain", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (code, out) = explain(&["--token", &k8s("growth", "cleaner")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "team growth: teams[0].members[0] (issuer https://kubernetes.default.svc.cluster.local, subject system:serviceaccount:growth:*) matches sub system:serviceaccount:growth:cleaner"
        ),
        "{out}"
    );
    let (code, out) = explain(&["--token", &both, "--project", "sales-prod"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("team growth: named by the token's team claim team"),
        "{out}"
    );
    assert!(out.contains("team support: teams[2].members[0]"), "{out}");
    assert!(
        out.contains("granted by teams[2].grants[0] (team support)"),
        "{out}"
    );
    let (code, out) = explain(&[
        "--issuer",
        K8S,
        "--subject",
        "system:serviceaccount:platform:janitor",
        "--project",
        "sales-prod",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("team ops: teams[1].members[0]"), "{out}");
    let (code, out) = explain(&[
        "--issuer",
        ISS,
        "--subject",
        "system:serviceaccount:platform:janitor",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("teams: none"), "{out}");
}

#[tokio::test]
async fn team_claims_are_json_pointers_per_issuer() {
    let w = World::new().await;
    let api = idp(&w).await;
    let key = SigningKey::generate(Algorithm::ES256);
    api.publish("/keys", &json!({"keys": [jwk_for(&key, "e1", "sig")]}));
    // Keycloak's group mapper: `groups`, an array; a nested claim; a
    // claim name that is itself a URL (Auth0's namespaced claims).
    let gw = w
        .start_with(|d| {
            for (n, claim) in [("groups", "/groups"), ("nested", "/org/teams/0"), ("auth0", "https://batch-gateway.example/team")] {
                push_issuer(
                    d,
                    json!({"issuer": format!("https://{n}.test"), "algorithms": ["ES256"],
                        "jwks_url": api.url("/keys"), "jwks_ca_file": "tls/ca.pem", "team_claim": claim}),
                );
            }
        })
        .await;
    let tok = |iss: &str, extra: Value| {
        let c = with(claims(iss, "ignored"), json!({"team": null}));
        sign_kid(&key, "e1", &with(c, extra))
    };
    let cases = [
        (
            "https://groups.test",
            json!({"groups": ["nobody", "growth"]}),
            204,
        ),
        ("https://groups.test", json!({"team": "growth"}), 401),
        ("https://groups.test", json!({"groups": []}), 401),
        ("https://groups.test", json!({"groups": [1]}), 401),
        (
            "https://nested.test",
            json!({"org": {"teams": ["growth", "ops"]}}),
            204,
        ),
        (
            "https://nested.test",
            json!({"org": {"teams": [{"name": "growth"}]}}),
            401,
        ),
        ("https://nested.test", json!({"org": "growth"}), 401),
        (
            "https://auth0.test",
            json!({"https://batch-gateway.example/team": "growth"}),
            204,
        ),
        ("https://auth0.test", json!({"team": "growth"}), 401),
    ];
    for (iss, extra, want) in cases {
        let r = gw.delete_new(&tok(iss, extra.clone()), None).await;
        assert_eq!(r.status, want, "{iss} {extra}: {:?}", last_record(&w));
        if want == 401 {
            assert_eq!(detail_of_last(&w), "team_claim", "{iss} {extra}");
        }
    }
    // The global claim still applies to the issuers without their own.
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
}

/// A SPIFFE bundle as a bundle endpoint serves it (SPIFFE Trust Domain
/// and Bundle §4): X.509 authorities (`x509-svid`, with `x5c`) and JWT
/// authorities (`jwt-svid`, with a `kid`).
fn spiffe_bundle(x509: &SigningKey, x509_kid: Option<&str>, jwt: &SigningKey) -> Value {
    let kp = rcgen::KeyPair::from_pem(&x509.private_pem).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&kp).unwrap();
    let mut x = jwk_for(x509, "unused", "x509-svid");
    match x509_kid {
        Some(k) => x["kid"] = k.into(),
        None => {
            x.as_object_mut().unwrap().remove("kid");
        }
    }
    x.as_object_mut().unwrap().remove("alg");
    use base64::Engine;
    x["x5c"] = json!([base64::engine::general_purpose::STANDARD.encode(cert.der())]);
    let mut j = jwk_for(jwt, "jwt-authority-1", "jwt-svid");
    j.as_object_mut().unwrap().remove("alg");
    json!({"keys": [x, j], "spiffe_sequence": 7, "spiffe_refresh_hint": 300})
}

/// A JWT-SVID as SPIRE mints it (`jwt_issuer` set on the server).
fn svid(key: &SigningKey, kid: Option<&str>, typ: Option<&str>, spiffe_id: &str) -> String {
    let mut header = json!({"alg": "ES256"});
    if let Some(k) = kid {
        header["kid"] = k.into();
    }
    if let Some(t) = typ {
        header["typ"] = t.into();
    }
    let n = now();
    let claims =
        json!({"aud": ["batch-gateway"], "exp": n + 300, "iat": n, "iss": SPIRE, "sub": spiffe_id});
    sign_raw(key, &header.to_string(), &claims.to_string())
}

#[tokio::test]
async fn spiffe_jwt_svids_verify_only_with_the_bundles_jwt_authorities() {
    let w = World::new().await;
    let bundle_endpoint = idp(&w).await;
    let x509 = SigningKey::generate(Algorithm::ES256);
    let jwt = SigningKey::generate(Algorithm::ES256);
    bundle_endpoint.publish("/", &spiffe_bundle(&x509, None, &jwt));
    let url = bundle_endpoint.url("/");
    let gw = w
        .start_with(|d| {
            push_issuer(
                d,
                json!({"issuer": SPIRE, "algorithms": ["ES256"], "jwks_url": url,
                    "jwks_ca_file": "tls/ca.pem", "jwks_refresh_s": 1, "jwks_min_refetch_s": 1,
                    "typ": ["JWT", "JOSE"]}),
            );
            push_member(d, 0, SPIRE, "spiffe://example.org/ns/growth/*");
        })
        .await;
    let id = "spiffe://example.org/ns/growth/sa/cleaner";
    let kid = Some("jwt-authority-1");
    for typ in [Some("JWT"), Some("JOSE"), Some("jose")] {
        let r = gw.delete_new(&svid(&jwt, kid, typ, id), None).await;
        assert_eq!(r.status, 204, "{typ:?}: {:?}", last_record(&w));
    }
    assert_eq!(last_record(&w)["caller"]["sub"], id);
    assert_eq!(last_record(&w)["caller"]["team"], "growth");
    for (what, token) in [
        ("typ at+jwt", svid(&jwt, kid, Some("at+jwt"), id)),
        ("no typ", svid(&jwt, kid, None, id)),
        (
            "another trust domain",
            svid(
                &jwt,
                kid,
                Some("JWT"),
                "spiffe://evil.org/ns/growth/sa/cleaner",
            ),
        ),
        (
            "the X.509 authority's key, no kid",
            svid(&x509, None, Some("JWT"), id),
        ),
        (
            "the X.509 authority's key, the JWT kid",
            svid(&x509, kid, Some("JWT"), id),
        ),
    ] {
        assert_eq!(gw.delete_new(&token, None).await.status, 401, "{what}");
    }
    // Even when the bundle gives the X.509 authority a kid, it signs nothing.
    bundle_endpoint.publish("/", &spiffe_bundle(&x509, Some("x509-authority"), &jwt));
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let named = svid(&x509, Some("x509-authority"), Some("JWT"), id);
    assert_eq!(gw.delete_new(&named, None).await.status, 401);
    assert_eq!(detail_of_last(&w), "unknown_kid");
    assert_eq!(
        gw.delete_new(&svid(&jwt, kid, Some("JWT"), id), None)
            .await
            .status,
        204
    );
}

fn discovery_doc(issuer: &str, jwks_uri: &str) -> Value {
    // What SPIRE's OIDC discovery provider, Keycloak or Okta publish,
    // reduced to the members a relying party reads plus a few others.
    json!({
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "ES384"]
    })
}

const WELL_KNOWN: &str = "/.well-known/openid-configuration";

#[tokio::test]
async fn discovery_takes_jwks_uri_from_a_document_naming_the_same_issuer_only() {
    let w = World::new().await;
    let a = idp(&w).await;
    let b = idp(&w).await;
    let key = SigningKey::generate(Algorithm::ES256);
    let keys = json!({"keys": [jwk_for(&key, "d1", "sig")]});
    // good: document and keys on one host, bearer demanded for both.
    a.publish(
        &format!("/good{WELL_KNOWN}"),
        &discovery_doc("https://good.test", &a.url("/good/keys")),
    );
    a.publish("/good/keys", &keys);
    // elsewhere: the keys on another host, which must not get the bearer.
    a.publish(
        &format!("/elsewhere{WELL_KNOWN}"),
        &discovery_doc("https://elsewhere.test", &b.url("/keys")),
    );
    b.publish("/keys", &keys);
    // mismatch: the document vouches for another issuer.
    a.publish(
        &format!("/mismatch{WELL_KNOWN}"),
        &discovery_doc("https://evil.test", &a.url("/good/keys")),
    );
    // redirect: a 302 to a valid document, never followed.
    a.publish(
        &format!("/target{WELL_KNOWN}"),
        &discovery_doc("https://redirect.test", &a.url("/good/keys")),
    );
    a.publish_raw(
        &format!("/redirect{WELL_KNOWN}"),
        302,
        &[("location", &a.url(&format!("/target{WELL_KNOWN}")))],
        b"",
    );
    // huge: a document past the size cap.
    let mut huge = discovery_doc("https://huge.test", &a.url("/good/keys"));
    huge["padding"] = "x".repeat(100 * 1024).into();
    a.publish(&format!("/huge{WELL_KNOWN}"), &huge);
    // plain: a jwks_uri over http.
    a.publish(
        &format!("/plain{WELL_KNOWN}"),
        &discovery_doc(
            "https://plain.test",
            &format!("http://{}/good/keys", a.addr),
        ),
    );
    a.require_bearer("gw-token");
    w.write("sa/token", "gw-token");

    let names = ["good", "elsewhere", "mismatch", "redirect", "huge", "plain"];
    let urls: Vec<String> = names
        .iter()
        .map(|n| a.url(&format!("/{n}{WELL_KNOWN}")))
        .collect();
    let gw = w
        .start_with(|d| {
            for (n, url) in names.iter().zip(&urls) {
                push_issuer(
                    d,
                    json!({"issuer": format!("https://{n}.test"), "algorithms": ["ES256"],
                        "discovery_url": url, "jwks_ca_file": "tls/ca.pem",
                        "jwks_bearer_token_file": "sa/token",
                        "jwks_refresh_s": 1, "jwks_min_refetch_s": 1}),
                );
            }
        })
        .await;
    let tok = |n: &str| sign_kid(&key, "d1", &claims(&format!("https://{n}.test"), "growth"));
    assert_eq!(
        gw.delete_new(&tok("good"), None).await.status,
        204,
        "{:?}",
        last_record(&w)
    );
    assert_eq!(gw.delete_new(&tok("elsewhere"), None).await.status, 204);
    assert!(
        b.authorizations("/keys").iter().all(Option::is_none),
        "the bearer token went to a host only a document named"
    );
    assert!(
        a.authorizations("/good/keys")
            .iter()
            .all(|h| h.as_deref() == Some("Bearer gw-token"))
    );
    let body: Value = serde_json::from_slice(&gw.admin_get("/readyz").await.body).unwrap();
    for (n, reason) in [
        ("mismatch", "another issuer (\"https://evil.test\")"),
        ("redirect", "302, a redirect"),
        ("huge", "larger than"),
        ("plain", "https jwks_uri"),
    ] {
        assert_eq!(gw.delete_new(&tok(n), None).await.status, 401, "{n}");
        assert_eq!(detail_of_last(&w), "jwks_unavailable", "{n}");
        let iss = format!("https://{n}.test");
        assert_eq!(
            body["checks"]["issuers"][&iss], "unavailable",
            "{n}: {body}"
        );
        let why = body["checks"]["issuer_errors"][&iss]
            .as_str()
            .unwrap_or_default();
        assert!(why.contains(reason), "{n}: {why}");
    }
    assert_eq!(body["checks"]["issuers"]["https://good.test"], "ok");
    assert!(
        body["checks"]["issuer_errors"]
            .get("https://good.test")
            .is_none()
    );
    // A redirect is never followed: only the first document was asked for.
    assert!(
        !a.authorizations(&format!("/redirect{WELL_KNOWN}"))
            .is_empty()
    );
    assert!(
        a.authorizations(&format!("/target{WELL_KNOWN}")).is_empty(),
        "a redirect was followed"
    );

    // A document that turns to another issuer drops the keys it led to,
    // at the next refresh: no stale grace for a changed identity.
    a.publish(
        &format!("/good{WELL_KNOWN}"),
        &discovery_doc("https://evil.test", &a.url("/good/keys")),
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(gw.delete_new(&tok("good"), None).await.status, 401);
    assert_eq!(detail_of_last(&w), "jwks_unavailable");
}

#[tokio::test]
async fn kubernetes_discovery_is_read_with_the_bearer_token_too() {
    let Cluster { w, api, key } = cluster().await;
    // The API server's own document: its jwks_uri on the same host.
    api.publish(WELL_KNOWN, &discovery_doc(K8S, &api.url(JWKS_PATH)));
    let mut issuer = kubernetes_issuer(&api, Some("/kubernetes.io/namespace"));
    let obj = issuer.as_object_mut().unwrap();
    obj.remove("jwks_url");
    obj.insert("discovery_url".into(), api.url(WELL_KNOWN).into());
    let gw = w.start_with(|d| push_issuer(d, issuer)).await;
    let token = k8s_sign(&key, "k-1", &k8s_claims("growth", "cleaner", 3600));
    assert_eq!(
        gw.delete_new(&token, None).await.status,
        204,
        "{:?}",
        last_record(&w)
    );
    for path in [WELL_KNOWN, JWKS_PATH] {
        let auths = api.authorizations(path);
        assert!(!auths.is_empty(), "{path} never fetched");
        assert!(
            auths
                .iter()
                .all(|a| a.as_deref() == Some("Bearer gw-token-1")),
            "{path}"
        );
    }
    // check-config names a bearer token file it cannot read.
    std::fs::remove_file(w.path("sa/token")).unwrap();
    let problems = batch_gateway::preflight::check_files(&gw.app.state().config);
    assert!(
        problems
            .iter()
            .any(|p| p.key.ends_with("jwks_bearer_token_file")),
        "{problems:?}"
    );
}
