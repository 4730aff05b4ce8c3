//! What subscribers receive: events from two replicas on one stream, in order per task; every
//! event of a run after a reconnect with `Last-Event-ID` (from the ring, and from the store on a
//! replica that never held it); `reset` for an id that cannot be resumed; filters.

use std::{collections::HashSet, time::Duration};

use serde_json::json;

use super::sse::{Frame, Sse, all_succeeded, statuses_by_task};
use crate::helpers::{AppOptions, TestApp, body, spawn_app, spawn_app_with};

const LIMIT: Duration = Duration::from_secs(60);
const LIFE: [&str; 3] = ["queued", "processing", "succeeded"];

async fn submit_all(app: &TestApp, ids: &[String]) {
    for id in ids {
        let (code, answer) = app.submit(&body(id, "say_hello", json!({"name": id}))).await;
        assert_eq!(code, 200, "{answer}");
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Every task went queued → processing → succeeded, in that order, attempts never going down.
fn assert_whole_lives(frames: &[Frame], tasks: &[String]) {
    let by_task = statuses_by_task(frames);
    for task in tasks {
        assert_eq!(by_task.get(task).map(Vec::as_slice), Some(&LIFE.map(String::from)[..]), "events of {task}");
        let attempts: Vec<u64> = frames
            .iter()
            .filter(|f| f.json()["task_id"] == task.as_str())
            .filter_map(|f| f.json()["attempts"].as_u64())
            .collect();
        assert!(attempts.windows(2).all(|w| w[0] <= w[1]), "attempts of {task} went down: {attempts:?}");
    }
}

async fn replica_of(app: &TestApp) -> TestApp {
    spawn_app_with(AppOptions { reuse: Some((app.database.clone(), app.exchange.clone())), ..Default::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscriber_sees_the_events_of_both_replicas_in_order_per_task() {
    let a = spawn_app().await;
    let b = replica_of(&a).await;
    let mut feed = Sse::open(&a.client, &a.address, "", None).await;
    assert_eq!(feed.status, 200);

    let (on_a, on_b) = (ids("two-a", 4), ids("two-b", 4));
    submit_all(&a, &on_a).await;
    submit_all(&b, &on_b).await;
    let all: Vec<String> = on_a.iter().chain(&on_b).cloned().collect();
    let frames = feed.collect(LIMIT, |seen| all_succeeded(seen, &all)).await;

    assert_whole_lives(&frames, &all);
    let ids: Vec<&str> = frames.iter().filter_map(|f| f.id.as_deref()).collect();
    assert_eq!(ids.len(), ids.iter().collect::<HashSet<_>>().len(), "an event came twice");
    b.cleanup().await;
    a.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_with_last_event_id_misses_nothing_from_the_ring_or_from_the_store() {
    let app = spawn_app().await;
    let tasks = ids("resume", 12);
    let mut first = Sse::open(&app.client, &app.address, "", None).await;
    submit_all(&app, &tasks).await;
    // Disconnect after a few events, mid-run.
    let before = first.collect(LIMIT, |seen| seen.len() >= 5).await;
    drop(first);
    let last = before.last().and_then(|f| f.id.clone()).expect("events carry ids");
    for task in &tasks {
        let (_, v) = app.get_json(&format!("/tasks/{task}/status?wait=30")).await;
        assert_eq!(v["status"], "succeeded", "{v}");
    }

    // From this replica's ring...
    let mut again = Sse::open(&app.client, &app.address, "", Some(&last)).await;
    let after = again.collect(LIMIT, |seen| all_succeeded(&[&before[..], seen].concat(), &tasks)).await;
    let whole = [&before[..], &after[..]].concat();
    assert_whole_lives(&whole, &tasks);
    let seen_before: HashSet<_> = before.iter().filter_map(|f| f.id.clone()).collect();
    assert!(after.iter().all(|f| f.id.as_ref().is_none_or(|id| !seen_before.contains(id))), "replayed twice");
    assert!(after.iter().all(|f| f.event == "task"), "{after:?}");

    // ...and from a replica started after the run, which never held it: resumed from the store.
    let late = replica_of(&app).await;
    let mut from_store = Sse::open(&late.client, &late.address, "", Some(&last)).await;
    let resumed = from_store.collect(LIMIT, |seen| all_succeeded(&[&before[..], seen].concat(), &tasks)).await;
    assert_whole_lives(&[&before[..], &resumed[..]].concat(), &tasks);
    assert_eq!(resumed.first().map(|f| f.event.as_str()), Some("task"), "no reset for a resumable id");

    // An id no store could resume from: reset first, then live events.
    let mut lost = Sse::open(&late.client, &late.address, "", Some("00ff")).await;
    let reset = lost.next(Duration::from_secs(20)).await.expect("a first frame");
    assert_eq!(reset.event, "reset", "{reset:?}");
    assert!(reset.json()["reason"].is_string());
    submit_all(&late, &ids("after-reset", 1)).await;
    let live = lost.collect(LIMIT, |seen| all_succeeded(seen, &ids("after-reset", 1))).await;
    assert!(all_succeeded(&live, &ids("after-reset", 1)));
    late.cleanup().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_by_topic_status_and_task_id_combine() {
    let app = spawn_app().await;
    let mut done_only = Sse::open(&app.client, &app.address, "?topic=say_hello&status=succeeded,failed", None).await;
    let mut one_task = Sse::open(&app.client, &app.address, "?task_id=filter-1", None).await;
    let mut other_topic = Sse::open(&app.client, &app.address, "?topic=nova_publicacao", None).await;
    let tasks = ids("filter", 3);
    submit_all(&app, &tasks).await;

    let done = done_only.collect(LIMIT, |seen| all_succeeded(seen, &tasks)).await;
    assert!(all_succeeded(&done, &tasks));
    assert!(done.iter().all(|f| f.json()["status"] == "succeeded"), "{done:?}");
    let one = one_task.collect(LIMIT, |seen| all_succeeded(seen, &tasks[1..2])).await;
    assert_eq!(statuses_by_task(&one).keys().collect::<Vec<_>>(), ["filter-1"]);
    assert_whole_lives(&one, &tasks[1..2]);
    assert!(other_topic.next(Duration::from_millis(500)).await.is_none(), "another topic's events leaked");

    let bad = app.get("/events?status=nope").await;
    assert_eq!(bad.status().as_u16(), 400);
    let error: serde_json::Value = bad.json().await.unwrap_or_default();
    assert_eq!(error["details"][0]["field"], "status", "{error}");
    app.cleanup().await;
}
