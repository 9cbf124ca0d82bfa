//! The audit files' lifecycle on disk: the rotated files' names and
//! listing, private folders and files (0700/0600), directory syncs, what a
//! file's first and last lines say (span, retention state, tail).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::lines::Backwards;
use super::record::{PrunedThrough, record_unix_ts};

/// Longest line the writer will look for at the end of a file.
pub const MAX_LINE_BYTES: u64 = 1 << 20;

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

/// `<live>.<first seq, 12 digits>`.
pub fn rotated_name(live: &Path, first_seq: u64) -> PathBuf {
    PathBuf::from(format!("{}.{first_seq:012}", live.display()))
}

/// Where a rotation prepares the next live file.
pub fn next_name(live: &Path) -> PathBuf {
    PathBuf::from(format!("{}.next", live.display()))
}

pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Makes renames, links and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates the audit folder (and missing parents) readable by its owner
/// only; an existing folder that others can enter is narrowed to 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            Ok(()) => tracing::info!(dir = %dir.display(), "audit folder narrowed to mode 0700"),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "audit folder is open to others and cannot be narrowed to 0700")
            }
        }
    }
    Ok(())
}

/// Opens an audit file for reading and appending, created 0600; an
/// existing one others can read is narrowed to 0600.
pub fn open_private(path: &Path, create_new: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).append(true).mode(0o600);
    if create_new {
        o.create_new(true);
    } else {
        o.create(true);
    }
    let file = o.open(path)?;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// What a file holds at its two ends.
pub struct Span {
    pub first_seq: u64,
    pub first_prev: String,
    pub last_seq: u64,
    pub last_hash: String,
    pub last_ts: i64,
    pub bytes: u64,
}

pub fn span_of(path: &Path) -> Option<Span> {
    let first = super::lines::first_record(path).ok()??;
    let last_line = Backwards::open(path).ok()?.next_line().ok()??;
    let last: serde_json::Value = serde_json::from_slice(&last_line).ok()?;
    Some(Span {
        first_seq: first.get("seq")?.as_u64()?,
        first_prev: first.get("prev")?.as_str()?.to_string(),
        last_seq: last.get("seq")?.as_u64()?,
        last_hash: hex::encode(Sha256::digest(&last_line)),
        last_ts: record_unix_ts(&last)?,
        bytes: std::fs::metadata(path).ok()?.len(),
    })
}

/// How far retention had removed the chain's start, as the newest file
/// says: its first record (a `rotate` record carries it), or a `prune`
/// record among its last lines (a crash came before the rotation that
/// followed it).
pub fn pruned_state(path: &Path) -> Option<PrunedThrough> {
    let from = |v: &serde_json::Value| {
        serde_json::from_value::<PrunedThrough>(v.get("pruned_through")?.clone()).ok()
    };
    if let Ok(mut back) = Backwards::open(path) {
        for _ in 0..16 {
            let Ok(Some(line)) = back.next_line() else {
                break;
            };
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line)
                && v.get("phase").and_then(|p| p.as_str()) == Some("prune")
                && let Some(p) = from(&v)
            {
                return Some(p);
            }
        }
    }
    from(&super::lines::first_record(path).ok()??)
}

/// Bytes of the rotated files of the live file `path`.
pub fn rotated_size(path: &Path) -> u64 {
    rotated_files(path)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

pub fn seq_of(line: &[u8]) -> std::io::Result<u64> {
    serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
        .ok_or_else(|| std::io::Error::other("the last complete audit line has no seq"))
}

/// The rotated files of the live file `path`, oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return vec![];
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{name}.");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_prefix(&prefix))
                        .is_some_and(|s| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub struct Tail {
    pub last_line: Option<Vec<u8>>,
    pub torn: Vec<u8>,
}

/// The last complete line of `file` and any bytes after it.
pub fn read_tail(file: &mut File) -> std::io::Result<Tail> {
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
/// Every line of the trail at `live` with its record's `ts` (unix
/// seconds), newest first: the live file, then the rotated files newest
/// first, each read backwards. Stops at the first record older than
/// `since` (older records are never read) or when `f` says `false`.
pub fn newest_first(live: &Path, since: i64, mut f: impl FnMut(i64, &[u8]) -> bool) {
    let mut files = rotated_files(live);
    files.push(live.to_path_buf());
    for file in files.iter().rev() {
        let Ok(mut lines) = super::lines::Backwards::open(file) else {
            continue;
        };
        while let Ok(Some(line)) = lines.next_line() {
            let Some(ts) = super::lines::line_ts(&line) else {
                continue;
            };
            if ts < since || !f(ts, &line) {
                return;
            }
        }
    }
}
