//! What is let in: the per-caller rate limit on every matched route but `/live` and `/health`
//! (429 + `Retry-After`), then, for `POST /tasks/submit`, load shedding (503 + `Retry-After`)
//! before the body is read, so a shed submission never reaches the intake's queue.
//!
//! It runs inside the auth layer and reads the [`Caller`] that layer stored; without one (a
//! router built without the auth layer) the caller is anonymous, by its peer address.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, MatchedPath, Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{
    GuardSettings,
    buckets::{BucketKey, Buckets},
};
use crate::{
    auth::{Caller, Rate},
    http::ApiError,
    metrics::Metrics,
};

/// The guard's state, shared by every request; cheap to clone.
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

struct Inner {
    settings: GuardSettings,
    /// `SUBMIT_BATCH_MAX`: what "a full batch waiting" means.
    batch_max: usize,
    /// `STATUS_WAIT_MAX_SECONDS`: the longest wait a request may ask for (`?wait=`).
    wait_max: Duration,
    buckets: Buckets,
    metrics: Metrics,
}

/// Why a submission was shed (the `reason` label of `gateway_shed_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// `SHED_BACKLOG` submissions are already admitted and unanswered.
    Backlog,
    /// The store's recent batch time is over `SHED_STORE_LATENCY_MS` and a full batch waits.
    StoreLatency,
}

impl Shed {
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::Backlog => "backlog",
            Shed::StoreLatency => "store_latency",
        }
    }
}

/// Whether one more submission may be admitted, with `in_flight` already admitted and the
/// store's recent batch time `latency`.
pub fn shed(settings: &GuardSettings, batch_max: usize, in_flight: usize, latency: Duration) -> Option<Shed> {
    if in_flight >= settings.shed_backlog {
        Some(Shed::Backlog)
    } else if latency > settings.shed_store_latency && in_flight >= batch_max {
        // A slow store still gets one batch at a time, so its latency keeps being measured and
        // light traffic is never refused for it.
        Some(Shed::StoreLatency)
    } else {
        None
    }
}

/// Seconds for `Retry-After`: how long the admitted backlog should take to drain at the store's
/// recent pace (whole batches), at least 1 and at most 30.
pub fn drain_time(batch_max: usize, in_flight: usize, latency: Duration) -> Duration {
    let batches = in_flight.div_ceil(batch_max.max(1)).max(1) as u32;
    (latency * batches).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// One admitted submission; the backlog gauge counts it until it is answered (or cancelled).
struct Admitted(Metrics);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.submits_admitted.dec();
    }
}

impl Guard {
    pub fn new(settings: &crate::config::Settings, metrics: Metrics) -> Self {
        let guard = &settings.guard;
        Self {
            inner: Arc::new(Inner {
                settings: guard.clone(),
                batch_max: settings.submit_batch_max,
                wait_max: settings.events.status_wait_max,
                buckets: Buckets::new(guard.max_buckets),
                metrics,
            }),
        }
    }

    /// The body read timeout and the request timeout.
    pub(super) fn timeouts(&self) -> (Duration, Duration) {
        (self.inner.settings.body_read_timeout, self.inner.settings.request_timeout)
    }

    /// The longest wait a request may ask for on top of the request timeout.
    pub(super) fn wait_max(&self) -> Duration {
        self.inner.wait_max
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The bucket a request draws from, its rate, and the caller's name for the metric.
    fn bucket(&self, request: &Request) -> (BucketKey, Rate, String) {
        let settings = &self.inner.settings;
        let caller = request.extensions().get::<Caller>();
        if let Some(Caller { key_id: Some(id), rate, .. }) = caller {
            return (BucketKey::Key(id.clone()), rate.unwrap_or(settings.key_rate), id.clone());
        }
        let addr = caller
            .and_then(|c| c.addr)
            .or_else(|| request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()));
        let key = addr.map_or(BucketKey::Unknown, BucketKey::addr);
        (key, settings.anonymous_rate, "anonymous".to_owned())
    }

    fn admit_submit(&self) -> Result<Admitted, ApiError> {
        let Inner { settings, batch_max, metrics, .. } = &*self.inner;
        let before = metrics.submits_admitted.inc();
        let in_flight = usize::try_from(before).unwrap_or(0);
        let latency = Duration::from_secs_f64(metrics.intake_batch_seconds_recent.get().max(0.0));
        let admitted = Admitted(metrics.clone());
        match shed(settings, *batch_max, in_flight, latency) {
            None => Ok(admitted),
            Some(reason) => {
                drop(admitted);
                metrics.shed(reason.as_str());
                Err(ApiError::Overloaded {
                    message: "the gateway is taking in all the submissions it can; retry later".into(),
                    retry_after: drain_time(*batch_max, in_flight, latency),
                })
            }
        }
    }
}

/// Middleware for matched routes, inside the auth layer: the caller's rate limit, then load
/// shedding for submissions.
pub async fn admit(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let path = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let path = path.as_deref().unwrap_or_else(|| request.uri().path());
    if path == "/live" || path == "/health" {
        return next.run(request).await;
    }
    let (key, rate, name) = guard.bucket(&request);
    if let Err(wait) = guard.inner.buckets.take(key, rate, Instant::now()) {
        guard.inner.metrics.rate_limited(&name);
        tracing::debug!(caller = %name, "rate limited");
        let message = format!("over the rate limit of {} requests a second (burst {})", rate.per_second, rate.burst);
        return ApiError::TooManyRequests { message, retry_after: wait }.into_response();
    }
    if request.method() == Method::POST && path == "/tasks/submit" {
        let admitted = match guard.admit_submit() {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal.into_response(),
        };
        let response = next.run(request).await;
        drop(admitted);
        return response;
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submissions_are_shed_past_the_backlog_or_past_one_batch_when_the_store_is_slow() {
        let s =
            GuardSettings { shed_backlog: 256, shed_store_latency: Duration::from_millis(500), ..Default::default() };
        let fast = Duration::from_millis(40);
        let slow = Duration::from_millis(800);
        assert_eq!(shed(&s, 100, 255, fast), None);
        assert_eq!(shed(&s, 100, 256, fast), Some(Shed::Backlog));
        assert_eq!(shed(&s, 100, 99, slow), None, "a slow store still gets one batch");
        assert_eq!(shed(&s, 100, 100, slow), Some(Shed::StoreLatency));
    }

    #[test]
    fn retry_after_is_the_backlogs_drain_time_between_one_and_thirty_seconds() {
        assert_eq!(drain_time(100, 256, Duration::from_millis(40)), Duration::from_secs(1));
        assert_eq!(drain_time(100, 256, Duration::from_secs(2)), Duration::from_secs(6));
        assert_eq!(drain_time(100, 10_000, Duration::from_secs(2)), Duration::from_secs(30));
    }
}
