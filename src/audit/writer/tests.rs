//! The writer: group commit, continuation, rotation and its crash points,
//! retention, budgets and summaries, each as the harm it would cause.

use super::*;
use crate::audit::record::*;
use crate::audit::sched::*;
use std::path::Path;

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

#[cfg(target_os = "linux")]
#[test]
fn stat_fields_are_counted_after_the_command_name() {
    let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 3 1 0 0 20 0 3";
    assert_eq!(stat_field(stat, 3), Some("S"));
    assert_eq!(stat_field(stat, 4), Some("1"));
    assert_eq!(stat_field(stat, 19), Some("0"));
    assert_eq!(stat_field(stat, 18), Some("20"));
    assert_eq!(stat_field(stat, 2), None);
    assert_eq!(stat_field("no command name", 3), None);
}

/// The syncer runs as SCHED_BATCH (policy 3 in proc(5)'s field 41)
/// at the nice value it had, both for a thread that calls
/// `run_as_batch` and for the syncers `AuditLog::open` starts.
#[cfg(target_os = "linux")]
#[test]
fn the_syncer_runs_as_sched_batch_at_its_nice_value() {
    fn policy_and_nice(stat: &str) -> (String, String) {
        (
            stat_field(stat, 41).unwrap().to_string(),
            stat_field(stat, 19).unwrap().to_string(),
        )
    }
    let own = || std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let (before, after) = std::thread::spawn(move || {
        let before = policy_and_nice(&own());
        run_as_batch();
        (before, policy_and_nice(&own()))
    })
    .join()
    .unwrap();
    assert_eq!(after.1, before.1, "the nice value is kept");
    if before.1 == "0" {
        assert_eq!(after.0, "3", "SCHED_BATCH");
    } else {
        assert_eq!(after.0, before.0, "left alone at nice {}", before.1);
    }

    let dir = tempfile::tempdir().unwrap();
    let _log = AuditLog::open(dir.path().join("audit.jsonl"), Options::default());
    // The syncer names itself and sets its policy as it starts;
    // syncers of other tests in this process may be starting too, so
    // wait until one is seen and every one seen has.
    let syncers = || -> Vec<(String, String)> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                (comm.trim() == "audit-syncer")
                    .then(|| std::fs::read_to_string(t.join("stat")).ok())
                    .flatten()
                    .map(|s| policy_and_nice(&s))
            })
            .collect()
    };
    let want = (after.0.clone(), before.1.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = syncers();
        if !seen.is_empty() && seen.iter().all(|s| *s == want) {
            break;
        }
        assert!(Instant::now() < deadline, "{seen:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn a_batch_that_cannot_be_written_leaves_the_chain_where_the_file_ends() {
    use crate::audit::verify::{VerifyOptions, verify};
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("audit.jsonl");
    let log = AuditLog::open(live.clone(), Options::default());
    log.append(Record::new(Phase::Denied), true).await.unwrap();
    // The file moves away and the path now fails every write (ENOSPC):
    // the writer notices, and its repair record and both appends are
    // buffered, chained and then refused by the disk.
    let first = dir.path().join("audit.jsonl.000000000001");
    std::fs::rename(&live, &first).unwrap();
    std::os::unix::fs::symlink("/dev/full", &live).unwrap();
    assert!(log.append(Record::new(Phase::Denied), false).await.is_err());
    assert!(log.append(Record::new(Phase::Attempt), true).await.is_err());
    // Space comes back as an empty file: the chain must go on from the
    // last line that reached a disk, not from the refused ones.
    std::fs::remove_file(&live).unwrap();
    assert!(log.recover().await);
    log.append(Record::new(Phase::Denied), true).await.unwrap();
    drop(log);
    let v = verify(&[first, live], &VerifyOptions::default()).unwrap();
    assert_eq!((v.first_seq, v.last_seq), (Some(1), Some(v.records)));
    assert!(
        v.repairs.iter().any(|(_, r)| r == "unwritable"),
        "{:?}",
        v.repairs
    );
}

/// Answers go through a task on the runtime the log was opened on;
/// without one, or once that runtime is gone, the writer answers
/// directly. No request is left waiting either way.
#[test]
fn every_append_is_answered_with_or_without_the_relay_task() {
    let dir = tempfile::tempdir().unwrap();
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let append = |rt: &tokio::runtime::Runtime, log: &AuditLog| {
        rt.block_on(async {
            let a = log.append(Record::new(Phase::Attempt), true);
            let b = log.append(Record::new(Phase::Outcome), false);
            let (a, b) = tokio::join!(a, b);
            a.and(b)
        })
    };
    // Opened on a runtime: the relay answers.
    let first = rt();
    let log =
        first.block_on(async { AuditLog::open(dir.path().join("a.jsonl"), Options::default()) });
    assert!(log.is_available());
    assert!(append(&first, &log).is_ok());
    // That runtime shuts down, and its relay task with it: answered
    // directly, awaited on another runtime.
    drop(first);
    assert!(append(&rt(), &log).is_ok());
    // Opened with no runtime at all.
    let bare = AuditLog::open(dir.path().join("b.jsonl"), Options::default());
    assert!(append(&rt(), &bare).is_ok());
    drop((log, bare));
    for (file, n) in [("a.jsonl", 4), ("b.jsonl", 2)] {
        let v = crate::audit::verify::verify(
            &[dir.path().join(file)],
            &crate::audit::verify::VerifyOptions::default(),
        )
        .unwrap();
        assert_eq!(v.records, n, "{file}");
    }
}

/// The request that leads a turn's write may be dropped while it
/// yields (its client went away): the records queued behind it are
/// written all the same, and their requests answered.
#[tokio::test]
async fn a_dropped_leader_still_writes_the_turn_for_the_others() {
    use std::future::Future;
    use std::task::{Context, Waker};
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path().join("a.jsonl"), Options::default());
    let mut cx = Context::from_waker(Waker::noop());
    let mut leader = Box::pin(log.append(Record::new(Phase::Denied), false));
    assert!(
        leader.as_mut().poll(&mut cx).is_pending(),
        "the leader yields"
    );
    let mut follower = Box::pin(log.append(Record::new(Phase::Attempt), true));
    assert!(follower.as_mut().poll(&mut cx).is_pending());
    drop(leader);
    let answered = tokio::time::timeout(Duration::from_secs(10), follower).await;
    assert!(matches!(answered, Ok(Ok(()))), "{answered:?}");
    // Both records reached the file, chained.
    let v = crate::audit::verify::verify(
        &[dir.path().join("a.jsonl")],
        &crate::audit::verify::VerifyOptions::default(),
    )
    .unwrap();
    assert_eq!(v.records, 2);
    // The next turn has a leader of its own.
    log.append(Record::new(Phase::Denied), false).await.unwrap();
}

/// 40 requests on four worker threads append ten records each, one
/// after the other, as requests do: an attempt (durable), then an
/// outcome. Each must be answered. The files, oldest first.
async fn concurrent_appends(dir: &Path, opts: Options) -> Vec<PathBuf> {
    let path = dir.join("a.jsonl");
    let log = AuditLog::open(path.clone(), opts);
    let tasks: Vec<_> = (0..40u64)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    let mut rec = Record::new(if i % 2 == 0 {
                        Phase::Attempt
                    } else {
                        Phase::Outcome
                    });
                    rec.request_id = Some(format!("r{t}-{i}").into());
                    log.append(rec, i % 2 == 0).await?;
                }
                Ok::<(), AuditError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    drop(log);
    let mut files = rotated_files(&path);
    files.push(path);
    files
}

/// Every record is in the files exactly once, and the chain holds;
/// besides them, only each rotated-to file's opening `rotate` record.
fn assert_one_chain_of_400(files: &[PathBuf]) {
    let v = crate::audit::verify::verify(files, &crate::audit::verify::VerifyOptions::default())
        .unwrap();
    let recs: Vec<serde_json::Value> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    let rotates = recs.iter().filter(|r| r["phase"] == "rotate").count();
    assert_eq!(rotates, files.len() - 1, "one per file after the first");
    assert_eq!(
        (v.first_seq, v.last_seq),
        (Some(1), Some(400 + rotates as u64))
    );
    let mut ids: Vec<String> = recs
        .iter()
        .filter(|r| r["phase"] != "rotate")
        .map(|r| r["request_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_from_many_threads_form_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let files = concurrent_appends(dir.path(), Options::default()).await;
    assert_eq!(files.len(), 1);
    assert_one_chain_of_400(&files);
}

/// The same with a file rotated every few records, so that rotations
/// land while durable records wait for their fsync: every request is
/// still answered, and the chain runs across the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_concurrent_appends_keeps_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        rotate_bytes: Some(2048),
        ..Options::default()
    };
    let files = concurrent_appends(dir.path(), opts).await;
    assert!(files.len() >= 3, "{} files", files.len());
    assert_one_chain_of_400(&files);
}

/// A crash between any two steps of a rotation: the next start
/// continues the chain from the newest record on disk, every record
/// that was acknowledged is there once, no file was replaced, and the
/// folder verifies.
#[tokio::test]
async fn a_crash_between_any_two_rotation_steps_continues_the_chain() {
    use crate::audit::verify::{VerifyOptions, collect_files, verify};
    for step in [
        RotationStep::Synced,
        RotationStep::Pruned,
        RotationStep::NextWritten,
        RotationStep::Linked,
        RotationStep::Renamed,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let opts = |crash| Options {
            rotate_bytes: Some(2048),
            crash_after: crash,
            ..Options::default()
        };
        let mut acked = Vec::new();
        let mut firsts: Vec<(PathBuf, String)> = Vec::new();
        // Two rotations happen cleanly before the crashing one.
        let log = AuditLog::open(path.clone(), opts(None));
        for i in 0..40 {
            let mut rec = Record::new(Phase::Attempt);
            rec.request_id = Some(format!("a{i}").into());
            log.append(rec, true).await.unwrap();
            acked.push(format!("a{i}"));
        }
        drop(log);
        for f in rotated_files(&path) {
            let first = std::fs::read_to_string(&f).unwrap();
            firsts.push((f, first.lines().next().unwrap().to_string()));
        }
        let log = AuditLog::open(path.clone(), opts(Some(step)));
        let mut i = 0;
        while log.is_available() && i < 200 {
            let mut rec = Record::new(Phase::Attempt);
            rec.request_id = Some(format!("b{i}").into());
            if log.append(rec, true).await.is_ok() {
                acked.push(format!("b{i}"));
            }
            i += 1;
            tokio::task::yield_now().await;
        }
        assert!(!log.is_available(), "{step:?}: the crash point was reached");
        drop(log);
        // The restart.
        let log = AuditLog::open(path.clone(), opts(None));
        assert!(log.recover().await, "{step:?}");
        for i in 0..30 {
            let mut rec = Record::new(Phase::Attempt);
            rec.request_id = Some(format!("c{i}").into());
            log.append(rec, true).await.unwrap();
            acked.push(format!("c{i}"));
        }
        drop(log);
        let files = collect_files(&[dir.path().to_path_buf()]).unwrap();
        let v =
            verify(&files, &VerifyOptions::default()).unwrap_or_else(|e| panic!("{step:?}: {e}"));
        assert_eq!(v.first_seq, Some(1), "{step:?}");
        let mut ids = Vec::new();
        for f in &files {
            for l in std::fs::read_to_string(f).unwrap().lines() {
                let r: serde_json::Value = serde_json::from_str(l).unwrap();
                if let Some(id) = r["request_id"].as_str() {
                    ids.push(id.to_string());
                }
            }
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{step:?}: a record twice");
        for a in &acked {
            assert!(ids.contains(a), "{step:?}: acknowledged {a} is gone");
        }
        for (f, first) in &firsts {
            let now = std::fs::read_to_string(f).unwrap();
            assert_eq!(
                now.lines().next(),
                Some(first.as_str()),
                "{step:?}: {f:?} replaced"
            );
        }
        assert!(
            !next_name(&path).exists(),
            "{step:?}: the unfinished next file is gone"
        );
    }
}

/// Writes `n` chained records dated `days_ago` into `path`,
/// continuing (seq, prev).
fn old_chain(path: &Path, n: u64, days_ago: i64, seq: u64, prev: &str) -> (u64, String) {
    let ts = crate::common::rfc3339_millis(
        time::OffsetDateTime::now_utc() - time::Duration::days(days_ago),
    );
    let (mut seq, mut prev) = (seq, prev.to_string());
    let mut out = String::new();
    for _ in 0..n {
        seq += 1;
        let line = serde_json::json!({"v": 1, "seq": seq, "ts": ts, "phase": "denied",
            "decision": "deny", "prev": prev})
        .to_string();
        prev = hex::encode(Sha256::digest(line.as_bytes()));
        out.push_str(&line);
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
    (seq, prev)
}

/// A crash after a prune record is durable but before its files are
/// removed: the next start removes them (the record accounts for
/// them), and later prunes go on; verify accepts the start.
#[tokio::test]
async fn a_crash_between_a_prune_record_and_the_removal_is_finished_later() {
    use crate::audit::verify::{VerifyOptions, collect_files, verify};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let (s1, h1) = old_chain(&rotated_name(&path, 1), 5, 10, 0, ZERO_HASH);
    let (s2, h2) = old_chain(&rotated_name(&path, s1 + 1), 5, 10, s1, &h1);
    old_chain(&path, 3, 1, s2, &h2);
    let opts = |crash| Options {
        retention: Some(Duration::from_secs(5 * 86_400)),
        crash_after: crash,
        ..Options::default()
    };
    let log = AuditLog::open(path.clone(), opts(Some(RotationStep::PruneRecorded)));
    // The syncer looks for files past retention as it starts.
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.is_available() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!log.is_available(), "crashed after the prune record");
    drop(log);
    assert!(
        rotated_name(&path, 1).exists(),
        "not removed before the crash"
    );
    let live = std::fs::read_to_string(&path).unwrap();
    assert!(live.contains("\"phase\":\"prune\""), "{live}");
    // The restart: the leftover files go at the next rotation.
    let log = AuditLog::open(path.clone(), opts(None));
    let deadline = Instant::now() + Duration::from_secs(5);
    while rotated_name(&path, 1).exists() && Instant::now() < deadline {
        log.append(Record::new(Phase::Attempt), true).await.unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    log.append(Record::new(Phase::Attempt), true).await.unwrap();
    drop(log);
    assert!(!rotated_name(&path, 1).exists());
    assert!(!rotated_name(&path, s1 + 1).exists());
    let files = collect_files(&[dir.path().to_path_buf()]).unwrap();
    let v = verify(&files, &VerifyOptions::default()).unwrap();
    assert!(v.pruned_by_retention && v.first_seq > Some(s2), "{v:?}");
}

/// A rotation whose target name is taken replaces nothing: it fails
/// closed (a repair record, then unavailable) and goes on once the name
/// is free.
#[tokio::test]
async fn a_taken_rotation_name_fails_closed_and_replaces_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let opts = Options {
        rotate_bytes: Some(2048),
        ..Options::default()
    };
    let log = AuditLog::open(path.clone(), opts);
    let taken = rotated_name(&path, 1);
    std::fs::write(&taken, "someone else's file\n").unwrap();
    let mut i = 0;
    while log.is_available() && i < 100 {
        let _ = log.append(Record::new(Phase::Attempt), true).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(!log.is_available(), "refuses once the name is found taken");
    assert!(!log.recover().await, "still taken");
    assert_eq!(
        std::fs::read_to_string(&taken).unwrap(),
        "someone else's file\n"
    );
    let live = std::fs::read_to_string(&path).unwrap();
    assert!(live.contains("rotation_target_exists"), "{live}");
    std::fs::rename(&taken, dir.path().join("moved-away")).unwrap();
    assert!(log.recover().await, "the name is free again");
    log.append(Record::new(Phase::Attempt), true).await.unwrap();
    drop(log);
    let files = vec![rotated_name(&path, 1), path.clone()];
    crate::audit::verify::verify(&files, &crate::audit::verify::VerifyOptions::default()).unwrap();
}

#[test]
fn rotated_files_are_found_oldest_first_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("audit.jsonl");
    for name in [
        "audit.jsonl",
        "audit.jsonl.000000000101",
        "audit.jsonl.000000000001",
        "audit.jsonl.1",
        "other.000000000001",
    ] {
        std::fs::write(dir.path().join(name), "").unwrap();
    }
    let names: Vec<String> = rotated_files(&live)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["audit.jsonl.000000000001", "audit.jsonl.000000000101"]
    );
}
