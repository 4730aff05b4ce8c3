//! Tracing set-up: JSON lines for machines or pretty text for people, filtered by `LOG_LEVEL`,
//! and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the same spans exported over OTLP/HTTP. Spans
//! about a task join the task's trace (`trace::join`), so a collector shows one trace per task.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, runtime, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::config::{LogFormat, OtlpSettings, Settings};

/// What must outlive the program's work: the span exporter, flushed by [`Telemetry::shutdown`].
#[must_use = "spans still queued are lost unless shutdown() flushes them"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still queued (bounded by the exporter's own timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("span export did not finish: {error}");
        }
    }
}

/// The OTLP exporter and its provider; `None` (and a line on stderr) if it cannot be built.
fn otlp_provider(otlp: &OtlpSettings) -> Option<SdkTracerProvider> {
    let protocol = if otlp.json { Protocol::HttpJson } else { Protocol::HttpBinary };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(format!("{}/v1/traces", otlp.endpoint))
        .build();
    let exporter = match exporter {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT: span export disabled: {error}");
            return None;
        }
    };
    // On the tokio runtime: the exporter's HTTP client (hyper) needs it, which the SDK's own
    // thread-based batch processor would not give it.
    let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        runtime::Tokio,
    )
    .build();
    let resource = Resource::builder().with_service_name(otlp.service_name.clone()).build();
    Some(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build())
}

/// Installs the global subscriber. Call once, first thing, inside the tokio runtime.
pub fn init(settings: &Settings) -> Telemetry {
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = settings.otlp.as_ref().and_then(otlp_provider);
    let export =
        provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("worker-api-gateway")).boxed());
    let registry = tracing_subscriber::registry().with(filter).with(export);
    match settings.log_format {
        // The whole span list: a line logged deep inside (a store call, a Camunda call) still
        // carries the task_id and trace_id of the delivery or request it belongs to.
        LogFormat::Json => registry.with(fmt::layer().json().with_current_span(true).with_span_list(true)).init(),
        LogFormat::Pretty => registry.with(fmt::layer().compact()).init(),
    }
    if let Some(otlp) = &settings.otlp {
        tracing::info!(endpoint = %otlp.endpoint, json = otlp.json, "exporting spans over OTLP/HTTP");
    }
    Telemetry { provider }
}
