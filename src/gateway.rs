//! The life of a request, in order:
//!
//! framing → audit available? → 1 authenticate (from the headers) →
//! load shedding → read body (bounded) → 2 route → 3 authorize →
//! 4 validate → 5 binding, single use, limits →
//! 6 secrets → 7 audit attempt (fsync) → 8 forward (or dry run) →
//! 9 audit outcome → answer.
//!
//! [`pipeline`] is one line per step; each step's error converts into a
//! [`GatewayError`] (`error.rs`), and the first one answers. The request's
//! record context ([`record::RequestRecord`]) writes the `denied` record —
//! or, once the attempt is on disk, the `outcome` — renders the refusal and
//! counts the request. What is checked on the request itself (framing,
//! body, binding) is in [`request`].

pub mod record;
pub mod request;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;

use crate::app::{App, State};
use crate::authn::Principal;
use crate::common::names;
use crate::error::{GatewayError, Reject};
use crate::policy::{self, Permit};
use crate::replay::Reservation;
use record::RequestRecord;
pub use request::Peer;

/// Serves one data-plane request. Never panics, always answers.
pub async fn handle<B>(app: Arc<App>, req: Request<B>, peer: Peer) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let mut rec = RequestRecord::new(uuid::Uuid::new_v4().to_string(), &parts, peer);
    if let Some(err) = request::framing_error(&parts.headers) {
        // Protocol level: counted, not audited.
        app.metrics.connection_error("bad_framing");
        let resp = rec.refused_unrecorded(&err);
        return rec.finish(&app, started, resp);
    }
    let rid = rec.request_id.clone();
    // The request runs to its end even if the caller goes away: once an
    // attempt is recorded, its outcome must be recorded too. Every log
    // line of this request carries its id.
    let span = tracing::info_span!("request", request_id = %rid);
    // Boxed first, then instrumented: the state machine (kilobytes) is
    // copied once, into the box; the span wrapper and the task cell then
    // hold a pointer.
    let task =
        tracing::Instrument::instrument(Box::pin(serve(app.clone(), rec, parts, body)), span);
    match tokio::spawn(task).await {
        Ok((resp, rec)) => rec.finish(&app, started, resp),
        Err(e) => {
            tracing::error!(error = %e, "request task failed");
            let mut rec = RequestRecord::default();
            rec.request_id = rid;
            let resp = rec.refused_unrecorded(&GatewayError::new(Reject::Internal));
            rec.finish(&app, started, resp)
        }
    }
}

/// Counts a request in flight for as long as it lives.
struct InFlight<'a>(&'a App);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
    }
}

/// The request from its headers to its answer: the token from the headers
/// first (a caller without one is answered at once and never holds an
/// in-flight slot), then the slot, the body, the pipeline.
async fn serve<B>(
    app: Arc<App>,
    mut rec: RequestRecord,
    parts: Parts,
    body: B,
) -> (Response<Full<Bytes>>, RequestRecord)
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut body_unread = !body.is_end_stream();
    let result = async {
        // While nothing can be recorded, nothing is decided.
        if !app.audit.recover().await {
            return Err(GatewayError::new(Reject::AuditUnavailable));
        }
        let state = app.state();
        let server = app.server();
        let (max, limit) = (server.max_body_bytes, server.body_read_timeout);
        // A body declared larger than allowed is refused first, whatever
        // the token; a bounded part is read so the caller sees the 413.
        if request::declared_over(max, &parts.headers) {
            request::read_body(max, limit, &parts.headers, body).await?;
            return Err(GatewayError::new(Reject::BodyTooLarge));
        }
        let principal = authenticate(&app, &state, &mut rec, &parts).await?; // 1
        app.metrics.in_flight.inc();
        let _counted = InFlight(&app);
        let _slot = app
            .inflight
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::new(Reject::Overloaded))?;
        let body = request::read_body(max, limit, &parts.headers, body).await?;
        body_unread = false;
        pipeline(&app, &state, &mut rec, &parts, &principal, body).await
    }
    .await;
    let resp = match result {
        Ok(resp) => resp,
        Err(err) => {
            let mut resp = rec.refuse(&app, err).await;
            if body_unread && parts.version < http::Version::HTTP_2 {
                // The rest of the body is not waited for: the connection
                // cannot carry another request.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    };
    (resp, rec)
}

/// Step 1, from the headers alone: the caller's token. What a refused
/// token claimed goes into the record; a verified caller is recorded as
/// such.
async fn authenticate(
    app: &App,
    state: &State,
    rec: &mut RequestRecord,
    parts: &Parts,
) -> Result<Arc<Principal>, GatewayError> {
    let (principal, token) = state
        .authn
        .authenticate(&parts.headers)
        .await
        .inspect_err(|e| rec.unverified = e.unverified.clone())?;
    rec.verified(app, &principal, &token);
    Ok(principal)
}

/// Steps 2-9, one line each (step 1 ran in [`serve`], from the headers).
/// `Err` is the first refusal; the record context writes it down.
async fn pipeline(
    app: &App,
    state: &State,
    rec: &mut RequestRecord,
    parts: &Parts,
    principal: &Principal,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, GatewayError> {
    let target = request::target(parts);
    let action = crate::route::route(&parts.method, target).ok_or(Reject::RouteNotFound)?; // 2
    rec.action = Some(action.name());
    let projects = request::project_headers(parts)?;
    let permit = policy::authorize(&state.config, principal, &projects, action, target)?; // 3
    rec.project = Some(permit.project().into());
    let campaign_id = request::validate_body(&body)?; // 4
    rec.campaign_id = Some(campaign_id.as_str().into());
    let method = parts.method.as_str();
    request::check_bound(
        principal,
        permit.require_bound_token(),
        method,
        target,
        &body,
    )?; // 5
    let reservation = single_use(app, state, rec, principal, &permit)?;
    let ask = crate::limits::Ask {
        project: permit.project(),
        grants: permit.limits(),
        pace_per_s: permit.upstream_rate_per_s(),
        jti: reservation
            .as_ref()
            .map(|(_, jti, until)| (principal.iss.as_str(), *jti, *until)),
        request_id: &rec.request_id,
    };
    let mut admission = app.limits.admit(&ask, crate::common::now_s()).await?;
    rec.limits = admission.decided_by;
    let (secret, freshness) = app.secrets.get(permit.secret_path()).await?; // 6
    rec.secret(app, &secret);
    rec.dry_run = state.config.upstream.dry_run || permit.dry_run();
    rec.attempt(app, freshness.as_str(), secret.version).await?; // 7
    // The attempt is durable: the jti and the quota unit are spent,
    // whatever happens next.
    if let Some((held, _, _)) = reservation {
        held.spend();
    }
    admission.spend();
    if rec.dry_run {
        rec.outcome(app, None).await; // 9, answered as Batch would
        return Ok(rec.answer(dry_run_answer()));
    }
    let canonical = request::canonical_body(&campaign_id);
    // Boxed: the exchange's state machine is the largest of the pipeline's
    // (~6 KB); inline, it made every request's future that large.
    let sent =
        (state.upstream).forward(&permit, &secret, canonical, &rec.request_id, &parts.headers);
    let answer = Box::pin(sent).await;
    rec.upstream_latency = Some(answer.as_ref().map_or_else(|e| e.latency(), |a| a.latency));
    let answer = answer?; // 8
    cool_down_when_asked(app, &permit, &answer).await;
    rec.outcome(app, Some(&answer)).await; // 9
    Ok(rec.answer(answer.into_response()))
}

/// Step 5, continued: a request-bound token, or a grant that asks for it,
/// makes the token single-use; its `jti` is reserved until the attempt is
/// on disk (then spent) or the request fails (then given back).
fn single_use<'a>(
    app: &'a App,
    state: &State,
    rec: &mut RequestRecord,
    principal: &'a Principal,
    permit: &Permit,
) -> Result<Option<(Reservation<'a>, &'a str, i64)>, GatewayError> {
    if !principal.binding.is_bound() && !permit.single_use_tokens() {
        return Ok(None);
    }
    let jti = principal.jti.as_deref().ok_or_else(|| {
        GatewayError::new(Reject::TokenInvalid)
            .detail("jti_required")
            .message("a single-use token must carry a jti claim")
    })?;
    let leeway = i64::try_from(state.config.auth.leeway_s).unwrap_or(i64::MAX);
    let until = principal.exp.saturating_add(leeway);
    let held = app.replay.hold(&principal.iss, jti, until)?;
    rec.single_use(principal.exp);
    Ok(Some((held, jti, until)))
}

/// Batch said 429 or 503: the project cools down (`limits`).
async fn cool_down_when_asked(app: &App, permit: &Permit, answer: &crate::forward::Answer) {
    let retry_after = answer
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok());
    let status = answer.status.as_u16();
    if let Some(d) = app
        .limits
        .cool_down(permit.project(), status, retry_after)
        .await
    {
        app.metrics
            .cooldowns
            .get_or_create(&crate::metrics::ProjectLabels {
                project: permit.project().to_string(),
            })
            .inc();
        tracing::warn!(project = %permit.project(), status, cooldown_s = d.as_secs(), "Batch asked to back off; this project cools down");
    }
}

/// The dry run's answer: what Batch answers a delete, marked.
fn dry_run_answer() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(names::X_GATEWAY_DRY_RUN, HeaderValue::from_static("true"));
    resp
}
