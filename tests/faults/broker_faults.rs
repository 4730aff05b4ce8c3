//! RabbitMQ faults: the app stopped, the VM killed, every connection closed, the VM frozen past
//! two heartbeats, a memory alarm that blocks publishers, and one topic's queue deleted under
//! load. Submissions go on throughout; the relay publishes what the broker could not take, and
//! every acknowledged task runs once.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use crate::{
    checker::{conclude, ids, n, submit_all, submit_in_background, wait_progress},
    gateway::{Gateway, Setup},
    recorder::{Behavior, Recorder},
    services::{self, lab, rabbitmqctl},
};

const TOPIC: &str = "work";

/// A gateway with one recorded topic: 20 ms per task, 8 at a time, 5 attempts.
async fn start(lab: &services::Lab, scenario: &str, heartbeat: Option<u16>) -> (Recorder, Gateway) {
    let recorder = Recorder::start(&lab.creds.api_key).await;
    recorder.behave(TOPIC, Behavior::ok(Duration::from_millis(20)));
    let topics = vec![(TOPIC.to_owned(), recorder.topic(TOPIC, &lab.creds.api_key, 30, 8, 5))];
    let gateway = Gateway::start(lab, scenario, Setup { topics, heartbeat, ..Default::default() }).await;
    (recorder, gateway)
}

/// Waits until the gateway's `/health` shows `rabbitmq` as `word`; returns how long it took.
async fn wait_rabbit(gw: &mut Gateway, word: &'static str, limit: Duration) -> Duration {
    let started = Instant::now();
    gw.wait_health(&format!("rabbitmq {word}"), limit, |h| h["rabbitmq"] == word).await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_app_stopped_during_submits_loses_nothing() {
    let lab = lab().await;
    let started = Instant::now();
    let (recorder, mut gw) = start(&lab, "rabbit_stop_app", None).await;
    let ids = ids("stopapp", n());
    let (a, rest) = ids.split_at(n() / 3);
    let (b, c) = rest.split_at(n() / 3);
    let mut submitted = submit_all(&gw.api, TOPIC, a, 8, Default::default()).await;

    rabbitmqctl(&["stop_app"]).await.expect("rabbitmqctl stop_app");
    let noticed = wait_rabbit(&mut gw, "unhealthy", Duration::from_secs(30)).await;
    let down = submit_all(&gw.api, TOPIC, b, 8, Default::default()).await;
    assert!(down.rejected.is_empty(), "submits are acknowledged while RabbitMQ is down: {:?}", down.rejected);
    submitted.merge(down);
    let (_, during) = submit_in_background(&gw.api, TOPIC, c.to_vec(), 8);
    rabbitmqctl(&["start_app"]).await.expect("rabbitmqctl start_app");
    let back = wait_rabbit(&mut gw, "healthy", Duration::from_secs(60)).await;
    submitted.merge(during.await.expect("submitter"));

    let notes = vec![format!(
        "down noticed in {:.1} s, reconnected {:.1} s after start_app",
        noticed.as_secs_f64(),
        back.as_secs_f64()
    )];
    conclude("RabbitMQ `stop_app` during submits, then `start_app`", started, gw, &recorder, submitted, notes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_killed_mid_publish_loses_nothing() {
    let lab = lab().await;
    let started = Instant::now();
    let (recorder, mut gw) = start(&lab, "rabbit_sigkill", None).await;
    let ids = ids("rmqkill", n());
    let (a, rest) = ids.split_at(n() / 3);
    let mut submitted = submit_all(&gw.api, TOPIC, a, 8, Default::default()).await;
    // An established queue: a quorum queue killed within a second of its creation can come back
    // empty and leaderless (RabbitMQ 3.10), which is not what this scenario is about.
    let deadline = Instant::now() + Duration::from_secs(120);
    while recorder.total() < a.len() {
        assert!(Instant::now() < deadline, "the first third was not processed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Kill while publishes are in flight: some confirmed, some waiting for their confirm.
    let (progress, during) = submit_in_background(&gw.api, TOPIC, rest.to_vec(), 8);
    wait_progress(&progress, rest.len() / 4, Duration::from_secs(120)).await;
    let pid = services::rabbit_pid().await;
    services::signal(pid, "KILL").await;
    services::wait_exit(pid, Duration::from_secs(30)).await;
    let noticed = wait_rabbit(&mut gw, "unhealthy", Duration::from_secs(30)).await;
    let restart = Instant::now();
    services::services_up().await;
    let restarted = restart.elapsed();
    let back = wait_rabbit(&mut gw, "healthy", Duration::from_secs(120)).await;
    submitted.merge(during.await.expect("submitter"));

    let notes = vec![format!(
        "loss noticed in {:.1} s; broker restart {:.0} s; reconnected {:.1} s later",
        noticed.as_secs_f64(),
        restarted.as_secs_f64(),
        back.as_secs_f64()
    )];
    conclude("RabbitMQ VM killed (SIGKILL) mid-publish, restarted", started, gw, &recorder, submitted, notes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_closing_every_connection_loses_nothing() {
    let lab = lab().await;
    let started = Instant::now();
    let (recorder, mut gw) = start(&lab, "rabbit_close_conns", None).await;
    let ids = ids("closeall", n());
    let (progress, during) = submit_in_background(&gw.api, TOPIC, ids, 8);
    wait_progress(&progress, n() / 3, Duration::from_secs(120)).await;
    rabbitmqctl(&["close_all_connections", "fault injection"]).await.expect("close_all_connections");
    // The gateway may reconnect before a poll sees it down; it must be connected again soon.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back = wait_rabbit(&mut gw, "healthy", Duration::from_secs(30)).await;
    let submitted = during.await.expect("submitter");
    let reconnects = gw.log_count("rabbitmq connection lost");
    assert!(reconnects >= 1, "the gateway never noticed its connection closing");
    let notes = vec![format!("{reconnects} connection loss(es) logged; healthy {:.1} s after", back.as_secs_f64())];
    conclude("`rabbitmqctl close_all_connections` mid-run", started, gw, &recorder, submitted, notes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_frozen_past_two_heartbeats_is_noticed_and_loses_nothing() {
    const HEARTBEAT: u16 = 2;
    let lab = lab().await;
    let started = Instant::now();
    let (recorder, mut gw) = start(&lab, "rabbit_sigstop", Some(HEARTBEAT)).await;
    let ids = ids("freeze", n());
    let (a, rest) = ids.split_at(n() / 3);
    let mut submitted = submit_all(&gw.api, TOPIC, a, 8, Default::default()).await;

    services::freeze_rabbit().await;
    let (_, during) = submit_in_background(&gw.api, TOPIC, rest.to_vec(), 8);
    // lapin closes a connection that has been silent for two heartbeat intervals.
    let limit = Duration::from_secs(u64::from(HEARTBEAT) * 2 + 10);
    let noticed = wait_rabbit(&mut gw, "unhealthy", limit).await;
    let frozen_for = Duration::from_secs(u64::from(HEARTBEAT) * 3);
    tokio::time::sleep(frozen_for.saturating_sub(noticed)).await; // keep the broker frozen a while longer
    services::thaw_rabbit().await;
    let back = wait_rabbit(&mut gw, "healthy", Duration::from_secs(60)).await;
    submitted.merge(during.await.expect("submitter"));

    let notes = vec![format!(
        "heartbeat {HEARTBEAT} s; freeze noticed in {:.1} s; reconnected {:.1} s after SIGCONT",
        noticed.as_secs_f64(),
        back.as_secs_f64()
    )];
    conclude("RabbitMQ frozen (SIGSTOP) past two heartbeats, then SIGCONT", started, gw, &recorder, submitted, notes)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rabbitmq_memory_alarm_blocks_publishers_without_slowing_submits() {
    let lab = lab().await;
    let started = Instant::now();
    let (recorder, mut gw) = start(&lab, "rabbit_mem_alarm", None).await;
    let ids = ids("memalarm", n());
    let (a, rest) = ids.split_at(n() / 3);
    let (b, c) = rest.split_at(n() / 3);
    let mut submitted = submit_all(&gw.api, TOPIC, a, 8, Default::default()).await;

    services::memory_alarm(true).await;
    assert!(services::memory_alarm_on().await, "the memory alarm did not go off");
    // RabbitMQ tells a connection it is blocked when it next publishes: the first submits may
    // wait for confirms that cannot come; once the gateway knows, publishes must fail fast and
    // `/health` say degraded.
    let (first, rest) = b.split_at(b.len().min(8));
    let blocking = submit_all(&gw.api, TOPIC, first, 8, Default::default()).await;
    let slowest_first = blocking.slowest;
    submitted.merge(blocking);
    let health = gw.wait_health("degraded health", Duration::from_secs(30), |h| h["status"] == "degraded").await;
    let blocked = submit_all(&gw.api, TOPIC, rest, 8, Default::default()).await;
    let slowest_blocked = blocked.slowest;
    submitted.merge(blocked);
    assert!(submitted.rejected.is_empty(), "submits are acknowledged during the alarm: {:?}", submitted.rejected);
    services::memory_alarm(false).await;
    let back = wait_rabbit(&mut gw, "healthy", Duration::from_secs(30)).await;
    submitted.merge(submit_all(&gw.api, TOPIC, c, 8, Default::default()).await);
    assert!(
        slowest_blocked < Duration::from_secs(3),
        "a submit took {slowest_blocked:?} once publishers were known to be blocked (it should not wait for a confirm)"
    );

    let notes = vec![
        format!("health during alarm: {}", health["rabbitmq"]),
        format!(
            "first submits after the alarm up to {:.1} s; later ones up to {:.2} s; healthy {:.1} s after clearing",
            slowest_first.as_secs_f64(),
            slowest_blocked.as_secs_f64(),
            back.as_secs_f64()
        ),
    ];
    conclude("RabbitMQ memory alarm blocks publishers, then clears", started, gw, &recorder, submitted, notes).await;
}

/// How many of `ids` the handler stand-in has run.
fn executed(recorder: &Recorder, ids: &HashSet<String>) -> usize {
    recorder.runs().keys().filter(|id| ids.contains(*id)).count()
}

/// The longest time, within `window`, that none of `ids` started running while some were left.
async fn longest_stall(recorder: &Recorder, ids: &HashSet<String>, window: Duration) -> (Duration, usize) {
    let started = Instant::now();
    let first = executed(recorder, ids);
    let (mut last, mut since, mut longest) = (first, Instant::now(), Duration::ZERO);
    while started.elapsed() < window && last < ids.len() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = executed(recorder, ids);
        if now > last {
            (last, since) = (now, Instant::now());
        }
        longest = longest.max(since.elapsed());
    }
    (longest, last - first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_queue_deleted_mid_run_stops_no_other_topic_and_loses_nothing() {
    const DOOMED: &str = "doomed";
    let lab = lab().await;
    let started = Instant::now();
    let recorder = Recorder::start(&lab.creds.api_key).await;
    let mut topics = Vec::new();
    for topic in [TOPIC, DOOMED] {
        recorder.behave(topic, Behavior::ok(Duration::from_millis(20)));
        topics.push((topic.to_owned(), recorder.topic(topic, &lab.creds.api_key, 30, 8, 5)));
    }
    // The messages in the queue when it goes are lost with it; the store re-sends their tasks
    // once they have waited this long without a delivery.
    let vars = vec![("REPUBLISH_AFTER_SECONDS".to_owned(), "10".to_owned())];
    let mut gw = Gateway::start(&lab, "rabbit_delete_queue", Setup { topics, vars, ..Default::default() }).await;
    let (work, doomed) = (ids("delq-work", n()), ids("delq-doomed", n()));
    let work_set: HashSet<String> = work.iter().cloned().collect();
    // The other topic is submitted more slowly, so it is still flowing when the queue goes.
    let (_, work_during) = submit_in_background(&gw.api, TOPIC, work, 2);
    let (progress, doomed_during) = submit_in_background(&gw.api, DOOMED, doomed, 8);
    wait_progress(&progress, n() / 3, Duration::from_secs(120)).await;

    let queue = format!("{}.task.submit.{DOOMED}", gw.exchange);
    rabbitmqctl(&["delete_queue", &queue]).await.expect("rabbitmqctl delete_queue");
    let (stall, ran) = longest_stall(&recorder, &work_set, Duration::from_secs(10)).await;
    let health = gw
        .wait_health("the doomed topic consumed again", Duration::from_secs(60), |h| {
            h["topics"][DOOMED]["consuming"] == true && h["topics"][DOOMED]["restarts"].as_u64() >= Some(1)
        })
        .await;
    assert_eq!(health["topics"][TOPIC]["restarts"], 0, "the other topic's consumer was restarted: {health}");
    assert!(stall < Duration::from_secs(3), "the other topic stalled {stall:?} after the queue was deleted");
    let mut submitted = work_during.await.expect("submitter");
    submitted.merge(doomed_during.await.expect("submitter"));

    let notes = vec![format!(
        "other topic: {ran} run in the 10 s after the delete, longest stall {:.1} s; doomed topic restarted {}",
        stall.as_secs_f64(),
        health["topics"][DOOMED]["restarts"]
    )];
    conclude("a topic's queue deleted mid-run (`rabbitmqctl delete_queue`)", started, gw, &recorder, submitted, notes)
        .await;
}
