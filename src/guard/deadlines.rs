//! Time limits on a request once its headers are in: its body must arrive within
//! `BODY_READ_TIMEOUT_SECONDS` (else 408: the client is slow) and its answer must be ready within
//! `REQUEST_TIMEOUT_SECONDS` (else 503 + `Retry-After`: the gateway is slow; a status request
//! asking to `?wait=` gets that wait on top). The handler is
//! dropped on a timeout, as when a client hangs up, so handlers are already cancel-safe; a
//! submission cut off this way may still have been stored, and its resubmission is idempotent.
//! (Slow headers are the server's business: see [`super::server`].)

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;

use super::Guard;
use crate::http::ApiError;

/// A request body that fails once its deadline passes, and says so through `expired`.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    expired: Arc<AtomicBool>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "request body not received in time");
            return Poll::Ready(Some(Err(axum::Error::new(late))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware around the whole router: the body deadline and the request timeout.
pub async fn deadlines(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let (body_timeout, request_timeout) = guard.timeouts();
    let request_timeout = request_timeout + asked_wait(&request, guard.wait_max());
    let expired = Arc::new(AtomicBool::new(false));
    // A request without a body (most GETs) needs no timer.
    let request = if request.body().is_end_stream() {
        request
    } else {
        let expired = expired.clone();
        request.map(|inner| {
            Body::new(DeadlineBody { inner, deadline: Box::pin(tokio::time::sleep(body_timeout)), expired })
        })
    };
    let answer = tokio::time::timeout(request_timeout, next.run(request)).await;
    match answer {
        // However the handler answered a body that failed to arrive (400 "could not read the
        // body"), the reason is the client's pace.
        Ok(_) if expired.load(Ordering::Relaxed) => {
            guard.metrics().timed_out("body");
            ApiError::RequestTimeout(format!("the request body did not arrive within {}", seconds(body_timeout)))
                .into_response()
        }
        Ok(response) => response,
        Err(_) => {
            guard.metrics().timed_out("request");
            tracing::warn!(timeout = %seconds(request_timeout), "request not answered in time");
            let message = format!("the request was not answered within {}", seconds(request_timeout));
            ApiError::Overloaded { message, retry_after: Duration::from_secs(1) }.into_response()
        }
    }
}

/// A status request with `?wait=N` waits on purpose (`GET /tasks/{id}/status?wait=`): up to N
/// seconds, at most `STATUS_WAIT_MAX_SECONDS`, on top of the request timeout.
fn asked_wait(request: &Request, max: Duration) -> Duration {
    let uri = request.uri();
    if !uri.path().ends_with("/status") {
        return Duration::ZERO;
    }
    let pairs = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes());
    let wait = pairs.filter(|(name, _)| name == "wait").find_map(|(_, v)| v.parse::<f64>().ok());
    wait.filter(|s| s.is_finite() && *s > 0.0)
        .map_or(Duration::ZERO, |s| Duration::from_secs_f64(s.min(max.as_secs_f64())))
}

fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}
