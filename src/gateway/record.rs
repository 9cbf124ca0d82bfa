//! The request's record context: one template of what every audit record
//! of the request shares, filled in as the steps learn it; the `denied`,
//! `attempt` and `outcome` writes; and the request's final metrics, taken
//! from the refusal the request ended with (never from a response header).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response};
use http_body_util::Full;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::request::{Peer, caller_request_id};
use crate::app::App;
use crate::audit::{Caller, Decision, Phase, Record, Unverified, UpstreamOutcome};
use crate::common::names;
use crate::error::{GatewayError, Reject, replay_rejection, rescue, secret_failure};
use crate::forward::Answer;
use crate::metrics::{KindLabels, RequestLabels, status_class};
use crate::secrets::ProjectSecret;

/// Request targets and verified claims are recorded bounded to 512
/// characters (they are caller-chosen bytes).
const RECORDED_CHARS: usize = 512;

/// Most teams a record lists; a token naming more is recorded with the
/// first ones and a count of the rest.
const RECORDED_TEAMS: usize = 32;

/// Everything the audit records of one request share, and how it ended.
#[derive(Debug, Default)]
pub struct RequestRecord {
    pub request_id: Arc<str>,
    /// Which limits decided the request (`shared`/`local`), with
    /// `[shared_state]`: written on the attempt.
    pub limits: Option<&'static str>,
    caller_request_id: Option<Arc<str>>,
    client_addr: Arc<str>,
    /// The peer's address without its port: what summaries count by.
    client_ip: Option<IpAddr>,
    method: Arc<str>,
    path: Arc<str>,
    pub action: Option<&'static str>,
    pub project: Option<Arc<str>>,
    pub campaign_id: Option<Arc<str>>,
    pub caller: Option<Arc<Caller>>,
    pub unverified: Option<Unverified>,
    key_fp: Option<Arc<str>>,
    client_cert: Option<Arc<str>>,
    pub dry_run: bool,
    /// The `attempt` is durable: what follows is an `outcome`.
    attempt_on_disk: bool,
    /// How long the exchange with Batch took, when there was one.
    pub upstream_latency: Option<Duration>,
    /// The refusal the request ended with; `None` is "ok".
    ended: Option<(Reject, Option<Cow<'static, str>>)>,
}

impl RequestRecord {
    pub fn new(request_id: String, parts: &Parts, peer: Peer) -> Self {
        RequestRecord {
            request_id: request_id.into(),
            caller_request_id: caller_request_id(&parts.headers).map(Into::into),
            client_addr: peer.addr.to_string().into(),
            client_ip: Some(peer.addr.ip()),
            client_cert: peer.client_cert,
            // Methods are short; an extension method is any token hyper took.
            method: crate::common::bounded(parts.method.as_str(), 32).into(),
            // The path only: a query string may carry a token and is never recorded.
            path: bounded(parts.uri.path()).into(),
            ..RequestRecord::default()
        }
    }

    fn record(&self, phase: Phase) -> Record {
        let mut r = Record::new(phase);
        r.request_id = Some(self.request_id.clone());
        r.caller_request_id = self.caller_request_id.clone();
        r.client_addr = Some(self.client_addr.clone());
        r.method = Some(self.method.clone());
        r.path = Some(self.path.clone());
        r.action = self.action;
        r.project = self.project.clone();
        r.campaign_id = self.campaign_id.clone();
        r.caller = self.caller.clone();
        r.unverified = self.unverified.clone();
        r.key_fp = self.key_fp.clone();
        r.dry_run = self.dry_run.then_some(true);
        r.client_cert = self.client_cert.clone();
        r
    }

    /// The verified caller, as recorded. A reused token's caller
    /// (fingerprint included) was built by the first request that used it.
    pub fn verified(&mut self, app: &App, principal: &crate::authn::Principal, token: &str) {
        let build = || {
            Arc::new(Caller {
                iss: bounded(&principal.iss).to_string(),
                sub: bounded(&principal.sub).to_string(),
                team: recorded_teams(&principal.teams),
                jti: principal.jti.as_deref().map(|j| bounded(j).to_string()),
                token_fp: app.hmac.fingerprint(token.as_bytes()),
                single_use: None,
                exp: None,
            })
        };
        // A request-bound token is used once: its caller is built for this
        // request alone, so that marking it single-use (below) changes it
        // in place instead of copying a memoized one.
        self.caller = Some(if principal.binding.is_bound() {
            build()
        } else {
            principal.recorded.get_or_init(build).clone()
        });
    }

    /// The token is single-use: its `jti` is spent by this request, held
    /// after a restart until the token's `exp`.
    pub fn single_use(&mut self, exp: i64) {
        if let Some(c) = self.caller.as_mut() {
            let c = Arc::make_mut(c);
            c.single_use = Some(true);
            c.exp = Some(exp);
        }
    }

    /// The REST key's fingerprint (memoized with the cached secret).
    pub fn secret(&mut self, app: &App, secret: &ProjectSecret) {
        self.key_fp = Some(
            secret
                .key_fp
                .get_or_init(|| {
                    app.hmac
                        .fingerprint(secret.rest_key.expose_secret().as_bytes())
                        .into()
                })
                .clone(),
        );
    }

    /// Step 7: the attempt, durable before anything leaves.
    pub async fn attempt(
        &mut self,
        app: &App,
        source: &'static str,
        version: Option<u64>,
    ) -> Result<(), GatewayError> {
        let mut attempt = self.record(Phase::Attempt);
        attempt.decision = Some(Decision::Allow);
        attempt.reason = Some("ok".into());
        attempt.secret_source = Some(source);
        attempt.secret_version = version;
        attempt.limits = self.limits;
        let writing = Instant::now();
        let written = app.audit.append(attempt, true).await;
        app.metrics
            .audit_write_duration
            .observe(writing.elapsed().as_secs_f64());
        if written.is_err() {
            app.metrics.audit_failures.inc();
            return Err(GatewayError::new(Reject::AuditUnavailable));
        }
        self.attempt_on_disk = true;
        Ok(())
    }

    /// Step 9: what Batch answered (`None`: the dry run's answer).
    pub async fn outcome(&mut self, app: &App, answer: Option<&Answer>) {
        let mut outcome = self.record(Phase::Outcome);
        outcome.decision = Some(Decision::Allow);
        outcome.reason = Some("ok".into());
        outcome.upstream = answer.map(|a| UpstreamOutcome {
            status: Some(a.status.as_u16()),
            error_code: a.error_code.clone(),
            latency_ms: millis(a.latency),
        });
        write_outcome(app, outcome).await;
    }

    /// The request ends with `err`: recorded (a `denied` record, or the
    /// `outcome` once the attempt is on disk; nothing when the trail
    /// itself is what failed) and rendered.
    pub async fn refuse(&mut self, app: &App, err: GatewayError) -> Response<Full<Bytes>> {
        let err = if err.kind == Reject::AuditUnavailable {
            err
        } else if self.attempt_on_disk {
            let mut outcome = self.record(Phase::Outcome);
            outcome.decision = Some(Decision::Allow);
            outcome.reason = Some(err.kind.reason().into());
            outcome.detail = err.detail.clone();
            outcome.upstream = self.upstream_latency.map(|d| UpstreamOutcome {
                status: None,
                error_code: None,
                latency_ms: millis(d),
            });
            write_outcome(app, outcome).await;
            err
        } else {
            let mut rec = self.record(Phase::Denied);
            rec.decision = Some(Decision::Deny);
            rec.reason = Some(err.kind.reason().into());
            rec.detail = err.detail.clone();
            // Without a verified token a caller costs bounded audit volume:
            // one by one up to the per-second budget, then counted.
            let written = if self.caller.is_none() {
                app.audit
                    .append_unauthenticated(rec, err.kind.reason(), self.client_ip)
                    .await
            } else {
                app.audit.append(rec, false).await
            };
            if written.is_err() {
                app.metrics.audit_failures.inc();
                GatewayError::new(Reject::AuditUnavailable)
            } else {
                err
            }
        };
        self.ended = Some((err.kind, err.detail.clone()));
        rescue(&err, Some(&self.request_id))
    }

    /// A refusal answered before the request was handled (framing).
    pub fn refused_unrecorded(&mut self, err: &GatewayError) -> Response<Full<Bytes>> {
        self.ended = Some((err.kind, err.detail.clone()));
        rescue(err, Some(&self.request_id))
    }

    /// An answer from Batch (or the dry run) for the caller.
    pub fn answer(&self, mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
        if let Ok(v) = HeaderValue::from_str(&self.request_id) {
            resp.headers_mut().insert(names::X_REQUEST_ID, v);
        }
        resp
    }

    /// The request's metrics, from what it ended with.
    pub fn finish(
        &self,
        app: &App,
        started: Instant,
        resp: Response<Full<Bytes>>,
    ) -> Response<Full<Bytes>> {
        let ended = self.ended.as_ref().map(|(k, d)| (*k, d.as_deref()));
        let reason = ended.map_or("ok", |(k, _)| k.reason());
        app.metrics
            .requests
            .get_or_create(&RequestLabels {
                action: self.action.unwrap_or("none"),
                decision: if self.attempt_on_disk {
                    "allow"
                } else {
                    "deny"
                },
                reason,
                status_class: status_class(resp.status().as_u16()),
            })
            .inc();
        app.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        if let Some(d) = self.upstream_latency {
            app.metrics.upstream_duration.observe(d.as_secs_f64());
        }
        if let Some((kind, detail)) = ended {
            if let Some(kind) = replay_rejection(kind, detail) {
                let labels = KindLabels { kind };
                app.metrics.replay_rejections.get_or_create(&labels).inc();
            }
            if let Some(kind) = secret_failure(kind, detail) {
                let labels = KindLabels { kind };
                app.metrics.secret_failures.get_or_create(&labels).inc();
            }
        }
        resp
    }
}

/// The call happened and its attempt is on disk: a failed outcome write
/// does not change the caller's answer, but turns the gateway not-ready.
async fn write_outcome(app: &App, outcome: Record) {
    if app.audit.append(outcome, false).await.is_err() {
        app.metrics.audit_failures.inc();
        tracing::error!(
            "outcome record could not be written; refusing new requests until the audit file is writable"
        );
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn bounded(s: &str) -> &str {
    crate::common::bounded(s, RECORDED_CHARS)
}

/// The caller's team claim as recorded: a string for one team, else an
/// array, every name bounded.
fn recorded_teams(teams: &[String]) -> Value {
    if let [one] = teams {
        return Value::String(bounded(one).to_string());
    }
    let mut out: Vec<Value> = teams
        .iter()
        .take(RECORDED_TEAMS)
        .map(|t| Value::String(bounded(t).to_string()))
        .collect();
    if teams.len() > RECORDED_TEAMS {
        out.push(Value::String(format!(
            "(+{} more)",
            teams.len() - RECORDED_TEAMS
        )));
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_paths_keep_at_most_512_characters() {
        assert_eq!(bounded("/2.8/campaigns/delete"), "/2.8/campaigns/delete");
        let ascii = "a".repeat(600);
        assert_eq!(bounded(&ascii), &ascii[..512]);
        // 300 two-byte characters: 600 bytes, under the limit in characters.
        let wide = "é".repeat(300);
        assert_eq!(bounded(&wide), wide);
        let wider = "é".repeat(513);
        assert_eq!(bounded(&wider).chars().count(), 512);
        assert_eq!(bounded(&wider), "é".repeat(512));
    }
}
