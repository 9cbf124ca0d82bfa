//! Reading an audit trail back: `audit verify` (hash chain and `seq` across
//! files) and `audit query` (filters for reviewers).

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::ZERO_HASH;

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
    /// Checkpoints found (signatures checked when a public key was given).
    pub checkpoints: u64,
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
pub fn load_public_key(path: &Path) -> Result<Vec<u8>, String> {
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
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Broken> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|e| io_broken(p, &e))?;
            for e in entries {
                let e = e.map_err(|e| io_broken(p, &e))?;
                if e.path().is_file() {
                    files.push(e.path());
                }
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

fn io_broken(p: &Path, e: &std::io::Error) -> Broken {
    Broken {
        file: p.display().to_string(),
        line: 0,
        seq: None,
        message: format!("cannot read: {e}"),
    }
}

fn first_seq(f: &Path) -> Result<u64, Broken> {
    let data = std::fs::read(f).map_err(|e| io_broken(f, &e))?;
    let first = data.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(serde_json::from_slice::<Value>(first)
        .ok()
        .and_then(|v| v.get("seq").and_then(Value::as_u64))
        .unwrap_or(u64::MAX))
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
        checkpoints: 0,
        last_checkpoint_head: None,
        after_last_checkpoint: 0,
        repairs: vec![],
    };
    let mut pruned_at: Option<Broken> = None;
    let mut expected_seen = false;
    let mut last_pos: Option<Broken> = None;
    for f in files {
        let name = f.display().to_string();
        let data = std::fs::read(f).map_err(|e| io_broken(f, &e))?;
        if !data.is_empty() && !data.ends_with(b"\n") {
            let line = data.split(|b| *b == b'\n').count();
            return Err(Broken {
                file: name,
                line,
                seq: None,
                message: "the last line is torn (no line end); start the gateway once to seal it"
                    .into(),
            });
        }
        for (i, raw) in data.split(|b| *b == b'\n').enumerate() {
            if raw.is_empty() {
                continue;
            }
            let bad = |seq: Option<u64>, message: String| Broken {
                file: name.clone(),
                line: i + 1,
                seq,
                message,
            };
            let rec: Value =
                serde_json::from_slice(raw).map_err(|_| bad(None, "not a JSON object".into()))?;
            let seq = rec
                .get("seq")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad(None, "seq missing or not an integer".into()))?;
            let prev = rec
                .get("prev")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(Some(seq), "prev missing".into()))?;
            match (&prev_hash, prev_seq) {
                (None, _) => {
                    if seq != 1 || prev != ZERO_HASH {
                        pruned_at = Some(bad(
                            Some(seq),
                            format!(
                                "the chain starts at seq {seq}, not 1: older records were removed \
                                 (pass --allow-pruned-start to accept a pruned start, or \
                                 --public-key to anchor it on a signed checkpoint)"
                            ),
                        ));
                        out.pruned_start = true;
                    }
                    out.first_seq = Some(seq);
                }
                (Some(h), Some(ps)) => {
                    if seq != ps + 1 {
                        return Err(bad(Some(seq), format!("seq {seq} does not follow {ps}")));
                    }
                    if prev != h {
                        let before = if i == 0 {
                            "the last line of the previous file".to_string()
                        } else {
                            format!("line {i}")
                        };
                        return Err(bad(
                            Some(seq),
                            format!(
                                "prev does not match the SHA-256 of {before}: {before} was changed, \
                                 or records between them were removed or inserted"
                            ),
                        ));
                    }
                }
                _ => {}
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
                        let sig = rec
                            .get("sig")
                            .and_then(Value::as_str)
                            .and_then(|s| {
                                use base64::Engine;
                                base64::engine::general_purpose::URL_SAFE_NO_PAD
                                    .decode(s)
                                    .ok()
                            })
                            .unwrap_or_default();
                        let key =
                            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk);
                        if key.verify(head.as_bytes(), &sig).is_err() {
                            return Err(bad(
                                Some(seq),
                                "checkpoint signature does not verify with the given public key"
                                    .into(),
                            ));
                        }
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
                _ => out.after_last_checkpoint += 1,
            }
            let h = hex::encode(Sha256::digest(raw));
            prev_hash = Some(h.clone());
            prev_seq = Some(seq);
            out.head = h;
            out.last_seq = Some(seq);
            out.records += 1;
            last_pos = Some(bad(Some(seq), String::new()));
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
    if let Some(p) = pruned_at {
        let anchored = opts.public_key.is_some() && out.checkpoints > 0;
        if !opts.allow_pruned_start && !anchored {
            return Err(p);
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
    let mut out = Vec::new();
    for f in files {
        let data = std::fs::read(f).map_err(|e| io_broken(f, &e))?;
        for raw in data.split(|b| *b == b'\n') {
            if raw.is_empty() {
                continue;
            }
            let Ok(rec) = serde_json::from_slice::<Value>(raw) else {
                continue;
            };
            if filter.matches(&rec) {
                out.push((String::from_utf8_lossy(raw).into_owned(), rec));
            }
        }
    }
    Ok(out)
}

/// A fixed-width table of the columns a reviewer reads first.
pub fn table(rows: &[(String, Value)]) -> String {
    let cols: &[(&str, &[&str])] = &[
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
    let cell = |v: &Value, path: &[&str]| -> String {
        let mut cur = v;
        for p in path {
            match cur.get(p) {
                Some(x) => cur = x,
                None => return "-".into(),
            }
        }
        match cur {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
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
