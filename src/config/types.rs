//! The typed configuration every component reads, and the problems a
//! config can have (each with its key path).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    pub(super) fn one(key: &str, message: impl Into<String>) -> Self {
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
    /// `[shared_state]`: absent, every limit is per replica.
    pub shared_state: Option<SharedStateConfig>,
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
    pub team_claim: TeamClaim,
    /// Single-use `jti`s remembered; when full, new single-use tokens are
    /// refused. Defaults to 1 000 000.
    pub replay_cache_size: u64,
    pub issuers: Vec<IssuerConfig>,
}

impl AuthConfig {
    /// The longest lifetime any issuer's tokens may have: how long a spent
    /// single-use `jti` must be remembered.
    pub fn longest_token_lifetime_s(&self) -> u64 {
        self.issuers
            .iter()
            .filter_map(|i| i.max_token_lifetime_s)
            .fold(self.max_token_lifetime_s, u64::max)
    }
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub issuer: String,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub public_keys: Vec<PathBuf>,
    pub jwks: Option<JwksConfig>,
    /// When not empty, the token header's `typ` must equal one of these
    /// (case-insensitive, an `application/` prefix ignored).
    pub typ: Vec<String>,
    /// This issuer's own lifetime cap; else `[auth] max_token_lifetime_s`.
    pub max_token_lifetime_s: Option<u64>,
    /// This issuer's own team claim; else `[auth] team_claim`.
    pub team_claim: Option<TeamClaim>,
}

/// Where a token names its caller's team(s): a top-level claim, or a JSON
/// Pointer (RFC 6901) into nested claims (`/kubernetes.io/namespace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamClaim(String);

impl TeamClaim {
    /// `text` as configured: a pointer when it starts with `/`. `Err` says
    /// what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        if text.is_empty() {
            return Err("must not be empty");
        }
        if text.starts_with('/') {
            // RFC 6901 §3: `~` is only ever followed by 0 or 1; an empty
            // first segment would name the claim "".
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                    return Err("is not a JSON Pointer: `~` must be followed by 0 or 1");
                }
            }
            if text.starts_with("//") || text == "/" {
                return Err("is not a JSON Pointer to a claim: the first segment is empty");
            }
        }
        Ok(TeamClaim(text.to_string()))
    }

    /// As configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value this claim names in a token's payload.
    pub fn find<'a>(&self, payload: &'a crate::json::Members) -> Option<&'a serde_json::Value> {
        let Some(pointer) = self.0.strip_prefix('/') else {
            return payload.get(&self.0);
        };
        let (first, rest) = match pointer.find('/') {
            Some(at) => (&pointer[..at], &pointer[at..]),
            None => (pointer, ""),
        };
        let name = first.replace("~1", "/").replace("~0", "~");
        let top = payload.get(&name)?;
        if rest.is_empty() {
            Some(top)
        } else {
            top.pointer(rest)
        }
    }
}

impl Default for TeamClaim {
    fn default() -> Self {
        TeamClaim(super::defaults::TEAM_CLAIM.to_string())
    }
}

#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// Where the key set comes from.
    pub source: KeySource,
    /// Sent as `Authorization: Bearer` when fetching (a Kubernetes API
    /// server asks for one); read again at every fetch, so a rotated token
    /// is picked up.
    pub bearer_token_file: Option<PathBuf>,
    /// Extra trust roots for the identity provider (PEM).
    pub ca_file: Option<PathBuf>,
    /// Defaults to 300 s.
    pub refresh: Duration,
    /// An unknown `kid` refetches at most this often. Defaults to 30 s.
    pub min_refetch: Duration,
    /// The last good set is used this long while the IdP is down. Defaults to 3600 s.
    pub stale_max: Duration,
}

/// Where an issuer's key set is fetched from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `jwks_url`.
    Url(http::Uri),
    /// `discovery_url`: an OpenID Provider configuration document whose
    /// `jwks_uri` names the set and whose `issuer` must be the issuer's.
    Discovery(http::Uri),
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
    /// Recorded in every record as `replica`. Defaults to the
    /// `BATCH_GATEWAY_REPLICA` environment variable, else the host name.
    pub replica: String,
}

/// Where the shared state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://host:port[/db]` or `rediss://` (TLS).
    Url(String),
    /// Redis Sentinel: the master named `master`, found through `urls`.
    Sentinel { urls: Vec<String>, master: String },
}

/// `[shared_state]` (backend `redis`): the limits and single-use `jti`s
/// every replica shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedStateConfig {
    pub target: RedisTarget,
    /// Trust roots (PEM) for `rediss://`.
    pub ca_file: Option<PathBuf>,
    /// The ACL user.
    pub username: Option<String>,
    /// The ACL user's password, read from this file (one trailing newline
    /// stripped).
    pub password_file: Option<PathBuf>,
    /// Every key starts with it. Defaults to `bgw:`.
    pub key_prefix: String,
    /// Bounds every call. Defaults to 25 ms.
    pub timeout: Duration,
    /// While the store is unavailable each replica allows this share of
    /// every rate and quota. Defaults to 2 (the chart's replica count).
    pub fallback_replicas: u32,
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
    /// Tokens whose `(iss, sub)` match belong to this team, whatever
    /// their team claim.
    pub members: Vec<MemberConfig>,
    pub grants: Vec<GrantConfig>,
}

/// `[[teams.members]]`: an issuer and a subject pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberConfig {
    /// Exactly one configured issuer.
    pub issuer: String,
    /// The subject as configured: exact, or a prefix ending in `*`.
    pub subject: String,
}

impl MemberConfig {
    /// The token's verified `(iss, sub)` is this member: the issuer
    /// exactly, the subject exactly or by its prefix.
    pub fn matches(&self, iss: &str, sub: &str) -> bool {
        if iss != self.issuer {
            return false;
        }
        match self.subject.strip_suffix('*') {
            Some(prefix) => sub.starts_with(prefix) && sub.len() > prefix.len(),
            None => sub == self.subject,
        }
    }
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
