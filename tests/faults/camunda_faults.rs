//! Camunda faults, against the fault-injecting stand-in: 500s, a Camunda that commits and then
//! hangs past the client's timeout, connections reset before the request is read, and final
//! 404 / 400 answers. Reports are retried with growing delays and land exactly once; the handler
//! never runs again because of a report; 404 and 400 are final at the first answer.

use std::time::{Duration, Instant};

use crate::{
    camunda_standin::{Camunda, Fault},
    checker::{Expect, Judge, default_limit, ids, n, submit_all},
    gateway::{Gateway, Setup},
    recorder::{Behavior, Recorder},
    services::{Lab, lab},
};

const TOPIC: &str = "work";

struct Rig {
    camunda: Camunda,
    recorder: Recorder,
    gw: Gateway,
}

async fn rig(lab: &Lab, scenario: &str) -> Rig {
    let camunda = Camunda::start(&lab.creds.camunda_password).await;
    let recorder = Recorder::start(&lab.creds.api_key).await;
    recorder.behave(TOPIC, Behavior::ok(Duration::from_millis(10)));
    let topics = vec![(TOPIC.to_owned(), recorder.topic(TOPIC, &lab.creds.api_key, 30, 8, 3))];
    let setup = Setup { topics, vars: camunda.vars(&lab.creds.camunda_password), ..Default::default() };
    let gw = Gateway::start(lab, scenario, setup).await;
    Rig { camunda, recorder, gw }
}

/// Every task ran its handler exactly once, whatever happened to its report.
fn ran_once(rig: &Rig, acked: &[String]) {
    let runs = rig.recorder.runs();
    for id in acked {
        assert_eq!(runs.get(id).map(Vec::as_slice), Some(&[1][..]), "{id}: the handler ran once");
    }
}

/// Runs `n` tasks through a rig whose stand-in misbehaves as `arrange` says, and judges them.
async fn scenario(
    lab: &Lab,
    name: &str,
    tag: &str,
    report: &'static str,
    arrange: impl FnOnce(&Camunda),
) -> (Rig, crate::checker::Tally) {
    let rig = rig(lab, tag).await;
    arrange(&rig.camunda);
    let submitted = submit_all(&rig.gw.api, TOPIC, &ids(tag, n()), 8, Default::default()).await;
    let judge = Judge {
        scenario: name,
        expect: Expect { status: "succeeded", report: Some(report), executed: true },
        recorder: Some(&rig.recorder),
        camunda: Some(&rig.camunda),
        limit: default_limit(n()),
    };
    let tally = judge.judge(&rig.gw, &submitted, Vec::new()).await;
    ran_once(&rig, &submitted.acked);
    (rig, tally)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn camunda_answering_500_gets_the_report_retried_with_backoff() {
    const FAILS: u32 = 3;
    let lab = lab().await;
    let started = Instant::now();
    let (rig, mut tally) =
        scenario(&lab, "Camunda answers 500 to the first 3 reports of each task", "cam500", "reported", |c| {
            c.fault(Fault::Status(500), FAILS)
        })
        .await;
    let mut gaps = Vec::new();
    for (id, task) in rig.camunda.tasks() {
        assert_eq!(task.calls, FAILS + 1, "{id}: {FAILS} refused reports, then one that landed");
        let waits: Vec<Duration> = task.at.windows(2).map(|w| w[1] - w[0]).collect();
        // The reporter waits 1 s, 2 s, 4 s, … between sends (a sweep may add to that).
        for (i, wait) in waits.iter().enumerate() {
            let floor = Duration::from_millis(900) * (1 << i);
            assert!(*wait >= floor, "{id}: report {} came {wait:?} after the one before, under {floor:?}", i + 2);
        }
        gaps.push(waits);
    }
    let first = gaps.iter().filter_map(|g| g.first()).min().copied().unwrap_or_default();
    let last = gaps.iter().filter_map(|g| g.last()).max().copied().unwrap_or_default();
    tally.notes.push(format!(
        "delays between reports from {:.1} s to {:.1} s",
        first.as_secs_f64(),
        last.as_secs_f64()
    ));
    tally.finish(rig.gw, started.elapsed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn camunda_hanging_after_committing_is_not_reported_twice() {
    let lab = lab().await;
    let started = Instant::now();
    let (rig, mut tally) = scenario(
        &lab,
        "Camunda commits the first report, then hangs past the 10 s client timeout",
        "camhang",
        "reported",
        |c| c.fault(Fault::HangAfterCommit(Duration::from_secs(13)), 1),
    )
    .await;
    let tasks = rig.camunda.tasks();
    let resent = tasks.values().filter(|t| t.calls > 1).count();
    assert!(resent > 0, "the timed-out reports were sent again");
    tally.notes.push(format!("{resent} reports sent again after the timeout and answered 404 (already completed)"));
    tally.finish(rig.gw, started.elapsed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn camunda_resetting_connections_gets_the_report_retried() {
    let lab = lab().await;
    let started = Instant::now();
    let rig = rig(&lab, "camreset").await;
    rig.camunda.resetting(true);
    let submitted = submit_all(&rig.gw.api, TOPIC, &ids("camreset", n()), 8, Default::default()).await;
    // Reset every other connection until each task has likely met one, then heal.
    let deadline = Instant::now() + Duration::from_secs(60);
    while rig.camunda.resets() < n() / 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rig.camunda.resetting(false);
    let resets = rig.camunda.resets();
    let judge = Judge {
        scenario: "Camunda resets every other connection",
        expect: Expect { status: "succeeded", report: Some("reported"), executed: true },
        recorder: Some(&rig.recorder),
        camunda: Some(&rig.camunda),
        limit: default_limit(n()),
    };
    let mut tally = judge.judge(&rig.gw, &submitted, Vec::new()).await;
    ran_once(&rig, &submitted.acked);
    assert!(resets > 0, "no connection was reset");
    tally.notes.push(format!("{resets} connections reset"));
    tally.finish(rig.gw, started.elapsed()).await;
}

async fn final_answer(status: u16) {
    let lab = lab().await;
    let started = Instant::now();
    let (rig, mut tally) = scenario(
        &lab,
        &format!("Camunda answers {status} to every report"),
        &format!("cam{status}"),
        "report_failed",
        |c| c.fixed(status),
    )
    .await;
    let tasks = rig.camunda.tasks();
    for (id, task) in &tasks {
        assert_eq!(task.calls, 1, "{id}: {status} is final; the report was not sent again");
    }
    tally.notes.push(format!("{} reports, one each, none retried", tasks.len()));
    tally.finish(rig.gw, started.elapsed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn camunda_answering_404_is_final() {
    final_answer(404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn camunda_answering_400_is_final() {
    final_answer(400).await;
}
