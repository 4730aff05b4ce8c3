//! `OTEL_*`: span export over OTLP/HTTP (`telemetry`), off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set. Only plain `http://` endpoints: a collector next to the gateway.

use std::collections::HashMap;

use super::{ConfigError, Reader};

/// Span export over OTLP/HTTP (`telemetry`), on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL (`http://host:4318`); spans go to
    /// its `/v1/traces`. Plain HTTP: a collector next to the gateway (a sidecar, the node's agent).
    pub endpoint: String,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` (http/protobuf): http/protobuf | http/json.
    pub json: bool,
    /// `OTEL_SERVICE_NAME` (worker-api-gateway): the service the spans belong to.
    pub service_name: String,
}

impl OtlpSettings {
    /// `None` when `OTEL_EXPORTER_OTLP_ENDPOINT` is unset or empty: no export.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Option<Self>, ConfigError> {
        let r = Reader(vars);
        Ok(match r.get("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|s| !s.is_empty()) {
            None => None,
            Some(_) => Some(OtlpSettings {
                endpoint: r.parse_or("OTEL_EXPORTER_OTLP_ENDPOINT", String::new(), |s| {
                    let url = url::Url::parse(s).ok()?;
                    (url.scheme() == "http").then(|| s.trim_end_matches('/').to_owned())
                })?,
                json: r.parse_or("OTEL_EXPORTER_OTLP_PROTOCOL", false, |s| match s {
                    "http/protobuf" => Some(false),
                    "http/json" => Some(true),
                    _ => None,
                })?,
                service_name: r.get("OTEL_SERVICE_NAME").unwrap_or("worker-api-gateway").to_owned(),
            }),
        })
    }
}
