//! The state every replica shares (`[shared_state]`, Redis): cool-downs,
//! rates, daily quotas, the upstream pace and single-use `jti`s, decided
//! by one server-side script per admitted request on the store's clock.
//! A backend behind `limits` (which falls back to the replica's own share
//! when this says [`Unavailable`]); nothing secret is written here.
//!
//! Every call is bounded by `timeout_ms` and goes through a circuit
//! breaker ([`breaker`]). The store's `epoch` key tells a store that came
//! back empty (restart without persistence, failover to a lagging replica,
//! `FLUSHALL`): admissions then stop trusting it until this replica has
//! re-published its own spent `jti`s and today's counts ([`seed`]). The
//! design, and what the anchors do: `../shared/design/SHARED-STATE.md`;
//! the keys: docs/operations.md.

pub mod breaker;
pub mod seed;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult, Script, Value};
use sha2::{Digest, Sha256};

use crate::config::{RedisTarget, SharedStateConfig};
use crate::metrics::{KindLabels, Metrics, VaultLabels};
use breaker::{Breaker, Change};

/// jtis and counts per seeding call.
const SEED_CHUNK: usize = 200;
/// How often a store that is down or not yet trusted is probed.
const PROBE_EVERY: Duration = breaker::PROBE_EVERY;
/// How long after a new epoch appears before replicas trust it: each live
/// replica notices within [`PROBE_EVERY`] and re-seeds meanwhile.
const SETTLE_MS: i64 = 2000;
/// Named in a script's KEYS where a request has no such key (never
/// read or written): under the prefix, so that an ACL user limited to it
/// may run the script.
const UNUSED_KEY: &str = "unused";
/// Longest `jti` written into a key as it is; longer ones are hashed.
const MAX_KEY_JTI: usize = 128;

/// The store cannot decide now (down, slow, breaker open, or not yet
/// re-seeded after it lost its data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// One request's admission, as the store is asked it.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub project: &'a str,
    /// (team, action, per minute) of every grant's rate that applies.
    pub rates: Vec<(&'a str, &'static str, u32)>,
    /// (team, action, quota) of every grant's daily quota that applies.
    pub quotas: Vec<(&'a str, &'static str, u64)>,
    pub pace_per_s: Option<u32>,
    /// A single-use token: (iss, jti, held until in unix seconds).
    pub jti: Option<(&'a str, &'a str, i64)>,
    pub request_id: &'a str,
}

impl Ask<'_> {
    /// Only the cool-down is to be checked.
    pub fn cooldown_only(&self) -> bool {
        self.rates.is_empty()
            && self.quotas.is_empty()
            && self.pace_per_s.is_none()
            && self.jti.is_none()
    }
}

/// The store's answer.
#[derive(Debug)]
pub enum Verdict {
    /// Everything committed; sleep `wait` for the pacing slot. `refund`
    /// undoes the quota units and the jti if the request is not forwarded.
    Admitted {
        wait: Duration,
        refund: Refund,
    },
    Cooldown {
        retry_after: Duration,
        unavailable: bool,
    },
    Replayed,
    /// The rate of `ask.rates[index]`.
    Rate {
        index: usize,
        retry_after: Duration,
    },
    /// The quota of `ask.quotas[index]`.
    Quota {
        index: usize,
        retry_after: Duration,
    },
    Pace {
        retry_after: Duration,
    },
}

/// What [`SharedState::refund`] gives back.
#[derive(Debug, Clone, Default)]
pub struct Refund {
    jti_key: Option<String>,
    quota_keys: Vec<String>,
    request_id: String,
    day: i64,
}

impl Refund {
    fn is_empty(&self) -> bool {
        self.jti_key.is_none() && self.quota_keys.is_empty()
    }
}

struct Scripts {
    admit: Script,
    refund: Script,
    cooldown: Script,
    epoch: Script,
    seed: Script,
}

/// Where connections come from.
enum Source {
    Url,
    Sentinel(Box<tokio::sync::Mutex<redis::sentinel::SentinelClient>>),
}

/// The trail a re-seed reads, and how long tokens live.
#[derive(Debug, Clone)]
pub struct Trail {
    pub live: PathBuf,
    /// The longest a token can be presented: lifetime cap plus twice the
    /// leeway.
    pub window_s: i64,
    pub leeway_s: i64,
}

pub struct SharedState {
    prefix: String,
    replica: String,
    timeout: Duration,
    source: Source,
    conn: Mutex<Option<ConnectionManager>>,
    breaker: Breaker,
    /// The epoch whose keys this replica trusts; `None` until it has
    /// synced (and re-seeded when the store was empty).
    epoch: Mutex<Option<String>>,
    syncing: AtomicBool,
    wake: tokio::sync::Notify,
    scripts: Scripts,
    metrics: Arc<Metrics>,
    trail: Trail,
}

/// Why the shared state could not be set up from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum SharedBuildError {
    #[error("shared_state.password_file: cannot read {path}: {source}")]
    Password {
        path: String,
        source: std::io::Error,
    },
    #[error("shared_state.password_file: {0} is not UTF-8 text")]
    PasswordText(String),
    #[error("shared_state.ca_file: cannot read {path}: {source}")]
    Ca {
        path: String,
        source: std::io::Error,
    },
    #[error("shared_state: {0}")]
    Client(String),
}

impl SharedState {
    /// Sets the client up without connecting: a store that is down at
    /// start leaves the gateway degraded, not unable to start.
    pub fn new(
        cfg: &SharedStateConfig,
        replica: &str,
        trail: Trail,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<SharedState>, SharedBuildError> {
        let password = match &cfg.password_file {
            Some(path) => {
                let bytes = crate::keyfile::read_secret(path).map_err(|source| {
                    SharedBuildError::Password {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
                Some(
                    std::str::from_utf8(&bytes)
                        .map_err(|_| SharedBuildError::PasswordText(path.display().to_string()))?
                        .to_string(),
                )
            }
            None => None,
        };
        let root_cert = match &cfg.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| SharedBuildError::Ca {
                path: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: root_cert.clone(),
        };
        let settings = |info: redis::RedisConnectionInfo| {
            let info = match &cfg.username {
                Some(u) => info.set_username(u),
                None => info,
            };
            match &password {
                Some(p) => info.set_password(p),
                None => info,
            }
        };
        let client_err = |e: redis::RedisError| SharedBuildError::Client(e.to_string());
        let (source, conn) = match &cfg.target {
            RedisTarget::Url(url) => {
                let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(client_err)?;
                let redis_settings = settings(info.redis_settings().clone());
                let info = info.set_redis_settings(redis_settings);
                let client = if url.starts_with("rediss://") {
                    Client::build_with_tls(info, certs()).map_err(client_err)?
                } else {
                    Client::open(info).map_err(client_err)?
                };
                let manager = client
                    .get_connection_manager_lazy(manager_config(cfg.timeout))
                    .map_err(client_err)?;
                (Source::Url, Some(manager))
            }
            RedisTarget::Sentinel { urls, master } => {
                let mut addrs = Vec::new();
                let mut tls = false;
                for u in urls {
                    tls |= u.starts_with("rediss://");
                    let info = redis::IntoConnectionInfo::into_connection_info(u.as_str())
                        .map_err(client_err)?;
                    addrs.push(info.addr().clone());
                }
                let mut b = redis::sentinel::SentinelClientBuilder::new(
                    addrs,
                    master,
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(client_err)?;
                if tls {
                    b = b
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_redis_certificates(certs())
                        .set_client_to_sentinel_certificates(certs());
                }
                if let Some(u) = &cfg.username {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = &password {
                    b = b.set_client_to_redis_password(p);
                }
                (
                    Source::Sentinel(Box::new(tokio::sync::Mutex::new(
                        b.build().map_err(client_err)?,
                    ))),
                    None,
                )
            }
        };
        Ok(Arc::new(SharedState {
            prefix: cfg.key_prefix.clone(),
            replica: replica.to_string(),
            timeout: cfg.timeout,
            source,
            conn: Mutex::new(conn),
            breaker: Breaker::default(),
            epoch: Mutex::new(None),
            syncing: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            scripts: Scripts {
                admit: Script::new(include_str!("shared/admit.lua")),
                refund: Script::new(include_str!("shared/refund.lua")),
                cooldown: Script::new(include_str!("shared/cooldown.lua")),
                epoch: Script::new(include_str!("shared/epoch.lua")),
                seed: Script::new(include_str!("shared/seed.lua")),
            },
            metrics,
            trail,
        }))
    }

    /// Syncs with the store once (bounded), then checks its epoch every
    /// [`PROBE_EVERY`] in the background (one round trip): a store that
    /// came back empty is noticed without a request, and recovery needs no
    /// restart. The task ends with the last `Arc`.
    ///
    /// A store reachable but with an epoch too new to trust (a fresh
    /// store, or one that just lost its data) is waited for here, at most
    /// the settle time, so that a fleet started on an empty store serves
    /// single-use tokens from its first request; a store that is down is
    /// not waited for.
    pub async fn start(self: &Arc<Self>) {
        let most = Duration::from_millis(SETTLE_MS.unsigned_abs()) + PROBE_EVERY;
        let started = tokio::time::Instant::now();
        loop {
            let _ = tokio::time::timeout(most, self.sync()).await;
            if self.healthy() || self.breaker.is_open() || started.elapsed() > most {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let weak: Weak<SharedState> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                // Held for one round only: the task ends within a probe
                // interval of the gateway's last handle.
                let Some(me) = weak.upgrade() else { return };
                me.sync().await;
                let _ = tokio::time::timeout(PROBE_EVERY, me.wake.notified()).await;
            }
        });
    }

    /// The last call succeeded and the epoch is trusted: decisions are
    /// the fleet's.
    pub fn healthy(&self) -> bool {
        self.breaker.is_clean() && self.epoch.lock().map(|e| e.is_some()).unwrap_or(false)
    }

    /// The whole admission in one round trip, or [`Unavailable`].
    pub async fn admit(&self, ask: &Ask<'_>) -> Result<Verdict, Unavailable> {
        let Some(epoch) = self.epoch.lock().ok().and_then(|e| e.clone()) else {
            self.wake.notify_one();
            return Err(Unavailable);
        };
        let p = ask.project;
        let jti_key = ask.jti.map(|(iss, jti, _)| self.jti_key(iss, jti));
        let quota_keys: Vec<String> = ask
            .quotas
            .iter()
            .map(|(team, action, _)| self.project_key(p, &format!("quota:{team}:{action}")))
            .collect();
        let mut inv = self.scripts.admit.prepare_invoke();
        inv.key(self.key("epoch"))
            .key(self.project_key(p, "cool"))
            .key(self.project_key(p, "pace"))
            .key(jti_key.clone().unwrap_or_else(|| self.key(UNUSED_KEY)));
        for (team, action, _) in &ask.rates {
            inv.key(self.project_key(p, &format!("rate:{team}:{action}")));
        }
        for k in &quota_keys {
            inv.key(k);
        }
        inv.arg(&epoch)
            .arg(ask.pace_per_s.unwrap_or(0))
            .arg(
                ask.jti
                    .map_or(0, |(_, _, until)| until.saturating_mul(1000)),
            )
            .arg(ask.request_id)
            .arg(ask.rates.len())
            .arg(ask.quotas.len());
        for (_, _, per_minute) in &ask.rates {
            inv.arg(*per_minute);
        }
        for (_, _, quota) in &ask.quotas {
            inv.arg(*quota);
        }
        let op = if ask.cooldown_only() {
            "cooldown_check"
        } else {
            "admit"
        };
        let reply: Vec<Value> = self
            .call(op, async {
                let mut c = self.connection().await?;
                inv.invoke_async(&mut c).await
            })
            .await?;
        let word = reply.first().and_then(text);
        let n = |i: usize| reply.get(i).and_then(int).unwrap_or(0);
        let ms = |i: usize| Duration::from_millis(u64::try_from(n(i)).unwrap_or(0));
        let index = |i: usize| usize::try_from(n(i)).unwrap_or(1).saturating_sub(1);
        Ok(match word.as_deref() {
            Some("ok") => Verdict::Admitted {
                wait: ms(1),
                refund: Refund {
                    jti_key,
                    quota_keys,
                    request_id: ask.request_id.to_string(),
                    day: n(2),
                },
            },
            Some("cool") => Verdict::Cooldown {
                retry_after: ms(1),
                unavailable: n(2) == 1,
            },
            Some("replayed") => Verdict::Replayed,
            Some("rate") => Verdict::Rate {
                index: index(1),
                retry_after: ms(2),
            },
            Some("quota") => Verdict::Quota {
                index: index(1),
                retry_after: ms(2),
            },
            Some("pace") => Verdict::Pace { retry_after: ms(1) },
            Some("epoch") => {
                // The store lost its data (or has a newer epoch): stop
                // trusting it until re-seeded and settled.
                self.forget_epoch();
                tracing::warn!(
                    "the shared state has no epoch or a new one (restarted empty or flushed?); deciding locally until this replica has re-seeded it"
                );
                self.wake.notify_one();
                return Err(Unavailable);
            }
            _ => {
                tracing::error!(
                    "the shared state's admission script answered something unexpected"
                );
                return Err(Unavailable);
            }
        })
    }

    /// Gives an admitted request's quota units and jti back, in the
    /// background (the request is answered meanwhile). A failed refund
    /// errs on the safe side: a unit counted, a jti kept until it expires.
    pub fn refund(self: &Arc<Self>, refund: Refund) {
        if refund.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            let mut inv = me.scripts.refund.prepare_invoke();
            inv.key(refund.jti_key.clone().unwrap_or_else(|| me.key(UNUSED_KEY)));
            for k in &refund.quota_keys {
                inv.key(k);
            }
            inv.arg(if refund.jti_key.is_some() {
                refund.request_id.as_str()
            } else {
                ""
            })
            .arg(refund.day);
            let _: Result<Value, Unavailable> = me
                .call("refund", async {
                    let mut c = me.connection().await?;
                    inv.invoke_async(&mut c).await
                })
                .await;
        });
    }

    /// Batch said 429/503 for `project`: every replica cools it down for
    /// at least `length` (an existing longer cool-down stays).
    pub async fn extend_cooldown(&self, project: &str, length: Duration, unavailable: bool) {
        let mut inv = self.scripts.cooldown.prepare_invoke();
        inv.key(self.project_key(project, "cool"))
            .arg(u64::try_from(length.as_millis()).unwrap_or(u64::MAX))
            .arg(u8::from(unavailable));
        let _: Result<Value, Unavailable> = self
            .call("cooldown", async {
                let mut c = self.connection().await?;
                inv.invoke_async(&mut c).await
            })
            .await;
    }

    /// Learns the store's epoch, re-seeds it from this replica's trail when
    /// this replica has not done so for that epoch, and trusts a new epoch
    /// only [`SETTLE`] after it was created: every live replica checks the
    /// epoch each [`PROBE_EVERY`], so by then each has noticed the empty
    /// store and re-published what it spent, and no replica accepts a jti
    /// another one spent before the store forgot it. One at a time.
    async fn sync(&self) {
        if self.syncing.swap(true, Ordering::SeqCst) {
            return;
        }
        // Cleared however this ends, a timeout that drops it included.
        struct Syncing<'a>(&'a AtomicBool);
        impl Drop for Syncing<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let _syncing = Syncing(&self.syncing);
        let marker = self.key(&format!("seeded:{}", self.replica));
        let mut inv = self.scripts.epoch.prepare_invoke();
        inv.key(self.key("epoch"))
            .key(&marker)
            .arg(uuid::Uuid::new_v4().simple().to_string());
        let reply: Result<(String, String, i64), Unavailable> = self
            .call("epoch", async {
                let mut c = self.connection().await?;
                inv.invoke_async(&mut c).await
            })
            .await;
        if let Ok((epoch, seeded, now_ms)) = reply {
            let known = self.epoch.lock().ok().and_then(|e| e.clone());
            if known.as_deref() != Some(epoch.as_str()) {
                if known.is_some() {
                    tracing::warn!(
                        "the shared state has a new epoch (restarted empty or flushed?); deciding locally until it is re-seeded"
                    );
                }
                self.forget_epoch();
                let created = epoch
                    .split(':')
                    .next()
                    .and_then(|ms| ms.parse::<i64>().ok())
                    .unwrap_or(0);
                let settled = now_ms.saturating_sub(created) >= SETTLE_MS;
                if (seeded == epoch || self.reseed(&epoch, &marker).await) && settled {
                    if let Ok(mut e) = self.epoch.lock() {
                        *e = Some(epoch);
                    }
                    tracing::info!("shared state in use");
                }
            }
        }
    }

    fn forget_epoch(&self) {
        if let Ok(mut e) = self.epoch.lock() {
            *e = None;
        }
    }

    /// Publishes this replica's spent jtis and today's counts under
    /// `epoch`. False when the store failed or its epoch changed meanwhile.
    async fn reseed(&self, epoch: &str, marker: &str) -> bool {
        let trail = self.trail.clone();
        let now = crate::common::now_s();
        let Ok(seed) = tokio::task::spawn_blocking(move || {
            seed::scan(&trail.live, now, trail.window_s, trail.leeway_s)
        })
        .await
        else {
            return false;
        };
        let counts: Vec<_> = seed.counts.iter().collect();
        let chunks: Vec<&[seed::SpentJti]> = if seed.jtis.is_empty() {
            vec![&[]]
        } else {
            seed.jtis.chunks(SEED_CHUNK).collect()
        };
        let last = chunks.len() - 1;
        for (i, jtis) in chunks.into_iter().enumerate() {
            let mut inv = self.scripts.seed.prepare_invoke();
            inv.key(self.key("epoch")).key(marker);
            for j in jtis {
                inv.key(self.jti_key(&j.iss, &j.jti));
            }
            // The counts travel with the first chunk.
            let first = if i == 0 { &counts[..] } else { &[] };
            for ((team, project, action), _) in first {
                inv.key(self.project_key(project, &format!("quota:{team}:{action}")));
            }
            inv.arg(epoch)
                .arg(jtis.len())
                .arg(if i == last { "1" } else { "0" })
                .arg(seed.day);
            for j in jtis {
                inv.arg(&j.request_id).arg(j.until.saturating_mul(1000));
            }
            for (_, n) in first {
                inv.arg(**n);
            }
            let applied: Result<i64, Unavailable> = self
                .call("seed", async {
                    let mut c = self.connection().await?;
                    inv.invoke_async(&mut c).await
                })
                .await;
            if applied != Ok(1) {
                return false;
            }
        }
        self.metrics.shared_reseeds.inc();
        if seed.jtis.is_empty() && seed.counts.is_empty() {
            tracing::info!(
                "new shared-state epoch; this replica's trail had nothing to re-publish"
            );
        } else {
            tracing::warn!(
                jtis = seed.jtis.len(),
                counts = seed.counts.len(),
                "the shared state was empty for this replica; re-seeded it from this replica's audit trail"
            );
        }
        true
    }

    /// One call: skipped while the breaker is open, bounded by the
    /// timeout, counted.
    async fn call<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        let count = |result: &'static str| {
            self.metrics
                .shared_calls
                .get_or_create(&VaultLabels { op, result })
                .inc();
        };
        if !self.breaker.allow() {
            count("open");
            return Err(Unavailable);
        }
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => {
                count("ok");
                if self.breaker.success() == Change::Closed {
                    self.metrics.shared_breaker_open.set(0);
                    tracing::info!("shared state reachable again; its circuit breaker closed");
                }
                Ok(v)
            }
            Ok(Err(e)) => {
                count("error");
                tracing::debug!(op, error = %e, "shared state call failed");
                self.failed();
                Err(Unavailable)
            }
            Err(_) => {
                count("timeout");
                self.failed();
                Err(Unavailable)
            }
        }
    }

    fn failed(&self) {
        if self.breaker.failure() == Change::Opened {
            self.metrics.shared_breaker_open.set(1);
            tracing::warn!(
                "shared state unavailable; its circuit breaker opened: single-use tokens are refused, rates and quotas are this replica's share"
            );
            if matches!(self.source, Source::Sentinel(_))
                && let Ok(mut c) = self.conn.lock()
            {
                // Ask the sentinels for the master again.
                *c = None;
            }
        }
    }

    async fn connection(&self) -> RedisResult<ConnectionManager> {
        if let Some(c) = self.conn.lock().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let Source::Sentinel(sentinel) = &self.source else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "no connection",
            )));
        };
        let client = sentinel.lock().await.async_get_client().await?;
        let manager = client.get_connection_manager_lazy(manager_config(self.timeout))?;
        if let Ok(mut c) = self.conn.lock() {
            *c = Some(manager.clone());
        }
        Ok(manager)
    }

    /// Fallbacks: counted per kind (`local`, `single_use`).
    pub fn count_fallback(&self, kind: &'static str) {
        self.metrics
            .shared_fallbacks
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// A project's keys share a hash tag, so that a later move to a
    /// cluster keeps each admission on one slot.
    fn project_key(&self, project: &str, rest: &str) -> String {
        format!("{}{{p:{project}}}:{rest}", self.prefix)
    }

    /// `jti:<hash of iss>:<jti>`; a long or odd `jti` is hashed too, so a
    /// caller cannot make keys of any size or shape.
    fn jti_key(&self, iss: &str, jti: &str) -> String {
        let iss_hash = &hex::encode(Sha256::digest(iss.as_bytes()))[..16];
        let plain = jti.len() <= MAX_KEY_JTI && jti.bytes().all(|b| b.is_ascii_graphic());
        if plain {
            format!("{}jti:{iss_hash}:{jti}", self.prefix)
        } else {
            let h = hex::encode(Sha256::digest(jti.as_bytes()));
            format!("{}jti:{iss_hash}:#{h}", self.prefix)
        }
    }
}

/// The client's own bounds sit behind the gateway's per-call timeout
/// (which is the one that counts a call as timed out).
fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout.saturating_mul(2)))
        .set_connection_timeout(Some(timeout.max(Duration::from_millis(500))))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(500))
}

fn text(v: &Value) -> Option<String> {
    redis::from_redis_value_ref::<String>(v).ok()
}

fn int(v: &Value) -> Option<i64> {
    redis::from_redis_value_ref::<i64>(v).ok()
}
