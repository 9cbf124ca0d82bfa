//! Several chains at once: the audit trail stays per replica (each pod
//! writes its own, durable on its own disk before anything is sent), so a
//! reviewer is handed a folder holding one sub-folder per replica.
//! `audit verify` checks each chain on its own; `audit query` and `audit
//! report` merge the chains' records by `ts`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::verify::{self, Broken, Filter};

/// One hash chain: its files in chain order, and the sub-folder it came
/// from when several chains were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: Option<String>,
    pub files: Vec<PathBuf>,
}

/// The chains in `paths`. A folder whose sub-folders hold audit files is
/// a folder of replicas: each sub-folder is a chain (and files beside
/// them, if any, one more, named after the folder). Everything else —
/// files, folders of one chain's files — is one chain, as `audit verify`
/// always read it.
pub fn collect_chains(paths: &[PathBuf]) -> Result<Vec<Chain>, Broken> {
    let mut chains = Vec::new();
    let mut single = Vec::new();
    for p in paths {
        let subs = if p.is_dir() { sub_folders(p)? } else { vec![] };
        if subs.is_empty() {
            single.push(p.clone());
            continue;
        }
        for sub in subs {
            chains.push(Chain {
                name: Some(display_name(&sub)),
                files: verify::collect_files(std::slice::from_ref(&sub))?,
            });
        }
        let own = verify::collect_files(std::slice::from_ref(p))?;
        if !own.is_empty() {
            chains.push(Chain {
                name: Some(display_name(p)),
                files: own,
            });
        }
    }
    if !single.is_empty() {
        chains.push(Chain {
            name: None,
            files: verify::collect_files(&single)?,
        });
    }
    if chains.len() > 1 {
        for (i, c) in chains.iter_mut().enumerate() {
            c.name.get_or_insert_with(|| format!("chain {}", i + 1));
        }
    }
    Ok(chains)
}

fn display_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Sub-folders of `dir` that hold at least one file, sorted by name.
fn sub_folders(dir: &Path) -> Result<Vec<PathBuf>, Broken> {
    let broken = |e: std::io::Error| Broken {
        file: dir.display().to_string(),
        line: 0,
        seq: None,
        message: format!("cannot read: {e}"),
    };
    let mut subs = Vec::new();
    for e in std::fs::read_dir(dir).map_err(broken)? {
        let path = e.map_err(broken)?.path();
        if path.is_dir()
            && std::fs::read_dir(&path)
                .map(|mut r| r.any(|e| e.is_ok_and(|e| e.path().is_file())))
                .unwrap_or(false)
        {
            subs.push(path);
        }
    }
    subs.sort();
    Ok(subs)
}

/// The records of every chain within `filter`, merged by `ts` (records of
/// one chain keep their order; RFC 3339 UTC with milliseconds sorts as
/// text).
pub fn query(chains: &[Chain], filter: &Filter) -> Result<Vec<(String, Value)>, Broken> {
    let mut rows = Vec::new();
    for_each_record(chains, filter, |raw, rec| rows.push((raw.to_string(), rec)))?;
    Ok(rows)
}

/// Calls `f(line, record)` for the records of every chain within `filter`,
/// merged by `ts` as [`query`] orders them, without holding them: memory
/// is one record per chain, whatever the trail's size.
pub fn for_each_record(
    chains: &[Chain],
    filter: &Filter,
    mut f: impl FnMut(&str, Value),
) -> Result<(), Broken> {
    let mut sources: Vec<verify::Records<'_>> = chains
        .iter()
        .map(|c| verify::Records::new(&c.files, filter))
        .collect();
    let mut heads: Vec<Option<(String, Value)>> = Vec::with_capacity(sources.len());
    for s in &mut sources {
        heads.push(s.next().transpose()?);
    }
    // A linear scan for the earliest head: replicas are a handful.
    while let Some(i) = heads
        .iter()
        .enumerate()
        .filter_map(|(i, h)| Some((i, ts(&h.as_ref()?.1))))
        .min_by(|a, b| a.1.cmp(b.1))
        .map(|(i, _)| i)
    {
        let next = sources[i].next().transpose()?;
        if let Some((raw, rec)) = std::mem::replace(&mut heads[i], next) {
            f(&raw, rec);
        }
    }
    Ok(())
}

/// The newest `ts` of any chain: its last file's last complete record
/// (read backwards, one block).
pub fn newest_ts(chains: &[Chain]) -> Option<time::OffsetDateTime> {
    chains
        .iter()
        .filter_map(|c| {
            let last = c.files.last()?;
            let mut back = super::lines::Backwards::open(last).ok()?;
            while let Ok(Some(line)) = back.next_line() {
                if let Ok(rec) = serde_json::from_slice::<Value>(&line)
                    && let Ok(t) = time::OffsetDateTime::parse(
                        ts(&rec),
                        &time::format_description::well_known::Rfc3339,
                    )
                {
                    return Some(t);
                }
            }
            None
        })
        .max()
}

fn ts(rec: &Value) -> &str {
    rec.get("ts").and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, ts: &[&str]) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut prev = super::super::ZERO_HASH.to_string();
        let mut text = String::new();
        for (i, t) in ts.iter().enumerate() {
            let line = serde_json::json!({"v": 1, "seq": i + 1, "ts": t, "phase": "denied",
                "reason": "token_missing", "prev": prev})
            .to_string();
            use sha2::Digest;
            prev = hex::encode(sha2::Sha256::digest(line.as_bytes()));
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn a_folder_of_replica_folders_is_one_chain_each_and_queries_merge_by_ts() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "gw-b/audit.jsonl",
            &["2026-12-01T10:00:00.002Z", "2026-12-01T10:00:00.004Z"],
        );
        write(
            dir.path(),
            "gw-a/audit.jsonl",
            &["2026-12-01T10:00:00.001Z", "2026-12-01T10:00:00.003Z"],
        );
        let chains = collect_chains(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = chains.iter().map(|c| c.name.clone().unwrap()).collect();
        assert_eq!(names, ["gw-a", "gw-b"]);
        for c in &chains {
            assert!(verify::verify(&c.files, &verify::VerifyOptions::default()).is_ok());
        }
        // As one chain, the two files break each other.
        let all: Vec<PathBuf> = chains.iter().flat_map(|c| c.files.clone()).collect();
        assert!(verify::verify(&all, &verify::VerifyOptions::default()).is_err());
        let rows = query(&chains, &Filter::default()).unwrap();
        let order: Vec<_> = rows.iter().map(|(_, r)| ts(r).to_string()).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
        assert_eq!(order.len(), 4);
        // One replica's own folder stays one unnamed chain.
        let one = collect_chains(&[dir.path().join("gw-a")]).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].name, None);
    }

    #[test]
    fn the_merge_keeps_each_chains_order_and_breaks_ties_by_chain() {
        let dir = tempfile::tempdir().unwrap();
        // gw-a's clock stepped back once: its records still come in its order.
        write(
            dir.path(),
            "gw-a/audit.jsonl",
            &[
                "2026-12-01T10:00:00.005Z",
                "2026-12-01T10:00:00.001Z",
                "2026-12-01T10:00:00.007Z",
            ],
        );
        write(
            dir.path(),
            "gw-b/audit.jsonl",
            &["2026-12-01T10:00:00.005Z", "2026-12-01T10:00:00.006Z"],
        );
        let chains = collect_chains(&[dir.path().to_path_buf()]).unwrap();
        let mut seen = Vec::new();
        for_each_record(&chains, &Filter::default(), |raw, rec| {
            assert!(raw.contains(ts(&rec)));
            seen.push(ts(&rec).to_string());
        })
        .unwrap();
        let ms: Vec<&str> = seen.iter().map(|t| &t[20..23]).collect();
        assert_eq!(ms, ["005", "001", "005", "006", "007"]);
        assert_eq!(query(&chains, &Filter::default()).unwrap().len(), 5);
    }
}
