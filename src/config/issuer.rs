//! `[[auth.issuers]]`: one issuer's keys (PEM files, a JWKS URL or a
//! discovery document), its
//! pinned algorithms and its own token rules, validated.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::*;
use super::types::*;

pub(super) fn validate_issuer(
    i: usize,
    iss: RawIssuer,
    resolve: &dyn Fn(&str) -> PathBuf,
    seen: &mut BTreeSet<String>,
    p: &mut Problems,
) -> IssuerConfig {
    let key = format!("auth.issuers[{i}]");
    let issuer = iss.issuer.unwrap_or_default();
    if issuer.is_empty() {
        p.add(format!("{key}.issuer"), "required");
    } else if !seen.insert(issuer.clone()) {
        p.add(
            format!("{key}.issuer"),
            format!("{issuer:?} is configured twice"),
        );
    }
    let mut algorithms = Vec::new();
    let names = iss.algorithms.unwrap_or_default();
    if names.is_empty() {
        p.add(
            format!("{key}.algorithms"),
            "must pin at least one algorithm",
        );
    }
    for name in names {
        match name.parse::<jsonwebtoken::Algorithm>() {
            Ok(alg) if ALLOWED_ALGORITHMS.contains(&name.as_str()) => algorithms.push(alg),
            _ => p.add(
                format!("{key}.algorithms"),
                format!(
                    "{name:?} is not allowed (one of {}; HMAC and none never are)",
                    ALLOWED_ALGORITHMS.join(", ")
                ),
            ),
        }
    }
    let public_keys: Vec<PathBuf> = iss
        .public_keys
        .unwrap_or_default()
        .iter()
        .map(|k| resolve(k))
        .collect();
    let https = |name: &str, url: &str, p: &mut Problems| match url.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.authority().is_some() => u,
        _ => {
            p.add(
                format!("{key}.{name}"),
                format!("{url:?} must be an https:// URL"),
            );
            http::Uri::from_static("https://invalid.invalid")
        }
    };
    let source = match (iss.jwks_url, iss.discovery_url) {
        (Some(_), Some(_)) => {
            p.add(
                format!("{key}.discovery_url"),
                "give jwks_url or discovery_url, not both",
            );
            None
        }
        (Some(url), None) => Some(KeySource::Url(https("jwks_url", &url, p))),
        (None, Some(url)) => Some(KeySource::Discovery(https("discovery_url", &url, p))),
        (None, None) => None,
    };
    let jwks = match source {
        None => {
            for (name, present) in [
                ("jwks_ca_file", iss.jwks_ca_file.is_some()),
                ("jwks_refresh_s", iss.jwks_refresh_s.is_some()),
                ("jwks_min_refetch_s", iss.jwks_min_refetch_s.is_some()),
                ("jwks_stale_max_s", iss.jwks_stale_max_s.is_some()),
                (
                    "jwks_bearer_token_file",
                    iss.jwks_bearer_token_file.is_some(),
                ),
            ] {
                if present {
                    p.add(
                        format!("{key}.{name}"),
                        "only meaningful with jwks_url or discovery_url",
                    );
                }
            }
            None
        }
        Some(source) => {
            let secs = |name: &str, v: Option<u64>, default: u64, p: &mut Problems| {
                let v = v.unwrap_or(default);
                if v == 0 {
                    p.add(format!("{key}.{name}"), "must be greater than 0");
                }
                Duration::from_secs(v)
            };
            Some(JwksConfig {
                source,
                bearer_token_file: iss.jwks_bearer_token_file.as_deref().map(resolve),
                ca_file: iss.jwks_ca_file.as_deref().map(resolve),
                refresh: secs("jwks_refresh_s", iss.jwks_refresh_s, 300, p),
                min_refetch: secs("jwks_min_refetch_s", iss.jwks_min_refetch_s, 30, p),
                stale_max: secs("jwks_stale_max_s", iss.jwks_stale_max_s, 3600, p),
            })
        }
    };
    if public_keys.is_empty() && jwks.is_none() {
        p.add(
            format!("{key}.public_keys"),
            "give public_keys (PEM files), jwks_url, discovery_url, or one of them with public_keys",
        );
    }
    let typ = match iss.typ {
        None => Vec::new(),
        Some(RawTyp::One(t)) => vec![t],
        Some(RawTyp::Several(ts)) => {
            if ts.is_empty() {
                p.add(
                    format!("{key}.typ"),
                    "must list at least one value when set",
                );
            }
            ts
        }
    };
    if typ.iter().any(String::is_empty) {
        p.add(format!("{key}.typ"), "must not be empty when set");
    }
    if let Some(v) = iss.max_token_lifetime_s {
        check_lifetime(&format!("{key}.max_token_lifetime_s"), v, p);
    }
    let team_claim = iss.team_claim.and_then(|t| match TeamClaim::parse(&t) {
        Ok(c) => Some(c),
        Err(why) => {
            p.add(format!("{key}.team_claim"), format!("{t:?} {why}"));
            None
        }
    });
    IssuerConfig {
        issuer,
        algorithms,
        public_keys,
        jwks,
        typ,
        max_token_lifetime_s: iss.max_token_lifetime_s,
        team_claim,
    }
}

/// A lifetime cap of 0 would refuse every token: a typo, not a policy.
/// There is no upper bound (the contract sets none); docs/identity-providers.md
/// says why a long one is a poor idea.
pub(super) fn check_lifetime(key: &str, v: u64, p: &mut Problems) {
    if v == 0 {
        p.add(key, "must be greater than 0");
    }
}
