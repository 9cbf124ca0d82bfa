//! Test support: a Batch fake over real TLS (rcgen certificates), signing
//! keys and tokens, the gateway started in-process on 127.0.0.1 port 0, and
//! a raw HTTP/1.1 client that can send what well-behaved clients never do.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bao;
pub mod h2raw;
pub mod idp;
pub mod k8s;
pub mod redis;
pub mod tls;
pub mod vault;

#[allow(unused_imports)]
pub use tls::{client_config, server_tls, tls_connect, tls_delete};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batch_gateway::App;
use batch_gateway::config::Config;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ISS: &str = "https://idp.test";
pub const ISS2: &str = "https://idp2.test";
pub const DELETE: &str = "/2.8/campaigns/delete";

// ---------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------

pub struct Ca {
    pub pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca {
            pem: issuer.pem(),
            issuer,
        }
    }

    /// A client certificate with common name `cn`: (certificate PEM, key PEM).
    pub fn client(&self, cn: &str) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// (certificate PEM, private key PEM) for `names`.
    pub fn server(&self, names: &[&str], expired: bool) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

// ---------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------

/// A signing key pair as PEM (PKCS#8 private, SPKI public).
#[derive(Clone)]
pub struct SigningKey {
    pub private_pem: String,
    pub public_pem: String,
    pub alg: jsonwebtoken::Algorithm,
}

impl SigningKey {
    pub fn generate(alg: jsonwebtoken::Algorithm) -> SigningKey {
        use jsonwebtoken::Algorithm::*;
        let rc = match alg {
            EdDSA => Some(&rcgen::PKCS_ED25519),
            ES256 => Some(&rcgen::PKCS_ECDSA_P256_SHA256),
            ES384 => Some(&rcgen::PKCS_ECDSA_P384_SHA384),
            _ => None,
        };
        match rc {
            Some(a) => {
                let k = KeyPair::generate_for(a).unwrap();
                SigningKey {
                    private_pem: k.serialize_pem(),
                    public_pem: k.public_key_pem(),
                    alg,
                }
            }
            None => {
                use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
                let k = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
                SigningKey {
                    private_pem: k.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                    public_pem: k.to_public_key().to_public_key_pem(LineEnding::LF).unwrap(),
                    alg,
                }
            }
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(jsonwebtoken::Header::new(self.alg), claims)
    }

    pub fn sign_with_header(&self, header: jsonwebtoken::Header, claims: &Value) -> String {
        use jsonwebtoken::{AlgorithmFamily, EncodingKey};
        let pem = self.private_pem.as_bytes();
        let key = match batch_gateway::authn::keys::family_of(self.alg) {
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem),
            _ => EncodingKey::from_rsa_pem(pem),
        }
        .unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

/// An authenticator for issuer [`ISS`] with `key`'s public key, pinned to
/// `algs`.
pub fn authenticator(
    w: &World,
    key: &SigningKey,
    algs: &[jsonwebtoken::Algorithm],
) -> batch_gateway::authn::Authenticator {
    let path = w.write(&format!("keys/{:?}.pub.pem", key.alg), &key.public_pem);
    batch_gateway::authn::Authenticator::new(
        &batch_gateway::config::AuthConfig {
            audiences: vec!["batch-gateway".into()],
            leeway_s: 30,
            max_token_lifetime_s: 900,
            team_claim: Default::default(),
            replay_cache_size: 1000,
            issuers: vec![batch_gateway::config::IssuerConfig {
                issuer: ISS.into(),
                algorithms: algs.to_vec(),
                public_keys: vec![path],
                jwks: None,
                typ: Vec::new(),
                max_token_lifetime_s: None,
                team_claim: None,
            }],
        },
        &[],
    )
    .unwrap()
}

pub fn now() -> i64 {
    batch_gateway::common::now_s()
}

/// Well-formed claims for team `team` from issuer `iss`.
pub fn claims(iss: &str, team: &str) -> Value {
    let n = now();
    json!({
        "iss": iss, "sub": "svc-cleaner", "aud": "batch-gateway", "team": team,
        "iat": n, "nbf": n, "exp": n + 300, "jti": uuid::Uuid::new_v4().to_string(),
    })
}

/// `claims` with `changes` merged in (a `null` removes the claim).
pub fn with(mut c: Value, changes: Value) -> Value {
    if let (Some(obj), Some(ch)) = (c.as_object_mut(), changes.as_object()) {
        for (k, v) in ch {
            if v.is_null() {
                obj.remove(k);
            } else {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

pub fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// A token assembled by hand from raw JSON parts and a real signature.
pub fn sign_raw(key: &SigningKey, header_json: &str, payload_json: &str) -> String {
    sign_bytes(key, header_json.as_bytes(), payload_json.as_bytes())
}

/// Like [`sign_raw`], for parts that need not be UTF-8.
pub fn sign_bytes(key: &SigningKey, header: &[u8], payload: &[u8]) -> String {
    use jsonwebtoken::EncodingKey;
    let input = format!("{}.{}", b64(header), b64(payload));
    let pem = key.private_pem.as_bytes();
    let k = match batch_gateway::authn::keys::family_of(key.alg) {
        jsonwebtoken::AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem),
        jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem),
        _ => EncodingKey::from_rsa_pem(pem),
    }
    .unwrap();
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &k, key.alg).unwrap();
    format!("{input}.{sig}")
}

pub fn campaign_id() -> String {
    const A: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let u = uuid::Uuid::new_v4();
    let v = uuid::Uuid::new_v4();
    let bytes: Vec<u8> = u.as_bytes().iter().chain(v.as_bytes()).copied().collect();
    let s: String = bytes
        .iter()
        .map(|b| A[*b as usize % A.len()] as char)
        .collect();
    format!("orchestration_{s}")
}

pub fn delete_body(id: &str) -> Vec<u8> {
    format!("{{\"id\":\"{id}\"}}").into_bytes()
}

/// A TLS acceptor for a fake server (HTTP/1.1) from PEM certificate and key.
pub fn tls_acceptor(cert_pem: &str, key_pem: &str) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

// ---------------------------------------------------------------------------
// The Batch fake
// ---------------------------------------------------------------------------

/// One request Batch received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A forced answer: status, headers, body.
pub type Answer = (u16, Vec<(String, String)>, Vec<u8>);

#[derive(Default)]
pub struct BatchState {
    pub seen: Vec<Seen>,
    /// Forced answer: status, headers, body.
    pub forced: Option<Answer>,
    pub delay: Duration,
    /// Read the request, then drop the connection without an answer.
    pub drop_connection: bool,
    /// TLS connections accepted.
    pub connections: usize,
    /// Close each connection this long after accepting it, whatever it
    /// is doing (a server dropping idle keep-alive connections).
    pub close_after: Option<Duration>,
    /// REST key → project key.
    pub keys: HashMap<String, String>,
}

/// Batch's Campaign API as its docs describe it, over TLS on 127.0.0.1.
pub struct FakeBatch {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<BatchState>>,
}

fn batch_error(status: u16, code: &str, msg: &str) -> Answer {
    (
        status,
        vec![("content-type".into(), "application/json".into())],
        json!({"error_code": code, "error_message": msg})
            .to_string()
            .into_bytes(),
    )
}

fn batch_answer(st: &BatchState, seen: &Seen) -> Answer {
    if let Some(f) = &st.forced {
        return f.clone();
    }
    let route_ok = seen.method == "POST"
        && seen
            .target
            .strip_prefix("/2.")
            .and_then(|r| r.split_once('/'))
            .is_some_and(|(v, rest)| {
                v.parse::<u32>().is_ok_and(|n| (1..=13).contains(&n))
                    && matches!(
                        rest,
                        "campaigns/delete" | "campaigns/create" | "campaigns/update"
                    )
            });
    if !route_ok {
        return batch_error(404, "20", "Route not found");
    }
    let auth = seen.all("authorization");
    let proj = seen.all("x-batch-project");
    let key_ok = match (auth.as_slice(), proj.as_slice()) {
        ([a], [p]) => a
            .strip_prefix("Bearer ")
            .and_then(|k| st.keys.get(k))
            .is_some_and(|want| want == p),
        _ => false,
    };
    if !key_ok {
        return batch_error(401, "10", "Authentication invalid");
    }
    match serde_json::from_slice::<Value>(&seen.body) {
        Err(_) => batch_error(400, "32", "Malformed JSON body"),
        Ok(v) => match v.get("id").and_then(Value::as_str) {
            None => batch_error(400, "30", "Missing parameter id"),
            Some(_) => (204, vec![], vec![]),
        },
    }
}

impl FakeBatch {
    pub async fn start(cert_pem: &str, key_pem: &str, keys: HashMap<String, String>) -> FakeBatch {
        let acceptor = tls_acceptor(cert_pem, key_pem);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(BatchState {
            keys,
            ..BatchState::default()
        }));
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    // A refused handshake is what the rogue-CA tests expect.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let close_after = {
                        let mut s = st.lock().unwrap();
                        s.connections += 1;
                        s.close_after
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
                            let seen = Seen {
                                method: parts.method.to_string(),
                                target: parts.uri.to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                                body: body.to_vec(),
                            };
                            let (answer, delay, drop_it) = {
                                let mut s = st.lock().unwrap();
                                s.seen.push(seen.clone());
                                (batch_answer(&s, &seen), s.delay, s.drop_connection)
                            };
                            tokio::time::sleep(delay).await;
                            if drop_it {
                                return Err(std::io::Error::other("dropped on purpose"));
                            }
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(answer.2)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(answer.0).unwrap();
                            for (k, v) in answer.1 {
                                resp.headers_mut().append(
                                    hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    v.parse().unwrap(),
                                );
                            }
                            Ok::<_, std::io::Error>(resp)
                        }
                    });
                    let serving = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc);
                    match close_after {
                        Some(d) => {
                            let _ = tokio::time::timeout(d, serving).await;
                        }
                        None => {
                            let _ = serving.await;
                        }
                    }
                });
            }
        });
        FakeBatch { addr, state }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    pub fn force(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        self.state.lock().unwrap().forced = Some((
            status,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body.to_vec(),
        ));
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    pub fn set_close_after(&self, d: Duration) {
        self.state.lock().unwrap().close_after = Some(d);
    }

    pub fn set_delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = d;
    }
}

// ---------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------

pub struct Project {
    pub alias: String,
    pub secret_path: String,
    pub rest_key: String,
    pub project_key: String,
}

/// Files and peers one test needs.
pub struct World {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub ed: SigningKey,
    pub es: SigningKey,
    pub projects: Vec<Project>,
    pub hmac_key: String,
    pub batch: Option<FakeBatch>,
}

fn rand_lower(n: usize) -> String {
    campaign_id()["orchestration_".len()..][..n.min(32)].to_string()
}

impl World {
    /// Files written, the Batch fake started (trusted certificate for 127.0.0.1).
    pub async fn new() -> World {
        let mut w = World::without_batch();
        let (cert, key) = w.ca.server(&["127.0.0.1"], false);
        w.start_batch(&cert, &key).await;
        w
    }

    pub fn without_batch() -> World {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("batch-gateway test CA");
        let ed = SigningKey::generate(jsonwebtoken::Algorithm::EdDSA);
        let es = SigningKey::generate(jsonwebtoken::Algorithm::ES256);
        let projects = ["marketing-prod", "sales-prod"]
            .iter()
            .map(|a| Project {
                alias: a.to_string(),
                secret_path: format!("batch/{a}"),
                rest_key: format!("rk_{}", rand_lower(32)),
                project_key: format!("project_{}", rand_lower(32)),
            })
            .collect();
        let w = World {
            dir,
            ca,
            ed,
            es,
            projects,
            hmac_key: rand_lower(32) + &rand_lower(32),
            batch: None,
        };
        w.write("keys/ed.pub.pem", &w.ed.public_pem);
        w.write("keys/es.pub.pem", &w.es.public_pem);
        w.write("tls/ca.pem", &w.ca.pem);
        w.write("audit-hmac.key", &w.hmac_key);
        w.write_secrets();
        w
    }

    pub async fn start_batch(&mut self, cert: &str, key: &str) {
        let keys = self
            .projects
            .iter()
            .map(|p| (p.rest_key.clone(), p.project_key.clone()))
            .collect();
        self.batch = Some(FakeBatch::start(cert, key, keys).await);
    }

    pub fn batch(&self) -> &FakeBatch {
        self.batch.as_ref().unwrap()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file readable by its owner only, as key files must be.
    pub fn write(&self, rel: &str, data: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    pub fn write_secrets(&self) {
        let mut s = String::new();
        for p in &self.projects {
            s.push_str(&format!(
                "[\"{}\"]\nrest_key = \"{}\"\nproject_key = \"{}\"\n",
                p.secret_path, p.rest_key, p.project_key
            ));
        }
        self.write("secrets.toml", &s);
    }

    pub fn project(&self, alias: &str) -> &Project {
        self.projects.iter().find(|p| p.alias == alias).unwrap()
    }

    /// The config every test starts from: two issuers, two projects,
    /// teams growth (marketing-prod), ops (both), support (sales-prod).
    pub fn config_text(&self) -> String {
        let upstream = self
            .batch
            .as_ref()
            .map(|b| b.addr)
            .unwrap_or_else(dead_addr);
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
max_body_bytes = 65536

[upstream]
base_url = "https://{upstream}"
ca_file = "tls/ca.pem"
connect_timeout_ms = 2000
request_timeout_ms = 5000

[auth]
audiences = ["batch-gateway"]
leeway_s = 30
max_token_lifetime_s = 900
team_claim = "team"

[[auth.issuers]]
issuer = "{ISS}"
algorithms = ["EdDSA"]
public_keys = ["keys/ed.pub.pem"]

[[auth.issuers]]
issuer = "{ISS2}"
algorithms = ["ES256"]
public_keys = ["keys/es.pub.pem"]

[secrets]
backend = "file"
file = "secrets.toml"
cache_ttl_s = 300
stale_if_error_s = 3600

[log]
level = "warn"
format = "text"

[audit]
file = "audit/audit.jsonl"
hmac_key_file = "audit-hmac.key"

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
project = "marketing-prod"
actions = ["campaigns.delete"]
[[teams.grants]]
project = "sales-prod"
actions = ["campaigns.delete"]

[[teams]]
name = "support"
[[teams.grants]]
project = "sales-prod"
actions = ["campaigns.delete"]
"#
        )
    }

    /// Writes `config_text()` edited by `edit` and loads it.
    pub fn config(&self, edit: impl FnOnce(&mut toml::Table)) -> Config {
        let mut doc: toml::Table = self.config_text().parse().unwrap();
        edit(&mut doc);
        let path = self.write("gateway.toml", &toml::to_string(&doc).unwrap());
        Config::load(&path).unwrap_or_else(|e| panic!("test config invalid: {:?}", e.0))
    }

    pub async fn start(&self) -> Running {
        self.start_with(|_| {}).await
    }

    pub async fn start_with(&self, edit: impl FnOnce(&mut toml::Table)) -> Running {
        Running::start(self.config(edit)).await
    }

    pub fn token(&self, team: &str) -> String {
        self.ed.sign(&claims(ISS, team))
    }

    pub fn audit_path(&self) -> PathBuf {
        self.path("audit/audit.jsonl")
    }

    pub fn audit_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn audit_records(&self) -> Vec<Value> {
        self.audit_lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// `team`'s first grant in the default config (0 growth → marketing-prod,
/// 1 ops → marketing-prod, 2 support → sales-prod).
pub fn grant_of(d: &mut toml::Table, team: usize) -> &mut toml::Table {
    let teams = d.get_mut("teams").unwrap().as_array_mut().unwrap();
    let grants = teams[team]
        .get_mut("grants")
        .unwrap()
        .as_array_mut()
        .unwrap();
    grants[0].as_table_mut().unwrap()
}

/// A table inside a config document (`["upstream"]`, `["server"]`…).
pub fn table<'a>(doc: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    doc.get_mut(key).and_then(|v| v.as_table_mut()).unwrap()
}

/// An address where nothing listens.
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// An in-process gateway on 127.0.0.1 port 0.
pub struct Running {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub app: Arc<App>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn start(config: Config) -> Running {
        let app = App::build(config).await.unwrap();
        let listeners = batch_gateway::listen::Listeners::bind(&app).await.unwrap();
        let addr = listeners.data_addr().unwrap();
        let admin = listeners.admin_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(batch_gateway::listen::serve(
            app.clone(),
            listeners,
            async {
                let _ = rx.await;
            },
        ));
        Running {
            addr,
            admin,
            app,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stops accepting and waits for the drain.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// A delete as a caller sends it.
    pub async fn delete(&self, token: &str, project: Option<&str>, body: &[u8]) -> Resp {
        let mut h = vec![("Authorization".to_string(), format!("Bearer {token}"))];
        if let Some(p) = project {
            h.push(("X-Batch-Project".into(), p.into()));
        }
        h.push(("Content-Type".into(), "application/json".into()));
        self.request("POST", DELETE, &h, body).await
    }

    /// A delete of a new campaign id.
    pub async fn delete_new(&self, token: &str, project: Option<&str>) -> Resp {
        self.delete(token, project, &delete_body(&campaign_id()))
            .await
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        String::from_utf8(self.admin_get("/metrics").await.body).unwrap()
    }

    pub async fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Resp {
        let mut raw =
            format!("{method} {target} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        raw_exchange(self.addr, &bytes).await
    }

    pub async fn admin_get(&self, path: &str) -> Resp {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        raw_exchange(self.admin, raw.as_bytes()).await
    }
}

/// A parsed HTTP/1.1 answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Asserts a gateway error: status, X-Gateway-Error, string error_code.
    pub fn assert_gateway_error(&self, status: u16, reason: &str, code: &str) {
        assert_eq!(
            (self.status, self.header("x-gateway-error")),
            (status, Some(reason)),
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.json()["error_code"], json!(code));
        assert!(self.json()["error_message"].is_string());
        assert!(self.header("x-request-id").is_some());
    }
}

/// Sends raw bytes, reads until the server closes, parses the answer.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    parse_response(&buf)
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&buf)))
}

pub fn parse_response(buf: &[u8]) -> Option<Resp> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let body = match len {
        Some(n) => rest[..n.min(rest.len())].to_vec(),
        None => rest.to_vec(),
    };
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// A delete as raw bytes: `Connection: close`, `extra` header lines
/// (each ending in CRLF), then `body`.
pub fn delete_request(token: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {DELETE} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {token}\r\n{extra}Connection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// One delete of a new campaign on its own connection to `addr`.
pub async fn delete_at(addr: SocketAddr, token: &str) -> Resp {
    raw_exchange(
        addr,
        &delete_request(token, "", &delete_body(&campaign_id())),
    )
    .await
}

/// Like [`raw_exchange`] for load that may meet a closed or killed
/// gateway: `None` when the connection, the write or the answer fails.
pub async fn try_exchange(addr: SocketAddr, bytes: &[u8]) -> Option<Resp> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(bytes).await.ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    parse_response(&buf)
}

/// Sends `sig` (`-STOP`, `-CONT`…) to a server process a test started.
pub fn signal(child: Option<&std::process::Child>, sig: &str) {
    if let Some(c) = child {
        std::process::Command::new("kill")
            .args([sig, &c.id().to_string()])
            .status()
            .unwrap();
    }
}

/// A server process a test started, frozen and thawed on cue.
pub trait Daemon {
    fn child(&self) -> Option<&std::process::Child>;

    /// Frozen (SIGSTOP): connections stay open, nothing is answered.
    fn pause(&self) {
        signal(self.child(), "-STOP");
    }

    fn resume(&self) {
        signal(self.child(), "-CONT");
    }
}

/// Kills and reaps a server process a test started.
pub fn kill(child: &mut Option<std::process::Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A port that was free a moment ago (for the real binary's fixed config).
pub fn free_port() -> u16 {
    dead_addr().port()
}

/// Waits until something listens on 127.0.0.1:`port`.
pub fn wait_up(port: u16) {
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port}");
}

/// Sets fixed ports for a gateway run as the real binary.
pub fn fixed_ports(d: &mut toml::Table, data: u16, admin: u16) {
    let s = table(d, "server");
    s.insert("listen".into(), format!("127.0.0.1:{data}").into());
    s.insert("admin_listen".into(), format!("127.0.0.1:{admin}").into());
}

/// The real binary serving `config`, its output discarded.
pub fn spawn_serve(config: &Path) -> std::process::Child {
    std::process::Command::new(binary())
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Where the built binary is (for CLI and signal tests).
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_batch-gateway"))
}

/// `key`'s public key, as jsonwebtoken checks signatures with it.
pub fn decoding_key(key: &SigningKey) -> jsonwebtoken::DecodingKey {
    use jsonwebtoken::{AlgorithmFamily, DecodingKey};
    let pem = key.public_pem.as_bytes();
    match batch_gateway::authn::keys::family_of(key.alg) {
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
        _ => DecodingKey::from_rsa_pem(pem),
    }
    .unwrap()
}

/// The public JWK of `key`, with `kid`.
pub fn jwk(key: &SigningKey, kid: &str) -> Value {
    let dk = decoding_key(key);
    let mut j = jsonwebtoken::jwk::Jwk::from_decoding_key(&dk, Some(key.alg)).unwrap();
    j.common.key_id = Some(kid.to_string());
    serde_json::to_value(j).unwrap()
}

/// A token from `key` with `kid` in its header.
pub fn sign_kid(key: &SigningKey, kid: &str, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(key.alg);
    h.kid = Some(kid.to_string());
    key.sign_with_header(h, claims)
}
