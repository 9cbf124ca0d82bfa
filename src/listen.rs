//! Sockets: the data-plane and admin listeners, HTTP/1.1 with bounded
//! headers (size, count, read time), a connection limit, and graceful
//! drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::App;
use crate::metrics::KindLabels;

/// Bound listeners, ready to serve.
pub struct Listeners {
    pub data: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(app: &App) -> std::io::Result<Listeners> {
        let data = TcpListener::bind(app.config.server.listen).await?;
        let admin = TcpListener::bind(app.config.server.admin_listen).await?;
        Ok(Listeners { data, admin })
    }

    pub fn data_addr(&self) -> std::io::Result<SocketAddr> {
        self.data.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }
}

/// Serves both planes until `shutdown` resolves, then stops accepting and
/// gives in-flight requests `shutdown_grace_ms` to finish.
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
    let grace = app.config.server.shutdown_grace;
    match Arc::try_unwrap(graceful) {
        Ok(g) => {
            if tokio::time::timeout(grace, g.shutdown()).await.is_err() {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "in-flight requests still running after the grace period; exiting"
                );
            }
        }
        Err(_) => tracing::warn!("connection watcher still shared; exiting without drain"),
    }
    // The last word of this run's chain: a signed checkpoint (when configured).
    if !app.audit.checkpoint().await {
        tracing::error!("final audit checkpoint could not be written");
    }
}

#[derive(Clone, Copy)]
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
    let slots = Arc::new(Semaphore::new(app.config.server.max_connections));
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
            app.metrics
                .connection_errors
                .get_or_create(&KindLabels {
                    kind: "connection_limit",
                })
                .inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(crate::framing::Guarded::new(
            stream,
            app.config.server.max_header_bytes,
        ));
        let server = &app.config.server;
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(server.header_read_timeout)
            .max_buf_size(server.max_header_bytes)
            .max_headers(server.max_headers)
            .keep_alive(true);
        let conn_app = app.clone();
        let conn = match plane {
            Plane::Data => {
                let svc = service_fn(move |req| {
                    let app = conn_app.clone();
                    async move { Ok::<_, Infallible>(crate::gateway::handle(app, req, peer).await) }
                });
                let c = builder.serve_connection(io, svc);
                let c = graceful.watch(c);
                let app = app.clone();
                tokio::spawn(async move {
                    if let Err(e) = c.await {
                        count_conn_error(&app, &e);
                    }
                    drop(slot);
                })
            }
            Plane::Admin => {
                let svc = service_fn(move |req| {
                    let app = conn_app.clone();
                    async move { Ok::<_, Infallible>(crate::admin::handle(app, req).await) }
                });
                let c = graceful.watch(builder.serve_connection(io, svc));
                tokio::spawn(async move {
                    let _ = c.await;
                    drop(slot);
                })
            }
        };
        drop(conn);
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
    app.metrics
        .connection_errors
        .get_or_create(&KindLabels { kind })
        .inc();
}
