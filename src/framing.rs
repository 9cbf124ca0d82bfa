//! Request-smuggling guard under hyper.
//!
//! hyper, following RFC 9112 §6.3, serves a request that carries both
//! `Content-Length` and `Transfer-Encoding` as chunked and drops the
//! `Content-Length` header before the service sees it. The contract wants
//! such a request refused. This reader follows the request stream of one
//! connection (heads, fixed-length and chunked bodies) and, in a head that
//! carries both, renames each `Content-Length` to the same-length
//! [`AMBIGUOUS_HEADER`]; the gateway then answers 400 and closes.
//! Bytes are never added or removed there. On input it cannot follow, it
//! stops tracking and lets hyper refuse it.
//!
//! It finds the end of a head where hyper's parser (httparse) does: at the
//! first empty line, whether lines end in CRLF or in a bare LF. A head with
//! any bare LF or bare CR is not passed on at all: the guard hands hyper a
//! stand-in head carrying [`BARE_LINE_END_HEADER`] and `Connection: close`
//! instead, so the gateway answers 400 `bad_framing` and closes, and the
//! guard and hyper can never read one head two ways.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Sleep, sleep};

/// What a `Content-Length` next to a `Transfer-Encoding` is renamed to
/// (as long as "Content-Length", so no byte moves).
pub const AMBIGUOUS_HEADER: &str = "x-ambiguous-cl";

/// Marks the stand-in for a head that had a bare LF or bare CR.
pub const BARE_LINE_END_HEADER: &str = "x-bare-line-end";

/// What hyper reads instead of a head with a bare line end.
const STAND_IN: &[u8] =
    b"POST / HTTP/1.1\r\nx-bare-line-end: 1\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Where a request head ends (just after its empty line), as httparse
/// reads it: a line feed followed by another, or by CR LF.
fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', buf).find_map(|p| match buf.get(p + 1..p + 3) {
        Some([b'\n', ..]) => Some(p + 2),
        Some([b'\r', b'\n']) => Some(p + 3),
        None if buf.get(p + 1) == Some(&b'\n') => Some(p + 2),
        _ => None,
    })
}

/// A line feed not after a CR, or a CR not before a line feed.
fn has_bare_line_end(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|p| p == 0 || head[p - 1] != b'\r')
        || memchr::memchr_iter(b'\r', head).any(|p| head.get(p + 1) != Some(&b'\n'))
}

/// Inspects a complete head, or replaces it by the stand-in.
fn decide(head: &[u8], out: &mut BytesMut) -> Position {
    if has_bare_line_end(head) {
        out.extend_from_slice(STAND_IN);
        return Position::Off;
    }
    let at = out.len();
    out.extend_from_slice(head);
    inspect(&mut out[at..])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Off,
}

/// Follows HTTP/1.1 request framing on a byte stream.
#[derive(Debug)]
pub struct Tracker {
    state: Position,
    buf: Vec<u8>,
    max_head: usize,
}

/// First occurrence of `needle` (memchr's vectorized substring search:
/// every request head is scanned here).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

impl Tracker {
    pub fn new(max_head: usize) -> Self {
        Tracker {
            state: Position::Head,
            buf: Vec::new(),
            max_head,
        }
    }

    /// Consumes `data`, appending what may be passed on to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut BytesMut) {
        // Bodies pass through without an intermediate copy; only bytes that
        // followed a completed head (held in the head buffer) are owned.
        let mut next = self.feed_slice(data, out);
        while let Some(rest) = next {
            next = self.feed_slice(&rest, out);
        }
    }

    /// Consumes `owned`; returns bytes still to process when a head ended
    /// inside it.
    fn feed_slice(&mut self, owned: &[u8], out: &mut BytesMut) -> Option<Vec<u8>> {
        let mut i = 0;
        while i < owned.len() {
            match self.state {
                Position::Off => {
                    out.extend_from_slice(&owned[i..]);
                    return None;
                }
                Position::Head => {
                    if self.buf.is_empty() && (owned[i] == b'\r' || owned[i] == b'\n') {
                        out.extend_from_slice(&owned[i..i + 1]);
                        i += 1;
                        continue;
                    }
                    // The usual case: a whole head within this read. It is
                    // inspected where it lands in `out`, without buffering.
                    if self.buf.is_empty()
                        && let Some(end) = head_end(&owned[i..])
                        && end <= self.max_head
                    {
                        self.state = decide(&owned[i..i + end], out);
                        i += end;
                        continue;
                    }
                    // A terminator not seen before starts at a line feed
                    // among the last two bytes held, or after them.
                    let scan_from = self.buf.len().saturating_sub(2);
                    self.buf.extend_from_slice(&owned[i..]);
                    i = owned.len();
                    if let Some(end) = head_end(&self.buf[scan_from..]) {
                        let rest = self.buf.split_off(scan_from + end);
                        let head = std::mem::take(&mut self.buf);
                        self.state = decide(&head, out);
                        return (!rest.is_empty()).then_some(rest);
                    } else if self.buf.len() > self.max_head {
                        out.extend_from_slice(&std::mem::take(&mut self.buf));
                        self.state = Position::Off;
                    }
                }
                Position::Fixed(n) => {
                    let left = pass_through(owned, &mut i, n, out);
                    self.state = if left == 0 {
                        Position::Head
                    } else {
                        Position::Fixed(left)
                    };
                }
                Position::ChunkData(n) => {
                    let left = pass_through(owned, &mut i, n, out);
                    self.state = if left == 0 {
                        Position::ChunkEnd
                    } else {
                        Position::ChunkData(left)
                    };
                }
                Position::ChunkSize | Position::ChunkEnd | Position::Trailers => {
                    let b = owned[i];
                    out.extend_from_slice(&owned[i..i + 1]);
                    i += 1;
                    self.buf.push(b);
                    if b != b'\n' {
                        if self.buf.len() > 4096 {
                            self.state = Position::Off;
                        }
                        continue;
                    }
                    let line = std::mem::take(&mut self.buf);
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    self.state = match self.state {
                        Position::ChunkEnd if line.is_empty() => Position::ChunkSize,
                        Position::ChunkSize => chunk_size(line),
                        Position::Trailers if line.is_empty() => Position::Head,
                        Position::Trailers => Position::Trailers,
                        _ => Position::Off,
                    };
                }
            }
        }
        None
    }

    /// At end of stream: what is held goes on (hyper reports it incomplete).
    pub fn flush(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&std::mem::take(&mut self.buf));
    }
}

/// Passes up to `n` body bytes from `data[*i..]` on; returns what is left.
fn pass_through(data: &[u8], i: &mut usize, n: u64, out: &mut BytesMut) -> u64 {
    let take = (data.len() - *i).min(usize::try_from(n).unwrap_or(usize::MAX));
    out.extend_from_slice(&data[*i..*i + take]);
    *i += take;
    n - take as u64
}

fn chunk_size(line: &[u8]) -> Position {
    let hex = line.split(|b| *b == b';').next().unwrap_or_default();
    let hex = std::str::from_utf8(hex)
        .unwrap_or("")
        .trim_matches([' ', '\t']);
    match u64::from_str_radix(hex, 16) {
        Ok(0) => Position::Trailers,
        Ok(n) => Position::ChunkData(n),
        Err(_) => Position::Off,
    }
}

/// Looks at one request head; renames ambiguous `Content-Length` headers;
/// says how the body that follows is framed.
fn inspect(head: &mut [u8]) -> Position {
    // One pass decides; nothing is copied or allocated. Of the
    // Transfer-Encoding headers the last one counts; of the Content-Length
    // headers, the first.
    let mut te: Option<bool> = None; // the last one's final coding is chunked
    let mut cl: Option<Position> = None;
    for (_, name, value) in header_lines(head) {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = Some(
                value
                    .rsplit(|b| *b == b',')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked")),
            );
        } else if cl.is_none() && name.eq_ignore_ascii_case(b"content-length") {
            cl = Some(
                match std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    Some(0) => Position::Head,
                    Some(n) => Position::Fixed(n),
                    None => Position::Off,
                },
            );
        }
    }
    if te.is_some() && cl.is_some() {
        // Rare (and refused): a second pass renames every Content-Length.
        let mut at = Vec::new();
        for (start, name, _) in header_lines(head) {
            if name.eq_ignore_ascii_case(b"content-length") {
                at.push(start);
            }
        }
        for start in at {
            head[start..start + AMBIGUOUS_HEADER.len()]
                .copy_from_slice(AMBIGUOUS_HEADER.as_bytes());
        }
    }
    match (te, cl) {
        (Some(true), _) => Position::ChunkSize,
        (Some(false), _) => Position::Off,
        (None, None) => Position::Head,
        (None, Some(state)) => state,
    }
}

/// The header lines of a request head (the request line skipped): where
/// each starts, its name, and its value without surrounding whitespace.
/// Lines without a colon are skipped.
fn header_lines(head: &[u8]) -> impl Iterator<Item = (usize, &[u8], &[u8])> {
    let mut start = 0;
    let mut first = true;
    std::iter::from_fn(move || {
        while start < head.len() {
            let end = find(&head[start..], b"\r\n").map_or(head.len(), |p| start + p);
            let (at, line) = (start, &head[start..end]);
            start = end + 2;
            if std::mem::take(&mut first) || line.is_empty() {
                continue;
            }
            if let Some(colon) = line.iter().position(|b| *b == b':') {
                return Some((at, &line[..colon], line[colon + 1..].trim_ascii()));
            }
        }
        None
    })
}

/// How long a write has been waiting (see [`WriteBounded`]).
struct WriteStall {
    limit: Duration,
    since: Option<Pin<Box<Sleep>>>,
}

impl WriteStall {
    /// Passes `polled` through, timing how long it has been `Pending`.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.since = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self.since.get_or_insert_with(|| Box::pin(sleep(limit)));
        if timer.as_mut().poll(cx).is_ready() {
            self.since = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read the answer in time",
            )));
        }
        Poll::Pending
    }
}

/// A connection whose reads pass through a [`Tracker`].
pub struct Guarded<T> {
    inner: T,
    tracker: Tracker,
    out: BytesMut,
    eof: bool,
}

impl<T> Guarded<T> {
    pub fn new(inner: T, max_head: usize) -> Self {
        Guarded {
            inner,
            tracker: Tracker::new(max_head),
            out: BytesMut::new(),
            eof: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = buf.remaining().min(this.out.len());
                buf.put_slice(&this.out.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Uninitialized: a plain socket reads into it as it is, so no
            // 8 KiB are zeroed on every read (and every read that waits).
            let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
            let mut rb = ReadBuf::uninit(&mut tmp);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                this.eof = true;
                this.tracker.flush(&mut this.out);
            } else {
                this.tracker.feed(rb.filled(), &mut this.out);
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A socket whose writes may not stall: a client that stops reading (a
/// zero TCP window) would otherwise hold its connection, and the
/// connection slot, for as long as it likes. A write, vectored write,
/// flush or shutdown that makes no progress for `limit` fails with
/// `TimedOut`, and the connection ends. Wraps the accepted TCP socket,
/// so it bounds TLS, HTTP/1.1 and h2 alike.
pub struct WriteBounded<S> {
    io: S,
    stall: WriteStall,
}

impl<S> WriteBounded<S> {
    pub fn new(io: S, limit: Duration) -> Self {
        WriteBounded {
            io,
            stall: WriteStall { limit, since: None },
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteBounded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteBounded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.stall.watch(cx, polled)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.stall.watch(cx, polled)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.stall.watch(cx, polled)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.stall.watch(cx, polled)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests;
