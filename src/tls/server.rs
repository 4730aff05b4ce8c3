//! The API over HTTPS (`TLS_CERT_FILE` / `TLS_KEY_FILE`): a rustls acceptor, and [`TlsListener`],
//! an `axum::serve::Listener` that hands out connections whose TLS handshake is done. Whatever
//! serves a plain `TcpListener` serves it the same way (connection cap, timeouts, graceful stop).
//!
//! Handshakes run in their own tasks, at most [`MAX_HANDSHAKES`] at once and each for at most
//! [`HANDSHAKE_TIMEOUT`], so a client that stalls its handshake holds up nobody else. A failed
//! handshake concerns one client only: it is logged at debug level. Dropping the listener closes
//! the port.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use rustls::ServerConfig;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{
    CertKeyFiles,
    pem::{read_certs, read_key},
};

/// A client gets this long to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 256;

/// The acceptor for the API's certificate chain and key (HTTP/2 and HTTP/1.1 offered by ALPN);
/// the error names the variable at fault.
pub fn acceptor(files: &CertKeyFiles) -> Result<TlsAcceptor, String> {
    let certs = read_certs(&files.cert).map_err(|e| format!("{}: {e}", files.cert_var))?;
    let key = read_key(&files.key).map_err(|e| format!("{}: {e}", files.key_var))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} / {}: {e}", files.cert_var, files.key_var))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// TLS connections, handshake done, from a bound TCP listener.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: io::Result<SocketAddr>,
    accepting: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp` (must be called within a Tokio runtime).
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> Self {
        let local = tcp.local_addr();
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(accept_loop(tcp, acceptor, tx));
        Self { ready, local, accepting }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Drops the TCP listener: the port stops answering. Handshakes under way find no one to
        // hand their connection to and close it.
        self.accepting.abort();
    }
}

async fn accept_loop(tcp: TcpListener, acceptor: TlsAcceptor, ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        // The semaphore is never closed.
        let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
        let (stream, peer) = match tcp.accept().await {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(permit);
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake with a client failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake with a client timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The accept loop only ends when this listener is dropped; never while it is used.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.local {
            Ok(addr) => Ok(*addr),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
}
