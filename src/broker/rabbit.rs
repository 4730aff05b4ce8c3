//! RabbitMQ through lapin: the handle the rest of the gateway holds. It ties the publisher (a
//! connection of its own) and the consumers (one shared connection, a channel per queue, each
//! queue supervised on its own) together, starts both, and stops them in order: consumers first,
//! so the deliveries in hand are acked, then the publisher. The URL (which may hold a password)
//! is never logged.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use lapin::tcp::OwnedTLSConfig;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Broker, ConsumerPolicy, ConsumerStates, DeadLetterHandler, DeliveryHandler, PublishError,
    connection::Endpoint,
    consumer::{self, Board, Ctx, DEAD_LETTERS},
    publisher::Publisher,
    topic::{Sink, TopicConsumer},
    topology::Topology,
};
use crate::{config::Secret, metrics::Metrics};

/// A topic to consume, with its prefetch (the number of its messages in flight at once).
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub topic: String,
    pub prefetch: u16,
}

/// What a process consumes: its topics (none in `api` mode), where their messages go, and the
/// dead-letter queue's recorder (consumed only where topics are).
pub struct ConsumerSet {
    pub topics: Vec<ConsumerSpec>,
    pub handler: Arc<dyn DeliveryHandler>,
    pub dead_letters: Option<Arc<dyn DeadLetterHandler>>,
    pub metrics: Metrics,
}

/// Dead letters being recorded at once.
const DEAD_LETTER_PREFETCH: u16 = 16;

struct Inner {
    endpoint: Arc<Endpoint>,
    publisher: Arc<Publisher>,
    board: Arc<Board>,
    policy: ConsumerPolicy,
}

#[derive(Clone)]
pub struct RabbitBroker {
    inner: Arc<Inner>,
}

impl RabbitBroker {
    /// `topics` are declared (queue + binding) on every (re)connect, consumed or not, so a
    /// publish is routable even from an API-only process.
    pub fn new(url: Secret, topology: Topology, topics: Vec<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                endpoint: Arc::new(Endpoint { url, tls: OwnedTLSConfig::default() }),
                publisher: Arc::new(Publisher::new(topology, topics)),
                board: Arc::default(),
                policy: ConsumerPolicy::default(),
            }),
        }
    }

    pub fn topology(&self) -> &Topology {
        self.inner.publisher.topology()
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("a broker is configured when new, before any clone")
    }

    /// The TLS settings `amqps://` connections use (`crate::tls::amqp_tls_config`).
    pub fn with_tls(mut self, tls: OwnedTLSConfig) -> Self {
        let endpoint = &mut self.inner_mut().endpoint;
        Arc::get_mut(endpoint).expect("the endpoint is shared only once the broker runs").tls = tls;
        self
    }

    /// How consumers are retried (`ConsumerPolicy`).
    pub fn with_policy(mut self, policy: ConsumerPolicy) -> Self {
        self.inner_mut().policy = policy;
        self
    }

    /// For `amqps://`: one connection attempt, so that a broker whose certificate is not trusted
    /// (or that refuses ours) stops start-up with the reason. A broker that cannot be reached is
    /// not an error here: the supervisors keep trying, and tasks are accepted meanwhile.
    pub async fn check_tls(&self) -> Result<(), String> {
        self.inner.endpoint.check_tls().await
    }

    /// Publishes and consumes until `cancel` fires. Then consumers stop taking messages, those
    /// in hand finish (at most `grace`) and are acked, and the publisher closes last.
    pub async fn run(self, set: ConsumerSet, cancel: CancellationToken, grace: Duration) {
        let inner = &self.inner;
        let publisher_stop = CancellationToken::new();
        let publishing = tokio::spawn(inner.publisher.clone().run(inner.endpoint.clone(), publisher_stop.clone()));
        inner.board.attach(set.metrics);
        let topology = self.topology().clone();
        let mut consumers: Vec<TopicConsumer> = set
            .topics
            .iter()
            .map(|spec| TopicConsumer {
                name: spec.topic.clone(),
                queue: topology.queue(&spec.topic),
                topic: Some(spec.topic.clone()),
                prefetch: spec.prefetch,
                sink: Sink::Tasks(set.handler.clone()),
            })
            .collect();
        if let Some(recorder) = set.dead_letters.filter(|_| !consumers.is_empty()) {
            consumers.push(TopicConsumer {
                name: DEAD_LETTERS.to_owned(),
                queue: topology.dead_queue(),
                topic: None,
                prefetch: DEAD_LETTER_PREFETCH,
                sink: Sink::DeadLetters(recorder),
            });
        }
        let ctx = Arc::new(Ctx {
            endpoint: inner.endpoint.clone(),
            topology,
            policy: inner.policy,
            board: inner.board.clone(),
            tracker: TaskTracker::new(),
            stop: cancel.clone(),
        });
        consumer::run(ctx, consumers, grace).await;
        // With nothing to consume `consumer::run` returns at once; publishing goes on until the end.
        cancel.cancelled().await;
        publisher_stop.cancel();
        let _ = publishing.await;
    }
}

#[async_trait]
impl Broker for RabbitBroker {
    async fn publish(
        &self,
        topic: &str,
        body: &[u8],
        attempt: u32,
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        self.inner.publisher.publish(topic, body, attempt, traceparent).await
    }

    fn is_connected(&self) -> bool {
        self.inner.publisher.is_ready()
    }

    fn consumers(&self) -> ConsumerStates {
        self.inner.board.snapshot()
    }

    async fn queue_depth(&self, topic: &str) -> Option<super::QueueDepth> {
        self.inner.publisher.queue_depth(topic).await
    }
}
