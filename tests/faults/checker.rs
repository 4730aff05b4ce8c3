//! The checker: submits tasks concurrently (the fault is injected while it runs), waits for
//! quiescence, and sorts every acknowledged task into one bucket:
//! - lost: acknowledged (HTTP 200) but missing from the store, not in the expected final state
//!   (or report state), or never executed;
//! - duplicated: some (task id, attempt) executed twice, or more than one final report
//!   committed at Camunda;
//! - ok: everything else.
//!
//! Each scenario's counts are printed and appended to `FAULTS_RESULTS` (default
//! `target/tmp/faults-results.md`) as one Markdown table row.

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::{camunda_standin::Camunda, gateway::Api, recorder::Recorder, services::unique};

/// `FAULTS_N` (default 200): tasks per scenario.
pub fn n() -> usize {
    std::env::var("FAULTS_N").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(200)
}

/// `FAULTS_SLOW_N` (default 1000): tasks on the slow topic.
pub fn slow_n() -> usize {
    std::env::var("FAULTS_SLOW_N").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(1000)
}

pub fn ids(prefix: &str, n: usize) -> Vec<String> {
    let base = unique(prefix);
    (0..n).map(|i| format!("{base}-{i:05}")).collect()
}

pub fn body(task_id: &str, topic: &str) -> Value {
    json!({"task_id": task_id, "worker_id": "worker-1", "topic": topic, "variables": {"n": task_id}})
}

/// What a batch of submissions came to.
#[derive(Debug, Default)]
pub struct Submitted {
    /// Answered 200.
    pub acked: Vec<String>,
    /// Not acknowledged: (id, status or 0 for no answer).
    pub rejected: Vec<(String, u16)>,
    pub slowest: Duration,
}

impl Submitted {
    pub fn merge(&mut self, other: Submitted) {
        self.acked.extend(other.acked);
        self.rejected.extend(other.rejected);
        self.slowest = self.slowest.max(other.slowest);
    }
}

/// Submits `ids` on `topic`, `parallel` at a time; `progress` counts answered submissions so a
/// scenario can inject its fault part-way through.
pub async fn submit_all(
    api: &Api,
    topic: &str,
    ids: &[String],
    parallel: usize,
    progress: Arc<AtomicUsize>,
) -> Submitted {
    let results: Vec<(String, Option<u16>, Duration)> = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let api = api.clone();
            let progress = progress.clone();
            let topic = topic.to_owned();
            async move {
                let started = Instant::now();
                let answer = api.submit(&body(&id, &topic)).await;
                progress.fetch_add(1, Ordering::SeqCst);
                (id, answer.map(|(s, _)| s), started.elapsed())
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut out = Submitted::default();
    for (id, status, took) in results {
        out.slowest = out.slowest.max(took);
        match status {
            Some(200) => out.acked.push(id),
            other => out.rejected.push((id, other.unwrap_or(0))),
        }
    }
    out
}

/// Submits on a spawned task; the scenario injects its fault meanwhile.
pub fn submit_in_background(
    api: &Api,
    topic: &str,
    ids: Vec<String>,
    parallel: usize,
) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<Submitted>) {
    let progress = Arc::new(AtomicUsize::new(0));
    let (api, topic, p) = (api.clone(), topic.to_owned(), progress.clone());
    let handle = tokio::spawn(async move { submit_all(&api, &topic, &ids, parallel, p).await });
    (progress, handle)
}

/// Waits until `progress` reaches `at` (bounded).
pub async fn wait_progress(progress: &AtomicUsize, at: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while progress.load(Ordering::SeqCst) < at {
        assert!(Instant::now() < deadline, "submissions stalled at {}", progress.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resubmits until each is acknowledged, as a worker whose submit failed would.
pub async fn resubmit_until_acked(api: &Api, topic: &str, ids: &[String], limit: Duration) -> Submitted {
    let deadline = Instant::now() + limit;
    let mut pending: Vec<String> = ids.to_vec();
    let mut all = Submitted::default();
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "{} submissions still refused after {limit:?}", pending.len());
        let round = submit_all(api, topic, &pending, 8, Arc::new(AtomicUsize::new(0))).await;
        pending = round.rejected.iter().map(|(id, _)| id.clone()).collect();
        all.acked.extend(round.acked);
        all.slowest = all.slowest.max(round.slowest);
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    all
}

/// The final state every acknowledged task must reach.
#[derive(Debug, Clone)]
pub struct Expect {
    pub status: &'static str,
    /// Camunda report state, in report mode.
    pub report: Option<&'static str>,
    /// Executions are counted (false for native handlers).
    pub executed: bool,
}

impl Expect {
    pub fn succeeded() -> Self {
        Self { status: "succeeded", report: None, executed: true }
    }
}

/// Reads (status, report state, attempts) of every task in the gateway's database.
pub async fn states(mongo: &mongodb::Database) -> Option<HashMap<String, (String, String, i64)>> {
    let raw = mongo.collection::<bson::Document>("tasks");
    let projection = bson::doc! {"status": 1, "camunda.report_state": 1, "attempts": 1};
    let cursor = raw.find(bson::doc! {}).projection(projection).await.ok()?;
    let docs: Vec<bson::Document> = cursor.try_collect().await.ok()?;
    Some(
        docs.into_iter()
            .filter_map(|d| {
                let id = d.get_str("_id").ok()?.to_owned();
                let status = d.get_str("status").unwrap_or_default().to_owned();
                let report = d.get_document("camunda").ok().and_then(|c| c.get_str("report_state").ok());
                let attempts = d.get_i64("attempts").or_else(|_| d.get_i32("attempts").map(i64::from)).unwrap_or(0);
                Some((id, (status, report.unwrap_or_default().to_owned(), attempts)))
            })
            .collect(),
    )
}

/// The states once the store has applied everything a gateway killed a moment ago had sent: a
/// claim or an outcome already on the wire when the process died can still commit after the
/// kill (seen: a batch claim committed after the first read, so its task looked untouched).
/// Reads until two reads half a second apart agree, for at most 10 s.
pub async fn settled_states(mongo: &mongodb::Database) -> HashMap<String, (String, String, i64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = states(mongo).await.expect("store");
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = states(mongo).await.expect("store");
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Waits until every acknowledged task is final as expected and no execution has happened for
/// `settle`; gives up after `limit` (the classification then shows what is missing).
pub async fn wait_quiet(
    mongo: &mongodb::Database,
    acked: &[String],
    expect: &Expect,
    recorder: Option<&Recorder>,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let settle = Duration::from_secs(2);
    let mut last_total = usize::MAX;
    let mut quiet_since = Instant::now();
    loop {
        let total = recorder.map_or(0, Recorder::total);
        if total != last_total {
            last_total = total;
            quiet_since = Instant::now();
        }
        // Reading every task is the store's heaviest request here: skip it while handlers still
        // run (not quiet yet anyway), and space it out for big runs, or the judge itself slows
        // the store the gateway is being judged on.
        let still_running = recorder.is_some() && quiet_since.elapsed() < settle;
        let done = !still_running
            && match states(mongo).await {
                Some(states) => acked.iter().all(|id| {
                    states.get(id).is_some_and(|(s, r, _)| s == expect.status && expect.report.is_none_or(|e| r == e))
                }),
                None => false,
            };
        if done && quiet_since.elapsed() >= settle {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            eprintln!("[faults] not quiet after {limit:?}; classifying what there is");
            return started.elapsed();
        }
        let pause = Duration::from_millis(500).max(Duration::from_micros(500) * acked.len() as u32);
        tokio::time::sleep(pause).await;
    }
}

/// One scenario's outcome.
#[derive(Debug, Default)]
pub struct Tally {
    pub scenario: String,
    pub submitted: usize,
    pub acked: usize,
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub ok: usize,
    pub notes: Vec<String>,
}

/// Sorts every acknowledged task into lost, duplicated or ok.
pub async fn classify(
    scenario: &str,
    mongo: &mongodb::Database,
    submitted: usize,
    acked: &[String],
    expect: &Expect,
    recorder: Option<&Recorder>,
    camunda: Option<&Camunda>,
) -> Tally {
    let states = states(mongo).await.expect("the store answers after the faults are healed");
    let runs = recorder.map(Recorder::runs).unwrap_or_default();
    let reports = camunda.map(Camunda::tasks).unwrap_or_default();
    let mut tally = Tally { scenario: scenario.to_owned(), submitted, acked: acked.len(), ..Default::default() };
    let unique_acked: HashSet<&String> = acked.iter().collect();
    for id in unique_acked {
        let attempts = runs.get(id).cloned().unwrap_or_default();
        let mut seen = HashSet::new();
        let twice = attempts.iter().any(|a| !seen.insert(*a));
        let finals = reports.get(id).map_or(0, |r| r.finals);
        if twice || finals > 1 {
            tally.duplicated.push(format!("{id} attempts={attempts:?} camunda={:?}", reports.get(id)));
            continue;
        }
        let lost = match states.get(id) {
            None => Some("missing from the store".to_owned()),
            Some((s, _, tried)) if s != expect.status => {
                Some(format!("status {s} after {tried} attempt(s); executions {attempts:?}"))
            }
            Some((_, r, _)) if expect.report.is_some_and(|e| r != e) => Some(format!("report_state {r}")),
            Some(_) if expect.executed && recorder.is_some() && attempts.is_empty() => Some("never executed".into()),
            Some(_) if expect.report == Some("reported") && camunda.is_some() && finals == 0 => {
                Some("no final report at Camunda".into())
            }
            Some(_) => None,
        };
        match lost {
            Some(why) => tally.lost.push(format!("{id}: {why}")),
            None => tally.ok += 1,
        }
    }
    tally
}

static RESULTS: Mutex<()> = Mutex::new(());

impl Tally {
    /// Prints the row and appends it to the results file, then cleans up after the gateway —
    /// or, on any lost or duplicated task, fails and leaves its database and queues for a look.
    pub async fn finish(self, gw: crate::gateway::Gateway, took: Duration) {
        let notes = self.notes.join("; ");
        let row = format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} s | {} |",
            self.scenario,
            self.submitted,
            self.acked,
            self.lost.len(),
            self.duplicated.len(),
            self.ok,
            took.as_secs_f64(),
            notes
        );
        eprintln!("[faults] {row}");
        let path = std::env::var("FAULTS_RESULTS")
            .unwrap_or_else(|_| format!("{}/faults-results.md", env!("CARGO_TARGET_TMPDIR")));
        if let Ok(_guard) = RESULTS.lock()
            && let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path)
        {
            let _ = writeln!(f, "{row}");
        }
        let sample = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join("\n  ");
        if self.lost.is_empty() && self.duplicated.is_empty() {
            gw.cleanup().await;
            return;
        }
        panic!(
            "{}: {} lost, {} duplicated of {} acknowledged (left for inspection: database and exchange {}, log {})\n\
             lost:\n  {}\nduplicated:\n  {}",
            self.scenario,
            self.lost.len(),
            self.duplicated.len(),
            self.acked,
            gw.exchange,
            gw.log.display(),
            sample(&self.lost),
            sample(&self.duplicated)
        );
    }
}

/// How a scenario is judged once its fault is healed.
pub struct Judge<'a> {
    pub scenario: &'a str,
    pub expect: Expect,
    pub recorder: Option<&'a Recorder>,
    pub camunda: Option<&'a Camunda>,
    /// How long quiescence may take.
    pub limit: Duration,
}

/// Quiescence may take this long: two minutes plus 200 ms a task.
pub fn default_limit(tasks: usize) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(200) * u32::try_from(tasks).unwrap_or(u32::MAX)
}

impl Judge<'_> {
    /// Waits for quiescence, sorts the acknowledged tasks, and checks that the stand-ins got the
    /// secrets they should and the log holds none. The caller adds its own checks, cleans up and
    /// calls [`Tally::finish`].
    pub async fn judge(&self, gw: &crate::gateway::Gateway, submitted: &Submitted, notes: Vec<String>) -> Tally {
        let quiet = wait_quiet(&gw.mongo, &submitted.acked, &self.expect, self.recorder, self.limit).await;
        let mut tally = classify(
            self.scenario,
            &gw.mongo,
            submitted.acked.len() + submitted.rejected.len(),
            &submitted.acked,
            &self.expect,
            self.recorder,
            self.camunda,
        )
        .await;
        tally.notes = notes;
        tally.notes.push(format!("slowest submit {:.1} s", submitted.slowest.as_secs_f64()));
        tally.notes.push(format!("quiet {:.0} s after healing", quiet.as_secs_f64()));
        if !submitted.rejected.is_empty() {
            tally.notes.push(format!("{} submits refused", submitted.rejected.len()));
        }
        if let Some(recorder) = self.recorder {
            assert_eq!(recorder.bad_auth(), 0, "executions arrived without the handler URL's API key");
        }
        if let Some(camunda) = self.camunda {
            assert_eq!(camunda.bad_auth(), 0, "reports arrived without the Camunda credentials");
        }
        gw.assert_no_secrets();
        tally
    }
}

/// The usual end of a scenario whose tasks must all succeed: waits for quiescence, classifies
/// every acknowledged task, records the row and checks the log.
pub async fn conclude(
    scenario: &str,
    started: Instant,
    gw: crate::gateway::Gateway,
    recorder: &Recorder,
    submitted: Submitted,
    notes: Vec<String>,
) {
    let judge = Judge {
        scenario,
        expect: Expect::succeeded(),
        recorder: Some(recorder),
        camunda: None,
        limit: default_limit(n()),
    };
    let tally = judge.judge(&gw, &submitted, notes).await;
    tally.finish(gw, started.elapsed()).await;
}
