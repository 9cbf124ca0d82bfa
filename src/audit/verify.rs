//! Reading an audit trail back: `audit verify` (hash chain and `seq` across
//! files) and `audit query` (filters for reviewers).

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::lines::{self, LineError};
use super::record::{PrunedThrough, ZERO_HASH, checkpoint_message};
use crate::common::escape_controls;

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub files: usize,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// SHA-256 of the last line: what the next record's `prev` must be.
    pub head: String,
    /// The chain does not start at seq 1 (older files were removed).
    pub pruned_start: bool,
    /// The missing start is accounted for by a `prune` record.
    pub pruned_by_retention: bool,
    /// Checkpoints found (signatures checked when a public key was given).
    pub checkpoints: u64,
    /// Of them, checkpoints in the scheme before `sig_format` 2, whose
    /// signature covers their `head` only.
    pub legacy_checkpoints: u64,
    /// `summary` records (counted unauthenticated denials).
    pub summaries: u64,
    /// `prune` records.
    pub prunes: u64,
    /// The `head` of the last checkpoint, to keep for `--expect-head`.
    pub last_checkpoint_head: Option<String>,
    /// Records after the last checkpoint (no signature covers them yet).
    pub after_last_checkpoint: u64,
    /// `repair` records: (seq, reason).
    pub repairs: Vec<(u64, String)>,
}

/// What `audit verify` checks beyond the chain.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Accept a chain that does not start at seq 1.
    pub allow_pruned_start: bool,
    /// Ed25519 public key: every checkpoint's signature must verify, and
    /// there must be at least one.
    pub public_key: Option<Vec<u8>>,
    /// A checkpoint head the reviewer saw: it must still be in the chain.
    pub expect_head: Option<String>,
}

/// Reads an Ed25519 public key (PEM SubjectPublicKeyInfo) as its 32 bytes.
pub fn load_checkpoint_key(path: &Path) -> Result<Vec<u8>, String> {
    use rustls_pki_types::SubjectPublicKeyInfoDer;
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let der = SubjectPublicKeyInfoDer::from_pem_slice(&pem)
        .map_err(|_| format!("{} is not a PEM public key", path.display()))?;
    const ED25519_SPKI: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    match der.as_ref().strip_prefix(&ED25519_SPKI[..]) {
        Some(raw) if raw.len() == 32 => Ok(raw.to_vec()),
        _ => Err(format!("{} is not an Ed25519 public key", path.display())),
    }
}

/// The first bad record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}{}: {message}", .seq.map(|s| format!(" (seq {s})")).unwrap_or_default())]
pub struct Broken {
    pub file: String,
    pub line: usize,
    pub seq: Option<u64>,
    pub message: String,
}

/// Expands folders into their files and orders everything by first `seq`.
/// In a folder, a rotation's unfinished next file (`*.next`) is not part
/// of the chain, and a file that is only a second name (a hard link) of
/// another is read once.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Broken> {
    use std::os::unix::fs::MetadataExt;
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|e| io_broken(p, &e))?;
            let mut inside = Vec::new();
            for e in entries {
                let e = e.map_err(|e| io_broken(p, &e))?;
                let path = e.path();
                let unfinished = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(".next"));
                if path.is_file() && !unfinished {
                    inside.push(path);
                }
            }
            // Rotated names first, so a link keeps its rotated name.
            inside.sort_by_key(|f| (rotated_suffix(f).is_none(), f.clone()));
            let mut seen = std::collections::HashSet::new();
            for f in inside {
                let id = std::fs::metadata(&f).map(|m| (m.dev(), m.ino()));
                if id.as_ref().is_ok_and(|id| !seen.insert(*id)) {
                    continue;
                }
                files.push(f);
            }
        } else {
            files.push(p.clone());
        }
    }
    let mut keyed = Vec::new();
    for f in files {
        keyed.push((first_seq(&f)?, f));
    }
    keyed.sort();
    Ok(keyed.into_iter().map(|(_, f)| f).collect())
}

/// The seq a rotated file's name gives (`<file>.<12 digits>`).
fn rotated_suffix(f: &Path) -> Option<u64> {
    let name = f.file_name()?.to_str()?;
    let (_, digits) = name.rsplit_once('.')?;
    (digits.len() == 12 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn io_broken(p: &Path, e: &std::io::Error) -> Broken {
    Broken {
        file: p.display().to_string(),
        line: 0,
        seq: None,
        message: format!("cannot read: {e}"),
    }
}

fn line_broken(p: &Path, e: &LineError) -> Broken {
    Broken {
        file: p.display().to_string(),
        line: match e {
            LineError::TooLong { line, .. } => *line,
            LineError::Io { .. } => 0,
        },
        seq: None,
        message: e.to_string(),
    }
}

fn first_seq(f: &Path) -> Result<u64, Broken> {
    let first = lines::first_seq(f).map_err(|e| line_broken(f, &e))?;
    Ok(first.unwrap_or(u64::MAX))
}

/// Checks one checkpoint's signature: over its seq, ts and head
/// (`sig_format` 2), or, for checkpoints written before that scheme, over
/// the ASCII of its head. Some(true) for the older scheme.
fn check_signature(rec: &Value, seq: u64, head: &str, pk: &[u8]) -> Option<bool> {
    use base64::Engine;
    let sig = rec
        .get("sig")
        .and_then(Value::as_str)
        .and_then(|s| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .ok()
        })
        .unwrap_or_default();
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk);
    match rec.get("sig_format").and_then(Value::as_u64) {
        Some(2) => {
            let ts = rec.get("ts").and_then(Value::as_str)?;
            let msg = checkpoint_message(seq, ts, head);
            key.verify(&msg, &sig).ok().map(|()| false)
        }
        None => key.verify(head.as_bytes(), &sig).ok().map(|()| true),
        Some(_) => None,
    }
}

/// Checks `seq` and `prev` across `files` in order, and checkpoints.
pub fn verify(files: &[PathBuf], opts: &VerifyOptions) -> Result<Verified, Broken> {
    let mut prev_hash: Option<String> = None;
    let mut prev_seq: Option<u64> = None;
    let mut out = Verified {
        records: 0,
        files: files.len(),
        first_seq: None,
        last_seq: None,
        head: ZERO_HASH.to_string(),
        pruned_start: false,
        pruned_by_retention: false,
        checkpoints: 0,
        legacy_checkpoints: 0,
        last_checkpoint_head: None,
        after_last_checkpoint: 0,
        repairs: vec![],
        summaries: 0,
        prunes: 0,
    };
    // Where the chain starts when not at seq 1: (where, seq, prev).
    let mut pruned_at: Option<(Broken, u64, String)> = None;
    // How far `prune`/`rotate` records say retention removed the start.
    let mut accounted: Vec<PrunedThrough> = Vec::new();
    let mut expected_seen = false;
    let mut last_pos: Option<Broken> = None;
    let mut failure: Option<Broken> = None;
    for f in files {
        let name = f.display().to_string();
        let mut first_in_file = true;
        let end = lines::for_each_line(f, |n, raw| {
            if raw.is_empty() {
                return true;
            }
            let bad = |seq: Option<u64>, message: String| Broken {
                file: name.clone(),
                line: n,
                seq,
                message,
            };
            let step = (|| -> Result<(), Broken> {
                let rec: Value = serde_json::from_slice(raw)
                    .map_err(|_| bad(None, "not a JSON object".into()))?;
                let seq = rec
                    .get("seq")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad(None, "seq missing or not an integer".into()))?;
                let prev = rec
                    .get("prev")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(Some(seq), "prev missing".into()))?;
                if first_in_file
                    && let Some(named) = rotated_suffix(f)
                    && named != seq
                {
                    return Err(bad(
                        Some(seq),
                        format!("the file is named for seq {named} but starts at seq {seq}"),
                    ));
                }
                match (&prev_hash, prev_seq) {
                    (None, _) => {
                        if seq != 1 || prev != ZERO_HASH {
                            let follows = (rec.get("phase").and_then(Value::as_str)
                                == Some("rotate"))
                            .then(|| rec.get("follows").and_then(Value::as_str))
                            .flatten()
                            .map(|f| {
                                format!(
                                    "; this file continues {}: verify the folder that holds both",
                                    escape_controls(f)
                                )
                            })
                            .unwrap_or_default();
                            let at = bad(
                                Some(seq),
                                format!(
                                    "the chain starts at seq {seq}, not 1, and no prune record \
                                     accounts for the records before it (pass \
                                     --allow-pruned-start to accept a start removed by other \
                                     means){follows}"
                                ),
                            );
                            pruned_at = Some((at, seq, prev.to_string()));
                            out.pruned_start = true;
                        }
                        out.first_seq = Some(seq);
                    }
                    (Some(h), Some(ps)) => {
                        if seq != ps + 1 {
                            return Err(bad(
                                Some(seq),
                                if seq <= ps {
                                    format!(
                                        "seq {seq} does not follow {ps}: the chain restarts or \
                                         records repeat"
                                    )
                                } else {
                                    format!("seq {seq} does not follow {ps}")
                                },
                            ));
                        }
                        if prev != h {
                            let before = if first_in_file {
                                "the last line of the previous file".to_string()
                            } else {
                                format!("line {}", n - 1)
                            };
                            return Err(bad(
                                Some(seq),
                                format!(
                                    "prev does not match the SHA-256 of {before}: {before} was \
                                     changed, or records between them were removed or inserted"
                                ),
                            ));
                        }
                    }
                    _ => {}
                }
                if let Some(p) = rec
                    .get("pruned_through")
                    .and_then(|v| serde_json::from_value::<PrunedThrough>(v.clone()).ok())
                {
                    accounted.push(p);
                }
                match rec.get("phase").and_then(Value::as_str) {
                    Some("checkpoint") => {
                        let head = rec.get("head").and_then(Value::as_str).unwrap_or_default();
                        if head != prev {
                            return Err(bad(
                                Some(seq),
                                "checkpoint head is not the hash of the record before it".into(),
                            ));
                        }
                        if let Some(pk) = &opts.public_key {
                            match check_signature(&rec, seq, head, pk) {
                                Some(legacy) => out.legacy_checkpoints += u64::from(legacy),
                                None => {
                                    return Err(bad(
                                        Some(seq),
                                        "checkpoint signature does not verify with the given \
                                         public key"
                                            .into(),
                                    ));
                                }
                            }
                        } else if rec.get("sig_format").is_none() {
                            out.legacy_checkpoints += 1;
                        }
                        if opts.expect_head.as_deref() == Some(head) {
                            expected_seen = true;
                        }
                        out.checkpoints += 1;
                        out.last_checkpoint_head = Some(head.to_string());
                        out.after_last_checkpoint = 0;
                    }
                    Some("repair") => {
                        let reason = rec
                            .get("reason")
                            .and_then(Value::as_str)
                            .unwrap_or("repair");
                        out.repairs.push((seq, reason.to_string()));
                        out.after_last_checkpoint += 1;
                    }
                    Some(phase) => {
                        out.summaries += u64::from(phase == "summary");
                        out.prunes += u64::from(phase == "prune");
                        out.after_last_checkpoint += 1;
                    }
                    None => out.after_last_checkpoint += 1,
                }
                let h = hex::encode(Sha256::digest(raw));
                prev_hash = Some(h.clone());
                prev_seq = Some(seq);
                out.head = h;
                out.last_seq = Some(seq);
                out.records += 1;
                last_pos = Some(bad(Some(seq), String::new()));
                Ok(())
            })();
            first_in_file = false;
            match step {
                Ok(()) => true,
                Err(b) => {
                    failure = Some(b);
                    false
                }
            }
        })
        .map_err(|e| line_broken(f, &e))?;
        if let Some(b) = failure {
            return Err(b);
        }
        if let lines::End::Torn(line) = end {
            return Err(Broken {
                file: name,
                line,
                seq: None,
                message: "the last line is torn (no line end); start the gateway once to seal it"
                    .into(),
            });
        }
    }
    let end = |message: String| {
        let mut b = last_pos.clone().unwrap_or(Broken {
            file: files
                .first()
                .map(|f| f.display().to_string())
                .unwrap_or_default(),
            line: 0,
            seq: None,
            message: String::new(),
        });
        b.message = message;
        b
    };
    if opts.public_key.is_some() && out.checkpoints == 0 {
        return Err(end(
            "no signed checkpoint found: nothing vouches for this chain".into(),
        ));
    }
    if let Some(h) = &opts.expect_head
        && !expected_seen
    {
        return Err(end(format!(
            "the checkpoint with head {h} is not in the chain: its tail was truncated or its last file removed"
        )));
    }
    if let Some((at, seq, prev)) = pruned_at {
        // Accepted only when a prune (or the rotate record after it) says
        // exactly this much was removed, ending in the record whose hash
        // the first one present carries.
        out.pruned_by_retention = accounted
            .iter()
            .any(|p| p.seq.checked_add(1) == Some(seq) && p.hash == prev);
        if !opts.allow_pruned_start && !out.pruned_by_retention {
            return Err(at);
        }
    }
    Ok(out)
}

/// `audit query` filters; every one given must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub team: Option<String>,
    pub sub: Option<String>,
    pub project: Option<String>,
    pub campaign: Option<String>,
    pub decision: Option<String>,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub since: Option<time::OffsetDateTime>,
    pub until: Option<time::OffsetDateTime>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

impl Filter {
    pub fn matches(&self, rec: &Value) -> bool {
        let eq = |want: &Option<String>, path: &[&str]| match want {
            None => true,
            Some(w) => str_at(rec, path) == Some(w.as_str()),
        };
        let team_ok = match &self.team {
            None => true,
            Some(w) => match rec.get("caller").and_then(|c| c.get("team")) {
                Some(Value::String(s)) => s == w,
                Some(Value::Array(a)) => a.iter().any(|t| t.as_str() == Some(w.as_str())),
                _ => false,
            },
        };
        let ts = str_at(rec, &["ts"]).and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        });
        let since_ok = self.since.is_none_or(|s| ts.is_some_and(|t| t >= s));
        let until_ok = self.until.is_none_or(|u| ts.is_some_and(|t| t <= u));
        team_ok
            && since_ok
            && until_ok
            && eq(&self.sub, &["caller", "sub"])
            && eq(&self.project, &["project"])
            && eq(&self.campaign, &["campaign_id"])
            && eq(&self.decision, &["decision"])
            && eq(&self.reason, &["reason"])
            && eq(&self.request_id, &["request_id"])
    }
}

/// Every record of `files` (in order) that `filter` matches, as
/// (raw line, parsed record).
pub fn query(files: &[PathBuf], filter: &Filter) -> Result<Vec<(String, Value)>, Broken> {
    Records::new(files, filter).collect()
}

/// The records of one chain's files that `filter` keeps, pulled one at a
/// time: a chain of any size costs one line of memory.
pub struct Records<'a> {
    files: &'a [PathBuf],
    filter: &'a Filter,
    next_file: usize,
    reader: Option<(&'a Path, lines::Forward)>,
    line: Vec<u8>,
}

impl<'a> Records<'a> {
    pub fn new(files: &'a [PathBuf], filter: &'a Filter) -> Records<'a> {
        Records {
            files,
            filter,
            next_file: 0,
            reader: None,
            line: Vec::new(),
        }
    }
}

impl Iterator for Records<'_> {
    /// The record's line as written, and parsed.
    type Item = Result<(String, Value), Broken>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.reader.is_none() {
                let f = self.files.get(self.next_file)?;
                self.next_file += 1;
                match lines::Forward::open(f) {
                    Ok(r) => self.reader = Some((f.as_path(), r)),
                    Err(e) => return Some(Err(line_broken(f, &e))),
                }
            }
            let (path, reader) = self.reader.as_mut()?;
            match reader.next_line(&mut self.line) {
                Err(e) => {
                    let broken = line_broken(path, &e);
                    self.reader = None;
                    self.next_file = self.files.len();
                    return Some(Err(broken));
                }
                Ok(None) => self.reader = None,
                Ok(Some(_)) => {
                    if let Ok(rec) = serde_json::from_slice::<Value>(&self.line)
                        && self.filter.matches(&rec)
                    {
                        return Some(Ok((String::from_utf8_lossy(&self.line).into_owned(), rec)));
                    }
                }
            }
        }
    }
}

/// A fixed-width table of the columns a reviewer reads first.
/// Records of several replicas (merged chains) get a REPLICA column.
pub fn table(rows: &[(String, Value)]) -> String {
    let replicas: std::collections::BTreeSet<_> = rows
        .iter()
        .filter_map(|(_, v)| v.get("replica")?.as_str())
        .collect();
    let mut cols: Vec<(&str, &[&str])> = vec![
        ("SEQ", &["seq"]),
        ("TS", &["ts"]),
        ("PHASE", &["phase"]),
        ("DECISION", &["decision"]),
        ("REASON", &["reason"]),
        ("TEAM", &["caller", "team"]),
        ("SUB", &["caller", "sub"]),
        ("PROJECT", &["project"]),
        ("CAMPAIGN", &["campaign_id"]),
        ("STATUS", &["upstream", "status"]),
        ("REQUEST_ID", &["request_id"]),
    ];
    if replicas.len() > 1 {
        cols.insert(2, ("REPLICA", &["replica"]));
    }
    let cell = |v: &Value, path: &[&str]| -> String {
        let mut cur = v;
        for p in path {
            match cur.get(p) {
                Some(x) => cur = x,
                None => return "-".into(),
            }
        }
        // Recorded strings are caller-chosen: nothing reaches the
        // terminal raw.
        match cur {
            Value::String(s) => escape_controls(s).into_owned(),
            Value::Null => "-".into(),
            other => escape_controls(&other.to_string()).into_owned(),
        }
    };
    let grid: Vec<Vec<String>> = rows
        .iter()
        .map(|(_, v)| cols.iter().map(|(_, p)| cell(v, p)).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            grid.iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |cells: Vec<&str>| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    out.push_str(&line(cols.iter().map(|(h, _)| *h).collect()));
    out.push('\n');
    for r in &grid {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}
