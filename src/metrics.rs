//! Prometheus metrics: one registry, typed families, rendered as text at `/metrics`. Labels are
//! topic and outcome only: never task ids (unbounded cardinality) nor variables.

mod exposition;

pub use exposition::Exposition;

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

/// Who was rate limited: a key id (bounded by the key file) or `anonymous`; never an address.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallerLabel {
    pub caller: String,
}

/// Why a submission was shed (`backlog`, `store_latency`) or which timeout fired (`body`,
/// `request`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
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

/// A report state the gauges count: `pending` (owed) or `report_failed` (given up).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportStateLabel {
    pub state: String,
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
    /// Reports owed to Camunda (`pending`) and given up (`report_failed`), as the store counts
    /// them every few seconds (`camunda::Reporter`); every replica shows the same store-wide count.
    pub camunda_reports_by_state: Family<ReportStateLabel, Gauge>,
    /// Age of the oldest owed report, from its task's completion (0 when none is owed).
    pub camunda_oldest_pending_report_seconds: Gauge<f64, AtomicU64>,
    /// The intake's recent batch time: an exponentially weighted average (each batch weighs a
    /// fifth), read by load shedding.
    pub intake_batch_seconds_recent: Gauge<f64, AtomicU64>,
    /// Submissions admitted and not yet answered (the backlog load shedding bounds).
    pub submits_admitted: Gauge,
    /// Requests answered 429 (`crate::guard`).
    pub rate_limited: Family<CallerLabel, Counter>,
    /// Submissions answered 503 before they were queued (`crate::guard`).
    pub shed: Family<ReasonLabel, Counter>,
    /// Requests cut off by the body or the request timeout.
    pub timeouts: Family<ReasonLabel, Counter>,
    /// Open HTTP connections.
    pub http_connections: Gauge,
    /// 1 while a topic's queue is being consumed, 0 while its consumer is down (`broker`); the
    /// dead-letter queue's consumer is `topic="_dead_letters"`.
    pub topic_consuming: Family<TopicLabel, Gauge>,
    /// Times a topic's consumer had to be started again (queue deleted, consume failed, channel
    /// or connection closed).
    pub consumer_restarts: Family<TopicLabel, Counter>,
    /// Messages read from the dead-letter queue and recorded, by topic (`unknown` when the
    /// message names no registered topic).
    pub dead_letters: Family<TopicLabel, Counter>,
    /// Tasks whose message the broker lost, made to owe their publish again by the store's
    /// re-send sweep (`resend`), by topic.
    pub republished: Family<TopicLabel, Counter>,
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
        let camunda_reports_by_state = Family::<ReportStateLabel, Gauge>::default();
        let camunda_oldest_pending_report_seconds = Gauge::<f64, AtomicU64>::default();
        let intake_batch_seconds_recent = Gauge::<f64, AtomicU64>::default();
        let submits_admitted = Gauge::default();
        let rate_limited = Family::<CallerLabel, Counter>::default();
        let shed = Family::<ReasonLabel, Counter>::default();
        let timeouts = Family::<ReasonLabel, Counter>::default();
        let http_connections = Gauge::default();
        let topic_consuming = Family::<TopicLabel, Gauge>::default();
        let consumer_restarts = Family::<TopicLabel, Counter>::default();
        let dead_letters = Family::<TopicLabel, Counter>::default();
        let republished = Family::<TopicLabel, Counter>::default();
        registry.register("task_submits", "Accepted task submissions", submits.clone());
        registry.register("task_outcomes", "Handler attempt outcomes", outcomes.clone());
        registry.register("handler_duration_seconds", "Handler run time per attempt", handler_duration.clone());
        registry.register("tasks_in_flight", "Handlers running now", in_flight.clone());
        registry.register("publish_failures", "Publishes not confirmed by the broker", publish_failures.clone());
        registry.register("intake_batch_size", "Tasks stored per intake batch", intake_batch_size.clone());
        registry.register("intake_batch_seconds", "Store time per intake batch", intake_batch_seconds.clone());
        registry.register("camunda_reports", "Attempts to report a final outcome to Camunda", camunda_reports.clone());
        // Not `camunda_reports{state}`: that name is the counter's family already.
        registry.register(
            "camunda_reports_by_state",
            "Reports to Camunda owed (pending) or given up (report_failed)",
            camunda_reports_by_state.clone(),
        );
        registry.register(
            "camunda_oldest_pending_report_seconds",
            "Age of the oldest report owed to Camunda, from its task's completion",
            camunda_oldest_pending_report_seconds.clone(),
        );
        registry.register(
            "intake_batch_seconds_recent",
            "Recent store time per intake batch (weighted average)",
            intake_batch_seconds_recent.clone(),
        );
        registry.register("submits_admitted", "Submissions admitted and not yet answered", submits_admitted.clone());
        registry.register("rate_limited_requests", "Requests refused with 429 by the rate limit", rate_limited.clone());
        registry.register("shed_requests", "Submissions refused with 503 before queueing", shed.clone());
        registry.register("request_timeouts", "Requests cut off by the body or request timeout", timeouts.clone());
        registry.register("http_connections", "Open HTTP connections", http_connections.clone());
        registry.register("topic_consuming", "1 while the topic's queue is consumed, else 0", topic_consuming.clone());
        registry.register("consumer_restarts", "Topic consumers restarted after a failure", consumer_restarts.clone());
        registry.register("dead_letters", "Dead-lettered messages recorded", dead_letters.clone());
        registry.register("republished", "Tasks re-sent because the broker lost their message", republished.clone());
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
            camunda_reports_by_state,
            camunda_oldest_pending_report_seconds,
            intake_batch_seconds_recent,
            submits_admitted,
            rate_limited,
            shed,
            timeouts,
            http_connections,
            topic_consuming,
            consumer_restarts,
            dead_letters,
            republished,
        }
    }

    /// Records one intake batch's store time: the histogram, and the recent average shedding
    /// reads. Only the intake's one writer calls it, so read-then-set does not race.
    pub fn observe_intake_batch(&self, took: std::time::Duration) {
        let seconds = took.as_secs_f64();
        self.intake_batch_seconds.observe(seconds);
        let recent = self.intake_batch_seconds_recent.get();
        self.intake_batch_seconds_recent.set(if recent == 0.0 { seconds } else { recent + (seconds - recent) / 5.0 });
    }

    /// Sets the report gauges from the store's latest count.
    pub fn camunda_report_states(&self, owed: u64, failed: u64, oldest_owed_seconds: f64) {
        for (state, n) in [("pending", owed), ("report_failed", failed)] {
            let gauge = self.camunda_reports_by_state.get_or_create(&ReportStateLabel { state: state.to_owned() });
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.camunda_oldest_pending_report_seconds.set(oldest_owed_seconds);
    }

    /// Counts a request refused by `caller`'s rate limit.
    pub fn rate_limited(&self, caller: &str) {
        self.rate_limited.get_or_create(&CallerLabel { caller: caller.to_owned() }).inc();
    }

    /// Counts a submission shed for `reason`.
    pub fn shed(&self, reason: &str) {
        self.shed.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc();
    }

    /// Counts a request cut off by the `body` or `request` timeout.
    pub fn timed_out(&self, which: &str) {
        self.timeouts.get_or_create(&ReasonLabel { reason: which.to_owned() }).inc();
    }

    /// Counts one accepted submission of `topic`; `result` is `created` or `existing`.
    pub fn submitted(&self, topic: &str, result: &str) {
        self.submits.get_or_create(&SubmitLabels { topic: topic.to_owned(), result: result.to_owned() }).inc();
    }

    /// Sets whether `topic`'s queue is being consumed.
    pub fn topic_consuming(&self, topic: &str, consuming: bool) {
        self.topic_consuming.get_or_create(&Self::topic(topic)).set(i64::from(consuming));
    }

    /// Counts a restart of `topic`'s consumer.
    pub fn consumer_restarted(&self, topic: &str) {
        self.consumer_restarts.get_or_create(&Self::topic(topic)).inc();
    }

    /// Counts a dead letter of `topic` recorded.
    pub fn republished(&self, topic: &str, tasks: u64) {
        self.republished.get_or_create(&Self::topic(topic)).inc_by(tasks);
    }

    pub fn dead_lettered(&self, topic: &str) {
        self.dead_letters.get_or_create(&Self::topic(topic)).inc();
    }

    pub fn topic(topic: &str) -> TopicLabel {
        TopicLabel { topic: topic.to_owned() }
    }

    /// The OpenMetrics text exposition, as the registry writes it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The exposition in `format` (see [`Exposition::negotiate`]).
    pub fn render_as(&self, format: Exposition) -> String {
        match format {
            Exposition::OpenMetrics => self.render(),
            Exposition::Prometheus => exposition::to_prometheus_text(&self.render()),
        }
    }
}
