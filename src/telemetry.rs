//! Tracing set-up: JSON lines for machines or pretty text for people, filtered by `LOG_LEVEL`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, Settings};

/// Installs the global subscriber. Call once, first thing.
pub fn init(settings: &Settings) {
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match settings.log_format {
        // The whole span list: a line logged deep inside (a store call, a Camunda call) still
        // carries the task_id and trace_id of the delivery or request it belongs to.
        LogFormat::Json => registry.with(fmt::layer().json().with_current_span(true).with_span_list(true)).init(),
        LogFormat::Pretty => registry.with(fmt::layer().compact()).init(),
    }
}
