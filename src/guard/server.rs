//! The HTTP server loop (axum's `serve`, plus what it cannot be told): at most `MAX_CONNECTIONS`
//! open connections — the loop accepts no more until one closes, so the excess waits in the
//! kernel's listen queue (and, once that is full, new connections are refused by the kernel);
//! a connection must send a request's headers within `HEADER_READ_TIMEOUT_SECONDS` (HTTP/1; an
//! idle keep-alive connection is closed after the same time); HTTP/2 connections are pinged so
//! dead peers let go of their slot. Each request carries `ConnectInfo<SocketAddr>` (the peer
//! address, for the auth layer and per-address limits). On `stop` it accepts no more, asks every
//! connection to finish what it is answering, and returns once all are closed.
//!
//! It serves any [`axum::serve::Listener`] whose address is a `SocketAddr`, so a TLS listener
//! (a `Listener` whose `Io` is the TLS stream) gets the same limits.

use std::{convert::Infallible, net::SocketAddr, pin::pin, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo, serve::Listener};
use hyper::{body::Incoming, service::Service};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::GuardSettings;
use crate::metrics::Metrics;

/// HTTP/2 keep-alive pings: a peer that does not answer one in time is gone.
const H2_PING_EVERY: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// In every request's extensions: cancelling it closes the request's connection at once, unsent
/// bytes and all (how `/events` drops a subscriber that stopped reading: its response can then
/// never end by itself, as nothing more can be written).
#[derive(Clone, Debug)]
pub struct CloseConnection(pub CancellationToken);

/// The router as hyper calls it, with the peer's address in every request's extensions.
#[derive(Clone)]
struct WithPeer {
    inner: TowerToHyperService<Router>,
    peer: SocketAddr,
    close: CancellationToken,
}

impl Service<http::Request<Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = <TowerToHyperService<Router> as Service<http::Request<Incoming>>>::Future;

    fn call(&self, mut request: http::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        request.extensions_mut().insert(CloseConnection(self.close.clone()));
        self.inner.call(request)
    }
}

fn builder(settings: &GuardSettings) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(settings.header_read_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(H2_PING_EVERY).keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// Serves `app` on `listener` until `stop` fires, then shuts down gracefully.
pub async fn serve<L>(mut listener: L, app: Router, settings: &GuardSettings, metrics: Metrics, stop: CancellationToken)
where
    L: Listener<Addr = SocketAddr>,
{
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let settings = Arc::new(settings.clone());
    // Every connection holds a receiver; the loop waits for all of them to be dropped.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            _ = stop.cancelled() => break,
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { break };
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => break,
        };
        let close = CancellationToken::new();
        let service = WithPeer { inner: TowerToHyperService::new(app.clone()), peer, close: close.clone() };
        let (settings, metrics, stop, open) = (settings.clone(), metrics.clone(), stop.clone(), open_rx.clone());
        tokio::spawn(async move {
            metrics.http_connections.inc();
            let builder = builder(&settings);
            let mut connection = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
            let mut stopping = pin!(stop.cancelled());
            let mut asked = false;
            loop {
                tokio::select! {
                    outcome = connection.as_mut() => {
                        if let Err(error) = outcome {
                            // Peers hang up, time out and send garbage: not the gateway's error.
                            tracing::debug!(%peer, %error, "connection ended with an error");
                        }
                        break;
                    }
                    _ = close.cancelled() => break,
                    _ = &mut stopping, if !asked => {
                        asked = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
            metrics.http_connections.dec();
            drop(slot);
            drop(open);
        });
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
}
