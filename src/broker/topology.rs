//! RabbitMQ names and declarations: the topic exchange, the dead-letter exchange and queue, and
//! one quorum queue per topic. Declaring is idempotent, so every connection (publisher or
//! consumer) and every topic consumer that restarts declares what it needs again: a queue deleted
//! by hand comes back at the next attempt. It declares only; it never consumes or publishes.

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};

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

    /// The topic a routing key names (`task.submit.{topic}`), if it is one of ours.
    pub fn topic_of(routing_key: &str) -> Option<&str> {
        routing_key.strip_prefix("task.submit.").filter(|t| !t.is_empty())
    }

    /// The exchanges and the dead-letter queue: what every topic queue refers to.
    pub(super) async fn declare_base(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(self.exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await?;
        channel
            .exchange_declare(self.dead_letter_exchange().into(), ExchangeKind::Fanout, durable, FieldTable::default())
            .await?;
        let durable_queue = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(self.dead_queue().into(), durable_queue, quorum()).await?;
        channel
            .queue_bind(
                self.dead_queue().into(),
                self.dead_letter_exchange().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// One topic's queue and its binding (the exchanges must exist).
    pub(super) async fn declare_topic(&self, channel: &Channel, topic: &str) -> lapin::Result<()> {
        let mut args = quorum();
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(self.delivery_limit as i32));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(self.dead_letter_exchange().into()));
        let durable_queue = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(self.queue(topic).into(), durable_queue, args).await?;
        channel
            .queue_bind(
                self.queue(topic).into(),
                self.exchange.as_str().into(),
                Self::routing_key(topic).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Everything: the base and every topic in `topics`.
    pub(super) async fn declare_all(&self, channel: &Channel, topics: &[String]) -> lapin::Result<()> {
        self.declare_base(channel).await?;
        for topic in topics {
            self.declare_topic(channel, topic).await?;
        }
        Ok(())
    }
}

/// Quorum queues replicate and survive broker restarts; they are also what supports a delivery
/// limit, which stops a message that crashes its consumer from looping forever.
fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    args
}

#[cfg(test)]
mod tests {
    use super::Topology;

    #[test]
    fn a_routing_key_names_its_topic() {
        assert_eq!(Topology::topic_of("task.submit.say_hello"), Some("say_hello"));
        assert_eq!(Topology::topic_of("task.submit."), None);
        assert_eq!(Topology::topic_of("other"), None);
    }
}
