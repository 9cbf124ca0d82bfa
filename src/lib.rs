//! batch-gateway: callers holding a JWT manage campaigns on Batch's API
//! without ever holding Batch's REST key.
//!
//! [`App::build`] turns a validated [`config::Config`] into the running
//! state that both `main` and the tests use; [`listen::serve`] puts it on
//! sockets. The life of a request is in [`gateway`].

pub mod admin;
pub mod audit;
pub mod authn;
pub mod cli;
pub mod config;
pub mod dev;
pub mod error;
pub mod forward;
pub mod framing;
pub mod gateway;
pub mod json;
pub mod listen;
pub mod metrics;
pub mod policy;
pub mod replay;
pub mod secrets;

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::audit::{AuditLog, HmacKey};
use crate::authn::Authenticator;
use crate::config::{Config, SecretsBackend};
use crate::forward::Upstream;
use crate::metrics::Metrics;
use crate::secrets::{FileSource, SecretCache};

/// Why the gateway cannot start with a config that validated.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Authn(#[from] authn::AuthnBuildError),
    #[error(transparent)]
    Ca(#[from] forward::CaError),
    #[error(transparent)]
    Hmac(#[from] audit::HmacKeyError),
    #[error("audit.signing_key_file: {0}")]
    Signer(String),
}

/// The gateway's running state, shared by every connection.
pub struct App {
    pub config: Arc<Config>,
    pub authn: Authenticator,
    pub secrets: SecretCache,
    pub audit: AuditLog,
    pub hmac: HmacKey,
    pub upstream: Upstream,
    pub metrics: Metrics,
    pub inflight: Arc<Semaphore>,
    pub replay: replay::ReplayCache,
}

impl App {
    /// Loads keys, trust roots and the HMAC key, opens the audit trail and
    /// warms the secret cache. A missing project secret or an unwritable
    /// audit file does not fail here: they are reported by `/readyz` and
    /// answered per request.
    pub async fn build(config: Config) -> Result<Arc<App>, BuildError> {
        let authn = Authenticator::new(&config.auth)?;
        authn.start().await;
        let upstream = Upstream::new(&config.upstream)?;
        let hmac = HmacKey::load(&config.audit.hmac_key_file)?;
        let SecretsBackend::File(path) = &config.secrets.backend;
        let source = Arc::new(FileSource::new(path.clone()));
        let secrets = SecretCache::new(
            source,
            config.secrets.cache_ttl,
            config.secrets.stale_if_error,
        );
        let replay = replay::ReplayCache::new(config.auth.replay_cache_size);
        let restored = replay.rebuild_from_audit(
            &config.audit.file,
            i64::try_from(config.auth.max_token_lifetime_s).unwrap_or(i64::MAX),
            i64::try_from(config.auth.leeway_s).unwrap_or(i64::MAX),
        );
        if restored > 0 {
            tracing::info!(
                restored,
                "single-use token ids restored from the audit trail"
            );
        }
        let signer = match &config.audit.signing_key_file {
            Some(path) => Some(Arc::new(
                audit::Signer::load(path).map_err(BuildError::Signer)?,
            )),
            None => None,
        };
        let audit = AuditLog::open(
            config.audit.file.clone(),
            audit::Options {
                rotate_bytes: Some(config.audit.rotate_bytes),
                keep_files: config.audit.keep_files,
                signer,
                checkpoint_interval: config.audit.checkpoint_interval,
                stdout: config.audit.stdout,
                ..audit::Options::default()
            },
        );
        let inflight = Arc::new(Semaphore::new(config.server.max_concurrent_requests));
        let app = Arc::new(App {
            config: Arc::new(config),
            authn,
            secrets,
            audit,
            hmac,
            upstream,
            metrics: Metrics::new(),
            inflight,
            replay,
        });
        for p in &app.config.projects {
            if let Err(e) = app.secrets.get(&p.secret_path).await {
                tracing::warn!(project = %p.alias, error = %e, "project secret not available at start; its requests get 503 secrets_unavailable");
            }
        }
        Ok(app)
    }
}
