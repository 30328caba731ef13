//! Serving the router over TCP with the limits `axum::serve` leaves out: hyper's deadline for
//! a request's headers (it needs a timer, which `axum::serve` does not give it), and the
//! request body read whole, bounded and on a deadline, before a handler sees it.

use std::future::Future;
use std::pin::pin;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::Listener;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body as _;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::{BODY_BYTES_MAX, BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, error};

/// Serves `router` on `listener` (HTTP/1.1) until `shutdown` completes, then takes no more
/// connections and waits until the open ones have finished their requests; the caller bounds
/// that wait (a subscription never finishes).
pub async fn serve(
    mut listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let connections = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        // axum's `Listener::accept` retries a failed accept (after a pause when the process
        // is out of file descriptors), so it only ever yields a connection.
        let (stream, remote) = tokio::select! {
            accepted = Listener::accept(&mut listener) => accepted,
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let Some(acceptor) = &tls else {
            let connection =
                connections.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                // A client that was cut off or went away; nothing for the node to act on.
                if let Err(problem) = connection.await {
                    debug!(%remote, %problem, "http connection ended with an error");
                }
            });
            continue;
        };
        // The handshake has the header deadline too: a client that connects and says nothing
        // holds a task only that long.
        let handshake = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream));
        let watcher = connections.watcher();
        tokio::spawn(async move {
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(problem)) => {
                    debug!(%remote, %problem, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
            if let Err(problem) = connection.await {
                debug!(%remote, %problem, "https connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}

/// Middleware that reads a request's body whole before the route sees it (every body this
/// API takes is one small command): a declared length over `BODY_BYTES_MAX` is refused at
/// once without reading (413), as is a body that grows past it while read; a body not
/// complete within `BODY_READ_TIMEOUT` gets 408. The rest of a refused body is never read,
/// so hyper closes the connection after the answer.
pub async fn read_body(request: Request, next: Next) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > BODY_BYTES_MAX as u64) {
        return body_too_large();
    }
    let (parts, body) = request.into_parts();
    let collected = Limited::new(body, BODY_BYTES_MAX).collect();
    match tokio::time::timeout(BODY_READ_TIMEOUT, collected).await {
        Ok(Ok(collected)) => {
            let body = Body::from(collected.to_bytes());
            next.run(Request::from_parts(parts, body)).await
        }
        Ok(Err(problem)) if problem.is::<LengthLimitError>() => body_too_large(),
        Ok(Err(problem)) => error(
            StatusCode::BAD_REQUEST,
            format!("the request body could not be read: {problem}"),
        ),
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s of the headers",
                BODY_READ_TIMEOUT.as_secs()
            ),
        ),
    }
}

fn body_too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is over {BODY_BYTES_MAX} bytes"),
    )
}
