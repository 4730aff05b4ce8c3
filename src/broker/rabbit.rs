//! RabbitMQ through lapin: topology, a confirming publisher, per-topic consumers, and the
//! supervisor that reconnects and redeclares after any connection loss. Consumers ack only after
//! the delivery handler has recorded the outcome. The URL (which may hold a password) is never
//! logged.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
        BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    tcp::OwnedTLSConfig,
    types::{AMQPValue, FieldTable},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Broker, DeliveryHandler, Disposition, PublishError};
use crate::config::Secret;

/// Names derived from the exchange, so several gateways (and parallel tests) share one vhost.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub delivery_limit: u32,
}

impl Topology {
    pub fn routing_key(topic: &str) -> String {
        format!("task.submit.{topic}")
    }
    pub fn queue(&self, topic: &str) -> String {
        format!("{}.task.submit.{topic}", self.exchange)
    }
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.exchange)
    }
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.exchange)
    }
}

/// A topic to consume, with its prefetch (the number of its messages in flight at once).
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub topic: String,
    pub prefetch: u16,
}

struct Inner {
    url: Secret,
    /// For `amqps://` (ignored on `amqp://`): trusted CAs and the client certificate.
    tls: OwnedTLSConfig,
    topology: Topology,
    topics: Vec<String>,
    publisher: RwLock<Option<Channel>>,
    connected: AtomicBool,
    /// RabbitMQ blocked publishers (a resource alarm): a publish would only wait for nothing.
    blocked: AtomicBool,
}

/// How long a publish may wait for its confirm before it counts as unsent (a blocked broker
/// holds confirms back; the relay publishes again later).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest AMQP frame asked for, unless the URL sets `frame_max`. lapin keeps 32 frames of
/// buffer each way per connection, written through at connect: at RabbitMQ's default frame
/// (128 KiB) that is 8 MiB resident, for messages of a few hundred bytes. A larger body is
/// simply split across frames.
const FRAME_MAX: u32 = 16 * 1024;

/// Why a connection could not be opened, and whether TLS was the reason.
struct ConnectFailure {
    message: String,
    tls: bool,
}

impl ConnectFailure {
    fn other(message: impl Into<String>) -> Self {
        Self { message: message.into(), tls: false }
    }
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
                url,
                tls: OwnedTLSConfig::default(),
                topology,
                topics,
                publisher: RwLock::new(None),
                connected: AtomicBool::new(false),
                blocked: AtomicBool::new(false),
            }),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The TLS settings `amqps://` connections use (`crate::tls::amqp_tls_config`).
    pub fn with_tls(mut self, tls: OwnedTLSConfig) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("with_tls is called on a new broker, before any clone");
        inner.tls = tls;
        self
    }

    /// Opens one AMQP connection; its errors name the broker (host:port) and the reason, a failed
    /// TLS handshake's included. Never the URL, which may hold a password.
    async fn connect(&self) -> Result<Connection, ConnectFailure> {
        let props = ConnectionProperties::default().with_connection_name("worker-api-gateway".into());
        let mut uri: lapin::uri::AMQPUri = self
            .inner
            .url
            .expose()
            .parse()
            .map_err(|_| ConnectFailure::other("RABBITMQ_URL is not a valid AMQP URI"))?;
        uri.query.frame_max.get_or_insert(FRAME_MAX);
        let (host, port) = (uri.authority.host.clone(), uri.authority.port);
        let tls = uri.scheme == lapin::uri::AMQPScheme::AMQPS;
        let peer = format!("RabbitMQ at {host}:{port}");
        let runtime = lapin::runtime::default_runtime().map_err(|e| ConnectFailure::other(format!("{peer}: {e}")))?;
        let error = match Connection::connect_uri_with_config(uri, props, self.inner.tls.clone(), runtime).await {
            Ok(conn) => return Ok(conn),
            Err(e) => e,
        };
        if let Some(reason) = crate::tls::tls_cause(&error) {
            return Err(ConnectFailure { message: format!("{peer}: TLS handshake failed: {reason}"), tls: true });
        }
        // Under TLS 1.3 the broker refuses a client certificate after lapin thinks the handshake
        // done, and lapin reports a reset: ask a probe, which reads the broker's alert.
        if tls && error.is_io_error() {
            const AMQP_0_9_1_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";
            if let crate::tls::ProbeOutcome::Refused(reason) =
                crate::tls::probe(&host, port, &self.inner.tls, AMQP_0_9_1_HEADER).await
            {
                return Err(ConnectFailure { message: format!("{peer}: {reason}"), tls: true });
            }
        }
        Err(ConnectFailure::other(format!("{peer}: {error}")))
    }

    /// For `amqps://`: one connection attempt, so that a broker whose certificate is not trusted
    /// (or that refuses ours) stops start-up with the reason. A broker that cannot be reached is
    /// not an error here: the supervisor keeps trying, and tasks are accepted meanwhile.
    pub async fn check_tls(&self) -> Result<(), String> {
        if !self.inner.url.expose().trim_start().to_ascii_lowercase().starts_with("amqps://") {
            return Ok(());
        }
        match tokio::time::timeout(Duration::from_secs(10), self.connect()).await {
            Ok(Ok(conn)) => {
                let _ = conn.close(200, "TLS checked".into()).await;
                Ok(())
            }
            Ok(Err(failure)) if failure.tls => Err(failure.message),
            Ok(Err(failure)) => {
                let error = failure.message;
                tracing::warn!(%error, "rabbitmq not reachable at start; tasks are accepted and published later");
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    /// The supervisor: connects, declares, consumes, and reconnects with backoff after any loss,
    /// until `cancel` fires. Then it stops consuming, lets in-flight deliveries finish (at most
    /// `grace`) so they can be acked, and closes the connection.
    pub async fn run(
        self,
        consumers: Vec<ConsumerSpec>,
        handler: Arc<dyn DeliveryHandler>,
        cancel: CancellationToken,
        grace: Duration,
    ) {
        let mut backoff = Duration::from_millis(200);
        while !cancel.is_cancelled() {
            let mut up = false;
            let result = self.session(&consumers, &handler, &cancel, grace, &mut up).await;
            self.mark_down();
            match result {
                Ok(()) => break,
                Err(error) => {
                    if up {
                        backoff = Duration::from_millis(200);
                    }
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "rabbitmq connection lost");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    fn mark_down(&self) {
        self.inner.connected.store(false, Ordering::SeqCst);
        self.inner.blocked.store(false, Ordering::SeqCst);
        if let Ok(mut p) = self.inner.publisher.write() {
            *p = None;
        }
    }

    async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let t = &self.inner.topology;
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(t.exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await?;
        channel
            .exchange_declare(t.dead_letter_exchange().into(), ExchangeKind::Fanout, durable, FieldTable::default())
            .await?;
        let durable_queue = QueueDeclareOptions { durable: true, ..Default::default() };
        let mut quorum = FieldTable::default();
        // Quorum queues replicate and survive broker restarts; they are also what supports a
        // delivery limit, which stops a message that crashes its consumer from looping forever.
        quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        channel.queue_declare(t.dead_queue().into(), durable_queue, quorum.clone()).await?;
        channel
            .queue_bind(
                t.dead_queue().into(),
                t.dead_letter_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut args = quorum;
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(t.delivery_limit as i32));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(t.dead_letter_exchange().into()));
        for topic in &self.inner.topics {
            channel.queue_declare(t.queue(topic).into(), durable_queue, args.clone()).await?;
            channel
                .queue_bind(
                    t.queue(topic).into(),
                    t.exchange.as_str().into(),
                    Topology::routing_key(topic).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    async fn session(
        &self,
        consumers: &[ConsumerSpec],
        handler: &Arc<dyn DeliveryHandler>,
        cancel: &CancellationToken,
        grace: Duration,
        up: &mut bool,
    ) -> Result<(), String> {
        let conn = self.connect().await.map_err(|f| f.message)?;
        let mut events = conn.events_listener();
        let setup = conn.create_channel().await.map_err(|e| e.to_string())?;
        self.declare(&setup).await.map_err(|e| e.to_string())?;
        let _ = setup.close(200, "declared".into()).await;

        let publisher = conn.create_channel().await.map_err(|e| e.to_string())?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
        if let Ok(mut p) = self.inner.publisher.write() {
            *p = Some(publisher);
        }

        let tracker = TaskTracker::new();
        let (ended_tx, mut ended_rx) = tokio::sync::mpsc::channel::<String>(consumers.len().max(1));
        let mut channels = Vec::new();
        for spec in consumers {
            let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
            // Prefetch bounds the unacked messages, hence the handlers running, per topic.
            channel.basic_qos(spec.prefetch, BasicQosOptions::default()).await.map_err(|e| e.to_string())?;
            let tag = format!("wag-{}-{}", spec.topic, std::process::id());
            let queue = self.inner.topology.queue(&spec.topic);
            let mut consumer = channel
                .basic_consume(queue.into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
                .await
                .map_err(|e| e.to_string())?;
            channels.push((channel, tag));
            let handler = handler.clone();
            let tracker2 = tracker.clone();
            let ended = ended_tx.clone();
            let topic = spec.topic.clone();
            tracker.spawn(async move {
                while let Some(item) = consumer.next().await {
                    let delivery = match item {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = ended.send(format!("consumer {topic}: {e}")).await;
                            return;
                        }
                    };
                    let handler = handler.clone();
                    // Only the body and the acker go with the delivery: its properties (a header
                    // table, the routing key) would otherwise stay in memory while it is handled.
                    let lapin::message::Delivery { data, acker, .. } = delivery;
                    tracker2.spawn(async move {
                        let outcome = match handler.handle(data).await {
                            Disposition::Ack => acker.ack(BasicAckOptions::default()).await,
                            Disposition::DeadLetter(reason) => {
                                tracing::warn!(%reason, "message dead-lettered");
                                acker.reject(BasicRejectOptions { requeue: false }).await
                            }
                            Disposition::Requeue => {
                                acker.nack(BasicNackOptions { requeue: true, multiple: false }).await
                            }
                        };
                        if let Err(error) = outcome {
                            // The task's state is already recorded; redelivery finds it done.
                            tracing::warn!(%error, "could not settle a delivery");
                        }
                    });
                }
                let _ = ended.send(format!("consumer {topic} was cancelled by the broker")).await;
            });
        }
        drop(ended_tx);
        self.inner.connected.store(true, Ordering::SeqCst);
        *up = true;
        tracing::info!(consumers = consumers.len(), "rabbitmq connected, topology declared");

        let outcome = loop {
            tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                Some(reason) = ended_rx.recv(), if !consumers.is_empty() => break Err(reason),
                event = events.next() => match event {
                    Some(lapin::Event::Error(e)) => break Err(e.to_string()),
                    Some(lapin::Event::ConnectionBlocked(reason)) => {
                        self.inner.blocked.store(true, Ordering::SeqCst);
                        tracing::warn!(%reason, "rabbitmq blocked the connection; publishes wait for the relay");
                    }
                    Some(lapin::Event::ConnectionUnblocked) => {
                        self.inner.blocked.store(false, Ordering::SeqCst);
                        tracing::info!("rabbitmq unblocked the connection");
                    }
                    Some(_) => {}
                    None => break Err("connection event stream ended".into()),
                },
            }
        };
        if outcome.is_ok() {
            // Shutdown: take no new messages, let those in hand finish and be acked.
            for (channel, tag) in &channels {
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
            }
            tracker.close();
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                tracing::warn!(
                    "shutdown grace period over with handlers still running; their messages return to the queue"
                );
            }
        }
        let publisher = self.inner.publisher.write().ok().and_then(|mut p| p.take());
        self.mark_down();
        close_in_order(conn, publisher, channels.into_iter().map(|(channel, _)| channel)).await;
        outcome
    }
}

/// Closes a session's channels, then its connection, each close awaited before the next.
///
/// Order matters to lapin: dropping the last handle of an open channel makes lapin close it in
/// the background, and if the connection has begun closing by the time that close runs, it fails
/// on the channel's `Closing` state and lapin logs it as an ERROR-level connection error. A
/// channel closed (and so marked closed) before the connection is never closed again on drop.
/// On a connection already lost, each close fails at once and quietly.
async fn close_in_order(conn: Connection, publisher: Option<Channel>, consumers: impl Iterator<Item = Channel>) {
    for channel in publisher.into_iter().chain(consumers) {
        let _ = channel.close(200, "shutdown".into()).await;
    }
    let _ = conn.close(200, "shutdown".into()).await;
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
        if self.inner.blocked.load(Ordering::SeqCst) {
            return Err(PublishError::Blocked);
        }
        let channel = self.inner.publisher.read().ok().and_then(|p| p.clone()).ok_or(PublishError::NotConnected)?;
        let mut headers = FieldTable::default();
        headers.insert("attempt".into(), AMQPValue::LongUInt(attempt));
        if let Some(traceparent) = traceparent {
            // The task's trace, for any consumer that follows W3C Trace Context over AMQP.
            headers.insert("traceparent".into(), AMQPValue::LongString(traceparent.into()));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2) // persistent: survives a broker restart
            .with_content_type("application/json".into())
            .with_headers(headers);
        // mandatory: an unroutable message comes back instead of vanishing.
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        let exchange = self.inner.topology.exchange.as_str();
        let confirm = channel
            .basic_publish(exchange.into(), Topology::routing_key(topic).into(), options, body, properties)
            .await
            .map_err(|e| PublishError::Failed(e.to_string()))?;
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Err(_) => Err(PublishError::Failed("no confirm within 10 s".into())),
            Ok(Err(e)) => Err(PublishError::Failed(e.to_string())),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(PublishError::Unroutable(returned.reply_text.to_string())),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Failed("confirms not enabled".into())),
        }
    }

    fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::SeqCst) && !self.inner.blocked.load(Ordering::SeqCst)
    }
}
