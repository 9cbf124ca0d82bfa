//! The audit record schema, as pure data: what each record holds and how
//! serde writes it, the chain's constants and the bytes a checkpoint signs.
//! Imports nothing of the crate; every other part of the trail, and the
//! steps that fill a record, stand on it.

use std::borrow::Cow;
use std::sync::Arc;

use serde::Serialize;

/// The `prev` of the first record of a chain.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// (The default only so that `Record` can derive `Default`;
    /// [`Record::new`] always names the phase.)
    #[default]
    Denied,
    Attempt,
    Outcome,
    Repair,
    Checkpoint,
    /// Denials of requests without a verified token past the per-second
    /// budget, counted.
    Summary,
    /// The first record of a file a rotation opened.
    Rotate,
    /// Rotated files removed by retention, accounted for.
    Prune,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

/// The verified caller, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub iss: String,
    pub sub: String,
    /// A string, or an array when the team claim named several teams.
    pub team: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    pub token_fp: String,
    /// The token was single-use and its `jti` is spent by this request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub single_use: Option<bool>,
    /// On single-use tokens: the token's `exp`, so that a restart holds
    /// its `jti` exactly as long as the running gateway did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamOutcome {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub latency_ms: u64,
}

/// One audit record. `v`, `seq`, `ts` and `prev` are set by the writer.
/// What every record of a request shares is reference-counted, so building
/// a request's records copies no strings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    pub v: u32,
    pub seq: u64,
    pub ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Arc<str>>,
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unverified: Option<Unverified>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_request_id: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<Arc<Caller>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fp: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_source: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// The mTLS client certificate's subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<Arc<str>>,
    /// Which limits decided an attempt when `[shared_state]` is set:
    /// `shared` (the fleet's, in the store) or `local` (this replica's
    /// share while the store was unavailable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<&'static str>,
    /// The replica that wrote the record (set by the writer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<Arc<str>>,
    /// On `repair` records: what was found and sealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<serde_json::Value>,
    /// On `checkpoint` records: the hash of the record before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// On `checkpoint` records: Ed25519 over [`checkpoint_message`],
    /// base64url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// On `checkpoint` records: which bytes `sig` covers (2: seq, ts and
    /// head; absent on checkpoints written before, which signed `head`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig_format: Option<u32>,
    /// On `rotate` records: the rotated file this one continues.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follows: Option<String>,
    /// On `prune` records: each removed file, its seq range and the hash
    /// of its last line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<serde_json::Value>,
    /// On `rotate` and `prune` records: every record up to `seq` was
    /// removed by retention, the last of them hashing to `hash`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned_through: Option<PrunedThrough>,
    /// On `summary` records: denials counted, not recorded one by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_reason: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_client_addr: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_end: Option<String>,
    pub prev: String,
}

/// How far retention removed the start of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PrunedThrough {
    pub seq: u64,
    pub hash: String,
}

/// The bytes a checkpoint's `sig` covers (`sig_format` 2): its `seq`, its
/// `ts` and its `head`, each on a line of its own after a fixed label, so
/// that a signature can be moved neither to another place in the chain
/// nor to another time.
pub fn checkpoint_message(seq: u64, ts: &str, head: &str) -> Vec<u8> {
    format!("batch-gateway audit checkpoint v2\n{seq}\n{ts}\n{head}").into_bytes()
}

impl Record {
    pub fn new(phase: Phase) -> Self {
        Record {
            v: 1,
            phase,
            ..Record::default()
        }
    }
}

/// What a rejected token claimed (kept apart from the verified caller).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Unverified {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
}

/// A parsed record's `ts` as unix seconds.
pub fn record_unix_ts(rec: &serde_json::Value) -> Option<i64> {
    let ts = rec.get("ts")?.as_str()?;
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}
