//! The preflight: opens every file a config names (keys, certificates,
//! trust roots, secrets, Vault credentials, the audit file) through the
//! loader that will use it, and reports each that is missing or unusable.
//! `check-config` runs it, `serve` before it starts, a reload before it
//! swaps. Config itself only parses and validates text, so it imports none
//! of these loaders.

use crate::audit;
use crate::config::{Config, Problem, Problems, SecretsBackend, VaultAuth};
use crate::secrets::FileSource;
use crate::tls;

/// Opens every file the config references and reports each that is
/// missing or unusable (what `check-config` does without `--skip-files`).
pub fn check_files(cfg: &Config) -> Vec<Problem> {
    let mut p = Problems::default();
    p.0.extend(cfg.key_file_modes().0);
    for (i, iss) in cfg.auth.issuers.iter().enumerate() {
        for (j, path) in iss.public_keys.iter().enumerate() {
            if let Err(e) = crate::authn::keys::load_public_key(path, &iss.algorithms) {
                p.add(format!("auth.issuers[{i}].public_keys[{j}]"), e.to_string());
            }
        }
        if let Some(ca) = iss.jwks.as_ref().and_then(|j| j.ca_file.as_ref())
            && let Err(e) = tls::load_ca_file(ca)
        {
            p.add(format!("auth.issuers[{i}].jwks_ca_file"), e.to_string());
        }
        if let Some(file) = iss.jwks.as_ref().and_then(|j| j.bearer_token_file.as_ref())
            && let Err(e) = crate::authn::jwks::read_bearer(file)
        {
            p.add(
                format!("auth.issuers[{i}].jwks_bearer_token_file"),
                format!("{}: {e}", file.display()),
            );
        }
    }
    if let Some(tls) = &cfg.server.tls
        && let Err(e) = tls::server_config(tls)
    {
        p.add("server.tls", e);
    }
    if let Some(ca) = &cfg.upstream.ca_file
        && let Err(e) = tls::load_ca_file(ca)
    {
        p.add("upstream.ca_file", e.to_string());
    }
    match &cfg.secrets.backend {
        SecretsBackend::File(file) => {
            if let Err(e) = FileSource::read_file(file) {
                p.add("secrets.file", e.to_string());
            }
        }
        SecretsBackend::Vault(v) => {
            if let Some(ca) = &v.ca_file
                && let Err(e) = tls::load_ca_file(ca)
            {
                p.add("secrets.vault.ca_file", e.to_string());
            }
            let credential = match &v.auth {
                VaultAuth::Token { token_file } => token_file.as_ref().map(|f| ("token_file", f)),
                VaultAuth::Kubernetes { jwt_file, .. } => Some(("kubernetes_jwt_file", jwt_file)),
                VaultAuth::AppRole { secret_id_file, .. } => {
                    Some(("approle_secret_id_file", secret_id_file))
                }
            };
            if let Some((key, f)) = credential
                && let Err(e) = std::fs::metadata(f)
            {
                p.add(
                    format!("secrets.vault.{key}"),
                    format!("cannot read {}: {e}", f.display()),
                );
            }
        }
    }
    if let Some(shared) = &cfg.shared_state {
        if let Some(ca) = &shared.ca_file
            && let Err(e) = tls::load_ca_file(ca)
        {
            p.add("shared_state.ca_file", e.to_string());
        }
        if let Some(f) = &shared.password_file
            && let Err(e) = crate::keyfile::read_secret(f)
        {
            p.add("shared_state.password_file", e.to_string());
        }
    }
    if let Err(e) = audit::HmacKey::load(&cfg.audit.hmac_key_file) {
        p.add("audit.hmac_key_file", e.to_string());
    }
    if let Some(k) = &cfg.audit.signing_key_file
        && let Err(e) = audit::Signer::load(k)
    {
        p.add("audit.signing_key_file", e);
    }
    if let Err(e) = audit::check_writable(&cfg.audit.file) {
        p.add("audit.file", e.to_string());
    }
    p.0
}
