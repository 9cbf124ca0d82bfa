//! A real Redis (Debian's `redis-server`) on a free port of 127.0.0.1,
//! started by the test, with the faults the tests drive: SIGSTOP (a hang),
//! kill (refused connections), a restart with nothing (a store that lost
//! its data), FLUSHALL. And gateway replicas as real processes of the
//! built binary, each with its own config, audit trail and replica name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Daemon, World, free_port, table};

pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl Redis {
    /// Plain TCP on a free port; nothing persisted.
    pub fn start(dir: &Path) -> Redis {
        Self::launch(dir, None)
    }

    /// Plain TCP on `port` (one a gateway was configured with before).
    pub fn start_on(dir: &Path, port: u16) -> Redis {
        let mut r = Redis {
            port,
            dir: dir.to_path_buf(),
            child: None,
            tls: None,
        };
        assert!(r.spawn(), "redis-server did not start on port {port}");
        r
    }

    /// TLS only (`--port 0 --tls-port`), with this CA, certificate and key.
    pub fn start_tls(dir: &Path, ca: PathBuf, cert: PathBuf, key: PathBuf) -> Redis {
        Self::launch(dir, Some((ca, cert, key)))
    }

    fn launch(dir: &Path, tls: Option<(PathBuf, PathBuf, PathBuf)>) -> Redis {
        let mut r = Redis {
            port: 0,
            dir: dir.to_path_buf(),
            child: None,
            tls,
        };
        // A free port can be taken between the probe and the bind: retry.
        for _ in 0..5 {
            r.port = free_port();
            if r.spawn() {
                return r;
            }
        }
        panic!("redis-server did not start (is Debian's redis-server installed?)");
    }

    fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir"])
            .arg(&self.dir)
            .args(["--maxmemory-policy", "noeviction"]);
        match &self.tls {
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Some((ca, cert, key)) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-ca-cert-file")
                    .arg(ca)
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://127.0.0.1:{}", self.port),
        }
    }

    /// Killed: connections are refused.
    pub fn kill(&mut self) {
        super::kill(&mut self.child);
    }

    /// Started again on the same port, with nothing in it.
    pub fn restart_empty(&mut self) {
        self.kill();
        let started = Instant::now();
        while !self.spawn() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A command over a plain connection (tests of the TLS server use
    /// none).
    pub fn cmd(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_connection().unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c).unwrap()
    }

    pub fn get(&self, key: &str) -> Option<String> {
        redis::from_redis_value(self.cmd(&["GET", key])).ok()
    }

    /// Milliseconds `key` has left (-1: no expiry, -2: no such key).
    pub fn pttl(&self, key: &str) -> i64 {
        redis::from_redis_value(self.cmd(&["PTTL", key])).unwrap()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> =
            redis::from_redis_value(self.cmd(&["KEYS", "*"])).unwrap_or_default();
        k.sort();
        k
    }
}

/// A Redis Sentinel (the same binary, `--sentinel`) watching `master`
/// under the name `name`.
pub struct Sentinel {
    pub port: u16,
    child: Child,
}

impl Sentinel {
    pub fn start(dir: &Path, master: &Redis, name: &str) -> Sentinel {
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {} 1\n",
                    master.port
                ),
            )
            .unwrap();
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sentinel { port, child };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server --sentinel did not start");
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl super::Daemon for Redis {
    fn child(&self) -> Option<&Child> {
        self.child.as_ref()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// A gateway replica: the real binary, its own config, audit trail and name.
pub struct Replica {
    pub name: String,
    pub addr: SocketAddr,
    pub admin: u16,
    pub config: PathBuf,
    child: Child,
}

impl Replica {
    /// `edit` changes the world's config; this adds the ports, the
    /// replica's own audit folder and name.
    pub fn start(w: &World, name: &str, edit: impl FnOnce(&mut toml::Table)) -> Replica {
        Self::start_with_env(w, name, &[], edit)
    }

    /// [`Replica::start`] with extra environment variables.
    pub fn start_with_env(
        w: &World,
        name: &str,
        env: &[(&str, &str)],
        edit: impl FnOnce(&mut toml::Table),
    ) -> Replica {
        let (data, admin) = (free_port(), free_port());
        let mut doc: toml::Table = w.config_text().parse().unwrap();
        edit(&mut doc);
        let s = table(&mut doc, "server");
        s.insert("listen".into(), format!("127.0.0.1:{data}").into());
        s.insert("admin_listen".into(), format!("127.0.0.1:{admin}").into());
        let a = table(&mut doc, "audit");
        a.insert("file".into(), format!("audit/{name}/audit.jsonl").into());
        a.insert("replica".into(), name.into());
        let config = w.write(&format!("{name}.toml"), &toml::to_string(&doc).unwrap());
        let child = Command::new(env!("CARGO_BIN_EXE_batch-gateway"))
            .args(["serve", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Replica {
            name: name.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], data)),
            admin,
            config,
            child,
        };
        r.wait_healthy();
        r
    }

    fn wait_healthy(&self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if self.admin_get("/healthz").starts_with("HTTP/1.1 200") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("replica {} not healthy", self.name);
    }

    /// The whole answer of an admin GET, head and body.
    pub fn admin_get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.admin)) else {
            return String::new();
        };
        let _ = s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf
    }

    /// `/readyz`'s status line and JSON body.
    pub fn readyz(&self) -> (bool, serde_json::Value) {
        let text = self.admin_get("/readyz");
        let ok = text.starts_with("HTTP/1.1 200");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("{}");
        (ok, serde_json::from_str(body.trim()).unwrap_or_default())
    }

    pub fn metrics(&self) -> String {
        self.admin_get("/metrics")
    }

    /// One sample of `/metrics` (0 when absent).
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    pub fn audit_records(&self, w: &World) -> Vec<serde_json::Value> {
        std::fs::read_to_string(w.path(&format!("audit/{}/audit.jsonl", self.name)))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until `/readyz` names the shared state `want`.
    pub fn wait_shared_state(&self, want: &str, within: Duration) {
        let started = Instant::now();
        loop {
            let (_, body) = self.readyz();
            if body["shared_state"] == want {
                return;
            }
            assert!(
                started.elapsed() < within,
                "replica {} shared_state still {} (want {want})",
                self.name,
                body["shared_state"]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[shared_state]` on `url` with the given extra keys.
pub fn shared_state(doc: &mut toml::Table, url: &str, extra: &[(&str, toml::Value)]) {
    let mut t = toml::Table::new();
    t.insert("backend".into(), "redis".into());
    t.insert("url".into(), url.into());
    for (k, v) in extra {
        t.insert((*k).into(), v.clone());
    }
    doc.insert("shared_state".into(), toml::Value::Table(t));
}
