//! The composition root: [`App`] (what every request reads: config, the
//! reloadable [`State`], metrics, the audit writer, the upstream client)
//! built from a validated config, and its reload. It may use every
//! component; no step imports it but the edges that serve requests
//! (`listen`, `gateway`, `admin`) and `cli`.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Semaphore;

use crate::audit::{self, AuditLog, HmacKey};
use crate::authn::Authenticator;
use crate::config::{Config, SecretsBackend, ServerConfig};
use crate::forward::Upstream;
use crate::metrics::Metrics;
use crate::secrets::{FileSource, SecretCache};
use crate::{authn, config, limits, metrics, replay, secrets, tls};

/// Why the gateway cannot start with a config that validated.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Authn(#[from] authn::AuthnBuildError),
    #[error(transparent)]
    Ca(#[from] tls::TlsError),
    #[error(transparent)]
    Hmac(#[from] audit::HmacKeyError),
    #[error("audit.signing_key_file: {0}")]
    Signer(String),
    #[error("server.tls: {0}")]
    Tls(String),
    #[error(transparent)]
    Shared(#[from] crate::shared::SharedBuildError),
}

/// What a reload swaps atomically. A request takes one snapshot when it
/// starts and finishes under it.
pub struct State {
    pub config: Arc<Config>,
    pub authn: Authenticator,
    pub upstream: Upstream,
}

impl State {
    async fn build(config: Config) -> Result<State, BuildError> {
        let authn = Authenticator::new(&config.auth, &config.teams)?;
        authn.start().await;
        let upstream = Upstream::new(&config.upstream)?;
        Ok(State {
            config: Arc::new(config),
            authn,
            upstream,
        })
    }
}

/// The gateway's running state, shared by every connection.
pub struct App {
    state: ArcSwap<State>,
    /// `[server]` as started: listeners and their limits need a restart.
    server: ServerConfig,
    pub tls: Option<tls::Tls>,
    pub secrets: SecretCache,
    pub audit: AuditLog,
    pub hmac: HmacKey,
    pub metrics: Arc<Metrics>,
    pub inflight: Arc<Semaphore>,
    pub replay: replay::ReplayCache,
    pub limits: limits::Limits,
}

impl App {
    /// Loads keys, trust roots and the HMAC key, opens the audit trail and
    /// warms the secret cache. A missing project secret or an unwritable
    /// audit file does not fail here: they are reported by `/readyz` and
    /// answered per request.
    pub async fn build(config: Config) -> Result<Arc<App>, BuildError> {
        let tls = match &config.server.tls {
            Some(t) => Some(tls::Tls::new(t).map_err(BuildError::Tls)?),
            None => None,
        };
        let hmac = HmacKey::load(&config.audit.hmac_key_file)?;
        let metrics = Arc::new(Metrics::new());
        let source: Arc<dyn secrets::SecretSource> = match &config.secrets.backend {
            SecretsBackend::File(path) => Arc::new(FileSource::new(path.clone())),
            SecretsBackend::Vault(v) => {
                Arc::new(secrets::vault::VaultSource::new(v, metrics.clone())?)
            }
        };
        let fetch_timeout = match &config.secrets.backend {
            SecretsBackend::Vault(v) => v.request_timeout,
            SecretsBackend::File(_) => secrets::DEFAULT_FETCH_TIMEOUT,
        };
        let secrets = SecretCache::with_metrics(
            source,
            config.secrets.cache_ttl,
            config.secrets.stale_if_error,
            fetch_timeout,
            Some(metrics.clone()),
        );
        let replay = replay::ReplayCache::new(config.auth.replay_cache_size);
        let restored = replay.rebuild_from_audit(
            &config.audit.file,
            i64::try_from(config.auth.longest_token_lifetime_s()).unwrap_or(i64::MAX),
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
                retention: (config.audit.retention_days > 0).then(|| {
                    Duration::from_secs(config.audit.retention_days.saturating_mul(86_400))
                }),
                max_total_bytes: (config.audit.max_total_bytes > 0)
                    .then_some(config.audit.max_total_bytes),
                unauthenticated_per_s: config.audit.unauthenticated_records_per_s,
                signer,
                checkpoint_interval: config.audit.checkpoint_interval,
                stdout: config.audit.stdout,
                replica: Some(config.audit.replica.as_str().into()),
                ..audit::Options::default()
            },
        );
        let limits = match &config.shared_state {
            None => limits::Limits::new(),
            Some(shared) => {
                let leeway = i64::try_from(config.auth.leeway_s).unwrap_or(i64::MAX);
                let trail = crate::shared::Trail {
                    live: config.audit.file.clone(),
                    window_s: i64::try_from(config.auth.longest_token_lifetime_s())
                        .unwrap_or(i64::MAX)
                        .saturating_add(leeway.saturating_mul(2)),
                    leeway_s: leeway,
                };
                let store = crate::shared::SharedState::new(
                    shared,
                    &config.audit.replica,
                    trail,
                    metrics.clone(),
                )?;
                store.start().await;
                limits::Limits::shared(store, shared.fallback_replicas)
            }
        };
        let inflight = Arc::new(Semaphore::new(config.server.max_concurrent_requests));
        let server = config.server.clone();
        let state = State::build(config).await?;
        let app = Arc::new(App {
            state: ArcSwap::from_pointee(state),
            server,
            tls,
            secrets,
            audit,
            hmac,
            metrics,
            inflight,
            replay,
            limits,
        });
        for p in &app.state().config.projects {
            if let Err(e) = app.secrets.get(&p.secret_path).await {
                tracing::warn!(project = %p.alias, error = %e, "project secret not available at start; its requests get 503 secrets_unavailable");
            }
        }
        Ok(app)
    }

    /// The current config, authenticator and upstream client.
    pub fn state(&self) -> Arc<State> {
        self.state.load_full()
    }

    /// `[server]` as the gateway started with it.
    pub fn server(&self) -> &ServerConfig {
        &self.server
    }

    /// Re-reads the config file and swaps teams, grants, projects,
    /// issuers and keys, limits and the upstream settings atomically;
    /// requests in flight finish under the config they started with. On any
    /// problem the running config stays. TLS certificate files are re-read
    /// too. `[server]` (but TLS files), `[secrets]`, `[audit]`,
    /// `[shared_state]` and
    /// `auth.replay_cache_size` need a restart: a change there is logged.
    pub async fn reload(&self) -> Result<(), Vec<config::Problem>> {
        let source = self.state().config.source.clone();
        let result = self.try_reload(&source).await;
        let kind = if result.is_ok() { "ok" } else { "rejected" };
        self.metrics
            .reloads
            .get_or_create(&metrics::KindLabels { kind })
            .inc();
        match &result {
            Ok(()) => tracing::info!(config = %source.display(), "config reloaded"),
            Err(problems) => {
                for p in problems {
                    tracing::error!(problem = %p, "config reload rejected; the running config stays");
                }
            }
        }
        result
    }

    async fn try_reload(&self, source: &std::path::Path) -> Result<(), Vec<config::Problem>> {
        let fresh = Config::load(source).map_err(|e| e.0)?;
        let problems = crate::preflight::check_files(&fresh);
        if !problems.is_empty() {
            return Err(problems);
        }
        let old = self.state();
        let restart_only = [
            ("server", old.config.server != fresh.server),
            ("secrets", old.config.secrets != fresh.secrets),
            ("audit", old.config.audit != fresh.audit),
            (
                "shared_state",
                old.config.shared_state != fresh.shared_state,
            ),
            (
                "auth.replay_cache_size",
                old.config.auth.replay_cache_size != fresh.auth.replay_cache_size,
            ),
        ];
        for (section, changed) in restart_only {
            if changed {
                tracing::warn!(
                    section,
                    "this part of the config changed but takes effect only after a restart"
                );
            }
        }
        let state = State::build(fresh).await.map_err(|e| {
            vec![config::Problem {
                key: "(reload)".into(),
                message: e.to_string(),
            }]
        })?;
        self.state.store(Arc::new(state));
        if let Some(tls) = &self.tls
            && let Err(e) = tls.reload()
        {
            tracing::error!(error = %e, "TLS files could not be reloaded; the old certificate stays");
        }
        Ok(())
    }
}
