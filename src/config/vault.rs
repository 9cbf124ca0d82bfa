//! `[secrets.vault]`: the Vault (or OpenBao) address, mount, auth method
//! and its credential files, validated.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::*;
use super::types::*;

pub(super) fn validate_vault(
    v: RawVault,
    resolve: &dyn Fn(&str) -> PathBuf,
    p: &mut Problems,
) -> Option<VaultConfig> {
    let address = match v.address.as_deref().map(str::parse::<http::Uri>) {
        Some(Ok(u)) if u.scheme_str() == Some("https") && u.authority().is_some() => Some(u),
        Some(_) => {
            p.add("secrets.vault.address", "must be an https:// URL");
            None
        }
        None => {
            p.add("secrets.vault.address", "required");
            None
        }
    };
    let auth_name = v.auth.as_deref().unwrap_or("token");
    let stray = |p: &mut Problems, name: &str, present: bool, method: &str| {
        if present {
            p.add(
                format!("secrets.vault.{name}"),
                format!("only meaningful with auth = \"{method}\""),
            );
        }
    };
    if auth_name != "token" {
        stray(p, "token_file", v.token_file.is_some(), "token");
    }
    if auth_name != "kubernetes" {
        stray(
            p,
            "kubernetes_role",
            v.kubernetes_role.is_some(),
            "kubernetes",
        );
        stray(
            p,
            "kubernetes_jwt_file",
            v.kubernetes_jwt_file.is_some(),
            "kubernetes",
        );
        stray(
            p,
            "kubernetes_mount",
            v.kubernetes_mount.is_some(),
            "kubernetes",
        );
    }
    if auth_name != "approle" {
        stray(p, "approle_role_id", v.approle_role_id.is_some(), "approle");
        stray(
            p,
            "approle_secret_id_file",
            v.approle_secret_id_file.is_some(),
            "approle",
        );
        stray(p, "approle_mount", v.approle_mount.is_some(), "approle");
    }
    let auth = match auth_name {
        "token" => Some(VaultAuth::Token {
            token_file: v.token_file.as_deref().map(resolve),
        }),
        "kubernetes" => match v.kubernetes_role {
            Some(role) if !role.is_empty() => Some(VaultAuth::Kubernetes {
                role,
                jwt_file: resolve(
                    v.kubernetes_jwt_file
                        .as_deref()
                        .unwrap_or("/var/run/secrets/kubernetes.io/serviceaccount/token"),
                ),
                mount: v.kubernetes_mount.unwrap_or_else(|| "kubernetes".into()),
            }),
            _ => {
                p.add(
                    "secrets.vault.kubernetes_role",
                    "required with auth = \"kubernetes\"",
                );
                None
            }
        },
        "approle" => match (v.approle_role_id, v.approle_secret_id_file) {
            (Some(role_id), Some(file)) if !role_id.is_empty() => Some(VaultAuth::AppRole {
                role_id,
                secret_id_file: resolve(&file),
                mount: v.approle_mount.unwrap_or_else(|| "approle".into()),
            }),
            _ => {
                p.add(
                    "secrets.vault",
                    "auth = \"approle\" needs approle_role_id and approle_secret_id_file",
                );
                None
            }
        },
        other => {
            p.add(
                "secrets.vault.auth",
                format!("{other:?} is not \"token\", \"kubernetes\" or \"approle\""),
            );
            None
        }
    };
    let mount = v.kv_mount.unwrap_or_else(|| "secret".into());
    if mount.is_empty() || mount.contains("..") || mount.starts_with('/') {
        p.add(
            "secrets.vault.kv_mount",
            "must be a mount path like \"secret\"",
        );
    }
    if let Some(ns) = &v.namespace
        && !valid_namespace(ns)
    {
        // Sent as X-Vault-Namespace on every call: a value that cannot be a
        // header would otherwise be left out, and reads would go to the
        // root namespace (another namespace's key at the same path).
        p.add(
            "secrets.vault.namespace",
            "must be a namespace path of A-Z a-z 0-9 . _ - separated by single / (no spaces,              control characters or empty segments), at most 255 characters",
        );
    }
    let timeout = v.request_timeout_ms.unwrap_or(2000);
    if timeout == 0 {
        p.add("secrets.vault.request_timeout_ms", "must be greater than 0");
    }
    Some(VaultConfig {
        address: address?,
        ca_file: v.ca_file.as_deref().map(resolve),
        kv_mount: mount.trim_end_matches('/').to_string(),
        namespace: v.namespace,
        auth: auth?,
        request_timeout: Duration::from_millis(timeout),
    })
}

/// A Vault (or OpenBao) namespace path: segments of `A-Za-z0-9._-`
/// joined by single `/` (a trailing `/` is allowed, as Vault accepts it).
fn valid_namespace(ns: &str) -> bool {
    let trimmed = ns.strip_suffix('/').unwrap_or(ns);
    !trimmed.is_empty()
        && ns.len() <= 255
        && trimmed.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}
