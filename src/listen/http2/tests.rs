#![allow(clippy::unwrap_used)]
use super::*;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn preface() -> Vec<u8> {
    let mut p = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    p.extend(frame(0x4, 0, 0, &[]));
    p
}

/// Feeds `bytes` in pieces of `step`, returning the offset of a flood.
fn feed_in_steps(inb: &mut Inbound, r: &mut Resets, bytes: &[u8], step: usize) -> Option<usize> {
    let now = Instant::now();
    for (k, piece) in bytes.chunks(step).enumerate() {
        if let Fed::Flood(at) = inb.feed(piece, r, now) {
            return Some(k * step + at);
        }
    }
    None
}

#[test]
fn the_reset_over_the_limit_is_found_at_its_first_byte_however_bytes_arrive() {
    let mut stream = preface();
    let mut starts = Vec::new();
    for id in (1..=11u32).step_by(2) {
        stream.extend(frame(HEADERS, END_HEADERS, id, b"abc"));
        starts.push(stream.len());
        stream.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    for step in [1, 2, 7, 9, 13, 4096] {
        let (mut inb, mut r) = (Inbound::default(), Resets::new(4, RESET_WINDOW));
        let found = feed_in_steps(&mut inb, &mut r, &stream, step);
        // The fifth reset is one too many: h2 is handed at most the
        // first 8 bytes of its frame header (those of earlier pieces).
        let at = found.unwrap();
        assert!(
            at >= starts[4] && at < starts[4] + FRAME_HEADER_LEN,
            "step {step}: {at} for {}",
            starts[4]
        );
    }
    let (mut inb, mut r) = (Inbound::default(), Resets::new(6, RESET_WINDOW));
    assert_eq!(feed_in_steps(&mut inb, &mut r, &stream, 5), None);
}

#[test]
fn resets_older_than_the_window_do_not_count() {
    let mut r = Resets::new(2, Duration::from_secs(10));
    let t0 = Instant::now();
    assert!(!r.record(t0));
    assert!(!r.record(t0 + Duration::from_secs(1)));
    assert!(r.record(t0 + Duration::from_secs(2)));
    let mut r = Resets::new(2, Duration::from_secs(10));
    assert!(!r.record(t0));
    assert!(!r.record(t0 + Duration::from_secs(9)));
    assert!(!r.record(t0 + Duration::from_secs(10)));
    assert!(!r.record(t0 + Duration::from_secs(19)));
    assert!(r.record(t0 + Duration::from_millis(19_500)));
}

#[test]
fn the_header_clock_runs_only_while_a_header_block_is_incomplete() {
    let (mut inb, mut r) = (Inbound::default(), Resets::new(10, RESET_WINDOW));
    let now = Instant::now();
    assert!(inb.reading_headers(), "the preface counts as headers");
    inb.feed(&preface(), &mut r, now);
    assert!(!inb.reading_headers());
    // A DATA frame cut in its payload: the body's clock, not this one.
    let data = frame(0x0, 0, 1, &[0; 100]);
    inb.feed(&data[..50], &mut r, now);
    assert!(!inb.reading_headers());
    inb.feed(&data[50..], &mut r, now);
    // A frame header cut short: of unknown kind, so it counts.
    let h = frame(HEADERS, 0, 3, b"abcd");
    inb.feed(&h[..4], &mut r, now);
    assert!(inb.reading_headers());
    inb.feed(&h[4..], &mut r, now);
    // HEADERS without END_HEADERS: open until CONTINUATION ends it.
    assert!(inb.reading_headers());
    inb.feed(&frame(CONTINUATION, 0, 3, b"ef"), &mut r, now);
    assert!(inb.reading_headers());
    let end = frame(CONTINUATION, END_HEADERS, 3, b"gh");
    inb.feed(&end[..10], &mut r, now);
    assert!(inb.reading_headers(), "its payload is not complete yet");
    inb.feed(&end[10..], &mut r, now);
    assert!(!inb.reading_headers());
    // A HEADERS frame whose payload is cut.
    let h = frame(HEADERS, END_HEADERS, 5, &[0; 30]);
    inb.feed(&h[..20], &mut r, now);
    assert!(inb.reading_headers());
    inb.feed(&h[20..], &mut r, now);
    assert!(!inb.reading_headers());
}
