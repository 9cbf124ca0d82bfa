//! HTTP/2 connections, served with the `h2` crate itself rather than
//! through hyper's h2 server, because hyper's gives no way to bound what
//! an h2 client may hold or cost:
//!
//! * no idle timeout: a client that answers pings keeps its connection
//!   slot forever. Here a connection with no open stream for
//!   `h2_idle_timeout_ms` gets GOAWAY (NO_ERROR) and is closed;
//! * no header-read timeout: a HEADERS frame (or a header block in
//!   CONTINUATION frames) may take forever. Here the inbound bytes are
//!   watched frame by frame ([`FrameWatch`]): a frame header or a header
//!   block open longer than `header_read_timeout_ms` ends the connection;
//! * the rapid-reset defence is h2's count of streams reset before they
//!   were accepted, which depends on timing. Here every RST_STREAM the
//!   client sends is counted as it is read; the one over
//!   `h2_max_reset_streams` within 10 s is not even handed to h2, and the
//!   connection gets GOAWAY ENHANCE_YOUR_CALM naming the last stream it
//!   processed;
//! * `max_headers` is checked per request (431), and `max_header_bytes`
//!   bounds the header list (SETTINGS_MAX_HEADER_LIST_SIZE; h2 answers 431).
//!
//! Each stream runs [`crate::gateway::handle`], as HTTP/1.1 requests do.
//! An answer sent before the request body ended (a 401 from the headers)
//! leaves the stream open for its framing to be checked, at most
//! [`DRAIN_TIME`] and `max_body_bytes`, then resets it with NO_ERROR (RFC
//! 9113 §8.1).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep, sleep};

use crate::app::App;
use crate::error::{GatewayError, Reject, rescue};
use crate::gateway::Peer;

/// Streams in flight per connection.
pub const MAX_STREAMS: u32 = 128;
/// The window `h2_max_reset_streams` counts over.
pub const RESET_WINDOW: Duration = Duration::from_secs(10);
/// How long a stream answered before its body ended stays open.
pub const DRAIN_TIME: Duration = Duration::from_secs(1);
/// After GOAWAY, how long the client has to read it before the socket goes.
const CLOSE_TIME: Duration = Duration::from_secs(2);
/// Both directions' connection window (streams keep h2's 64 KiB).
const CONNECTION_WINDOW: u32 = 1 << 20;

/// Serves one h2 connection until the client or the gateway ends it.
/// `stop` turns true on shutdown: GOAWAY, then in-flight streams finish.
pub async fn serve<S>(app: &Arc<App>, io: S, peer: Peer, mut stop: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let server = app.server();
    let flood = Arc::new(Flood::default());
    let io = FrameWatch::new(
        io,
        server.header_read_timeout,
        Resets::new(server.h2_max_reset_streams, RESET_WINDOW),
        flood.clone(),
    );
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .initial_connection_window_size(CONNECTION_WINDOW)
        // Never earlier than the count above: one limit, ours.
        .max_pending_accept_reset_streams(server.h2_max_reset_streams.saturating_add(1))
        .max_local_error_reset_streams(Some(1024));
    let mut conn = match tokio::time::timeout(
        server.header_read_timeout,
        builder.handshake::<_, Bytes>(io),
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return count_error(app, &e),
        Err(_) => return app.metrics.connection_error("header_timeout"),
    };
    let mut streams = JoinSet::new();
    let idle = sleep(server.h2_idle_timeout);
    tokio::pin!(idle);
    let close_by = sleep(Duration::MAX / 4);
    tokio::pin!(close_by);
    let mut going_away = false;
    let mut stopping = *stop.borrow();
    if stopping {
        close_now(
            &mut conn,
            Reason::NO_ERROR,
            close_by.as_mut(),
            &mut going_away,
        );
    }
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    streams.spawn(stream(app.clone(), peer.clone(), req, respond));
                }
                Some(Err(e)) => {
                    count_error(app, &e);
                    break;
                }
                None => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {
                if streams.is_empty() && !going_away {
                    if stopping {
                        // The last answers may still sit in h2's send
                        // queue (an abrupt GOAWAY now would drop them):
                        // h2 writes them, and closes once the client
                        // answers its PING; a client that never does has
                        // CLOSE_TIME.
                        close_by.as_mut().reset(Instant::now() + CLOSE_TIME);
                    } else {
                        idle.as_mut().reset(Instant::now() + server.h2_idle_timeout);
                    }
                }
            }
            () = &mut idle, if streams.is_empty() && !going_away => {
                close_now(&mut conn, Reason::NO_ERROR, close_by.as_mut(), &mut going_away);
            }
            () = flood.notify.notified(), if !going_away => {
                tracing::info!(client = %peer.addr, "h2 client reset too many streams: GOAWAY");
                app.metrics.connection_error("h2_reset_flood");
                close_now(&mut conn, Reason::ENHANCE_YOUR_CALM, close_by.as_mut(), &mut going_away);
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                if streams.is_empty() {
                    close_now(&mut conn, Reason::NO_ERROR, close_by.as_mut(), &mut going_away);
                } else {
                    // Streams in flight finish; new ones are refused.
                    conn.graceful_shutdown();
                }
            }
            () = &mut close_by => break,
        }
    }
}

/// GOAWAY naming the last stream processed, then the socket goes within
/// [`CLOSE_TIME`]. Used when no stream is in flight (idle, shutdown) and on
/// a reset flood; h2's graceful close instead waits for the client to
/// answer a PING, which an idle client may never do.
fn close_now<T, B>(
    conn: &mut h2::server::Connection<T, B>,
    reason: Reason,
    close_by: Pin<&mut Sleep>,
    going_away: &mut bool,
) where
    T: AsyncRead + AsyncWrite + Unpin,
    B: bytes::Buf,
{
    if !*going_away {
        conn.abrupt_shutdown(reason);
        close_by.reset(Instant::now() + CLOSE_TIME);
        *going_away = true;
    }
}

fn count_error(app: &App, e: &h2::Error) {
    let kind = match e.get_io().map(io::Error::kind) {
        Some(io::ErrorKind::TimedOut) => "header_timeout",
        Some(_) => "io",
        None if e.is_go_away() || e.is_reset() => "h2_protocol",
        None => "io",
    };
    tracing::debug!(kind, error = %e, "h2 connection ended with an error");
    app.metrics.connection_error(kind);
}

/// One stream: the request through the gateway, the answer back.
async fn stream(
    app: Arc<App>,
    peer: Peer,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let (parts, recv) = req.into_parts();
    let server = app.server();
    let head_only = parts.method == Method::HEAD;
    let (back, returned) = oneshot::channel();
    let resp = if parts.headers.len() > server.max_headers {
        // Protocol level, as HTTP/1.1's 431: answered here, not audited.
        app.metrics.connection_error("header_too_large");
        let err = GatewayError::new(Reject::HeadersTooLarge).message(format!(
            "the request has more than {} header fields",
            server.max_headers
        ));
        drop(recv);
        rescue(&err, None)
    } else {
        let body = RecvBody {
            recv: Some(recv),
            back: Some(back),
            done: false,
        };
        crate::gateway::handle(app.clone(), Request::from_parts(parts, body), peer).await
    };
    send(&mut respond, resp, head_only, server.body_read_timeout).await;
    if let Ok(recv) = returned.await {
        drain(recv, server.max_body_bytes).await;
    }
}

/// Sends `resp`, its body as the client's window allows, within `limit`.
async fn send(
    respond: &mut SendResponse<Bytes>,
    resp: Response<Full<Bytes>>,
    head_only: bool,
    limit: Duration,
) {
    let (mut parts, body) = resp.into_parts();
    let mut data = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(never) => match never {},
    };
    strip_connection_headers(&mut parts.headers);
    if parts.status != StatusCode::NO_CONTENT && parts.status != StatusCode::NOT_MODIFIED {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
    }
    if !parts.headers.contains_key(header::DATE) {
        let now = httpdate::fmt_http_date(std::time::SystemTime::now());
        if let Ok(v) = HeaderValue::from_str(&now) {
            parts.headers.insert(header::DATE, v);
        }
    }
    if head_only {
        data = Bytes::new();
    }
    let end = data.is_empty();
    let Ok(mut out) = respond.send_response(Response::from_parts(parts, ()), end) else {
        return; // the client reset the stream or the connection is gone
    };
    let deadline = Instant::now() + limit;
    out.reserve_capacity(data.len());
    while !data.is_empty() {
        match tokio::time::timeout_at(deadline, poll_fn(|cx| out.poll_capacity(cx))).await {
            Ok(Some(Ok(0))) => {}
            Ok(Some(Ok(n))) => {
                let chunk = data.split_to(n.min(data.len()));
                if out.send_data(chunk, data.is_empty()).is_err() {
                    return;
                }
            }
            Ok(Some(Err(_)) | None) => return,
            Err(_) => {
                // The client opens no window: the stream goes, not the slot.
                out.send_reset(Reason::CANCEL);
                return;
            }
        }
    }
}

/// What HTTP/2 forbids in a message (RFC 9113 §8.2.2).
fn strip_connection_headers(h: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
    ] {
        h.remove(name);
    }
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

/// Reads what is left of a stream answered early, so that its framing is
/// still checked; bounded in time and bytes. Dropping the stream then
/// resets it (NO_ERROR) when the client is still sending.
async fn drain(mut recv: RecvStream, max: usize) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0usize;
        while let Some(Ok(data)) = recv.data().await {
            seen = seen.saturating_add(data.len());
            let _ = recv.flow_control().release_capacity(data.len());
            if seen > max {
                return;
            }
        }
        let _ = recv.trailers().await;
    })
    .await;
}

/// An h2 request body as the gateway reads it. When dropped, the stream
/// goes back to its connection's stream task (for [`drain`]).
struct RecvBody {
    recv: Option<RecvStream>,
    back: Option<oneshot::Sender<RecvStream>>,
    done: bool,
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        let Some(recv) = this.recv.as_mut() else {
            return Poll::Ready(None);
        };
        if this.done {
            return Poll::Ready(None);
        }
        if !recv.is_end_stream() {
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {}
            }
        }
        this.done = true;
        match ready!(recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.as_ref().is_none_or(RecvStream::is_end_stream)
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if let (Some(recv), Some(back)) = (self.recv.take(), self.back.take()) {
            let _ = back.send(recv);
        }
    }
}

/// Set when the client reset too many streams; wakes the connection task.
#[derive(Default)]
struct Flood {
    tripped: AtomicBool,
    notify: Notify,
}

/// The client's stream resets within a sliding window.
pub struct Resets {
    max: usize,
    window: Duration,
    at: VecDeque<Instant>,
}

impl Resets {
    pub fn new(max: usize, window: Duration) -> Resets {
        Resets {
            max,
            window,
            at: VecDeque::new(),
        }
    }

    /// Counts one reset at `now`; true when it is one too many.
    pub fn record(&mut self, now: Instant) -> bool {
        while self
            .at
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            self.at.pop_front();
        }
        self.at.push_back(now);
        self.at.len() > self.max
    }
}

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

/// Where the inbound byte stream is, frame by frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    Preface(usize),
    Header {
        buf: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    Payload {
        left: usize,
        kind: u8,
    },
}

/// The client's frames as they arrive: just enough of HTTP/2's framing to
/// time header blocks and count resets; h2 parses everything for real.
#[derive(Debug)]
pub struct Inbound {
    pos: Pos,
    /// A HEADERS or PUSH_PROMISE without END_HEADERS awaits CONTINUATION.
    block_open: bool,
}

/// What [`Inbound::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    All,
    /// The RST_STREAM frame starting at this offset is one too many.
    Flood(usize),
}

impl Default for Inbound {
    fn default() -> Self {
        Inbound {
            pos: Pos::Preface(0),
            block_open: false,
        }
    }
}

impl Inbound {
    pub fn feed(&mut self, bytes: &[u8], resets: &mut Resets, now: Instant) -> Fed {
        let mut i = 0;
        while i < bytes.len() {
            match &mut self.pos {
                Pos::Preface(seen) => {
                    let take = (PREFACE_LEN - *seen).min(bytes.len() - i);
                    *seen += take;
                    i += take;
                    if *seen == PREFACE_LEN {
                        self.pos = fresh_header();
                    }
                }
                Pos::Header { buf, have } => {
                    let take = (FRAME_HEADER_LEN - *have).min(bytes.len() - i);
                    buf[*have..*have + take].copy_from_slice(&bytes[i..i + take]);
                    *have += take;
                    i += take;
                    if *have < FRAME_HEADER_LEN {
                        continue;
                    }
                    let len =
                        usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                    let (kind, flags) = (buf[3], buf[4]);
                    if kind == RST_STREAM && resets.record(now) {
                        return Fed::Flood(i.saturating_sub(FRAME_HEADER_LEN));
                    }
                    match kind {
                        HEADERS | PUSH_PROMISE => self.block_open = flags & END_HEADERS == 0,
                        CONTINUATION if flags & END_HEADERS != 0 => self.block_open = false,
                        _ => {}
                    }
                    self.pos = if len == 0 {
                        fresh_header()
                    } else {
                        Pos::Payload { left: len, kind }
                    };
                }
                Pos::Payload { left, .. } => {
                    let take = (*left).min(bytes.len() - i);
                    *left -= take;
                    i += take;
                    if *left == 0 {
                        self.pos = fresh_header();
                    }
                }
            }
        }
        Fed::All
    }

    /// A frame header, a header-carrying frame or a header block is
    /// incomplete: the header-read clock runs.
    pub fn reading_headers(&self) -> bool {
        self.block_open
            || match self.pos {
                Pos::Preface(_) => true,
                Pos::Header { have, .. } => have > 0,
                Pos::Payload { kind, .. } => matches!(kind, HEADERS | PUSH_PROMISE | CONTINUATION),
            }
    }
}

fn fresh_header() -> Pos {
    Pos::Header {
        buf: [0; FRAME_HEADER_LEN],
        have: 0,
    }
}

pin_project_lite::pin_project! {
    /// The connection's socket, with [`Inbound`] watching what is read.
    struct FrameWatch<S> {
        #[pin]
        io: S,
        inbound: Inbound,
        resets: Resets,
        header_timeout: Duration,
        deadline: Option<Pin<Box<Sleep>>>,
        flood: Arc<Flood>,
    }
}

impl<S> FrameWatch<S> {
    fn new(io: S, header_timeout: Duration, resets: Resets, flood: Arc<Flood>) -> Self {
        FrameWatch {
            io,
            inbound: Inbound::default(),
            resets,
            header_timeout,
            deadline: None,
            flood,
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "h2 headers not complete in time")
}

impl<S: AsyncRead> AsyncRead for FrameWatch<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.flood.tripped.load(Ordering::Acquire) {
            // GOAWAY is on its way; nothing more is read from this client.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let polled = this.io.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let now = Instant::now();
            let fed = this.inbound.feed(&buf.filled()[before..], this.resets, now);
            if let Fed::Flood(at) = fed {
                buf.set_filled(before + at);
                this.flood.tripped.store(true, Ordering::Release);
                this.flood.notify.notify_one();
                if at == 0 {
                    return Poll::Pending;
                }
            }
        }
        if !this.inbound.reading_headers() {
            *this.deadline = None;
        } else if this.deadline.is_none() {
            *this.deadline = Some(Box::pin(sleep(*this.header_timeout)));
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(timed_out()));
        }
        polled
    }
}

impl<S: AsyncWrite> AsyncWrite for FrameWatch<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
