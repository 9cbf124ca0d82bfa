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
//!   Keys marked for another `use` than `sig` (or a SPIFFE bundle's
//!   `jwt-svid`, below) are ignored.
//! * A fetched set replaces the old one whole: removed keys stop validating.
//! * With `discovery_url` every fetch reads the OpenID Provider document
//!   first (RFC 8414 / OIDC Discovery 1.0): its `issuer` must be exactly
//!   the configured one, else the issuer's set is dropped (unavailable,
//!   the reason in `/readyz`); its `jwks_uri` must be https.
//! * Both documents are size-capped and redirects are never followed (a
//!   3xx is a failed fetch): the URLs the config names are the only ones.
//! * `jwks_bearer_token_file` is read at every fetch (a projected
//!   service-account token rotates under the gateway) and sent only to the
//!   configured URL's host, never to another host a discovery document names.
//! * SPIFFE bundles: keys whose `use` is `jwt-svid` verify tokens; keys for
//!   `x509-svid` (certificates, with `x5c`) never do.

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

use crate::config::{JwksConfig, KeySource};

const MAX_JWKS_BYTES: usize = 256 * 1024;
const MAX_DISCOVERY_BYTES: usize = 64 * 1024;
const MAX_BEARER_BYTES: u64 = 16 * 1024;
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
    #[error("the identity provider answered {0}, a redirect (never followed)")]
    Redirect(u16),
    #[error("the identity provider's answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the jwks_bearer_token_file cannot be read, or is not a token")]
    BearerToken,
    #[error(
        "the discovery document is not an OpenID Provider configuration with an https jwks_uri"
    )]
    NotDiscovery,
    #[error("the discovery document names another issuer ({0:?}); the issuer's keys are not used")]
    DiscoveryIssuer(String),
    #[error("the JWKS document is not a key set")]
    NotASet,
    #[error("the JWKS holds no key usable with the pinned algorithms")]
    NoUsableKey,
}

pub struct Jwks {
    source: KeySource,
    /// The configured `issuer`, which a discovery document must name.
    issuer: String,
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
    /// Why the last fetch failed, while it has not succeeded since.
    last_error: std::sync::Mutex<Option<String>>,
}

impl Jwks {
    pub fn new(
        cfg: &JwksConfig,
        pinned: &[Algorithm],
        issuer: &str,
    ) -> Result<Self, crate::tls::TlsError> {
        let https = crate::tls::https_connector(cfg.ca_file.as_deref(), FETCH_TIMEOUT)?;
        Ok(Jwks {
            source: cfg.source.clone(),
            issuer: issuer.to_string(),
            client: Client::builder(TokioExecutor::new()).build(https),
            pinned: pinned.to_vec(),
            cfg: cfg.clone(),
            state: RwLock::new(KeySetCache::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            last_body: std::sync::Mutex::new(Vec::new()),
            last_error: std::sync::Mutex::new(None),
        })
    }

    /// Why the last fetch failed, unless one succeeded since (for `/readyz`).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn url(&self) -> &http::Uri {
        match &self.source {
            KeySource::Url(u) | KeySource::Discovery(u) => u,
        }
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
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                Ok(())
            }
            Err(e) => {
                if let FetchError::DiscoveryIssuer(_) = e {
                    // Not an outage: the document vouches for another
                    // issuer. Nothing it led to is trusted any more.
                    if let Ok(mut s) = self.state.write() {
                        s.keys = Arc::new(Vec::new());
                        s.last_success = None;
                    }
                    tracing::error!(url = %self.url(), error = %e, "discovery document names another issuer; its tokens are refused");
                } else {
                    tracing::warn!(url = %self.url(), error = %e, "JWKS refresh failed; keeping the last good set");
                }
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
                Err(e)
            }
        }
    }

    /// One GET of `url`, at most `max` bytes, with the bearer token when
    /// `bearer` (read from its file now).
    async fn get(&self, url: &http::Uri, bearer: bool, max: usize) -> Result<Bytes, FetchError> {
        let mut req = http::Request::get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|_| FetchError::Transport)?;
        if bearer && let Some(file) = &self.cfg.bearer_token_file {
            let mut value = read_bearer(file)?;
            value.set_sensitive(true);
            req.headers_mut().insert(http::header::AUTHORIZATION, value);
        }
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|_| FetchError::Transport)?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(FetchError::Redirect(status.as_u16()));
        }
        if status != http::StatusCode::OK {
            return Err(FetchError::Status(status.as_u16()));
        }
        match Limited::new(resp.into_body(), max).collect().await {
            Ok(body) => Ok(body.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(FetchError::TooLarge(max)),
            Err(_) => Err(FetchError::Transport),
        }
    }

    async fn fetch(&self) -> Result<Vec<JwkKey>, FetchError> {
        let body = match &self.source {
            KeySource::Url(url) => self.get(url, true, MAX_JWKS_BYTES).await?,
            KeySource::Discovery(url) => {
                let doc = self.get(url, true, MAX_DISCOVERY_BYTES).await?;
                let jwks_uri = parse_discovery(&doc, &self.issuer)?;
                // The bearer token goes to the host the operator named, not
                // to one a document names.
                let same_host =
                    jwks_uri.scheme() == url.scheme() && jwks_uri.authority() == url.authority();
                self.get(&jwks_uri, same_host, MAX_JWKS_BYTES).await?
            }
        };
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
        // `sig`, a SPIFFE bundle's `jwt-svid`, or no `use`: a signing key.
        // Anything else (`enc`, SPIFFE's `x509-svid`) never verifies a token.
        match &jwk.common.public_key_use {
            None | Some(PublicKeyUse::Signature) => {}
            Some(PublicKeyUse::Other(u)) if u == "jwt-svid" => {}
            Some(_) => continue,
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

/// The `jwks_uri` of an OpenID Provider configuration document whose
/// `issuer` is exactly `issuer` (OIDC Discovery 1.0 §4.3).
pub fn parse_discovery(body: &[u8], issuer: &str) -> Result<http::Uri, FetchError> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| FetchError::NotDiscovery)?;
    let named = doc
        .get("issuer")
        .and_then(|v| v.as_str())
        .ok_or(FetchError::NotDiscovery)?;
    if named != issuer {
        return Err(FetchError::DiscoveryIssuer(
            crate::common::bounded(named, 256).to_string(),
        ));
    }
    let uri = doc
        .get("jwks_uri")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<http::Uri>().ok())
        .ok_or(FetchError::NotDiscovery)?;
    if uri.scheme_str() != Some("https") || uri.authority().is_none() {
        return Err(FetchError::NotDiscovery);
    }
    Ok(uri)
}

/// The bearer token file's token (one trailing newline stripped) as a
/// header value.
pub fn read_bearer(file: &std::path::Path) -> Result<http::HeaderValue, FetchError> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_BEARER_BYTES + 1).read_to_string(&mut text))
        .map_err(|_| FetchError::BearerToken)?;
    let token = text.strip_suffix('\n').unwrap_or(&text);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.is_empty() || token.len() as u64 > MAX_BEARER_BYTES {
        return Err(FetchError::BearerToken);
    }
    http::HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| FetchError::BearerToken)
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

    #[test]
    fn spiffe_bundles_give_jwt_authorities_only() {
        let key = |u: &str, kid: &str| json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X, "kid": kid, "use": u});
        let doc = json!({"keys": [key("x509-svid", "x"), key("jwt-svid", "j"), key("sig", "s"), key("other", "o")],
            "spiffe_sequence": 1});
        let kids: Vec<_> = parse_set(doc.to_string().as_bytes(), &[Algorithm::EdDSA])
            .unwrap_or_default()
            .into_iter()
            .map(|k| k.kid.unwrap_or_default())
            .collect();
        assert_eq!(kids, ["j", "s"]);
    }

    #[test]
    fn a_discovery_document_must_name_the_issuer_and_an_https_key_set() {
        let doc = |iss: &str, uri: &str| json!({"issuer": iss, "jwks_uri": uri}).to_string();
        let ok = parse_discovery(
            doc("https://i.test", "https://k.test/keys").as_bytes(),
            "https://i.test",
        );
        assert_eq!(
            ok.map(|u| u.to_string()).ok().as_deref(),
            Some("https://k.test/keys")
        );
        // Exact comparison: no trailing-slash or case folding.
        for iss in ["https://i.test/", "https://I.test", "https://evil.test"] {
            assert!(matches!(
                parse_discovery(doc(iss, "https://k.test/keys").as_bytes(), "https://i.test"),
                Err(FetchError::DiscoveryIssuer(_))
            ));
        }
        for bad in [
            doc("https://i.test", "http://k.test/keys"),
            doc("https://i.test", "/keys"),
            json!({"issuer": "https://i.test"}).to_string(),
            "[]".to_string(),
        ] {
            assert!(
                matches!(
                    parse_discovery(bad.as_bytes(), "https://i.test"),
                    Err(FetchError::NotDiscovery)
                ),
                "{bad}"
            );
        }
    }
}
