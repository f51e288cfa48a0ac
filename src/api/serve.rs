//! The HTTP server under the admin API: hyper's HTTP/1 connection with a timer, so a client
//! that never finishes its request headers (one byte a second, say) is cut off after
//! [`HEADER_READ_TIMEOUT`] instead of holding a connection and its task forever; the router adds
//! [`BODY_READ_TIMEOUT`] for the whole body ([`body_deadline`]). `axum::serve` sets no timer,
//! hence no header timeout.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Longest time a client may take to send a request's headers (each request on a kept-alive
/// connection included); then the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time a client may take to send a request's body (at most 64 KiB); then the request
/// fails with 408.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves `router` on `listener` until `stop` is cancelled, then stops accepting and waits for
/// the connections' requests under way to finish (the caller bounds that wait).
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "admin API connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The error a request body gives once [`BODY_READ_TIMEOUT`] has passed (answered with 408).
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}s", BODY_READ_TIMEOUT.as_secs())]
pub struct BodyTimeout;

/// Middleware: the request's body must arrive whole within [`BODY_READ_TIMEOUT`] of the request
/// (a limit on the total, unlike an idle timeout, which a byte now and then would keep resetting).
pub async fn body_deadline(request: Request, next: Next) -> Response {
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    let (parts, body) = request.into_parts();
    let chunks =
        futures_util::stream::unfold(Some(body.into_data_stream()), move |state| async move {
            let mut chunks = state?;
            match tokio::time::timeout_at(deadline, chunks.next()).await {
                Ok(Some(chunk)) => Some((chunk.map_err(axum::BoxError::from), Some(chunks))),
                Ok(None) => None,
                Err(_) => Some((Err(axum::BoxError::from(BodyTimeout)), None)),
            }
        });
    next.run(Request::from_parts(parts, Body::from_stream(chunks)))
        .await
}
