//! Reading audit files line by line without holding them in memory: the
//! one reader behind `audit verify`, `audit query`, `audit report` and the
//! start-up rebuild of the single-use memory. A trail can weigh
//! gigabytes; these readers hold one buffer and one line at a time.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Longest line a reader accepts; a record is far smaller (a few KiB).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// What a forward read found besides complete lines.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Every line ended with a newline.
    Clean,
    /// The file ends in bytes without a newline (a torn last line); the
    /// value is the 1-based number of that line.
    Torn(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: longer than {MAX_LINE_BYTES} bytes")]
    TooLong { path: String, line: usize },
}

/// Calls `f(line_number, bytes)` (1-based, without the newline) for every
/// complete line of `path`, in order, until `f` returns `false`.
pub fn for_each_line(
    path: &Path,
    mut f: impl FnMut(usize, &[u8]) -> bool,
) -> Result<End, LineError> {
    let mut reader = Forward::open(path)?;
    let mut line = Vec::new();
    while let Some(n) = reader.next_line(&mut line)? {
        if !f(n, &line) {
            return Ok(End::Clean);
        }
    }
    Ok(reader.end())
}

/// Complete lines of a file from the first to the last, pulled one at a
/// time (what merging several chains by `ts` needs): one buffer and one
/// line in memory.
pub struct Forward {
    path: String,
    reader: BufReader<File>,
    n: usize,
    end: Option<End>,
}

impl Forward {
    pub fn open(path: &Path) -> Result<Forward, LineError> {
        let file = File::open(path).map_err(|source| LineError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Forward {
            path: path.display().to_string(),
            reader: BufReader::with_capacity(256 * 1024, file),
            n: 0,
            end: None,
        })
    }

    /// The next complete line into `line` (without its newline) and its
    /// 1-based number; `None` at the end of the file or at a torn last line.
    pub fn next_line(&mut self, line: &mut Vec<u8>) -> Result<Option<usize>, LineError> {
        if self.end.is_some() {
            return Ok(None);
        }
        line.clear();
        let got = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', line)
            .map_err(|source| LineError::Io {
                path: self.path.clone(),
                source,
            })?;
        if got == 0 {
            self.end = Some(End::Clean);
            return Ok(None);
        }
        self.n += 1;
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_LINE_BYTES {
                return Err(LineError::TooLong {
                    path: self.path.clone(),
                    line: self.n,
                });
            }
            self.end = Some(End::Torn(self.n));
            return Ok(None);
        }
        line.pop();
        Ok(Some(self.n))
    }

    /// How the file ended (once `next_line` returned `None`).
    pub fn end(self) -> End {
        self.end.unwrap_or(End::Clean)
    }
}

/// The first line of `path` (without its newline), if it has a complete one.
pub fn first_line(path: &Path) -> Result<Option<Vec<u8>>, LineError> {
    let mut out = None;
    for_each_line(path, |_, l| {
        out = Some(l.to_vec());
        false
    })?;
    Ok(out)
}

/// The first record of `path` (its first complete line, parsed), if any.
pub fn first_record(path: &Path) -> Result<Option<serde_json::Value>, LineError> {
    Ok(first_line(path)?.and_then(|l| serde_json::from_slice(&l).ok()))
}

/// The `seq` of the first record of `path`, if it has one.
pub fn first_seq(path: &Path) -> Result<Option<u64>, LineError> {
    Ok(first_record(path)?.and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64)))
}

/// Complete lines of a file from the last to the first, read backwards in
/// blocks: memory is one block and one line, whatever the file's size.
/// Bytes after the last newline (a torn line) are skipped.
pub struct Backwards {
    file: File,
    /// Where the unread part of the file ends.
    pos: u64,
    /// Read but not yet returned: the start of the file's part after `pos`.
    buf: Vec<u8>,
    started: bool,
}

const BLOCK: usize = 64 * 1024;

impl Backwards {
    pub fn open(path: &Path) -> std::io::Result<Backwards> {
        let file = File::open(path)?;
        let pos = file.metadata()?.len();
        Ok(Backwards {
            file,
            pos,
            buf: Vec::new(),
            started: false,
        })
    }

    /// Reads the block before `pos` in front of `buf`.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.pos == 0 {
            return Ok(false);
        }
        let n = self.pos.min(BLOCK as u64);
        self.pos -= n;
        self.file.seek(SeekFrom::Start(self.pos))?;
        let mut block = vec![0u8; n as usize];
        self.file.read_exact(&mut block)?;
        block.extend_from_slice(&self.buf);
        self.buf = block;
        Ok(true)
    }

    /// The next line, going backwards; `None` at the start of the file.
    pub fn next_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if !self.started {
            self.started = true;
            // Drop a torn tail: everything after the last newline.
            loop {
                if let Some(i) = self.buf.iter().rposition(|b| *b == b'\n') {
                    self.buf.truncate(i + 1);
                    break;
                }
                if self.buf.len() > MAX_LINE_BYTES {
                    self.buf.clear();
                }
                if !self.fill()? {
                    self.buf.clear();
                    return Ok(None);
                }
            }
            // `buf` now ends with the newline of the last complete line.
            self.buf.pop();
        }
        loop {
            if let Some(i) = self.buf.iter().rposition(|b| *b == b'\n') {
                let line = self.buf.split_off(i + 1);
                self.buf.pop();
                return Ok(Some(line));
            }
            if self.pos == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            if self.buf.len() > MAX_LINE_BYTES {
                return Err(std::io::Error::other("an audit line is longer than 1 MiB"));
            }
            self.fill()?;
        }
    }
}

/// A record's `ts` as unix seconds, read from the line without parsing
/// the whole record (`"ts":"…"` is near its start).
pub fn line_ts(line: &[u8]) -> Option<i64> {
    let at = memchr::memmem::find(line, b"\"ts\":\"")? + 6;
    let end = at + memchr::memchr(b'"', line.get(at..)?)?;
    let ts = std::str::from_utf8(line.get(at..end)?).ok()?;
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(content: &[u8]) -> (Vec<Vec<u8>>, End) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, content).unwrap();
        let mut lines = Vec::new();
        let end = for_each_line(&p, |_, l| {
            lines.push(l.to_vec());
            true
        })
        .unwrap();
        (lines, end)
    }

    fn backward(content: &[u8]) -> Vec<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, content).unwrap();
        let mut b = Backwards::open(&p).unwrap();
        let mut out = Vec::new();
        while let Some(l) = b.next_line().unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn forward_lines_and_a_torn_end() {
        assert_eq!(forward(b""), (vec![], End::Clean));
        assert_eq!(
            forward(b"a\nbb\n"),
            (vec![b"a".to_vec(), b"bb".to_vec()], End::Clean)
        );
        assert_eq!(forward(b"a\nbb"), (vec![b"a".to_vec()], End::Torn(2)));
    }

    #[test]
    fn backward_lines_are_the_forward_ones_reversed_across_blocks() {
        assert!(backward(b"").is_empty());
        assert!(backward(b"torn only").is_empty());
        assert_eq!(
            backward(b"a\nbb\ntorn"),
            vec![b"bb".to_vec(), b"a".to_vec()]
        );
        // Lines straddling block boundaries, empty lines included.
        let mut content = Vec::new();
        for i in 0..5000 {
            content.extend_from_slice(format!("line {i} {}\n", "x".repeat(i % 97)).as_bytes());
            if i % 700 == 0 {
                content.push(b'\n');
            }
        }
        let (fwd, _) = forward(&content);
        let mut back = backward(&content);
        back.reverse();
        assert_eq!(back, fwd);
    }
}
