//! Developer helpers: `serve --dev` (a gateway that works offline at once)
//! and `token mint` (sign a caller JWT).
//!
//! `serve --dev` generates a fresh Ed25519 key pair at every start; no
//! private key is ever part of the repository.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::Args;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Map, Value, json};

use crate::config::Config;

const DEV_CONFIG: &str = include_str!("../config/dev.toml");
const DEV_ISSUER: &str = "https://idp.dev.invalid";

#[derive(Args, Debug, Clone)]
pub struct MintArgs {
    /// PEM private key (PKCS#8) to sign with.
    #[arg(long)]
    pub key: PathBuf,
    /// Signing algorithm: EdDSA, ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512.
    #[arg(long, default_value = "EdDSA")]
    pub alg: String,
    /// `iss` claim.
    #[arg(long)]
    pub iss: String,
    /// `sub` claim.
    #[arg(long)]
    pub sub: String,
    /// `aud` claim.
    #[arg(long, default_value = "batch-gateway")]
    pub aud: String,
    /// The team claim's value (repeat for an array of teams).
    #[arg(long, required = true)]
    pub team: Vec<String>,
    /// The team claim's name.
    #[arg(long, default_value = "team")]
    pub team_claim: String,
    /// Lifetime in seconds (`exp - iat`).
    #[arg(long, default_value_t = 300)]
    pub ttl_s: i64,
    /// `kid` header.
    #[arg(long)]
    pub kid: Option<String>,
    /// Leave out `jti` (by default a random one is set).
    #[arg(long)]
    pub no_jti: bool,
    /// Extra claim NAME=VALUE (VALUE read as JSON when it parses, else as a string).
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    pub claims: Vec<String>,
    /// Bind the token to one request: sets htm, htu and bh (SHA-256 of the
    /// body file's exact bytes, base64url). Such a token is single-use.
    #[arg(long, num_args = 3, value_names = ["METHOD", "PATH", "BODY_FILE"])]
    pub bind: Option<Vec<String>>,
    /// How many tokens to print, one per line, each with its own `jti`
    /// (single-use tokens for a load test).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub count: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot sign: {0}")]
    Sign(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevError {
    let what = what.into();
    move |source| DevError::Io { what, source }
}

/// Signs a caller token as `args` says.
pub fn mint(args: &MintArgs) -> Result<String, DevError> {
    mint_many(args, 1)?
        .pop()
        .ok_or_else(|| DevError::Sign("no token".into()))
}

/// `count` tokens that differ only in their `jti`.
pub fn mint_many(args: &MintArgs, count: u32) -> Result<Vec<String>, DevError> {
    if count > 1 && args.no_jti {
        return Err(DevError::Usage(
            "several tokens need their own jti each; drop --no-jti".into(),
        ));
    }
    let alg: Algorithm = args
        .alg
        .parse()
        .ok()
        .filter(|_| crate::config::ALLOWED_ALGORITHMS.contains(&args.alg.as_str()))
        .ok_or_else(|| DevError::Usage(format!("{:?} is not a supported algorithm", args.alg)))?;
    let pem =
        std::fs::read(&args.key).map_err(io(format!("cannot read {}", args.key.display())))?;
    let key = match crate::authn::keys::family_of(alg) {
        jsonwebtoken::AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem),
        jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_rsa_pem(&pem),
    }
    .map_err(|_| {
        DevError::Usage(format!(
            "{} is not a {} private key",
            args.key.display(),
            args.alg
        ))
    })?;
    let now = crate::common::now_s();
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(args.iss));
    claims.insert("sub".into(), json!(args.sub));
    claims.insert("aud".into(), json!(args.aud));
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(now + args.ttl_s));
    let team = match args.team.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    claims.insert(args.team_claim.clone(), team);
    if let Some([method, path, body_file]) = args.bind.as_deref() {
        use sha2::Digest;
        let body = std::fs::read(body_file).map_err(io(format!("cannot read {body_file}")))?;
        let bh =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&body));
        claims.insert("htm".into(), json!(method));
        claims.insert("htu".into(), json!(path));
        claims.insert("bh".into(), json!(bh));
    }
    for c in &args.claims {
        let (k, v) = c
            .split_once('=')
            .ok_or_else(|| DevError::Usage(format!("--claim {c:?} is not NAME=VALUE")))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        claims.insert(k.to_string(), v);
    }
    let mut header = Header::new(alg);
    header.kid = args.kid.clone();
    (0..count)
        .map(|_| {
            if !args.no_jti {
                claims.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
            }
            jsonwebtoken::encode(&header, &Value::Object(claims.clone()), &key)
                .map_err(|e| DevError::Sign(e.to_string()))
        })
        .collect()
}

/// What `serve --dev` generated.
pub struct DevSetup {
    pub dir: PathBuf,
    pub private_key: PathBuf,
    pub token: String,
    pub audit_file: PathBuf,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), DevError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("cannot write {}", path.display())))?;
    f.write_all(data)
        .map_err(io(format!("cannot write {}", path.display())))
}

fn random_alnum(rng: &SystemRandom, n: usize) -> Result<String, DevError> {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut bytes = vec![0u8; n];
    rng.fill(&mut bytes)
        .map_err(|_| DevError::Sign("no randomness".into()))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

/// Writes the dev files into `dir` and loads the dev config from there.
pub fn prepare(
    dir: &Path,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Result<(Config, DevSetup), DevError> {
    if !listen.ip().is_loopback() || !admin.ip().is_loopback() {
        return Err(DevError::Usage(
            "--dev listens on loopback addresses only".into(),
        ));
    }
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| DevError::Sign("key generation failed".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| DevError::Sign("key generation failed".into()))?;
    // SubjectPublicKeyInfo for Ed25519: a fixed 12-byte prefix + the key.
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(pair.public_key().as_ref());
    let private_key = dir.join("dev-idp.key.pem");
    write_private(&private_key, pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())?;
    std::fs::write(dir.join("dev-idp.pub.pem"), pem("PUBLIC KEY", &spki))
        .map_err(io("cannot write the dev public key"))?;
    let secrets = format!(
        "[\"batch/demo\"]\nrest_key = \"dev_rk_{}\"\nproject_key = \"project_{}\"\n",
        random_alnum(&rng, 40)?,
        random_alnum(&rng, 32)?
    );
    write_private(&dir.join("secrets.toml"), secrets.as_bytes())?;
    write_private(
        &dir.join("audit-hmac.key"),
        random_alnum(&rng, 64)?.as_bytes(),
    )?;
    let config_path = dir.join("gateway.toml");
    std::fs::write(&config_path, DEV_CONFIG).map_err(io("cannot write the dev config"))?;
    let mut config = Config::load(&config_path).map_err(|e| {
        DevError::Usage(format!(
            "the embedded dev config is invalid: {}",
            e.0.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ))
    })?;
    config.server.listen = listen;
    config.server.admin_listen = admin;
    let token = mint(&MintArgs {
        key: private_key.clone(),
        alg: "EdDSA".into(),
        iss: DEV_ISSUER.into(),
        sub: "dev-service".into(),
        aud: "batch-gateway".into(),
        team: vec!["dev-team".into()],
        team_claim: "team".into(),
        ttl_s: 900,
        kid: None,
        no_jti: false,
        claims: vec![],
        bind: None,
        count: 1,
    })?;
    let setup = DevSetup {
        dir: dir.to_path_buf(),
        private_key,
        token,
        audit_file: config.audit.file.clone(),
    };
    Ok((config, setup))
}

impl DevSetup {
    /// Prints how to try the gateway (to stdout: these are instructions,
    /// and the token is a throwaway dev token).
    pub fn print_instructions(&self, addr: SocketAddr) {
        let exe = std::env::args()
            .next()
            .unwrap_or_else(|| "batch-gateway".into());
        println!(
            "\nbatch-gateway --dev is up on http://{addr} (dry run: nothing is sent to Batch).\n\
             Dev files: {dir}\n\n\
             Try a signed delete (token valid 15 minutes):\n\n\
             curl -i -X POST http://{addr}/2.8/campaigns/delete \\\n  \
             -H 'Authorization: Bearer {token}' \\\n  \
             -H 'X-Batch-Project: demo' -H 'Content-Type: application/json' \\\n  \
             -d '{{\"id\": \"orchestration_0664hyh918hr1gnzka9py5t62nrc0e1f\"}}'\n\n\
             Read the audit trail:\n  {exe} audit query {audit} --format table\n  {exe} audit verify {audit}\n\n\
             Mint another token:\n  {exe} token mint --key {key} --iss {DEV_ISSUER} --sub dev-service --team dev-team\n",
            dir = self.dir.display(),
            token = self.token,
            audit = self.audit_file.display(),
            key = self.private_key.display(),
        );
    }
}
