//! The single-use replay memory's resident size per remembered `jti`,
//! read from the process's own RSS (`/proc/self/status`), with the
//! gateway's allocator (mimalloc). Each measurement runs in a fresh child
//! process: `replay::ReplayCache` holding 1, 2 and 4 million tokens (the
//! 36-character jtis `token mint` writes, one issuer), and for comparison
//! what the memory was before issue 25, a moka cache keyed by
//! `"{len}:{iss}{jti}"` strings.
//!
//! `cargo bench --bench replay_memory`. Target: at most 48 bytes a jti.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn jti(i: u64) -> String {
    // The shape of a UUID, like the jtis `token mint` writes.
    let h = format!(
        "{:032x}",
        u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    );
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

const ISS: &str = "https://idp.bench";

fn child(variant: &str, n: u64) {
    let exp = batch_gateway::common::now_s() + 3600;
    let before = rss_kib();
    let bytes_per = |after: u64| (after.saturating_sub(before) * 1024) as f64 / n as f64;
    match variant {
        "compact" => {
            let c = batch_gateway::replay::ReplayCache::new(n);
            let t0 = std::time::Instant::now();
            for i in 0..n {
                c.reserve(ISS, &jti(i), exp).unwrap();
            }
            let insert = t0.elapsed();
            let after = rss_kib();
            // A replayed token costs a lookup; what making the jti costs is
            // taken out of both figures.
            let t0 = std::time::Instant::now();
            for i in (0..n).step_by(10) {
                assert!(c.reserve(ISS, &jti(i), exp).is_err());
            }
            let replay = t0.elapsed();
            let t0 = std::time::Instant::now();
            for i in 0..n {
                std::hint::black_box(jti(i));
            }
            let making = t0.elapsed().as_nanos() as f64 / n as f64;
            let ns_insert = insert.as_nanos() as f64 / n as f64 - making;
            let ns_replay = replay.as_nanos() as f64 / (n / 10) as f64 - making;
            assert_eq!(c.len(), n);
            println!(
                "{variant}\t{n}\t{:.1}\t{:.1}\t{ns_insert:.0}\t{ns_replay:.0}",
                bytes_per(after),
                c.table_bytes() as f64 / n as f64
            );
        }
        "moka" => {
            let c: moka::sync::Cache<String, i64> = moka::sync::Cache::builder().build();
            for i in 0..n {
                let j = jti(i);
                c.insert(format!("{}:{ISS}{j}", ISS.len()), exp);
            }
            c.run_pending_tasks();
            let after = rss_kib();
            println!("{variant}\t{n}\t{:.1}\t-\t-\t-", bytes_per(after));
        }
        _ => panic!("unknown variant {variant}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        return child(&args[2], args[3].parse().unwrap());
    }
    let me = std::env::current_exe().unwrap();
    println!("replay memory, resident bytes per remembered jti (fresh process each)");
    println!(
        "{:8} {:>10} {:>10} {:>13} {:>10} {:>10}",
        "variant", "tokens", "RSS B/jti", "tables B/jti", "insert ns", "replay ns"
    );
    for (variant, n) in [
        ("compact", 1_000_000u64),
        ("compact", 2_000_000),
        ("compact", 4_000_000),
        ("moka", 1_000_000),
    ] {
        let out = Command::new(&me)
            .args(["--child", variant, &n.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8(out.stdout).unwrap();
        let f: Vec<&str> = line.trim().split('\t').collect();
        println!(
            "{:8} {:>10} {:>10} {:>13} {:>10} {:>10}",
            f[0], f[1], f[2], f[3], f[4], f[5]
        );
    }
}
