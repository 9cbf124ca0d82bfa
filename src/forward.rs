//! Step 8 of the request path: forward a permitted request to Batch.
//!
//! Only a [`Permit`] opens this door. The request Batch sees is built from
//! scratch: the method and path as received, the validated body
//! re-serialized, the gateway's own `Authorization`, `X-Batch-Project`,
//! `Content-Type` and `X-Request-Id`, and from the caller only the
//! allowlisted `Accept`, `traceparent`, `tracestate`. HTTP/1.1 over rustls
//! (webpki roots plus the optional `ca_file`) on pooled keep-alive
//! connections ([`client`]); `request_timeout_ms` bounds the whole
//! exchange, connect included. Redirects are never followed. Nothing that
//! may have reached Batch is sent again.

mod client;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::Full;
use secrecy::ExposeSecret;

use crate::common::names;
use crate::config::UpstreamConfig;
use crate::policy::Permit;
use crate::secrets::ProjectSecret;
use crate::tls::{TlsError, tls_client_config};

/// Batch's answers are small JSON documents; anything larger is refused.
const MAX_UPSTREAM_BODY: usize = 1 << 20;

/// Caller headers that may travel to Batch.
const CALLER_ALLOWLIST: [HeaderName; 3] = [header::ACCEPT, names::TRACEPARENT, names::TRACESTATE];

/// What Batch answered, already filtered for the caller.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub latency: Duration,
    /// Batch's `error_code`, when the body carries one (string or number).
    pub error_code: Option<String>,
}

impl Answer {
    /// The caller's response: Batch's status, the filtered headers, the body.
    pub fn into_response(self) -> http::Response<Full<Bytes>> {
        let mut resp = http::Response::new(Full::new(self.body));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp
    }
}

/// Why no answer came back.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream unreachable")]
    Unreachable {
        detail: &'static str,
        latency: Duration,
    },
    #[error("upstream timed out")]
    Timeout { latency: Duration },
}

impl ForwardError {
    pub fn latency(&self) -> Duration {
        match self {
            ForwardError::Unreachable { latency, .. } | ForwardError::Timeout { latency } => {
                *latency
            }
        }
    }
}

/// The upstream client.
pub struct Upstream {
    pool: client::Pool,
    /// `host[:port]` of `base_url`, for the `Host` header.
    host: HeaderValue,
    /// `base_url`'s own path, without a trailing slash.
    prefix: String,
    timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, TlsError> {
        let tls = tls_client_config(cfg.ca_file.as_deref())?;
        let base = &cfg.base_url;
        let pool = client::Pool::new(base, tls, cfg.connect_timeout, MAX_UPSTREAM_BODY)
            .map_err(|_| TlsError::BadUrl)?;
        let host = match (base.host(), base.port_u16()) {
            (Some(h), Some(p)) => HeaderValue::from_str(&format!("{h}:{p}")),
            (Some(h), None) => HeaderValue::from_str(h),
            (None, _) => return Err(TlsError::BadUrl),
        }
        .map_err(|_| TlsError::BadUrl)?;
        let prefix = base.path().trim_end_matches('/').to_string();
        Ok(Upstream {
            pool,
            host,
            prefix,
            timeout: cfg.request_timeout,
        })
    }

    /// Sends the permitted request and reads Batch's whole answer.
    pub async fn forward(
        &self,
        permit: &Permit,
        secret: &ProjectSecret,
        body: Bytes,
        request_id: &str,
        caller_headers: &HeaderMap,
    ) -> Result<Answer, ForwardError> {
        let started = Instant::now();
        let req = self
            .request_for(permit, secret, body, request_id, caller_headers)
            .map_err(|detail| unreachable(detail, started))?;
        self.exchange(req, started, secret).await
    }

    /// The request Batch gets: the permitted action's method on
    /// `<base_url><permit's target>` with the project's
    /// keys, the gateway's request id and trace context, and of the
    /// caller's headers only the allowlisted ones. `Err` names what could
    /// not be built (a key that is not a valid header value, say).
    pub fn request_for(
        &self,
        permit: &Permit,
        secret: &ProjectSecret,
        body: Bytes,
        request_id: &str,
        caller_headers: &HeaderMap,
    ) -> Result<Request<Full<Bytes>>, &'static str> {
        // Origin-form: the connection already goes to base_url's host.
        let uri: Uri = format!("{}{}", self.prefix, permit.target())
            .parse()
            .map_err(|_| "bad_uri")?;
        let mut req = Request::builder()
            .method(permit.action().method())
            .uri(uri)
            .body(Full::new(body))
            .map_err(|_| "bad_request")?;
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        for name in CALLER_ALLOWLIST {
            let mut values = caller_headers.get_all(&name).iter();
            if let (Some(v), None) = (values.next(), values.next()) {
                h.insert(name, v.clone());
            }
        }
        // W3C trace context: the caller's, when well-formed, else a new
        // trace (and then no tracestate of someone else's trace).
        if !h
            .get(names::TRACEPARENT)
            .is_some_and(|v| valid_traceparent(v.as_bytes()))
        {
            h.remove(names::TRACESTATE);
            if let Ok(v) = HeaderValue::from_str(&new_traceparent()) {
                h.insert(names::TRACEPARENT, v);
            }
        }
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", secret.rest_key.expose_secret()))
                .map_err(|_| "bad_rest_key")?;
        auth.set_sensitive(true);
        h.insert(header::AUTHORIZATION, auth);
        let project = HeaderValue::from_str(&secret.project_key).map_err(|_| "bad_project_key")?;
        h.insert(names::X_BATCH_PROJECT, project);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert(names::X_REQUEST_ID, v);
        }
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("batch-gateway/", env!("CARGO_PKG_VERSION"))),
        );
        Ok(req)
    }

    /// Batch's answer as the caller gets it: the REST key redacted from
    /// the body, and of the headers only the allowlisted ones.
    pub fn answer_for(
        status: StatusCode,
        headers: &HeaderMap,
        raw: &[u8],
        secret: &ProjectSecret,
        latency: Duration,
    ) -> Answer {
        let body = redact(raw, secret.rest_key.expose_secret().as_bytes());
        let mut kept = HeaderMap::new();
        for (name, value) in headers {
            let n = name.as_str();
            if n == "content-type" || n == "retry-after" || n.starts_with("x-ratelimit-") {
                kept.append(name.clone(), value.clone());
            }
        }
        Answer {
            status,
            headers: kept,
            error_code: error_code(&body),
            body,
            latency,
        }
    }

    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        started: Instant,
        secret: &ProjectSecret,
    ) -> Result<Answer, ForwardError> {
        let (parts, raw) = match tokio::time::timeout(self.timeout, self.pool.send(req)).await {
            Ok(r) => r.map_err(|f| unreachable(f.detail(), started))?,
            Err(_) => {
                return Err(ForwardError::Timeout {
                    latency: started.elapsed(),
                });
            }
        };
        Ok(Upstream::answer_for(
            parts.status,
            &parts.headers,
            &raw,
            secret,
            started.elapsed(),
        ))
    }
}

/// Batch could not be reached or the exchange broke off, `detail` says how.
fn unreachable(detail: &'static str, started: Instant) -> ForwardError {
    ForwardError::Unreachable {
        detail,
        latency: started.elapsed(),
    }
}

/// `00-<32 hex trace id, not all zero>-<16 hex parent id, not all zero>-<2 hex flags>`.
pub fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        !s.is_empty()
            && s.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let zero = |s: &[u8]| s.iter().all(|b| *b == b'0');
    let parts: Vec<&[u8]> = v.split(|b| *b == b'-').collect();
    matches!(parts.as_slice(), [ver, trace, parent, flags]
        if *ver == b"00" && trace.len() == 32 && parent.len() == 16 && flags.len() == 2
            && hex(trace) && hex(parent) && hex(flags) && !zero(trace) && !zero(parent))
}

/// A fresh sampled trace: random trace and parent ids.
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4();
    let parent = uuid::Uuid::new_v4();
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    s.push_str(
        trace
            .simple()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    s.push('-');
    s.push_str(&hex::encode(&parent.as_bytes()[..8]));
    s.push_str("-01");
    s
}

/// Batch's `error_code`, sent as a JSON string or number.
fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    match v.get("error_code")? {
        serde_json::Value::String(s) => Some(crate::common::bounded(s, 32).to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `body` with every occurrence of `secret` replaced by `[REDACTED]`.
pub fn redact(body: &[u8], secret: &[u8]) -> Bytes {
    if secret.is_empty() || body.len() < secret.len() {
        return Bytes::copy_from_slice(body);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(secret) {
            out.extend_from_slice(b"[REDACTED]");
            i += secret.len();
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_occurrence_of_the_key() {
        let out = redact(b"a rk_123 b rk_123rk_123", b"rk_123");
        assert_eq!(&out[..], b"a [REDACTED] b [REDACTED][REDACTED]");
        assert_eq!(&redact(b"short", b"longer-key")[..], b"short");
    }

    #[test]
    fn trace_context_is_kept_only_when_well_formed() {
        assert!(valid_traceparent(
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        for bad in [
            &b"00-00000000000000000000000000000000-b7ad6b7169203331-01"[..],
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            b"garbage",
        ] {
            assert!(!valid_traceparent(bad), "{}", String::from_utf8_lossy(bad));
        }
        assert!(valid_traceparent(new_traceparent().as_bytes()));
    }

    #[test]
    fn error_code_accepts_string_and_number() {
        assert_eq!(error_code(br#"{"error_code":"12"}"#).as_deref(), Some("12"));
        assert_eq!(error_code(br#"{"error_code":12}"#).as_deref(), Some("12"));
        assert_eq!(error_code(b"<html>"), None);
    }
}
