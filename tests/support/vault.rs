//! An in-process Vault that follows its documented HTTP API: KV v2 reads
//! (`data.data`, `data.metadata.version`), `X-Vault-Token`, Kubernetes and
//! AppRole logins (`auth.client_token`, `lease_duration`, `renewable`),
//! `auth/token/renew-self` and `lookup-self`, and `{"errors": [...]}`
//! bodies with 403/404/503. Served over TLS on 127.0.0.1.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub struct Lease {
    pub expires: Instant,
    pub renewable: bool,
}

#[derive(Default)]
pub struct VaultState {
    /// KV v2 path (after `<mount>/data/`) → (fields, version).
    pub secrets: HashMap<String, (Value, u64)>,
    pub tokens: HashMap<String, Lease>,
    pub kubernetes: Option<(String, String)>,
    pub approle: Option<(String, String)>,
    /// Lease of tokens issued by logins and renewals.
    pub lease_s: u64,
    pub down: bool,
    pub delay: Duration,
    /// Paths the token's policy no longer covers (403).
    pub denied: HashSet<String>,
    /// (method, path, namespace header) of every call.
    pub calls: Vec<(String, String, Option<String>)>,
    issued: u64,
}

impl VaultState {
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.calls
            .iter()
            .filter(|(m, p, _)| m == method && p.starts_with(prefix))
            .count()
    }

    pub fn put(&mut self, path: &str, rest_key: &str, project_key: &str) {
        let version = self.secrets.get(path).map_or(1, |(_, v)| v + 1);
        self.secrets.insert(
            path.to_string(),
            (
                json!({"rest_key": rest_key, "project_key": project_key}),
                version,
            ),
        );
    }

    /// A token valid for `lease_s` seconds.
    pub fn issue(&mut self, renewable: bool) -> String {
        self.issued += 1;
        let t = format!("hvs.test-token-{}", self.issued);
        self.tokens.insert(
            t.clone(),
            Lease {
                expires: Instant::now() + Duration::from_secs(self.lease_s.max(1)),
                renewable,
            },
        );
        t
    }

    fn valid(&self, token: Option<&str>) -> bool {
        token
            .and_then(|t| self.tokens.get(t))
            .is_some_and(|l| l.expires > Instant::now())
    }
}

pub struct FakeVault {
    pub addr: std::net::SocketAddr,
    pub state: Arc<Mutex<VaultState>>,
}

fn errors(status: u16, msg: &str) -> (u16, Value) {
    (status, json!({"errors": [msg]}))
}

fn answer(
    st: &mut VaultState,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    if st.down {
        return errors(503, "Vault is sealed");
    }
    let auth = |st: &mut VaultState, renewable: bool| {
        let t = st.issue(renewable);
        (
            200,
            json!({"auth": {"client_token": t, "lease_duration": st.lease_s, "renewable": renewable, "policies": ["batch-gateway"]}}),
        )
    };
    match (method, path) {
        ("GET", p) if p.starts_with("secret/data/") => {
            if !st.valid(token) {
                return errors(403, "permission denied");
            }
            let key = &p["secret/data/".len()..];
            if st.denied.contains(key) {
                return errors(403, "permission denied");
            }
            match st.secrets.get(key) {
                Some((data, version)) => (
                    200,
                    json!({"data": {"data": data, "metadata": {"version": version, "created_time": "2026-11-26T00:00:00Z"}}}),
                ),
                None => (404, json!({"errors": []})),
            }
        }
        ("POST", "auth/kubernetes/login") => match &st.kubernetes {
            Some((role, jwt)) if body["role"] == json!(role) && body["jwt"] == json!(jwt) => {
                auth(st, true)
            }
            _ => errors(403, "permission denied"),
        },
        ("POST", "auth/approle/login") => match &st.approle {
            Some((r, s)) if body["role_id"] == json!(r) && body["secret_id"] == json!(s) => {
                auth(st, true)
            }
            _ => errors(400, "invalid role or secret ID"),
        },
        ("POST", "auth/token/renew-self") => {
            let lease_s = st.lease_s;
            match token.and_then(|t| st.tokens.get_mut(t)) {
                Some(l) if l.renewable && l.expires > Instant::now() => {
                    l.expires = Instant::now() + Duration::from_secs(lease_s);
                    (
                        200,
                        json!({"auth": {"client_token": token, "lease_duration": lease_s, "renewable": true}}),
                    )
                }
                _ => errors(403, "permission denied"),
            }
        }
        ("GET", "auth/token/lookup-self") => match token.and_then(|t| st.tokens.get(t)) {
            Some(l) if l.expires > Instant::now() => {
                let ttl = (l.expires - Instant::now()).as_secs();
                (200, json!({"data": {"ttl": ttl, "renewable": l.renewable}}))
            }
            _ => errors(403, "permission denied"),
        },
        _ => errors(404, "no handler for route"),
    }
}

impl FakeVault {
    pub async fn start(cert_pem: &str, key_pem: &str) -> FakeVault {
        let acceptor = super::tls_acceptor(cert_pem, key_pem);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(VaultState {
            lease_s: 3600,
            ..VaultState::default()
        }));
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let json_body: Value =
                                serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let path = parts.uri.path().trim_start_matches("/v1/").to_string();
                            let token = parts
                                .headers
                                .get("x-vault-token")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            let ns = parts
                                .headers
                                .get("x-vault-namespace")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            let ((status, doc), delay) = {
                                let mut s = st.lock().unwrap();
                                s.calls.push((parts.method.to_string(), path.clone(), ns));
                                let a = answer(
                                    &mut s,
                                    parts.method.as_str(),
                                    &path,
                                    token.as_deref(),
                                    &json_body,
                                );
                                (a, s.delay)
                            };
                            tokio::time::sleep(delay).await;
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from(doc.to_string())));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        FakeVault { addr, state }
    }
}

/// `[secrets] backend = "vault"` at `address` (trusting the world's CA)
/// with `vault_keys`, `request_timeout_ms` (unless the keys give one), the
/// cache TTL and the stale bound.
pub fn vault_backend(
    address: &str,
    vault_keys: &str,
    timeout_ms: i64,
    ttl_s: i64,
    stale_s: i64,
) -> impl FnOnce(&mut toml::Table) + use<> {
    let mut vt: toml::Table = toml::from_str(vault_keys).unwrap();
    vt.insert("address".into(), address.into());
    vt.insert("ca_file".into(), "tls/ca.pem".into());
    vt.entry("request_timeout_ms").or_insert(timeout_ms.into());
    move |d| {
        let s = super::table(d, "secrets");
        s.remove("file");
        s.insert("backend".into(), "vault".into());
        s.insert("cache_ttl_s".into(), ttl_s.into());
        s.insert("stale_if_error_s".into(), stale_s.into());
        s.insert("vault".into(), vt.into());
    }
}
