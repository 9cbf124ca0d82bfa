//! Configuration: raw serde structs → `validate()` collecting every problem
//! with its key path → a typed [`Config`].
//!
//! Unknown keys are errors (collected with `serde_ignored`, so one run names
//! all of them). Keys of features this build does not implement yet are
//! recognised and refused with "not supported yet". Relative paths resolve
//! against the config file's folder. Files the config names are opened by
//! [`crate::preflight::check_files`] (what `check-config` runs) and again when the
//! gateway builds its runtime state.

pub mod defaults;
mod issuer;
mod raw;
mod shared;
mod types;
mod validate;
mod vault;

use std::path::{Path, PathBuf};

pub use types::*;

impl Config {
    /// Reads, parses and validates `path`. Files the config names are not opened.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors::one(
                &path.display().to_string(),
                format!("cannot read config file: {e}"),
            )
        })?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Config::parse(&text, &abs)
    }

    /// Parses and validates config text; `source` is the file it came from.
    pub fn parse(text: &str, source: &Path) -> Result<Config, ConfigErrors> {
        let mut problems = Problems::default();
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| ConfigErrors::one("(toml)", e.to_string()))?;
        let mut unknown = Vec::new();
        let raw: raw::RawConfig = serde_ignored::deserialize(deserializer, |p| {
            // serde_ignored marks an Option's Some as "?": not part of the key.
            unknown.push(p.to_string().replace(".?", ""));
        })
        .map_err(|e| ConfigErrors::one("(toml)", e.to_string()))?;
        for key in unknown {
            problems.add(key, "unknown key");
        }
        let base = source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let cfg = validate::validate(raw, &base, source, &mut problems);
        if problems.0.is_empty() {
            cfg.ok_or_else(|| ConfigErrors::one("(config)", "invalid"))
        } else {
            Err(ConfigErrors(problems.0))
        }
    }

    /// Every file that holds a secret, with its key path.
    pub fn key_files(&self) -> Vec<(String, &Path)> {
        let mut out: Vec<(String, &Path)> = vec![(
            "audit.hmac_key_file".into(),
            self.audit.hmac_key_file.as_path(),
        )];
        if let Some(k) = &self.audit.signing_key_file {
            out.push(("audit.signing_key_file".into(), k));
        }
        if let Some(t) = &self.server.tls {
            out.push(("server.tls.key_file".into(), &t.key_file));
        }
        if let Some(f) = self
            .shared_state
            .as_ref()
            .and_then(|s| s.password_file.as_ref())
        {
            out.push(("shared_state.password_file".into(), f));
        }
        match &self.secrets.backend {
            SecretsBackend::File(f) => out.push(("secrets.file".into(), f)),
            SecretsBackend::Vault(v) => match &v.auth {
                VaultAuth::Token { token_file } => {
                    if let Some(f) = token_file {
                        out.push(("secrets.vault.token_file".into(), f));
                    }
                }
                VaultAuth::Kubernetes { jwt_file, .. } => {
                    out.push(("secrets.vault.kubernetes_jwt_file".into(), jwt_file));
                }
                VaultAuth::AppRole { secret_id_file, .. } => {
                    out.push((
                        "secrets.vault.approle_secret_id_file".into(),
                        secret_id_file,
                    ));
                }
            },
        }
        out
    }

    /// Key files anyone may read (refused), and those their group may read
    /// (warned about).
    pub fn key_file_modes(&self) -> (Vec<Problem>, Vec<Problem>) {
        let (mut refused, mut warned) = (Problems::default(), Problems::default());
        for (key, path) in self.key_files() {
            match crate::keyfile::exposure(path) {
                crate::keyfile::Exposure::World(m) => {
                    refused.add(key, crate::keyfile::world_readable(path, m))
                }
                crate::keyfile::Exposure::Group(m) => {
                    warned.add(key, crate::keyfile::group_readable(path, m))
                }
                crate::keyfile::Exposure::Private => {}
            }
        }
        (refused.0, warned.0)
    }

    pub fn project(&self, alias: &str) -> Option<&ProjectConfig> {
        self.projects.iter().find(|p| p.alias == alias)
    }
}

#[cfg(test)]
pub(crate) mod tests;
