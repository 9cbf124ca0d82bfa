//! Configuration: raw serde structs → `validate()` collecting every problem
//! with its key path → a typed [`Config`].
//!
//! Unknown keys are errors (collected with `serde_ignored`, so one run names
//! all of them). Keys of features this build does not implement yet are
//! recognised and refused with "not supported yet". Relative paths resolve
//! against the config file's folder. Files the config names are opened by
//! [`crate::preflight::check_files`] (what `check-config` runs) and again when the
//! gateway builds its runtime state.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::route::Action;

/// One problem in a config, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one config.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration ({} problem(s))", .0.len())]
pub struct ConfigErrors(pub Vec<Problem>);

impl ConfigErrors {
    fn one(key: &str, message: impl Into<String>) -> Self {
        ConfigErrors(vec![Problem {
            key: key.to_string(),
            message: message.into(),
        }])
    }
}

#[derive(Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }
}

// ---------------------------------------------------------------------------
// Raw shape (exactly the contract's keys)
// ---------------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstream: RawUpstream,
    auth: Option<RawAuth>,
    secrets: Option<RawSecrets>,
    #[serde(default)]
    log: RawLog,
    audit: Option<RawAudit>,
    #[serde(default)]
    projects: Vec<RawProject>,
    #[serde(default)]
    teams: Vec<RawTeam>,
}

#[derive(Deserialize, Default)]
struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    max_body_bytes: Option<u64>,
    max_header_bytes: Option<u64>,
    header_read_timeout_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
    max_concurrent_requests: Option<u64>,
    max_connections: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    max_headers: Option<u64>,
    h2_idle_timeout_ms: Option<u64>,
    h2_max_reset_streams: Option<u64>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawUpstream {
    base_url: Option<String>,
    dry_run: Option<bool>,
    ca_file: Option<String>,
    connect_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
struct RawAuth {
    audiences: Option<Vec<String>>,
    leeway_s: Option<u64>,
    max_token_lifetime_s: Option<u64>,
    team_claim: Option<String>,
    replay_cache_size: Option<u64>,
    #[serde(default)]
    issuers: Vec<RawIssuer>,
}

#[derive(Deserialize)]
struct RawIssuer {
    issuer: Option<String>,
    algorithms: Option<Vec<String>>,
    public_keys: Option<Vec<String>>,
    jwks_url: Option<String>,
    jwks_ca_file: Option<String>,
    jwks_refresh_s: Option<u64>,
    jwks_min_refetch_s: Option<u64>,
    jwks_stale_max_s: Option<u64>,
    typ: Option<String>,
}

#[derive(Deserialize)]
struct RawSecrets {
    backend: Option<String>,
    file: Option<String>,
    cache_ttl_s: Option<u64>,
    stale_if_error_s: Option<u64>,
    vault: Option<RawVault>,
}

#[derive(Deserialize)]
struct RawVault {
    address: Option<String>,
    ca_file: Option<String>,
    kv_mount: Option<String>,
    namespace: Option<String>,
    auth: Option<String>,
    token_file: Option<String>,
    kubernetes_role: Option<String>,
    kubernetes_jwt_file: Option<String>,
    kubernetes_mount: Option<String>,
    approle_role_id: Option<String>,
    approle_secret_id_file: Option<String>,
    approle_mount: Option<String>,
    request_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

#[derive(Deserialize)]
struct RawAudit {
    file: Option<String>,
    hmac_key_file: Option<String>,
    rotate_bytes: Option<u64>,
    /// Removed: read only to say what replaced it.
    keep_files: Option<toml::Value>,
    retention_days: Option<u64>,
    max_total_bytes: Option<u64>,
    unauthenticated_records_per_s: Option<u32>,
    signing_key_file: Option<String>,
    checkpoint_interval_s: Option<u64>,
    stdout: Option<bool>,
}

#[derive(Deserialize)]
struct RawProject {
    alias: Option<String>,
    secret_path: Option<String>,
    upstream_rate_per_s: Option<u64>,
}

#[derive(Deserialize)]
struct RawTeam {
    name: Option<String>,
    #[serde(default)]
    grants: Vec<RawGrant>,
}

#[derive(Deserialize)]
struct RawGrant {
    project: Option<String>,
    actions: Option<Vec<String>>,
    require_bound_token: Option<bool>,
    single_use_tokens: Option<bool>,
    dry_run: Option<bool>,
    rate_per_minute: Option<u64>,
    daily_quota: Option<u64>,
}

// ---------------------------------------------------------------------------
// Typed config
// ---------------------------------------------------------------------------

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file (absolute); relative paths resolved against its folder.
    pub source: PathBuf,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub auth: AuthConfig,
    pub secrets: SecretsConfig,
    pub log: LogConfig,
    pub audit: AuditConfig,
    pub projects: Vec<ProjectConfig>,
    pub teams: Vec<TeamConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Data plane address. Defaults to `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Admin address (`/healthz`, `/readyz`, `/metrics`). Defaults to `127.0.0.1:9090`.
    pub admin_listen: SocketAddr,
    /// Defaults to 65536.
    pub max_body_bytes: usize,
    /// Whole header section; at least 8192. Defaults to 16384.
    pub max_header_bytes: usize,
    /// Defaults to 10 s.
    pub header_read_timeout: Duration,
    /// Defaults to 10 s.
    pub body_read_timeout: Duration,
    /// Defaults to 5 s.
    pub shutdown_grace: Duration,
    /// Defaults to 1024.
    pub max_concurrent_requests: usize,
    /// Defaults to 4096.
    pub max_connections: usize,
    /// Defaults to 64.
    pub max_headers: usize,
    /// An h2 connection with no open stream this long gets GOAWAY.
    /// Defaults to 60 s.
    pub h2_idle_timeout: Duration,
    /// Streams an h2 client may reset per connection per 10 s; one more
    /// gets GOAWAY ENHANCE_YOUR_CALM. Defaults to 200.
    pub h2_max_reset_streams: usize,
    /// Inbound TLS (and mTLS with a client CA) on the data plane.
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `https://host[:port][/prefix]`, no query. Defaults to `https://api.batch.com`.
    pub base_url: http::Uri,
    /// Check and audit every request, send nothing. Defaults to false.
    pub dry_run: bool,
    pub ca_file: Option<PathBuf>,
    /// Defaults to 2 s.
    pub connect_timeout: Duration,
    /// Bounds the whole upstream exchange. Defaults to 10 s.
    pub request_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub audiences: Vec<String>,
    /// Defaults to 30.
    pub leeway_s: u64,
    /// Defaults to 900.
    pub max_token_lifetime_s: u64,
    /// Defaults to `team`.
    pub team_claim: String,
    /// Single-use `jti`s remembered; when full, new single-use tokens are
    /// refused. Defaults to 1 000 000.
    pub replay_cache_size: u64,
    pub issuers: Vec<IssuerConfig>,
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub issuer: String,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub public_keys: Vec<PathBuf>,
    pub jwks: Option<JwksConfig>,
    /// When set, the token header's `typ` must equal it (case-insensitive).
    pub typ: Option<String>,
}

#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// `https://` URL of the key set.
    pub url: http::Uri,
    /// Extra trust roots for the identity provider (PEM).
    pub ca_file: Option<PathBuf>,
    /// Defaults to 300 s.
    pub refresh: Duration,
    /// An unknown `kid` refetches at most this often. Defaults to 30 s.
    pub min_refetch: Duration,
    /// The last good set is used this long while the IdP is down. Defaults to 3600 s.
    pub stale_max: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SecretsBackend {
    File(PathBuf),
    Vault(Box<VaultConfig>),
}

/// `[secrets.vault]`: KV v2 at `<kv_mount>/data/<secret_path>`.
#[derive(Debug, Clone, PartialEq)]
pub struct VaultConfig {
    /// `https://host:port`.
    pub address: http::Uri,
    pub ca_file: Option<PathBuf>,
    /// Defaults to `secret`.
    pub kv_mount: String,
    /// Sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    pub auth: VaultAuth,
    /// Bounds each Vault call. Defaults to 2000 ms.
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum VaultAuth {
    /// From `token_file` (re-read when it changes), else `VAULT_TOKEN`.
    Token { token_file: Option<PathBuf> },
    Kubernetes {
        role: String,
        /// Defaults to the pod's service-account token.
        jwt_file: PathBuf,
        /// Defaults to `kubernetes`.
        mount: String,
    },
    AppRole {
        role_id: String,
        secret_id_file: PathBuf,
        /// Defaults to `approle`.
        mount: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct SecretsConfig {
    pub backend: SecretsBackend,
    /// Defaults to 300 s.
    pub cache_ttl: Duration,
    /// Defaults to 3600 s.
    pub stale_if_error: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Defaults to `info`; `RUST_LOG` overrides.
    pub level: String,
    /// Defaults to JSON.
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    pub file: PathBuf,
    pub hmac_key_file: PathBuf,
    /// Start a new file past this size. Defaults to 104857600 (100 MiB).
    pub rotate_bytes: u64,
    /// Rotated files whose newest record is older than this many days are
    /// removed, with a `prune` record. Defaults to 0: never removed.
    pub retention_days: u64,
    /// The trail's size budget in bytes; past it, 503 `audit_unavailable`
    /// and not ready, never a deletion. Defaults to 0: no budget.
    pub max_total_bytes: u64,
    /// Denials of requests without a verified token recorded one by one
    /// per second; the rest are counted into one `summary` record per
    /// second. Defaults to 20.
    pub unauthenticated_records_per_s: u32,
    /// Ed25519 PKCS#8 PEM: signed checkpoint records. Optional.
    pub signing_key_file: Option<PathBuf>,
    /// Defaults to 60 s.
    pub checkpoint_interval: Duration,
    /// Mirror each record on stdout. Defaults to false.
    pub stdout: bool,
}

#[derive(Debug, Clone)]
pub struct ProjectConfig {
    pub alias: String,
    pub secret_path: String,
    /// Requests per second sent to Batch for this project (its key's
    /// limit); more wait up to 1 s, then 429 `rate_limited`. Optional.
    pub upstream_rate_per_s: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct TeamConfig {
    pub name: String,
    pub grants: Vec<GrantConfig>,
}

#[derive(Debug, Clone)]
pub struct GrantConfig {
    pub project: String,
    pub actions: Vec<Action>,
    /// This grant's requests are checked and audited, never forwarded. Defaults to false.
    pub dry_run: bool,
    /// Tokens must carry `htm`, `htu`, `bh` and `jti`. Defaults to false.
    pub require_bound_token: bool,
    /// Every token needs a `jti`, accepted once. Defaults to false.
    pub single_use_tokens: bool,
    /// Token bucket per (team, project, action). Optional.
    pub rate_per_minute: Option<u32>,
    /// Requests per (team, project, action) and UTC day. Optional.
    pub daily_quota: Option<u64>,
}

/// Algorithms an issuer may pin. HMAC algorithms and `none` are impossible by
/// construction: public keys cannot verify them.
pub const ALLOWED_ALGORITHMS: &[&str] = &[
    "EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
];

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

impl Config {
    /// Reads, parses and validates `path`. Files the config names are not opened.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(
                &path.display().to_string(),
                format!("cannot read config file: {e}"),
            )
        })?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Config::parse(&text, &abs)
    }

    /// Parses and validates config text; `source` is the file it came from.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigErrors> {
        let mut problems = Problems::default();
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| ConfigErrors::one("(toml)", e.to_string()))?;
        let mut unknown = Vec::new();
        let raw: RawConfig = serde_ignored::deserialize(deserializer, |p| {
            // serde_ignored marks an Option's Some as "?": not part of the key.
            unknown.push(p.to_string().replace(".?", ""));
        })
        .map_err(|e| ConfigErrors::one("(toml)", e.to_string()))?;
        for key in unknown {
            problems.add(key, "unknown key");
        }
        let base = source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let cfg = validate(raw, &base, source, &mut problems);
        if problems.0.is_empty() {
            cfg.ok_or_else(|| ConfigErrors::one("(config)", "invalid"))
        } else {
            Err(ConfigErrors(problems.0))
        }
    }

    /// Every file that holds a secret, with its key path.
    pub fn key_files(&self) -> Vec<(String, &Path)> {
        let mut out: Vec<(String, &Path)> = vec![(
            "audit.hmac_key_file".into(),
            self.audit.hmac_key_file.as_path(),
        )];
        if let Some(k) = &self.audit.signing_key_file {
            out.push(("audit.signing_key_file".into(), k));
        }
        if let Some(t) = &self.server.tls {
            out.push(("server.tls.key_file".into(), &t.key_file));
        }
        match &self.secrets.backend {
            SecretsBackend::File(f) => out.push(("secrets.file".into(), f)),
            SecretsBackend::Vault(v) => match &v.auth {
                VaultAuth::Token { token_file } => {
                    if let Some(f) = token_file {
                        out.push(("secrets.vault.token_file".into(), f));
                    }
                }
                VaultAuth::Kubernetes { jwt_file, .. } => {
                    out.push(("secrets.vault.kubernetes_jwt_file".into(), jwt_file));
                }
                VaultAuth::AppRole { secret_id_file, .. } => {
                    out.push((
                        "secrets.vault.approle_secret_id_file".into(),
                        secret_id_file,
                    ));
                }
            },
        }
        out
    }

    /// Key files anyone may read (refused), and those their group may read
    /// (warned about).
    pub fn key_file_modes(&self) -> (Vec<Problem>, Vec<Problem>) {
        let (mut refused, mut warned) = (Problems::default(), Problems::default());
        for (key, path) in self.key_files() {
            match crate::keyfile::exposure(path) {
                crate::keyfile::Exposure::World(m) => {
                    refused.add(key, crate::keyfile::world_readable(path, m))
                }
                crate::keyfile::Exposure::Group(m) => {
                    warned.add(key, crate::keyfile::group_readable(path, m))
                }
                crate::keyfile::Exposure::Private => {}
            }
        }
        (refused.0, warned.0)
    }

    pub fn project(&self, alias: &str) -> Option<&ProjectConfig> {
        self.projects.iter().find(|p| p.alias == alias)
    }
}

fn validate(raw: RawConfig, base: &Path, source: &Path, p: &mut Problems) -> Option<Config> {
    let resolve = |s: &str| -> PathBuf {
        let path = Path::new(s);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        }
    };

    // [server]
    let s = raw.server;
    let addr = |key: &str, v: Option<String>, default: &str, p: &mut Problems| {
        let text = v.unwrap_or_else(|| default.to_string());
        text.parse::<SocketAddr>().unwrap_or_else(|_| {
            p.add(
                format!("server.{key}"),
                format!("{text:?} is not an IP:port address"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    };
    let listen = addr("listen", s.listen, "127.0.0.1:8080", p);
    let admin_listen = addr("admin_listen", s.admin_listen, "127.0.0.1:9090", p);
    if listen == admin_listen && listen.port() != 0 {
        p.add(
            "server.admin_listen",
            "must differ from server.listen (the admin plane is never on the data port)",
        );
    }
    let positive = |key: &str, v: Option<u64>, default: u64, p: &mut Problems| -> u64 {
        let v = v.unwrap_or(default);
        if v == 0 {
            p.add(format!("server.{key}"), "must be greater than 0");
        }
        v
    };
    let max_body_bytes = positive("max_body_bytes", s.max_body_bytes, 65536, p);
    let max_header_bytes = s.max_header_bytes.unwrap_or(16384);
    if max_header_bytes < 8192 {
        p.add("server.max_header_bytes", "must be at least 8192");
    }
    let max_concurrent_requests = positive(
        "max_concurrent_requests",
        s.max_concurrent_requests,
        1024,
        p,
    );
    let max_connections = positive("max_connections", s.max_connections, 4096, p);
    let max_headers = positive("max_headers", s.max_headers, 64, p);
    positive("header_read_timeout_ms", s.header_read_timeout_ms, 10000, p);
    positive("body_read_timeout_ms", s.body_read_timeout_ms, 10000, p);
    positive("h2_idle_timeout_ms", s.h2_idle_timeout_ms, 60000, p);
    let h2_max_reset_streams = positive("h2_max_reset_streams", s.h2_max_reset_streams, 200, p);
    if h2_max_reset_streams > 100_000 {
        p.add("server.h2_max_reset_streams", "must be at most 100000");
    }
    let tls = s.tls.map(|t| {
        if t.cert_file.is_none() {
            p.add("server.tls.cert_file", "required with [server.tls]");
        }
        if t.key_file.is_none() {
            p.add("server.tls.key_file", "required with [server.tls]");
        }
        TlsConfig {
            cert_file: resolve(t.cert_file.as_deref().unwrap_or_default()),
            key_file: resolve(t.key_file.as_deref().unwrap_or_default()),
            client_ca_file: t.client_ca_file.as_deref().map(resolve),
        }
    });
    let server = ServerConfig {
        listen,
        admin_listen,
        max_body_bytes: max_body_bytes as usize,
        max_header_bytes: max_header_bytes as usize,
        header_read_timeout: ms(s.header_read_timeout_ms, 10000),
        body_read_timeout: ms(s.body_read_timeout_ms, 10000),
        shutdown_grace: ms(s.shutdown_grace_ms, 5000),
        max_concurrent_requests: max_concurrent_requests as usize,
        max_connections: max_connections as usize,
        max_headers: max_headers as usize,
        h2_idle_timeout: ms(s.h2_idle_timeout_ms, 60000),
        h2_max_reset_streams: h2_max_reset_streams as usize,
        tls,
    };

    // [upstream]
    let u = raw.upstream;
    let base_text = u
        .base_url
        .unwrap_or_else(|| "https://api.batch.com".to_string());
    let base_url = match base_text.parse::<http::Uri>() {
        Ok(uri)
            if uri.scheme_str() == Some("https")
                && uri.authority().is_some()
                && uri.query().is_none() =>
        {
            uri
        }
        _ => {
            p.add(
                "upstream.base_url",
                format!("{base_text:?} must be an https:// URL with a host and no query"),
            );
            http::Uri::from_static("https://invalid.invalid")
        }
    };
    let connect_timeout = ms(u.connect_timeout_ms, 2000);
    let request_timeout = ms(u.request_timeout_ms, 10000);
    if request_timeout.is_zero() {
        p.add("upstream.request_timeout_ms", "must be greater than 0");
    }
    if connect_timeout.is_zero() {
        p.add("upstream.connect_timeout_ms", "must be greater than 0");
    }
    let upstream = UpstreamConfig {
        base_url,
        dry_run: u.dry_run.unwrap_or(false),
        ca_file: u.ca_file.as_deref().map(resolve),
        connect_timeout,
        request_timeout,
    };

    // [auth]
    let auth = match raw.auth {
        None => {
            p.add(
                "auth",
                "missing: at least auth.audiences and one [[auth.issuers]]",
            );
            None
        }
        Some(a) => {
            let replay_cache_size = a.replay_cache_size.unwrap_or(1_000_000);
            if replay_cache_size == 0 {
                p.add("auth.replay_cache_size", "must be greater than 0");
            }
            let audiences = a.audiences.unwrap_or_default();
            if audiences.is_empty() || audiences.iter().any(String::is_empty) {
                p.add(
                    "auth.audiences",
                    "must list at least one non-empty audience",
                );
            }
            if a.issuers.is_empty() {
                p.add("auth.issuers", "at least one [[auth.issuers]] is required");
            }
            let team_claim = a.team_claim.unwrap_or_else(|| "team".to_string());
            if team_claim.is_empty() {
                p.add("auth.team_claim", "must not be empty");
            }
            let mut seen = BTreeSet::new();
            let issuers = a
                .issuers
                .into_iter()
                .enumerate()
                .map(|(i, iss)| validate_issuer(i, iss, &resolve, &mut seen, p))
                .collect();
            Some(AuthConfig {
                audiences,
                leeway_s: a.leeway_s.unwrap_or(30),
                max_token_lifetime_s: a.max_token_lifetime_s.unwrap_or(900),
                team_claim,
                replay_cache_size,
                issuers,
            })
        }
    };

    // [secrets]
    let secrets = match raw.secrets {
        None => {
            p.add("secrets", "missing: backend and file");
            None
        }
        Some(sec) => {
            let backend_name = sec.backend.as_deref().unwrap_or("file");
            if backend_name != "vault" && sec.vault.is_some() {
                p.add("secrets.vault", "only meaningful with backend = \"vault\"");
            }
            let backend = match backend_name {
                "file" => match sec.file {
                    Some(f) => Some(SecretsBackend::File(resolve(&f))),
                    None => {
                        p.add("secrets.file", "required when backend = \"file\"");
                        None
                    }
                },
                "vault" => match sec.vault {
                    None => {
                        p.add("secrets.vault", "required when backend = \"vault\"");
                        None
                    }
                    Some(v) => {
                        validate_vault(v, &resolve, p).map(|v| SecretsBackend::Vault(Box::new(v)))
                    }
                },
                other => {
                    p.add(
                        "secrets.backend",
                        format!("{other:?} is not a backend (\"file\" or \"vault\")"),
                    );
                    None
                }
            };
            backend.map(|backend| SecretsConfig {
                backend,
                cache_ttl: Duration::from_secs(sec.cache_ttl_s.unwrap_or(300)),
                stale_if_error: Duration::from_secs(sec.stale_if_error_s.unwrap_or(3600)),
            })
        }
    };

    // [log]
    let format = match raw.log.format.as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            p.add(
                "log.format",
                format!("{other:?} is not \"json\" or \"text\""),
            );
            LogFormat::Json
        }
    };
    let level = raw.log.level.unwrap_or_else(|| "info".to_string());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        p.add(
            "log.level",
            format!("{level:?} is not a log level or filter"),
        );
    }
    let log = LogConfig { level, format };

    // [audit]
    let audit = match raw.audit {
        None => {
            p.add("audit", "missing: file and hmac_key_file");
            None
        }
        Some(a) => {
            let rotate_bytes = a.rotate_bytes.unwrap_or(104_857_600);
            if rotate_bytes < 4096 {
                p.add("audit.rotate_bytes", "must be at least 4096");
            }
            let checkpoint_interval_s = a.checkpoint_interval_s.unwrap_or(60);
            if checkpoint_interval_s == 0 {
                p.add("audit.checkpoint_interval_s", "must be greater than 0");
            }
            if a.keep_files.is_some() {
                p.add(
                    "audit.keep_files",
                    "no longer supported: files are not removed by count any more; use \
                     retention_days (rotated files older than this are removed, with a prune \
                     record) and max_total_bytes (a size budget that refuses requests, never \
                     deletes)",
                );
            }
            let retention_days = a.retention_days.unwrap_or(0);
            if retention_days > 36_500 {
                p.add(
                    "audit.retention_days",
                    "must be at most 36500 (0 = never remove)",
                );
            }
            let max_total_bytes = a.max_total_bytes.unwrap_or(0);
            if max_total_bytes != 0 && max_total_bytes < rotate_bytes.saturating_mul(2) {
                p.add(
                    "audit.max_total_bytes",
                    "must be 0 (no budget) or at least twice rotate_bytes",
                );
            }
            if a.file.is_none() {
                p.add("audit.file", "required");
            }
            if a.hmac_key_file.is_none() {
                p.add("audit.hmac_key_file", "required");
            }
            match (a.file, a.hmac_key_file) {
                (Some(f), Some(k)) => Some(AuditConfig {
                    file: resolve(&f),
                    hmac_key_file: resolve(&k),
                    rotate_bytes,
                    retention_days,
                    max_total_bytes,
                    unauthenticated_records_per_s: a.unauthenticated_records_per_s.unwrap_or(20),
                    signing_key_file: a.signing_key_file.as_deref().map(resolve),
                    checkpoint_interval: Duration::from_secs(checkpoint_interval_s),
                    stdout: a.stdout.unwrap_or(false),
                }),
                _ => None,
            }
        }
    };

    // [[projects]]
    let mut aliases: HashMap<String, usize> = HashMap::new();
    let mut projects = Vec::new();
    for (i, pr) in raw.projects.into_iter().enumerate() {
        let alias = pr.alias.unwrap_or_default();
        if !valid_alias(&alias) {
            p.add(
                format!("projects[{i}].alias"),
                format!("{alias:?} must be 1-64 characters of a-z, A-Z, 0-9, '.', '_' or '-'"),
            );
        } else if aliases.insert(alias.clone(), i).is_some() {
            p.add(
                format!("projects[{i}].alias"),
                format!("{alias:?} is defined twice"),
            );
        }
        let secret_path = pr.secret_path.unwrap_or_default();
        if secret_path.is_empty() {
            p.add(format!("projects[{i}].secret_path"), "required");
        }
        let upstream_rate_per_s = match pr.upstream_rate_per_s {
            Some(0) => {
                p.add(
                    format!("projects[{i}].upstream_rate_per_s"),
                    "must be greater than 0",
                );
                None
            }
            Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            None => None,
        };
        projects.push(ProjectConfig {
            alias,
            secret_path,
            upstream_rate_per_s,
        });
    }

    // [[teams]]
    let mut team_names = BTreeSet::new();
    let mut teams = Vec::new();
    for (i, t) in raw.teams.into_iter().enumerate() {
        let name = t.name.unwrap_or_default();
        if name.is_empty() {
            p.add(format!("teams[{i}].name"), "required");
        } else if !team_names.insert(name.clone()) {
            p.add(
                format!("teams[{i}].name"),
                format!("{name:?} is defined twice"),
            );
        }
        let mut grants = Vec::new();
        for (j, g) in t.grants.into_iter().enumerate() {
            let key = format!("teams[{i}].grants[{j}]");
            let rate_per_minute = match g.rate_per_minute {
                Some(0) => {
                    p.add(format!("{key}.rate_per_minute"), "must be greater than 0");
                    None
                }
                Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
                None => None,
            };
            if g.daily_quota == Some(0) {
                p.add(format!("{key}.daily_quota"), "must be greater than 0");
            }
            let project = g.project.unwrap_or_default();
            if !aliases.contains_key(&project) {
                p.add(
                    format!("{key}.project"),
                    format!("{project:?} is not a [[projects]] alias"),
                );
            }
            let mut actions = Vec::new();
            let raw_actions = g.actions.unwrap_or_default();
            if raw_actions.is_empty() {
                p.add(format!("{key}.actions"), "must list at least one action");
            }
            for a in raw_actions {
                match Action::from_name(&a) {
                    Some(act) => actions.push(act),
                    None => p.add(
                        format!("{key}.actions"),
                        format!(
                            "{a:?} is not an action (known: {})",
                            Action::names().join(", ")
                        ),
                    ),
                }
            }
            grants.push(GrantConfig {
                project,
                actions,
                dry_run: g.dry_run.unwrap_or(false),
                require_bound_token: g.require_bound_token.unwrap_or(false),
                single_use_tokens: g.single_use_tokens.unwrap_or(false),
                rate_per_minute,
                daily_quota: g.daily_quota,
            });
        }
        teams.push(TeamConfig { name, grants });
    }

    Some(Config {
        source: source.to_path_buf(),
        server,
        upstream,
        auth: auth?,
        secrets: secrets?,
        log,
        audit: audit?,
        projects,
        teams,
    })
}

fn validate_issuer(
    i: usize,
    iss: RawIssuer,
    resolve: &dyn Fn(&str) -> PathBuf,
    seen: &mut BTreeSet<String>,
    p: &mut Problems,
) -> IssuerConfig {
    let key = format!("auth.issuers[{i}]");
    let issuer = iss.issuer.unwrap_or_default();
    if issuer.is_empty() {
        p.add(format!("{key}.issuer"), "required");
    } else if !seen.insert(issuer.clone()) {
        p.add(
            format!("{key}.issuer"),
            format!("{issuer:?} is configured twice"),
        );
    }
    let mut algorithms = Vec::new();
    let names = iss.algorithms.unwrap_or_default();
    if names.is_empty() {
        p.add(
            format!("{key}.algorithms"),
            "must pin at least one algorithm",
        );
    }
    for name in names {
        match name.parse::<jsonwebtoken::Algorithm>() {
            Ok(alg) if ALLOWED_ALGORITHMS.contains(&name.as_str()) => algorithms.push(alg),
            _ => p.add(
                format!("{key}.algorithms"),
                format!(
                    "{name:?} is not allowed (one of {}; HMAC and none never are)",
                    ALLOWED_ALGORITHMS.join(", ")
                ),
            ),
        }
    }
    let public_keys: Vec<PathBuf> = iss
        .public_keys
        .unwrap_or_default()
        .iter()
        .map(|k| resolve(k))
        .collect();
    let jwks = match iss.jwks_url {
        None => {
            for (name, present) in [
                ("jwks_ca_file", iss.jwks_ca_file.is_some()),
                ("jwks_refresh_s", iss.jwks_refresh_s.is_some()),
                ("jwks_min_refetch_s", iss.jwks_min_refetch_s.is_some()),
                ("jwks_stale_max_s", iss.jwks_stale_max_s.is_some()),
            ] {
                if present {
                    p.add(format!("{key}.{name}"), "only meaningful with jwks_url");
                }
            }
            None
        }
        Some(url) => {
            let uri = match url.parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("https") && u.authority().is_some() => u,
                _ => {
                    p.add(
                        format!("{key}.jwks_url"),
                        format!("{url:?} must be an https:// URL"),
                    );
                    http::Uri::from_static("https://invalid.invalid")
                }
            };
            let secs = |name: &str, v: Option<u64>, default: u64, p: &mut Problems| {
                let v = v.unwrap_or(default);
                if v == 0 {
                    p.add(format!("{key}.{name}"), "must be greater than 0");
                }
                Duration::from_secs(v)
            };
            Some(JwksConfig {
                url: uri,
                ca_file: iss.jwks_ca_file.as_deref().map(resolve),
                refresh: secs("jwks_refresh_s", iss.jwks_refresh_s, 300, p),
                min_refetch: secs("jwks_min_refetch_s", iss.jwks_min_refetch_s, 30, p),
                stale_max: secs("jwks_stale_max_s", iss.jwks_stale_max_s, 3600, p),
            })
        }
    };
    if public_keys.is_empty() && jwks.is_none() {
        p.add(
            format!("{key}.public_keys"),
            "give public_keys (PEM files), jwks_url, or both",
        );
    }
    if iss.typ.as_deref() == Some("") {
        p.add(format!("{key}.typ"), "must not be empty when set");
    }
    IssuerConfig {
        issuer,
        algorithms,
        public_keys,
        jwks,
        typ: iss.typ,
    }
}

fn validate_vault(
    v: RawVault,
    resolve: &dyn Fn(&str) -> PathBuf,
    p: &mut Problems,
) -> Option<VaultConfig> {
    let address = match v.address.as_deref().map(str::parse::<http::Uri>) {
        Some(Ok(u)) if u.scheme_str() == Some("https") && u.authority().is_some() => Some(u),
        Some(_) => {
            p.add("secrets.vault.address", "must be an https:// URL");
            None
        }
        None => {
            p.add("secrets.vault.address", "required");
            None
        }
    };
    let auth_name = v.auth.as_deref().unwrap_or("token");
    let stray = |p: &mut Problems, name: &str, present: bool, method: &str| {
        if present {
            p.add(
                format!("secrets.vault.{name}"),
                format!("only meaningful with auth = \"{method}\""),
            );
        }
    };
    if auth_name != "token" {
        stray(p, "token_file", v.token_file.is_some(), "token");
    }
    if auth_name != "kubernetes" {
        stray(
            p,
            "kubernetes_role",
            v.kubernetes_role.is_some(),
            "kubernetes",
        );
        stray(
            p,
            "kubernetes_jwt_file",
            v.kubernetes_jwt_file.is_some(),
            "kubernetes",
        );
        stray(
            p,
            "kubernetes_mount",
            v.kubernetes_mount.is_some(),
            "kubernetes",
        );
    }
    if auth_name != "approle" {
        stray(p, "approle_role_id", v.approle_role_id.is_some(), "approle");
        stray(
            p,
            "approle_secret_id_file",
            v.approle_secret_id_file.is_some(),
            "approle",
        );
        stray(p, "approle_mount", v.approle_mount.is_some(), "approle");
    }
    let auth = match auth_name {
        "token" => Some(VaultAuth::Token {
            token_file: v.token_file.as_deref().map(resolve),
        }),
        "kubernetes" => match v.kubernetes_role {
            Some(role) if !role.is_empty() => Some(VaultAuth::Kubernetes {
                role,
                jwt_file: resolve(
                    v.kubernetes_jwt_file
                        .as_deref()
                        .unwrap_or("/var/run/secrets/kubernetes.io/serviceaccount/token"),
                ),
                mount: v.kubernetes_mount.unwrap_or_else(|| "kubernetes".into()),
            }),
            _ => {
                p.add(
                    "secrets.vault.kubernetes_role",
                    "required with auth = \"kubernetes\"",
                );
                None
            }
        },
        "approle" => match (v.approle_role_id, v.approle_secret_id_file) {
            (Some(role_id), Some(file)) if !role_id.is_empty() => Some(VaultAuth::AppRole {
                role_id,
                secret_id_file: resolve(&file),
                mount: v.approle_mount.unwrap_or_else(|| "approle".into()),
            }),
            _ => {
                p.add(
                    "secrets.vault",
                    "auth = \"approle\" needs approle_role_id and approle_secret_id_file",
                );
                None
            }
        },
        other => {
            p.add(
                "secrets.vault.auth",
                format!("{other:?} is not \"token\", \"kubernetes\" or \"approle\""),
            );
            None
        }
    };
    let mount = v.kv_mount.unwrap_or_else(|| "secret".into());
    if mount.is_empty() || mount.contains("..") || mount.starts_with('/') {
        p.add(
            "secrets.vault.kv_mount",
            "must be a mount path like \"secret\"",
        );
    }
    let timeout = v.request_timeout_ms.unwrap_or(2000);
    if timeout == 0 {
        p.add("secrets.vault.request_timeout_ms", "must be greater than 0");
    }
    Some(VaultConfig {
        address: address?,
        ca_file: v.ca_file.as_deref().map(resolve),
        kv_mount: mount.trim_end_matches('/').to_string(),
        namespace: v.namespace,
        auth: auth?,
        request_timeout: Duration::from_millis(timeout),
    })
}

/// Aliases travel in a header and in audit records: keep them plain.
fn valid_alias(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
pub(crate) mod tests;
