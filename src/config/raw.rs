//! The config file's raw shape: exactly the contract's keys, every value
//! optional, unknown keys reported by the caller (serde_ignored).

use serde::Deserialize;

#[derive(Deserialize, Default)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) upstream: RawUpstream,
    pub(super) auth: Option<RawAuth>,
    pub(super) secrets: Option<RawSecrets>,
    #[serde(default)]
    pub(super) log: RawLog,
    pub(super) audit: Option<RawAudit>,
    pub(super) shared_state: Option<RawSharedState>,
    #[serde(default)]
    pub(super) projects: Vec<RawProject>,
    #[serde(default)]
    pub(super) teams: Vec<RawTeam>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) max_header_bytes: Option<u64>,
    pub(super) header_read_timeout_ms: Option<u64>,
    pub(super) shutdown_grace_ms: Option<u64>,
    pub(super) max_concurrent_requests: Option<u64>,
    pub(super) max_connections: Option<u64>,
    pub(super) body_read_timeout_ms: Option<u64>,
    pub(super) max_headers: Option<u64>,
    pub(super) h2_idle_timeout_ms: Option<u64>,
    pub(super) h2_max_reset_streams: Option<u64>,
    pub(super) tls: Option<RawTls>,
}

#[derive(Deserialize)]
pub(super) struct RawTls {
    pub(super) cert_file: Option<String>,
    pub(super) key_file: Option<String>,
    pub(super) client_ca_file: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawUpstream {
    pub(super) base_url: Option<String>,
    pub(super) dry_run: Option<bool>,
    pub(super) ca_file: Option<String>,
    pub(super) connect_timeout_ms: Option<u64>,
    pub(super) request_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct RawAuth {
    pub(super) audiences: Option<Vec<String>>,
    pub(super) leeway_s: Option<u64>,
    pub(super) max_token_lifetime_s: Option<u64>,
    pub(super) team_claim: Option<String>,
    pub(super) replay_cache_size: Option<u64>,
    #[serde(default)]
    pub(super) issuers: Vec<RawIssuer>,
}

#[derive(Deserialize)]
pub(super) struct RawIssuer {
    pub(super) issuer: Option<String>,
    pub(super) algorithms: Option<Vec<String>>,
    pub(super) public_keys: Option<Vec<String>>,
    pub(super) jwks_url: Option<String>,
    pub(super) jwks_ca_file: Option<String>,
    pub(super) jwks_refresh_s: Option<u64>,
    pub(super) jwks_min_refetch_s: Option<u64>,
    pub(super) jwks_stale_max_s: Option<u64>,
    pub(super) typ: Option<RawTyp>,
    pub(super) discovery_url: Option<String>,
    pub(super) jwks_bearer_token_file: Option<String>,
    pub(super) max_token_lifetime_s: Option<u64>,
    pub(super) team_claim: Option<String>,
}

/// `typ`: one value, or the several an issuer uses (SPIFFE: `JWT`, `JOSE`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawTyp {
    One(String),
    Several(Vec<String>),
}

#[derive(Deserialize)]
pub(super) struct RawSecrets {
    pub(super) backend: Option<String>,
    pub(super) file: Option<String>,
    pub(super) cache_ttl_s: Option<u64>,
    pub(super) stale_if_error_s: Option<u64>,
    pub(super) vault: Option<RawVault>,
}

#[derive(Deserialize)]
pub(super) struct RawVault {
    pub(super) address: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) kv_mount: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) auth: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) kubernetes_role: Option<String>,
    pub(super) kubernetes_jwt_file: Option<String>,
    pub(super) kubernetes_mount: Option<String>,
    pub(super) approle_role_id: Option<String>,
    pub(super) approle_secret_id_file: Option<String>,
    pub(super) approle_mount: Option<String>,
    pub(super) request_timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawLog {
    pub(super) level: Option<String>,
    pub(super) format: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawAudit {
    pub(super) file: Option<String>,
    pub(super) hmac_key_file: Option<String>,
    pub(super) rotate_bytes: Option<u64>,
    /// Removed: read only to say what replaced it.
    pub(super) keep_files: Option<toml::Value>,
    pub(super) retention_days: Option<u64>,
    pub(super) max_total_bytes: Option<u64>,
    pub(super) unauthenticated_records_per_s: Option<u32>,
    pub(super) signing_key_file: Option<String>,
    pub(super) checkpoint_interval_s: Option<u64>,
    pub(super) stdout: Option<bool>,
    pub(super) replica: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawSharedState {
    pub(super) backend: Option<String>,
    pub(super) url: Option<String>,
    pub(super) sentinel_urls: Option<Vec<String>>,
    pub(super) sentinel_master: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) key_prefix: Option<String>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) fallback_replicas: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct RawProject {
    pub(super) alias: Option<String>,
    pub(super) secret_path: Option<String>,
    pub(super) upstream_rate_per_s: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct RawTeam {
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) members: Vec<RawMember>,
    #[serde(default)]
    pub(super) grants: Vec<RawGrant>,
}

#[derive(Deserialize)]
pub(super) struct RawMember {
    pub(super) issuer: Option<String>,
    pub(super) subject: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct RawGrant {
    pub(super) project: Option<String>,
    pub(super) actions: Option<Vec<String>>,
    pub(super) require_bound_token: Option<bool>,
    pub(super) single_use_tokens: Option<bool>,
    pub(super) dry_run: Option<bool>,
    pub(super) rate_per_minute: Option<u64>,
    pub(super) daily_quota: Option<u64>,
}
