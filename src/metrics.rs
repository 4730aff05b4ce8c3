//! Prometheus metrics: one registry, typed families, rendered as text at `/metrics`. Labels are
//! topic and outcome only: never task ids (unbounded cardinality) nor variables.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubmitLabels {
    pub topic: String,
    /// "created" or "existing"
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub topic: String,
    /// "succeeded", "retrying" or "failed"
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportLabels {
    pub topic: String,
    /// "reported", "completed_elsewhere", "report_failed" or "retry"
    pub outcome: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0])
}

/// Cheap to clone: every field is a handle on shared state.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub submits: Family<SubmitLabels, Counter>,
    pub outcomes: Family<OutcomeLabels, Counter>,
    pub handler_duration: Family<TopicLabel, Histogram, fn() -> Histogram>,
    pub in_flight: Family<TopicLabel, Gauge>,
    pub publish_failures: Family<TopicLabel, Counter>,
    /// Tasks per `insert_many` the intake wrote (group commit at work).
    pub intake_batch_size: Histogram,
    /// How long the store took to answer one intake batch.
    pub intake_batch_seconds: Histogram,
    /// What became of each attempt to report a final outcome to Camunda.
    pub camunda_reports: Family<ReportLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let submits = Family::<SubmitLabels, Counter>::default();
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        let handler_duration =
            Family::<TopicLabel, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        let in_flight = Family::<TopicLabel, Gauge>::default();
        let publish_failures = Family::<TopicLabel, Counter>::default();
        let intake_batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]);
        let intake_batch_seconds = duration_histogram();
        let camunda_reports = Family::<ReportLabels, Counter>::default();
        registry.register("task_submits", "Accepted task submissions", submits.clone());
        registry.register("task_outcomes", "Handler attempt outcomes", outcomes.clone());
        registry.register("handler_duration_seconds", "Handler run time per attempt", handler_duration.clone());
        registry.register("tasks_in_flight", "Handlers running now", in_flight.clone());
        registry.register("publish_failures", "Publishes not confirmed by the broker", publish_failures.clone());
        registry.register("intake_batch_size", "Tasks stored per intake batch", intake_batch_size.clone());
        registry.register("intake_batch_seconds", "Store time per intake batch", intake_batch_seconds.clone());
        registry.register("camunda_reports", "Attempts to report a final outcome to Camunda", camunda_reports.clone());
        Self {
            registry: Arc::new(registry),
            submits,
            outcomes,
            handler_duration,
            in_flight,
            publish_failures,
            intake_batch_size,
            intake_batch_seconds,
            camunda_reports,
        }
    }

    /// Counts one accepted submission of `topic`; `result` is `created` or `existing`.
    pub fn submitted(&self, topic: &str, result: &str) {
        self.submits.get_or_create(&SubmitLabels { topic: topic.to_owned(), result: result.to_owned() }).inc();
    }

    pub fn topic(topic: &str) -> TopicLabel {
        TopicLabel { topic: topic.to_owned() }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
