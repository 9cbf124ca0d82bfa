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

use batch_gateway::authn::Principal;
use batch_gateway::common::now_s;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::Algorithm;
use support::{ISS, SigningKey, World, authenticator, claims};

fn tokens(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let w = World::without_batch();
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let k = SigningKey::generate(alg);
        let a = authenticator(&w, &k, &[alg]);
        // Cold: the full check a first use costs (signature included).
        let cold = k.sign(&claims(ISS, "growth"));
        c.bench_function(&format!("token verify {alg:?} cold"), |b| {
            b.iter(|| black_box(rt.block_on(a.verify_fully(&cold, now_s())).is_ok()))
        });
        // The signature alone, as `verify_fully` checks it (jsonwebtoken's
        // crypto with aws-lc): what a fresh token must cost on top of a
        // reused one, and nothing more (bench/run.sh reads this row).
        let key = support::decoding_key(&k);
        let (message, signature) = cold.rsplit_once('.').unwrap();
        assert!(jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, alg).unwrap());
        c.bench_function(&format!("signature check {alg:?} alone"), |b| {
            b.iter(|| {
                black_box(
                    jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, alg).unwrap(),
                )
            })
        });
        let reused = k.sign(&claims(ISS, "growth"));
        c.bench_function(&format!("token verify {alg:?} cached"), |b| {
            b.iter(|| black_box(rt.block_on(a.verify(&reused, now_s())).is_ok()))
        });
    }
}

/// A verified caller of team growth.
fn principal() -> Principal {
    Principal {
        iss: ISS.into(),
        sub: "svc".into(),
        teams: vec!["growth".into()],
        memberships: Vec::new(),
        jti: None,
        exp: now_s() + 600,
        binding: Default::default(),
        recorded: batch_gateway::common::Memo::new(),
    }
}

fn pieces(c: &mut Criterion) {
    let w = World::without_batch();
    let cfg = w.config(|_| {});
    let principal = principal();
    c.bench_function("policy decision", |b| {
        b.iter(|| {
            black_box(batch_gateway::policy::authorize(
                &cfg,
                &principal,
                &["marketing-prod"],
                batch_gateway::route::Action::CampaignsDelete,
                "/2.8/campaigns/delete",
            ))
        })
    });
    c.bench_function("route + body validation", |b| {
        let body = br#"{"id":"orchestration_0664hyh918hr1gnzka9py5t62nrc0e1f"}"#;
        b.iter(|| {
            black_box(batch_gateway::route::route(
                &http::Method::POST,
                "/2.8/campaigns/delete",
            ));
            black_box(batch_gateway::gateway::request::validate_body(body).is_ok())
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
    // The world (its CA file) must outlive building the upstream.
    let w = World::without_batch();
    let cfg = w.config(|_| {});
    let up = Upstream::new(&cfg.upstream).unwrap();
    let permit = batch_gateway::policy::authorize(
        &cfg,
        &principal(),
        &["marketing-prod"],
        batch_gateway::route::Action::CampaignsDelete,
        "/2.8/campaigns/delete",
    )
    .unwrap();
    let secret = ProjectSecret {
        rest_key: secrecy::SecretString::from("rk_0123456789abcdef0123456789abcdef"),
        project_key: "project_0123456789abcdefghijklmnopqrstuv".into(),
        version: None,
        key_fp: batch_gateway::common::Memo::new(),
    };
    let headers = |pairs: &[(&'static str, &str)]| {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    };
    let caller = headers(&[
        ("authorization", "Bearer eyJ.caller.token"),
        ("content-type", "application/json"),
        ("x-batch-project", "marketing-prod"),
        ("accept", "application/json"),
        ("cookie", "session=1"),
        ("user-agent", "svc/1.0"),
    ]);
    let body =
        bytes::Bytes::from_static(br#"{"id":"orchestration_0664hyh918hr1gnzka9py5t62nrc0e1f"}"#);
    c.bench_function("header rewrite: the request Batch gets", |b| {
        b.iter(|| {
            black_box(
                up.request_for(
                    &permit,
                    &secret,
                    body.clone(),
                    "00000000-0000-4000-8000-000000000000",
                    &caller,
                )
                .unwrap(),
            )
        })
    });
    let batch_headers = headers(&[
        ("content-type", "application/json"),
        ("x-ratelimit-remaining", "99"),
        ("server", "batch"),
        ("set-cookie", "a=b"),
    ]);
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

/// The request-smuggling guard following one request (head and body) as a
/// single read delivers it, the way every data-plane read passes through.
fn framing_guard(c: &mut Criterion) {
    let body = br#"{"id":"orchestration_0664hyh918hr1gnzka9py5t62nrc0e1f"}"#;
    let token = format!(
        "eyJhbGciOiJFZERTQSJ9.{}.{}",
        "a".repeat(220),
        "b".repeat(86)
    );
    let request = format!(
        "POST /2.8/campaigns/delete HTTP/1.1\r\nHost: gateway.internal:8080\r\n\
         User-Agent: svc/1.0\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nX-Batch-Project: marketing-prod\r\n\
         Authorization: Bearer {token}\r\n\
         traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
         Content-Length: {}\r\n\r\n{}",
        body.len(),
        std::str::from_utf8(body).unwrap()
    );
    let mut tracker = batch_gateway::framing::Tracker::new(64 * 1024);
    let mut out = bytes::BytesMut::with_capacity(4096);
    c.bench_function(
        &format!("framing guard: one {}-byte request", request.len()),
        |b| {
            b.iter(|| {
                out.clear();
                tracker.feed(black_box(request.as_bytes()), &mut out);
                black_box(out.len())
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = tokens, pieces, header_rewrite, framing_guard, whole_request
}
criterion_main!(benches);
