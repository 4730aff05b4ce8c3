//! TLS wherever the gateway talks or listens: `amqps://` to RabbitMQ, Camunda and `http`
//! handlers trusting the system roots plus `CA_BUNDLE_FILE` (with optional client
//! certificates), and optional TLS on the API itself. MongoDB's TLS comes from its URI
//! (`tls=true&tlsCAFile=…&tlsCertificateKeyFile=…`) and the driver's own rustls. When a peer
//! cannot be trusted, errors name the peer and the reason ([`describe`]). No private key or
//! file content ever reaches a log line or an error.

mod client;
mod describe;
mod pem;
mod probe;
mod server;
mod settings;

pub use client::{amqp_tls_config, http_client, http_client_builder};
pub use describe::{peer_of, reason, request_error, tls_cause};
pub use pem::{read_certs, read_key};
pub use probe::{ProbeOutcome, probe};
pub use server::{TlsListener, acceptor};
pub use settings::{CertKeyFiles, TlsSettings};
