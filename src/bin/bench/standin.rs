//! A stand-in downstream for the `http` handler kind that holds every request open until it is
//! released, so the gateway can be observed with a known number of handlers running at once.
//! It counts the requests it holds; releasing answers them all 200 `{}`.

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
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(until.cancelled_owned()).await {
                eprintln!("[bench] stand-in downstream stopped: {e}");
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
