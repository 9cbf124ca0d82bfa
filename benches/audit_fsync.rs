//! Audit durability throughput: one fsync per durable record vs grouped
//! fsync, side by side in one run, on a real file in the current folder's
//! filesystem (`BENCH_DIR` to choose another).
//!
//!     cargo bench --bench audit_fsync
//!
//! Each mode: C concurrent writers each append N `attempt` records and wait
//! for durability, as requests do before going upstream. Reports records/s
//! and the median of 3 interleaved repetitions, plus the disk's own fsync
//! latency measured in the same run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use batch_gateway::audit::{AuditLog, Options, Phase, Record};

const CONCURRENCY: usize = 32;
const PER_WRITER: usize = 64;
const REPS: usize = 3;

fn record() -> Record {
    let mut r = Record::new(Phase::Attempt);
    r.request_id = Some("00000000-0000-4000-8000-000000000000".into());
    r.method = Some("POST".into());
    r.path = Some("/2.8/campaigns/delete".into());
    r.action = Some("campaigns.delete");
    r.project = Some("marketing-prod".into());
    r.campaign_id = Some("orchestration_0664hyh918hr1gnzka9py5t62nrc0e1f".into());
    r
}

async fn run(dir: &std::path::Path, max_batch: usize) -> f64 {
    let path = dir.join(format!("bench-{max_batch}-{}.jsonl", uuid::Uuid::new_v4()));
    let log = AuditLog::open(
        path.clone(),
        Options {
            max_batch,
            ..Options::default()
        },
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_WRITER {
                if log.append(record(), true).await.is_err() {
                    return false;
                }
            }
            true
        }));
    }
    let mut ok = true;
    for t in tasks {
        ok &= t.await.unwrap_or(false);
    }
    let secs = started.elapsed().as_secs_f64();
    drop(log);
    let _ = std::fs::remove_file(&path);
    assert!(ok, "an append failed");
    (CONCURRENCY * PER_WRITER) as f64 / secs
}

/// The disk's own fsync latency: p50, p99, p99.9 and the slowest of
/// `FSYNC_SAMPLES` appends each followed by `fdatasync`. Enough samples
/// that p99.9 is not the slowest one.
const FSYNC_SAMPLES: usize = 3000;

fn fsync_latency(dir: &std::path::Path) -> [Duration; 4] {
    use std::io::Write;
    let path = dir.join("bench-fsync.probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let mut samples = Vec::new();
    for _ in 0..FSYNC_SAMPLES {
        let _ = f.write_all(b"x\n");
        let t = Instant::now();
        let _ = f.sync_data();
        samples.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    samples.sort();
    let at = |per_mille: usize| samples[samples.len() * per_mille / 1000];
    [at(500), at(990), at(999), samples[samples.len() - 1]]
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let dir = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let [p50, p99, p999, max] = fsync_latency(&dir);
    println!(
        "audit fsync benchmark in {} ({CONCURRENCY} writers x {PER_WRITER} durable records, {REPS} reps)",
        dir.display()
    );
    println!(
        "disk fsync latency ({FSYNC_SAMPLES} samples): p50 {p50:?}, p99 {p99:?}, p99.9 {p999:?}, max {max:?}"
    );
    // For bench/run.sh's target check.
    println!("disk fsync p99 us: {:.1}", p99.as_secs_f64() * 1e6);
    let (mut single, mut grouped) = (Vec::new(), Vec::new());
    for _ in 0..REPS {
        single.push(rt.block_on(run(&dir, 1)));
        grouped.push(rt.block_on(run(&dir, 4096)));
    }
    let (s, s_lo, s_hi) = median(single);
    let (g, g_lo, g_hi) = median(grouped);
    println!("per-record fsync: {s:>10.0} records/s (min {s_lo:.0}, max {s_hi:.0})");
    println!("grouped fsync:    {g:>10.0} records/s (min {g_lo:.0}, max {g_hi:.0})");
    println!("grouped / per-record: {:.1}x", g / s);
}
