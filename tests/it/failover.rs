//! Replica-set failover at the HTTP edge: while the store answers NotWritablePrimary (10107, what
//! a primary that has just stepped down says), a submit answers 503 with `Retry-After` in the
//! error shape, never 500, and the same submit succeeds once a primary takes writes again. The
//! error is injected with the MongoDB-wire server's `configureFailPoint`, scoped to this test's
//! gateway by its `appName`, so other tests' gateways never see it. (Bursts during a long run and
//! writes that never reach a majority: tests/faults/failover_faults.rs.)

use bson::{Document, doc};
use serde_json::json;

use crate::{
    common::{env, unique},
    helpers::{AppOptions, body, spawn_app_with},
};

/// The services' URI with `appName` set, so a failpoint can name this gateway alone.
fn uri_named(app_name: &str) -> String {
    let uri = env("MONGODB_URI");
    let (base, query) = uri.split_once('?').unwrap_or((&uri, ""));
    let base = if base.trim_start_matches("mongodb://").contains('/') { base.to_owned() } else { format!("{base}/") };
    let sep = if query.is_empty() { "" } else { "&" };
    format!("{base}?{query}{sep}appName={app_name}")
}

async fn fail_point(admin: &mongodb::Database, mode: bson::Bson, data: Document) {
    admin
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": mode, "data": data})
        .await
        .expect("the test server runs with --enable-test-commands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not yet seen passing: its failpoint on the shared test server is unproven beside other tests; run alone with `cargo test --test it failover:: -- --ignored` (issue 14 note)"]
async fn a_submit_while_the_primary_steps_down_answers_503_with_retry_after() {
    let app_name = unique("failover");
    let options = AppOptions {
        vars: vec![("MONGODB_URI".into(), uri_named(&app_name)), ("GATEWAY_MODE".into(), "api".into())],
        ..Default::default()
    };
    let app = spawn_app_with(options).await;
    let admin = mongodb::Client::with_uri_str(env("MONGODB_URI")).await.expect("mongo client").database("admin");

    // Every insert of this gateway (the driver's own retry included) is refused as by a
    // primary that just stepped down.
    let data = doc! {"failCommands": ["insert"], "errorCode": 10107, "appName": &app_name};
    fail_point(&admin, "alwaysOn".into(), data).await;
    let submit = body("failover-1", "say_hello", json!({"name": "x"}));
    let answer = app.client.post(app.url("/tasks/submit")).json(&submit).send().await.expect("an answer");
    let status = answer.status().as_u16();
    let retry_after = answer.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let error: serde_json::Value = answer.json().await.unwrap_or_default();
    fail_point(&admin, "off".into(), doc! {}).await;

    assert_eq!(status, 503, "NotWritablePrimary is unavailability, not an internal error: {error}");
    let seconds: u64 = retry_after.as_deref().and_then(|s| s.parse().ok()).expect("a Retry-After in seconds");
    assert!(seconds >= 1, "Retry-After {seconds}");
    assert_eq!(
        (error["error_code"].as_str(), error["retry_allowed"].as_bool()),
        (Some("SERVICE_UNAVAILABLE"), Some(true))
    );
    assert_eq!(error["path"], "/tasks/submit", "{error}");

    // The primary is back: the same submit is accepted.
    let (status, accepted) = app.submit(&submit).await;
    assert_eq!(status, 200, "{accepted}");
    app.cleanup().await;
}
