//! The gateway itself dies: SIGKILL with handlers running (their tasks re-run once, with a new
//! attempt number, after the lease expires), SIGTERM with handlers outlasting the grace period
//! (their leases are released, so they re-run at once), and SIGKILL between Camunda's 2xx for a
//! completion and the local record of it (the resend's 404 means "already reported").

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{
    camunda_standin::Camunda,
    checker::{self, Expect, Judge, default_limit, ids, n, submit_all},
    gateway::{Gateway, Setup},
    recorder::{Behavior, Recorder},
    services::lab,
};

const TOPIC: &str = "work";

/// Waits until the recorder has seen `at_least` executions.
async fn wait_executions(recorder: &Recorder, at_least: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while recorder.total() < at_least {
        assert!(Instant::now() < deadline, "only {} executions after {limit:?}", recorder.total());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tasks executed more than once, with their attempts.
fn reruns(recorder: &Recorder) -> HashMap<String, Vec<u32>> {
    recorder.runs().into_iter().filter(|(_, a)| a.len() > 1).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_killed_mid_handler_reruns_each_interrupted_task_once_after_its_lease() {
    const CONCURRENCY: u16 = 8;
    let lab = lab().await;
    let started = Instant::now();
    let recorder = Recorder::start(&lab.creds.api_key).await;
    recorder.behave(TOPIC, Behavior::ok(Duration::from_millis(300)));
    // Timeout 2 s: the lease is 2 s + 30 s.
    let topics = vec![(TOPIC.to_owned(), recorder.topic(TOPIC, &lab.creds.api_key, 2, CONCURRENCY, 3))];
    let mut gw = Gateway::start(&lab, "gateway_sigkill", Setup { topics, ..Default::default() }).await;
    let ids = ids("gwkill", n());
    let submitted = submit_all(&gw.api, TOPIC, &ids, 8, Default::default()).await;
    wait_executions(&recorder, n() / 3, Duration::from_secs(120)).await;
    gw.kill().await;
    let killed_at = Instant::now();
    let interrupted: Vec<String> = checker::settled_states(&gw.mongo)
        .await
        .into_iter()
        .filter(|(_, (status, _, _))| status == "processing")
        .map(|(id, _)| id)
        .collect();
    gw.restart().await;

    let judge = Judge {
        scenario: "gateway killed (SIGKILL) mid-handler, restarted",
        expect: Expect::succeeded(),
        recorder: Some(&recorder),
        camunda: None,
        limit: default_limit(n()) + Duration::from_secs(40),
    };
    let notes = vec![format!("{} tasks were mid-attempt at the kill", interrupted.len())];
    let mut tally = judge.judge(&gw, &submitted, notes).await;
    // A task mid-attempt at the kill may still have finished: its last write can reach the
    // server after the process is gone. A re-run is only allowed for one of those.
    let runs = recorder.runs();
    for id in &submitted.acked {
        let attempts = runs.get(id).cloned().unwrap_or_default();
        if attempts.contains(&2) {
            assert!(interrupted.contains(id), "{id} re-ran without having been interrupted: {attempts:?}");
            // [2] alone: claimed, but killed before its handler was called.
            assert!(attempts == [1, 2] || attempts == [2], "{id} re-ran once, as attempt 2: {attempts:?}");
        } else {
            assert_eq!(attempts, [1], "{id} ran once");
        }
    }
    assert!(interrupted.len() <= usize::from(CONCURRENCY), "prefetch bounds the work in hand");
    let reran = reruns(&recorder).len() + runs.values().filter(|a| a.as_slice() == [2]).count();
    tally.notes.push(format!(
        "{reran} re-ran as attempt 2, all done {:.0} s after the kill",
        killed_at.elapsed().as_secs_f64()
    ));
    tally.finish(gw, started.elapsed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_stopped_with_handlers_running_releases_their_leases() {
    const CONCURRENCY: u16 = 4;
    let lab = lab().await;
    let started = Instant::now();
    let recorder = Recorder::start(&lab.creds.api_key).await;
    // Attempt 1 outlasts the 1 s grace period; the re-run is quick.
    let slow_first =
        Behavior { delay: Duration::from_millis(20), first_attempt_delay: Some(Duration::from_secs(4)), status: 200 };
    recorder.behave(TOPIC, slow_first);
    // Timeout 10 s: an expired lease would take 40 s.
    let topics = vec![(TOPIC.to_owned(), recorder.topic(TOPIC, &lab.creds.api_key, 10, CONCURRENCY, 3))];
    let vars = vec![("SHUTDOWN_GRACE_SECONDS".to_owned(), "1".to_owned())];
    let mut gw = Gateway::start(&lab, "gateway_sigterm", Setup { topics, vars, ..Default::default() }).await;
    let ids = ids("gwterm", usize::from(CONCURRENCY) * 2);
    let submitted = submit_all(&gw.api, TOPIC, &ids, 8, Default::default()).await;
    wait_executions(&recorder, usize::from(CONCURRENCY), Duration::from_secs(60)).await;
    let status = gw.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "the gateway exits cleanly on SIGTERM: {status}");
    let states = checker::states(&gw.mongo).await.expect("store");
    let still_processing: Vec<&String> =
        states.iter().filter(|(_, (s, _, _))| s == "processing").map(|(id, _)| id).collect();
    assert!(still_processing.is_empty(), "attempts cut short by the shutdown were released: {still_processing:?}");
    let restarted = Instant::now();
    gw.restart().await;

    let judge = Judge {
        scenario: "gateway stopped (SIGTERM) with handlers outlasting the grace period",
        expect: Expect::succeeded(),
        recorder: Some(&recorder),
        camunda: None,
        limit: Duration::from_secs(30),
    };
    let tally = judge.judge(&gw, &submitted, Vec::new()).await;
    let done_in = restarted.elapsed();
    assert!(done_in < Duration::from_secs(30), "released tasks re-ran at once, not after the lease ({done_in:?})");
    let reruns = reruns(&recorder);
    assert_eq!(reruns.len(), usize::from(CONCURRENCY), "each interrupted task re-ran: {reruns:?}");
    tally.finish(gw, started.elapsed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_killed_between_camundas_2xx_and_its_record_reports_once() {
    let lab = lab().await;
    let started = Instant::now();
    let camunda = Camunda::start(&lab.creds.camunda_password).await;
    let recorder = Recorder::start(&lab.creds.api_key).await;
    recorder.behave(TOPIC, Behavior::ok(Duration::from_millis(50)));
    let topics = vec![(TOPIC.to_owned(), recorder.topic(TOPIC, &lab.creds.api_key, 2, 4, 3))];
    let setup = Setup { topics, vars: camunda.vars(&lab.creds.camunda_password), ..Default::default() };
    let mut gw = Gateway::start(&lab, "gateway_kill_after_2xx", setup).await;
    let ids = ids("gw2xx", n());
    let submitted = submit_all(&gw.api, TOPIC, &ids, 8, Default::default()).await;
    wait_executions(&recorder, n() / 4, Duration::from_secs(120)).await;
    camunda.kill_on_complete(gw.pid);
    gw.wait_killed(Duration::from_secs(60)).await;
    assert!(camunda.killed(), "the stand-in killed the gateway");
    let states = checker::states(&gw.mongo).await.expect("store");
    let at_camunda = camunda.tasks();
    let unrecorded: Vec<&String> = at_camunda
        .iter()
        .filter(|(id, t)| t.gone && states.get(*id).is_some_and(|(_, report, _)| report == "pending"))
        .map(|(id, _)| id)
        .collect();
    assert!(!unrecorded.is_empty(), "a completion landed at Camunda without being recorded");
    gw.restart().await;

    let judge = Judge {
        scenario: "gateway killed (SIGKILL) between Camunda's 2xx and its record",
        expect: Expect { status: "succeeded", report: Some("reported"), executed: true },
        recorder: Some(&recorder),
        camunda: Some(&camunda),
        // The report's 30 s hold and the 32 s leases of interrupted handlers.
        limit: default_limit(n()) + Duration::from_secs(60),
    };
    let notes = vec![format!("{} completion(s) landed unrecorded", unrecorded.len())];
    let tally = judge.judge(&gw, &submitted, notes).await;
    let at_camunda = camunda.tasks();
    for id in &unrecorded {
        let t = &at_camunda[*id];
        assert_eq!(t.committed, vec!["complete".to_owned()], "{id}: one completion, nothing else");
    }
    tally.finish(gw, started.elapsed()).await;
}
