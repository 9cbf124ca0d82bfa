//! An issuer's JSON Web Key Set, fetched over HTTPS and kept fresh.
//!
//! * Refreshed every `jwks_refresh_s` in the background.
//! * A token whose `kid` is unknown triggers a refetch at most once per
//!   `jwks_min_refetch_s` (a flood of random kids costs one fetch per
//!   interval); concurrent misses share that fetch.
//! * While the identity provider is unreachable the last good set is used
//!   for at most `jwks_stale_max_s` after its last successful fetch; then
//!   the issuer's tokens fail closed.
//! * A JWK never widens the issuer's pinned algorithms: its `kty`/`crv` (and
//!   `alg` when present) must agree with them, else the key is ignored.
//!   Keys marked for another `use` than `sig` are ignored.
//! * A fetched set replaces the old one whole: removed keys stop validating.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::JwksConfig;

const MAX_JWKS_BYTES: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One usable key of the set.
#[derive(Clone)]
pub struct JwkKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// The pinned algorithms this key may verify.
    pub algs: Vec<Algorithm>,
}

#[derive(Default)]
struct KeySetCache {
    keys: Arc<Vec<JwkKey>>,
    last_success: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// The health of a key set, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetState {
    Ok,
    /// The last refresh failed; the last good set is still used.
    Stale,
    /// No usable set (never fetched, or past `jwks_stale_max_s`).
    Unavailable,
}

impl SetState {
    pub fn as_str(self) -> &'static str {
        match self {
            SetState::Ok => "ok",
            SetState::Stale => "stale",
            SetState::Unavailable => "unavailable",
        }
    }
}

/// Why a fetch failed (logged; never shown to callers).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("the JWKS request failed")]
    Transport,
    #[error("the JWKS fetch timed out")]
    Timeout,
    #[error("the identity provider answered {0}")]
    Status(u16),
    #[error("the JWKS document is not a key set")]
    NotASet,
    #[error("the JWKS holds no key usable with the pinned algorithms")]
    NoUsableKey,
}

pub struct Jwks {
    url: http::Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    pinned: Vec<Algorithm>,
    cfg: JwksConfig,
    state: RwLock<KeySetCache>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// Fetches attempted (a metric; the flood test counts it).
    pub fetches: AtomicU64,
    /// Bumped whenever a fetch brings a different key set: verified-token
    /// cache entries from before no longer count.
    pub generation: AtomicU64,
    last_body: std::sync::Mutex<Vec<u8>>,
}

impl Jwks {
    pub fn new(cfg: &JwksConfig, pinned: &[Algorithm]) -> Result<Self, crate::tls::TlsError> {
        let https = crate::tls::https_connector(cfg.ca_file.as_deref(), FETCH_TIMEOUT)?;
        Ok(Jwks {
            url: cfg.url.clone(),
            client: Client::builder(TokioExecutor::new()).build(https),
            pinned: pinned.to_vec(),
            cfg: cfg.clone(),
            state: RwLock::new(KeySetCache::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            last_body: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn refresh_interval(&self) -> Duration {
        self.cfg.refresh
    }

    fn read(&self) -> (Arc<Vec<JwkKey>>, Option<Instant>, Option<Instant>) {
        match self.state.read() {
            Ok(s) => (s.keys.clone(), s.last_success, s.last_attempt),
            Err(_) => (Arc::new(Vec::new()), None, None),
        }
    }

    pub fn state(&self) -> SetState {
        let (_, ok, attempt) = self.read();
        match ok {
            Some(t) if t.elapsed() > self.cfg.stale_max => SetState::Unavailable,
            None => SetState::Unavailable,
            Some(t) if attempt.is_some_and(|a| a > t) => SetState::Stale,
            Some(_) => SetState::Ok,
        }
    }

    /// Fetches the set now and swaps it in; the old set stays on failure.
    pub async fn refresh(&self) -> Result<(), FetchError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.state.write() {
            s.last_attempt = Some(Instant::now());
        }
        let keys = match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout),
        };
        match keys {
            Ok(keys) => {
                if let Ok(mut s) = self.state.write() {
                    s.keys = Arc::new(keys);
                    s.last_success = Some(Instant::now());
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS refresh failed; keeping the last good set");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<JwkKey>, FetchError> {
        let req = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|_| FetchError::Transport)?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|_| FetchError::Transport)?;
        if resp.status() != http::StatusCode::OK {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|_| FetchError::Transport)?
            .to_bytes();
        let keys = parse_set(&body, &self.pinned)?;
        if keys.is_empty() {
            return Err(FetchError::NoUsableKey);
        }
        if let Ok(mut last) = self.last_body.lock()
            && *last != body.as_ref()
        {
            *last = body.to_vec();
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        Ok(keys)
    }

    /// Keys that may verify a token with `kid` and `alg`, refetching (rate
    /// limited) when the kid is unknown. `Err` is the audit detail.
    pub async fn keys_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<JwkKey>, &'static str> {
        let (keys, _, _) = self.read();
        if self.state() != SetState::Unavailable {
            match select(&keys, kid, alg) {
                Selected::Keys(k) => return Ok(k),
                Selected::KidRequired => return Err("kid_required"),
                Selected::Unknown => {}
            }
        }
        // Unknown kid, or no usable set: one refetch per interval.
        {
            let _guard = self.fetch_lock.lock().await;
            let (_, _, attempt) = self.read();
            let due = attempt.is_none_or(|a| a.elapsed() >= self.cfg.min_refetch);
            if due {
                let _ = self.refresh().await;
            }
        }
        if self.state() == SetState::Unavailable {
            return Err("jwks_unavailable");
        }
        let (keys, _, _) = self.read();
        match select(&keys, kid, alg) {
            Selected::Keys(k) => Ok(k),
            Selected::KidRequired => Err("kid_required"),
            Selected::Unknown => Err("unknown_kid"),
        }
    }
}

enum Selected {
    Keys(Vec<JwkKey>),
    KidRequired,
    Unknown,
}

fn select(keys: &[JwkKey], kid: Option<&str>, alg: Algorithm) -> Selected {
    let fits = |k: &&JwkKey| k.algs.contains(&alg);
    match kid {
        Some(kid) => {
            let found: Vec<JwkKey> = keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .filter(fits)
                .cloned()
                .collect();
            if found.is_empty() {
                Selected::Unknown
            } else {
                Selected::Keys(found)
            }
        }
        None if keys.len() == 1 => {
            let found: Vec<JwkKey> = keys.iter().filter(fits).cloned().collect();
            if found.is_empty() {
                Selected::Unknown
            } else {
                Selected::Keys(found)
            }
        }
        None if keys.is_empty() => Selected::Unknown,
        None => Selected::KidRequired,
    }
}

/// The algorithms a JWK may verify, within `pinned`.
fn algs_for(jwk: &Jwk, pinned: &[Algorithm]) -> Vec<Algorithm> {
    use Algorithm::*;
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => &[EdDSA],
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => &[ES256],
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => &[ES384],
        AlgorithmParameters::RSA(_) => &[RS256, RS384, RS512, PS256, PS384, PS512],
        _ => &[],
    };
    let declared: Option<Algorithm> = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => match key_alg(ka) {
            Some(a) => Some(a),
            // An `alg` we cannot verify (HS*, encryption, unknown): unusable.
            None => return vec![],
        },
    };
    by_type
        .iter()
        .copied()
        .filter(|a| pinned.contains(a))
        .filter(|a| declared.is_none_or(|d| d == *a))
        .collect()
}

fn key_alg(ka: KeyAlgorithm) -> Option<Algorithm> {
    use Algorithm as A;
    Some(match ka {
        KeyAlgorithm::ES256 => A::ES256,
        KeyAlgorithm::ES384 => A::ES384,
        KeyAlgorithm::RS256 => A::RS256,
        KeyAlgorithm::RS384 => A::RS384,
        KeyAlgorithm::RS512 => A::RS512,
        KeyAlgorithm::PS256 => A::PS256,
        KeyAlgorithm::PS384 => A::PS384,
        KeyAlgorithm::PS512 => A::PS512,
        KeyAlgorithm::EdDSA => A::EdDSA,
        _ => return None,
    })
}

/// Parses a JWKS document, keeping the keys usable with `pinned`. One bad
/// key does not spoil the set; a document that is not a set fails.
pub fn parse_set(body: &[u8], pinned: &[Algorithm]) -> Result<Vec<JwkKey>, FetchError> {
    let doc: serde_json::Value = serde_json::from_slice(body).map_err(|_| FetchError::NotASet)?;
    let items = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or(FetchError::NotASet)?;
    let mut out = Vec::new();
    for item in items {
        let Ok(jwk) = serde_json::from_value::<Jwk>(item.clone()) else {
            continue;
        };
        if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let algs = algs_for(&jwk, pinned);
        if algs.is_empty() {
            continue;
        }
        // An RSA key of a size the verifier refuses would fail every
        // signature: it is not a usable key of the set.
        if let AlgorithmParameters::RSA(rsa) = &jwk.algorithm {
            let bits = URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map(|n| super::keys::modulus_bits(&n))
                .unwrap_or(0);
            if !super::keys::rsa_size_ok(bits) {
                continue;
            }
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        out.push(JwkKey {
            kid: jwk.common.key_id.clone(),
            key,
            algs,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn algs(doc: serde_json::Value, pinned: &[Algorithm]) -> Vec<Vec<Algorithm>> {
        parse_set(doc.to_string().as_bytes(), pinned)
            .map(|ks| ks.into_iter().map(|k| k.algs).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_jwk_never_widens_the_pinned_algorithms() {
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": "a"});
        assert_eq!(
            algs(json!({"keys": [ed]}), &[Algorithm::EdDSA]),
            vec![vec![Algorithm::EdDSA]]
        );
        // An Ed25519 key for an ES256-only issuer is ignored.
        assert!(algs(json!({"keys": [ed]}), &[Algorithm::ES256]).is_empty());
        // A declared alg that disagrees with the pinned list, or with the key type.
        let declared = json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "alg": "ES256"});
        assert!(
            algs(
                json!({"keys": [declared]}),
                &[Algorithm::EdDSA, Algorithm::ES256]
            )
            .is_empty()
        );
        let hmac = json!({"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"});
        assert!(algs(json!({"keys": [hmac]}), &[Algorithm::EdDSA]).is_empty());
        let enc = json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "use": "enc"});
        assert!(algs(json!({"keys": [enc]}), &[Algorithm::EdDSA]).is_empty());
    }

    #[test]
    fn rsa_keys_of_a_size_the_verifier_refuses_are_skipped() {
        let rsa = |bytes: usize| {
            let n = URL_SAFE_NO_PAD.encode(vec![0xc5u8; bytes]);
            json!({"kty": "RSA", "n": n, "e": "AQAB", "kid": format!("k{bytes}")})
        };
        let doc = json!({"keys": [rsa(128), rsa(256), rsa(512), rsa(1025)]});
        let kept: Vec<_> = parse_set(doc.to_string().as_bytes(), &[Algorithm::RS256])
            .unwrap_or_default()
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(
            kept,
            vec![Some("k256".to_string()), Some("k512".to_string())]
        );
    }

    #[test]
    fn a_document_that_is_not_a_set_fails_and_bad_keys_are_skipped() {
        assert!(parse_set(b"[]", &[Algorithm::EdDSA]).is_err());
        assert!(parse_set(b"{\"keys\": 1}", &[Algorithm::EdDSA]).is_err());
        let doc = json!({"keys": [{"kty": "EC"}, {"kty": "OKP", "crv": "Ed25519", "x": ED_X}]});
        assert_eq!(algs(doc, &[Algorithm::EdDSA]).len(), 1);
    }
}
