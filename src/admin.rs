//! The admin plane (plain HTTP, never behind JWT auth): `/healthz`,
//! `/readyz` (a JSON body naming every check, never a secret) and
//! `/metrics` (Prometheus text).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;

use crate::app::App;

pub async fn handle<B>(app: Arc<App>, req: Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(&app).await,
        "/metrics" => {
            let (over, bytes) = app.audit.budget_state();
            app.metrics.audit_over_budget.set(i64::from(over));
            app.metrics
                .audit_bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            let mut r = text(StatusCode::OK, &app.metrics.encode());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn readyz(app: &App) -> Response<Full<Bytes>> {
    let audit_ok = app.audit.recover().await;
    let state = app.state();
    let paths: Vec<(String, String)> = state
        .config
        .projects
        .iter()
        .map(|p| (p.alias.clone(), p.secret_path.clone()))
        .collect();
    let mut any_usable = false;
    for (_, path) in &paths {
        any_usable |= app.secrets.usable(path).await;
    }
    if !any_usable {
        // Nothing cached (a quiet gateway, or a failing backend): ask the
        // backend now, bounded, so only a backend that really fails turns
        // the pod not-ready.
        let refresh = async {
            for (_, path) in &paths {
                let _ = app.secrets.get(path).await;
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), refresh).await;
        for (_, path) in &paths {
            any_usable |= app.secrets.usable(path).await;
        }
    }
    let mut projects = BTreeMap::new();
    for (alias, path) in &paths {
        projects.insert(alias.clone(), app.secrets.state(path).await);
    }
    // One project's missing secret leaves the pod ready; a backend that
    // serves no project at all does not.
    let any_secret = paths.is_empty() || any_usable;
    // A stale or unavailable key set is reported, and leaves the pod ready:
    // other issuers' callers still work.
    let issuers: BTreeMap<_, _> = state.authn.key_set_states().into_iter().collect();
    let ready = audit_ok && any_secret;
    let mut body = json!({
        "ready": ready,
        "checks": {
            "config": "ok",
            "audit_file": if audit_ok { "ok" } else { "unwritable" },
            "secrets": projects,
            "secrets_backend": if any_secret { "ok" } else { "no_project_secret_available" },
            "issuers": issuers,
        }
    });
    // Why an issuer's keys are stale or unavailable (a failed fetch, a
    // discovery document naming another issuer): what the operator fixes.
    let problems: BTreeMap<_, _> = state.authn.key_set_problems().into_iter().collect();
    if !problems.is_empty() {
        body["checks"]["issuer_errors"] = json!(problems);
    }
    // A degraded shared state leaves the pod ready: every replica turning
    // not-ready at once would make a cache outage a delete outage. It is
    // named at the top and among the checks.
    if let Some(store) = app.limits.store() {
        let shared = if store.healthy() { "ok" } else { "degraded" };
        body["shared_state"] = shared.into();
        body["checks"]["shared_state"] = shared.into();
    }
    let mut r = text(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &format!("{body}\n"),
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
