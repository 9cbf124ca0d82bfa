//! Sockets: the data-plane and admin listeners, HTTP/1.1 with bounded
//! headers (size, count, read time), optional TLS with h2 by ALPN (served
//! in `http2`, with the same bounds), a connection limit, and graceful
//! drain on shutdown.

pub mod http2;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::app::App;
use crate::gateway::Peer;

/// Bound listeners, ready to serve.
pub struct Listeners {
    pub data: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(app: &App) -> std::io::Result<Listeners> {
        let data = TcpListener::bind(app.server().listen).await?;
        let admin = TcpListener::bind(app.server().admin_listen).await?;
        Ok(Listeners { data, admin })
    }

    pub fn data_addr(&self) -> std::io::Result<SocketAddr> {
        self.data.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }
}

/// Serves both planes until `shutdown` resolves, then stops accepting,
/// gives in-flight requests `shutdown_grace_ms` to finish, and writes the
/// final audit checkpoint.
pub async fn serve(app: Arc<App>, listeners: Listeners, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let data = tokio::spawn(accept_loop(
        app.clone(),
        listeners.data,
        stop_rx.clone(),
        graceful.clone(),
        Plane::Data,
    ));
    let admin = tokio::spawn(accept_loop(
        app.clone(),
        listeners.admin,
        stop_rx,
        graceful.clone(),
        Plane::Admin,
    ));
    shutdown.await;
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    let _ = stop_tx.send(true);
    let _ = data.await;
    let _ = admin.await;
    let grace = app.server().shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    match Arc::try_unwrap(graceful) {
        Ok(g) => {
            if tokio::time::timeout_at(deadline, g.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "connections still open after the grace period; exiting"
                );
            }
        }
        Err(_) => tracing::warn!("connection watcher still shared; exiting without drain"),
    }
    // A request whose caller went away still runs to its outcome record.
    let all = app.server().max_concurrent_requests;
    while app.inflight.available_permits() < all && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The last word of this run's chain: a signed checkpoint (when configured).
    if !app.audit.checkpoint().await {
        tracing::error!("final audit checkpoint could not be written");
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Plane {
    Data,
    Admin,
}

async fn accept_loop(
    app: Arc<App>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
    plane: Plane,
) {
    let slots = Arc::new(Semaphore::new(app.server().max_connections));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            app.metrics.connection_error("connection_limit");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // A client that stops reading cannot keep the connection: every
        // protocol on it writes through this bound.
        let stream = crate::framing::WriteBounded::new(stream, app.server().body_read_timeout);
        let app = app.clone();
        let stop = stop.clone();
        // Each connection gets a watcher; the shutdown handle stays here so
        // that `serve` can wait for every watched connection.
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match plane {
                Plane::Data => app.tls.as_ref().map(|t| t.acceptor()),
                Plane::Admin => None,
            };
            match tls {
                None => {
                    let peer = Peer {
                        addr: peer,
                        client_cert: None,
                    };
                    serve_http1(&app, watcher, stream, peer, plane).await;
                }
                Some(acceptor) => {
                    let timeout = app.server().header_read_timeout;
                    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(_)) => return app.metrics.connection_error("tls_handshake"),
                        Err(_) => return app.metrics.connection_error("tls_handshake_timeout"),
                    };
                    let (_, conn) = tls.get_ref();
                    let h2 = conn.alpn_protocol() == Some(b"h2");
                    let peer = Peer {
                        addr: peer,
                        client_cert: crate::tls::client_subject(conn).map(Arc::from),
                    };
                    if h2 {
                        // Held while the connection lives, so that the
                        // drain waits for it; `stop` starts its GOAWAY.
                        let _watched = watcher;
                        http2::serve(&app, tls, peer, stop).await;
                    } else {
                        serve_http1(&app, watcher, tls, peer, plane).await;
                    }
                }
            }
            drop(slot);
        });
    }
}

async fn serve_http1<S>(app: &Arc<App>, watcher: Watcher, stream: S, peer: Peer, plane: Plane)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let server = app.server();
    let io = TokioIo::new(crate::framing::Guarded::new(
        stream,
        server.max_header_bytes,
    ));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(server.max_header_bytes)
        .max_headers(server.max_headers)
        .keep_alive(true);
    let svc_app = app.clone();
    let result = if plane == Plane::Data {
        let svc = service_fn(move |req| {
            let app = svc_app.clone();
            let peer = peer.clone();
            async move { Ok::<_, Infallible>(crate::gateway::handle(app, req, peer).await) }
        });
        watcher.watch(builder.serve_connection(io, svc)).await
    } else {
        let svc = service_fn(move |req| {
            let app = svc_app.clone();
            async move { Ok::<_, Infallible>(crate::admin::handle(app, req).await) }
        });
        watcher.watch(builder.serve_connection(io, svc)).await
    };
    if let Err(e) = result {
        count_conn_error(app, &e);
    }
}

fn count_conn_error(app: &App, e: &hyper::Error) {
    let kind = if e.is_parse_too_large() {
        "header_too_large"
    } else if e.is_parse() {
        "bad_request"
    } else if e.is_timeout() {
        "header_timeout"
    } else if e.is_incomplete_message() {
        "incomplete"
    } else {
        "io"
    };
    tracing::debug!(kind, "connection ended with an error");
    app.metrics.connection_error(kind);
}
