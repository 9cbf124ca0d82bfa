//! An identity provider's web endpoints over TLS on 127.0.0.1: whatever
//! documents a test publishes (an OpenID Provider configuration, a JWKS, a
//! SPIFFE bundle), answered by path. Like a Kubernetes API server it can
//! demand a bearer token (anonymous discovery disabled, the default since
//! the `system:service-account-issuer-discovery` role is bound to service
//! accounts only): any other caller gets the API server's 401 Status.
//! Every request is kept (path and the Authorization it carried).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[derive(Clone)]
struct Doc {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

#[derive(Default)]
struct State {
    docs: HashMap<String, Doc>,
    bearer: Option<String>,
    requests: Vec<(String, Option<String>)>,
}

#[derive(Clone)]
pub struct FakeIdp {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeIdp {
    pub async fn start(cert_pem: &str, key_pem: &str) -> FakeIdp {
        let acceptor = super::tls_acceptor(cert_pem, key_pem);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            let doc = {
                                let mut s = state.lock().unwrap();
                                s.requests.push((path.clone(), auth.clone()));
                                let allowed = match &s.bearer {
                                    None => true,
                                    Some(t) => auth.as_deref() == Some(&format!("Bearer {t}")),
                                };
                                if !allowed {
                                    Doc {
                                        status: 401,
                                        headers: vec![(
                                            "content-type".into(),
                                            "application/json".into(),
                                        )],
                                        body: json!({"kind": "Status", "apiVersion": "v1",
                                            "status": "Failure", "message": "Unauthorized",
                                            "reason": "Unauthorized", "code": 401})
                                        .to_string()
                                        .into_bytes(),
                                    }
                                } else {
                                    s.docs.get(&path).cloned().unwrap_or(Doc {
                                        status: 404,
                                        headers: Vec::new(),
                                        body: b"404 page not found\n".to_vec(),
                                    })
                                }
                            };
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(doc.body)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(doc.status).unwrap();
                            for (k, v) in &doc.headers {
                                resp.headers_mut().insert(
                                    hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    v.parse().unwrap(),
                                );
                            }
                            Ok::<_, std::io::Error>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        FakeIdp { addr, state }
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Serves `body` as JSON at `path` (200).
    pub fn publish(&self, path: &str, body: &Value) {
        self.publish_raw(
            path,
            200,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        );
    }

    pub fn publish_raw(&self, path: &str, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.state.lock().unwrap().docs.insert(
            path.to_string(),
            Doc {
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body: body.to_vec(),
            },
        );
    }

    /// From now on only `Authorization: Bearer <token>` is served.
    pub fn require_bearer(&self, token: &str) {
        self.state.lock().unwrap().bearer = Some(token.to_string());
    }

    /// Every request so far: (path, Authorization header).
    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The Authorization headers requests for `path` carried.
    pub fn authorizations(&self, path: &str) -> Vec<Option<String>> {
        self.requests()
            .into_iter()
            .filter(|(p, _)| p == path)
            .map(|(_, a)| a)
            .collect()
    }
}
