//! The figures of a run, the ratios derived from them, and the Markdown table: one column per
//! run, the median when there are several, the target and whether the median meets it.

use std::collections::BTreeMap;

use crate::setup::{BATCH, Plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum M {
    MongoSingle1,
    MongoSingleN,
    MongoSingle,
    MongoBatch1,
    MongoBatchN,
    MongoBatch,
    RabbitPublish,
    StoreLifecycle,
    SubmitPeak,
    SubmitPeakP50,
    SubmitPeakP99,
    GatewayCpu,
    MongoCpu,
    Recovery,
    HalfRate,
    HalfP50,
    HalfP99,
    OverloadOffered,
    OverloadAdmitted,
    OverloadShed,
    OverloadLimited,
    OverloadP50,
    OverloadP99,
    OverloadShedP99,
    OverloadGatewayCpu,
    OverloadMongoCpu,
    OverloadClientCpu,
    E2eRate,
    E2eP50,
    E2eP99,
    RssIdle,
    RssQueued,
    RssQueuedPeak,
    RssInFlight,
    RssInFlightPeak,
    RatioSubmitBatch,
    RatioE2eBatch,
    RatioE2eStore,
    RatioSubmitSingle,
    RatioSubmitPublish,
    RatioOverloadPeak,
    LoadAvg,
    IndexCount,
    IndexInsertNone,
    IndexInsertAll,
    RatioIndexes,
    StatsSmallFirst,
    StatsSmall,
    StatsLargeFirst,
    StatsLarge,
    RatioStats,
}

const ALL: [M; 51] = [
    M::MongoSingle1,
    M::MongoSingleN,
    M::MongoSingle,
    M::MongoBatch1,
    M::MongoBatchN,
    M::MongoBatch,
    M::RabbitPublish,
    M::StoreLifecycle,
    M::SubmitPeak,
    M::SubmitPeakP50,
    M::SubmitPeakP99,
    M::GatewayCpu,
    M::MongoCpu,
    M::Recovery,
    M::HalfRate,
    M::HalfP50,
    M::HalfP99,
    M::OverloadOffered,
    M::OverloadAdmitted,
    M::OverloadShed,
    M::OverloadLimited,
    M::OverloadP50,
    M::OverloadP99,
    M::OverloadShedP99,
    M::OverloadGatewayCpu,
    M::OverloadMongoCpu,
    M::OverloadClientCpu,
    M::E2eRate,
    M::E2eP50,
    M::E2eP99,
    M::RssIdle,
    M::RssQueued,
    M::RssQueuedPeak,
    M::RssInFlight,
    M::RssInFlightPeak,
    M::RatioSubmitBatch,
    M::RatioE2eBatch,
    M::RatioE2eStore,
    M::RatioSubmitSingle,
    M::RatioSubmitPublish,
    M::RatioOverloadPeak,
    M::IndexCount,
    M::IndexInsertNone,
    M::IndexInsertAll,
    M::RatioIndexes,
    M::StatsSmallFirst,
    M::StatsSmall,
    M::StatsLargeFirst,
    M::StatsLarge,
    M::RatioStats,
    M::LoadAvg,
];

enum Target {
    None,
    AtLeast(f64),
    AtMost(f64),
    Below(f64),
}

/// One run's figures.
pub type Run = BTreeMap<M, f64>;

/// Label, unit, decimals, target.
fn describe(m: M, p: &Plan) -> (String, &'static str, usize, Target) {
    let (n_e2e, n_mem, c) = (p.e2e_tasks, p.memory_tasks, p.wrk_connections);
    match m {
        M::MongoSingle1 => ("MongoDB insert_one, 1 connection".into(), "docs/s", 0, Target::None),
        M::MongoSingleN => {
            (format!("MongoDB insert_one, {} concurrent", p.mongo_single_concurrency), "docs/s", 0, Target::None)
        }
        M::MongoSingle => ("limit: MongoDB insert_one (the better of the two)".into(), "docs/s", 0, Target::None),
        M::MongoBatch1 => (format!("MongoDB insert_many of {BATCH}, 1 connection"), "docs/s", 0, Target::None),
        M::MongoBatchN => (
            format!("MongoDB insert_many of {BATCH}, {} concurrent", p.mongo_batch_concurrency),
            "docs/s",
            0,
            Target::None,
        ),
        M::MongoBatch => ("limit: MongoDB insert_many (the better of the two)".into(), "docs/s", 0, Target::None),
        M::RabbitPublish => (
            format!("limit: RabbitMQ confirmed publishes, {} outstanding", p.publish_window),
            "msgs/s",
            0,
            Target::None,
        ),
        M::StoreLifecycle => {
            (format!("store alone: insert, claim and finish, batches of {BATCH}"), "tasks/s", 0, Target::None)
        }
        M::SubmitPeak => (format!("gateway submit throughput, {c} connections"), "req/s", 0, Target::None),
        M::SubmitPeakP50 => ("  submit latency p50 at that load".into(), "ms", 1, Target::None),
        M::SubmitPeakP99 => ("  submit latency p99 at that load".into(), "ms", 1, Target::None),
        M::GatewayCpu => ("  gateway CPU at that load".into(), "cores", 2, Target::None),
        M::MongoCpu => ("  MongoDB-wire server CPU at that load".into(), "cores", 2, Target::None),
        M::Recovery => ("  first submit after those clients hung up mid-request".into(), "ms", 0, Target::None),
        M::HalfRate => (format!("half load: rate achieved, {} connections", c / 2), "req/s", 0, Target::None),
        M::HalfP50 => ("  submit latency p50 at half load".into(), "ms", 1, Target::None),
        M::HalfP99 => ("  submit latency p99 at half load".into(), "ms", 1, Target::Below(50.0)),
        M::OverloadOffered => {
            (format!("overload: offered open loop, {}× submit throughput", p.overload_factor), "req/s", 0, Target::None)
        }
        M::OverloadAdmitted => ("  admitted (200) at that load".into(), "req/s", 0, Target::None),
        M::OverloadShed => ("  shed (503 + Retry-After)".into(), "requests", 0, Target::None),
        M::OverloadLimited => ("  rate-limited (429)".into(), "requests", 0, Target::None),
        M::OverloadP50 => ("  admitted latency p50 (from scheduled send)".into(), "ms", 1, Target::None),
        M::OverloadP99 => ("  admitted latency p99".into(), "ms", 1, Target::None),
        M::OverloadShedP99 => ("  shed answer latency p99".into(), "ms", 1, Target::None),
        M::OverloadGatewayCpu => ("  gateway CPU at that load".into(), "cores", 2, Target::None),
        M::OverloadMongoCpu => ("  MongoDB-wire server CPU at that load".into(), "cores", 2, Target::None),
        M::OverloadClientCpu => ("  load generator (the bench) CPU at that load".into(), "cores", 2, Target::None),
        M::E2eRate => (format!("end-to-end say_hello throughput, {n_e2e} tasks"), "tasks/s", 0, Target::None),
        M::E2eP50 => ("  end-to-end latency p50 (created → completed)".into(), "ms", 0, Target::None),
        M::E2eP99 => ("  end-to-end latency p99".into(), "ms", 0, Target::None),
        M::RssIdle => ("gateway RSS, idle after start".into(), "MiB", 1, Target::None),
        M::RssQueued => (format!("gateway RSS, {n_mem} tasks queued"), "MiB", 1, Target::None),
        M::RssQueuedPeak => ("  peak RSS while submitting them".into(), "MiB", 1, Target::None),
        M::RssInFlight => (format!("gateway RSS, {n_mem} tasks in flight"), "MiB", 1, Target::Below(64.0)),
        M::RssInFlightPeak => ("  peak RSS up to then".into(), "MiB", 1, Target::None),
        M::RatioSubmitBatch => ("ratio: submit / batched-insert limit".into(), "", 2, Target::AtLeast(0.80)),
        M::RatioE2eBatch => ("ratio: end-to-end / batched-insert limit".into(), "", 2, Target::AtLeast(0.50)),
        M::RatioE2eStore => ("ratio: end-to-end / store alone".into(), "", 2, Target::None),
        M::RatioSubmitSingle => ("ratio: submit / single-insert limit".into(), "", 2, Target::None),
        M::RatioSubmitPublish => ("ratio: submit / confirmed-publish limit".into(), "", 2, Target::None),
        M::RatioOverloadPeak => ("ratio: admitted under overload / submit throughput".into(), "", 2, Target::None),
        M::LoadAvg => ("machine load average (1 min) at the end of the run".into(), "", 2, Target::None),
        M::IndexCount => ("secondary indexes on tasks".into(), "", 0, Target::None),
        M::IndexInsertNone => {
            (format!("insert_many of {BATCH} task documents, no secondary index"), "ms", 1, Target::None)
        }
        M::IndexInsertAll => ("  the same with the gateway's indexes".into(), "ms", 1, Target::None),
        M::RatioIndexes => ("ratio: insert with the indexes / without".into(), "", 2, Target::AtMost(1.5)),
        M::StatsSmallFirst => (format!("statistics, {} tasks: first answer", p.stats_small), "ms", 1, Target::None),
        M::StatsSmall => ("  median of 100 answers after it".into(), "ms", 2, Target::None),
        M::StatsLargeFirst => (format!("statistics, {} tasks: first answer", p.stats_large), "ms", 1, Target::None),
        M::StatsLarge => ("  median of 100 answers after it".into(), "ms", 2, Target::None),
        M::RatioStats => ("ratio: statistics median, large store / small".into(), "", 2, Target::None),
    }
}

/// Adds the limits (the best concurrency tried) and the gateway/limit ratios to a run.
fn derive_ratios(run: &mut Run) {
    for (limit, tries) in
        [(M::MongoSingle, [M::MongoSingle1, M::MongoSingleN]), (M::MongoBatch, [M::MongoBatch1, M::MongoBatchN])]
    {
        if let Some(best) = tries.iter().filter_map(|m| run.get(m).copied()).reduce(f64::max) {
            run.insert(limit, best);
        }
    }
    let pairs = [
        (M::RatioSubmitBatch, M::SubmitPeak, M::MongoBatch),
        (M::RatioE2eBatch, M::E2eRate, M::MongoBatch),
        (M::RatioE2eStore, M::E2eRate, M::StoreLifecycle),
        (M::RatioSubmitSingle, M::SubmitPeak, M::MongoSingle),
        (M::RatioSubmitPublish, M::SubmitPeak, M::RabbitPublish),
        (M::RatioOverloadPeak, M::OverloadAdmitted, M::SubmitPeak),
        (M::RatioIndexes, M::IndexInsertAll, M::IndexInsertNone),
        (M::RatioStats, M::StatsLarge, M::StatsSmall),
    ];
    for (ratio, gateway, limit) in pairs {
        if let (Some(g), Some(l)) = (run.get(&gateway), run.get(&limit))
            && *l > 0.0
        {
            run.insert(ratio, g / l);
        }
    }
}

/// Nearest-rank percentile of unsorted values (`p` in 0..=100).
pub fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 })
}

pub fn table(plan: &Plan, runs: &[Run]) -> String {
    let runs: Vec<Run> = runs
        .iter()
        .cloned()
        .map(|mut run| {
            derive_ratios(&mut run);
            run
        })
        .collect();
    let runs = runs.as_slice();
    let several = runs.len() > 1;
    let mut header = vec!["figure".to_owned(), "unit".to_owned()];
    header.extend((1..=runs.len()).map(|i| if several { format!("run {i}") } else { "value".into() }));
    if several {
        header.push("median".into());
    }
    header.extend(["target".to_owned(), "met".to_owned()]);
    let mut out = format!("| {} |\n|{}\n", header.join(" | "), "---|".repeat(header.len()));
    for m in ALL {
        let (label, unit, decimals, target) = describe(m, plan);
        let mut values: Vec<f64> = runs.iter().filter_map(|r| r.get(&m).copied()).collect();
        let cell = |v: Option<f64>| v.map(|v| format!("{v:.decimals$}")).unwrap_or_else(|| "–".into());
        let mut row = vec![label, unit.to_owned()];
        row.extend(runs.iter().map(|r| cell(r.get(&m).copied())));
        let summary = median(&mut values);
        if several {
            row.push(cell(summary));
        }
        let (target_text, met) = match (target, summary) {
            (Target::None, _) => (String::new(), String::new()),
            (Target::AtLeast(t), v) => (format!("≥ {t:.decimals$}"), verdict(plan, runs, v.map(|v| v >= t))),
            (Target::AtMost(t), v) => (format!("≤ {t:.decimals$}"), verdict(plan, runs, v.map(|v| v <= t))),
            (Target::Below(t), v) => (format!("< {t:.0}"), verdict(plan, runs, v.map(|v| v < t))),
        };
        row.extend([target_text, met]);
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    if plan.smoke {
        out.push_str("\nSmoke mode: small counts and short phases; the figures are not comparable to a full run.\n");
    } else if runs.len() < 3 {
        out.push_str("\nTargets are judged on medians of at least 3 runs (`--runs 3`); this is indicative only.\n");
    }
    out
}

fn verdict(plan: &Plan, runs: &[Run], met: Option<bool>) -> String {
    match met {
        _ if plan.smoke => "(smoke)".into(),
        None => "–".into(),
        Some(true) if runs.len() >= 3 => "yes".into(),
        Some(false) if runs.len() >= 3 => "**no**".into(),
        Some(true) => "(yes)".into(),
        Some(false) => "(no)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians_use_nearest_rank_and_the_middle() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 50.0), Some(50.0));
        assert_eq!(percentile(&mut v, 99.0), Some(99.0));
        assert_eq!(percentile(&mut [7.0], 99.0), Some(7.0));
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
