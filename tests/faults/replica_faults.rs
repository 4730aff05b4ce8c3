//! Several replicas on one store and one broker (issue 14, "Prove it"): an `api` replica and two
//! `worker` replicas, one SIGKILLed mid-run and restarted, the other SIGSTOPped past its leases
//! and resumed (its late outcomes must be refused by the store's conditional update); and two
//! `worker` replicas whose clocks are five minutes behind and ahead (libfaketime), taking every
//! task through a retry. Both judged with the usual buckets, plus: each task completed once
//! across all replicas' logs.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    checker::{self, Expect, Judge, default_limit, ids, n, submit_all, submit_in_background},
    gateway::{Gateway, Setup, skewed_clock},
    recorder::{Behavior, Recorder},
    services::{lab, signal},
};

const TOPIC: &str = "work";

/// Every JSON log line of a gateway.
fn log_lines(gw: &Gateway) -> Vec<Value> {
    let text = std::fs::read_to_string(&gw.log).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// A log line's task id: a field of the line or of one of its spans.
fn task_of(line: &Value) -> Option<String> {
    let spans = line["spans"].as_array().into_iter().flatten().chain(std::iter::once(&line["span"]));
    std::iter::once(&line["fields"]).chain(spans).find_map(|s| s["task_id"].as_str().map(str::to_owned))
}

/// Task id → how many successful attempts the replicas' logs record ("attempt finished",
/// outcome succeeded: written by the store's conditional update, so a refused one is not here).
fn completions(replicas: &[&Gateway]) -> HashMap<String, usize> {
    let mut done: HashMap<String, usize> = HashMap::new();
    for line in replicas.iter().flat_map(|gw| log_lines(gw)) {
        if line["fields"]["message"] == "attempt finished"
            && line["fields"]["outcome"] == "succeeded"
            && let Some(id) = task_of(&line)
        {
            *done.entry(id).or_default() += 1;
        }
    }
    done
}

/// How far a replica's wall clock is from ours, in seconds, read from its newest log line's
/// timestamp (written a moment ago: the replica has just answered `/health`).
fn log_skew(gw: &Gateway) -> f64 {
    let newest = log_lines(gw)
        .iter()
        .filter_map(|l| l["timestamp"].as_str().and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok()))
        .max()
        .unwrap_or_else(|| panic!("no timestamped line in {}", gw.log.display()));
    (newest - chrono::Utc::now()).as_seconds_f64()
}

/// Waits until the recorder has seen `at_least` executions.
async fn wait_executions(recorder: &Recorder, at_least: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while recorder.total() < at_least {
        assert!(Instant::now() < deadline, "only {} executions after {limit:?}", recorder.total());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a handler of `TOPIC` is running right now.
async fn wait_running(recorder: &Recorder, limit: Duration) {
    let deadline = Instant::now() + limit;
    while recorder.concurrency(TOPIC).0 == 0 {
        assert!(Instant::now() < deadline, "no handler running within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Tasks whose success the replicas' logs record more than once (must be none), and how many
/// acknowledged tasks have no such line: a replica SIGKILLed between the store's commit and its
/// log line, or one whose write committed while it was frozen (the answer lost, the retry then
/// misses and logs "result dropped"). The store's conditional update lets one success through;
/// two lines for one task would mean two.
fn completed_twice(acked: &[String], replicas: &[&Gateway]) -> (Vec<String>, usize) {
    let done = completions(replicas);
    let twice = acked.iter().filter(|id| done.get(*id).is_some_and(|c| *c > 1)).take(5).cloned().collect();
    (twice, acked.iter().filter(|id| !done.contains_key(*id)).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_one_killed_one_frozen_past_its_leases_complete_each_task_once() {
    const CONCURRENCY: u16 = 4;
    let lab = lab().await;
    let started = Instant::now();
    let recorder = Recorder::start(&lab.creds.api_key).await;
    recorder.behave(TOPIC, Behavior::ok(Duration::from_millis(200)));
    // Timeout 2 s: a lease is 2 s + 30 s, so the freeze below outlasts it within a minute.
    let topics = vec![(TOPIC.to_owned(), recorder.topic(TOPIC, &lab.creds.api_key, 2, CONCURRENCY, 3))];
    let vars = vec![("GATEWAY_MODE".to_owned(), "api".to_owned())];
    let api = Gateway::start(&lab, "replicas", Setup { topics, vars, ..Default::default() }).await;
    let mut killed = api.start_replica("killed", "worker", Vec::new()).await;
    let mut frozen = api.start_replica("frozen", "worker", Vec::new()).await;

    let (_, submits) = submit_in_background(&api.api, TOPIC, ids("replicas", n()), 8);
    wait_executions(&recorder, n() / 5, Duration::from_secs(120)).await;
    killed.kill().await;
    // Only the other worker runs handlers now: freeze it with some of its own in flight.
    wait_running(&recorder, Duration::from_secs(60)).await;
    signal(frozen.pid, "STOP").await;
    let frozen_at = Instant::now();
    // The attempts cut short: the killed replica's and the frozen one's (by attempt number).
    let held: HashMap<String, i64> = checker::settled_states(&api.mongo)
        .await
        .into_iter()
        .filter(|(_, (status, _, _))| status == "processing")
        .map(|(id, (_, _, attempts))| (id, attempts))
        .collect();
    killed.restart().await;

    // Past the leases: every held attempt taken back (or moved on) by the store's clock.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let states = checker::states(&api.mongo).await.unwrap_or_default();
        let still: usize = held
            .iter()
            .filter(|(id, attempt)| states.get(*id).is_some_and(|(s, _, a)| s == "processing" && a == *attempt))
            .count();
        if still == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{still} held attempts still leased 120 s after the freeze");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let frozen_for = frozen_at.elapsed();
    signal(frozen.pid, "CONT").await;
    // Resumed, its late outcomes refused, it is then redeployed: stopped with SIGTERM (a clean
    // exit, handing back only its own work) and started again.
    let exit = frozen.terminate(Duration::from_secs(60)).await;
    assert!(exit.success(), "the resumed replica stops cleanly: {exit:?}");
    frozen.restart().await;
    let submitted = submits.await.expect("the submitter does not panic");

    let judge = Judge {
        scenario: "three replicas (api + 2 workers): one SIGKILLed and restarted, one SIGSTOPped past its leases, resumed, then stopped with SIGTERM and restarted",
        expect: Expect::succeeded(),
        recorder: Some(&recorder),
        camunda: None,
        limit: default_limit(n()) + Duration::from_secs(60),
    };
    let notes = vec![
        format!("{} attempts held at the freeze", held.len()),
        format!("frozen {:.0} s", frozen_for.as_secs_f64()),
    ];
    let mut tally = judge.judge(&api, &submitted, notes).await;
    for replica in [&killed, &frozen] {
        replica.assert_no_secrets();
    }
    let (twice, unlogged) = completed_twice(&submitted.acked, &[&killed, &frozen]);
    let refused = frozen.log_count("attempt finished after its lease was taken back");
    let reruns: Vec<Vec<u32>> = recorder.runs().into_values().filter(|a| a.len() > 1).collect();
    let expired = [&api, &killed, &frozen].iter().map(|g| g.log_count("processing lease expired")).sum::<usize>();
    tally.notes.push(format!(
        "{expired} leases taken back; {refused} late outcomes of the frozen replica refused; \
         {} handler re-runs (tasks run more than once, each attempt once); completions logged once \
         each, {unlogged} unlogged (commit then SIGKILL, or answer lost to the freeze)",
        reruns.len()
    ));
    killed.cleanup().await;
    frozen.cleanup().await;
    tally.finish(api, started.elapsed()).await;
    assert!(twice.is_empty(), "a task completed twice across the replicas: {twice:?}");
    assert!(refused > 0, "the frozen replica's late outcomes reached the store and were refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skewed_clocks_five_minutes_behind_and_ahead_retry_every_task_once_and_succeed() {
    const CONCURRENCY: u16 = 4;
    let lab = lab().await;
    let started = Instant::now();
    let recorder = Recorder::start(&lab.creds.api_key).await;
    recorder.behave(TOPIC, Behavior::ok(Duration::from_millis(50)));
    // Every first attempt fails with a 503: each task goes through `retrying` (200 ms backoff).
    recorder.fail_first_attempt(TOPIC, 503);
    let topics = vec![(TOPIC.to_owned(), recorder.topic(TOPIC, &lab.creds.api_key, 10, CONCURRENCY, 3))];
    let vars = vec![("GATEWAY_MODE".to_owned(), "api".to_owned())];
    let api = Gateway::start(&lab, "skewed_clocks", Setup { topics, vars, ..Default::default() }).await;
    let behind = api.start_replica("behind", "worker", skewed_clock("-5m")).await;
    let ahead = api.start_replica("ahead", "worker", skewed_clock("+5m")).await;
    // The replicas really see the skew (their own log timestamps), and ours is the real time.
    let (skew_behind, skew_ahead) = (log_skew(&behind), log_skew(&ahead));
    assert!((skew_behind + 300.0).abs() < 20.0, "the lagging replica's clock is 5 min behind: {skew_behind:.1} s");
    assert!((skew_ahead - 300.0).abs() < 20.0, "the leading replica's clock is 5 min ahead: {skew_ahead:.1} s");

    let submitted = submit_all(&api.api, TOPIC, &ids("skew", n()), 8, Default::default()).await;
    let judge = Judge {
        scenario: "two worker replicas, clocks 5 min behind and 5 min ahead (faketime), every task retried once",
        expect: Expect::succeeded(),
        recorder: Some(&recorder),
        camunda: None,
        limit: default_limit(n()),
    };
    let notes = vec![format!("clock skew seen in the logs {skew_behind:+.0} s and {skew_ahead:+.0} s")];
    let mut tally = judge.judge(&api, &submitted, notes).await;
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for (status, _, _) in checker::states(&api.mongo).await.unwrap_or_default().into_values() {
        *statuses.entry(status).or_default() += 1;
    }
    for replica in [&behind, &ahead] {
        replica.assert_no_secrets();
    }
    let runs = recorder.runs();
    let odd: Vec<String> = submitted
        .acked
        .iter()
        .filter(|id| runs.get(*id).is_some_and(|a| a.as_slice() != [1, 2]))
        .map(|id| format!("{id}: {:?}", runs[id]))
        .take(5)
        .collect();
    let finished = |gw: &Gateway| gw.log_count("\"attempt finished\"");
    tally.notes.push(format!(
        "attempts finished by the lagging / leading replica {} / {}; statuses {statuses:?}",
        finished(&behind),
        finished(&ahead)
    ));
    // Nothing is killed or frozen here: every success is logged, once.
    let (twice, unlogged) = completed_twice(&submitted.acked, &[&behind, &ahead]);
    let ran = (finished(&behind), finished(&ahead));
    behind.cleanup().await;
    ahead.cleanup().await;
    tally.finish(api, started.elapsed()).await;
    assert!(odd.is_empty(), "every task ran attempt 1 (503) and attempt 2, once each: {odd:?}");
    assert!(twice.is_empty() && unlogged == 0, "each success logged once: twice {twice:?}, {unlogged} unlogged");
    assert!(ran.0 > 0 && ran.1 > 0, "both skewed replicas ran attempts: {ran:?}");
}
