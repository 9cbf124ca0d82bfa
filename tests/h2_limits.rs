//! HTTP/2 has the bounds HTTP/1.1 has: an idle timeout, a header-read
//! timeout per stream, the header count and size limits, and a reset
//! flood answered with GOAWAY ENHANCE_YOUR_CALM at exactly the limit;
//! an answer sent before the body ended still has the stream's framing
//! checked, for a bounded time. Raw frames over real TLS (ALPN h2).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::h2raw::*;
use support::*;

async fn start_h2(w: &World, edit: impl FnOnce(&mut toml::Table)) -> Running {
    let t = server_tls(w, None);
    w.start_with(|d| {
        let s = table(d, "server");
        s.insert("tls".into(), t.into());
        edit(s);
    })
    .await
}

/// A valid delete over h2 on a connection of its own: the gateway still
/// serves after whatever the test did.
async fn still_serves(w: &World, gw: &Running) {
    let before = w.batch().count();
    let cfg = client_config(&w.ca.pem, None, &[b"h2"]);
    let (st, v) = tls_delete(gw.addr, cfg, true, &w.token("growth"))
        .await
        .unwrap();
    assert_eq!((st, v.as_deref()), (204, Some("HTTP/2.0")));
    assert_eq!(w.batch().count(), before + 1);
}

const SECS_5: Duration = Duration::from_secs(5);

/// HEADERS + RST_STREAM pairs, all in one write: the gateway processes
/// exactly `limit` resets and the stream of the next pair, then GOAWAY
/// ENHANCE_YOUR_CALM names that stream as the last; nothing reaches Batch.
/// Below the limit the same connection goes on serving.
#[tokio::test]
async fn a_reset_flood_gets_goaway_enhance_your_calm_at_exactly_the_limit() {
    let w = World::new().await;
    let limit = 30u32;
    let gw = start_h2(&w, |s| {
        s.insert("h2_max_reset_streams".into(), i64::from(limit).into());
    })
    .await;
    let token = w.token("growth");
    let block = block_of(&delete_headers(gw.addr.port(), Some(&token)));
    for split in [false, true] {
        let mut c = H2Raw::start(&w, &gw).await;
        let mut flood = Vec::new();
        for k in 0..200u32 {
            let id = 2 * k + 1;
            flood.extend(frame(HEADERS, END_HEADERS, id, &block));
            flood.extend(rst(id, CANCEL));
        }
        if split {
            // However the bytes are cut, the count is the same.
            for piece in flood.chunks(7) {
                if !c.try_send(piece).await {
                    break;
                }
            }
        } else {
            c.send(&flood).await;
        }
        let g = c.until(SECS_5, |f| f.kind == GOAWAY).await;
        let (last, code) = g.expect("GOAWAY").goaway().unwrap();
        assert_eq!(code, ENHANCE_YOUR_CALM);
        assert_eq!(last, 2 * limit + 1, "limit resets, then one more stream");
        assert!(c.closed_within(SECS_5).await, "closed after GOAWAY");
    }
    assert_eq!(w.batch().count(), 0);

    // Exactly the limit, then a complete request on the same connection.
    let mut c = H2Raw::start(&w, &gw).await;
    let mut pairs = Vec::new();
    for k in 0..limit {
        pairs.extend(frame(HEADERS, END_HEADERS, 2 * k + 1, &block));
        pairs.extend(rst(2 * k + 1, CANCEL));
    }
    c.send(&pairs).await;
    let port = gw.addr.port();
    let answered = c
        .delete(port, 2 * limit + 1, &token, Duration::ZERO, &[])
        .await;
    assert!(answered, "the request at the limit is answered");
    assert_eq!(c.goaway(), None);
    assert_eq!(w.batch().count(), 1);
    still_serves(&w, &gw).await;
    gw.stop().await;
}

/// Reset streams of requests without a token are denials under the
/// unauthenticated record budget: a few records, the rest summarized.
#[tokio::test]
async fn tokenless_reset_streams_fall_under_the_unauthenticated_record_budget() {
    let w = World::new().await;
    let gw = start_h2(&w, |s| {
        s.insert("h2_max_reset_streams".into(), 1000.into());
    })
    .await;
    let mut c = H2Raw::start(&w, &gw).await;
    let block = block_of(&delete_headers(gw.addr.port(), None));
    let sent = 400u32;
    let mut flood = Vec::new();
    for k in 0..sent {
        flood.extend(frame(HEADERS, END_HEADERS, 2 * k + 1, &block));
        flood.extend(rst(2 * k + 1, CANCEL));
    }
    let t0 = std::time::Instant::now();
    c.send(&flood).await;
    // A PING after the flood: its ACK means every pair was read.
    c.send(&frame(PING, 0, 0, &[7; 8])).await;
    assert!(
        c.until(SECS_5, |f| f.kind == PING && f.flags & ACK != 0)
            .await
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let elapsed = t0.elapsed().as_secs() + 2;
    gw.stop().await;
    let records = w.audit_records();
    let tokenless: Vec<_> = records
        .iter()
        .filter(|r| r["phase"] == "denied" && r["caller"].is_null())
        .collect();
    let summarized: u64 = records
        .iter()
        .filter(|r| r["phase"] == "summary")
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum();
    // The default budget: 20 a second, one by one.
    assert!(
        tokenless.len() as u64 <= 20 * elapsed,
        "{} records in {elapsed} s",
        tokenless.len()
    );
    assert!(summarized > 0, "the rest is counted in summaries");
    assert!(tokenless.len() as u64 + summarized <= u64::from(sent));
    assert_eq!(w.batch().count(), 0);
}

/// An h2 connection with no open stream gets GOAWAY (NO_ERROR) after
/// `h2_idle_timeout_ms` and is closed, even while the client keeps
/// pinging; a stream in progress keeps its connection past the timeout.
#[tokio::test]
async fn an_idle_h2_connection_gets_goaway_and_is_closed() {
    let w = World::new().await;
    let gw = start_h2(&w, |s| {
        s.insert("h2_idle_timeout_ms".into(), 300.into());
    })
    .await;
    // Pings do not count as activity.
    let mut c = H2Raw::start(&w, &gw).await;
    let mut closed = false;
    for _ in 0..50 {
        c.send(&frame(PING, 0, 0, &[1; 8])).await;
        if c.closed_within(Duration::from_millis(100)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "closed within 5 s of pings");
    assert_eq!(c.goaway().map(|g| g.1), Some(NO_ERROR));

    // A slow (authenticated) body outlives the idle timeout.
    let mut c = H2Raw::start(&w, &gw).await;
    let (port, token) = (gw.addr.port(), w.token("growth"));
    let answered = c.delete(port, 1, &token, Duration::from_secs(1), &[]).await;
    assert!(answered, "answered: {:?}", c.seen);
    assert_eq!(w.batch().count(), 1);
    // ... and once it is done, the connection goes idle and is closed.
    assert!(c.closed_within(SECS_5).await);
    gw.stop().await;
}

/// `header_read_timeout_ms` bounds the time until a stream's headers are
/// complete: a header block left open (even while CONTINUATION frames keep
/// coming) or half a frame header ends the connection. A body slower
/// than that, after complete headers, is not cut.
#[tokio::test]
async fn h2_headers_not_complete_in_time_end_the_connection() {
    let w = World::new().await;
    let gw = start_h2(&w, |s| {
        s.insert("header_read_timeout_ms".into(), 300.into());
    })
    .await;
    let token = w.token("growth");
    let block = block_of(&delete_headers(gw.addr.port(), Some(&token)));
    let (first, rest) = block.split_at(10);

    // HEADERS without END_HEADERS, then nothing.
    let mut c = H2Raw::start(&w, &gw).await;
    c.send(&frame(HEADERS, 0, 1, first)).await;
    assert!(c.closed_within(SECS_5).await);

    // Half a frame header, then nothing.
    let mut c = H2Raw::start(&w, &gw).await;
    c.send(&frame(HEADERS, END_HEADERS, 1, &block)[..5]).await;
    assert!(c.closed_within(SECS_5).await);

    // CONTINUATION frames of one byte every 50 ms: never complete.
    let mut c = H2Raw::start(&w, &gw).await;
    c.send(&frame(HEADERS, 0, 1, first)).await;
    let mut closed = false;
    for byte in rest.iter().cycle().take(100) {
        if !c.try_send(&frame(CONTINUATION, 0, 1, &[*byte])).await
            || c.closed_within(Duration::from_millis(50)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a header block trickled for 5 s was not cut");
    assert_eq!(w.batch().count(), 0);

    // Complete headers, then a body after three header timeouts.
    let mut c = H2Raw::start(&w, &gw).await;
    let pause = Duration::from_millis(900);
    let answered = c.delete(gw.addr.port(), 1, &token, pause, &[]).await;
    assert!(answered, "answered: {:?}", c.seen);
    assert_eq!(w.batch().count(), 1);
    still_serves(&w, &gw).await;
    gw.stop().await;
}

/// The header list is bounded by `max_header_bytes`, advertised in
/// SETTINGS; more than `max_headers` fields get 431 in Batch's error
/// format; neither reaches Batch.
#[tokio::test]
async fn h2_header_count_and_size_are_bounded() {
    let w = World::new().await;
    let gw = start_h2(&w, |s| {
        s.insert("max_header_bytes".into(), 8192.into());
        s.insert("max_headers".into(), 20.into());
    })
    .await;
    let token = w.token("growth");
    let mut c = H2Raw::start(&w, &gw).await;
    let settings = c.until(SECS_5, |f| f.kind == SETTINGS).await.unwrap();
    assert_eq!(settings.setting(SETTINGS_MAX_HEADER_LIST_SIZE), Some(8192));

    // 25 fields: the delete's own 3, then 22 x-pad-N.
    let pads: Vec<_> = (0..22)
        .map(|n| (format!("x-pad-{n}"), "v".to_string()))
        .collect();
    let answered = c
        .delete(gw.addr.port(), 1, &token, Duration::ZERO, &pads)
        .await;
    assert!(answered);
    let text = c.data_text(1);
    assert!(text.contains("\"error_code\":\"31\""), "{text}");
    assert!(text.contains("more than 20 header fields"), "{text}");

    // One 9 KB header: over the list size, refused by h2 (431, no body).
    let mut h = delete_headers(gw.addr.port(), Some(&token));
    h.push(("x-big".into(), "a".repeat(9000)));
    let big = block_of(&h);
    let (a, b) = big.split_at(8000);
    c.send(&frame(HEADERS, 0, 3, a)).await;
    c.send(&frame(CONTINUATION, END_HEADERS, 3, b)).await;
    let answer = c.until(SECS_5, |f| f.stream == 3).await.expect("answered");
    assert_eq!(answer.kind, HEADERS);
    assert_eq!(w.batch().count(), 0);
    still_serves(&w, &gw).await;
    gw.stop().await;
}

/// A request answered from its headers (401) before its body ended keeps
/// its stream open long enough for the framing to be checked: trailers
/// without END_STREAM are a PROTOCOL_ERROR. A client that keeps the body
/// open is reset (NO_ERROR) soon after the answer, not at the body
/// timeout.
#[tokio::test]
async fn an_early_answer_still_checks_the_stream_and_then_resets_it() {
    let w = World::new().await;
    let gw = start_h2(&w, |s| {
        s.insert("body_read_timeout_ms".into(), 30_000.into());
    })
    .await;
    let port = gw.addr.port();
    let block = block_of(&delete_headers(port, None));
    let mut c = H2Raw::start(&w, &gw).await;
    c.send(&frame(HEADERS, END_HEADERS, 1, &block)).await;
    c.send(&frame(DATA, 0, 1, b"test")).await;
    // The 401 arrives while the body is still open...
    c.until(SECS_5, |f| f.stream == 1 && f.flags & END_STREAM != 0)
        .await
        .expect("answered from the headers");
    assert!(c.data_text(1).contains("\"error_code\":\"10\""));
    // ... and trailers without END_STREAM after it are still malformed.
    c.send(&frame(
        HEADERS,
        END_HEADERS,
        1,
        &header_block(&[("x-test", "ok")]),
    ))
    .await;
    let r = c
        .until(SECS_5, |f| f.kind == RST_STREAM || f.kind == GOAWAY)
        .await;
    let r = r.expect("a stream error");
    assert_eq!(
        (r.kind, r.stream, r.reset_code()),
        (RST_STREAM, 1, Some(PROTOCOL_ERROR))
    );

    c.send(&frame(HEADERS, END_HEADERS, 3, &block)).await;
    c.send(&frame(DATA, 0, 3, b"{")).await;
    let r = c
        .until(SECS_5, |f| f.kind == RST_STREAM && f.stream == 3)
        .await;
    assert_eq!(r.expect("reset within 5 s").reset_code(), Some(NO_ERROR));
    assert!(c.data_text(3).contains("\"error_code\":\"10\""));
    assert_eq!(c.goaway(), None, "the connection itself is fine");
    still_serves(&w, &gw).await;
    gw.stop().await;
}

/// On shutdown an h2 connection gets GOAWAY; a stream in flight still
/// gets its answer, and a client that never answers the gateway's PING
/// does not hold the drain to its grace period.
#[tokio::test]
async fn shutdown_sends_goaway_and_finishes_streams_in_flight() {
    let w = World::new().await;
    let gw = start_h2(&w, |s| {
        s.insert("shutdown_grace_ms".into(), 20_000.into());
    })
    .await;
    let token = w.token("growth");
    let port = gw.addr.port();
    let mut idle = H2Raw::start(&w, &gw).await;
    let mut busy = H2Raw::start(&w, &gw).await;
    let mut h = delete_headers(port, Some(&token));
    let body = delete_body(&campaign_id());
    h.push(("content-length".into(), body.len().to_string()));
    busy.send(&frame(HEADERS, END_HEADERS, 1, &block_of(&h)))
        .await;
    // Both connections are up (their SETTINGS read), and the busy one's
    // request holds its in-flight slot, waiting for its body.
    assert!(idle.until(SECS_5, |f| f.kind == SETTINGS).await.is_some());
    assert!(busy.until(SECS_5, |f| f.kind == SETTINGS).await.is_some());
    let all = gw.app.server().max_concurrent_requests;
    for _ in 0..500 {
        if gw.app.inflight.available_permits() < all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        gw.app.inflight.available_permits() < all,
        "the stream is in flight"
    );
    let t0 = std::time::Instant::now();
    let stopping = tokio::spawn(gw.stop());
    assert!(busy.until(SECS_5, |f| f.kind == GOAWAY).await.is_some());
    busy.send(&frame(DATA, END_STREAM, 1, &body)).await;
    let end = busy
        .until(SECS_5, |f| f.stream == 1 && f.flags & END_STREAM != 0)
        .await;
    assert!(
        end.is_some(),
        "the stream in flight is answered; GOAWAY {:?}, frames {:?}",
        busy.goaway(),
        busy.seen
            .iter()
            .map(|f| (f.kind, f.flags, f.stream))
            .collect::<Vec<_>>()
    );
    assert!(idle.closed_within(Duration::from_secs(10)).await);
    assert!(busy.closed_within(Duration::from_secs(10)).await);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("drained well before the 20 s grace")
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(w.batch().count(), 1);
}
