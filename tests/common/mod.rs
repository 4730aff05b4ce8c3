//! Helpers shared by the test binaries (`tests/it` and `tests/faults`): the test services'
//! settings, unique names, and removing a test gateway's RabbitMQ topology.

use std::sync::atomic::{AtomicU32, Ordering};

/// A variable the test services set (`source .services/env`); missing means the test fails.
pub fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: start the test services with `scripts/services.sh up` and `source .services/env`")
    })
}

/// A name unique to this run and this call: databases, exchanges, task ids.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

/// Deletes the queues and exchanges a test gateway declared.
pub async fn delete_topology(exchange: &str, topics: &[String]) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(conn) = lapin::Connection::connect(&env("RABBITMQ_URL"), lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else { return };
    for topic in topics {
        let _ = ch.queue_delete(format!("{exchange}.task.submit.{topic}").into(), QueueDeleteOptions::default()).await;
    }
    let _ = ch.queue_delete(format!("{exchange}.dead").into(), QueueDeleteOptions::default()).await;
    let _ = ch.exchange_delete(exchange.into(), ExchangeDeleteOptions::default()).await;
    let _ = ch.exchange_delete(format!("{exchange}.dlx").into(), ExchangeDeleteOptions::default()).await;
    let _ = conn.close(200, "bye".into()).await;
}
