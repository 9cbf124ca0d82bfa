//! `[[auth.issuers]]`: one issuer's keys (PEM files or a JWKS URL), its
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
    let jwks = match iss.jwks_url {
        None => {
            for (name, present) in [
                ("jwks_ca_file", iss.jwks_ca_file.is_some()),
                ("jwks_refresh_s", iss.jwks_refresh_s.is_some()),
                ("jwks_min_refetch_s", iss.jwks_min_refetch_s.is_some()),
                ("jwks_stale_max_s", iss.jwks_stale_max_s.is_some()),
            ] {
                if present {
                    p.add(format!("{key}.{name}"), "only meaningful with jwks_url");
                }
            }
            None
        }
        Some(url) => {
            let uri = match url.parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("https") && u.authority().is_some() => u,
                _ => {
                    p.add(
                        format!("{key}.jwks_url"),
                        format!("{url:?} must be an https:// URL"),
                    );
                    http::Uri::from_static("https://invalid.invalid")
                }
            };
            let secs = |name: &str, v: Option<u64>, default: u64, p: &mut Problems| {
                let v = v.unwrap_or(default);
                if v == 0 {
                    p.add(format!("{key}.{name}"), "must be greater than 0");
                }
                Duration::from_secs(v)
            };
            Some(JwksConfig {
                url: uri,
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
            "give public_keys (PEM files), jwks_url, or both",
        );
    }
    if iss.typ.as_deref() == Some("") {
        p.add(format!("{key}.typ"), "must not be empty when set");
    }
    IssuerConfig {
        issuer,
        algorithms,
        public_keys,
        jwks,
        typ: iss.typ,
    }
}
