//! `[shared_state]` (the Redis the replicas share) and the replica's own
//! name, validated.

use std::path::PathBuf;
use std::time::Duration;

use super::defaults;
use super::raw::RawSharedState;
use super::types::*;

/// Longest replica name and key prefix: both end up in every record or key.
const MAX_NAME: usize = 128;

/// `[audit] replica`, else `BATCH_GATEWAY_REPLICA`, else the host name.
pub(super) fn replica(configured: Option<String>, p: &mut Problems) -> String {
    let name = configured
        .or_else(|| std::env::var(defaults::REPLICA_ENV).ok())
        .or_else(host_name)
        .unwrap_or_else(|| "unknown".to_string());
    if !valid_name(&name) {
        p.add(
            "audit.replica",
            format!(
                "must be 1 to {MAX_NAME} characters of A-Z a-z 0-9 . _ - (from [audit] replica, \
                 {}, or the host name)",
                defaults::REPLICA_ENV
            ),
        );
    }
    name
}

fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(super) fn validate_shared_state(
    s: RawSharedState,
    resolve: &dyn Fn(&str) -> PathBuf,
    p: &mut Problems,
) -> Option<SharedStateConfig> {
    match s.backend.as_deref() {
        Some("redis") => {}
        Some(other) => p.add(
            "shared_state.backend",
            format!("{other:?} is not a backend (\"redis\")"),
        ),
        None => p.add("shared_state.backend", "required: \"redis\""),
    }
    let tls_wanted = |u: &str| u.starts_with("rediss://");
    let target = match (s.url, s.sentinel_urls, s.sentinel_master) {
        (Some(url), None, None) => {
            check_url("shared_state.url", &url, p);
            Some(RedisTarget::Url(url))
        }
        (None, Some(urls), Some(master)) => {
            if urls.is_empty() {
                p.add(
                    "shared_state.sentinel_urls",
                    "must name at least one sentinel",
                );
            }
            for (i, u) in urls.iter().enumerate() {
                check_url(&format!("shared_state.sentinel_urls[{i}]"), u, p);
            }
            if !valid_name(&master) {
                p.add(
                    "shared_state.sentinel_master",
                    "must be a name of A-Z a-z 0-9 . _ -",
                );
            }
            Some(RedisTarget::Sentinel { urls, master })
        }
        (None, Some(_), None) => {
            p.add(
                "shared_state.sentinel_master",
                "required with sentinel_urls",
            );
            None
        }
        (None, None, Some(_)) => {
            p.add(
                "shared_state.sentinel_urls",
                "required with sentinel_master",
            );
            None
        }
        (None, None, None) => {
            p.add(
                "shared_state.url",
                "required (or sentinel_urls and sentinel_master)",
            );
            None
        }
        (Some(_), _, _) => {
            p.add(
                "shared_state.url",
                "give either url or sentinel_urls with sentinel_master, not both",
            );
            None
        }
    };
    let any_tls = match &target {
        Some(RedisTarget::Url(u)) => tls_wanted(u),
        Some(RedisTarget::Sentinel { urls, .. }) => urls.iter().any(|u| tls_wanted(u)),
        None => true,
    };
    if s.ca_file.is_some() && !any_tls {
        p.add(
            "shared_state.ca_file",
            "only meaningful with a rediss:// (TLS) address",
        );
    }
    if s.username.is_some() && s.password_file.is_none() {
        p.add("shared_state.password_file", "required with username");
    }
    let key_prefix = s
        .key_prefix
        .unwrap_or_else(|| defaults::SHARED_KEY_PREFIX.to_string());
    if key_prefix.len() > 64
        || !key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    {
        p.add(
            "shared_state.key_prefix",
            "at most 64 characters of A-Z a-z 0-9 . _ - :",
        );
    }
    let timeout_ms = s.timeout_ms.unwrap_or(defaults::SHARED_TIMEOUT_MS);
    if !(1..=10_000).contains(&timeout_ms) {
        p.add("shared_state.timeout_ms", "must be between 1 and 10000");
    }
    let fallback = s.fallback_replicas.unwrap_or(defaults::FALLBACK_REPLICAS);
    if !(1..=1000).contains(&fallback) {
        p.add(
            "shared_state.fallback_replicas",
            "must be between 1 and 1000",
        );
    }
    Some(SharedStateConfig {
        target: target?,
        ca_file: s.ca_file.as_deref().map(resolve),
        username: s.username,
        password_file: s.password_file.as_deref().map(resolve),
        key_prefix,
        timeout: Duration::from_millis(timeout_ms),
        fallback_replicas: u32::try_from(fallback).unwrap_or(1),
    })
}

/// A Redis address: `redis://` or `rediss://`, a host, and no password
/// (it would end up wherever the config is shown; `password_file` holds it).
fn check_url(key: &str, url: &str, p: &mut Problems) {
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        p.add(key, "must start with redis:// or rediss:// (TLS)");
        return;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            p.add(
                key,
                "must not carry a password: put it in shared_state.password_file",
            );
        } else {
            p.add(key, "must not carry a user name: use shared_state.username");
        }
        return;
    }
    if authority.is_empty() {
        p.add(key, "must name a host");
    }
}
