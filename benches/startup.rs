//! Start-up cost against the audit trail's size: time until the admin
//! port answers and peak resident memory, for generated trails of 10 MB,
//! 1 GB and 3 GB (`STARTUP_SIZES_MB=10,1000,3000` to change). Continuing
//! the chain reads the tail of the newest file; rebuilding the single-use
//! memory reads newest first and stops at the first record older than any
//! live token: both should stay flat as the trail grows.
//!
//! `cargo bench --bench startup`. Each trail is 100 MB rotated files of
//! old records (a valid chain), with a live file whose last records are
//! recent single-use attempts, written once into a scratch folder.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const FILE_BYTES: u64 = 100 * 1024 * 1024;

fn ts(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Writes a chained trail of about `total` bytes into `dir`.
fn generate(dir: &Path, total: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let old = ts(now - 30 * 86_400);
    let (mut seq, mut prev) = (0u64, "0".repeat(64));
    let mut written = 0u64;
    let mut file_start = 1u64;
    let live = dir.join("audit.jsonl");
    let mut out = BufWriter::new(std::fs::File::create(dir.join("tmp")).unwrap());
    let mut in_file = 0u64;
    let recent_from = total.saturating_sub(2_000_000);
    while written < total {
        seq += 1;
        let line = if written >= recent_from {
            format!(
                r#"{{"v":1,"seq":{seq},"ts":"{}","request_id":"r{seq}","phase":"attempt","decision":"allow","reason":"ok","caller":{{"iss":"https://idp","sub":"svc","team":"growth","jti":"j{seq}","token_fp":"0123456789abcdef","single_use":true,"exp":{}}},"client_addr":"127.0.0.1:4000","method":"POST","path":"/2.8/campaigns/delete","prev":"{prev}"}}"#,
                ts(now - 60),
                now + 600
            )
        } else {
            format!(
                r#"{{"v":1,"seq":{seq},"ts":"{old}","request_id":"r{seq}","phase":"denied","decision":"deny","reason":"token_missing","client_addr":"127.0.0.1:4000","method":"POST","path":"/2.8/campaigns/delete","prev":"{prev}"}}"#
            )
        };
        prev = hex::encode(Sha256::digest(line.as_bytes()));
        out.write_all(line.as_bytes()).unwrap();
        out.write_all(b"\n").unwrap();
        let n = line.len() as u64 + 1;
        written += n;
        in_file += n;
        if in_file >= FILE_BYTES && written < total {
            out.flush().unwrap();
            drop(out);
            std::fs::rename(
                dir.join("tmp"),
                dir.join(format!("audit.jsonl.{file_start:012}")),
            )
            .unwrap();
            file_start = seq + 1;
            in_file = 0;
            out = BufWriter::new(std::fs::File::create(dir.join("tmp")).unwrap());
        }
    }
    out.flush().unwrap();
    drop(out);
    std::fs::rename(dir.join("tmp"), live).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (seconds until the admin port answered, peak RSS in MiB).
fn start_once(dev_dir: &Path) -> (f64, f64) {
    let (data, admin) = (free_port(), free_port());
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_batch-gateway"))
        .args(["serve", "--dev", "--dev-dir"])
        .arg(dev_dir)
        .args(["--listen", &format!("127.0.0.1:{data}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = loop {
        if std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok() {
            break started.elapsed().as_secs_f64();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "never came up"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let hwm_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    child.kill().unwrap();
    child.wait().unwrap();
    (up, hwm_kb / 1024.0)
}

fn main() {
    let sizes: Vec<u64> = std::env::var("STARTUP_SIZES_MB")
        .unwrap_or_else(|_| "10,1000,3000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let scratch = tempfile::tempdir().unwrap();
    println!("trail_mb  files  start_s(median of 5)  peak_rss_mib(max)");
    for mb in sizes {
        let dev = scratch.path().join(format!("dev-{mb}"));
        let audit = dev.join("audit");
        let t = Instant::now();
        generate(&audit, mb * 1_000_000);
        eprintln!("generated {mb} MB in {:.1} s", t.elapsed().as_secs_f64());
        // Let the generated trail's write-back finish before timing starts.
        let _ = Command::new("sync").status();
        let files = std::fs::read_dir(&audit).unwrap().count();
        let mut times = Vec::new();
        let mut rss: f64 = 0.0;
        for _ in 0..5 {
            let (s, r) = start_once(&dev);
            times.push(s);
            rss = rss.max(r);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("{mb:>8}  {files:>5}  {:>20.3}  {rss:>17.1}", times[2]);
        std::fs::remove_dir_all(&dev).unwrap();
    }
}
