//! Steps 7 and 9 (and every denial): the audit trail.
//!
//! Records are typed data serialized by serde, one JSON object per line,
//! chained by `prev` = SHA-256 of the previous line. Requests write their
//! records under one lock, a turn's records in one `write`; records that
//! must be durable (the `attempt` before anything goes upstream) are waited
//! for until a syncer thread's `fsync` returned, and one `fsync` covers
//! every record written before it began. Diagnostics (`tracing`) never
//! share this sink.

pub mod lines;
pub mod report;
pub mod verify;
mod writer;

use std::borrow::Cow;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use serde::Serialize;
use sha2::Sha256;

use crate::authn::Unverified;

/// The `prev` of the first record of a chain.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
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
#[derive(Debug, Clone, Serialize)]
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
            seq: 0,
            ts: String::new(),
            request_id: None,
            phase,
            decision: None,
            reason: None,
            detail: None,
            unverified: None,
            caller_request_id: None,
            caller: None,
            client_addr: None,
            method: None,
            path: None,
            action: None,
            project: None,
            campaign_id: None,
            key_fp: None,
            upstream: None,
            secret_source: None,
            secret_version: None,
            dry_run: None,
            client_cert: None,
            found: None,
            head: None,
            sig: None,
            sig_format: None,
            follows: None,
            removed: None,
            pruned_through: None,
            count: None,
            by_reason: None,
            by_client_addr: None,
            window_start: None,
            window_end: None,
            prev: String::new(),
        }
    }
}

/// The key behind `token_fp` and `key_fp`, held as HMAC-SHA256 already
/// keyed (the key's inner and outer blocks absorbed), so that each
/// fingerprint hashes only its data. That state is as sensitive as the key
/// and, like the key before it, lives as long as the process and prints
/// nothing; the raw key bytes are zeroized once it is built.
#[derive(Clone)]
pub struct HmacKey(Hmac<Sha256>);

#[derive(Debug, thiserror::Error)]
pub enum HmacKeyError {
    #[error("cannot read the audit HMAC key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the audit HMAC key in {path} is shorter than 32 bytes")]
    TooShort { path: String },
}

impl HmacKey {
    /// The file's bytes, one trailing newline stripped, at least 32 bytes.
    pub fn load(path: &Path) -> Result<Self, HmacKeyError> {
        let mut bytes = std::fs::read(path).map_err(|source| HmacKeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        if bytes.len() < 32 {
            return Err(HmacKeyError::TooShort {
                path: path.display().to_string(),
            });
        }
        Ok(Self::from_bytes(bytes))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let key = SecretBox::new(Box::new(bytes));
        // HMAC takes keys of any length (RFC 2104): for `Hmac`,
        // `new_from_slice` never fails; the fallback is unreachable.
        let mac = Hmac::<Sha256>::new_from_slice(key.expose_secret())
            .unwrap_or_else(|_| Hmac::<Sha256>::new(&Default::default()));
        HmacKey(mac)
    }

    /// HMAC-SHA256 of `data`, the first 16 lowercase hex characters.
    pub fn fingerprint(&self, data: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(data);
        hex::encode(&mac.finalize().into_bytes()[..8])
    }
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey([REDACTED])")
    }
}

/// The audit trail could not take a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit file cannot be written")]
    Unavailable,
}

pub use writer::{AuditLog, Options, Signer, rotated_files};

/// Checks that the audit file (or its folder) can be created and written.
pub fn check_writable(path: &Path) -> std::io::Result<()> {
    if path.exists() {
        OpenOptions::new().append(true).open(path).map(drop)
    } else {
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut probe = dir.to_path_buf();
        // The nearest existing ancestor must be a writable folder.
        while !probe.exists() {
            match probe.parent() {
                Some(p) => probe = p.to_path_buf(),
                None => break,
            }
        }
        if !probe.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a folder",
                probe.display()
            )));
        }
        let meta = std::fs::metadata(&probe)?;
        if meta.permissions().readonly() {
            return Err(std::io::Error::other(format!(
                "{} is read-only",
                probe.display()
            )));
        }
        Ok(())
    }
}

/// `s` with every control character (C0, DEL, C1) and every bidirectional
/// override written as an escape (`\u{1b}`), for output a person reads
/// in a terminal or a page: a recorded string can never move the cursor,
/// recolour the screen or reorder what is shown.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    fn risky(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !s.chars().any(risky) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if risky(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A parsed record's `ts` as unix seconds.
pub fn record_unix_ts(rec: &serde_json::Value) -> Option<i64> {
    let ts = rec.get("ts")?.as_str()?;
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_16_hex_of_hmac_sha256() {
        let raw = b"0123456789abcdef0123456789abcdef";
        let k = HmacKey::from_bytes(raw.to_vec());
        let a = k.fingerprint(b"rk_1");
        // The kept, already keyed state gives what a fresh HMAC gives,
        // every time (it is cloned, never advanced).
        let mut fresh = Hmac::<Sha256>::new_from_slice(raw).unwrap();
        fresh.update(b"rk_1");
        assert_eq!(a, hex::encode(&fresh.finalize().into_bytes()[..8]));
        assert_eq!(k.fingerprint(b"rk_1"), a);
        assert_eq!(a.len(), 16);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, k.fingerprint(b"rk_2"));
        assert_eq!(format!("{k:?}"), "HmacKey([REDACTED])");
    }

    #[test]
    fn a_short_hmac_key_is_refused_and_one_newline_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "x".repeat(31) + "\n").unwrap();
        assert!(matches!(
            HmacKey::load(&p),
            Err(HmacKeyError::TooShort { .. })
        ));
        std::fs::write(&p, "x".repeat(32) + "\n").unwrap();
        let k = HmacKey::load(&p).unwrap();
        assert_eq!(
            k.fingerprint(b"d"),
            HmacKey::from_bytes(b"x".repeat(32)).fingerprint(b"d")
        );
    }

    #[tokio::test]
    async fn records_are_chained_and_numbered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/audit.jsonl");
        let log = AuditLog::open(p.clone(), Options::default());
        assert!(log.is_available());
        for phase in [Phase::Denied, Phase::Attempt, Phase::Outcome] {
            log.append(Record::new(phase), phase == Phase::Attempt)
                .await
                .unwrap();
        }
        drop(log);
        let v = verify::verify(&[p], &verify::VerifyOptions::default()).unwrap();
        assert_eq!((v.records, v.first_seq, v.last_seq), (3, Some(1), Some(3)));
    }
}
