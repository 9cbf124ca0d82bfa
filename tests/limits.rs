//! Bounded input: framing, header and body sizes, slow clients, load
//! shedding. Nothing here may reach Batch.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn head(token: &str, extra: &str) -> String {
    format!(
        "POST {DELETE} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n{extra}"
    )
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_the_connection_closed() {
    let w = World::new().await;
    let gw = w.start().await;
    let body = delete_body(&campaign_id());
    for extra in [
        format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
            body.len()
        ),
        "Transfer-Encoding: gzip, chunked\r\n\r\n".to_string(),
        "Transfer-Encoding: Chunked\r\n\r\n".to_string(),
    ] {
        let mut raw = head(&w.token("growth"), &extra).into_bytes();
        raw.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        raw.extend_from_slice(&body);
        raw.extend_from_slice(b"\r\n0\r\n\r\n");
        let r = raw_exchange(gw.addr, &raw).await;
        assert_eq!(r.status, 400, "{extra:?}: {r:?}");
        assert_ne!(r.header("x-gateway-error"), None);
    }
    // Conflicting Content-Length values.
    let mut raw = head(
        &w.token("growth"),
        "Content-Length: 10\r\nContent-Length: 11\r\n\r\n",
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    let r = raw_exchange(gw.addr, &raw).await;
    assert_eq!(r.status, 400);
    assert_eq!(w.batch().count(), 0);
    gw.stop().await;
}

/// A bare LF or bare CR anywhere in a request head (the guard and hyper
/// could read such a head two ways) is answered 400 `bad_framing` at once,
/// the connection closed, nothing forwarded; with a valid token and a
/// valid chunked delete behind it, and whatever the line-end trick.
#[tokio::test]
async fn a_bare_lf_or_cr_in_the_head_is_refused_at_once_and_the_connection_closed() {
    let w = World::new().await;
    let gw = w.start().await;
    let body = delete_body(&campaign_id());
    let token = w.token("growth");
    let chunked = |head: String| {
        let mut raw = head.into_bytes();
        raw.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        raw.extend_from_slice(&body);
        raw.extend_from_slice(b"\r\n0\r\n\r\n");
        raw
    };
    let auth = format!("Authorization: Bearer {token}");
    let cl = format!("Content-Length: {}", body.len());
    for head in [
        format!(
            "POST {DELETE} HTTP/1.1\r\nHost: gw\r\n{auth}\r\nX: y\nTransfer-Encoding: chunked\r\n{cl}\r\n\r\n"
        ),
        format!(
            "POST {DELETE} HTTP/1.1\r\nHost: gw\r\n{auth}\r\nTransfer-Encoding: chunked\r\nX: y\n{cl}\r\n\r\n"
        ),
        format!("POST {DELETE} HTTP/1.1\nHost: gw\n{auth}\nTransfer-Encoding: chunked\n\n"),
        format!(
            "POST {DELETE} HTTP/1.1\r\nHost: gw\r\n{auth}\r\nX: a\rb\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        format!("POST {DELETE} HTTP/1.1\r\nHost: gw\r\n{auth}\r\nTransfer-Encoding: chunked\r\n\n"),
    ] {
        let started = Instant::now();
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&chunked(head.clone())).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("the connection is closed, not left waiting")
            .unwrap();
        let r = parse_response(&buf).unwrap();
        assert_eq!(r.status, 400, "{head:?}");
        assert_eq!(r.header("x-gateway-error"), Some("bad_framing"), "{head:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(w.batch().count(), 0, "nothing forwarded");
    gw.stop().await;
}

#[tokio::test]
async fn an_oversized_header_section_gets_431() {
    let w = World::new().await;
    let gw = w.start().await; // max_header_bytes defaults to 16384
    let big = format!("X-Pad: {}\r\n\r\n", "a".repeat(20000));
    let r = raw_exchange(gw.addr, head(&w.token("growth"), &big).as_bytes()).await;
    assert_eq!(r.status, 431);
    let many: String = (0..80)
        .map(|i| format!("X-H{i}: v\r\n"))
        .collect::<String>()
        + "\r\n";
    let r = raw_exchange(gw.addr, head(&w.token("growth"), &many).as_bytes()).await;
    assert_eq!(r.status, 431, "more than max_headers (64) fields");
    assert_eq!(w.batch().count(), 0);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("batch_gateway_connection_errors_total{kind=\"header_too_large\"}"),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_whatever_the_token_and_audited() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            table(d, "server").insert("max_body_bytes".into(), 60.into());
        })
        .await;
    let id = campaign_id();
    let mut exact = delete_body(&id);
    exact.resize(60, b' ');
    let r = gw.delete(&w.token("growth"), None, &exact).await;
    assert_eq!(r.status, 204);
    exact.push(b' ');
    let r = gw.delete("not-even-a-token", None, &exact).await;
    r.assert_gateway_error(413, "body_too_large", "31");
    assert_eq!(w.batch().count(), 1);
    let last = w.audit_records().pop().unwrap();
    assert_eq!(
        (last["phase"].clone(), last["reason"].clone()),
        (json!("denied"), json!("body_too_large"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_slow_client_is_cut_off_after_the_header_read_timeout() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            table(d, "server").insert("header_read_timeout_ms".into(), 300.into());
        })
        .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /2.8/campaigns/delete HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    // The gateway closes (possibly after a 408); the read ends well before 10 s.
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(n.is_ok(), "connection still open after 10 s");
    assert!(started.elapsed() < Duration::from_secs(5));
    gw.stop().await;
}

#[tokio::test]
async fn a_slow_body_is_cut_off_after_the_body_read_timeout() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            table(d, "server").insert("body_read_timeout_ms".into(), 300.into());
        })
        .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let raw = head(&w.token("growth"), "Content-Length: 100\r\n\r\n{\"id\":");
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(n.is_ok(), "connection still open after 10 s");
    let r = parse_response(&buf).unwrap();
    r.assert_gateway_error(408, "body_timeout", "31");
    assert_eq!(w.batch().count(), 0);
    gw.stop().await;
}

/// The reviewer's reproduction: connections without a valid token that
/// declare a body and never send it. Each is answered 401 at once (the
/// connection closed, the body not waited for) and holds no in-flight
/// slot, so a valid delete is unaffected even with every slot's worth of
/// them open; a valid caller's slow body is still bounded (above).
#[tokio::test]
async fn tokenless_slow_bodies_hold_no_slot_and_are_answered_at_once() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            let s = table(d, "server");
            s.insert("max_concurrent_requests".into(), 4.into());
            s.insert("body_read_timeout_ms".into(), 10_000.into());
        })
        .await;
    let mut open = Vec::new();
    for i in 0..16 {
        let auth = match i % 3 {
            0 => String::new(),
            1 => "Authorization: Bearer not.a.token\r\n".to_string(),
            _ => format!("Authorization: Bearer {}x\r\n", w.token("growth")),
        };
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let raw = format!(
            "POST {DELETE} HTTP/1.1\r\nHost: gw\r\n{auth}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\":"
        );
        s.write_all(raw.as_bytes()).await.unwrap();
        open.push(s);
    }
    let started = Instant::now();
    for mut s in open {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
            .await
            .expect("answered and closed without waiting for the body")
            .unwrap();
        let r = parse_response(&buf).unwrap();
        assert_eq!(r.status, 401, "{r:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    // More of them, left open with their bodies pending, while a valid
    // delete is made: it gets its slot.
    let mut pending = Vec::new();
    for _ in 0..8 {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(
            format!("POST {DELETE} HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n{{")
                .as_bytes(),
        )
        .await
        .unwrap();
        pending.push(s);
    }
    assert_eq!(gw.delete_new(&w.token("growth"), None).await.status, 204);
    assert_eq!(w.batch().count(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn requests_over_max_concurrent_are_shed_at_once_with_503_overloaded() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            table(d, "server").insert("max_concurrent_requests".into(), 1.into());
        })
        .await;
    w.batch().set_delay(Duration::from_millis(1500));
    let token = w.token("growth");
    let first = {
        let addr = gw.addr;
        let raw = {
            let body = delete_body(&campaign_id());
            let mut r = head(
                &token,
                &format!(
                    "Connection: close\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                ),
            )
            .into_bytes();
            r.extend_from_slice(&body);
            r
        };
        tokio::spawn(async move { raw_exchange(addr, &raw).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let r = gw.delete_new(&token, None).await;
    r.assert_gateway_error(503, "overloaded", "2");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "shedding waited for the slot"
    );
    assert_eq!(first.await.unwrap().status, 204);
    assert_eq!(w.batch().count(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_header_read_timeout() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            table(d, "server").insert("header_read_timeout_ms".into(), 300.into());
        })
        .await;
    // Connect and send nothing at all, or finish one request and then idle.
    let mut idle = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "a silent connection stayed open");

    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let body = delete_body(&campaign_id());
    let mut raw = head(
        &w.token("growth"),
        &format!("Content-Length: {}\r\n\r\n", body.len()),
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    s.write_all(&raw).await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "a keep-alive connection idled forever");
    assert_eq!(parse_response(&buf).unwrap().status, 204);
    gw.stop().await;
}

/// A client that sends requests but never reads the answers cannot hold
/// its connection (and a connection slot) for ever: once the gateway's
/// write has waited `body_read_timeout_ms`, the connection ends and the
/// slot serves the next client.
#[tokio::test]
async fn a_client_that_never_reads_loses_its_connection_slot() {
    let w = World::new().await;
    let gw = w
        .start_with(|d| {
            let s = table(d, "server");
            s.insert("max_connections".into(), 1.into());
            s.insert("body_read_timeout_ms".into(), 500.into());
        })
        .await;
    // A tiny receive window, and far more pipelined requests than it and
    // the gateway's send buffer hold: the gateway's writes block.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(gw.addr).await.unwrap();
    let one = format!("POST {DELETE} HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\n\r\n");
    let many = one.repeat(40_000).into_bytes();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = stuck.write_all(&many).await;
        // Held open, never read, until the test ends.
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        drop(stuck);
    });
    // While it holds the only slot, a new client is turned away; within a
    // few seconds the stalled connection is cut and a delete gets through.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut served = None;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(r)) = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            try_exchange(
                gw.addr,
                &delete_request(&w.token("growth"), "", &delete_body(&campaign_id())),
            ),
        )
        .await
        {
            served = Some(r.status);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(served, Some(204), "the slot came back");
    writer.abort();
    gw.stop().await;
}
