//! Handler faults: one that outlives its timeout (the attempt is abandoned and retried, the late
//! answer changes nothing), one that always fails (poison: stops at the attempt limit with one
//! final failure report, no hot loop), and a slow topic with a deep backlog while another topic
//! keeps flowing (prefetch bounds the work in hand; memory stays flat).

use std::time::{Duration, Instant};

use crate::{
    camunda_standin::Camunda,
    checker::{Expect, Judge, Submitted, default_limit, ids, n, slow_n, submit_all, submit_in_background},
    gateway::{Gateway, Setup, queue_depth},
    recorder::{Behavior, Recorder},
    services::lab,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_over_its_timeout_is_abandoned_and_retried_once() {
    const TOPIC: &str = "overtime";
    let lab = lab().await;
    let started = Instant::now();
    let recorder = Recorder::start(&lab.creds.api_key).await;
    let behavior =
        Behavior { delay: Duration::from_millis(10), first_attempt_delay: Some(Duration::from_secs(3)), status: 200 };
    recorder.behave(TOPIC, behavior);
    let topics = vec![(TOPIC.to_owned(), recorder.topic(TOPIC, &lab.creds.api_key, 1, 32, 3))];
    let gw = Gateway::start(&lab, "handler_timeout", Setup { topics, ..Default::default() }).await;
    let submitted = submit_all(&gw.api, TOPIC, &ids("overtime", n()), 8, Default::default()).await;

    let judge = Judge {
        scenario: "handler exceeds its timeout on attempt 1",
        expect: Expect::succeeded(),
        recorder: Some(&recorder),
        camunda: None,
        limit: default_limit(n()),
    };
    let tally = judge.judge(&gw, &submitted, Vec::new()).await;
    let runs = recorder.runs();
    for id in &submitted.acked {
        assert_eq!(runs.get(id).map(Vec::as_slice), Some(&[1, 2][..]), "{id}: attempt 1 timed out, attempt 2 ran");
    }
    tally.finish(gw, started.elapsed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_task_stops_at_its_attempt_limit_with_one_final_report() {
    const TOPIC: &str = "poison";
    const ATTEMPTS: u32 = 3;
    let lab = lab().await;
    let started = Instant::now();
    let camunda = Camunda::start(&lab.creds.camunda_password).await;
    let recorder = Recorder::start(&lab.creds.api_key).await;
    recorder.behave(TOPIC, Behavior { delay: Duration::ZERO, first_attempt_delay: None, status: 500 });
    let topics = vec![(TOPIC.to_owned(), recorder.topic(TOPIC, &lab.creds.api_key, 5, 16, ATTEMPTS))];
    let setup = Setup { topics, vars: camunda.vars(&lab.creds.camunda_password), ..Default::default() };
    let gw = Gateway::start(&lab, "handler_poison", setup).await;
    let submitted = submit_all(&gw.api, TOPIC, &ids("poison", n()), 8, Default::default()).await;

    let judge = Judge {
        scenario: "poison: the handler always fails (HTTP 500)",
        expect: Expect { status: "failed", report: Some("reported"), executed: true },
        recorder: Some(&recorder),
        camunda: Some(&camunda),
        limit: default_limit(n()),
    };
    let mut tally = judge.judge(&gw, &submitted, Vec::new()).await;
    let executions = recorder.total();
    tokio::time::sleep(Duration::from_secs(3)).await; // a hot loop would show here
    assert_eq!(recorder.total(), executions, "no execution after the tasks failed");
    let runs = recorder.runs();
    let at_camunda = camunda.tasks();
    for id in &submitted.acked {
        assert_eq!(runs.get(id).map(Vec::as_slice), Some(&[1, 2, 3][..]), "{id}: exactly {ATTEMPTS} attempts");
        let kinds = at_camunda.get(id).map(|t| t.committed.clone()).unwrap_or_default();
        assert_eq!(kinds.last().map(String::as_str), Some("failure(0)"), "{id}: ends in an incident: {kinds:?}");
    }
    let dead = queue_depth(&format!("{}.dead", gw.exchange)).await.unwrap_or(0);
    tally.notes.push(format!("{executions} executions; dead-letter queue holds {dead}"));
    tally.finish(gw, started.elapsed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_topic_backlog_does_not_stall_another_topic_or_grow_memory() {
    const SLOW: &str = "slow";
    const FAST: &str = "fast";
    const SLOW_CONCURRENCY: u16 = 8;
    let lab = lab().await;
    let started = Instant::now();
    let recorder = Recorder::start(&lab.creds.api_key).await;
    recorder.behave(SLOW, Behavior::ok(Duration::from_millis(50)));
    recorder.behave(FAST, Behavior::ok(Duration::ZERO));
    let topics = vec![
        (SLOW.to_owned(), recorder.topic(SLOW, &lab.creds.api_key, 30, SLOW_CONCURRENCY, 3)),
        (FAST.to_owned(), recorder.topic(FAST, &lab.creds.api_key, 30, 8, 3)),
    ];
    let gw = Gateway::start(&lab, "slow_topic", Setup { topics, ..Default::default() }).await;
    let baseline = gw.rss_mib();
    let (_, slow) = submit_in_background(&gw.api, SLOW, ids("slow", slow_n()), 16);

    // Sample resident memory while the backlog builds and drains.
    let peak_kib = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (pid, peak) = (gw.pid, peak_kib.clone());
        tokio::spawn(async move {
            loop {
                let kib = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
                    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
                });
                peak.fetch_max(kib.unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let slow_queue = format!("{}.task.submit.{SLOW}", gw.exchange);
    // The whole backlog first: the fast topic then competes with the slow consumer only, not
    // with 16 clients writing the backlog into the store (a store-bound contest on this machine).
    let mut submitted = slow.await.expect("submitter");
    let backlog = queue_depth(&slow_queue).await.unwrap_or(0);
    assert!(backlog >= 200.min(slow_n() as u32 / 4), "the slow topic never built a backlog ({backlog} queued)");
    // The fast topic, submitted behind the backlog, must finish while the backlog is still there.
    let fast_started = Instant::now();
    let fast_ids = ids("fast", n() / 2);
    let fast = submit_all(&gw.api, FAST, &fast_ids, 4, Default::default()).await;
    let fast_judge = Judge {
        scenario: "fast topic",
        expect: Expect::succeeded(),
        recorder: None,
        camunda: None,
        limit: Duration::from_secs(120),
    };
    let fast_tally = fast_judge.judge(&gw, &fast, Vec::new()).await;
    let fast_took = fast_started.elapsed();
    let backlog_left = queue_depth(&slow_queue).await.unwrap_or(0);
    assert!(
        fast_tally.lost.is_empty(),
        "fast tasks did not finish behind the slow backlog: {:?}",
        &fast_tally.lost[..3.min(fast_tally.lost.len())]
    );

    let slow_acked = submitted.acked.len();
    submitted.merge(Submitted { acked: fast.acked.clone(), rejected: fast.rejected.clone(), slowest: fast.slowest });
    let judge = Judge {
        scenario: "slow-topic backlog while another topic flows",
        expect: Expect::succeeded(),
        recorder: Some(&recorder),
        camunda: None,
        limit: default_limit(slow_n()),
    };
    let mut tally = judge.judge(&gw, &submitted, Vec::new()).await;
    let now = gw.rss_mib();
    sampler.abort();
    let peak = peak_kib.load(std::sync::atomic::Ordering::SeqCst) as f64 / 1024.0;
    let (_, most) = recorder.concurrency(SLOW);
    assert!(most <= usize::from(SLOW_CONCURRENCY), "at most {SLOW_CONCURRENCY} slow handlers at once, saw {most}");
    tally.notes.push(format!(
        "{slow_acked} slow + {} fast; {backlog} slow queued, then {} fast done in {:.1} s with {backlog_left} slow still queued; \
         slow handlers at once ≤ {most}; RSS {baseline:.0} MiB, peak {peak:.0}, end {now:.0}",
        fast.acked.len(),
        fast.acked.len(),
        fast_took.as_secs_f64()
    ));
    assert!(backlog_left > 0, "the backlog drained before the fast topic finished; nothing was shown");
    assert!(peak - baseline < 64.0, "resident memory grew from {baseline:.0} to a peak of {peak:.0} MiB");
    tally.finish(gw, started.elapsed()).await;
}
