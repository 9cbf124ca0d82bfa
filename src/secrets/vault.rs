//! `backend = "vault"`: HashiCorp Vault's KV v2 over its HTTP API.
//!
//! Reads `GET /v1/<kv_mount>/data/<secret_path>` (fields `rest_key`,
//! `project_key`; `metadata.version` becomes the audit's `secret_version`).
//! Logs in with a token (from `token_file`, re-read when it changes, or
//! `VAULT_TOKEN`), Kubernetes auth or AppRole; renews its token
//! (`renew-self`) once two thirds of the lease are gone; logs in again when
//! renewal is refused or Vault answers 403. A 403 that survives a fresh
//! login, or a 404, means the secret is gone: the cache evicts it. Vault
//! tokens are secrets: never logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{ProjectSecret, SecretSource, SourceError, checked};
use crate::config::{VaultAuth, VaultConfig};
use crate::metrics::{Metrics, VaultLabels};

const MAX_VAULT_BODY: usize = 256 * 1024;
/// How often a token whose lease could not be looked up is renewed (or,
/// when it cannot be, read again from its file).
const LEASE_UNKNOWN_CHECK: Duration = Duration::from_secs(300);

struct Token {
    value: SecretString,
    /// When to renew (two thirds into the lease); None: never expires.
    renew_at: Option<Instant>,
    renewable: bool,
    /// For `auth = "token"` from a file: the file's stamp when read.
    file_stamp: Option<(Option<SystemTime>, u64)>,
}

pub struct VaultSource {
    cfg: VaultConfig,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    token: tokio::sync::Mutex<Option<Token>>,
    metrics: Arc<Metrics>,
}

enum Call {
    Ok(Value),
    /// 403: the token is not (or no longer) good for this.
    Denied,
    NotFound,
    Failed(String),
}

fn stamp(path: &PathBuf) -> Option<(Option<SystemTime>, u64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// A credential file's content, one trailing newline stripped.
fn read_credential(path: &std::path::Path) -> Result<SecretString, SourceError> {
    let bytes = crate::keyfile::read_secret(path)
        .map_err(|e| SourceError::Unavailable(format!("cannot read {}: {e}", path.display())))?;
    let s = std::str::from_utf8(&bytes)
        .map_err(|_| SourceError::Unavailable(format!("{} is not UTF-8 text", path.display())))?;
    if s.is_empty() {
        return Err(SourceError::Unavailable(format!(
            "{} is empty",
            path.display()
        )));
    }
    Ok(SecretString::from(s.to_string()))
}

impl VaultSource {
    pub fn new(cfg: &VaultConfig, metrics: Arc<Metrics>) -> Result<Self, crate::tls::TlsError> {
        let https = crate::tls::https_connector(cfg.ca_file.as_deref(), cfg.request_timeout)?;
        Ok(VaultSource {
            cfg: cfg.clone(),
            client: Client::builder(TokioExecutor::new()).build(https),
            token: tokio::sync::Mutex::new(None),
            metrics,
        })
    }

    fn count(&self, op: &'static str, result: &'static str) {
        self.metrics
            .vault_calls
            .get_or_create(&VaultLabels { op, result })
            .inc();
    }

    async fn call(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        token: Option<&SecretString>,
        body: Option<Value>,
    ) -> Call {
        let uri = format!(
            "{}://{}/v1/{}",
            self.cfg.address.scheme_str().unwrap_or("https"),
            self.cfg
                .address
                .authority()
                .map(|a| a.as_str())
                .unwrap_or_default(),
            path
        );
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let Ok(mut req) = Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(Bytes::from(payload)))
        else {
            return Call::Failed("bad request".into());
        };
        let h = req.headers_mut();
        if let Some(t) = token {
            match HeaderValue::from_str(t.expose_secret()) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    h.insert("x-vault-token", v);
                }
                Err(_) => {
                    return Call::Failed("the Vault token is not a valid header value".into());
                }
            }
        }
        if let Some(ns) = self.cfg.namespace.as_deref() {
            // Never dropped: without it the call would reach the root
            // namespace, whose secret at the same path is another one.
            match HeaderValue::from_str(ns) {
                Ok(v) => {
                    h.insert("x-vault-namespace", v);
                }
                Err(_) => {
                    return Call::Failed(
                        "secrets.vault.namespace is not a valid header value".into(),
                    );
                }
            }
        }
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                format!(
                    "Vault unreachable ({})",
                    if e.is_connect() {
                        "connect"
                    } else {
                        "exchange"
                    }
                )
            })?;
            let status = resp.status().as_u16();
            let bytes = Limited::new(resp.into_body(), MAX_VAULT_BODY)
                .collect()
                .await
                .map_err(|_| "Vault answer unreadable or too large".to_string())?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let result = match tokio::time::timeout(self.cfg.request_timeout, exchange).await {
            Err(_) => Call::Failed("Vault timed out".into()),
            Ok(Err(e)) => Call::Failed(e),
            Ok(Ok((200, body))) => match serde_json::from_slice(&body) {
                Ok(v) => Call::Ok(v),
                Err(_) => Call::Failed("Vault answered 200 with a body that is not JSON".into()),
            },
            Ok(Ok((204, _))) => Call::Ok(Value::Null),
            Ok(Ok((403, _))) => Call::Denied,
            Ok(Ok((404, _))) => Call::NotFound,
            Ok(Ok((status, _))) => Call::Failed(format!("Vault answered {status}")),
        };
        self.count(
            op,
            match &result {
                Call::Ok(_) => "ok",
                Call::Denied => "denied",
                Call::NotFound => "not_found",
                Call::Failed(_) => "error",
            },
        );
        result
    }

    /// A fresh token: from the file/environment, or by logging in.
    async fn login(&self) -> Result<Token, SourceError> {
        let (path, body) = match &self.cfg.auth {
            VaultAuth::Token { token_file } => {
                let (value, file_stamp) = match token_file {
                    Some(f) => (read_credential(f)?, stamp(f)),
                    None => match std::env::var("VAULT_TOKEN") {
                        Ok(t) if !t.is_empty() => (SecretString::from(t), None),
                        _ => {
                            return Err(SourceError::Unavailable(
                                "no Vault token: set secrets.vault.token_file or VAULT_TOKEN"
                                    .into(),
                            ));
                        }
                    },
                };
                // Learn the lease so the token is renewed in time.
                let (renew_at, renewable) = match self
                    .call(
                        "lookup_self",
                        Method::GET,
                        "auth/token/lookup-self",
                        Some(&value),
                        None,
                    )
                    .await
                {
                    Call::Ok(v) => lease(&v["data"]["ttl"], v["data"]["renewable"].as_bool()),
                    // A token without Vault's `default` policy may read its
                    // KV paths but not look itself up: its lease is unknown.
                    // It is used; every LEASE_UNKNOWN_CHECK it is renewed if
                    // it can be (else the token file is read again), and a
                    // 403 on a secret re-reads the file too.
                    Call::Denied => {
                        tracing::info!(
                            "the Vault token may not look itself up (no default policy?); using it with its lease unknown"
                        );
                        (Some(Instant::now() + LEASE_UNKNOWN_CHECK), true)
                    }
                    _ => (None, false),
                };
                return Ok(Token {
                    value,
                    renew_at,
                    renewable,
                    file_stamp,
                });
            }
            VaultAuth::Kubernetes {
                role,
                jwt_file,
                mount,
            } => {
                let jwt = read_credential(jwt_file)?;
                (
                    format!("auth/{mount}/login"),
                    json!({"role": role, "jwt": jwt.expose_secret()}),
                )
            }
            VaultAuth::AppRole {
                role_id,
                secret_id_file,
                mount,
            } => {
                let secret_id = read_credential(secret_id_file)?;
                (
                    format!("auth/{mount}/login"),
                    json!({"role_id": role_id, "secret_id": secret_id.expose_secret()}),
                )
            }
        };
        self.metrics.vault_logins.inc();
        match self
            .call("login", Method::POST, &path, None, Some(body))
            .await
        {
            Call::Ok(v) => {
                let t = v["auth"]["client_token"]
                    .as_str()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        SourceError::Unavailable(
                            "Vault login answer has no auth.client_token".into(),
                        )
                    })?;
                let (renew_at, renewable) = lease(
                    &v["auth"]["lease_duration"],
                    v["auth"]["renewable"].as_bool(),
                );
                Ok(Token {
                    value: SecretString::from(t.to_string()),
                    renew_at,
                    renewable,
                    file_stamp: None,
                })
            }
            Call::Denied | Call::NotFound => {
                Err(SourceError::Unavailable("Vault refused the login".into()))
            }
            Call::Failed(e) => Err(SourceError::Unavailable(e)),
        }
    }

    /// The token to use now: logs in when there is none, re-reads a changed
    /// token file, renews two thirds into the lease (logs in again when
    /// renewal is refused).
    async fn token(&self) -> Result<SecretString, SourceError> {
        let mut guard = self.token.lock().await;
        if let (
            Some(t),
            VaultAuth::Token {
                token_file: Some(f),
            },
        ) = (guard.as_ref(), &self.cfg.auth)
            && t.file_stamp != stamp(f)
        {
            *guard = None;
        }
        let due = guard
            .as_ref()
            .is_some_and(|t| t.renew_at.is_some_and(|at| Instant::now() >= at));
        if due && let Some(t) = guard.take() {
            let renewed = if t.renewable {
                match self
                    .call(
                        "renew_self",
                        Method::POST,
                        "auth/token/renew-self",
                        Some(&t.value),
                        Some(json!({})),
                    )
                    .await
                {
                    Call::Ok(v) => {
                        self.metrics.vault_renewals.inc();
                        let (renew_at, renewable) = lease(
                            &v["auth"]["lease_duration"],
                            v["auth"]["renewable"].as_bool(),
                        );
                        Some(Token {
                            renew_at,
                            renewable,
                            ..t
                        })
                    }
                    _ => None,
                }
            } else {
                None
            };
            *guard = renewed;
        }
        if guard.is_none() {
            *guard = Some(self.login().await?);
        }
        guard
            .as_ref()
            .map(|t| t.value.clone())
            .ok_or_else(|| SourceError::Unavailable("no Vault token".into()))
    }

    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }
}

/// When to renew a lease of `ttl` seconds, and whether it can be renewed.
fn lease(ttl: &Value, renewable: Option<bool>) -> (Option<Instant>, bool) {
    match ttl.as_u64() {
        Some(0) | None => (None, false),
        Some(s) => (
            Some(Instant::now() + Duration::from_secs(s) * 2 / 3),
            renewable.unwrap_or(false),
        ),
    }
}

#[async_trait::async_trait]
impl SecretSource for VaultSource {
    async fn fetch(&self, secret_path: &str) -> Result<ProjectSecret, SourceError> {
        let path = format!(
            "{}/data/{}",
            self.cfg.kv_mount,
            secret_path.trim_start_matches('/')
        );
        for attempt in 0..2 {
            let token = self.token().await?;
            match self
                .call("read", Method::GET, &path, Some(&token), None)
                .await
            {
                Call::Ok(v) => {
                    let data = &v["data"]["data"];
                    let rest_key = data["rest_key"].as_str().unwrap_or_default().to_string();
                    let project_key = data["project_key"].as_str().unwrap_or_default().to_string();
                    let version = v["data"]["metadata"]["version"].as_u64();
                    return checked(SecretString::from(rest_key), project_key, version);
                }
                Call::NotFound => return Err(SourceError::NotFound),
                // The token may have expired or been revoked: log in again
                // once; a second 403 means this secret is not ours to read.
                Call::Denied if attempt == 0 => self.forget_token().await,
                Call::Denied => return Err(SourceError::NotFound),
                Call::Failed(e) => return Err(SourceError::Unavailable(e)),
            }
        }
        Err(SourceError::NotFound)
    }
}
