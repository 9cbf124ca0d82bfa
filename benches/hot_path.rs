//! Microbenchmarks of the request path's pieces, and of a whole request
//! through the in-process gateway (`gateway::handle`) with the test suite's
//! Batch stub over real TLS on 127.0.0.1 and a durable audit record.
//!
//!     cargo bench --bench hot_path

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::Arc;

use batch_gateway::authn::{Authenticator, Principal, now_s};
use batch_gateway::config::{AuthConfig, Config, IssuerConfig};
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

struct Key {
    alg: Algorithm,
    private_pem: Vec<u8>,
    public_pem: String,
}

fn key(alg: Algorithm) -> Key {
    match alg {
        Algorithm::RS256 => {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
            let k = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
            Key {
                alg,
                private_pem: k.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes().to_vec(),
                public_pem: k.to_public_key().to_public_key_pem(LineEnding::LF).unwrap(),
            }
        }
        _ => {
            let a = if alg == Algorithm::EdDSA {
                &rcgen::PKCS_ED25519
            } else {
                &rcgen::PKCS_ECDSA_P256_SHA256
            };
            let k = rcgen::KeyPair::generate_for(a).unwrap();
            Key {
                alg,
                private_pem: k.serialize_pem().into_bytes(),
                public_pem: k.public_key_pem(),
            }
        }
    }
}

fn token(k: &Key, n: u64) -> String {
    let enc = match k.alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&k.private_pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&k.private_pem),
        _ => EncodingKey::from_rsa_pem(&k.private_pem),
    }
    .unwrap();
    let now = now_s();
    let claims = json!({"iss": "https://idp.bench", "sub": "svc", "aud": "batch-gateway", "team": "growth",
        "iat": now, "exp": now + 600, "jti": format!("j{n}")});
    jsonwebtoken::encode(&Header::new(k.alg), &claims, &enc).unwrap()
}

fn authenticator(dir: &std::path::Path, k: &Key) -> Authenticator {
    let p = dir.join(format!("{:?}.pem", k.alg));
    std::fs::write(&p, &k.public_pem).unwrap();
    Authenticator::new(&AuthConfig {
        audiences: vec!["batch-gateway".into()],
        leeway_s: 30,
        max_token_lifetime_s: 900,
        team_claim: "team".into(),
        replay_cache_size: 1000,
        issuers: vec![IssuerConfig {
            issuer: "https://idp.bench".into(),
            algorithms: vec![k.alg],
            public_keys: vec![p],
            jwks: None,
            typ: None,
        }],
    })
    .unwrap()
}

fn tokens(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let k = key(alg);
        let a = authenticator(dir.path(), &k);
        // Cold: the full check a first use costs (signature included).
        let cold = token(&k, 0);
        c.bench_function(&format!("token verify {alg:?} cold"), |b| {
            b.iter(|| black_box(rt.block_on(a.verify_fully(&cold, now_s())).is_ok()))
        });
        let reused = token(&k, 1_000_000);
        c.bench_function(&format!("token verify {alg:?} cached"), |b| {
            b.iter(|| black_box(rt.block_on(a.verify(&reused, now_s())).is_ok()))
        });
    }
}

const BENCH_CONFIG: &str = r#"
[auth]
audiences = ["batch-gateway"]
[[auth.issuers]]
issuer = "https://idp.bench"
algorithms = ["EdDSA"]
public_keys = ["k.pem"]
[secrets]
file = "s.toml"
[audit]
file = "a.jsonl"
hmac_key_file = "h.key"
[[projects]]
alias = "marketing-prod"
secret_path = "batch/marketing-prod"
[[projects]]
alias = "sales-prod"
secret_path = "batch/sales-prod"
[[teams]]
name = "growth"
[[teams.grants]]
project = "marketing-prod"
actions = ["campaigns.delete"]
[[teams]]
name = "ops"
[[teams.grants]]
project = "sales-prod"
actions = ["campaigns.delete"]
"#;

fn bench_config() -> Config {
    Config::parse(BENCH_CONFIG, std::path::Path::new("/bench/gateway.toml")).unwrap()
}

fn pieces(c: &mut Criterion) {
    let cfg = bench_config();
    let principal = Principal {
        iss: "https://idp.bench".into(),
        sub: "svc".into(),
        teams: vec!["growth".into()],
        jti: None,
        exp: now_s() + 600,
        binding: Default::default(),
    };
    c.bench_function("policy decision", |b| {
        b.iter(|| {
            black_box(batch_gateway::policy::authorize(
                &cfg,
                &principal,
                &["marketing-prod"],
                batch_gateway::policy::Action::CampaignsDelete,
            ))
        })
    });
    c.bench_function("route + body validation", |b| {
        let body = br#"{"id":"orchestration_0664hyh918hr1gnzka9py5t62nrc0e1f"}"#;
        b.iter(|| {
            black_box(batch_gateway::policy::route(
                &http::Method::POST,
                "/2.8/campaigns/delete",
            ));
            black_box(batch_gateway::gateway::validate_body(body).is_ok())
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    struct One;
    #[async_trait::async_trait]
    impl batch_gateway::secrets::SecretSource for One {
        async fn fetch(
            &self,
            _: &str,
        ) -> Result<batch_gateway::secrets::ProjectSecret, batch_gateway::secrets::SourceError>
        {
            batch_gateway::secrets::checked(
                "rk_bench".to_string().into(),
                "project_0123456789abcdefghijklmnopqrstuv".into(),
                None,
            )
        }
    }
    let cache = batch_gateway::secrets::SecretCache::new(
        Arc::new(One),
        std::time::Duration::from_secs(3600),
        std::time::Duration::from_secs(0),
    );
    rt.block_on(cache.get("batch/marketing-prod")).unwrap();
    c.bench_function("secret cache hit", |b| {
        b.iter(|| black_box(rt.block_on(cache.get("batch/marketing-prod")).is_ok()))
    });

    let hmac = batch_gateway::audit::HmacKey::from_bytes(vec![7; 32]);
    c.bench_function("audit record build + fingerprints + hash", |b| {
        use batch_gateway::audit::{Phase, Record};
        use sha2::Digest;
        b.iter(|| {
            let mut r = Record::new(Phase::Attempt);
            r.request_id = Some("00000000-0000-4000-8000-000000000000".into());
            r.key_fp = Some(hmac.fingerprint(b"rk_bench").into());
            r.campaign_id = Some("orchestration_0664hyh918hr1gnzka9py5t62nrc0e1f".into());
            r.project = Some("marketing-prod".into());
            let line = serde_json::to_vec(&r).unwrap();
            black_box(sha2::Sha256::digest(&line))
        })
    });
}

fn whole_request(c: &mut Criterion) {
    use bytes::Bytes;
    use http_body_util::Full;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let w = rt.block_on(support::World::new());
    let app = rt
        .block_on(batch_gateway::App::build(w.config(|_| {})))
        .unwrap();
    let token = w.token("growth");
    let peer = batch_gateway::gateway::Peer {
        addr: "127.0.0.1:40000".parse().unwrap(),
        client_cert: None,
    };
    let body = Bytes::from(support::delete_body(&support::campaign_id()));
    let request = || {
        http::Request::post("/2.8/campaigns/delete")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .header("x-batch-project", "marketing-prod")
            .body(Full::new(body.clone()))
            .unwrap()
    };
    // The stub answers 204 to a well-formed delete; anything else is a
    // broken benchmark, not a fast one.
    let first = rt.block_on(batch_gateway::gateway::handle(
        app.clone(),
        request(),
        peer.clone(),
    ));
    assert_eq!(first.status(), 204);
    c.bench_function(
        "whole request: verify, policy, secret, durable audit, TLS upstream",
        |b| {
            b.iter(|| {
                let resp = rt.block_on(batch_gateway::gateway::handle(
                    app.clone(),
                    request(),
                    peer.clone(),
                ));
                assert_eq!(resp.status(), 204);
            })
        },
    );
}

fn header_rewrite(c: &mut Criterion) {
    use batch_gateway::forward::Upstream;
    use batch_gateway::secrets::ProjectSecret;
    let up = Upstream::new(&bench_config().upstream).unwrap();
    let secret = ProjectSecret {
        rest_key: secrecy::SecretString::from("rk_0123456789abcdef0123456789abcdef"),
        project_key: "project_0123456789abcdefghijklmnopqrstuv".into(),
        version: None,
    };
    let mut caller = http::HeaderMap::new();
    for (k, v) in [
        ("authorization", "Bearer eyJ.caller.token"),
        ("content-type", "application/json"),
        ("x-batch-project", "marketing-prod"),
        ("accept", "application/json"),
        ("cookie", "session=1"),
        ("user-agent", "svc/1.0"),
    ] {
        caller.insert(k, v.parse().unwrap());
    }
    let body =
        bytes::Bytes::from_static(br#"{"id":"orchestration_0664hyh918hr1gnzka9py5t62nrc0e1f"}"#);
    c.bench_function("header rewrite: the request Batch gets", |b| {
        b.iter(|| {
            black_box(
                up.request_for(
                    &secret,
                    "/2.8/campaigns/delete",
                    body.clone(),
                    "00000000-0000-4000-8000-000000000000",
                    &caller,
                )
                .unwrap(),
            )
        })
    });
    let mut batch_headers = http::HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("x-ratelimit-remaining", "99"),
        ("server", "batch"),
        ("set-cookie", "a=b"),
    ] {
        batch_headers.insert(k, v.parse().unwrap());
    }
    c.bench_function("header rewrite: the answer the caller gets", |b| {
        b.iter(|| {
            black_box(Upstream::answer_for(
                http::StatusCode::OK,
                &batch_headers,
                b"{}",
                &secret,
                std::time::Duration::ZERO,
            ))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = tokens, pieces, header_rewrite, whole_request
}
criterion_main!(benches);
