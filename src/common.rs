//! Small helpers every layer uses, importing nothing of the crate: string
//! bounding for what gets recorded, the clock, memo cells, header names.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

/// A value derived once from the thing that holds it and kept with it: the
/// audit trail's `caller` with a verified token in the token cache, a REST
/// key's fingerprint with the cached secret. Derived data, so it takes no
/// part in comparisons and prints nothing.
#[derive(Clone)]
pub struct Memo<T>(std::sync::OnceLock<T>);

impl<T> Memo<T> {
    pub const fn new() -> Self {
        Memo(std::sync::OnceLock::new())
    }

    pub fn get_or_init(&self, f: impl FnOnce() -> T) -> &T {
        self.0.get_or_init(f)
    }
}

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> PartialEq for Memo<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> std::fmt::Debug for Memo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}

/// Header names the request path reads or sets, parsed once rather than
/// from a string on every request.
pub mod names {
    use http::HeaderName;
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    pub const X_BATCH_PROJECT: HeaderName = HeaderName::from_static("x-batch-project");
    pub const X_GATEWAY_ERROR: HeaderName = HeaderName::from_static("x-gateway-error");
    pub const X_GATEWAY_DRY_RUN: HeaderName = HeaderName::from_static("x-gateway-dry-run");
    pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
}

/// `s` cut to at most `max_chars` characters, and to at most twice that
/// many bytes once written as a JSON string (escapes and multi-byte
/// characters included): what audit records keep of caller- or
/// Batch-chosen text, so that the size of a record is bounded whatever
/// the text. Borrowed, not copied.
pub fn bounded(s: &str, max_chars: usize) -> &str {
    let max_bytes = max_chars.saturating_mul(2);
    if s.len() <= max_chars && !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        return s; // plain ASCII within the limit: written as it is
    }
    let mut bytes = 0usize;
    for (n, (i, c)) in s.char_indices().enumerate() {
        bytes += json_len(c);
        if n >= max_chars || bytes > max_bytes {
            return &s[..i];
        }
    }
    s
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

pub fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Now as RFC 3339 UTC with milliseconds, e.g. `2026-01-02T03:04:05.678Z`.
pub fn now_rfc3339() -> String {
    rfc3339_millis(time::OffsetDateTime::now_utc())
}

/// `t` (UTC) as `YYYY-MM-DDTHH:MM:SS.mmmZ`, written digit by digit: every
/// record carries one, and the `time` crate's format interpreter showed in
/// the profile.
pub fn rfc3339_millis(t: time::OffsetDateTime) -> String {
    fn two(s: &mut String, v: u8) {
        s.push(char::from(b'0' + v / 10 % 10));
        s.push(char::from(b'0' + v % 10));
    }
    let Ok(year) = u16::try_from(t.year()) else {
        return slow_rfc3339_millis(t);
    };
    if year > 9999 {
        return slow_rfc3339_millis(t);
    }
    let mut s = String::with_capacity(24);
    two(&mut s, (year / 100) as u8);
    two(&mut s, (year % 100) as u8);
    s.push('-');
    two(&mut s, u8::from(t.month()));
    s.push('-');
    two(&mut s, t.day());
    s.push('T');
    two(&mut s, t.hour());
    s.push(':');
    two(&mut s, t.minute());
    s.push(':');
    two(&mut s, t.second());
    s.push('.');
    let ms = t.millisecond();
    s.push(char::from(b'0' + (ms / 100 % 10) as u8));
    two(&mut s, (ms % 100) as u8);
    s.push('Z');
    s
}

/// Years outside 0..=9999 (never, in practice) take the general path.
fn slow_rfc3339_millis(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

/// `s` with every control character (C0, DEL, C1) and every bidirectional
/// override written as an escape (`\u{1b}`), for output a person reads
/// in a terminal or a page: a recorded string can never move the cursor,
/// recolour the screen or reorder what is shown.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    fn risky(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !s.chars().any(risky) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if risky(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_the_general_formatter() {
        use time::OffsetDateTime;
        let mut samples = vec![
            OffsetDateTime::UNIX_EPOCH,
            OffsetDateTime::now_utc(),
            time::macros::datetime!(1999-12-31 23:59:59.999 UTC),
            time::macros::datetime!(2026-01-01 00:00:00.001 UTC),
            time::macros::datetime!(2024-02-29 09:05:07.090 UTC),
            time::macros::datetime!(0001-01-01 00:00:00 UTC),
            time::macros::datetime!(9999-12-31 23:59:59.999999 UTC),
        ];
        // A spread of instants a few hours and milliseconds apart.
        let mut t = time::macros::datetime!(2026-11-26 00:00:00 UTC);
        for _ in 0..5000 {
            t += time::Duration::milliseconds(7_777_777);
            samples.push(t);
        }
        for t in samples {
            assert_eq!(rfc3339_millis(t), slow_rfc3339_millis(t), "{t}");
        }
        assert_eq!(
            rfc3339_millis(time::macros::datetime!(2026-03-04 05:06:07.089 UTC)),
            "2026-03-04T05:06:07.089Z"
        );
    }
}
