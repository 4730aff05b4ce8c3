//! TLS wherever the gateway talks or listens: `amqps://` to RabbitMQ, MongoDB's TLS options,
//! Camunda and `http` handlers trusting the system roots plus `CA_BUNDLE_FILE` (with optional
//! client certificates), and optional TLS on the API itself.

mod settings;

pub use settings::TlsSettings;
