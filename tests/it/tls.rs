//! TLS on every wire, against real TLS servers: RabbitMQ's TLS listener (`scripts/services.sh`
//! configures it on 5671 with its own test CA), a second SecantusDB started here with TLS, and
//! HTTPS stand-ins for an `http` topic's downstream and for Camunda behind a CA made by the test.
//! Each works when its CA is configured, and fails with the peer and the reason named when not.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
};
use serde_json::{Value, json};
use support::{Pki, TlsMongo, build_error, drop_database, gateway_settings, https_server, services_client_cert};
use worker_api_gateway::{startup::Application, tls::ProbeOutcome};

use crate::helpers::{AppOptions, body, env, http_topic, spawn_app_with};

const WAIT: Duration = Duration::from_secs(30);

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test]
async fn amqps_with_the_brokers_ca_carries_a_task_end_to_end() {
    let ca = env("SERVICES_TLS_CA");
    let options = AppOptions {
        vars: vars(&[("RABBITMQ_URL", &env("RABBITMQ_TLS_URL")), ("RABBITMQ_CA_FILE", &ca)]),
        ..Default::default()
    };
    let app = spawn_app_with(options).await;
    let (code, _) = app.submit(&body("amqps-1", "say_hello", json!({"name": "TLS"}))).await;
    assert_eq!(code, 200);
    let task = app.wait_status("amqps-1", "succeeded", WAIT).await;
    assert_eq!(task["result"]["greeting"], "Hello, TLS!", "{task}");
    app.cleanup().await;
}

#[tokio::test]
async fn amqps_without_the_ca_stops_start_up_naming_the_broker_and_the_reason() {
    let (settings, database) = gateway_settings(&[("RABBITMQ_URL", env("RABBITMQ_TLS_URL"))]);
    let error = build_error(settings).await;
    drop_database(&database).await;
    assert!(error.contains("RabbitMQ at 127.0.0.1:5671"), "{error}");
    assert!(error.contains("TLS handshake failed: invalid peer certificate: UnknownIssuer"), "{error}");
}

#[tokio::test]
async fn a_client_certificate_is_presented_to_rabbitmq() {
    // The broker verifies a client certificate when one is offered: one from a CA it does not
    // know is refused in the handshake (so ours was sent); one from its own CA is accepted.
    let ca = env("SERVICES_TLS_CA");
    let stranger = Pki::new("stranger").client("client");
    let (settings, database) = gateway_settings(&[
        ("RABBITMQ_URL", env("RABBITMQ_TLS_URL")),
        ("RABBITMQ_CA_FILE", ca.clone()),
        ("RABBITMQ_CLIENT_CERT_FILE", stranger.cert.display().to_string()),
        ("RABBITMQ_CLIENT_KEY_FILE", stranger.key.display().to_string()),
    ]);
    let error = build_error(settings).await;
    drop_database(&database).await;
    assert!(error.contains("RabbitMQ at 127.0.0.1:5671: TLS handshake failed: received fatal alert"), "{error}");

    let known = services_client_cert(&Pki::new("known").dir);
    let options = AppOptions {
        vars: vars(&[
            ("RABBITMQ_URL", &env("RABBITMQ_TLS_URL")),
            ("RABBITMQ_CA_FILE", &ca),
            ("RABBITMQ_CLIENT_CERT_FILE", &known.cert.display().to_string()),
            ("RABBITMQ_CLIENT_KEY_FILE", &known.key.display().to_string()),
        ]),
        ..Default::default()
    };
    let app = spawn_app_with(options).await;
    let (code, _) = app.submit(&body("amqps-mtls-1", "say_hello", json!({}))).await;
    assert_eq!(code, 200);
    app.wait_status("amqps-mtls-1", "succeeded", WAIT).await;
    app.cleanup().await;
}

#[tokio::test]
async fn the_probe_reads_the_brokers_verdict_on_a_client_certificate() {
    // What start-up falls back on when lapin sees only a reset: the broker's own alert.
    let ca = env("SERVICES_TLS_CA");
    let probe = |cert: &support::Issued| {
        let (settings, _) = gateway_settings(&[
            ("RABBITMQ_CA_FILE", ca.clone()),
            ("RABBITMQ_CLIENT_CERT_FILE", cert.cert.display().to_string()),
            ("RABBITMQ_CLIENT_KEY_FILE", cert.key.display().to_string()),
        ]);
        let config = worker_api_gateway::tls::amqp_tls_config(&settings.tls).expect("loads");
        async move { worker_api_gateway::tls::probe("127.0.0.1", 5671, &config, b"AMQP\x00\x00\x09\x01").await }
    };
    let refused = probe(&Pki::new("probe-stranger").client("client")).await;
    assert!(
        matches!(&refused, ProbeOutcome::Refused(r) if r.starts_with("TLS handshake failed: received fatal alert")),
        "{refused:?}"
    );
    let accepted = probe(&services_client_cert(&Pki::new("probe-known").dir)).await;
    assert_eq!(accepted, ProbeOutcome::Accepted);
}

#[tokio::test]
async fn mongodb_over_tls_with_the_uris_ca_and_client_certificate_stores_and_processes() {
    let pki = Pki::new("mongo");
    let mongo = TlsMongo::start(&pki, true).await;
    let client = pki.client("gateway").combined();
    let uri = format!(
        "mongodb://127.0.0.1:{}/?tls=true&tlsCAFile={}&tlsCertificateKeyFile={}",
        mongo.port,
        pki.ca_file.display(),
        client.display()
    );
    let app = spawn_app_with(AppOptions { vars: vars(&[("MONGODB_URI", &uri)]), ..Default::default() }).await;
    let (code, _) = app.submit(&body("mongo-tls-1", "say_hello", json!({"name": "Mongo"}))).await;
    assert_eq!(code, 200);
    let task = app.wait_status("mongo-tls-1", "succeeded", WAIT).await;
    assert_eq!(task["result"]["greeting"], "Hello, Mongo!", "{task}");
    let stored = mongodb::Client::with_uri_str(&uri).await.expect("client").database(&app.database);
    let n = stored.collection::<bson::Document>("tasks").count_documents(bson::doc! {"_id": "mongo-tls-1"}).await;
    assert_eq!(n.ok(), Some(1), "the task is in the TLS server's store");
    app.cleanup().await;

    // No CA: the driver trusts only its bundled web roots, and says so about this server.
    let no_ca = format!("mongodb://127.0.0.1:{}/?tls=true&tlsCertificateKeyFile={}", mongo.port, client.display());
    let (settings, _) = gateway_settings(&[("MONGODB_URI", no_ca)]);
    let error = build_error(settings).await;
    let peer = format!("MongoDB at 127.0.0.1:{}", mongo.port);
    assert!(
        error.contains(&format!("{peer}: TLS handshake failed: invalid peer certificate: UnknownIssuer")),
        "{error}"
    );

    // The CA but no client certificate: the server, which requires one, refuses the handshake.
    let no_cert = format!("mongodb://127.0.0.1:{}/?tls=true&tlsCAFile={}", mongo.port, pki.ca_file.display());
    let (settings, _) = gateway_settings(&[("MONGODB_URI", no_cert)]);
    let error = build_error(settings).await;
    assert!(
        error.contains(&format!("{peer}: TLS handshake failed: received fatal alert: CertificateRequired")),
        "{error}"
    );
}

/// A downstream for `http` topics that echoes the variables.
fn echo() -> Router {
    Router::new().route("/", post(|Json(call): Json<Value>| async move { Json(json!({"echo": call["variables"]})) }))
}

#[tokio::test]
async fn an_https_downstream_behind_the_ca_bundle_is_called_and_without_it_the_reason_is_named() {
    let pki = Pki::new("downstream");
    let url = https_server(echo(), &pki, false).await;
    let topic = |name: &str| (name.to_owned(), http_topic(&format!("{url}/"), 1, 10));
    let with_ca = AppOptions {
        topics: vec![topic("https_echo")],
        vars: vars(&[("CA_BUNDLE_FILE", &pki.ca_file.display().to_string())]),
        ..Default::default()
    };
    let app = spawn_app_with(with_ca).await;
    app.submit(&body("https-1", "https_echo", json!({"n": 1}))).await;
    let task = app.wait_status("https-1", "succeeded", WAIT).await;
    assert_eq!(task["result"]["echo"]["n"], 1, "{task}");
    app.cleanup().await;

    let app = spawn_app_with(AppOptions { topics: vec![topic("https_echo")], ..Default::default() }).await;
    app.submit(&body("https-2", "https_echo", json!({"n": 2}))).await;
    let task = app.wait_status("https-2", "failed", WAIT).await;
    let error = task["error_message"].as_str().unwrap_or_default();
    let peer = url.trim_start_matches("https://");
    assert!(error.contains(&format!("downstream unreachable: {peer}: TLS handshake failed")), "{task}");
    assert!(error.contains("invalid peer certificate: UnknownIssuer"), "{task}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_downstream_requiring_a_client_certificate_gets_the_topics_own() {
    let pki = Pki::new("mtls");
    let url = https_server(echo(), &pki, true).await;
    let client = pki.client("topic-client");
    let with_cert = format!(
        "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n{}",
        client.cert.display(),
        client.key.display(),
        http_topic(&format!("{url}/"), 1, 10)
    );
    let options = AppOptions {
        topics: vec![("mtls_with".into(), with_cert), ("mtls_without".into(), http_topic(&format!("{url}/"), 1, 10))],
        vars: vars(&[("CA_BUNDLE_FILE", &pki.ca_file.display().to_string())]),
        ..Default::default()
    };
    let app = spawn_app_with(options).await;
    app.submit(&body("mtls-1", "mtls_with", json!({"n": 1}))).await;
    app.submit(&body("mtls-2", "mtls_without", json!({"n": 2}))).await;
    let ok = app.wait_status("mtls-1", "succeeded", WAIT).await;
    assert_eq!(ok["result"]["echo"]["n"], 1, "{ok}");
    let refused = app.wait_status("mtls-2", "failed", WAIT).await;
    let error = refused["error_message"].as_str().unwrap_or_default();
    assert!(error.contains(url.trim_start_matches("https://")) && error.contains("CertificateRequired"), "{refused}");
    app.cleanup().await;
}

/// A Camunda stand-in: `/engine` answers, `complete` calls are recorded by task id.
fn camunda_stand_in(completed: Arc<Mutex<Vec<String>>>) -> Router {
    Router::new()
        .route("/engine-rest/engine", get(|| async { Json(json!([{"name": "default"}])) }))
        .route(
            "/engine-rest/external-task/{id}/complete",
            post(|State(seen): State<Arc<Mutex<Vec<String>>>>, Path(id): Path<String>| async move {
                if let Ok(mut seen) = seen.lock() {
                    seen.push(id);
                }
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(completed)
}

#[tokio::test]
async fn camunda_over_https_with_mtls_gets_the_report_and_without_the_ca_the_report_error_names_it() {
    let pki = Pki::new("camunda");
    let completed = Arc::new(Mutex::new(Vec::new()));
    let base = https_server(camunda_stand_in(completed.clone()), &pki, true).await;
    let client = pki.client("camunda-client");
    let camunda_url = format!("{base}/engine-rest");
    let options = AppOptions {
        vars: vars(&[
            ("CAMUNDA_URL", &camunda_url),
            ("CA_BUNDLE_FILE", &pki.ca_file.display().to_string()),
            ("CAMUNDA_CLIENT_CERT_FILE", &client.cert.display().to_string()),
            ("CAMUNDA_CLIENT_KEY_FILE", &client.key.display().to_string()),
        ]),
        ..Default::default()
    };
    let app = spawn_app_with(options).await;
    app.submit(&body("camunda-tls-1", "say_hello", json!({}))).await;
    let path = "/tasks/camunda-tls-1/status";
    let task = app.wait_for("the report", WAIT, |v| v["camunda"]["report_state"] == "reported", path).await;
    assert_eq!(completed.lock().map(|c| c.clone()).unwrap_or_default(), vec!["camunda-tls-1".to_owned()], "{task}");
    app.cleanup().await;

    let app = spawn_app_with(AppOptions { vars: vars(&[("CAMUNDA_URL", &camunda_url)]), ..Default::default() }).await;
    app.submit(&body("camunda-tls-2", "say_hello", json!({}))).await;
    let path = "/tasks/camunda-tls-2/status";
    let task = app.wait_for("a report error", WAIT, |v| v["camunda"]["last_report_error"].is_string(), path).await;
    let error = task["camunda"]["last_report_error"].as_str().unwrap_or_default();
    let peer = base.trim_start_matches("https://");
    assert!(
        error.contains(&format!("{peer}: TLS handshake failed: invalid peer certificate: UnknownIssuer")),
        "{task}"
    );
    assert_eq!(completed.lock().map(|c| c.len()).unwrap_or_default(), 1, "nothing reached the stand-in");
    app.cleanup().await;
}

#[tokio::test]
async fn the_api_serves_https_with_its_certificate_and_stops_gracefully() {
    let pki = Pki::new("api");
    let server = pki.server("api");
    let (settings, database) = gateway_settings(&[
        ("TLS_CERT_FILE", server.cert.display().to_string()),
        ("TLS_KEY_FILE", server.key.display().to_string()),
    ]);
    let app = Application::build(settings).await.expect("the gateway builds with TLS_CERT_FILE");
    let port = app.port();
    let stop = app.stop_token();
    let task = tokio::spawn(app.run_until_stopped());
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca_file).expect("CA")).expect("CA parses");
    let client = reqwest::Client::builder().add_root_certificate(ca).build().expect("client");
    let live = client.get(format!("https://127.0.0.1:{port}/live")).send().await.expect("HTTPS answers");
    assert_eq!(live.status(), 200);
    assert_eq!(live.version(), reqwest::Version::HTTP_2, "ALPN offers HTTP/2");
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/live")).await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200), "plain HTTP is not served");
    let untrusted = reqwest::get(format!("https://127.0.0.1:{port}/live")).await;
    assert!(untrusted.is_err(), "a client without the CA does not get through");
    stop.cancel();
    let stopped = tokio::time::timeout(WAIT, task).await.expect("stops in time").expect("no panic");
    assert!(stopped.is_ok(), "{stopped:?}");
    drop_database(&database).await;
}
