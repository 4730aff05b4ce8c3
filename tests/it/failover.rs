//! Replica-set failover at the HTTP edge: while the store answers NotWritablePrimary (10107, what
//! a primary that has just stepped down says), a submit answers 503 with `Retry-After` in the
//! error shape, never 500, and the same submit succeeds once a primary takes writes again. The
//! error is injected with the MongoDB-wire server's `configureFailPoint`, scoped to this test's
//! gateway by its `appName`, so other tests' gateways never see it. (Bursts during a long run and
//! writes that never reach a majority: tests/faults/failover_faults.rs.)

use std::time::Duration;

use bson::{Document, doc};
use serde_json::json;
use worker_api_gateway::store::{MongoStore, TaskStore};

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

/// The server has one `failCommand` failpoint: the tests here take turns with it.
static FAIL_POINT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn fail_point(admin: &mongodb::Database, mode: bson::Bson, data: Document) {
    admin
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": mode, "data": data})
        .await
        .expect("the test server runs with --enable-test-commands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_while_the_primary_steps_down_answers_503_with_retry_after() {
    let _turn = FAIL_POINT.lock().await;
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

    // The primary is back: the same submit is accepted, once the store's write probe (every 5 s,
    // and refused too while the failpoint was on) has seen a majority write again — as a worker
    // honouring `Retry-After` would find.
    let accepted = std::sync::Mutex::new(serde_json::Value::Null);
    crate::helpers::eventually("the same submit accepted after the failover", Duration::from_secs(20), || async {
        let (status, answer) = app.submit(&submit).await;
        *accepted.lock().unwrap_or_else(|e| e.into_inner()) = answer;
        status == 200
    })
    .await;
    assert_eq!(accepted.into_inner().unwrap_or_default()["created"], true, "the refused submit stored nothing");
    app.cleanup().await;
}

/// A batch claim whose `updateMany` lands but whose answer is lost (here: a write concern that
/// timed out, after the server applied the update) is tried again under the same token, so the
/// claims that landed are handed over instead of sitting leased to nobody until the lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_claim_whose_answer_is_lost_hands_over_what_it_claimed() {
    let _turn = FAIL_POINT.lock().await;
    let options = AppOptions { vars: vec![("GATEWAY_MODE".into(), "api".into())], ..Default::default() };
    let app = spawn_app_with(options).await;
    let ids: Vec<String> = (1..=3).map(|i| format!("lost-claim-{i}")).collect();
    for id in &ids {
        let (status, answer) = app.submit(&body(id, "say_hello", json!({"name": "x"}))).await;
        assert_eq!(status, 200, "{answer}");
    }
    let app_name = unique("claimlost");
    let named = mongodb::Client::with_uri_str(uri_named(&app_name)).await.expect("mongo client");
    let store = MongoStore::new(named.database(&app.database));
    let admin = mongodb::Client::with_uri_str(env("MONGODB_URI")).await.expect("mongo client").database("admin");

    let lost = doc! {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out", "errInfo": {"wtimeout": true}};
    fail_point(
        &admin,
        doc! {"times": 1}.into(),
        doc! {"failCommands": ["update"], "writeConcernError": lost, "appName": &app_name},
    )
    .await;
    let claimed = store.claim_batch(ids.clone(), Duration::from_secs(60)).await;
    fail_point(&admin, "off".into(), doc! {}).await;

    let mut claimed: Vec<String> =
        claimed.expect("the lost answer is retried").into_iter().map(|t| t.task_id).collect();
    claimed.sort();
    assert_eq!(claimed, ids, "every landed claim is handed over");
    for id in &ids {
        let stored = app.status_from_store(id).await;
        assert_eq!((stored.status.as_str(), stored.attempts), ("processing", 1), "claimed once: {stored:?}");
    }
    app.cleanup().await;
}
