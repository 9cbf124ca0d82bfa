//! A Kubernetes API server reduced to what OpenBao's `kubernetes` auth
//! method calls: `POST /apis/authentication.k8s.io/v1/tokenreviews`
//! (authentication.k8s.io/v1 TokenReview, as the API documents it), over
//! TLS on 127.0.0.1. The reviewer must present `reviewer_jwt`; a review of
//! `token` says it belongs to `username`, any other token is not
//! authenticated. Every reviewed token is kept, for the test to check.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub struct FakeTokenReview {
    pub addr: SocketAddr,
    pub reviewed: Arc<Mutex<Vec<String>>>,
}

impl FakeTokenReview {
    pub async fn start(
        cert_pem: &str,
        key_pem: &str,
        reviewer_jwt: &str,
        token: &str,
        username: &str,
    ) -> FakeTokenReview {
        let acceptor = super::tls_acceptor(cert_pem, key_pem);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reviewed = Arc::new(Mutex::new(Vec::new()));
        let (reviewer, token, username) = (
            format!("Bearer {reviewer_jwt}"),
            token.to_string(),
            username.to_string(),
        );
        let seen = reviewed.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let (reviewer, token, username, seen) = (
                    reviewer.clone(),
                    token.clone(),
                    username.clone(),
                    seen.clone(),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (reviewer, token, username, seen) = (
                            reviewer.clone(),
                            token.clone(),
                            username.clone(),
                            seen.clone(),
                        );
                        async move {
                            let authorized = req
                                .headers()
                                .get("authorization")
                                .is_some_and(|v| v.as_bytes() == reviewer.as_bytes());
                            let path = req.uri().path().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let review: Value = serde_json::from_slice(&body).unwrap_or_default();
                            let (status, answer) = if path
                                != "/apis/authentication.k8s.io/v1/tokenreviews"
                            {
                                (
                                    404,
                                    json!({"kind": "Status", "status": "Failure", "code": 404}),
                                )
                            } else if !authorized {
                                (
                                    401,
                                    json!({"kind": "Status", "status": "Failure", "code": 401}),
                                )
                            } else {
                                let presented =
                                    review["spec"]["token"].as_str().unwrap_or_default();
                                seen.lock().unwrap().push(presented.to_string());
                                // The audiences asked for (the API server's own
                                // when none), which the token is valid for.
                                let audiences = match &review["spec"]["audiences"] {
                                    Value::Array(a) if !a.is_empty() => Value::Array(a.clone()),
                                    _ => json!(["https://kubernetes.default.svc.cluster.local"]),
                                };
                                let status = if presented == token {
                                    json!({"authenticated": true, "audiences": audiences, "user": {
                                        "username": username, "uid": "uid-1",
                                        "groups": ["system:serviceaccounts"]}})
                                } else {
                                    json!({"authenticated": false, "error": "invalid token"})
                                };
                                (
                                    201,
                                    json!({"apiVersion": "authentication.k8s.io/v1",
                                    "kind": "TokenReview", "spec": review["spec"], "status": status}),
                                )
                            };
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from(answer.to_string())));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                "application/json".parse().unwrap(),
                            );
                            Ok::<_, std::io::Error>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        FakeTokenReview { addr, reviewed }
    }
}
