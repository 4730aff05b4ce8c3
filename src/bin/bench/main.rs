//! `bench`: the gateway's benchmark, in one run against the test services (`scripts/bench.sh`).
//!
//! It measures the raw limits of the servers themselves (MongoDB single and batched inserts,
//! RabbitMQ confirmed publishes), then runs the release gateway binary as a child process and
//! measures its submit throughput and latency (with `wrk`), end-to-end `say_hello` throughput and
//! latency, and its resident memory with many tasks queued and in flight; it prints one Markdown
//! table with the gateway/limit ratios. It measures whatever the gateway binary does, so the same
//! command compares two versions. It judges the targets but asserts no timing: it fails (exit 1)
//! only when a step fails, e.g. tasks that never succeed. Everything it creates (databases,
//! queues, exchanges) carries a unique prefix and is removed at the end.

mod gateway;
mod growth;
mod limits;
mod load;
mod open_loop;
mod report;
mod scenarios;
mod setup;
mod standin;

use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context, bail};
use report::Run;
use setup::{Ctx, Phase, Plan};

const USAGE: &str = "\
usage: bench [--smoke] [--runs N] [--duration SECS] [--e2e-tasks N] [--memory-tasks N] [--gateway PATH]
             [--phases LIST] [--stats-tasks N]

  --smoke           short run for CI: small counts, 1 run; prints the table, judges nothing
  --runs N          repeat every measurement N times and print medians (default 1)
  --duration SECS   length of each wrk load phase (default 20, smoke 3)
  --e2e-tasks N     say_hello tasks in the end-to-end phase (default 5000, smoke 200)
  --memory-tasks N  tasks queued / in flight for the memory figures (default 10000, smoke 200)
  --gateway PATH    gateway binary (default: worker-api-gateway next to this binary)
  --phases LIST     comma-separated subset of limits,indexes,submit,overload,queued,e2e,inflight (default:
                    all of these), plus statistics (never by default); figures of phases not run, and
                    ratios needing them, are shown as –
  --stats-tasks N   tasks in the statistics phase's large store (default 200000; the small one has 2000)

Needs MONGODB_URI and RABBITMQ_URL (source .services/env) and wrk on the PATH.";

fn parse_args() -> anyhow::Result<(Plan, Option<PathBuf>)> {
    let mut args = std::env::args().skip(1);
    let mut smoke = false;
    let mut overrides: Vec<(String, String)> = Vec::new();
    let mut gateway = None;
    let mut phases = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--runs" | "--duration" | "--e2e-tasks" | "--memory-tasks" | "--gateway" | "--phases" | "--stats-tasks" => {
                let value = args.next().with_context(|| format!("{arg} needs a value\n{USAGE}"))?;
                if arg == "--gateway" {
                    gateway = Some(PathBuf::from(value));
                } else if arg == "--phases" {
                    phases = Some(
                        value
                            .split(',')
                            .map(|name| {
                                Phase::parse(name.trim()).with_context(|| format!("--phases: unknown {name:?}"))
                            })
                            .collect::<anyhow::Result<Vec<_>>>()?,
                    );
                } else {
                    overrides.push((arg, value));
                }
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let mut plan = if smoke { Plan::smoke() } else { Plan::full() };
    if let Some(phases) = phases {
        plan.phases = phases;
    }
    for (flag, value) in overrides {
        let n: u64 = value
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{flag}: {value:?} is not a positive number"))?;
        match flag.as_str() {
            "--runs" => plan.runs = n as usize,
            "--duration" => plan.wrk_duration_s = n,
            "--e2e-tasks" => plan.e2e_tasks = n as usize,
            "--memory-tasks" => plan.memory_tasks = n as usize,
            "--stats-tasks" => plan.stats_large = n as usize,
            _ => unreachable!("only the flags matched above are collected"),
        }
    }
    if plan.memory_tasks > usize::from(u16::MAX) {
        bail!("--memory-tasks: at most {} (a topic's prefetch is a u16)", u16::MAX);
    }
    Ok((plan, gateway))
}

async fn run_all(ctx: &Ctx, runs: &mut Vec<Run>) -> anyhow::Result<()> {
    for i in 1..=ctx.plan.runs {
        eprintln!("[bench] ===== run {i} of {} =====", ctx.plan.runs);
        runs.push(Run::default());
        let run = runs.last_mut().expect("a run was just pushed");
        let tag = format!("r{i}");
        let outcome = run_once(ctx, run, &tag).await;
        if let Some(load) = setup::load_average() {
            run.insert(report::M::LoadAvg, load);
        }
        outcome?;
    }
    Ok(())
}

async fn run_once(ctx: &Ctx, run: &mut Run, tag: &str) -> anyhow::Result<()> {
    for phase in ctx.plan.phases.clone() {
        gateway::wait_for_idle_store().await;
        match phase {
            Phase::Limits => scenarios::limits(ctx, run, tag).await.context("raw limits")?,
            Phase::Indexes => growth::index_costs(ctx, run, tag).await.context("insert cost of the indexes")?,
            Phase::Statistics => growth::statistics(ctx, run, tag).await.context("statistics latency")?,
            Phase::Submit => scenarios::submit_load(ctx, run, tag).await.context("submit throughput and latency")?,
            Phase::Overload => scenarios::overload(ctx, run, tag).await.context("submit overload")?,
            Phase::Queued => scenarios::memory_queued(ctx, run, tag).await.context("memory with tasks queued")?,
            Phase::EndToEnd => scenarios::end_to_end(ctx, run, tag).await.context("end-to-end say_hello")?,
            Phase::InFlight => {
                scenarios::memory_in_flight(ctx, run, tag).await.context("memory with tasks in flight")?
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let (plan, gateway) = match parse_args() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let ctx = match Ctx::new(plan, gateway).await {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("[bench] cannot start: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mut runs = Vec::new();
    let outcome = run_all(&ctx, &mut runs).await;
    ctx.cleanup(outcome.is_err()).await;
    if !runs.is_empty() {
        println!("{}", report::table(&ctx.plan, &runs));
    }
    eprintln!("[bench] finished in {:.0} s", started.elapsed().as_secs_f64());
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[bench] FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
