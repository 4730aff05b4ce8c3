//! Replica-set failover, injected with the MongoDB-wire server's `configureFailPoint` (the
//! services run it with `--enable-test-commands`), scoped to the gateway under test by its
//! `appName` so the checker's own reads and writes are never failed:
//! - NotWritablePrimary (10107) bursts on insert, update, findAndModify and bulkWrite during a
//!   run of 500+ tasks: submits answer 200 or 503 with `Retry-After`, never 500; claims and
//!   finishes wait the bursts out; every task runs once and succeeds.
//! - Writes that never reach a majority (a `writeConcernError` 64 with `wtimeout`, on every
//!   write): `/health` turns unhealthy (503, `mongodb_writes: no_majority`) while it lasts and
//!   healthy after; submits answer 503, not 500; nothing is lost once the refused are resubmitted.

use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};

use crate::{
    checker::{conclude, ids, n, resubmit_until_acked, submit_all, submit_in_background, wait_progress},
    gateway::{Gateway, Setup},
    recorder::{Behavior, Recorder},
    services::{self, lab, unique},
};

const TOPIC: &str = "work";
/// The writes the gateway makes: submits (insert), claims, debts and sweeps (update,
/// findAndModify), batch finishes (the client-level bulkWrite).
const WRITES: [&str; 4] = ["insert", "update", "findAndModify", "bulkWrite"];

/// `uri` with `appName` added: the failpoints name this gateway alone.
fn named(uri: &str, app_name: &str) -> String {
    let sep = if uri.contains('?') {
        "&"
    } else if uri.trim_start_matches("mongodb://").contains('/') {
        "?"
    } else {
        "/?"
    };
    format!("{uri}{sep}appName={app_name}")
}

/// The server's `failCommand` failpoint, set from the test's own (unnamed) client.
struct FailPoint {
    admin: mongodb::Database,
    app_name: String,
}

impl FailPoint {
    async fn new(lab: &services::Lab, app_name: &str) -> Self {
        let client = mongodb::Client::with_uri_str(&lab.creds.mongo_plain).await.expect("MongoDB client");
        Self { admin: client.database("admin"), app_name: app_name.to_owned() }
    }

    async fn set(&self, mode: Bson, mut data: Document) {
        data.insert("appName", self.app_name.clone());
        let command = doc! {"configureFailPoint": "failCommand", "mode": mode, "data": data};
        self.admin.run_command(command).await.expect("configureFailPoint (the server needs --enable-test-commands)");
    }

    async fn off(&self) {
        let command = doc! {"configureFailPoint": "failCommand", "mode": "off"};
        self.admin.run_command(command).await.expect("configureFailPoint off");
    }
}

async fn start(lab: &services::Lab, scenario: &str, app_name: &str) -> (Recorder, Gateway) {
    let recorder = Recorder::start(&lab.creds.api_key).await;
    recorder.behave(TOPIC, Behavior::ok(Duration::from_millis(20)));
    let topics = vec![(TOPIC.to_owned(), recorder.topic(TOPIC, &lab.creds.api_key, 30, 8, 5))];
    let vars = vec![
        ("MONGODB_URI".to_owned(), named(&lab.creds.mongo_uri, app_name)),
        ("MONGODB_WRITE_TIMEOUT_MS".to_owned(), "2000".to_owned()),
    ];
    let gateway = Gateway::start(lab, scenario, Setup { topics, vars, ..Default::default() }).await;
    (recorder, gateway)
}

/// A 503 must say when to come back; a 500 must never be the answer to a failover.
async fn assert_503_with_retry_after(gw: &Gateway, task_id: &str) {
    let answer = gw
        .api
        .http
        .post(format!("{}/tasks/submit", gw.api.base))
        .json(&crate::checker::body(task_id, TOPIC))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(answer.status().as_u16(), 503, "a submit without a majority");
    let retry_after = answer.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|s| s.parse().ok());
    assert!(retry_after.is_some_and(|s: u64| s >= 1), "503 without Retry-After: {retry_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_writable_primary_bursts_lose_nothing_and_never_answer_500() {
    let lab = lab().await;
    let started = Instant::now();
    let app_name = unique("nwp");
    let (recorder, gw) = start(&lab, "failover_nwp", &app_name).await;
    let fail = FailPoint::new(&lab, &app_name).await;
    let ids = ids("nwp", n().max(500));

    // Bursts while submits are in flight and the first tasks are being claimed and finished:
    // each fails the next 12 of one kind of write (the driver's own retry of a retryable write
    // included), rotating through the gateway's writes, 250 ms apart.
    let (progress, submits) = submit_in_background(&gw.api, TOPIC, ids.clone(), 8);
    wait_progress(&progress, ids.len() / 10, Duration::from_secs(120)).await;
    let mut bursts = 0;
    while !submits.is_finished() && bursts < 60 {
        let command = WRITES[bursts % WRITES.len()];
        fail.set(doc! {"times": 12}.into(), doc! {"failCommands": [command], "errorCode": 10107}).await;
        bursts += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A few more while the backlog is processed: claims and finishes only.
    for i in 0..12 {
        let command = WRITES[1 + i % 3];
        fail.set(doc! {"times": 12}.into(), doc! {"failCommands": [command], "errorCode": 10107}).await;
        bursts += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    fail.off().await;
    let mut submitted = submits.await.expect("submitter");
    let codes: std::collections::BTreeSet<u16> = submitted.rejected.iter().map(|(_, s)| *s).collect();
    assert!(codes.iter().all(|c| *c == 503), "a failover is answered 503, got {codes:?}");
    let refused: Vec<String> = submitted.rejected.drain(..).map(|(id, _)| id).collect();
    submitted.merge(resubmit_until_acked(&gw.api, TOPIC, &refused, Duration::from_secs(120)).await);
    assert_eq!(gw.log_count("answering 500"), 0, "a 500 was answered during the bursts");

    let notes = vec![format!("{bursts} bursts of 12 NotWritablePrimary; {} submits refused with 503", refused.len())];
    conclude(
        "NotWritablePrimary bursts on insert/update/findAndModify/bulkWrite",
        started,
        gw,
        &recorder,
        submitted,
        notes,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_without_a_majority_turn_health_unhealthy_and_answer_503() {
    let lab = lab().await;
    let started = Instant::now();
    let app_name = unique("nomaj");
    let (recorder, mut gw) = start(&lab, "failover_no_majority", &app_name).await;
    let fail = FailPoint::new(&lab, &app_name).await;
    let ids = ids("nomaj", n());
    let (before, rest) = ids.split_at(n() / 2);
    let (during, after) = rest.split_at(rest.len() / 2);
    let healthy = gw.wait_health("writes up", Duration::from_secs(30), |h| h["mongodb_writes"] == "up").await;
    assert_eq!(healthy["status"], "healthy", "{healthy}");

    let mut submitted = submit_all(&gw.api, TOPIC, before, 8, Default::default()).await;
    // Every write of this gateway is applied by the primary but not acknowledged by a majority
    // in time, as when the secondaries are gone.
    let wtimeout = doc! {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "waiting for replication timed out",
    "errInfo": {"wtimeout": true}};
    fail.set("alwaysOn".into(), doc! {"failCommands": WRITES.to_vec(), "writeConcernError": wtimeout}).await;
    let unhealthy =
        gw.wait_health("no majority", Duration::from_secs(30), |h| h["mongodb_writes"] == "no_majority").await;
    assert_eq!((unhealthy["status"].as_str(), unhealthy["mongodb"].as_str()), (Some("unhealthy"), Some("unhealthy")));
    let (code, _) = gw.api.get("/health").await.expect("/health answers");
    assert_eq!(code, 503, "/health while majority writes fail");
    assert_503_with_retry_after(&gw, &format!("{}-probe", during[0])).await;
    let refused_during = submit_all(&gw.api, TOPIC, during, 8, Default::default()).await;
    // Long enough for running handlers to finish and find their outcomes unacknowledged.
    tokio::time::sleep(Duration::from_secs(3)).await;
    fail.off().await;

    let recovered = gw.wait_health("writes up again", Duration::from_secs(30), |h| h["status"] == "healthy").await;
    assert_eq!(recovered["mongodb_writes"], "up", "{recovered}");
    let codes: std::collections::BTreeSet<u16> = refused_during.rejected.iter().map(|(_, s)| *s).collect();
    assert!(codes.iter().all(|c| *c == 503), "submits without a majority answer 503, got {codes:?}");
    assert!(refused_during.acked.is_empty(), "a submit was acknowledged without a majority");
    let refused: Vec<String> = refused_during.rejected.iter().map(|(id, _)| id.clone()).collect();
    submitted.merge(resubmit_until_acked(&gw.api, TOPIC, &refused, Duration::from_secs(120)).await);
    submitted.merge(submit_all(&gw.api, TOPIC, after, 8, Default::default()).await);
    assert_eq!(gw.log_count("answering 500"), 0, "a 500 was answered without a majority");

    let notes = vec![format!("{} refused with 503 while no majority, then resubmitted", refused.len())];
    conclude("writes never reach a majority (wtimeout), then do", started, gw, &recorder, submitted, notes).await;
}
