//! The one place that turns every failure of the request path into a
//! response: Batch's error body (`error_code` as a JSON string,
//! `error_message`), `X-Gateway-Error: <reason>`, `X-Request-Id`, and for
//! 401s a `WWW-Authenticate` challenge. Messages tell the caller what to
//! fix and never carry secrets or internals.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Every way the gateway itself answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    TokenMissing,
    TokenInvalid,
    TokenExpired,
    TokenBindingMismatch,
    TokenReplayed,
    RouteNotFound,
    Forbidden,
    MalformedJson,
    MalformedParameter,
    MissingParameter,
    BodyTooLarge,
    /// More header fields than `max_headers` (HTTP/2; hyper answers
    /// HTTP/1.1's itself).
    HeadersTooLarge,
    BodyTimeout,
    BadFraming,
    SecretsUnavailable,
    AuditUnavailable,
    UpstreamUnreachable,
    UpstreamTimeout,
    Overloaded,
    RateLimited,
    QuotaExceeded,
    /// Batch said 429 moments ago.
    UpstreamCooldown,
    /// Batch said 503 moments ago.
    UpstreamCooldownUnavailable,
    /// A single-use token while the shared state cannot be reached.
    SharedStateUnavailable,
    /// A bug: the request task failed. Nothing is forwarded after this.
    Internal,
}

impl Reject {
    /// Every kind, for closed-set lookups (metric labels) and tests.
    pub const ALL: &'static [Reject] = &[
        Reject::TokenMissing,
        Reject::TokenInvalid,
        Reject::TokenExpired,
        Reject::TokenBindingMismatch,
        Reject::TokenReplayed,
        Reject::RouteNotFound,
        Reject::Forbidden,
        Reject::MalformedJson,
        Reject::MalformedParameter,
        Reject::MissingParameter,
        Reject::BodyTooLarge,
        Reject::HeadersTooLarge,
        Reject::BodyTimeout,
        Reject::BadFraming,
        Reject::SecretsUnavailable,
        Reject::AuditUnavailable,
        Reject::UpstreamUnreachable,
        Reject::UpstreamTimeout,
        Reject::Overloaded,
        Reject::RateLimited,
        Reject::QuotaExceeded,
        Reject::UpstreamCooldown,
        Reject::UpstreamCooldownUnavailable,
        Reject::SharedStateUnavailable,
        Reject::Internal,
    ];

    /// The `X-Gateway-Error` value and the audit `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Reject::TokenMissing => "token_missing",
            Reject::TokenInvalid => "token_invalid",
            Reject::TokenExpired => "token_expired",
            Reject::TokenBindingMismatch => "token_binding_mismatch",
            Reject::TokenReplayed => "token_replayed",
            Reject::RouteNotFound => "route_not_found",
            Reject::Forbidden => "forbidden",
            Reject::MalformedJson => "malformed_json",
            Reject::MalformedParameter => "malformed_parameter",
            Reject::MissingParameter => "missing_parameter",
            Reject::BodyTooLarge => "body_too_large",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::BodyTimeout => "body_timeout",
            Reject::BadFraming => "bad_framing",
            Reject::SecretsUnavailable => "secrets_unavailable",
            Reject::AuditUnavailable => "audit_unavailable",
            Reject::UpstreamUnreachable => "upstream_unreachable",
            Reject::UpstreamTimeout => "upstream_timeout",
            Reject::Overloaded => "overloaded",
            Reject::RateLimited => "rate_limited",
            Reject::QuotaExceeded => "quota_exceeded",
            Reject::UpstreamCooldown | Reject::UpstreamCooldownUnavailable => "upstream_cooldown",
            Reject::SharedStateUnavailable => "shared_state_unavailable",
            Reject::Internal => "internal_error",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Reject::TokenMissing
            | Reject::TokenInvalid
            | Reject::TokenExpired
            | Reject::TokenBindingMismatch
            | Reject::TokenReplayed => StatusCode::UNAUTHORIZED,
            Reject::RouteNotFound => StatusCode::NOT_FOUND,
            Reject::Forbidden => StatusCode::FORBIDDEN,
            Reject::MalformedJson
            | Reject::MalformedParameter
            | Reject::MissingParameter
            | Reject::BadFraming => StatusCode::BAD_REQUEST,
            Reject::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reject::SecretsUnavailable | Reject::AuditUnavailable | Reject::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reject::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            Reject::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reject::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Reject::RateLimited | Reject::QuotaExceeded | Reject::UpstreamCooldown => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Reject::UpstreamCooldownUnavailable | Reject::SharedStateUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Batch's `error_code` for the status.
    pub fn error_code(self) -> &'static str {
        match self {
            Reject::TokenMissing
            | Reject::TokenInvalid
            | Reject::TokenExpired
            | Reject::TokenBindingMismatch
            | Reject::TokenReplayed => "10",
            Reject::Forbidden => "12",
            Reject::RouteNotFound => "20",
            Reject::MissingParameter => "30",
            Reject::MalformedParameter
            | Reject::BodyTooLarge
            | Reject::HeadersTooLarge
            | Reject::BadFraming
            | Reject::BodyTimeout => "31",
            Reject::MalformedJson => "32",
            Reject::SecretsUnavailable | Reject::AuditUnavailable | Reject::Overloaded => "2",
            Reject::UpstreamUnreachable | Reject::UpstreamTimeout | Reject::Internal => "0",
            Reject::RateLimited | Reject::QuotaExceeded | Reject::UpstreamCooldown => "60",
            Reject::UpstreamCooldownUnavailable | Reject::SharedStateUnavailable => "2",
        }
    }

    fn default_message(self) -> &'static str {
        match self {
            Reject::TokenMissing => "send your token as 'Authorization: Bearer <JWT>'",
            Reject::TokenInvalid => {
                "the bearer token is not valid for this gateway; get a fresh token from your identity provider"
            }
            Reject::TokenExpired => "the bearer token has expired; get a fresh one",
            Reject::TokenBindingMismatch => {
                "the token's htm/htu/bh claims do not match this request, or this grant needs a token bound to it (htm, htu, bh and jti)"
            }
            Reject::TokenReplayed => {
                "this single-use token (jti) was already used; get a fresh token"
            }
            Reject::RouteNotFound => {
                "no such route: this gateway serves POST /2.N/campaigns/delete"
            }
            Reject::Forbidden => "your team holds no grant for this project and action",
            Reject::MalformedJson => "the body must be a JSON object with unique member names",
            Reject::MalformedParameter => {
                "the body must be {\"id\": \"orchestration_<32 lowercase letters or digits>\"} and nothing else"
            }
            Reject::MissingParameter => "the body lacks the 'id' member",
            Reject::BodyTooLarge => "the body is larger than this gateway accepts",
            Reject::HeadersTooLarge => {
                "the request has more header fields than this gateway accepts"
            }
            Reject::BodyTimeout => "the body did not arrive in time",
            Reject::BadFraming => {
                "ambiguous HTTP framing: send either Content-Length or Transfer-Encoding: chunked"
            }
            Reject::SecretsUnavailable => {
                "the project's Batch credentials are unavailable right now; retry later"
            }
            Reject::AuditUnavailable => {
                "the gateway cannot write its audit trail; nothing was sent, retry later"
            }
            Reject::UpstreamUnreachable => {
                "Batch could not be reached; the request may not have been delivered"
            }
            Reject::UpstreamTimeout => {
                "Batch did not answer in time; the request may or may not have been applied"
            }
            Reject::Overloaded => "the gateway is at capacity; retry shortly",
            Reject::Internal => "the gateway failed on this request; report the X-Request-Id",
            Reject::RateLimited => {
                "your team's request rate for this project is over its limit; wait Retry-After seconds"
            }
            Reject::QuotaExceeded => {
                "your team's daily quota for this project and action is used up; it resets at 00:00 UTC"
            }
            Reject::UpstreamCooldown => {
                "Batch asked to slow down (429) for this project; nothing was sent; wait Retry-After seconds"
            }
            Reject::UpstreamCooldownUnavailable => {
                "Batch is in maintenance (503) for this project; nothing was sent; wait Retry-After seconds"
            }
            Reject::SharedStateUnavailable => {
                "single-use tokens cannot be checked across the gateway's replicas right now; nothing was sent; retry after Retry-After seconds with the same or a fresh token"
            }
        }
    }
}

/// A refusal on its way to the caller (and, most of the time, the audit).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .kind.reason())]
pub struct GatewayError {
    pub kind: Reject,
    /// A finer reason for the audit record (`bad_signature`, `no_grant`…).
    pub detail: Option<Cow<'static, str>>,
    /// Overrides the default message; must name what to fix, nothing secret.
    pub message: Option<Cow<'static, str>>,
    /// Seconds for `Retry-After`, when the refusal knows them.
    pub retry_after_s: Option<u64>,
}

impl GatewayError {
    pub fn new(kind: Reject) -> Self {
        GatewayError {
            kind,
            detail: None,
            message: None,
            retry_after_s: None,
        }
    }
    pub fn detail(mut self, d: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(d.into());
        self
    }
    pub fn message(mut self, m: impl Into<Cow<'static, str>>) -> Self {
        self.message = Some(m.into());
        self
    }
    pub fn retry_after(mut self, s: u64) -> Self {
        self.retry_after_s = Some(s);
        self
    }
}

impl From<Reject> for GatewayError {
    fn from(kind: Reject) -> Self {
        GatewayError::new(kind)
    }
}

// ---------------------------------------------------------------------------
// Each step's error, as the caller and the audit trail see it
// ---------------------------------------------------------------------------

impl From<crate::authn::AuthError> for GatewayError {
    fn from(e: crate::authn::AuthError) -> Self {
        use crate::authn::AuthFailure;
        GatewayError::new(match e.kind {
            AuthFailure::Missing => Reject::TokenMissing,
            AuthFailure::Invalid => Reject::TokenInvalid,
            AuthFailure::Expired => Reject::TokenExpired,
        })
        .detail(e.detail)
    }
}

impl From<crate::policy::Forbidden> for GatewayError {
    fn from(f: crate::policy::Forbidden) -> Self {
        use crate::policy::Forbidden;
        match f {
            Forbidden::DuplicateProjectHeader => GatewayError::new(Reject::MalformedParameter)
                .detail(f.detail())
                .message("send X-Batch-Project once"),
            _ => GatewayError::new(Reject::Forbidden)
                .detail(f.detail())
                .message(f.to_string()),
        }
    }
}

impl From<crate::json::JsonError> for GatewayError {
    fn from(e: crate::json::JsonError) -> Self {
        use crate::json::JsonError;
        GatewayError::new(Reject::MalformedJson).detail(match e {
            JsonError::NotJson => "not_json",
            JsonError::NotObject => "not_object",
            JsonError::DuplicateMember => "duplicate_member",
        })
    }
}

impl From<crate::replay::ReplayError> for GatewayError {
    fn from(e: crate::replay::ReplayError) -> Self {
        use crate::replay::ReplayError;
        match e {
            ReplayError::Replayed => GatewayError::new(Reject::TokenReplayed).detail("replayed"),
            ReplayError::Full => GatewayError::new(Reject::Overloaded).detail("replay_memory_full"),
        }
    }
}

impl From<crate::limits::Limited> for GatewayError {
    fn from(l: crate::limits::Limited) -> Self {
        use crate::limits::Limited;
        match l {
            Limited::Cooldown {
                retry_after_s,
                unavailable: true,
            } => GatewayError::new(Reject::UpstreamCooldownUnavailable)
                .detail("after_503")
                .retry_after(retry_after_s),
            Limited::Cooldown { retry_after_s, .. } => GatewayError::new(Reject::UpstreamCooldown)
                .detail("after_429")
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
            Limited::Replayed => GatewayError::new(Reject::TokenReplayed).detail("replayed"),
            Limited::SharedUnavailable { retry_after_s } => {
                GatewayError::new(Reject::SharedStateUnavailable)
                    .detail("single_use_needs_shared_state")
                    .retry_after(retry_after_s)
            }
        }
    }
}

impl From<crate::secrets::SourceError> for GatewayError {
    fn from(e: crate::secrets::SourceError) -> Self {
        use crate::secrets::SourceError;
        GatewayError::new(Reject::SecretsUnavailable).detail(match e {
            SourceError::NotFound => "secret_missing",
            SourceError::Invalid(_) => "secret_invalid",
            SourceError::Unavailable(_) => "backend_unavailable",
        })
    }
}

impl From<crate::forward::ForwardError> for GatewayError {
    fn from(e: crate::forward::ForwardError) -> Self {
        use crate::forward::ForwardError;
        match e {
            ForwardError::Timeout { .. } => {
                GatewayError::new(Reject::UpstreamTimeout).detail("timeout")
            }
            ForwardError::Unreachable { detail, .. } => {
                GatewayError::new(Reject::UpstreamUnreachable).detail(detail)
            }
        }
    }
}

/// The `replay_rejections` kind of a refusal (a spent `jti`, a full replay
/// memory), read from what `From<ReplayError>` made of it.
pub fn replay_rejection(kind: Reject, detail: Option<&str>) -> Option<&'static str> {
    match (kind, detail) {
        (Reject::TokenReplayed, _) => Some("replayed"),
        (Reject::Overloaded, Some("replay_memory_full")) => Some("replay_memory_full"),
        _ => None,
    }
}

/// The `secret_failures` kind of a refusal, read from what
/// `From<SourceError>` made of it.
pub fn secret_failure(kind: Reject, detail: Option<&str>) -> Option<&'static str> {
    if kind != Reject::SecretsUnavailable {
        return None;
    }
    match detail? {
        "secret_missing" => Some("missing"),
        "secret_invalid" => Some("invalid"),
        "backend_unavailable" => Some("unavailable"),
        _ => None,
    }
}

/// Renders `err` as the caller sees it.
pub fn rescue(err: &GatewayError, request_id: Option<&str>) -> Response<Full<Bytes>> {
    let message = err
        .message
        .as_deref()
        .unwrap_or_else(|| err.kind.default_message());
    let body = serde_json::json!({
        "error_code": err.kind.error_code(),
        "error_message": message,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = err.kind.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        crate::common::names::X_GATEWAY_ERROR,
        HeaderValue::from_static(err.kind.reason()),
    );
    if let Some(id) = request_id.and_then(|r| HeaderValue::from_str(r).ok()) {
        h.insert(crate::common::names::X_REQUEST_ID, id);
    }
    match err.kind {
        Reject::TokenMissing => {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"batch-gateway\""),
            );
        }
        Reject::TokenInvalid
        | Reject::TokenExpired
        | Reject::TokenBindingMismatch
        | Reject::TokenReplayed => {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"batch-gateway\", error=\"invalid_token\""),
            );
        }
        Reject::SecretsUnavailable
        | Reject::AuditUnavailable
        | Reject::Overloaded
        | Reject::RateLimited
        | Reject::QuotaExceeded
        | Reject::UpstreamCooldown
        | Reject::UpstreamCooldownUnavailable
        | Reject::SharedStateUnavailable => {
            let secs = err.retry_after_s.unwrap_or(5);
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        _ => {}
    }
    if matches!(err.kind, Reject::BadFraming | Reject::BodyTimeout) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reject_renders_batch_shape_with_string_code() {
        for &k in Reject::ALL {
            let r = rescue(&GatewayError::new(k), Some("rid-1"));
            assert_eq!(r.status(), k.status());
            assert_eq!(r.headers()["x-gateway-error"], k.reason());
            assert_eq!(r.headers()["x-request-id"], "rid-1");
            let is_401 = k.status() == StatusCode::UNAUTHORIZED;
            assert_eq!(
                r.headers().contains_key("www-authenticate"),
                is_401,
                "{k:?}"
            );
        }
    }

    /// The metrics read the refusal the conversions made: every replay and
    /// secret-source error is counted, under its own kind.
    #[test]
    fn every_replay_and_secret_error_is_counted_by_kind() {
        use crate::replay::ReplayError;
        use crate::secrets::SourceError;
        let counted = |e: GatewayError| {
            (
                replay_rejection(e.kind, e.detail.as_deref()),
                secret_failure(e.kind, e.detail.as_deref()),
            )
        };
        assert_eq!(
            counted(ReplayError::Replayed.into()),
            (Some("replayed"), None)
        );
        assert_eq!(
            counted(ReplayError::Full.into()),
            (Some("replay_memory_full"), None)
        );
        assert_eq!(
            counted(SourceError::NotFound.into()),
            (None, Some("missing"))
        );
        assert_eq!(
            counted(SourceError::Invalid("x").into()),
            (None, Some("invalid"))
        );
        assert_eq!(
            counted(SourceError::Unavailable("x".into()).into()),
            (None, Some("unavailable"))
        );
        assert_eq!(counted(GatewayError::new(Reject::Overloaded)), (None, None));
    }

    #[test]
    fn missing_token_challenge_has_no_error_attribute() {
        let r = rescue(&GatewayError::new(Reject::TokenMissing), None);
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"batch-gateway\""
        );
        let r = rescue(&GatewayError::new(Reject::TokenExpired), None);
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap_or("")
                .contains("invalid_token")
        );
    }
}
