//! The phases of one run. Each gateway phase starts a fresh gateway (own database and exchange)
//! so no phase inherits another's data or memory high-water mark, and stops it afterwards.
//!
//! - submit load: `GATEWAY_MODE=api` (no consumers), so the figure is the submit path alone
//!   (validate, insert, publish; the publish window's debt is written ahead); wrk at full speed,
//!   then, once the store is idle again, paced at half.
//! - overload: `api` mode, submissions offered open loop at three times the submit throughput;
//!   what is admitted, shed and limited, and the admitted requests' latency.
//! - memory, queued: `api` mode, N tasks submitted and left queued (in MongoDB and RabbitMQ).
//! - end to end: `all` mode, N `say_hello` submitted while the consumers work, until all succeed.
//! - memory, in flight: `all` mode with an extra `http` topic whose downstream holds every
//!   request open and whose prefetch is N: sampled when N handlers are running at once, i.e. N
//!   tasks claimed (status `processing`), their messages delivered and unacked.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{
    gateway::Gateway,
    limits, load, open_loop,
    report::{M, Run, percentile},
    setup::{BATCH, Ctx},
    standin::HoldServer,
};

pub async fn limits(ctx: &Ctx, run: &mut Run, tag: &str) -> anyhow::Result<()> {
    let p = &ctx.plan;
    let database = ctx.name(&format!("{tag}_limits"));
    ctx.remember_database(&database);
    let tasks = limits::tasks_collection(&ctx.mongo, &database).await?;
    // As long as the gateway's own load, so that both sides of a ratio average the server over
    // the same stretch of time (at 5 s, the batched limit ranged 1 334-1 873 docs/s in six runs).
    let mongo_duration = std::time::Duration::from_secs(p.wrk_duration_s);
    // SecantusDB can get slower, not faster, with concurrent connections: try one and several,
    // and take the better as the limit (report::derive_ratios).
    let tries = [
        (M::MongoSingle1, 1, 1),
        (M::MongoSingleN, p.mongo_single_concurrency, 1),
        (M::MongoBatch1, 1, BATCH),
        (M::MongoBatchN, p.mongo_batch_concurrency, BATCH),
    ];
    for (figure, concurrency, batch) in tries {
        let prefix = format!("{tag}-{concurrency}-{batch}");
        let rate = limits::mongo_inserts(&tasks, &prefix, concurrency, batch, mongo_duration).await?;
        eprintln!("[bench] MongoDB inserts, {concurrency} concurrent, {batch} per call: {rate:.0} docs/s");
        run.insert(figure, rate);
    }
    let lifecycle =
        limits::store_lifecycle(ctx.mongo.database(&database), &format!("{tag}-life"), BATCH, mongo_duration).await?;
    eprintln!("[bench] store alone, insert + claim + finish in batches of {BATCH}: {lifecycle:.0} tasks/s");
    run.insert(M::StoreLifecycle, lifecycle);
    // Leave the server as small as it was for the gateway phases.
    ctx.mongo.database(&database).drop().await?;
    let queue = ctx.name(&format!("{tag}_publish"));
    ctx.remember_queue(&queue);
    let published = limits::rabbit_confirmed(&ctx.rabbit_url, &queue, p.publish_window, p.limit_duration).await?;
    eprintln!("[bench] RabbitMQ confirmed publishes: {published:.0} msgs/s");
    run.insert(M::RabbitPublish, published);
    Ok(())
}

/// Runs `body` against a fresh gateway and stops the gateway whatever the outcome; on failure the
/// error carries the tail of the gateway's log.
async fn with_gateway<T>(
    ctx: &Ctx,
    name: &str,
    mode: &str,
    topics: &std::path::Path,
    body: impl AsyncFnOnce(&Gateway) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let gateway = Gateway::start(ctx, name, mode, topics).await?;
    let result = body(&gateway).await;
    let result = result.map_err(|e| e.context(format!("gateway log (last lines):\n{}", gateway.log_tail(15))));
    gateway.stop().await;
    result
}

pub async fn submit_load(ctx: &Ctx, run: &mut Run, tag: &str) -> anyhow::Result<()> {
    let p = &ctx.plan;
    with_gateway(ctx, &format!("{tag}_submit"), "api", &ctx.repo_topics, async |gw: &Gateway| {
        let id = |phase: &str| format!("{}-{tag}-{phase}", ctx.run_id);
        if p.wrk_warmup_s > 0 {
            load::wrk(ctx, &gw.base, &id("warm"), p.wrk_connections, p.wrk_warmup_s, None).await?;
            load::settle(ctx, &gw.base, &id("settle-warm")).await?;
        }
        let pids = [Some(gw.pid()), crate::gateway::mongo_server_pid()];
        let cpu = || pids.map(|pid| pid.and_then(crate::gateway::cpu_seconds));
        let (cpu_before, wall) = (cpu(), std::time::Instant::now());
        let peak = load::wrk(ctx, &gw.base, &id("peak"), p.wrk_connections, p.wrk_duration_s, None).await?;
        let (cpu_after, wall) = (cpu(), wall.elapsed().as_secs_f64());
        for (m, (before, after)) in [M::GatewayCpu, M::MongoCpu].into_iter().zip(cpu_before.into_iter().zip(cpu_after))
        {
            if let (Some(before), Some(after)) = (before, after) {
                run.insert(m, (after - before) / wall);
            }
        }
        let recovery = load::settle(ctx, &gw.base, &id("settle-peak")).await?;
        eprintln!(
            "[bench] submit at peak: {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms ({} requests, {} errors); \
             next submit took {:.0} ms",
            peak.ok_rate,
            peak.p50_ms,
            peak.p99_ms,
            peak.requests,
            peak.errors,
            recovery.as_secs_f64() * 1e3
        );
        let target = (peak.ok_rate / 2.0).max(1.0);
        crate::gateway::wait_for_idle_store().await;
        let half = load::wrk(ctx, &gw.base, &id("half"), p.wrk_connections / 2, p.wrk_duration_s, Some(target)).await?;
        eprintln!(
            "[bench] submit at half load: target {target:.0}, achieved {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms",
            half.ok_rate, half.p50_ms, half.p99_ms
        );
        run.insert(M::SubmitPeak, peak.ok_rate);
        run.insert(M::SubmitPeakP50, peak.p50_ms);
        run.insert(M::SubmitPeakP99, peak.p99_ms);
        run.insert(M::Recovery, recovery.as_secs_f64() * 1e3);
        run.insert(M::HalfRate, half.ok_rate);
        run.insert(M::HalfP50, half.p50_ms);
        run.insert(M::HalfP99, half.p99_ms);
        Ok(())
    })
    .await
}

/// Submissions offered open loop at `overload_factor` times the submit throughput (this run's
/// peak figure, or measured here with wrk when the submit phase did not run): what is admitted,
/// shed and rate-limited, and the latency of the admitted. Every admitted task must be stored.
pub async fn overload(ctx: &Ctx, run: &mut Run, tag: &str) -> anyhow::Result<()> {
    let p = &ctx.plan;
    let known = run.get(&M::SubmitPeak).copied();
    let outcome = with_gateway(ctx, &format!("{tag}_overload"), "api", &ctx.repo_topics, async |gw: &Gateway| {
        let id = |phase: &str| format!("{}-{tag}-{phase}", ctx.run_id);
        let capacity = match known {
            Some(rate) => rate,
            None => {
                let peak = load::wrk(ctx, &gw.base, &id("ocap"), p.wrk_connections, p.wrk_duration_s, None).await?;
                load::settle(ctx, &gw.base, &id("settle-ocap")).await?;
                crate::gateway::wait_for_idle_store().await;
                eprintln!("[bench] overload: submit throughput measured here: {:.0} req/s", peak.ok_rate);
                peak.ok_rate
            }
        };
        let rate = (capacity * p.overload_factor).max(1.0);
        let before = load::count(&load::statistics(ctx, &gw.base).await?, "queued");
        // The gateway, the store, and this process (the load generator), which share the cores.
        let pids = [Some(gw.pid()), crate::gateway::mongo_server_pid(), Some(std::process::id())];
        let cpu = || pids.map(|pid| pid.and_then(crate::gateway::cpu_seconds));
        let (cpu_before, wall) = (cpu(), std::time::Instant::now());
        let o = open_loop::run(&gw.base, &id("over"), rate, p.wrk_duration_s, p.overload_in_flight).await?;
        let (cpu_after, wall) = (cpu(), wall.elapsed().as_secs_f64());
        let cores: Vec<Option<f64>> =
            cpu_before.into_iter().zip(cpu_after).map(|(b, a)| Some((a? - b?) / wall)).collect();
        eprintln!(
            "[bench] overload: offered {:.0} req/s, admitted {:.0} req/s ({} admitted, {} shed, {} limited); \
             admitted p50 {:.1} ms, p99 {:.1} ms; shed p99 {:.1} ms",
            o.offered_rate, o.admitted_rate, o.admitted, o.shed, o.limited, o.p50_ms, o.p99_ms, o.shed_p99_ms
        );
        // Nothing admitted is lost: the api-mode gateway leaves every stored task queued.
        let stored = load::count(&load::statistics(ctx, &gw.base).await?, "queued") - before;
        if stored != o.admitted {
            bail!("{} submissions were answered 200 but {stored} tasks were stored", o.admitted);
        }
        Ok((capacity, o, cores))
    })
    .await?;
    let (capacity, o, cores) = outcome;
    for (m, used) in [M::OverloadGatewayCpu, M::OverloadMongoCpu, M::OverloadClientCpu].into_iter().zip(cores) {
        if let Some(used) = used {
            run.insert(m, used);
        }
    }
    run.entry(M::SubmitPeak).or_insert(capacity);
    run.insert(M::OverloadOffered, o.offered_rate);
    run.insert(M::OverloadAdmitted, o.admitted_rate);
    run.insert(M::OverloadShed, o.shed as f64);
    run.insert(M::OverloadLimited, o.limited as f64);
    run.insert(M::OverloadP50, o.p50_ms);
    run.insert(M::OverloadP99, o.p99_ms);
    run.insert(M::OverloadShedP99, o.shed_p99_ms);
    Ok(())
}

pub async fn memory_queued(ctx: &Ctx, run: &mut Run, tag: &str) -> anyhow::Result<()> {
    let n = ctx.plan.memory_tasks;
    with_gateway(ctx, &format!("{tag}_queued"), "api", &ctx.repo_topics, async |gw: &Gateway| {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = gw.memory()?;
        let took = load::submit_many(ctx, &gw.base, &format!("{}-{tag}-q", ctx.run_id), "say_hello", n).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let queued = gw.memory()?;
        let stats = load::statistics(ctx, &gw.base).await?;
        if load::count(&stats, "queued") != n as u64 {
            bail!("expected {n} queued tasks, statistics say {stats}");
        }
        eprintln!(
            "[bench] {n} queued in {:.1} s: RSS idle {:.1} MiB, queued {:.1} MiB (peak {:.1})",
            took.as_secs_f64(),
            idle.rss_mib,
            queued.rss_mib,
            queued.peak_mib
        );
        run.insert(M::RssIdle, idle.rss_mib);
        run.insert(M::RssQueued, queued.rss_mib);
        run.insert(M::RssQueuedPeak, queued.peak_mib);
        Ok(())
    })
    .await
}

fn millis(task: &Value, field: &str) -> anyhow::Result<i64> {
    let text = task["timestamps"][field].as_str().with_context(|| format!("task without timestamps.{field}"))?;
    Ok(chrono::DateTime::parse_from_rfc3339(text).with_context(|| format!("timestamps.{field}"))?.timestamp_millis())
}

pub async fn end_to_end(ctx: &Ctx, run: &mut Run, tag: &str) -> anyhow::Result<()> {
    let n = ctx.plan.e2e_tasks;
    with_gateway(ctx, &format!("{tag}_e2e"), "all", &ctx.repo_topics, async |gw: &Gateway| {
        load::submit_many(ctx, &gw.base, &format!("{}-{tag}-e", ctx.run_id), "say_hello", n).await?;
        // Generous (SecantusDB on a busy machine can fall to ~10 tasks/s); a stuck gateway is caught
        // sooner by the stall limit.
        let within = Duration::from_secs(600) + Duration::from_millis(500 * n as u64);
        load::wait_for_successes(ctx, &gw.base, "say_hello", n, within, Duration::from_secs(60)).await?;
        let stats = load::statistics(ctx, &gw.base).await?;
        if load::count(&stats, "succeeded") != n as u64 {
            bail!("the gateway counted {n} successes, its statistics say {stats}");
        }
        let tasks = load::all_tasks(ctx, &gw.base, "succeeded", "say_hello").await?;
        if tasks.len() != n {
            bail!("statistics say {n} succeeded, the task list has {}", tasks.len());
        }
        let mut latencies = Vec::with_capacity(n);
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for task in &tasks {
            let (created, completed) = (millis(task, "created_at")?, millis(task, "completed_at")?);
            latencies.push((completed - created) as f64);
            first = first.min(created);
            last = last.max(completed);
        }
        // Millisecond timestamps: a span under 1 ms cannot happen with more than a handful of tasks.
        let span_s = ((last - first).max(1)) as f64 / 1e3;
        let rate = n as f64 / span_s;
        let p50 = percentile(&mut latencies, 50.0).context("no latencies")?;
        let p99 = percentile(&mut latencies, 99.0).context("no latencies")?;
        eprintln!("[bench] end to end: {n} in {span_s:.1} s = {rate:.0} tasks/s, p50 {p50:.0} ms, p99 {p99:.0} ms");
        run.insert(M::E2eRate, rate);
        run.insert(M::E2eP50, p50);
        run.insert(M::E2eP99, p99);
        Ok(())
    })
    .await
}

pub async fn memory_in_flight(ctx: &Ctx, run: &mut Run, tag: &str) -> anyhow::Result<()> {
    let n = ctx.plan.memory_tasks;
    let downstream = HoldServer::start().await?;
    let topics = ctx.tmp.join(format!("topics-{tag}"));
    std::fs::create_dir_all(&topics)?;
    for name in crate::gateway::topic_names(&ctx.repo_topics)? {
        let file = format!("{name}.toml");
        std::fs::copy(ctx.repo_topics.join(&file), topics.join(&file))?;
    }
    let hold_topic = format!(
        "# bench: every task is held open by a stand-in downstream until the bench releases it.\n\
         description = \"bench: held until released\"\nhandler = \"http\"\nurl = \"{}\"\nhttp2 = true\n\
         timeout_seconds = 900\n# The prefetch: all N messages delivered and handled at once.\nconcurrency = {n}\n\n\
         [retry]\nmax_attempts = 1\n",
        downstream.url()
    );
    std::fs::write(topics.join("bench_hold.toml"), hold_topic)?;
    let result = with_gateway(ctx, &format!("{tag}_inflight"), "all", &topics, async |gw: &Gateway| {
        load::submit_many(ctx, &gw.base, &format!("{}-{tag}-h", ctx.run_id), "bench_hold", n).await?;
        let started = std::time::Instant::now();
        let (mut last, mut last_change) = (0, std::time::Instant::now());
        while downstream.held() < n {
            let held = downstream.held();
            if held != last {
                (last, last_change) = (held, std::time::Instant::now());
            }
            if last_change.elapsed() > Duration::from_secs(60) {
                let stats = load::statistics(ctx, &gw.base).await.unwrap_or_default();
                bail!(
                    "only {held} of {n} tasks reached their handler after {:.0} s: {stats}",
                    started.elapsed().as_secs_f64()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Sampled a few times: the figure is the resident size with all N running, not a blip.
        let mut rss: f64 = 0.0;
        let mut peak: f64 = 0.0;
        for _ in 0..5 {
            let m = gw.memory()?;
            (rss, peak) = (rss.max(m.rss_mib), peak.max(m.peak_mib));
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let text = load::metrics(ctx, &gw.base).await?;
        let running = load::metric_sum(&text, "gateway_tasks_in_flight", &["topic=\"bench_hold\""]);
        eprintln!(
            "[bench] {n} in flight after {:.1} s (the gateway's in-flight gauge: {}): RSS {rss:.1} MiB (peak {peak:.1})",
            started.elapsed().as_secs_f64(),
            running.map_or("absent".into(), |r| r.to_string())
        );
        run.insert(M::RssInFlight, rss);
        run.insert(M::RssInFlightPeak, peak);
        downstream.release();
        Ok(())
    })
    .await;
    downstream.release();
    result
}
