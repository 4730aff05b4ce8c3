//! Opening AMQP connections (plain or TLS, with errors that name the broker and the reason but
//! never the URL, which may hold a password), closing them in an order lapin accepts, and the
//! capped, jittered backoff every supervisor in `broker` retries with.

use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties, tcp::OwnedTLSConfig};
use rand::Rng;

use crate::config::Secret;

/// Largest AMQP frame asked for, unless the URL sets `frame_max`. lapin keeps 32 frames of
/// buffer each way per connection, written through at connect: at RabbitMQ's default frame
/// (128 KiB) that is 8 MiB resident, for messages of a few hundred bytes. A larger body is
/// simply split across frames.
const FRAME_MAX: u32 = 16 * 1024;

/// Where the broker is and how to reach it.
pub(super) struct Endpoint {
    pub(super) url: Secret,
    /// For `amqps://` (ignored on `amqp://`): trusted CAs and the client certificate.
    pub(super) tls: OwnedTLSConfig,
}

/// Why a connection could not be opened, and whether TLS was the reason.
pub(super) struct ConnectFailure {
    pub(super) message: String,
    pub(super) tls: bool,
}

impl ConnectFailure {
    fn other(message: impl Into<String>) -> Self {
        Self { message: message.into(), tls: false }
    }
}

impl Endpoint {
    /// Opens one AMQP connection named `name` (shown in RabbitMQ's connection list, so an
    /// operator tells the publisher from the consumers); its errors name the broker (host:port)
    /// and the reason, a failed TLS handshake's included.
    pub(super) async fn connect(&self, name: &str) -> Result<Connection, ConnectFailure> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let mut uri: lapin::uri::AMQPUri =
            self.url.expose().parse().map_err(|_| ConnectFailure::other("RABBITMQ_URL is not a valid AMQP URI"))?;
        uri.query.frame_max.get_or_insert(FRAME_MAX);
        let (host, port) = (uri.authority.host.clone(), uri.authority.port);
        let tls = uri.scheme == lapin::uri::AMQPScheme::AMQPS;
        let peer = format!("RabbitMQ at {host}:{port}");
        let runtime = lapin::runtime::default_runtime().map_err(|e| ConnectFailure::other(format!("{peer}: {e}")))?;
        let error = match Connection::connect_uri_with_config(uri, props, self.tls.clone(), runtime).await {
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
                crate::tls::probe(&host, port, &self.tls, AMQP_0_9_1_HEADER).await
            {
                return Err(ConnectFailure { message: format!("{peer}: {reason}"), tls: true });
            }
        }
        Err(ConnectFailure::other(format!("{peer}: {error}")))
    }

    /// For `amqps://`: one connection attempt, so that a broker whose certificate is not trusted
    /// (or that refuses ours) stops start-up with the reason. A broker that cannot be reached is
    /// not an error here: the supervisors keep trying, and tasks are accepted meanwhile.
    pub(super) async fn check_tls(&self) -> Result<(), String> {
        if !self.url.expose().trim_start().to_ascii_lowercase().starts_with("amqps://") {
            return Ok(());
        }
        match tokio::time::timeout(Duration::from_secs(10), self.connect("worker-api-gateway tls check")).await {
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
}

/// Closes channels, then their connection, each close awaited before the next.
///
/// Order matters to lapin: dropping the last handle of an open channel makes lapin close it in
/// the background, and if the connection has begun closing by the time that close runs, it fails
/// on the channel's `Closing` state and lapin logs it as an ERROR-level connection error. A
/// channel closed (and so marked closed) before the connection is never closed again on drop.
/// On a connection already lost, each close fails at once and quietly.
pub(super) async fn close_in_order(conn: Option<&Connection>, channels: impl IntoIterator<Item = Channel>) {
    for channel in channels {
        let _ = channel.close(200, "shutdown".into()).await;
    }
    if let Some(conn) = conn {
        let _ = conn.close(200, "shutdown".into()).await;
    }
}

/// Exponential backoff, capped, with jitter: each wait is drawn between half and all of the
/// current step, so replicas (and topics) that failed together do not retry in lockstep.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        Self { min, max: max.max(min), step: min }
    }

    /// The next wait; the step doubles up to the cap.
    pub(super) fn next_wait(&mut self) -> Duration {
        let wait = self.step.mul_f64(rand::rng().random_range(0.5..=1.0));
        self.step = (self.step * 2).min(self.max);
        wait
    }

    /// After a success: the next failure waits the shortest step again.
    pub(super) fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Backoff;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<Duration> = (0..5).map(|_| b.next_wait()).collect();
        for (wait, step) in waits.iter().zip([100, 200, 400, 400, 400]) {
            assert!(*wait >= Duration::from_millis(step / 2) && *wait <= Duration::from_millis(step), "{waits:?}");
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }
}
