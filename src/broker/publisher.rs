//! The publishing side: a connection of its own (so a resource alarm that blocks publishers never
//! holds back a consumer's acks, and a consumer's broken queue never closes the publisher), one
//! confirming channel, and its supervisor, which declares the whole topology on every connect and
//! reconnects with backoff after any loss. A publish counts only once the broker confirmed it
//! stored and routed; an unroutable return (a topic queue deleted by hand) redeclares that
//! topic's queue so the relay's next try lands.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;

use super::{
    PublishError,
    connection::{Backoff, Endpoint, close_in_order},
    topology::Topology,
};

/// How long a publish may wait for its confirm before it counts as unsent (a blocked broker
/// holds confirms back; the relay publishes again later).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// A topic's queue is redeclared after an unroutable return at most this often: a burst of
/// returns for one deleted queue costs one declaration.
const REDECLARE_EVERY: Duration = Duration::from_secs(5);

/// The live publishing session, if any.
struct Session {
    conn: Arc<Connection>,
    channel: Channel,
}

pub(super) struct Publisher {
    topology: Topology,
    /// Declared (queue + binding) on every connect, consumed here or not, so a publish is
    /// routable even from an API-only process.
    topics: Vec<String>,
    session: RwLock<Option<Session>>,
    /// RabbitMQ blocked this connection (a resource alarm): a publish would only wait for nothing.
    blocked: AtomicBool,
    redeclared: Mutex<HashMap<String, Instant>>,
}

impl Publisher {
    pub(super) fn new(topology: Topology, topics: Vec<String>) -> Self {
        Self {
            topology,
            topics,
            session: RwLock::new(None),
            blocked: AtomicBool::new(false),
            redeclared: Mutex::default(),
        }
    }

    pub(super) fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Connected and not blocked.
    pub(super) fn is_ready(&self) -> bool {
        let up = self.session.read().ok().is_some_and(|s| s.is_some());
        up && !self.blocked.load(Ordering::SeqCst)
    }

    /// Connects, declares, and reconnects with backoff after any loss, until `stop` fires; then
    /// closes the channel and the connection.
    pub(super) async fn run(self: Arc<Self>, endpoint: Arc<Endpoint>, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        while !stop.is_cancelled() {
            match self.session(&endpoint, &stop, &mut backoff).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, side = "publisher", "rabbitmq connection lost");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff.next_wait()) => {}
            }
        }
    }

    fn mark_down(&self) -> Option<Session> {
        self.blocked.store(false, Ordering::SeqCst);
        self.session.write().ok().and_then(|mut s| s.take())
    }

    async fn session(
        &self,
        endpoint: &Endpoint,
        stop: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), String> {
        let conn = endpoint.connect("worker-api-gateway publisher").await.map_err(|f| f.message)?;
        let mut events = conn.events_listener();
        let setup = conn.create_channel().await.map_err(|e| e.to_string())?;
        self.topology.declare_all(&setup, &self.topics).await.map_err(|e| e.to_string())?;
        let _ = setup.close(200, "declared".into()).await;
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
        let conn = Arc::new(conn);
        if let Ok(mut s) = self.session.write() {
            *s = Some(Session { conn: conn.clone(), channel: channel.clone() });
        }
        backoff.reset();
        tracing::info!("rabbitmq publisher connected, topology declared");

        let outcome = loop {
            tokio::select! {
                _ = stop.cancelled() => break Ok(()),
                event = events.next() => match event {
                    // A channel's error reaches the connection's events too: only a lost
                    // connection or a lost publishing channel ends the session.
                    Some(lapin::Event::Error(e)) if !conn.status().connected() || !channel.status().connected() => {
                        break Err(e.to_string());
                    }
                    Some(lapin::Event::ConnectionBlocked(reason)) => {
                        self.blocked.store(true, Ordering::SeqCst);
                        tracing::warn!(%reason, "rabbitmq blocked the publisher; publishes wait for the relay");
                    }
                    Some(lapin::Event::ConnectionUnblocked) => {
                        self.blocked.store(false, Ordering::SeqCst);
                        tracing::info!("rabbitmq unblocked the publisher");
                    }
                    Some(_) => {}
                    None => break Err("connection event stream ended".into()),
                },
            }
        };
        drop(self.mark_down());
        close_in_order(Some(&conn), [channel]).await;
        outcome
    }

    /// Publishes and waits for the broker's confirm. Only `Ok` means published.
    pub(super) async fn publish(
        &self,
        topic: &str,
        body: &[u8],
        attempt: u32,
        traceparent: Option<&str>,
    ) -> Result<(), PublishError> {
        if self.blocked.load(Ordering::SeqCst) {
            return Err(PublishError::Blocked);
        }
        let channel = self
            .session
            .read()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.channel.clone()))
            .ok_or(PublishError::NotConnected)?;
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
        let exchange = self.topology.exchange.as_str();
        let confirm = channel
            .basic_publish(exchange.into(), Topology::routing_key(topic).into(), options, body, properties)
            .await
            .map_err(|e| PublishError::Failed(e.to_string()))?;
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Err(_) => Err(PublishError::Failed("no confirm within 10 s".into())),
            Ok(Err(e)) => Err(PublishError::Failed(e.to_string())),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                self.redeclare(topic);
                Err(PublishError::Unroutable(returned.reply_text.to_string()))
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Failed("confirms not enabled".into())),
        }
    }

    /// `topic`'s queue as the broker counts it now, asked on a channel of the publisher's
    /// connection opened for the question (a passive declare of a missing queue closes its
    /// channel). `None` when not connected or the queue cannot be asked about.
    pub(super) async fn queue_depth(&self, topic: &str) -> Option<super::QueueDepth> {
        let conn = self.session.read().ok().and_then(|s| s.as_ref().map(|s| s.conn.clone()))?;
        let channel = conn.create_channel().await.ok()?;
        // passive: only asks; never creates a queue or changes its arguments.
        let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let asked = channel.queue_declare(self.topology.queue(topic).into(), passive, FieldTable::default()).await;
        if channel.status().connected() {
            let _ = channel.close(200, "asked".into()).await;
        }
        let queue = asked.ok()?;
        Some(super::QueueDepth { ready: u64::from(queue.message_count()), consumers: queue.consumer_count() })
    }

    /// A registered topic's message came back unroutable: its queue or binding is gone (deleted
    /// by hand, or lost with a broker node). Declares it again in the background, at most once
    /// per [`REDECLARE_EVERY`], so an API-only replica heals too, not only one that consumes.
    fn redeclare(&self, topic: &str) {
        if !self.topics.iter().any(|t| t == topic) {
            return;
        }
        let now = Instant::now();
        let due = self.redeclared.lock().is_ok_and(|mut seen| {
            let due = seen.get(topic).is_none_or(|at| now.duration_since(*at) >= REDECLARE_EVERY);
            if due {
                seen.insert(topic.to_owned(), now);
            }
            due
        });
        let conn = self.session.read().ok().and_then(|s| s.as_ref().map(|s| s.conn.clone()));
        let (Some(conn), true) = (conn, due) else { return };
        let topology = self.topology.clone();
        let topic = topic.to_owned();
        tokio::spawn(async move {
            let declared = async {
                let channel = conn.create_channel().await?;
                topology.declare_topic(&channel, &topic).await?;
                channel.close(200, "declared".into()).await
            };
            match declared.await {
                Ok(()) => tracing::info!(%topic, "topic queue declared again after an unroutable publish"),
                Err(e) => tracing::warn!(%topic, error = %e, "could not declare a topic queue again"),
            }
        });
    }
}
