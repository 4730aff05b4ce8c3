//! Tracing set-up: JSON lines for machines or pretty text for people, filtered by `LOG_LEVEL`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, Settings};

/// Installs the global subscriber. Call once, first thing.
pub fn init(settings: &Settings) {
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match settings.log_format {
        LogFormat::Json => registry.with(fmt::layer().json().with_current_span(true).with_span_list(false)).init(),
        LogFormat::Pretty => registry.with(fmt::layer().compact()).init(),
    }
}
