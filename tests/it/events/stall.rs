//! A subscriber that stops reading while many events flow: it is dropped (a late reader sees
//! `event: lagged`, one that never reads has its connection closed), and the real binary's
//! resident memory stays flat. Events are made by writing task documents straight into the
//! store: the change stream is the source, whoever writes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bson::doc;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::Notify,
};

use crate::{
    binary::RealGateway,
    helpers::{env, unique},
};

const WAIT: Duration = Duration::from_secs(60);

/// Resident memory of `pid`, in KiB (`VmRSS` of /proc/<pid>/status).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or_default();
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Samples `pid`'s resident memory every 100 ms until the returned flag is cleared; the task
/// answers the peak, in KiB.
fn peak_rss(pid: u32) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        }
    });
    (sampling, sampler)
}

/// A raw HTTP/1.1 subscriber; with `small`, a small receive buffer so the server's side fills
/// quickly (and drains slowly: one that reads late keeps the default).
async fn raw_subscriber(port: u16, path: &str, small: bool) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    if small {
        socket.set_recv_buffer_size(4096).expect("a small receive buffer");
    }
    let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.expect("connects");
    let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request sent");
    stream
}

/// Reads what `stream` has until it is closed (`true`), `enough(seen)` holds (`true`) or `limit`
/// passes with it open.
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, limit: Duration, enough: fn(&[u8]) -> bool) -> bool {
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        while !enough(seen) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.is_ok()
}

/// Events the gateway keeps for `Last-Event-ID` (`EVENTS_RING_SIZE`): filled once before memory is
/// measured, since holding them is the point of the ring.
const RING: usize = 1000;
/// The size of each event's error message: large events make unbounded buffering visible in
/// the resident memory after a few thousand of them (5 000 × 8 KiB = 40 MiB).
const EVENT_BYTES: usize = 8 * 1024;
/// Events passing while the subscribers stall.
const FLOOD: usize = 5_000;

/// `n` task documents, final (nothing in the gateway acts on them), each insert one event.
async fn flood(tasks: &mongodb::Collection<bson::Document>, round: &str, n: usize) {
    for chunk in 0..n.div_ceil(500) {
        let docs = (0..500.min(n - chunk * 500)).map(|i| {
            doc! {
                "_id": format!("{round}-{chunk}-{i}"), "topic": "flood", "worker_id": "w", "status": "succeeded",
                "attempts": 1, "updated_at": bson::DateTime::now(), "camunda": {"report_state": "not_applicable"},
                "error_message": "x".repeat(EVENT_BYTES),
            }
        });
        tasks.insert_many(docs).await.expect("the store takes the flood");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_dropped_and_memory_stays_flat() {
    let (database, exchange) = (unique("it"), unique("it"));
    let topics = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("topics");
    let mut gateway = RealGateway::launch()
        .within(WAIT)
        .services(&database, &exchange, &topics)
        .env("LOG_LEVEL", "info")
        .env("ANONYMOUS_SCOPES", "submit,read")
        .env("EVENTS_LAG_LIMIT", "256")
        .env("EVENTS_RING_SIZE", RING.to_string())
        .env_remove("CAMUNDA_URL")
        .start()
        .await;
    let (pid, port) = (gateway.pid, gateway.port);
    let tasks = mongodb::Client::with_uri_str(env("MONGODB_URI"))
        .await
        .expect("a store client")
        .database(&database)
        .collection::<bson::Document>("tasks");

    // Warm up: the ring fills once (its size is the point of it). Then the baseline: the peak
    // while the same flood passes with nobody subscribed.
    flood(&tasks, "warm", RING + 500).await;
    let (sampling, sampler) = peak_rss(pid);
    flood(&tasks, "baseline", FLOOD).await;
    sampling.store(false, Ordering::Relaxed);
    let baseline = sampler.await.expect("sampler");

    let mut stalled = raw_subscriber(port, "/events", true).await;
    // A slow reader (its own filter, so its drop is told apart in the log): it keeps reading a
    // little at a time, so it falls behind without stalling; once dropped, it reads the rest.
    let mut slow = raw_subscriber(port, "/events?topic=flood", false).await;
    let caught_up = Arc::new(Notify::new());
    let slow_reader = tokio::spawn({
        let caught_up = caught_up.clone();
        async move {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 4096];
            let mut pace = Some(Duration::from_millis(100));
            let read = async {
                while !seen.ends_with(b"\r\n0\r\n\r\n") {
                    match slow.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    if let Some(pause) = pace {
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = caught_up.notified() => pace = None,
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(180), read).await;
            seen
        }
    });
    let (sampling, sampler) = peak_rss(pid);
    // The slow reader is told to read the rest as soon as it is dropped, while the flood still
    // runs (were it to go on at its pace, the kernel's buffers could hide its progress from the
    // gateway past the grace, and it would be closed before reaching its `lagged`).
    let watch_drops = async {
        let mut filters = Vec::new();
        while filters.len() < 2 {
            let line = gateway.logged("an event subscriber fell behind; dropped").await;
            let filter = line["fields"]["filter"].as_str().unwrap_or_default().to_owned();
            if filter.contains("flood") {
                caught_up.notify_one();
            }
            filters.push(filter);
        }
        filters
    };
    let ((), filters) = tokio::join!(flood(&tasks, "flood", FLOOD), watch_drops);
    assert_eq!(filters.iter().filter(|f| f.contains("flood")).count(), 1, "one drop each: {filters:?}");

    // The slow reader gets `lagged` and the end of the response.
    let seen = slow_reader.await.expect("the slow reader");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("event: lagged\ndata: {\"dropped_after\":"), "no lagged event: …{}", tail(&text));
    assert!(text.ends_with("\r\n0\r\n\r\n"), "the response did not end: …{}", tail(&text));

    // The one that never read: its connection is closed by the server.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut drained = Vec::new();
    assert!(read_until(&mut stalled, &mut drained, Duration::from_secs(20), |_| false).await, "still open");
    assert!(!String::from_utf8_lossy(&drained).contains("event: lagged"), "it never read, so never got lagged");

    sampling.store(false, Ordering::Relaxed);
    let peak = sampler.await.expect("sampler");
    flood(&tasks, "after", RING + 500).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    println!("gateway RSS (KiB): baseline peak {baseline}, peak with the two subscribers {peak}, after {after}");
    // Were the stalled subscribers' events buffered, FLOOD × 2 × EVENT_BYTES (80 MiB) would show.
    assert!(peak < baseline + 16 * 1024, "memory grew with the stalled subscribers: {baseline} → {peak} KiB");
    assert!(after < baseline + 16 * 1024, "memory did not come back: {baseline} → {after} KiB");

    drop(gateway);
    let _ = tasks.client().database(&database).drop().await;
    crate::helpers::delete_topology(&exchange, &["say_hello".into(), "nova_publicacao".into()]).await;
}

fn tail(text: &str) -> &str {
    let start = text.char_indices().rev().nth(300).map_or(0, |(i, _)| i);
    &text[start..]
}
