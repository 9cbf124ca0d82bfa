//! Step 6 of the request path: resolve a project's REST key and project key.
//!
//! Sources (a file, or Vault's KV v2) sit behind [`SecretSource`]; a moka
//! cache in front of every source serves a value for `cache_ttl_s` without
//! asking the source, and while the source fails, keeps serving the last
//! good value for at most `stale_if_error_s` past its TTL. A secret the
//! source says is gone is evicted at once. Secrets live in `secrecy` types:
//! their `Debug` prints `[REDACTED]`.
//!
//! A failing or hung source costs a request at most one fetch timeout:
//! one fetch per path at a time (callers with a usable stale copy get it at
//! once while it runs; callers without one share its result), and a failed
//! fetch backs off (exponentially, bounded, with jitter) during which stale
//! copies are served and callers without one are refused at once.

pub mod vault;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde::Deserialize;

/// One project's credentials.
#[derive(Debug, Clone)]
pub struct ProjectSecret {
    pub rest_key: SecretString,
    pub project_key: String,
    /// The source's version of the secret (Vault KV `metadata.version`).
    pub version: Option<u64>,
    /// `key_fp` of the REST key, computed on the first request that uses
    /// this copy of the secret.
    pub key_fp: crate::common::Memo<Arc<str>>,
}

/// Why a source gave no secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The source answered: there is no such secret (or it was revoked).
    #[error("no secret at this path")]
    NotFound,
    /// The source answered with a secret that cannot be used.
    #[error("the secret is unusable: {0}")]
    Invalid(&'static str),
    /// The source could not be asked (down, unreadable, timed out).
    #[error("the secret source is unavailable: {0}")]
    Unavailable(String),
}

/// Where secrets come from.
#[async_trait::async_trait]
pub trait SecretSource: Send + Sync {
    async fn fetch(&self, secret_path: &str) -> Result<ProjectSecret, SourceError>;
}

/// `backend = "file"`: a TOML file with one table per secret path.
pub struct FileSource {
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    rest_key: String,
    project_key: String,
}

const MAX_SECRETS_FILE_BYTES: u64 = 1 << 20;

impl FileSource {
    pub fn new(path: PathBuf) -> Self {
        FileSource { path }
    }

    /// Reads and parses the whole file. Errors never quote its content.
    pub fn read_file(path: &Path) -> Result<BTreeMap<String, FileEntryView>, SourceError> {
        let meta = std::fs::metadata(path).map_err(|e| {
            SourceError::Unavailable(format!("cannot read {}: {e}", path.display()))
        })?;
        if meta.len() > MAX_SECRETS_FILE_BYTES {
            return Err(SourceError::Unavailable(format!(
                "{} is larger than 1 MiB",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            SourceError::Unavailable(format!("cannot read {}: {e}", path.display()))
        })?;
        // toml's messages quote the offending line, which may hold a key:
        // report the position only.
        let doc: HashMap<String, FileEntry> = toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" at byte {}", s.start))
                .unwrap_or_default();
            SourceError::Unavailable(format!(
                "{} is not a valid secrets file{at} (a table per secret path, each with rest_key and project_key)",
                path.display()
            ))
        })?;
        Ok(doc
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    FileEntryView {
                        rest_key: SecretString::from(v.rest_key),
                        project_key: v.project_key,
                    },
                )
            })
            .collect())
    }
}

/// A parsed secrets-file entry.
pub struct FileEntryView {
    pub rest_key: SecretString,
    pub project_key: String,
}

#[async_trait::async_trait]
impl SecretSource for FileSource {
    async fn fetch(&self, secret_path: &str) -> Result<ProjectSecret, SourceError> {
        let path = self.path.clone();
        let mut all = tokio::task::spawn_blocking(move || FileSource::read_file(&path))
            .await
            .map_err(|_| SourceError::Unavailable("reader task failed".into()))??;
        let entry = all.remove(secret_path).ok_or(SourceError::NotFound)?;
        checked(entry.rest_key, entry.project_key, None)
    }
}

/// Validates a source's answer: a non-empty REST key and a well-formed
/// project key.
pub fn checked(
    rest_key: SecretString,
    project_key: String,
    version: Option<u64>,
) -> Result<ProjectSecret, SourceError> {
    use secrecy::ExposeSecret;
    if rest_key.expose_secret().is_empty()
        || rest_key
            .expose_secret()
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ')
    {
        return Err(SourceError::Invalid(
            "rest_key is empty or holds spaces or control characters",
        ));
    }
    if !is_project_key(&project_key) {
        return Err(SourceError::Invalid(
            "project_key does not match ^project_[0-9a-z]{32}$",
        ));
    }
    Ok(ProjectSecret {
        rest_key,
        project_key,
        version,
        key_fp: crate::common::Memo::new(),
    })
}

pub fn is_project_key(s: &str) -> bool {
    s.strip_prefix("project_").is_some_and(|rest| {
        rest.len() == 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    })
}

/// How a served secret was obtained (the audit's `secret_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    Cached,
    Stale,
}

impl Freshness {
    pub fn as_str(self) -> &'static str {
        match self {
            Freshness::Fresh => "fresh",
            Freshness::Cached => "cached",
            Freshness::Stale => "stale",
        }
    }
}

fn timed_out() -> SourceError {
    SourceError::Unavailable("the secret source did not answer in time".into())
}

/// Bounds a fetch from a source that has no timeout of its own (the file).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Entry {
    secret: Arc<ProjectSecret>,
    fetched: Instant,
}

/// The state of one project's secret, for `/readyz` (never the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretState {
    Unknown,
    Ok,
    Stale,
    /// Was good, is now past `cache_ttl_s + stale_if_error_s` unrefreshed.
    Expired,
    Missing,
    Invalid,
    Unavailable,
}

/// The cache in front of a [`SecretSource`]. Cheap to clone.
#[derive(Clone)]
pub struct SecretCache {
    inner: Arc<Inner>,
}

struct Inner {
    source: Arc<dyn SecretSource>,
    cache: moka::future::Cache<String, Entry>,
    ttl: Duration,
    stale: Duration,
    states: Mutex<HashMap<String, SecretState>>,
    /// One fetch per secret path at a time (single flight).
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The last failed fetch per path, until a fetch succeeds.
    failures: Mutex<HashMap<String, Failure>>,
    /// Bounds one fetch (the backend's request timeout).
    fetch_timeout: Duration,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// A fetch that could not ask the source, and when to ask again.
#[derive(Clone)]
struct Failure {
    error: SourceError,
    /// Failures in a row.
    count: u32,
    finished: Instant,
    retry_at: Instant,
}

/// The first retry after a failure; doubled per failure in a row.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// The longest wait between two fetches of a failing source.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The wait after `count` failures in a row: doubling from
/// [`BACKOFF_BASE`] up to [`BACKOFF_MAX`], then a random half to all of it
/// (replicas and paths do not retry in step).
fn backoff(count: u32) -> Duration {
    let full = BACKOFF_BASE
        .saturating_mul(1u32 << count.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let r = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
    full.mul_f64(0.5 + r / 2.0)
}

impl SecretCache {
    pub fn new(source: Arc<dyn SecretSource>, ttl: Duration, stale: Duration) -> Self {
        Self::with_metrics(source, ttl, stale, DEFAULT_FETCH_TIMEOUT, None)
    }

    /// `fetch_timeout` bounds one fetch, login and retries included.
    pub fn with_metrics(
        source: Arc<dyn SecretSource>,
        ttl: Duration,
        stale: Duration,
        fetch_timeout: Duration,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live((ttl + stale).max(Duration::from_secs(1)))
            .build();
        SecretCache {
            inner: Arc::new(Inner {
                source,
                cache,
                ttl,
                stale,
                states: Mutex::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
                failures: Mutex::new(HashMap::new()),
                fetch_timeout,
                metrics,
            }),
        }
    }

    fn count(&self, kind: &'static str) {
        if let Some(m) = &self.inner.metrics {
            m.secret_cache
                .get_or_create(&crate::metrics::KindLabels { kind })
                .inc();
        }
    }

    fn set_state(&self, path: &str, state: SecretState) {
        if let Ok(mut m) = self.inner.states.lock() {
            m.insert(path.to_string(), state);
        }
    }

    /// The state of `path` for `/readyz`: the last look-up's result, or
    /// `Expired` when a once-good value is no longer usable.
    pub async fn state(&self, path: &str) -> SecretState {
        let last = self
            .inner
            .states
            .lock()
            .ok()
            .and_then(|m| m.get(path).copied())
            .unwrap_or(SecretState::Unknown);
        let usable = self.usable(path).await;
        match last {
            SecretState::Ok | SecretState::Stale if !usable => SecretState::Expired,
            other => other,
        }
    }

    /// A value for `path` is cached and may still be served.
    pub async fn usable(&self, path: &str) -> bool {
        self.inner
            .cache
            .get(path)
            .await
            .is_some_and(|e| e.fetched.elapsed() < self.inner.ttl + self.inner.stale)
    }

    fn flight(&self, path: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.inner.flights.lock() {
            Ok(mut f) => f.entry(path.to_string()).or_default().clone(),
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// A usable secret for `path`, or why there is none.
    ///
    /// Within `cache_ttl_s` the cached value is served; in its last fifth a
    /// background refresh starts, so no request waits on the backend while
    /// a cached value exists. Past it, one caller fetches (bounded by the
    /// fetch timeout) while callers with a usable stale copy get it at once
    /// and those without one wait for that fetch and share its result. After
    /// a failed fetch, until its backoff ends, nobody asks the source:
    /// stale copies are served, callers without one are refused at once.
    pub async fn get(&self, path: &str) -> Result<(Arc<ProjectSecret>, Freshness), SourceError> {
        let ttl = self.inner.ttl;
        let cached = self.inner.cache.get(path).await;
        if let Some(e) = &cached {
            let age = e.fetched.elapsed();
            if age < ttl {
                self.count("hit");
                if age >= ttl.mul_f64(0.8) {
                    self.refresh_in_background(path);
                }
                return Ok((e.secret.clone(), Freshness::Cached));
            }
        }
        self.count("miss");
        let stale = cached.filter(|e| e.fetched.elapsed() < ttl + self.inner.stale);
        let failure = self.failure(path);
        let backing_off = self.backing_off(failure.as_ref());
        let flight = self.flight(path);
        if let Some(e) = stale {
            if !backing_off && let Ok(_turn) = flight.clone().try_lock_owned() {
                return self.fetch(path).await;
            }
            // A fetch is running or has just failed: the stale copy now.
            self.count("stale");
            self.set_state(path, SecretState::Stale);
            return Ok((e.secret, Freshness::Stale));
        }
        if backing_off && let Some(f) = failure {
            self.set_state(path, SecretState::Unavailable);
            return Err(f.error);
        }
        let waiting = Instant::now();
        let Ok(_turn) = tokio::time::timeout(self.inner.fetch_timeout, flight.lock()).await else {
            return Err(timed_out());
        };
        // The fetch we waited for may have succeeded, or failed: share it.
        if let Some(e) = self.inner.cache.get(path).await
            && e.fetched.elapsed() < ttl
        {
            return Ok((e.secret.clone(), Freshness::Cached));
        }
        if let Some(f) = self.failure(path)
            && f.finished >= waiting
        {
            return Err(f.error);
        }
        self.fetch(path).await
    }

    fn failure(&self, path: &str) -> Option<Failure> {
        self.inner
            .failures
            .lock()
            .ok()
            .and_then(|f| f.get(path).cloned())
    }

    fn record_failure(&self, path: &str, error: &SourceError) {
        if let Ok(mut f) = self.inner.failures.lock() {
            let count = f.get(path).map_or(0, |x| x.count).saturating_add(1);
            let now = Instant::now();
            f.insert(
                path.to_string(),
                Failure {
                    error: error.clone(),
                    count,
                    finished: now,
                    retry_at: now + backoff(count),
                },
            );
        }
    }

    fn clear_failure(&self, path: &str) {
        if let Ok(mut f) = self.inner.failures.lock() {
            f.remove(path);
        }
    }

    fn backing_off(&self, failure: Option<&Failure>) -> bool {
        failure.is_some_and(|f| Instant::now() < f.retry_at)
    }

    /// A refresh before the TTL ends; skipped while a failed fetch backs
    /// off, so that a failing source is not asked once per cache hit.
    fn refresh_in_background(&self, path: &str) {
        if self.backing_off(self.failure(path).as_ref()) {
            return;
        }
        let flight = self.flight(path);
        let Ok(turn) = flight.try_lock_owned() else {
            return; // a refresh is already running
        };
        let this = self.clone();
        let path = path.to_string();
        tokio::spawn(async move {
            let _turn = turn;
            let _ = this.fetch(&path).await;
        });
    }

    /// Asks the source, bounded by the fetch timeout (the caller holds the
    /// path's flight).
    async fn fetch(&self, path: &str) -> Result<(Arc<ProjectSecret>, Freshness), SourceError> {
        let cached = self.inner.cache.get(path).await;
        let answer = tokio::time::timeout(self.inner.fetch_timeout, self.inner.source.fetch(path))
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        if let Err(e @ SourceError::Unavailable(_)) = &answer {
            self.record_failure(path, e);
        } else {
            self.clear_failure(path);
        }
        match answer {
            Ok(secret) => {
                let secret = Arc::new(secret);
                self.inner
                    .cache
                    .insert(
                        path.to_string(),
                        Entry {
                            secret: secret.clone(),
                            fetched: Instant::now(),
                        },
                    )
                    .await;
                self.set_state(path, SecretState::Ok);
                if let Some(m) = &self.inner.metrics {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0);
                    m.secret_refreshed
                        .get_or_create(&crate::metrics::SecretPathLabels {
                            secret_path: path.to_string(),
                        })
                        .set(now);
                }
                Ok((secret, Freshness::Fresh))
            }
            Err(e @ (SourceError::NotFound | SourceError::Invalid(_))) => {
                // The source says this secret is gone or unusable: a revoked
                // key is never used again.
                if cached.is_some() {
                    self.count("eviction");
                }
                self.inner.cache.invalidate(path).await;
                let state = if matches!(e, SourceError::NotFound) {
                    SecretState::Missing
                } else {
                    SecretState::Invalid
                };
                self.set_state(path, state);
                tracing::warn!(secret_path = path, error = %e, "project secret not usable");
                Err(e)
            }
            Err(e @ SourceError::Unavailable(_)) => {
                if let Some(entry) = cached
                    && entry.fetched.elapsed() < self.inner.ttl + self.inner.stale
                {
                    if entry.fetched.elapsed() >= self.inner.ttl {
                        self.count("stale");
                        self.set_state(path, SecretState::Stale);
                        tracing::warn!(secret_path = path, error = %e, "secret source failing; serving the cached secret");
                        return Ok((entry.secret, Freshness::Stale));
                    }
                    // A background refresh failed while the value is fresh.
                    return Ok((entry.secret, Freshness::Cached));
                }
                self.set_state(path, SecretState::Unavailable);
                tracing::warn!(secret_path = path, error = %e, "secret source failing and no usable cached secret");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;
