//! Submission races: 50 identical submits of one task at once (one task, one execution, every
//! answer 200 and exactly one `created:true`), and the same id with a different body (409, the
//! original untouched, whether it comes after the original or races it).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::{
    checker::{Expect, Judge, Submitted, body, ids, n},
    gateway::{Gateway, Setup},
    recorder::{Behavior, Recorder},
    services::lab,
};

const TOPIC: &str = "work";

async fn start(lab: &crate::services::Lab, scenario: &str) -> (Recorder, Gateway) {
    let recorder = Recorder::start(&lab.creds.api_key).await;
    recorder.behave(TOPIC, Behavior::ok(Duration::from_millis(10)));
    let topics = vec![(TOPIC.to_owned(), recorder.topic(TOPIC, &lab.creds.api_key, 30, 8, 3))];
    let gw = Gateway::start(lab, scenario, Setup { topics, ..Default::default() }).await;
    (recorder, gw)
}

/// Sends every body at once; returns (status, answer) for each.
async fn burst(gw: &Gateway, bodies: Vec<Value>) -> Vec<(u16, Value)> {
    let answers = futures::future::join_all(bodies.iter().map(|b| gw.api.submit(b))).await;
    answers.into_iter().map(|a| a.unwrap_or((0, Value::Null))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_identical_parallel_submits_make_one_task_and_one_execution() {
    const COPIES: usize = 50;
    let lab = lab().await;
    let started = Instant::now();
    let (recorder, gw) = start(&lab, "parallel_identical").await;
    let ids = ids("same", (n() / 10).max(5));
    let mut submitted = Submitted::default();
    let mut refused = Vec::new();
    // A few ids at a time, each with its 50 copies in one burst.
    let per_id: Vec<(String, Vec<(u16, Value)>)> = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let gw = &gw;
            async move {
                let answers = burst(gw, vec![body(&id, TOPIC); COPIES]).await;
                (id, answers)
            }
        })
        .buffer_unordered(2)
        .collect()
        .await;
    for (id, answers) in per_id {
        let created = answers.iter().filter(|(_, a)| a["created"] == true).count();
        let ok = answers.iter().filter(|(s, _)| *s == 200).count();
        if ok != COPIES {
            refused.push(format!(
                "{id}: {} of {COPIES} answered 200: {:?}",
                ok,
                answers.iter().find(|(s, _)| *s != 200)
            ));
        }
        assert_eq!(created, 1, "{id}: exactly one of {COPIES} identical submits created the task");
        submitted.acked.push(id);
    }
    assert!(refused.is_empty(), "identical submits are all acknowledged: {refused:?}");

    let judge = Judge {
        scenario: "50 identical submits of each task in parallel",
        expect: Expect::succeeded(),
        recorder: Some(&recorder),
        camunda: None,
        limit: Duration::from_secs(120),
    };
    let mut tally = judge.judge(&gw, &submitted, Vec::new()).await;
    tally.submitted = submitted.acked.len() * COPIES;
    tally.notes.push(format!("{} tasks × {COPIES} submits; one execution each", submitted.acked.len()));
    let runs = recorder.runs();
    for id in &submitted.acked {
        assert_eq!(runs.get(id).map(Vec::as_slice), Some(&[1][..]), "{id} ran once");
    }
    tally.finish(gw, started.elapsed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_id_with_a_different_body_is_refused_and_the_original_kept() {
    let lab = lab().await;
    let started = Instant::now();
    let (recorder, gw) = start(&lab, "conflicting_bodies").await;
    let count = (n() / 10).max(5);
    let other = |id: &str| json!({"task_id": id, "worker_id": "worker-1", "topic": TOPIC, "variables": {"n": "other"}});
    let mut submitted = Submitted::default();

    // After: the original is in, then a different body for the same id.
    for id in ids("after", count) {
        let (status, _) = gw.api.submit(&body(&id, TOPIC)).await.expect("answer");
        assert_eq!(status, 200);
        let (status, answer) = gw.api.submit(&other(&id)).await.expect("answer");
        assert_eq!((status, answer["error_code"].as_str()), (409, Some("CONFLICT")), "{id}: {answer}");
        submitted.acked.push(id);
    }
    // Racing: both bodies at once; exactly one wins, the other gets 409.
    let mut winners = Vec::new();
    for id in ids("race", count) {
        let answers = burst(&gw, vec![body(&id, TOPIC), other(&id)]).await;
        let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
        let mut sorted = statuses.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [200, 409], "{id}: one body wins, the other is refused: {answers:?}");
        let winner = if statuses[0] == 200 { json!({"n": id}) } else { json!({"n": "other"}) };
        winners.push((id.clone(), winner));
        submitted.acked.push(id);
    }

    let judge = Judge {
        scenario: "same id, different body (after and racing)",
        expect: Expect::succeeded(),
        recorder: Some(&recorder),
        camunda: None,
        limit: Duration::from_secs(120),
    };
    let mut tally = judge.judge(&gw, &submitted, Vec::new()).await;
    for id in &submitted.acked[..count] {
        assert_eq!(recorder.variables(id), Some(json!({"n": id})), "{id}: the original body ran");
    }
    for (id, winner) in &winners {
        assert_eq!(recorder.variables(id).as_ref(), Some(winner), "{id}: the acknowledged body ran");
        let (_, status) = gw.api.get(&format!("/tasks/{id}/status")).await.expect("status answers");
        assert_eq!(status["status"], "succeeded");
    }
    tally.submitted = submitted.acked.len() * 2;
    tally.notes.push(format!("{count} after the original, {count} racing it; every loser got 409"));
    tally.finish(gw, started.elapsed()).await;
}
