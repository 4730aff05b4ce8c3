//! The guard (`src/guard/`): rate limits per key and per client address (429 + `Retry-After`),
//! load shedding of submissions before they queue (503 + `Retry-After`, nothing admitted lost),
//! the header, body and request timeouts, and the connection cap. Limits are made tiny through
//! the environment so that a handful of requests cross them; no test judges a speed.

use std::{net::IpAddr, time::Duration};

use futures::future::join_all;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::helpers::{AppOptions, TEST_KEY, TestApp, body, key_file, spawn_app_with, unique};

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn app_with(pairs: &[(&str, &str)]) -> TestApp {
    spawn_app_with(AppOptions { vars: vars(pairs), ..Default::default() }).await
}

/// A client whose connections come from `from` (any 127.x.y.z is this machine's loopback), so
/// the gateway sees another client address; with `key`, it presents that key.
fn client_from(from: &str, key: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().local_address(from.parse::<IpAddr>().expect("an address"));
    if let Some(key) = key {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-api-key", key.parse().expect("a header value"));
        builder = builder.default_headers(headers);
    }
    builder.build().expect("a client")
}

/// Status, `Retry-After` (seconds) and JSON body of a GET.
async fn get(client: &reqwest::Client, app: &TestApp, path: &str) -> (u16, Option<u64>, Value) {
    let r = client.get(app.url(path)).send().await.expect("gateway answers");
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    (r.status().as_u16(), retry_after, r.json().await.unwrap_or(Value::Null))
}

/// The sum of a Prometheus family's samples whose labels include `label`.
async fn metric(app: &TestApp, client: &reqwest::Client, family: &str, label: &str) -> f64 {
    let text = client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_address_over_its_rate_gets_429_with_retry_after_and_other_addresses_do_not() {
    // One token a hundred seconds: nothing refills while the test runs.
    let app =
        app_with(&[("AUTH_MODE", "open"), ("ANONYMOUS_RATE_PER_SECOND", "0.01"), ("ANONYMOUS_RATE_BURST", "2")]).await;
    let (first, second) = (client_from("127.0.0.2", None), client_from("127.0.0.3", None));

    assert_eq!(get(&first, &app, "/tasks/statistics").await.0, 200);
    assert_eq!(get(&first, &app, "/tasks/statistics").await.0, 200);
    let (status, retry_after, refusal) = get(&first, &app, "/tasks/statistics").await;

    assert_eq!(status, 429, "{refusal}");
    assert_eq!(retry_after, Some(100), "one token at 0.01/s is 100 s away");
    assert_eq!(refusal["error_code"], "TOO_MANY_REQUESTS");
    assert_eq!(refusal["retry_allowed"], true);
    assert_eq!(refusal["path"], "/tasks/statistics");
    // Probes are never limited.
    assert_eq!(get(&first, &app, "/live").await.0, 200);
    assert_eq!(get(&first, &app, "/health").await.0, 200);
    // Another address has its own bucket.
    assert_eq!(get(&second, &app, "/tasks/statistics").await.0, 200);
    assert_eq!(metric(&app, &second, "gateway_rate_limited_requests_total", "caller=\"anonymous\"").await, 1.0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_limited_by_its_own_rate_and_not_by_its_address() {
    let secret = "guard-slow-key-0123456789abcdef0123456789";
    let slow = format!(
        "[[keys]]\nid = \"slow\"\nhash = \"sha256:{}\"\nscopes = [\"read\"]\nrate = {{ per_second = 0.01, burst = 2 }}\n",
        worker_api_gateway::auth::hash_secret(secret)
    );
    let keys = key_file(&slow).display().to_string();
    // Anonymous callers get one request in a hundred seconds: were keys limited by address,
    // the admin key's requests below would be refused.
    let app = app_with(&[
        ("API_KEYS_FILE", &keys),
        ("ANONYMOUS_SCOPES", "read"),
        ("ANONYMOUS_RATE_PER_SECOND", "0.01"),
        ("ANONYMOUS_RATE_BURST", "1"),
    ])
    .await;
    let (slow, admin) = (client_from("127.0.0.4", Some(secret)), client_from("127.0.0.4", Some(TEST_KEY)));

    assert_eq!(get(&slow, &app, "/tasks/statistics").await.0, 200);
    assert_eq!(get(&slow, &app, "/tasks/statistics").await.0, 200);
    let (status, retry_after, refusal) = get(&slow, &app, "/tasks/statistics").await;

    assert_eq!((status, retry_after), (429, Some(100)), "{refusal}");
    for _ in 0..5 {
        assert_eq!(get(&admin, &app, "/tasks/statistics").await.0, 200, "the admin key has the default key rate");
    }
    assert_eq!(metric(&app, &admin, "gateway_rate_limited_requests_total", "caller=\"slow\"").await, 1.0);
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_backlog_bound_submits_are_shed_with_503_and_every_admitted_one_is_stored() {
    let app = app_with(&[("SHED_BACKLOG", "1")]).await;
    let (mut admitted, mut shed) = (Vec::new(), Vec::new());
    // Forty at once with room for one: some are shed (a few rounds, should one round happen to
    // arrive one after another).
    for _ in 0..5 {
        let ids: Vec<String> = (0..40).map(|_| unique("shed")).collect();
        let app = &app;
        let answers = join_all(ids.iter().map(|id| async move {
            let r = app.client.post(app.url("/tasks/submit")).json(&body(id, "say_hello", json!({}))).send().await;
            let r = r.expect("gateway answers");
            let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
            (id.clone(), r.status().as_u16(), retry_after, r.json::<Value>().await.unwrap_or(Value::Null))
        }))
        .await;
        for (id, status, retry_after, answer) in answers {
            match status {
                200 => admitted.push(id),
                503 => {
                    assert_eq!(retry_after.as_deref(), Some("1"), "{answer}");
                    assert_eq!(
                        (answer["error_code"].clone(), answer["retry_allowed"].clone()),
                        (json!("SERVICE_UNAVAILABLE"), json!(true))
                    );
                    shed.push(id);
                }
                other => panic!("submit {id}: {other} {answer}"),
            }
        }
        if !shed.is_empty() && !admitted.is_empty() {
            break;
        }
    }

    assert!(!shed.is_empty() && !admitted.is_empty(), "{} admitted, {} shed", admitted.len(), shed.len());
    let tasks = app.mongo.collection::<bson::Document>("tasks");
    for id in &admitted {
        assert!(tasks.find_one(bson::doc! {"_id": id}).await.expect("store").is_some(), "admitted {id} is stored");
    }
    for id in &shed {
        assert!(tasks.find_one(bson::doc! {"_id": id}).await.expect("store").is_none(), "shed {id} never queued");
    }
    let counted = metric(&app, &app.client, "gateway_shed_requests_total", "reason=\"backlog\"").await;
    assert_eq!(counted, shed.len() as f64);
    // Once the backlog has drained, a submit is admitted again.
    assert_eq!(app.submit(&body(&unique("after"), "say_hello", json!({}))).await.0, 200);
    app.cleanup().await;
}

/// Reads what the gateway sends until it closes the connection (at most `limit`).
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut seen)).await;
    assert!(read.is_ok(), "the connection is still open after {limit:?}; got {:?}", String::from_utf8_lossy(&seen));
    String::from_utf8_lossy(&seen).into_owned()
}

fn port(app: &TestApp) -> u16 {
    app.address.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_half_a_request_line_is_cut_off_after_the_header_timeout() {
    let app = app_with(&[("HEADER_READ_TIMEOUT_SECONDS", "1")]).await;
    let mut slow = TcpStream::connect(("127.0.0.1", port(&app))).await.expect("connect");
    let started = std::time::Instant::now();

    slow.write_all(b"GET /li").await.expect("write");
    read_until_closed(&mut slow, Duration::from_secs(15)).await;

    // Not before its time (the timer cannot fire early; this tells the timeout from a refusal).
    assert!(started.elapsed() >= Duration::from_millis(500), "closed after {:?}", started.elapsed());
    // A whole request on a new connection is answered as ever.
    let mut whole = TcpStream::connect(("127.0.0.1", port(&app))).await.expect("connect");
    whole.write_all(b"GET /live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await.expect("write");
    let answer = read_until_closed(&mut whole, Duration::from_secs(15)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    app.cleanup().await;
}

/// A POST to `/tasks/submit` that announces 100 bytes of body and sends 10.
async fn start_slow_body(app: &TestApp) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port(app))).await.expect("connect");
    let head = format!(
        "POST /tasks/submit HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TEST_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"task_id\""
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_answered_408_and_a_slow_answer_503() {
    let app = app_with(&[("BODY_READ_TIMEOUT_SECONDS", "1")]).await;
    let mut stream = start_slow_body(&app).await;

    let answer = read_until_closed(&mut stream, Duration::from_secs(15)).await;

    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error_code\":\"REQUEST_TIMEOUT\"") && answer.contains("\"path\":\"/tasks/submit\""));
    app.cleanup().await;

    // With the request timeout shorter than the body's, the gateway is what took too long.
    let app = app_with(&[("BODY_READ_TIMEOUT_SECONDS", "60"), ("REQUEST_TIMEOUT_SECONDS", "1")]).await;
    let mut stream = start_slow_body(&app).await;

    let answer = read_until_closed(&mut stream, Duration::from_secs(15)).await;

    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1\r\n"), "{answer}");
    assert!(answer.contains("\"error_code\":\"SERVICE_UNAVAILABLE\""), "{answer}");
    app.cleanup().await;
}

/// Whether a `GET /live` sent on `stream` is answered within `limit` (the connection stays open).
async fn answered_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.write_all(b"GET /live HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("write");
    let mut buffer = [0u8; 512];
    matches!(tokio::time::timeout(limit, stream.read(&mut buffer)).await, Ok(Ok(n)) if n > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_until_one_closes() {
    // Idle connections keep their slot for the whole test.
    let app = app_with(&[("MAX_CONNECTIONS", "2"), ("HEADER_READ_TIMEOUT_SECONDS", "120")]).await;
    let mut open = Vec::new();
    let mut waiting = None;
    // The test client may hold a slot already (its pooled connection), so at most three tries
    // find the one that waits.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(("127.0.0.1", port(&app))).await.expect("the kernel queues it");
        if answered_within(&mut stream, Duration::from_secs(2)).await {
            open.push(stream);
        } else {
            waiting = Some(stream);
            break;
        }
    }

    let mut waiting = waiting.expect("a third connection was not served while two were open");
    assert!(!open.is_empty() && open.len() <= 2, "{} connections served at once", open.len());
    drop(open.pop());
    let mut buffer = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), waiting.read(&mut buffer)).await;
    let n = n.expect("the waiting connection is served once a slot frees").expect("read");
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    drop(open);
    drop(waiting);
    app.cleanup().await;
}
