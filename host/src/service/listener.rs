//! The service's HTTP listener. Unlike `axum::serve` it bounds what a
//! client can hold: at most `max_connections` open connections (one more
//! is closed at once, so the process keeps file descriptors for its
//! journals and its own requests), a deadline for a request's headers and
//! one for its body, and on stop it closes idle connections at once and
//! cuts the others after the drain deadline. Each request carries its
//! client's address (`ConnectInfo`) for the logs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tower::ServiceExt;

/// What the listener allows a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    pub max_connections: usize,
    /// From the connection's first byte (or the end of the last request)
    /// to the end of a request's headers.
    pub header_deadline: Duration,
    /// From the end of the headers to the end of the body.
    pub body_deadline: Duration,
    /// How long connections still busy may take after the stop.
    pub drain_deadline: Duration,
}

/// Serves `router` on `listener` until `stop` completes, then closes
/// every connection within the drain deadline.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    stop: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing, closing_seen) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut refused: u64 = 0;
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: let some close.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut stop => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    client = %peer,
                    "{refused} connections closed at once so far: {} are open (max_connections)",
                    limits.max_connections
                );
            }
            drop(stream);
            continue;
        };
        let router = router.clone();
        let mut closing_seen = closing_seen.clone();
        connections.spawn(async move {
            let _permit = permit;
            let body_deadline = limits.body_deadline;
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let mut request =
                    request.map(|body| Body::new(DeadlineBody::new(body, body_deadline)));
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_deadline)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let stopped = async move {
                let _ = closing_seen.wait_for(|closing| *closing).await;
            };
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopped => {
                    // Idle: closed now; busy: closed after its response.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let _ = closing.send(true);
    let deadline = tokio::time::sleep(limits.drain_deadline);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() { return },
            () = &mut deadline => {
                tracing::warn!(
                    "{} connections still open {:?} after the stop: closed",
                    connections.len(),
                    limits.drain_deadline
                );
                connections.shutdown().await;
                return;
            }
        }
    }
}

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body did not arrive within {0:?}")]
    Deadline(Duration),
    #[error(transparent)]
    Read(#[from] hyper::Error),
}

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    after: Duration,
}

impl DeadlineBody {
    fn new(inner: Incoming, after: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(after)),
            after,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(BodyError::from)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyError::Deadline(self.after))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
