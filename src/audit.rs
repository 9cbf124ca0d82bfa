//! Steps 7 and 9 (and every denial): the audit trail.
//!
//! Records are typed data serialized by serde, one JSON object per line,
//! chained by `prev` = SHA-256 of the previous line. One writer thread owns
//! the file: requests hand it records and wait for their turn; records that
//! must be durable (the `attempt` before anything goes upstream) are waited
//! for until `fsync` returned, and one `fsync` covers every record queued
//! at that moment. Diagnostics (`tracing`) never share this sink.

pub mod verify;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::authn::Unverified;

/// The `prev` of the first record of a chain.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest line the writer will produce or the reader will look for.
const MAX_LINE_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Denied,
    Attempt,
    Outcome,
    Repair,
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
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub v: u32,
    pub seq: u64,
    pub ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unverified: Option<Unverified>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller_request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<Caller>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    /// On `repair` records: what was found at start and sealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<serde_json::Value>,
    pub prev: String,
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
            found: None,
            prev: String::new(),
        }
    }
}

/// The key behind `token_fp` and `key_fp`.
pub struct HmacKey(SecretBox<Vec<u8>>);

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
        Ok(HmacKey(SecretBox::new(Box::new(bytes))))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        HmacKey(SecretBox::new(Box::new(bytes)))
    }

    /// HMAC-SHA256 of `data`, the first 16 lowercase hex characters.
    pub fn fingerprint(&self, data: &[u8]) -> String {
        // HMAC accepts keys of any length; the error branch cannot happen.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(self.0.expose_secret()) else {
            return String::from("0000000000000000");
        };
        mac.update(data);
        let out = mac.finalize().into_bytes();
        hex::encode(&out[..8])
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

enum Job {
    Append {
        record: Box<Record>,
        durable: bool,
        done: oneshot::Sender<Result<(), AuditError>>,
    },
    Probe(oneshot::Sender<bool>),
}

/// Handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Job>,
    available: Arc<AtomicBool>,
}

impl AuditLog {
    /// Starts the writer for `path`, creating its folder when missing. An
    /// unwritable path does not fail here: the log reports itself
    /// unavailable and retries on each request.
    pub fn open(path: PathBuf) -> Self {
        let available = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Job>();
        let mut writer = Writer {
            path,
            file: None,
            seq: 0,
            prev: ZERO_HASH.to_string(),
            available: available.clone(),
        };
        writer.ensure_open();
        let spawned = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx));
        if spawned.is_err() {
            tracing::error!("cannot start the audit writer thread");
            available.store(false, Ordering::SeqCst);
        }
        AuditLog { tx, available }
    }

    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    /// Tries to (re)open the audit file; true when it can be written.
    pub async fn recover(&self) -> bool {
        if self.is_available() {
            return true;
        }
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Job::Probe(tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Appends `record`; with `durable`, returns only after `fsync`.
    pub async fn append(&self, record: Record, durable: bool) -> Result<(), AuditError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job::Append {
                record: Box::new(record),
                durable,
                done,
            })
            .map_err(|_| AuditError::Unavailable)?;
        rx.await.unwrap_or(Err(AuditError::Unavailable))
    }
}

struct Writer {
    path: PathBuf,
    file: Option<File>,
    seq: u64,
    prev: String,
    available: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            // Group commit: take everything already queued, write it, and
            // let one fsync cover all of it.
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
                if batch.len() >= 4096 {
                    break;
                }
            }
            self.ensure_open();
            let mut waiting = Vec::new();
            let mut need_sync = false;
            for job in batch {
                match job {
                    Job::Probe(tx) => {
                        let _ = tx.send(self.file.is_some());
                    }
                    Job::Append {
                        record,
                        durable,
                        done,
                    } => {
                        let res = self.write(*record);
                        if res.is_ok() {
                            need_sync |= durable;
                        }
                        waiting.push((done, res));
                    }
                }
            }
            let synced = !need_sync || self.sync();
            for (done, res) in waiting {
                let res = if synced {
                    res
                } else {
                    Err(AuditError::Unavailable)
                };
                let _ = done.send(res);
            }
        }
    }

    fn fail(&mut self, what: &str, e: &std::io::Error) {
        if self.available.swap(false, Ordering::SeqCst) {
            tracing::error!(path = %self.path.display(), error = %e, "audit file {what} failed; refusing requests until it is writable");
        }
        self.file = None;
    }

    fn ensure_open(&mut self) {
        if self.file.is_some() {
            return;
        }
        match self.open_and_seal() {
            Ok(file) => {
                self.file = Some(file);
                if !self.available.swap(true, Ordering::SeqCst) {
                    tracing::info!(path = %self.path.display(), seq = self.seq, "audit file open");
                }
            }
            Err(e) => self.fail("open", &e),
        }
    }

    /// Opens the file for append and continues the chain from its last
    /// line. A torn last line (a crash mid-write) is cut off and sealed by
    /// a `repair` record saying what was found.
    fn open_and_seal(&mut self) -> std::io::Result<File> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)?;
        let tail = read_tail(&mut file)?;
        if let Some(last) = &tail.last_line {
            let seq = serde_json::from_slice::<serde_json::Value>(last)
                .ok()
                .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
                .ok_or_else(|| std::io::Error::other("the last complete audit line has no seq"))?;
            self.seq = seq;
            self.prev = hex::encode(Sha256::digest(last));
        }
        if !tail.torn.is_empty() {
            let keep = file.metadata()?.len() - tail.torn.len() as u64;
            file.set_len(keep)?;
            file.sync_data()?;
            let mut rec = Record::new(Phase::Repair);
            rec.reason = Some("torn_last_line".into());
            rec.found = Some(serde_json::json!({
                "torn_bytes": tail.torn.len(),
                "torn_sha256": hex::encode(Sha256::digest(&tail.torn)),
                "torn_text": String::from_utf8_lossy(&tail.torn),
            }));
            self.file = Some(file);
            self.write(rec)
                .map_err(|_| std::io::Error::other("repair write"))?;
            let file = self
                .file
                .take()
                .ok_or_else(|| std::io::Error::other("repair"))?;
            file.sync_data()?;
            tracing::warn!(
                bytes = tail.torn.len(),
                "audit file ended in a torn line; sealed it with a repair record"
            );
            return Ok(file);
        }
        Ok(file)
    }

    fn write(&mut self, mut rec: Record) -> Result<(), AuditError> {
        let Some(file) = self.file.as_mut() else {
            return Err(AuditError::Unavailable);
        };
        rec.seq = self.seq + 1;
        rec.ts = now_rfc3339();
        rec.prev = self.prev.clone();
        let mut line = match serde_json::to_vec(&rec) {
            Ok(l) => l,
            Err(_) => return Err(AuditError::Unavailable),
        };
        let hash = hex::encode(Sha256::digest(&line));
        line.push(b'\n');
        if let Err(e) = file.write_all(&line) {
            self.fail("write", &e);
            return Err(AuditError::Unavailable);
        }
        self.seq += 1;
        self.prev = hash;
        Ok(())
    }

    fn sync(&mut self) -> bool {
        let Some(file) = self.file.as_mut() else {
            return false;
        };
        match file.sync_data() {
            Ok(()) => true,
            Err(e) => {
                self.fail("fsync", &e);
                false
            }
        }
    }
}

struct Tail {
    last_line: Option<Vec<u8>>,
    torn: Vec<u8>,
}

/// The last complete line of `file` and any bytes after it.
fn read_tail(file: &mut File) -> std::io::Result<Tail> {
    let len = file.metadata()?.len();
    let start = len.saturating_sub(2 * MAX_LINE_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.take(len - start).read_to_end(&mut buf)?;
    let torn_from = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if start > 0 && torn_from == 0 {
        return Err(std::io::Error::other(
            "no line end in the audit file's tail",
        ));
    }
    let torn = buf[torn_from..].to_vec();
    let body = &buf[..torn_from.saturating_sub(1)];
    let line_start = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let last = &body[line_start..];
    Ok(Tail {
        last_line: (torn_from > 0 && !last.is_empty()).then(|| last.to_vec()),
        torn,
    })
}

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

/// Now as RFC 3339 UTC with milliseconds, e.g. `2026-01-02T03:04:05.678Z`.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(content: &[u8]) -> (Option<Vec<u8>>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, content).unwrap();
        let mut f = File::open(&p).unwrap();
        let t = read_tail(&mut f).unwrap();
        (t.last_line, t.torn)
    }

    #[test]
    fn the_tail_is_the_last_complete_line_and_any_torn_bytes() {
        assert_eq!(tail_of(b""), (None, vec![]));
        assert_eq!(tail_of(b"a\nbb\n"), (Some(b"bb".to_vec()), vec![]));
        assert_eq!(
            tail_of(b"a\nbb\ncc"),
            (Some(b"bb".to_vec()), b"cc".to_vec())
        );
        assert_eq!(tail_of(b"only-torn"), (None, b"only-torn".to_vec()));
    }

    #[test]
    fn fingerprints_are_16_hex_of_hmac_sha256() {
        let k = HmacKey::from_bytes(b"0123456789abcdef0123456789abcdef".to_vec());
        let a = k.fingerprint(b"rk_1");
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
        let log = AuditLog::open(p.clone());
        assert!(log.is_available());
        for phase in [Phase::Denied, Phase::Attempt, Phase::Outcome] {
            log.append(Record::new(phase), phase == Phase::Attempt)
                .await
                .unwrap();
        }
        drop(log);
        let v = verify::verify(&[p], false).unwrap();
        assert_eq!((v.records, v.first_seq, v.last_seq), (3, Some(1), Some(3)));
    }
}
