//! A stand-in downstream for the `http` handler kind that holds every request open until it is
//! released, so the gateway can be observed with a known number of handlers running at once.
//! It counts the requests it holds; releasing answers them all 200 `{}`. It speaks HTTP/1.1 and
//! HTTP/2 without TLS (h2c) with no limit on concurrent streams, so a gateway topic with
//! `http2 = true` can hold thousands of calls on one connection.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{Json, Router, extract::State, routing::post};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Shared {
    held: AtomicUsize,
    release: CancellationToken,
}

pub struct HoldServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

async fn hold(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    shared.held.fetch_add(1, Ordering::SeqCst);
    shared.release.cancelled().await;
    shared.held.fetch_sub(1, Ordering::SeqCst);
    Json(serde_json::json!({}))
}

impl HoldServer {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        let app = Router::new().route("/hold", post(hold)).with_state(shared.clone());
        let until = stop.clone();
        tokio::spawn(async move {
            let mut server = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            server.http2().max_concurrent_streams(None);
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            eprintln!("[bench] stand-in downstream stopped accepting: {e}");
                            return;
                        }
                    },
                    () = until.cancelled() => return,
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let server = server.clone();
                tokio::spawn(async move {
                    // A connection ends when the gateway hangs up; nothing to report.
                    let _ = server.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(Self { addr, shared, stop })
    }

    pub fn url(&self) -> String {
        format!("http://{}/hold", self.addr)
    }

    /// Requests being held right now.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Answers every held request (and every later one at once), then stops serving.
    pub fn release(&self) {
        self.shared.release.cancel();
        self.stop.cancel();
    }
}

impl Drop for HoldServer {
    fn drop(&mut self) {
        self.release();
    }
}
