//! Prometheus metrics (`/metrics` on the admin listener). Labels never carry
//! caller-chosen strings: actions, reasons and decisions come from closed sets.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub action: &'static str,
    pub decision: &'static str,
    pub reason: &'static str,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProjectLabels {
    /// A configured project alias (a closed set).
    pub project: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VaultLabels {
    pub op: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretPathLabels {
    /// A configured secret path (a closed set).
    pub secret_path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    pub connection_errors: Family<KindLabels, Counter>,
    pub audit_failures: Counter,
    pub audit_write_duration: Histogram,
    pub secret_failures: Family<KindLabels, Counter>,
    pub in_flight: Gauge,
    /// 1 while the audit trail refuses records for `max_total_bytes`.
    pub audit_over_budget: Gauge,
    /// Bytes of the audit trail: rotated files and the live one.
    pub audit_bytes: Gauge,
    pub replay_rejections: Family<KindLabels, Counter>,
    pub cooldowns: Family<ProjectLabels, Counter>,
    pub reloads: Family<KindLabels, Counter>,
    pub vault_calls: Family<VaultLabels, Counter>,
    pub vault_logins: Counter,
    pub vault_renewals: Counter,
    pub secret_cache: Family<KindLabels, Counter>,
    pub secret_refreshed: Family<SecretPathLabels, Gauge>,
    pub shared_calls: Family<VaultLabels, Counter>,
    pub shared_breaker_open: Gauge,
    pub shared_fallbacks: Family<KindLabels, Counter>,
    pub shared_reseeds: Counter,
}

fn buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

impl Metrics {
    /// Counts a protocol-level refusal or a connection ended in error.
    pub fn connection_error(&self, kind: &'static str) {
        self.connection_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("batch_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by action, decision, reason and status class",
            requests.clone(),
        );
        let request_duration = Histogram::new(buckets());
        registry.register(
            "request_duration_seconds",
            "Time from request head to answer",
            request_duration.clone(),
        );
        let upstream_duration = Histogram::new(buckets());
        registry.register(
            "upstream_duration_seconds",
            "Time of the upstream exchange with Batch",
            upstream_duration.clone(),
        );
        let connection_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "connection_errors",
            "Connections refused or cut by the HTTP layer (oversized headers, bad framing, slow clients)",
            connection_errors.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Audit records that could not be written",
            audit_failures.clone(),
        );
        let audit_write_duration = Histogram::new(buckets());
        registry.register(
            "audit_write_duration_seconds",
            "Time for an attempt record to be durable (queue, write, fsync)",
            audit_write_duration.clone(),
        );
        let secret_failures = Family::<KindLabels, Counter>::default();
        registry.register(
            "secret_failures",
            "Secret look-ups that found no usable secret, by kind",
            secret_failures.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests being handled",
            in_flight.clone(),
        );
        let audit_over_budget = Gauge::default();
        registry.register(
            "audit_over_budget",
            "1 while the audit trail is at max_total_bytes and requests are refused",
            audit_over_budget.clone(),
        );
        let audit_bytes = Gauge::default();
        registry.register(
            "audit_bytes",
            "Bytes of the audit trail (rotated files and the live one)",
            audit_bytes.clone(),
        );
        let replay_rejections = Family::<KindLabels, Counter>::default();
        registry.register(
            "replay_rejections",
            "Single-use tokens refused: replayed, or the replay memory full",
            replay_rejections.clone(),
        );
        let cooldowns = Family::<ProjectLabels, Counter>::default();
        registry.register(
            "upstream_cooldowns",
            "Cool-downs started by Batch's 429 or 503, per project",
            cooldowns.clone(),
        );
        let shared_calls = Family::<VaultLabels, Counter>::default();
        registry.register(
            "shared_state_calls",
            "Calls to the shared state (Redis), by operation and result (ok, error, timeout, open: refused by the open breaker)",
            shared_calls.clone(),
        );
        let shared_breaker_open = Gauge::default();
        registry.register(
            "shared_state_breaker_open",
            "1 while the shared-state circuit breaker is open (calls are not tried; limits are decided locally)",
            shared_breaker_open.clone(),
        );
        let shared_fallbacks = Family::<KindLabels, Counter>::default();
        registry.register(
            "shared_state_fallbacks",
            "Requests decided without the shared state: limits by the replica's share (local), single-use tokens refused (single_use)",
            shared_fallbacks.clone(),
        );
        let shared_reseeds = Counter::default();
        registry.register(
            "shared_state_reseeds",
            "Times this replica re-published its spent jtis and today's counts to a store that came back empty",
            shared_reseeds.clone(),
        );
        let reloads = Family::<KindLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads, by result (ok, rejected)",
            reloads.clone(),
        );
        let vault_calls = Family::<VaultLabels, Counter>::default();
        registry.register(
            "vault_calls",
            "Vault HTTP calls by operation and result",
            vault_calls.clone(),
        );
        let vault_logins = Counter::default();
        registry.register(
            "vault_logins",
            "Vault logins (first, and after a refused renewal or a 403)",
            vault_logins.clone(),
        );
        let vault_renewals = Counter::default();
        registry.register(
            "vault_renewals",
            "Vault token renewals",
            vault_renewals.clone(),
        );
        let secret_cache = Family::<KindLabels, Counter>::default();
        registry.register(
            "secret_cache",
            "Secret cache look-ups: hit, miss, stale (served past its TTL), eviction",
            secret_cache.clone(),
        );
        let secret_refreshed = Family::<SecretPathLabels, Gauge>::default();
        registry.register(
            "secret_last_refresh_timestamp_seconds",
            "Unix time of each secret's last successful fetch (time() minus this = its age)",
            secret_refreshed.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            requests,
            request_duration,
            upstream_duration,
            connection_errors,
            audit_failures,
            audit_write_duration,
            secret_failures,
            in_flight,
            audit_over_budget,
            audit_bytes,
            replay_rejections,
            cooldowns,
            reloads,
            vault_calls,
            vault_logins,
            vault_renewals,
            secret_cache,
            secret_refreshed,
            shared_calls,
            shared_breaker_open,
            shared_fallbacks,
            shared_reseeds,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(reg) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
