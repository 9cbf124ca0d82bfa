//! Step 1 of the request path: authenticate the caller's JWT.
//!
//! The token comes only from the `Authorization: Bearer` header. Everything
//! that decides acceptance comes from config, never from the token: the
//! issuer is looked up by `iss`, the algorithm must be one that issuer pins,
//! and the key must be one of that issuer's. The token's two parts are
//! decoded once, here; jsonwebtoken's crypto (aws-lc) checks the signature
//! with the pinned algorithm, and this module checks everything else (size
//! cap, duplicate names, `crit`, claim JSON types, `exp`, `nbf`, `aud`,
//! `iat` in the future, the lifetime cap, the team claim).
//!
//! A caller's teams come from two places, both decided on verified claims
//! only: the issuer's team claim (a claim name or a JSON Pointer, the
//! issuer's own or `[auth]`'s), and `[[teams.members]]` entries matching the
//! token's `(iss, sub)`. A token with neither is refused.

pub mod jwks;
pub mod keys;

use crate::common::now_s;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, errors::ErrorKind};
use serde_json::Value;
use sha2::Digest;

use crate::audit::record::Unverified;
use crate::config::{AuthConfig, TeamClaim, TeamConfig};
use crate::json::{Members, parse_object};

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// A caller whose token verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub iss: String,
    pub sub: String,
    /// Every team the caller belongs to: those its team claim names (a
    /// string or an array of strings), then those whose members match its
    /// `(iss, sub)`, each once.
    pub teams: Vec<String>,
    /// Why the caller belongs to each team (what `policy explain` shows).
    pub memberships: Vec<Membership>,
    pub jti: Option<String>,
    pub exp: i64,
    /// Request-binding claims, when the token carries them.
    pub binding: Binding,
    /// The caller as audit records name it, fingerprint included, built on
    /// the first request that uses this verified token.
    pub recorded: crate::common::Memo<Arc<crate::audit::record::Caller>>,
}

/// One team a caller belongs to, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub team: String,
    pub via: Via,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// The team claim (as configured: a name or a JSON Pointer) named it.
    Claim(String),
    /// `teams[team].members[member]` matched the token's `(iss, sub)`.
    Member { team: usize, member: usize },
    /// Given by hand (`policy explain --team`), never by a token.
    Given,
}

/// The teams whose `[[teams.members]]` match a verified `(iss, sub)`.
pub fn teams_by_subject(teams: &[TeamConfig], iss: &str, sub: &str) -> Vec<Membership> {
    teams
        .iter()
        .enumerate()
        .flat_map(|(ti, t)| {
            t.members
                .iter()
                .enumerate()
                .filter(|(_, m)| m.matches(iss, sub))
                .map(move |(mi, _)| Membership {
                    team: t.name.clone(),
                    via: Via::Member {
                        team: ti,
                        member: mi,
                    },
                })
        })
        .collect()
}

/// The request-binding claims `htm`, `htu`, `bh` (after DPoP).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    pub htm: Option<String>,
    pub htu: Option<String>,
    pub bh: Option<String>,
}

impl Binding {
    /// The token carries any binding claim, which makes it single-use.
    pub fn is_bound(&self) -> bool {
        self.htm.is_some() || self.htu.is_some() || self.bh.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No usable `Authorization: Bearer` credential.
    Missing,
    Invalid,
    Expired,
}

/// Why a caller was not authenticated. `detail` is a short machine word
/// (`bad_signature`, `audience`, …); nothing here holds token bytes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("token rejected: {detail}")]
pub struct AuthError {
    pub kind: AuthFailure,
    pub detail: &'static str,
    pub unverified: Option<Unverified>,
}

impl AuthError {
    fn missing(detail: &'static str) -> Self {
        AuthError {
            kind: AuthFailure::Missing,
            detail,
            unverified: None,
        }
    }
    fn invalid(detail: &'static str) -> Self {
        AuthError {
            kind: AuthFailure::Invalid,
            detail,
            unverified: None,
        }
    }
    fn with(mut self, u: &Unverified) -> Self {
        self.unverified = Some(u.clone());
        self
    }
}

struct Issuer {
    name: String,
    algorithms: Vec<Algorithm>,
    keys: Vec<DecodingKey>,
    jwks: Option<std::sync::Arc<jwks::Jwks>>,
    /// The header `typ` values accepted; empty: any (or none).
    typ: Vec<String>,
    max_lifetime_s: i64,
    team_claim: TeamClaim,
}

/// Why the authenticator cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthnBuildError {
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error(transparent)]
    Ca(#[from] crate::tls::TlsError),
}

/// A token that verified, remembered until it expires.
#[derive(Clone)]
struct CachedToken {
    principal: Arc<Principal>,
    issuer: usize,
    /// The issuer's key-set generation when it verified.
    generation: u64,
    leeway_s: i64,
}

struct UntilExpiry;

impl moka::Expiry<[u8; 32], CachedToken> for UntilExpiry {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        v: &CachedToken,
        _: std::time::Instant,
    ) -> Option<std::time::Duration> {
        let left = v
            .principal
            .exp
            .saturating_add(v.leeway_s)
            .saturating_sub(now_s())
            .max(0);
        Some(std::time::Duration::from_secs(
            u64::try_from(left).unwrap_or(0),
        ))
    }
}

/// CachedToken tokens remembered at most (bounded memory).
const VERIFIED_CACHE_SIZE: u64 = 100_000;

/// Verifies caller tokens against the configured issuers.
///
/// A token that verified is remembered (keyed by its SHA-256) until its
/// `exp` plus leeway, so a reused bearer token costs a hash instead of a
/// signature check. A remembered token is verified again from scratch when
/// its issuer's key set changed or is no longer usable; a reload builds a
/// new authenticator with an empty memory. Binding, replay and policy checks
/// run on every request regardless.
pub struct Authenticator {
    issuers: Vec<Issuer>,
    /// A token's `aud` must name one of these.
    audiences: Vec<String>,
    leeway_s: i64,
    /// For their `[[teams.members]]`.
    teams: Vec<TeamConfig>,
    verified: moka::sync::Cache<[u8; 32], CachedToken>,
    /// Full verifications performed (signature checks), for tests and benches.
    pub full_verifications: std::sync::atomic::AtomicU64,
}

impl Authenticator {
    /// Loads every issuer's keys; fails on the first unusable key file.
    /// Key sets (JWKS) start empty: [`Authenticator::start`] fetches them.
    /// `teams` gives the `[[teams.members]]` entries.
    pub fn new(auth: &AuthConfig, teams: &[TeamConfig]) -> Result<Self, AuthnBuildError> {
        let mut issuers = Vec::new();
        for iss in &auth.issuers {
            let keys = iss
                .public_keys
                .iter()
                .map(|p| keys::load_public_key(p, &iss.algorithms))
                .collect::<Result<Vec<_>, _>>()?;
            let jwks = match &iss.jwks {
                Some(j) => Some(std::sync::Arc::new(jwks::Jwks::new(
                    j,
                    &iss.algorithms,
                    &iss.issuer,
                )?)),
                None => None,
            };
            issuers.push(Issuer {
                name: iss.issuer.clone(),
                algorithms: iss.algorithms.clone(),
                keys,
                jwks,
                typ: iss.typ.clone(),
                max_lifetime_s: i64::try_from(
                    iss.max_token_lifetime_s
                        .unwrap_or(auth.max_token_lifetime_s),
                )
                .unwrap_or(i64::MAX),
                team_claim: iss
                    .team_claim
                    .clone()
                    .unwrap_or_else(|| auth.team_claim.clone()),
            });
        }
        Ok(Authenticator {
            issuers,
            audiences: auth.audiences.clone(),
            leeway_s: i64::try_from(auth.leeway_s).unwrap_or(i64::MAX),
            teams: teams.to_vec(),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CACHE_SIZE)
                .expire_after(UntilExpiry)
                .build(),
            full_verifications: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Fetches every key set once (bounded) and keeps them fresh in the
    /// background for as long as the runtime lives.
    pub async fn start(&self) {
        for iss in &self.issuers {
            if let Some(j) = &iss.jwks {
                if j.refresh().await.is_err() {
                    tracing::warn!(issuer = %iss.name, "key set not available at start; its tokens are refused until a fetch succeeds");
                }
                let weak = std::sync::Arc::downgrade(j);
                let every = j.refresh_interval();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        let Some(j) = weak.upgrade() else { return };
                        let _ = j.refresh().await;
                    }
                });
            }
        }
    }

    /// Each issuer and the state of its keys (for `/readyz`).
    pub fn key_set_states(&self) -> Vec<(String, &'static str)> {
        self.issuers
            .iter()
            .map(|i| {
                let st = i.jwks.as_ref().map_or("ok", |j| j.state().as_str());
                (i.name.clone(), st)
            })
            .collect()
    }

    /// Each issuer whose last key-set fetch failed, and why (for `/readyz`:
    /// no secret, no token, only what an operator must fix).
    pub fn key_set_problems(&self) -> Vec<(String, String)> {
        self.issuers
            .iter()
            .filter_map(|i| Some((i.name.clone(), i.jwks.as_ref()?.last_error()?)))
            .collect()
    }

    /// Fetches attempted for `issuer`'s key set.
    pub fn key_set_fetches(&self, issuer: &str) -> u64 {
        self.issuers
            .iter()
            .find(|i| i.name == issuer)
            .and_then(|i| i.jwks.as_ref())
            .map_or(0, |j| j.fetches.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Authenticates the request's `Authorization` headers at the current time.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<(Arc<Principal>, String), AuthError> {
        let token = bearer(headers)?;
        let principal = self.verify(&token, now_s()).await?;
        Ok((principal, token))
    }

    /// Verifies one compact JWS at time `now` (seconds since the epoch).
    pub async fn verify(&self, token: &str, now: i64) -> Result<Arc<Principal>, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::invalid("too_large"));
        }
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.verified.get(&key)
            && self.still_good(&hit, now)
        {
            return Ok(hit.principal);
        }
        let principal = Arc::new(self.verify_fully(token, now).await?);
        // A request-bound token is single-use: remembering it would only
        // crowd out reusable ones.
        if !principal.binding.is_bound()
            && let Some((issuer, generation)) = self.issuer_generation(&principal.iss)
        {
            self.verified.insert(
                key,
                CachedToken {
                    principal: principal.clone(),
                    issuer,
                    generation,
                    leeway_s: self.leeway_s,
                },
            );
        }
        Ok(principal)
    }

    fn issuer_generation(&self, iss: &str) -> Option<(usize, u64)> {
        let (i, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == iss)?;
        let generation = issuer.jwks.as_ref().map_or(0, |j| {
            j.generation.load(std::sync::atomic::Ordering::SeqCst)
        });
        Some((i, generation))
    }

    /// A remembered token counts while it has not expired and its issuer's
    /// keys are the ones it was verified with, and still usable.
    fn still_good(&self, v: &CachedToken, now: i64) -> bool {
        if v.principal.exp.saturating_add(self.leeway_s) < now {
            return false;
        }
        let Some(issuer) = self.issuers.get(v.issuer) else {
            return false;
        };
        match &issuer.jwks {
            None => true,
            Some(j) => {
                j.generation.load(std::sync::atomic::Ordering::SeqCst) == v.generation
                    && j.state() != jwks::SetState::Unavailable
            }
        }
    }

    /// Verifies one token from scratch, without the verified-token memory
    /// (what a first use costs; benchmarks measure it).
    pub async fn verify_fully(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        self.full_verifications
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err(AuthError::invalid("malformed"));
        }
        if parts.iter().any(|p| p.is_empty() || !is_b64url(p)) {
            return Err(AuthError::invalid("malformed"));
        }
        let header = decode_part(parts[0])?;
        let payload = decode_part(parts[1])?;
        let unverified = Unverified {
            iss: str_member(&payload, "iss", 256),
            kid: str_member(&header, "kid", 128),
            alg: str_member(&header, "alg", 32),
        };
        let fail = |d: &'static str| AuthError::invalid(d).with(&unverified);

        // Header: we implement no JWS extension, so any `crit` is fatal
        // (RFC 7515 §4.1.11). `jku`, `x5u`, `x5c`, `jwk` are never used.
        if header.get("crit").is_some() {
            return Err(fail("crit_unsupported"));
        }
        if header.get("enc").is_some() || header.get("zip").is_some() {
            return Err(fail("encrypted_token"));
        }
        // A nested JWT (RFC 7519 §5.2) is not a token this gateway accepts.
        if let Some(Value::String(cty)) = header.get("cty")
            && cty.eq_ignore_ascii_case("JWT")
        {
            return Err(fail("nested_token"));
        }
        let alg_name = match header.get("alg") {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(fail("alg_missing")),
        };
        if !matches!(header.get("kid"), None | Some(Value::String(_))) {
            return Err(fail("kid_type"));
        }
        let claims = check_claim_types(&payload).map_err(&fail)?;

        let issuer = self
            .issuers
            .iter()
            .find(|i| i.name == claims.iss)
            .ok_or_else(|| fail("issuer"))?;
        let alg = alg_name
            .parse::<Algorithm>()
            .ok()
            .filter(|a| issuer.algorithms.contains(a))
            .ok_or_else(|| fail("alg_not_allowed"))?;
        if !issuer.typ.is_empty() {
            let ok = match header.get("typ") {
                Some(Value::String(t)) => {
                    let t = t.strip_prefix("application/").unwrap_or(t);
                    issuer.typ.iter().any(|want| t.eq_ignore_ascii_case(want))
                }
                _ => false,
            };
            if !ok {
                return Err(fail("typ"));
            }
        }
        let family = keys::family_of(alg);
        // Static keys have no kid: each that fits the algorithm is tried.
        let mut candidates: Vec<&DecodingKey> = issuer
            .keys
            .iter()
            .filter(|k| k.family() == family)
            .collect();
        let fetched = match &issuer.jwks {
            Some(set) => match set.keys_for(unverified.kid.as_deref(), alg).await {
                Ok(keys) => keys,
                Err(detail) if candidates.is_empty() => return Err(fail(detail)),
                Err(_) => Vec::new(),
            },
            None => Vec::new(),
        };
        candidates.extend(fetched.iter().map(|k| &k.key));
        if candidates.is_empty() {
            return Err(fail("unknown_kid"));
        }
        // The signature over the encoded header and payload, checked by
        // jsonwebtoken's crypto (aws-lc) with the pinned algorithm; the
        // claims were decoded once above, and are checked below.
        let (message, signature) = token.rsplit_once('.').ok_or_else(|| fail("malformed"))?;
        let mut verified = false;
        for key in candidates {
            match jsonwebtoken::crypto::verify(signature, message.as_bytes(), key, alg) {
                Ok(true) => {
                    verified = true;
                    break;
                }
                Ok(false) => continue,
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat => continue,
                    _ => return Err(fail("malformed")),
                },
            }
        }
        if !verified {
            return Err(fail("bad_signature"));
        }
        if claims.exp.saturating_add(self.leeway_s) < now {
            return Err(AuthError {
                kind: AuthFailure::Expired,
                detail: "expired",
                unverified: Some(unverified),
            });
        }

        // The rest of the registered claims, and what they mean here.
        if let Some(iat) = claims.iat
            && iat > now.saturating_add(self.leeway_s)
        {
            return Err(fail("iat_future"));
        }
        if let Some(nbf) = claims.nbf
            && nbf > now.saturating_add(self.leeway_s)
        {
            return Err(fail("nbf_future"));
        }
        if !audience_ok(&payload, &self.audiences) {
            return Err(fail("audience"));
        }
        let start = claims.iat.unwrap_or(now);
        if claims.exp.saturating_sub(start) > issuer.max_lifetime_s {
            return Err(fail("lifetime"));
        }
        let memberships = memberships(issuer, &self.teams, &payload, &claims).map_err(&fail)?;
        let mut teams: Vec<String> = Vec::new();
        for m in &memberships {
            if !teams.contains(&m.team) {
                teams.push(m.team.clone());
            }
        }
        Ok(Principal {
            iss: claims.iss,
            sub: claims.sub,
            teams,
            memberships,
            jti: claims.jti,
            exp: claims.exp,
            binding: claims.binding,
            recorded: crate::common::Memo::new(),
        })
    }
}

/// Teams claimed by the issuer's team claim, then teams whose members
/// match `(iss, sub)`. A team claim that is present must be a non-empty
/// string or a non-empty array of them, whatever the members say: a
/// malformed claim is an issuer problem to see, not to guess around.
fn memberships(
    issuer: &Issuer,
    teams: &[TeamConfig],
    payload: &Members,
    claims: &Claims,
) -> Result<Vec<Membership>, &'static str> {
    let claim = issuer.team_claim.as_str();
    let by_claim = |team: &str| Membership {
        team: team.to_string(),
        via: Via::Claim(claim.to_string()),
    };
    let mut out = match issuer.team_claim.find(payload) {
        None => Vec::new(),
        Some(Value::String(s)) if !s.is_empty() => vec![by_claim(s)],
        // The token's size cap bounds the array.
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    Value::String(s) if !s.is_empty() => out.push(by_claim(s)),
                    _ => return Err("team_claim"),
                }
            }
            out
        }
        Some(_) => return Err("team_claim"),
    };
    out.extend(teams_by_subject(teams, &claims.iss, &claims.sub));
    if out.is_empty() {
        return Err("team_claim");
    }
    Ok(out)
}

/// The token's `aud` (a string or a non-empty array of strings, as
/// `check_claim_types` made sure) names one of the gateway's audiences.
fn audience_ok(payload: &Members, audiences: &[String]) -> bool {
    let ours = |a: &str| audiences.iter().any(|want| want == a);
    match payload.get("aud") {
        Some(Value::String(a)) => ours(a),
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str().is_some_and(ours)),
        _ => false,
    }
}

/// Registered claims with the JSON types RFC 7519 gives them.
struct Claims {
    iss: String,
    sub: String,
    exp: i64,
    nbf: Option<i64>,
    iat: Option<i64>,
    jti: Option<String>,
    binding: Binding,
}

fn check_claim_types(p: &Members) -> Result<Claims, &'static str> {
    let string = |name: &'static str| -> Result<Option<String>, &'static str> {
        match p.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(name_type(name)),
        }
    };
    let int = |name: &'static str| -> Result<Option<i64>, &'static str> {
        match p.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or(name_type(name)),
            Some(_) => Err(name_type(name)),
        }
    };
    let iss = string("iss")?
        .filter(|s| !s.is_empty())
        .ok_or("missing_claim")?;
    let sub = string("sub")?
        .filter(|s| !s.is_empty())
        .ok_or("missing_claim")?;
    match p.get("aud") {
        Some(Value::String(_)) => {}
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => {}
        Some(_) => return Err("aud_type"),
        None => return Err("missing_claim"),
    }
    let exp = int("exp")?.ok_or("missing_claim")?;
    Ok(Claims {
        iss,
        sub,
        exp,
        nbf: int("nbf")?,
        iat: int("iat")?,
        jti: string("jti")?,
        binding: Binding {
            htm: string("htm")?,
            htu: string("htu")?,
            bh: string("bh")?,
        },
    })
}

fn name_type(name: &str) -> &'static str {
    match name {
        "iss" => "iss_type",
        "sub" => "sub_type",
        "exp" => "exp_type",
        "nbf" => "nbf_type",
        "iat" => "iat_type",
        "jti" => "jti_type",
        _ => "binding_claim_type",
    }
}

fn decode_part(part: &str) -> Result<Members, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::invalid("malformed"))?;
    parse_object(&bytes).map_err(|e| match e {
        crate::json::JsonError::DuplicateMember => AuthError::invalid("duplicate_member"),
        _ => AuthError::invalid("malformed"),
    })
}

/// What a rejected token claimed, bounded for its record: together these
/// keep a record of a request without a verified token under 4 KiB.
fn str_member(m: &Members, name: &str, max_chars: usize) -> Option<String> {
    match m.get(name) {
        Some(Value::String(s)) => Some(crate::common::bounded(s, max_chars).to_string()),
        _ => None,
    }
}

fn is_b64url(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Extracts the bearer token. Exactly one `Authorization` header with the
/// `Bearer` scheme (case-insensitive) and a non-empty token.
pub fn bearer(headers: &http::HeaderMap) -> Result<String, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values
        .next()
        .ok_or_else(|| AuthError::missing("no_authorization"))?;
    if values.next().is_some() {
        return Err(AuthError::invalid("several_authorization_headers"));
    }
    let text = value
        .to_str()
        .map_err(|_| AuthError::invalid("malformed"))?;
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::missing("not_bearer"));
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Err(AuthError::missing("empty_bearer"));
    }
    Ok(token.to_string())
}
