//! What is checked on the request itself, apart from who sent it: the
//! framing headers, the bounded body read, the body's shape (step 4) and
//! its canonical form, the token's binding to this request (step 5), the
//! target and project headers as received, the caller's own request id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::authn::{Binding, Principal};
use crate::common::names;
use crate::error::{GatewayError, Reject};
use crate::json::parse_object;
use crate::policy::Forbidden;

/// Who is on the other end of the connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The mTLS client certificate's subject, when there is one.
    pub client_cert: Option<Arc<str>>,
}

/// The request target as received. An absolute-form HTTP/1.1 target
/// (`POST https://host/...`) never routes; HTTP/2 always carries scheme
/// and authority apart from :path.
pub fn target(parts: &Parts) -> &str {
    if parts.uri.scheme().is_some() && parts.version != http::Version::HTTP_2 {
        return "";
    }
    parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or_else(|| parts.uri.path())
}

/// Every `X-Batch-Project` value, as text.
pub fn project_headers(parts: &Parts) -> Result<Vec<&str>, GatewayError> {
    parts
        .headers
        .get_all(names::X_BATCH_PROJECT)
        .iter()
        .map(|v| {
            v.to_str()
                .map_err(|_| GatewayError::from(Forbidden::UnknownProject))
        })
        .collect()
}

/// The body's declared length is over `max`: refused before the token is
/// looked at.
pub fn declared_over(max: usize, headers: &HeaderMap) -> bool {
    declared_length(headers).is_some_and(|n| n > max as u64)
}

/// The body's length as `Content-Length` declares it.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Ambiguous message framing is refused before anything else (request
/// smuggling): `Content-Length` with `Transfer-Encoding`, a
/// `Transfer-Encoding` other than exactly `chunked`, or disagreeing
/// `Content-Length` values.
pub fn framing_error(h: &HeaderMap) -> Option<GatewayError> {
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
pub async fn read_body<B>(
    max: usize,
    limit: Duration,
    headers: &HeaderMap,
    body: B,
) -> Result<Bytes, GatewayError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
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
    match tokio::time::timeout(limit, read).await {
        Ok(r) => r,
        Err(_) => Err(GatewayError::new(Reject::BodyTimeout)),
    }
}

/// Step 4: `{"id": "orchestration_<32 of 0-9a-z>"}` and nothing else.
pub fn validate_body(body: &[u8]) -> Result<String, GatewayError> {
    let members = parse_object(body)?;
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
pub fn canonical_body(campaign_id: &str) -> Bytes {
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

/// Step 5: a grant that demands a request-bound token gets one, and every
/// binding claim the token carries matches the request.
pub fn check_bound(
    principal: &Principal,
    bound_required: bool,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<(), GatewayError> {
    let b = &principal.binding;
    if bound_required
        && (b.htm.is_none() || b.htu.is_none() || b.bh.is_none() || principal.jti.is_none())
    {
        return Err(GatewayError::new(Reject::TokenBindingMismatch).detail("bound_token_required"));
    }
    check_binding(b, method, target, body)
}

/// Step 5: every binding claim the token carries must match the request.
pub fn check_binding(
    b: &Binding,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<(), GatewayError> {
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
pub fn caller_request_id(h: &HeaderMap) -> Option<String> {
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

#[cfg(test)]
mod tests;
