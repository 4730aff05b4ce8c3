//! One queue's consumer and its supervisor: a channel of its own, and when the queue cannot be
//! consumed (deleted, `basic.consume` timing out, its channel closed by the broker) this queue
//! alone degrades: the supervisor declares the queue again and retries with a capped, jittered
//! backoff while the other queues keep flowing. A queue that failed before it could be consumed
//! moves to a connection of its own ("isolated"), so that a broker which answers a sick queue by
//! closing the whole connection takes only that queue's connection down. Messages are settled
//! only after their handler is done.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use lapin::{
    Channel, Connection,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::{
    DeadLetterHandler, DeliveryHandler, Disposition,
    connection::Backoff,
    consumer::{Ctx, Leftovers},
};

/// Where a queue's messages go.
#[derive(Clone)]
pub(super) enum Sink {
    Tasks(Arc<dyn DeliveryHandler>),
    DeadLetters(Arc<dyn DeadLetterHandler>),
}

/// One queue to consume.
pub(super) struct TopicConsumer {
    /// The topic, or the dead-letter consumer's name; the key of its state.
    pub(super) name: String,
    pub(super) queue: String,
    /// The topic whose queue and binding to declare; `None` for the dead-letter queue (declared
    /// with the exchanges).
    pub(super) topic: Option<String>,
    /// Unacked messages at once, hence handlers running, for this queue.
    pub(super) prefetch: u16,
    pub(super) sink: Sink,
}

/// How one try to consume ended.
enum Try {
    /// Shutdown: consuming cancelled; the channel stays open for the acks still to come.
    Stopped(Channel),
    /// Failed before the broker confirmed the consumer; `isolate` when this queue, not the
    /// connection, was the cause (or the connection died while the queue kept us waiting).
    NotStarted { error: String, isolate: bool },
    /// Consumed for `ran`, then the stream ended (queue deleted, channel or connection closed).
    Ended { error: String, ran: Duration },
}

/// A connection lost while the consume was pending this long is blamed on the queue.
const SUSPECT_AFTER: Duration = Duration::from_secs(5);

/// Consuming this long counts as recovered: the next failure starts the backoff afresh.
const STABLE_AFTER: Duration = Duration::from_secs(10);

impl TopicConsumer {
    /// Runs until shutdown, then hands back what must stay open until in-flight deliveries are
    /// settled.
    pub(super) async fn supervise(
        self,
        ctx: Arc<Ctx>,
        mut shared: watch::Receiver<Option<Arc<Connection>>>,
    ) -> Leftovers {
        let mut backoff = Backoff::new(ctx.policy.retry_min, ctx.policy.retry_max);
        let mut own: Option<Arc<Connection>> = None;
        let mut isolated = false;
        ctx.board.register(&self.name);
        loop {
            let conn = if isolated {
                match self.own_connection(&ctx, &mut own).await {
                    Ok(conn) => conn,
                    Err(error) => {
                        ctx.board.down(&self.name, &error);
                        if !ctx.pause(backoff.next_wait()).await {
                            return Leftovers { channel: None, own };
                        }
                        continue;
                    }
                }
            } else {
                let wait = shared.wait_for(|c| c.as_ref().is_some_and(|c| c.status().connected()));
                let conn = tokio::select! {
                    _ = ctx.stop.cancelled() => return Leftovers { channel: None, own },
                    conn = wait => conn.ok().and_then(|c| c.clone()),
                };
                let Some(conn) = conn else { return Leftovers { channel: None, own } };
                conn
            };
            let error = match self.consume(&ctx, &conn).await {
                Try::Stopped(channel) => return Leftovers { channel: Some(channel), own },
                Try::NotStarted { error, isolate } => {
                    if isolate && !isolated {
                        isolated = true;
                        tracing::warn!(topic = %self.name, "queue moved to a connection of its own until restart");
                    }
                    error
                }
                Try::Ended { error, ran } => {
                    if ran >= STABLE_AFTER {
                        backoff.reset();
                    }
                    error
                }
            };
            ctx.board.down(&self.name, &error);
            if !ctx.pause(backoff.next_wait()).await {
                return Leftovers { channel: None, own };
            }
        }
    }

    /// The isolated queue's own connection, opened again if it was lost.
    async fn own_connection(&self, ctx: &Ctx, own: &mut Option<Arc<Connection>>) -> Result<Arc<Connection>, String> {
        if let Some(conn) = own.as_ref().filter(|c| c.status().connected()) {
            return Ok(conn.clone());
        }
        *own = None;
        let name = format!("worker-api-gateway consumer {}", self.name);
        let conn = tokio::time::timeout(ctx.policy.consume_timeout, ctx.endpoint.connect(&name))
            .await
            .map_err(|_| "connecting timed out".to_owned())?
            .map_err(|f| f.message)?;
        let conn = Arc::new(conn);
        *own = Some(conn.clone());
        Ok(conn)
    }

    /// Opens a channel, declares the queue, starts consuming, and hands each delivery to the
    /// sink until the stream ends or shutdown.
    async fn consume(&self, ctx: &Ctx, conn: &Connection) -> Try {
        let began = Instant::now();
        let limit = ctx.policy.consume_timeout;
        let not_started = |error: String, conn: &Connection| Try::NotStarted {
            isolate: conn.status().connected() || began.elapsed() >= SUSPECT_AFTER,
            error,
        };
        let channel = match tokio::time::timeout(limit, conn.create_channel()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return not_started(e.to_string(), conn),
            Err(_) => return not_started("opening a channel timed out".into(), conn),
        };
        let tag = format!("wag-{}-{}", self.name, std::process::id());
        let start = async {
            match &self.topic {
                Some(topic) => ctx.topology.declare_topic(&channel, topic).await?,
                None => ctx.topology.declare_base(&channel).await?,
            }
            channel.basic_qos(self.prefetch, BasicQosOptions::default()).await?;
            let options = BasicConsumeOptions::default();
            channel.basic_consume(self.queue.as_str().into(), tag.as_str().into(), options, FieldTable::default()).await
        };
        // On failure the channel is dropped: lapin closes it in the background if it is open.
        let mut consumer = match tokio::time::timeout(limit, start).await {
            Ok(Ok(consumer)) => consumer,
            Ok(Err(e)) => return not_started(e.to_string(), conn),
            Err(_) => return not_started(format!("declaring and consuming timed out after {limit:?}"), conn),
        };
        ctx.board.up(&self.name);
        tracing::info!(topic = %self.name, queue = %self.queue, "consuming");
        let consuming = Instant::now();
        // This try's own deliveries, so its channel stays open until they are settled.
        let mine = TaskTracker::new();
        let error = loop {
            tokio::select! {
                _ = ctx.stop.cancelled() => {
                    // Take no new messages; those in hand finish and are acked (the consumer
                    // side waits for them before closing the channel).
                    let cancel = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
                    let _ = tokio::time::timeout(Duration::from_secs(5), cancel).await;
                    return Try::Stopped(channel);
                }
                item = consumer.next() => match item {
                    Some(Ok(delivery)) => self.dispatch(ctx, &mine, delivery),
                    Some(Err(e)) => break e.to_string(),
                    None => break "the broker cancelled the consumer (queue deleted?)".to_owned(),
                },
            }
        };
        mine.close();
        // Deliveries still running keep the channel: their acks need it if it is still open.
        ctx.tracker.spawn(async move {
            mine.wait().await;
            let _ = channel.close(200, "consumer ended".into()).await;
        });
        Try::Ended { error, ran: consuming.elapsed() }
    }

    /// Hands one delivery to the sink on the shared tracker, then settles it.
    fn dispatch(&self, ctx: &Ctx, mine: &TaskTracker, delivery: lapin::message::Delivery) {
        let token = mine.token();
        let lapin::message::Delivery { data, acker, routing_key, properties, .. } = delivery;
        match &self.sink {
            Sink::Tasks(handler) => {
                // Only the body and the acker go with the delivery: its properties (a header
                // table, the routing key) would otherwise stay in memory while it is handled.
                drop((routing_key, properties));
                let handler = handler.clone();
                ctx.tracker.spawn(async move {
                    settle(acker, handler.handle(data).await).await;
                    drop(token);
                });
            }
            Sink::DeadLetters(handler) => {
                let message = super::dead_letters::read(data, routing_key.as_str(), &properties);
                let handler = handler.clone();
                ctx.tracker.spawn(async move {
                    settle(acker, handler.handle(message).await).await;
                    drop(token);
                });
            }
        }
    }
}

async fn settle(acker: lapin::Acker, disposition: Disposition) {
    let outcome = match disposition {
        Disposition::Ack => acker.ack(BasicAckOptions::default()).await,
        Disposition::DeadLetter(reason) => {
            tracing::warn!(%reason, "message dead-lettered");
            acker.reject(BasicRejectOptions { requeue: false }).await
        }
        Disposition::Requeue => acker.nack(BasicNackOptions { requeue: true, multiple: false }).await,
    };
    if let Err(error) = outcome {
        // The task's state is already recorded; redelivery finds it done.
        tracing::warn!(%error, "could not settle a delivery");
    }
}
