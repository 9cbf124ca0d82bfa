//! The life of a request, in order:
//!
//! framing → audit available? → 1 authenticate (from the headers) →
//! load shedding → read body (bounded) → 2 route → 3 authorize →
//! 4 validate → 5 binding →
//! 6 secrets → 7 audit attempt (fsync) → 8 forward (or dry run) →
//! 9 audit outcome → answer.
//!
//! The first failure answers; a failure before step 7 writes one `denied`
//! record and nothing is sent upstream. [`pipeline`] reads top to bottom;
//! each step lives in its own module.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Full};
use secrecy::ExposeSecret;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::audit::Unverified;
use crate::audit::{Caller, Decision, Phase, Record, UpstreamOutcome};
use crate::authn::{AuthFailure, Binding};
use crate::common::names;
use crate::error::{GatewayError, Reject, rescue};
use crate::forward::ForwardError;
use crate::json::{JsonError, parse_object};
use crate::metrics::{KindLabels, RequestLabels, status_class};
use crate::policy::{self, Forbidden};
use crate::replay::ReplayError;

/// Who is on the other end of the connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The mTLS client certificate's subject, when there is one.
    pub client_cert: Option<Arc<str>>,
}

/// Everything the audit records of one request share.
#[derive(Debug, Default)]
struct Trace {
    request_id: Arc<str>,
    caller_request_id: Option<Arc<str>>,
    client_addr: Arc<str>,
    /// The peer's address without its port: what summaries count by.
    client_ip: Option<std::net::IpAddr>,
    method: Arc<str>,
    path: Arc<str>,
    action: Option<&'static str>,
    project: Option<Arc<str>>,
    campaign_id: Option<Arc<str>>,
    caller: Option<Arc<Caller>>,
    unverified: Option<Unverified>,
    key_fp: Option<Arc<str>>,
    client_cert: Option<Arc<str>>,
    dry_run: bool,
    /// For metrics: set once the request was forwarded (or dry-run).
    allowed: bool,
}

impl Trace {
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
}

/// Serves one data-plane request. Never panics, always answers.
pub async fn handle<B>(app: Arc<App>, req: Request<B>, peer: Peer) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    let started = Instant::now();
    let request_id = uuid::Uuid::new_v4().to_string();
    if let Some(err) = framing_error(req.headers()) {
        app.metrics.connection_error("bad_framing");
        return finish(
            &app,
            started,
            rescue(&err, Some(&request_id)),
            &Trace::default(),
        );
    }
    let (parts, body) = req.into_parts();
    let trace = Trace {
        request_id: request_id.into(),
        caller_request_id: caller_request_id(&parts.headers).map(Into::into),
        client_addr: peer.addr.to_string().into(),
        client_ip: Some(peer.addr.ip()),
        client_cert: peer.client_cert,
        // Methods are short; an extension method is any token hyper took.
        method: crate::common::bounded(parts.method.as_str(), 32).into(),
        // The path only: a query string may carry a token and is never recorded.
        path: bounded(parts.uri.path()).into(),
        ..Trace::default()
    };
    let rid = trace.request_id.clone();
    // The request runs to its end even if the caller goes away: once an
    // attempt is recorded, its outcome must be recorded too.
    // Every log line of this request carries its id (the JSON log format
    // prints the span's fields).
    let span = tracing::info_span!("request", request_id = %rid);
    // Boxed first, then instrumented: the state machine (kilobytes) is
    // copied once, into the box; the span wrapper and the task cell then
    // hold a pointer.
    let task =
        tracing::Instrument::instrument(Box::pin(serve(app.clone(), trace, parts, body)), span);
    let (resp, trace) = match tokio::spawn(task).await {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(error = %e, "request task failed");
            let err = GatewayError::new(Reject::Internal);
            (rescue(&err, Some(&rid)), Trace::default())
        }
    };
    finish(&app, started, resp, &trace)
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a App);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
    }
}

async fn serve<B>(
    app: Arc<App>,
    mut trace: Trace,
    parts: Parts,
    body: B,
) -> (Response<Full<Bytes>>, Trace)
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let rid = trace.request_id.clone();
    // While nothing can be recorded, nothing is decided.
    if !app.audit.recover().await {
        let err = GatewayError::new(Reject::AuditUnavailable);
        return (rescue(&err, Some(&rid)), trace);
    }
    let state = app.state();
    // The token is checked from the headers, before the body is read: a
    // caller without a valid token is answered without waiting for its
    // body and never holds an in-flight slot. A body declared larger than
    // allowed is refused first, whatever the token.
    let mut body_unread = !body.is_end_stream();
    let result = if declared_over_max(&app, &parts.headers) {
        // Read (a bounded part of it) so that the caller sees the 413.
        Err(match read_body(&app, &parts.headers, body).await {
            Err(e) => e,
            Ok(_) => GatewayError::new(Reject::BodyTooLarge),
        })
    } else {
        match authenticate(&app, &state, &mut trace, &parts).await {
            Err(e) => Err(e),
            Ok(principal) => {
                let slot = app.inflight.clone().try_acquire_owned();
                app.metrics.in_flight.inc();
                let _counted = InFlight(&app);
                match slot {
                    Err(_) => Err(GatewayError::new(Reject::Overloaded)),
                    Ok(_slot) => {
                        let read = read_body(&app, &parts.headers, body).await;
                        body_unread = read.is_err();
                        match read {
                            Ok(bytes) => {
                                pipeline(&app, &state, &mut trace, &parts, &principal, bytes).await
                            }
                            Err(e) => Err(e),
                        }
                    }
                }
            }
        }
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(err) => {
            let mut rec = trace.record(Phase::Denied);
            rec.decision = Some(Decision::Deny);
            rec.reason = Some(err.kind.reason().into());
            rec.detail = err.detail.clone();
            // Without a verified token a caller costs bounded audit volume:
            // one by one up to the per-second budget, then counted.
            let written = if trace.caller.is_none() {
                app.audit
                    .append_unauthenticated(rec, err.kind.reason(), trace.client_ip)
                    .await
            } else {
                app.audit.append(rec, false).await
            };
            if written.is_err() {
                app.metrics.audit_failures.inc();
                let unavailable = GatewayError::new(Reject::AuditUnavailable);
                return (rescue(&unavailable, Some(&rid)), trace);
            }
            let mut resp = rescue(&err, Some(&rid));
            if body_unread && parts.version < http::Version::HTTP_2 {
                // The rest of the body is not waited for: the connection
                // cannot carry another request.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    };
    (resp, trace)
}

/// Step 1, from the headers alone: the caller's token. What the token
/// claimed goes into the trace either way; a verified caller is recorded
/// as such.
async fn authenticate(
    app: &App,
    state: &crate::app::State,
    trace: &mut Trace,
    parts: &Parts,
) -> Result<Arc<crate::authn::Principal>, GatewayError> {
    let (principal, token) = state
        .authn
        .authenticate(&parts.headers)
        .await
        .map_err(|e| {
            trace.unverified = e.unverified.clone();
            let kind = match e.kind {
                AuthFailure::Missing => Reject::TokenMissing,
                AuthFailure::Invalid => Reject::TokenInvalid,
                AuthFailure::Expired => Reject::TokenExpired,
            };
            GatewayError::new(kind).detail(e.detail)
        })?;
    // A reused token's caller (fingerprint included) was built by the
    // first request that used it; the HMAC key lives as long as the process.
    let caller = principal.recorded.get_or_init(|| {
        Arc::new(Caller {
            iss: bounded(&principal.iss).to_string(),
            sub: bounded(&principal.sub).to_string(),
            team: recorded_teams(&principal.teams),
            jti: principal.jti.as_deref().map(|j| bounded(j).to_string()),
            token_fp: app.hmac.fingerprint(token.as_bytes()),
            single_use: None,
            exp: None,
        })
    });
    trace.caller = Some(caller.clone());
    drop(token);
    Ok(principal)
}

/// The body's declared length is over `max_body_bytes`: refused before
/// the token is looked at.
fn declared_over_max(app: &App, headers: &HeaderMap) -> bool {
    declared_length(headers).is_some_and(|n| n > app.server().max_body_bytes as u64)
}

/// The body's length as `Content-Length` declares it.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Steps 2-9 (step 1 ran in `serve`, from the headers). `Err` is a denial before anything was sent (the caller
/// writes its `denied` record); every later outcome is answered here.
async fn pipeline(
    app: &App,
    state: &crate::app::State,
    trace: &mut Trace,
    parts: &Parts,
    principal: &Arc<crate::authn::Principal>,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or_else(|| parts.uri.path());
    // An absolute-form HTTP/1.1 target (`POST https://host/...`) never
    // routes; HTTP/2 always carries scheme and authority apart from :path.
    let absolute_form = parts.uri.scheme().is_some() && parts.version != http::Version::HTTP_2;
    let target = if absolute_form { "" } else { target };

    // 1. Authenticated from the headers already (see `serve`).
    let principal = principal.as_ref();

    // 2. Route.
    let action = crate::route::route(&parts.method, target).ok_or(Reject::RouteNotFound)?;
    trace.action = Some(action.name());

    // 3. Authorize.
    let mut project_headers = Vec::new();
    for v in parts.headers.get_all(names::X_BATCH_PROJECT) {
        project_headers.push(v.to_str().map_err(|_| {
            GatewayError::new(Reject::Forbidden).detail(Forbidden::UnknownProject.detail())
        })?);
    }
    let permit = policy::authorize(&state.config, principal, &project_headers, action).map_err(
        |f| match f {
            Forbidden::DuplicateProjectHeader => GatewayError::new(Reject::MalformedParameter)
                .detail(f.detail())
                .message("send X-Batch-Project once"),
            _ => GatewayError::new(Reject::Forbidden)
                .detail(f.detail())
                .message(f.to_string()),
        },
    )?;
    trace.project = Some(permit.project.as_str().into());

    // 4. Validate the body; what goes upstream is re-serialized from it.
    let campaign_id = validate_body(&body)?;
    trace.campaign_id = Some(campaign_id.as_str().into());
    let canonical = canonical_body(&campaign_id);

    // 5. Request binding, then single use.
    let b = &principal.binding;
    if permit.require_bound_token
        && (b.htm.is_none() || b.htu.is_none() || b.bh.is_none() || principal.jti.is_none())
    {
        return Err(GatewayError::new(Reject::TokenBindingMismatch).detail("bound_token_required"));
    }
    check_binding(b, parts.method.as_str(), target, &body)?;
    let mut reservation = if b.is_bound() || permit.single_use_tokens {
        let jti = principal.jti.as_deref().ok_or_else(|| {
            GatewayError::new(Reject::TokenInvalid)
                .detail("jti_required")
                .message("a single-use token must carry a jti claim")
        })?;
        let leeway = i64::try_from(state.config.auth.leeway_s).unwrap_or(i64::MAX);
        let reserved =
            app.replay
                .reserve(&principal.iss, jti, principal.exp.saturating_add(leeway));
        if let Err(e) = reserved {
            let kind = match e {
                ReplayError::Replayed => "replayed",
                ReplayError::Full => "replay_memory_full",
            };
            app.metrics
                .replay_rejections
                .get_or_create(&KindLabels { kind })
                .inc();
            return Err(match e {
                ReplayError::Replayed => GatewayError::new(Reject::TokenReplayed).detail(kind),
                ReplayError::Full => GatewayError::new(Reject::Overloaded).detail(kind),
            });
        }
        if let Some(c) = trace.caller.as_mut() {
            let c = Arc::make_mut(c);
            c.single_use = Some(true);
            // What a restart needs to hold the jti exactly as long.
            c.exp = Some(principal.exp);
        }
        Some(Reserved {
            app,
            iss: principal.iss.clone(),
            jti: jti.to_string(),
            spent: false,
        })
    } else {
        None
    };

    // Then cool-downs after Batch's 429/503, rate limits and quotas.
    app.limits.cooldown(&permit.project).map_err(limited)?;
    let mut quota = app
        .limits
        .check(&permit.limits, crate::common::now_s())
        .map_err(limited)?;
    app.limits
        .pace(&permit.project, permit.upstream_rate_per_s)
        .await
        .map_err(limited)?;

    // 6. Secrets.
    let (secret, freshness) = app.secrets.get(&permit.secret_path).await.map_err(|e| {
        app.metrics
            .secret_failures
            .get_or_create(&crate::metrics::KindLabels {
                kind: match e {
                    crate::secrets::SourceError::NotFound => "missing",
                    crate::secrets::SourceError::Invalid(_) => "invalid",
                    crate::secrets::SourceError::Unavailable(_) => "unavailable",
                },
            })
            .inc();
        GatewayError::new(Reject::SecretsUnavailable).detail(match e {
            crate::secrets::SourceError::NotFound => "secret_missing",
            crate::secrets::SourceError::Invalid(_) => "secret_invalid",
            crate::secrets::SourceError::Unavailable(_) => "backend_unavailable",
        })
    })?;
    trace.key_fp = Some(
        secret
            .key_fp
            .get_or_init(|| {
                app.hmac
                    .fingerprint(secret.rest_key.expose_secret().as_bytes())
                    .into()
            })
            .clone(),
    );
    trace.dry_run = state.config.upstream.dry_run || permit.dry_run;

    // 7. The attempt is on disk before anything leaves.
    let mut attempt = trace.record(Phase::Attempt);
    attempt.decision = Some(Decision::Allow);
    attempt.reason = Some("ok".into());
    attempt.secret_source = Some(freshness.as_str());
    attempt.secret_version = secret.version;
    let writing = Instant::now();
    let written = app.audit.append(attempt, true).await;
    app.metrics
        .audit_write_duration
        .observe(writing.elapsed().as_secs_f64());
    if written.is_err() {
        app.metrics.audit_failures.inc();
        trace.caller = None; // no record: metrics only
        return Ok(rescue(
            &GatewayError::new(Reject::AuditUnavailable),
            Some(&trace.request_id),
        ));
    }
    trace.allowed = true;
    // The attempt is durable: the jti and the quota unit are spent,
    // whatever happens next.
    if let Some(r) = reservation.as_mut() {
        r.spent = true;
    }
    quota.spent = true;

    // 8. Forward (or, in dry run, answer as Batch would).
    let mut outcome = trace.record(Phase::Outcome);
    outcome.decision = Some(Decision::Allow);
    if trace.dry_run {
        outcome.reason = Some("ok".into());
        record_outcome(app, outcome).await;
        let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(names::X_GATEWAY_DRY_RUN, HeaderValue::from_static("true"));
        return Ok(with_request_id(resp, &trace.request_id));
    }
    // Boxed: the exchange's state machine is the largest of the pipeline's
    // (~6 KB); inline, it made every request's future that large, and
    // that future is copied as it is set up.
    let result = Box::pin(state.upstream.forward(
        &permit,
        &secret,
        target,
        canonical,
        &trace.request_id,
        &parts.headers,
    ))
    .await;

    // 9. The outcome is recorded before the caller hears it.
    match result {
        Ok(answer) => {
            app.metrics
                .upstream_duration
                .observe(answer.latency.as_secs_f64());
            let retry_after = answer
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok());
            if let Some(d) =
                app.limits
                    .start_cooldown(&permit.project, answer.status.as_u16(), retry_after)
            {
                app.metrics
                    .cooldowns
                    .get_or_create(&crate::metrics::ProjectLabels {
                        project: permit.project.clone(),
                    })
                    .inc();
                tracing::warn!(project = %permit.project, status = answer.status.as_u16(), cooldown_s = d.as_secs(), "Batch asked to back off; this project cools down");
            }
            outcome.reason = Some("ok".into());
            outcome.upstream = Some(UpstreamOutcome {
                status: Some(answer.status.as_u16()),
                error_code: answer.error_code.clone(),
                latency_ms: millis(answer.latency),
            });
            record_outcome(app, outcome).await;
            let mut resp = Response::new(Full::new(answer.body));
            *resp.status_mut() = answer.status;
            *resp.headers_mut() = answer.headers;
            Ok(with_request_id(resp, &trace.request_id))
        }
        Err(e) => {
            app.metrics
                .upstream_duration
                .observe(e.latency().as_secs_f64());
            let (kind, detail) = match &e {
                ForwardError::Timeout { .. } => (Reject::UpstreamTimeout, "timeout"),
                ForwardError::Unreachable { detail, .. } => (Reject::UpstreamUnreachable, *detail),
            };
            outcome.reason = Some(kind.reason().into());
            outcome.detail = Some(detail.into());
            outcome.upstream = Some(UpstreamOutcome {
                status: None,
                error_code: None,
                latency_ms: millis(e.latency()),
            });
            record_outcome(app, outcome).await;
            Ok(rescue(
                &GatewayError::new(kind).detail(detail),
                Some(&trace.request_id),
            ))
        }
    }
}

fn limited(l: crate::limits::Limited) -> GatewayError {
    use crate::limits::Limited;
    match l {
        Limited::Cooldown {
            retry_after_s,
            unavailable,
        } => GatewayError::new(if unavailable {
            Reject::UpstreamCooldownUnavailable
        } else {
            Reject::UpstreamCooldown
        })
        .detail(if unavailable {
            "after_503"
        } else {
            "after_429"
        })
        .retry_after(retry_after_s),
        Limited::RateLimited {
            retry_after_s,
            detail,
        } => GatewayError::new(Reject::RateLimited)
            .detail(detail)
            .retry_after(retry_after_s),
        Limited::QuotaExceeded {
            retry_after_s,
            detail,
        } => GatewayError::new(Reject::QuotaExceeded)
            .detail(detail)
            .retry_after(retry_after_s),
    }
}

/// A single-use `jti` reserved for this request; given back on drop unless
/// the request got as far as its durable attempt record.
struct Reserved<'a> {
    app: &'a App,
    iss: String,
    jti: String,
    spent: bool,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if !self.spent {
            self.app.replay.release(&self.iss, &self.jti);
        }
    }
}

/// The call happened and its attempt is on disk: a failed outcome write
/// does not change the caller's answer, but turns the gateway not-ready.
async fn record_outcome(app: &App, outcome: Record) {
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

fn with_request_id(mut resp: Response<Full<Bytes>>, rid: &str) -> Response<Full<Bytes>> {
    if let Ok(v) = HeaderValue::from_str(rid) {
        resp.headers_mut().insert(names::X_REQUEST_ID, v);
    }
    resp
}

fn finish(
    app: &App,
    started: Instant,
    resp: Response<Full<Bytes>>,
    trace: &Trace,
) -> Response<Full<Bytes>> {
    let reason = resp
        .headers()
        .get(names::X_GATEWAY_ERROR)
        .and_then(|v| reason_label(v.as_bytes()))
        .unwrap_or("ok");
    app.metrics
        .requests
        .get_or_create(&RequestLabels {
            action: trace.action.unwrap_or("none"),
            decision: if trace.allowed { "allow" } else { "deny" },
            reason,
            status_class: status_class(resp.status().as_u16()),
        })
        .inc();
    app.metrics
        .request_duration
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Metric labels come from a closed set, never from a header's bytes.
fn reason_label(v: &[u8]) -> Option<&'static str> {
    Reject::ALL
        .iter()
        .copied()
        .map(Reject::reason)
        .find(|r| r.as_bytes() == v)
}

/// Ambiguous message framing is refused before anything else (request
/// smuggling): `Content-Length` with `Transfer-Encoding`, a
/// `Transfer-Encoding` other than exactly `chunked`, or disagreeing
/// `Content-Length` values.
fn framing_error(h: &HeaderMap) -> Option<GatewayError> {
    let te: Vec<_> = h.get_all(header::TRANSFER_ENCODING).iter().collect();
    let cl: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
    let bad = || Some(GatewayError::new(Reject::BadFraming));
    if (!te.is_empty() && !cl.is_empty())
        || h.contains_key(crate::framing::AMBIGUOUS_HEADER)
        || h.contains_key(crate::framing::BARE_LINE_END_HEADER)
    {
        return bad();
    }
    if te.len() > 1 || te.first().is_some_and(|v| v.as_bytes() != b"chunked") {
        return bad();
    }
    if cl.windows(2).any(|w| w[0] != w[1]) {
        return bad();
    }
    None
}

/// Reads the whole body, at most `max_body_bytes`, within
/// `body_read_timeout_ms`. An oversized body is drained a little so the
/// caller can read the 413 before the connection closes.
async fn read_body<B>(app: &App, headers: &HeaderMap, body: B) -> Result<Bytes, GatewayError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let max = app.server().max_body_bytes;
    let declared = declared_length(headers);
    let too_large = || {
        GatewayError::new(Reject::BodyTooLarge)
            .message(format!("the body is larger than {max} bytes"))
    };
    let drain_cap = (max as u64).saturating_mul(4).max(1 << 20);
    if declared.is_some_and(|n| n > drain_cap) {
        return Err(too_large());
    }
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut buf = BytesMut::new();
        let mut seen: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                tracing::debug!(error = %e, "request body read failed");
                GatewayError::new(Reject::BadFraming).detail("body_read")
            })?;
            if let Ok(data) = frame.into_data() {
                seen += data.len() as u64;
                if seen <= max as u64 {
                    buf.extend_from_slice(&data);
                } else if seen > drain_cap {
                    break;
                }
            }
        }
        if seen > max as u64 {
            Err(too_large())
        } else {
            Ok(buf.freeze())
        }
    };
    match tokio::time::timeout(app.server().body_read_timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(GatewayError::new(Reject::BodyTimeout)),
    }
}

/// Step 4: `{"id": "orchestration_<32 of 0-9a-z>"}` and nothing else.
pub fn validate_body(body: &[u8]) -> Result<String, GatewayError> {
    let members = parse_object(body).map_err(|e| {
        GatewayError::new(Reject::MalformedJson).detail(match e {
            JsonError::NotJson => "not_json",
            JsonError::NotObject => "not_object",
            JsonError::DuplicateMember => "duplicate_member",
        })
    })?;
    let id = members.get("id").ok_or(Reject::MissingParameter)?;
    if members.0.len() != 1 {
        return Err(GatewayError::new(Reject::MalformedParameter)
            .detail("extra_member")
            .message("the body must hold only the 'id' member"));
    }
    match id {
        Value::String(s) if is_campaign_id(s) => Ok(s.clone()),
        _ => Err(GatewayError::new(Reject::MalformedParameter).detail("id_format")),
    }
}

/// What goes upstream: `{"id":"<campaign id>"}`. A valid campaign id is
/// `orchestration_` and lowercase alphanumerics, so nothing in it needs
/// escaping and it is written out directly (the test below checks that
/// against serde_json's own output); anything else goes through
/// serde_json.
fn canonical_body(campaign_id: &str) -> Bytes {
    if !is_campaign_id(campaign_id) {
        return Bytes::from(serde_json::json!({ "id": campaign_id }).to_string());
    }
    let mut out = String::with_capacity(campaign_id.len() + 10);
    out.push_str("{\"id\":\"");
    out.push_str(campaign_id);
    out.push_str("\"}");
    Bytes::from(out)
}

pub fn is_campaign_id(s: &str) -> bool {
    s.strip_prefix("orchestration_").is_some_and(|rest| {
        rest.len() == 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    })
}

/// Step 5: every binding claim the token carries must match the request.
fn check_binding(b: &Binding, method: &str, target: &str, body: &[u8]) -> Result<(), GatewayError> {
    let mismatch = |d: &'static str| GatewayError::new(Reject::TokenBindingMismatch).detail(d);
    if b.htm.as_deref().is_some_and(|m| m != method) {
        return Err(mismatch("htm"));
    }
    if b.htu.as_deref().is_some_and(|u| u != target) {
        return Err(mismatch("htu"));
    }
    if let Some(bh) = &b.bh {
        let want = URL_SAFE_NO_PAD.encode(Sha256::digest(body));
        if bh != &want {
            return Err(mismatch("bh"));
        }
    }
    Ok(())
}

/// The caller's own `X-Request-Id`, kept when it is 1-128 characters of
/// `A-Za-z0-9._-` (anything else is dropped).
fn caller_request_id(h: &HeaderMap) -> Option<String> {
    let mut values = h.get_all(names::X_REQUEST_ID).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let b = v.as_bytes();
    let ok = (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
    ok.then(|| String::from_utf8_lossy(b).into_owned())
}

/// Request targets and verified claims are recorded, bounded to 512
/// characters (they are caller-chosen bytes).
fn bounded(s: &str) -> &str {
    crate::common::bounded(s, 512)
}

/// Most teams a record lists; a token naming more is recorded with the
/// first ones and a count of the rest.
const RECORDED_TEAMS: usize = 32;

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

    const ID: &str = "orchestration_0664hyh918hr1gnzka9py5t62nrc0e1f";

    fn kind(body: &str) -> Result<String, Reject> {
        validate_body(body.as_bytes()).map_err(|e| e.kind)
    }

    #[test]
    fn the_canonical_body_is_what_serde_json_writes() {
        for id in [ID, "orchestration_00000000000000000000000000000000"] {
            let want = serde_json::json!({ "id": id }).to_string();
            assert_eq!(canonical_body(id), want.as_bytes());
            assert_eq!(validate_body(&canonical_body(id)).ok().as_deref(), Some(id));
        }
        // Never reached from a request (validate_body refused it), and
        // still escaped.
        let odd = "a\"b\\c";
        let want = serde_json::json!({ "id": odd }).to_string();
        assert_eq!(canonical_body(odd), want.as_bytes());
    }

    #[test]
    fn body_rules_map_to_batch_error_codes() {
        assert_eq!(kind(&format!("{{\"id\":\"{ID}\"}}")), Ok(ID.to_string()));
        assert_eq!(
            kind(&format!("{{\"id\":\"\\u006f{}\"}}", &ID[1..])),
            Ok(ID.to_string())
        );
        assert_eq!(kind(""), Err(Reject::MalformedJson));
        assert_eq!(kind("[]"), Err(Reject::MalformedJson));
        assert_eq!(
            kind(&format!("{{\"id\":\"{ID}\",\"id\":\"{ID}\"}}")),
            Err(Reject::MalformedJson)
        );
        assert_eq!(kind("{}"), Err(Reject::MissingParameter));
        assert_eq!(kind("{\"other\":1}"), Err(Reject::MissingParameter));
        assert_eq!(
            kind(&format!("{{\"id\":\"{ID}\",\"force\":true}}")),
            Err(Reject::MalformedParameter)
        );
        for bad in [
            &ID.to_uppercase(),
            &format!("{ID}\n"),
            &ID[..ID.len() - 1],
            "orchestration_",
        ] {
            let body = serde_json::json!({ "id": bad }).to_string();
            assert_eq!(kind(&body), Err(Reject::MalformedParameter), "{bad:?}");
        }
        assert_eq!(kind("{\"id\":12}"), Err(Reject::MalformedParameter));
    }

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

    #[test]
    fn framing_refuses_ambiguity_only() {
        let mut h = HeaderMap::new();
        assert!(framing_error(&h).is_none());
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(framing_error(&h).is_none());
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        assert!(framing_error(&h).is_some());
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(framing_error(&h).is_none());
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
        assert!(framing_error(&h).is_some());
        let mut h = HeaderMap::new();
        h.insert(
            crate::framing::AMBIGUOUS_HEADER,
            HeaderValue::from_static("5"),
        );
        assert!(framing_error(&h).is_some());
    }

    #[test]
    fn a_callers_request_id_is_kept_only_when_well_formed() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-1.2_3"));
        assert_eq!(caller_request_id(&h).as_deref(), Some("abc-1.2_3"));
        for bad in ["a b", "a/b", "x\u{7f}"] {
            if let Ok(v) = HeaderValue::from_str(bad) {
                h.insert("x-request-id", v);
                assert_eq!(caller_request_id(&h), None, "{bad:?}");
            }
        }
        h.insert(
            "x-request-id",
            HeaderValue::from_str(&"a".repeat(129)).unwrap(),
        );
        assert_eq!(caller_request_id(&h), None);
    }

    #[test]
    fn every_present_binding_claim_must_match() {
        let body = br#"{"id":"x"}"#;
        let bh = URL_SAFE_NO_PAD.encode(Sha256::digest(body));
        let full = Binding {
            htm: Some("POST".into()),
            htu: Some("/2.8/campaigns/delete".into()),
            bh: Some(bh.clone()),
        };
        assert!(check_binding(&full, "POST", "/2.8/campaigns/delete", body).is_ok());
        assert!(check_binding(&Binding::default(), "POST", "/x", body).is_ok());
        let wrong = |b: Binding| {
            check_binding(&b, "POST", "/2.8/campaigns/delete", body).map_err(|e| e.detail)
        };
        assert!(
            wrong(Binding {
                htm: Some("GET".into()),
                ..full.clone()
            })
            .is_err()
        );
        assert!(
            wrong(Binding {
                htu: Some("/2.9/campaigns/delete".into()),
                ..full.clone()
            })
            .is_err()
        );
        assert!(
            wrong(Binding {
                bh: Some(bh.replace('A', "B") + "x"),
                ..full.clone()
            })
            .is_err()
        );
    }
}
