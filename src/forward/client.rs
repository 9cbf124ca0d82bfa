//! The connection pool behind [`super::Upstream`]: keep-alive HTTP/1.1
//! connections to Batch over rustls, each driven by the request that has
//! it checked out.
//!
//! hyper's client connection is a future that must be polled for the
//! connection to make progress. hyper-util's pooled client runs it in a
//! task of its own and, per request, hands the request over through a
//! channel, the response back through another, and spawns one more task
//! that puts the connection back once it is idle. Here the request task
//! polls the connection itself, beside the request it sent, and puts the
//! connection back as soon as the answer is read: no task and no channel
//! hop per request (see docs/performance.md for what that measured).
//!
//! A connection is reused only when hyper says it is ready for another
//! request. An idle connection is checked when it is taken out: if Batch
//! closed it meanwhile it is dropped. A request that a reused connection
//! never wrote (it closed first) goes out once on a new connection;
//! nothing that may have reached Batch is sent again. A request that is
//! abandoned (the gateway's timeout) takes its connection with it.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::response::Parts;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

type Sender = http1::SendRequest<Full<Bytes>>;
type Driver = http1::Connection<TokioIo<TlsStream<TcpStream>>, Full<Bytes>>;

/// One TLS connection to Batch: the handle requests are sent on and the
/// state machine that does the I/O.
struct Conn {
    sender: Sender,
    driver: Driver,
    /// The driver returned: the connection is gone.
    ended: bool,
    idle_since: Instant,
}

impl Conn {
    /// Polls `fut` to completion, polling the connection beside it so that
    /// the request is written and the answer read.
    async fn drive<F: Future>(&mut self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            self.poll_driver(cx);
            fut.as_mut().poll(cx)
        })
        .await
    }

    fn poll_driver(&mut self, cx: &mut Context<'_>) {
        if !self.ended && std::pin::Pin::new(&mut self.driver).poll(cx).is_ready() {
            self.ended = true;
        }
    }

    /// Ready for another request, as far as can be told without waiting.
    fn reusable(&mut self) -> bool {
        self.poll_driver(&mut Context::from_waker(Waker::noop()));
        !self.ended && self.sender.is_ready()
    }
}

/// Why an exchange failed, as the audit `detail` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made (TCP or TLS).
    Connect,
    /// The connection broke before a whole response head came back.
    Exchange,
    /// The response body was cut off or too large.
    ResponseBody,
}

impl Failure {
    pub fn detail(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Exchange => "exchange",
            Failure::ResponseBody => "response_body",
        }
    }
}

/// How an exchange on one connection ended without an answer.
enum Unwritten {
    Failed(Failure),
    /// The connection closed before the request was written; here it is.
    Unsent(Box<Request<Full<Bytes>>>),
}

/// Keep-alive connections to one origin.
pub struct Pool {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    max_body: usize,
    /// Boxed: a connection's state (~2 KB, mostly TLS) then moves in and
    /// out of the pool, and through each request's future, as a pointer.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Conn>>>,
}

impl Pool {
    /// `origin` is an `https://` URI with a host; `tls` is used as given
    /// except that it offers HTTP/1.1 only.
    pub fn new(
        origin: &Uri,
        tls: rustls::ClientConfig,
        connect_timeout: Duration,
        max_body: usize,
    ) -> Result<Pool, &'static str> {
        let host = origin.host().ok_or("no host")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let server_name = ServerName::try_from(host.clone()).map_err(|_| "bad host")?;
        let mut tls = tls;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Pool {
            port: origin.port_u16().unwrap_or(443),
            host,
            server_name,
            tls: TlsConnector::from(Arc::new(tls)),
            connect_timeout,
            idle_timeout: Duration::from_secs(60),
            max_idle: 64,
            max_body,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends `req` (origin-form target, `Host` set) and reads the whole
    /// answer. The caller bounds the time it may take.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<(Parts, Bytes), Failure> {
        let mut req = req;
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                // Boxed: the handshake's future is large, and rare.
                None => (Box::pin(self.connect()).await?, false),
            };
            match self.exchange(&mut conn, req).await {
                Ok(done) => {
                    self.checkin(conn);
                    return Ok(done);
                }
                // Not written: Batch closed this idle connection first.
                Err(Unwritten::Unsent(unsent)) if reused => req = *unsent,
                Err(Unwritten::Unsent(_)) => {
                    tracing::warn!(
                        "upstream request failed: a new connection closed before the request was written"
                    );
                    return Err(Failure::Exchange);
                }
                Err(Unwritten::Failed(failure)) => return Err(failure),
            }
        }
    }

    /// One request on `conn`.
    async fn exchange(
        &self,
        conn: &mut Conn,
        req: Request<Full<Bytes>>,
    ) -> Result<(Parts, Bytes), Unwritten> {
        let sent = conn.sender.try_send_request(req);
        let resp = match conn.drive(sent).await {
            Ok(resp) => resp,
            Err(mut e) => {
                if let Some(unsent) = e.take_message() {
                    return Err(Unwritten::Unsent(Box::new(unsent)));
                }
                tracing::warn!(error = %e.error(), "upstream request failed");
                return Err(Unwritten::Failed(Failure::Exchange));
            }
        };
        let (parts, body) = resp.into_parts();
        let body = conn
            .drive(Limited::new(body, self.max_body).collect())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "upstream request failed: response body");
                Unwritten::Failed(Failure::ResponseBody)
            })?
            .to_bytes();
        Ok((parts, body))
    }

    /// Puts `conn` back if it can serve another request.
    fn checkin(&self, mut conn: Box<Conn>) {
        if !conn.reusable() {
            return;
        }
        conn.idle_since = Instant::now();
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(conn);
        }
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<Box<Conn>> {
        loop {
            let mut conn = self.idle.lock().ok()?.pop()?;
            if conn.idle_since.elapsed() < self.idle_timeout && conn.reusable() {
                return Some(conn);
            }
        }
    }

    /// TCP, then TLS, within `connect_timeout`.
    async fn connect(&self) -> Result<Box<Conn>, Failure> {
        let connecting = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| ("tcp", e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let tls = self
                .tls
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| ("tls", e.to_string()))?;
            http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| ("http", e.to_string()))
        };
        match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok((sender, driver))) => Ok(Box::new(Conn {
                sender,
                driver,
                ended: false,
                idle_since: Instant::now(),
            })),
            Ok(Err((stage, error))) => {
                tracing::warn!(stage, %error, "upstream request failed: cannot connect");
                Err(Failure::Connect)
            }
            Err(_) => {
                tracing::warn!("upstream request failed: connect timed out");
                Err(Failure::Connect)
            }
        }
    }
}
