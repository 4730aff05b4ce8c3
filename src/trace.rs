//! One trace per task (W3C Trace Context). A request's `traceparent` is accepted (or a new trace
//! begun) at the edge, stored on the task, and carried from there: in the AMQP message's
//! headers, around the handler's run and in the `http` handler's request, and on every call to
//! Camunda about the task. Outgoing HTTP calls read the trace in scope ([`scope`], [`current`]),
//! so no signature between the edge and the wire has to thread it through. `X-Request-Id` is
//! accepted or made up, and returned.
//!
//! It owns no exporter: spans go wherever the tracing subscriber sends them (`telemetry`).

use std::{fmt, future::Future};

use axum::{
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use rand::Rng;
use tracing::Instrument;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest `X-Request-Id` taken as given; a longer or odd one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// A position in a trace: the trace, and the span that the next hop is a child of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits, never all zero.
    pub trace_id: String,
    /// 16 lower-case hex digits, never all zero.
    pub span_id: String,
    pub sampled: bool,
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    loop {
        let hex: String = (0..bytes).map(|_| format!("{:02x}", rng.random::<u8>())).collect();
        if hex.bytes().any(|b| b != b'0') {
            return hex;
        }
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

impl TraceContext {
    /// A new trace (a request without `traceparent`, a task pulled from Camunda).
    pub fn root() -> Self {
        Self { trace_id: random_hex(16), span_id: random_hex(8), sampled: true }
    }

    /// Parses a `traceparent` header (version 00, or a later one read the same way, as the
    /// specification asks); `None` for anything malformed, which then starts a new trace.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let version_ok = version.len() == 2 && version != "ff" && u8::from_str_radix(version, 16).is_ok();
        if !version_ok || (version == "00" && parts.next().is_some()) {
            return None;
        }
        if !is_hex(trace_id, 32) || !is_hex(span_id, 16) || flags.len() != 2 {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self { trace_id: trace_id.to_owned(), span_id: span_id.to_owned(), sampled: flags & 1 == 1 })
    }

    /// A new span in the same trace: what a hop sends on.
    pub fn child(&self) -> Self {
        Self { span_id: random_hex(8), ..self.clone() }
    }

    /// The context of a stored task: its trace, with a fresh span for this hop.
    pub fn of_task(trace_id: Option<&str>) -> Option<Self> {
        let trace_id = trace_id.filter(|t| is_hex(t, 32))?;
        Some(Self { trace_id: trace_id.to_owned(), span_id: random_hex(8), sampled: true })
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", self.trace_id, self.span_id, u8::from(self.sampled))
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `work` with `trace` as the trace in scope.
pub async fn scope<F: Future>(trace: TraceContext, work: F) -> F::Output {
    CURRENT.scope(trace, work).await
}

/// Runs `work` in the trace of a stored task (see [`TraceContext::of_task`]), if it has one,
/// inside a span `name` that belongs to that trace.
pub async fn within_task<F: Future>(name: &'static str, trace_id: Option<&str>, work: F) -> F::Output {
    match TraceContext::of_task(trace_id) {
        Some(trace) => {
            let span = tracing::info_span!("task", step = name, trace_id = %trace.trace_id);
            join(&span, &trace);
            scope(trace, work).instrument(span).await
        }
        None => work.await,
    }
}

/// Makes a new `span` part of `trace` for the span exporter: its parent is `trace`'s span (a
/// no-op when spans are not exported).
pub fn join(span: &tracing::Span, trace: &TraceContext) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(&trace.trace_id), SpanId::from_hex(&trace.span_id)) else {
        return;
    };
    let flags = if trace.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
    let parent = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    // Refused only when the span was started already, or when nothing exports spans.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
}

/// The trace in scope, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Adds `traceparent` for the trace in scope (as a child span) to an outgoing request.
pub fn propagate(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match current() {
        Some(trace) => request.header(TRACEPARENT, trace.child().to_string()),
        None => request,
    }
}

/// The request's `X-Request-Id` if it is a sensible one, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| random_hex(16), str::to_owned)
}

/// Middleware: every request gets a trace (the caller's, or a new one), a request id, and a
/// span that carries both; the response carries `X-Request-Id` and the server span's
/// `traceparent`.
pub async fn edge(mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let id = request_id(headers);
    let caller = headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(TraceContext::parse);
    let trace = caller.as_ref().map_or_else(TraceContext::root, TraceContext::child);
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = %id,
        trace_id = %trace.trace_id,
    );
    if let Some(caller) = &caller {
        join(&span, caller);
    }
    request.extensions_mut().insert(trace.clone());
    let mut response = scope(trace.clone(), next.run(request)).instrument(span).await;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(&trace.to_string()) {
        headers.insert(TRACEPARENT, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_kept_and_a_child_shares_its_trace() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceContext::parse(header).expect("valid");
        assert_eq!(parsed.to_string(), header);
        let child = parsed.child();
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_ne!(child.span_id, parsed.span_id);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version may add fields; the first four are read.
        assert!(TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x").is_some());
    }

    #[test]
    fn a_new_root_is_well_formed() {
        let root = TraceContext::root();
        assert_eq!(TraceContext::parse(&root.to_string()), Some(root));
    }

    #[test]
    fn odd_request_ids_are_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
    }
}
