//! MongoDB-wire faults: the server stopped while tasks are submitted, killed while they are
//! submitted, stopped while they are processed, and killed right after acknowledging a batch of
//! 200. A submit that gets a 503 is not acknowledged (the worker resubmits it, as the seed's
//! workers do); every acknowledged task must exist after the restart and run once, and no task the
//! store holds (acknowledged or not: an insert may land with its answer lost) may be left
//! `queued`.

use std::time::{Duration, Instant};

use crate::{
    checker::{
        Expect, Judge, Tally, conclude, default_limit, ids, n, resubmit_until_acked, submit_all, submit_in_background,
    },
    gateway::{Gateway, Setup},
    mongo_server::{self, bring_back},
    recorder::{Behavior, Recorder},
    services::{self, lab},
};

const TOPIC: &str = "work";

async fn start(lab: &services::Lab, scenario: &str, delay: Duration) -> (Recorder, Gateway) {
    let recorder = Recorder::start(&lab.creds.api_key).await;
    recorder.behave(TOPIC, Behavior::ok(delay));
    let topics = vec![(TOPIC.to_owned(), recorder.topic(TOPIC, &lab.creds.api_key, 30, 8, 5))];
    let gateway = Gateway::start(lab, scenario, Setup { topics, ..Default::default() }).await;
    (recorder, gateway)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_stopped_during_submits_loses_no_acknowledged_task() {
    let lab = lab().await;
    let started = Instant::now();
    let (recorder, mut gw) = start(&lab, "mongo_stop_submits", Duration::from_millis(20)).await;
    let ids = ids("mstopsub", n());
    let (a, rest) = ids.split_at(n() / 3);
    let (b, rest) = rest.split_at(n() / 3);
    let (while_down, c) = rest.split_at(rest.len().min(64));
    let mut submitted = submit_all(&gw.api, TOPIC, a, 8, Default::default()).await;

    // Stop it while submits are in flight, then keep submitting while it is gone.
    let (progress, during) = submit_in_background(&gw.api, TOPIC, b.to_vec(), 8);
    crate::checker::wait_progress(&progress, b.len() / 4, Duration::from_secs(60)).await;
    mongo_server::stop("TERM").await;
    let mut down = during.await.expect("submitter");
    down.merge(submit_all(&gw.api, TOPIC, while_down, 16, Default::default()).await);
    let refused: Vec<String> = down.rejected.iter().map(|(id, _)| id.clone()).collect();
    let codes: std::collections::BTreeSet<u16> = down.rejected.iter().map(|(_, s)| *s).collect();
    assert!(codes.iter().all(|c| *c == 503), "refusals while MongoDB is down are 503s, got {codes:?}");
    assert!(refused.len() >= while_down.len(), "submits were acknowledged with MongoDB down");
    submitted.acked.extend(down.acked);
    submitted.slowest = submitted.slowest.max(down.slowest);
    let restart = bring_back(&mut gw).await;
    submitted.merge(resubmit_until_acked(&gw.api, TOPIC, &refused, Duration::from_secs(120)).await);
    submitted.merge(submit_all(&gw.api, TOPIC, c, 8, Default::default()).await);

    let notes = vec![format!(
        "{} refused with 503 while down, then resubmitted; restart {:.0} s",
        refused.len(),
        restart.as_secs_f64()
    )];
    conclude(
        "MongoDB-wire server stopped (SIGTERM) during submits, restarted",
        started,
        gw,
        &recorder,
        submitted,
        notes,
    )
    .await;
}

/// Every task the store holds that is still waiting for its first delivery once the run is quiet:
/// one whose insert landed with its answer lost, then was never published, shows up here even
/// if nobody acknowledged it (counted as lost).
async fn left_queued(gw: &Gateway, tally: &mut Tally) {
    let states = crate::checker::states(&gw.mongo).await.expect("the store answers after the faults are healed");
    let mut queued: Vec<String> = states.into_iter().filter(|(_, (s, _, _))| s == "queued").map(|(id, _)| id).collect();
    queued.sort();
    tally.notes.push(format!("{} left queued in the store", queued.len()));
    tally.lost.extend(queued.into_iter().map(|id| format!("{id}: still queued in the store")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_killed_during_submits_leaves_no_task_queued() {
    let lab = lab().await;
    let started = Instant::now();
    let (recorder, mut gw) = start(&lab, "mongo_kill_submits", Duration::from_millis(20)).await;
    let ids = ids("mkillsub", n());
    // Killed mid-stream: the batch in flight may land with its answer lost (503 to the worker).
    let (progress, during) = submit_in_background(&gw.api, TOPIC, ids.clone(), 16);
    crate::checker::wait_progress(&progress, n() / 3, Duration::from_secs(60)).await;
    mongo_server::stop("KILL").await;
    let mut submitted = during.await.expect("submitter");
    let refused: Vec<String> = submitted.rejected.iter().map(|(id, _)| id.clone()).collect();
    let restart = bring_back(&mut gw).await;
    // The worker resubmits what was refused; a task that landed unseen answers 200 `created:
    // false` and must still be published.
    submitted.rejected.clear();
    submitted.merge(resubmit_until_acked(&gw.api, TOPIC, &refused, Duration::from_secs(120)).await);

    let notes = vec![format!(
        "{} refused around the kill, then resubmitted; restart {:.0} s",
        refused.len(),
        restart.as_secs_f64()
    )];
    let scenario = "MongoDB-wire server killed (SIGKILL) during submits, restarted";
    let judge = Judge {
        scenario,
        expect: Expect::succeeded(),
        recorder: Some(&recorder),
        camunda: None,
        limit: default_limit(n()),
    };
    let mut tally = judge.judge(&gw, &submitted, notes).await;
    left_queued(&gw, &mut tally).await;
    tally.finish(gw, started.elapsed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_stopped_during_processing_loses_nothing() {
    let lab = lab().await;
    let started = Instant::now();
    let (recorder, mut gw) = start(&lab, "mongo_stop_processing", Duration::from_millis(100)).await;
    let ids = ids("mstopproc", n());
    let submitted = submit_all(&gw.api, TOPIC, &ids, 8, Default::default()).await;
    assert!(submitted.rejected.is_empty(), "{:?}", submitted.rejected);
    let deadline = Instant::now() + Duration::from_secs(120);
    while recorder.total() < n() / 4 {
        assert!(Instant::now() < deadline, "processing did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = recorder.total();
    mongo_server::stop("TERM").await;
    gw.wait_health("MongoDB down", Duration::from_secs(30), |h| h["mongodb"] == "unhealthy").await;
    // Keep it down long enough for every running handler to finish and find nowhere to write.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = recorder.total() - before;
    let restart = bring_back(&mut gw).await;

    let notes = vec![format!(
        "stopped after {before} executions; {during} more ran while down; restart {:.0} s",
        restart.as_secs_f64()
    )];
    conclude(
        "MongoDB-wire server stopped (SIGTERM) during processing, restarted",
        started,
        gw,
        &recorder,
        submitted,
        notes,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongodb_killed_right_after_a_batch_of_200_keeps_every_acknowledged_task() {
    const BATCH: usize = 200;
    let lab = lab().await;
    let started = Instant::now();
    let (recorder, mut gw) = start(&lab, "mongo_kill_batch", Duration::from_millis(20)).await;
    let ids = ids("mkill", n().max(BATCH));
    let (batch, rest) = ids.split_at(BATCH);
    let mut submitted = submit_all(&gw.api, TOPIC, batch, 16, Default::default()).await;
    // The instant the 200th answer is in: no clean shutdown, no flush.
    mongo_server::stop("KILL").await;
    assert_eq!(submitted.acked.len(), BATCH, "the batch was acknowledged: {:?}", submitted.rejected);
    let restart = bring_back(&mut gw).await;
    let states = crate::checker::states(&gw.mongo).await.expect("the store answers after the restart");
    let missing: Vec<&String> = submitted.acked.iter().filter(|id| !states.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged tasks vanished with the kill: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    submitted.merge(submit_all(&gw.api, TOPIC, rest, 8, Default::default()).await);

    let notes = vec![format!(
        "all {BATCH} acknowledged before the kill were there after it; restart {:.0} s",
        restart.as_secs_f64()
    )];
    conclude(
        "MongoDB-wire server killed (SIGKILL) right after 200 acknowledgements",
        started,
        gw,
        &recorder,
        submitted,
        notes,
    )
    .await;
}
