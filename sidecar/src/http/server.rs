//! The HTTP server loop (hyper HTTP/1.1 under the axum router), with the limits a pre-auth
//! client must not get around:
//!
//! - **Header read timeout** ([`ServerLimits::header_read_timeout`], hyper's
//!   `http1::Builder::header_read_timeout`): a connection whose request head is not complete in
//!   time is closed, whether it sent half a request or nothing (an idle keep-alive connection
//!   waiting for its next request counts the same).
//! - **Connection cap** ([`ServerLimits::max_connections`]): beyond it no connection is accepted
//!   (they wait in the kernel's backlog) until one closes, so idle sockets cannot exhaust the
//!   file descriptors that codex children need. Accept errors (`EMFILE`) are logged and retried
//!   after a short pause instead of spinning.
//! - **Bounded drain** ([`ServerLimits::drain`]): after the shutdown signal no connection is
//!   accepted, open ones are asked to finish (long-polls and event streams end on the sidecar's
//!   own shutdown signal), and whatever is still open after the drain time is dropped, so a
//!   stalled client cannot keep the sidecar from stopping within Kubernetes' grace period.
//! - **Write stall timeout** ([`ServerLimits::write_timeout`], `tokio-io-timeout` on the
//!   socket): a write that makes no progress for that long (the client stopped reading, for
//!   instance an event stream it no longer consumes, and the socket buffers are full) fails, and
//!   the connection is closed, so a stalled reader holds neither a connection slot nor its
//!   stream's task for ever. Nothing else waits on that connection meanwhile.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Default [`ServerLimits::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ServerLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default [`ServerLimits::drain`].
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);
/// Default [`ServerLimits::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits of the server loop.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Longest time from the start of a connection (or the end of its previous response) to
    /// the end of a request's head.
    pub header_read_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Longest wait for open connections after the shutdown signal.
    pub drain: Duration,
    /// Longest time a write to a client may make no progress before its connection is closed.
    pub write_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            drain: DEFAULT_DRAIN,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains for at most
/// `limits.drain`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE/ENFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_timeout));
        let stream = Box::pin(stream);
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|r: hyper::Request<Incoming>| r.map(Body::new)),
        );
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain) => {
            tracing::warn!(
                drain_secs = limits.drain.as_secs(),
                "connections still open after the drain time: closing them"
            );
        }
    }
}
